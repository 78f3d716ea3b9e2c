//! The run state machine (SPEC §4) — the one place that decides transitions. States carry their
//! own data, so a `finished` run without an exit code cannot be built. Terminal states absorb:
//! a late or replayed event never moves a run backwards.

use crate::cluster::protocol::{MumEvent, Verdict};
use nerokid::report::{AbortCause, KidEvent, Outcome};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// neroman sent it; mum has not confirmed yet.
    Submitted {
        at: f64,
    },
    /// mum holds it (waiting for a slot, or in the warden's queue).
    Queued {
        at: f64,
        submitted_at: f64,
    },
    Running {
        at: f64,
        node: String,
    },
    Finished {
        at: f64,
        started_at: Option<f64>,
    },
    Crashed {
        at: f64,
        started_at: Option<f64>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: String,
    },
    Aborted {
        at: f64,
        started_at: Option<f64>,
        reason: String,
    },
    Timeout {
        at: f64,
        started_at: Option<f64>,
        /// The warden's words (`SLURM: time limit (TIMEOUT)`); absent in stores written before
        /// it was kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Lost {
        at: f64,
        reason: String,
    },
}

/// The bare state names, as shown to users and used in selections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateName {
    Defined,
    Submitted,
    Queued,
    Running,
    Finished,
    Crashed,
    Aborted,
    Timeout,
    Lost,
}

impl StateName {
    pub const ALL: [StateName; 9] = [
        StateName::Defined,
        StateName::Submitted,
        StateName::Queued,
        StateName::Running,
        StateName::Finished,
        StateName::Crashed,
        StateName::Aborted,
        StateName::Timeout,
        StateName::Lost,
    ];

    /// The state a word names (lower-case, as `as_str` writes it).
    pub fn parse(word: &str) -> Option<StateName> {
        StateName::ALL.into_iter().find(|s| s.as_str() == word)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Defined => "defined",
            StateName::Submitted => "submitted",
            StateName::Queued => "queued",
            StateName::Running => "running",
            StateName::Finished => "finished",
            StateName::Crashed => "crashed",
            StateName::Aborted => "aborted",
            StateName::Timeout => "timeout",
            StateName::Lost => "lost",
        }
    }
}

impl RunState {
    pub fn name(&self) -> StateName {
        match self {
            RunState::Submitted { .. } => StateName::Submitted,
            RunState::Queued { .. } => StateName::Queued,
            RunState::Running { .. } => StateName::Running,
            RunState::Finished { .. } => StateName::Finished,
            RunState::Crashed { .. } => StateName::Crashed,
            RunState::Aborted { .. } => StateName::Aborted,
            RunState::Timeout { .. } => StateName::Timeout,
            RunState::Lost { .. } => StateName::Lost,
        }
    }

    /// When this state was entered.
    pub fn at(&self) -> f64 {
        match self {
            RunState::Submitted { at }
            | RunState::Queued { at, .. }
            | RunState::Running { at, .. }
            | RunState::Finished { at, .. }
            | RunState::Crashed { at, .. }
            | RunState::Aborted { at, .. }
            | RunState::Timeout { at, .. }
            | RunState::Lost { at, .. } => *at,
        }
    }

    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            RunState::Submitted { .. } | RunState::Queued { .. } | RunState::Running { .. }
        )
    }

    /// (started_at, finished_at, exit_code) for the store's columns.
    pub fn times_and_code(&self) -> (Option<f64>, Option<f64>, Option<i32>) {
        match self {
            RunState::Running { at, .. } => (Some(*at), None, None),
            RunState::Finished { at, started_at } => (*started_at, Some(*at), Some(0)),
            RunState::Crashed {
                at,
                started_at,
                exit_code,
                ..
            } => (*started_at, Some(*at), *exit_code),
            RunState::Aborted { at, started_at, .. } | RunState::Timeout { at, started_at, .. } => {
                (*started_at, Some(*at), None)
            }
            RunState::Lost { at, .. } => (None, Some(*at), None),
            _ => (None, None, None),
        }
    }

    /// A short human explanation (for crashed/aborted/lost).
    pub fn reason(&self) -> Option<String> {
        match self {
            RunState::Crashed { reason, .. }
            | RunState::Aborted { reason, .. }
            | RunState::Lost { reason, .. } => Some(reason.clone()),
            RunState::Timeout { reason, .. } => reason.clone(),
            _ => None,
        }
    }

    fn started_at(&self) -> Option<f64> {
        match self {
            RunState::Running { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// The next state after a mum event, if the event changes the state.
    /// `abort_sent` tells whether an abort was passed on (a kid lost after that counts as aborted).
    pub fn next(&self, event: &MumEvent, t: f64, abort_sent: bool) -> Option<RunState> {
        if self.is_terminal() {
            return None;
        }
        let started_at = self.started_at();
        match event {
            MumEvent::Queued { .. } => match self {
                RunState::Submitted { at } => Some(RunState::Queued {
                    at: t,
                    submitted_at: *at,
                }),
                _ => None,
            },
            MumEvent::Launching | MumEvent::Launched { .. } | MumEvent::AbortSent => None,
            MumEvent::Cancelled => Some(RunState::Aborted {
                at: t,
                started_at,
                reason: "cancelled before it started".into(),
            }),
            MumEvent::Lost { reason } if abort_sent => Some(RunState::Aborted {
                at: t,
                started_at,
                reason: format!("aborted by user ({reason})"),
            }),
            MumEvent::Lost { reason } => Some(RunState::Lost {
                at: t,
                reason: reason.clone(),
            }),
            // The warden's word wins over the kid's record that follows it (absorbed).
            MumEvent::Ended { verdict, reason } => Some(match verdict {
                Verdict::Timeout => RunState::Timeout {
                    at: t,
                    started_at,
                    reason: Some(reason.clone()),
                },
                Verdict::Crashed => RunState::Crashed {
                    at: t,
                    started_at,
                    exit_code: None,
                    signal: None,
                    reason: reason.clone(),
                },
                Verdict::Aborted if abort_sent => RunState::Aborted {
                    at: t,
                    started_at,
                    reason: format!("aborted by user ({reason})"),
                },
                Verdict::Aborted => RunState::Aborted {
                    at: t,
                    started_at,
                    reason: reason.clone(),
                },
                Verdict::Lost => RunState::Lost {
                    at: t,
                    reason: reason.clone(),
                },
            }),
            // Back in the warden's queue: not terminal; the kid's next start makes it running.
            MumEvent::Requeued { .. } => match self {
                RunState::Queued { .. } => None,
                _ => Some(RunState::Queued {
                    at: t,
                    submitted_at: t,
                }),
            },
            MumEvent::Kid { event } => match event {
                KidEvent::Started { t, host, .. } => match self {
                    RunState::Running { .. } => None,
                    _ => Some(RunState::Running {
                        at: *t,
                        node: host.clone(),
                    }),
                },
                KidEvent::Exited {
                    t,
                    outcome,
                    reason: said,
                    ..
                } => Some(ended_by_kid(*t, started_at, outcome, said.as_deref())),
                _ => None,
            },
        }
    }
}

/// The state a kid's exit record gives, with the reason in plain words: what the kid found
/// (`said`: a Python exception's last line, a shell's `Segmentation fault`, the rule with the
/// values that fired it) first, then the exit code or signal.
fn ended_by_kid(
    t: f64,
    started_at: Option<f64>,
    outcome: &Outcome,
    said: Option<&str>,
) -> RunState {
    let with = |plain: String| match said {
        Some(s) if !s.trim().is_empty() => format!("{} ({plain})", s.trim()),
        _ => plain,
    };
    match outcome {
        Outcome::Exit { code: 0 } => RunState::Finished { at: t, started_at },
        Outcome::Exit { code } => RunState::Crashed {
            at: t,
            started_at,
            exit_code: Some(*code),
            signal: None,
            reason: with(format!("exit code {code}")),
        },
        // A shell's report of the death (`Segmentation fault (core dumped)`, `Killed`) says
        // no more than the signal's own words.
        Outcome::Signal { signal } => RunState::Crashed {
            at: t,
            started_at,
            exit_code: None,
            signal: Some(*signal),
            reason: match said {
                Some(s) if nerokid::reason::is_shell_report(s) => signal_words(*signal),
                _ => with(signal_words(*signal)),
            },
        },
        Outcome::Aborted {
            by: AbortCause::User,
            ..
        } => RunState::Aborted {
            at: t,
            started_at,
            reason: "aborted by user".into(),
        },
        Outcome::Aborted {
            by: AbortCause::Rule(rule),
            ..
        } => RunState::Aborted {
            at: t,
            started_at,
            reason: match said {
                Some(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => format!("rule {rule}"),
            },
        },
        Outcome::FailedToStart { error } => RunState::Crashed {
            at: t,
            started_at,
            exit_code: None,
            signal: None,
            reason: format!("could not start: {error}"),
        },
    }
}

/// `killed by SIGKILL (signal 9)`, with what usually sends it where that helps.
pub fn signal_words(sig: i32) -> String {
    let name = signal_name(sig);
    let hint = match sig {
        9 => "; the kernel's out-of-memory killer or the scheduler sends it",
        11 => "; a segmentation fault",
        7 => "; a bus error",
        6 => "; the program called abort()",
        _ => "",
    };
    format!("killed by {name} (signal {sig}{hint})")
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_absorb_late_events() {
        let s = RunState::Submitted { at: 1.0 };
        let q = s
            .next(
                &MumEvent::Queued {
                    run_dir: "d".into(),
                },
                2.0,
                false,
            )
            .unwrap();
        let started = KidEvent::Started {
            t: 3.0,
            pid: 1,
            job_pid: 2,
            host: "h".into(),
        };
        let r = q
            .next(
                &MumEvent::Kid {
                    event: started.clone(),
                },
                3.0,
                false,
            )
            .unwrap();
        assert_eq!(r.name(), StateName::Running);
        let exit = KidEvent::Exited {
            t: 9.0,
            outcome: Outcome::Signal { signal: 9 },
            reason: None,
            stderr_tail: Vec::new(),
        };
        let c = r.next(&MumEvent::Kid { event: exit }, 9.0, false).unwrap();
        assert_eq!(c.name(), StateName::Crashed);
        assert_eq!(c.times_and_code(), (Some(3.0), Some(9.0), None));
        assert!(c
            .next(&MumEvent::Kid { event: started }, 10.0, false)
            .is_none());
        assert!(c
            .next(&MumEvent::Lost { reason: "x".into() }, 10.0, false)
            .is_none());
    }

    /// The SLURM warden's verdict wins over the kid's record journaled after it; a requeued
    /// run goes back to queued and runs again.
    #[test]
    fn a_warden_verdict_and_a_requeue() {
        let running = RunState::Running {
            at: 3.0,
            node: "n1".into(),
        };
        let timeout = running
            .next(
                &MumEvent::Ended {
                    verdict: Verdict::Timeout,
                    reason: "SLURM: time limit (TIMEOUT)".into(),
                },
                9.0,
                false,
            )
            .unwrap();
        assert_eq!(timeout.name(), StateName::Timeout);
        assert_eq!(timeout.times_and_code(), (Some(3.0), Some(9.0), None));
        let aborted_by_sigterm = KidEvent::Exited {
            t: 9.5,
            outcome: Outcome::Aborted {
                by: AbortCause::User,
                signal: None,
                code: Some(143),
            },
            reason: None,
            stderr_tail: Vec::new(),
        };
        assert!(timeout
            .next(
                &MumEvent::Kid {
                    event: aborted_by_sigterm
                },
                9.5,
                false
            )
            .is_none());
        let queued = running
            .next(
                &MumEvent::Requeued {
                    reason: "requeued by SLURM".into(),
                },
                5.0,
                false,
            )
            .unwrap();
        assert_eq!(queued.name(), StateName::Queued);
        let started = KidEvent::Started {
            t: 6.0,
            pid: 1,
            job_pid: 2,
            host: "n2".into(),
        };
        let again = queued
            .next(&MumEvent::Kid { event: started }, 6.0, false)
            .unwrap();
        assert_eq!(again.name(), StateName::Running);
        let crashed = again
            .next(
                &MumEvent::Ended {
                    verdict: Verdict::Crashed,
                    reason: "SLURM: out of memory (OUT_OF_MEMORY)".into(),
                },
                7.0,
                false,
            )
            .unwrap();
        assert_eq!(
            crashed.reason().as_deref(),
            Some("SLURM: out of memory (OUT_OF_MEMORY)")
        );
    }

    /// Snapshot: the state as stored in state.db.
    #[test]
    fn stored_state_format_is_stable() {
        let s = RunState::Crashed {
            at: 2.0,
            started_at: Some(1.0),
            exit_code: Some(3),
            signal: None,
            reason: "exit code 3".into(),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"state":"crashed","at":2.0,"started_at":1.0,"exit_code":3,"signal":null,"reason":"exit code 3"}"#
        );
    }
}
