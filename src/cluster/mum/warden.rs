//! The warden seam: what mum asks of whatever runs its jobs (plain processes here; SLURM and
//! Grid Engine later). Submit takes a batch, poll is one call for every job of the warden per
//! round, cancel stops one job, and `find` answers "did a launch that mum journaled as intent
//! happen?" after a crash, so replay reconciles instead of launching twice. mum never calls a
//! warden while holding its state lock. Job ids are the warden's strings (a pid, a SLURM job id).
//!
//! A warden with a queue of its own (SLURM) takes every run at once ([`Warden::queues_itself`]),
//! and may outlive a kid's exit record: such a job can be requeued, or end with the warden's own
//! verdict (a time limit), so mum holds a kid's exit record back until the warden is done with
//! the job ([`Warden::holds_exit`]).

use crate::cluster::protocol::Verdict;
use std::collections::HashMap;
use std::path::PathBuf;

/// One job to hand over: the run and its directory (holding `job.sh`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub run: String,
    pub run_dir: PathBuf,
}

/// What a warden knows of a job it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Running (or, for a warden that says no more, queued or running).
    Alive,
    /// Waiting in the warden's queue: not started yet, or put back after it ran (requeued).
    Queued,
    /// The warden is done with the job and says how it ended. `overrides`: its word wins
    /// over the kid's exit record (a time limit, out of memory, cancelled by someone else);
    /// otherwise it is used only when the kid left no record. `reason` in plain words.
    Ended {
        verdict: Verdict,
        overrides: bool,
        reason: String,
    },
    /// The warden no longer has it (ended, or never there) and says nothing more.
    Gone,
}

impl JobState {
    /// Queued or running: the job is still the warden's.
    pub fn is_alive(&self) -> bool {
        matches!(self, JobState::Alive | JobState::Queued)
    }
}

/// After a crash between journaling "launching" and "launched": what became of the launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The job is there, under this id.
    Running(String),
    /// It ran and is gone (its kid left an event log): follow the log, launch nothing.
    Ended,
    /// It never started: launch it.
    Never,
}

pub trait Warden: Send {
    /// The scheduler's name as the researcher reads it in reasons (`requeued by SLURM`).
    fn name(&self) -> &'static str {
        "the local warden"
    }
    /// Hand jobs over, in order; one result per job (its id, or why it could not start).
    fn submit(&mut self, jobs: &[JobRequest]) -> Vec<Result<String, String>>;
    /// The state of each job (by id), in one query for all of them.
    fn poll(&mut self, jobs: &[(String, JobRequest)]) -> HashMap<String, JobState>;
    /// Ask a job to stop (its kid then stops the job's group gracefully). Whether it was sent.
    fn cancel(&mut self, job: &str, req: &JobRequest) -> bool;
    /// Reconcile a launch journaled as intent only.
    fn find(&mut self, req: &JobRequest) -> Found;
    /// A job's kid is gone without an exit record: stop whatever of the job is left.
    fn clean_up(&mut self, req: &JobRequest, job_pgid: Option<i32>);
    /// The warden queues jobs itself: mum hands it every run at once (`max_parallel` is then
    /// passed on as a hint, see [`Warden::set_throttle`]).
    fn queues_itself(&self) -> bool {
        false
    }
    /// The kid's exit record waits for the warden's word on the job (see the module docs).
    fn holds_exit(&self) -> bool {
        false
    }
    /// How many of its jobs may run at once, for a warden that queues itself (`None`: no limit).
    fn set_throttle(&mut self, _max: Option<u32>) {}
    /// mum waits on news only the warden has (a kid's exit record held back): poll at the
    /// normal interval again instead of a backed-off one.
    fn hurry(&mut self) {}
    /// When the states `poll` returns were last asked of the scheduler (`None`: always fresh
    /// or never asked). A job listed as queued then, whose kid had started before, was requeued.
    fn refreshed(&self) -> Option<std::time::Instant> {
        None
    }
}

/// Which warden a mum drives, with its settings (`neromum --warden ...`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum WardenSettings {
    /// Plain processes on mum's machine.
    #[default]
    Local,
    /// SLURM job arrays: one `squeue` per `poll_interval`, arrays of at most `array_max`.
    Slurm {
        poll_interval: std::time::Duration,
        array_max: u32,
    },
    /// Grid Engine (OGE/SGE/Son of Grid Engine) array jobs: one `qstat` per `poll_interval`,
    /// arrays (`qsub -t`) of at most `array_max` tasks.
    Sge {
        poll_interval: std::time::Duration,
        array_max: u32,
    },
}

impl WardenSettings {
    /// `local`, `slurm` or `sge`, as neronet.yaml names it.
    pub fn kind(&self) -> &'static str {
        match self {
            WardenSettings::Local => "local",
            WardenSettings::Slurm { .. } => "slurm",
            WardenSettings::Sge { .. } => "sge",
        }
    }

    /// The neromum arguments that choose this warden (none for the local one).
    pub fn args(&self) -> Vec<String> {
        match self {
            WardenSettings::Local => Vec::new(),
            WardenSettings::Slurm {
                poll_interval,
                array_max,
            } => vec![
                "--warden".into(),
                "slurm".into(),
                "--poll-interval".into(),
                poll_interval.as_secs_f64().to_string(),
                "--array-max".into(),
                array_max.to_string(),
            ],
            WardenSettings::Sge {
                poll_interval,
                array_max,
            } => vec![
                "--warden".into(),
                "sge".into(),
                "--poll-interval".into(),
                poll_interval.as_secs_f64().to_string(),
                "--array-max".into(),
                array_max.to_string(),
            ],
        }
    }
}

/// Run a scheduler command (`input` on its stdin, if any); its stdout, or an error with what it
/// said (stderr, then stdout: qsub says some refusals there), at most 5 lines.
pub fn run_scheduler(cmd: &mut std::process::Command, input: &[u8]) -> Result<String, String> {
    let program = std::path::Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = cmd
        .stdin(if input.is_empty() {
            std::process::Stdio::null()
        } else {
            std::process::Stdio::piped()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = std::io::Write::write_all(&mut stdin, input);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        return Err(format!(
            "{program} failed ({}): {}",
            out.status,
            err.trim().lines().take(5).collect::<Vec<_>>().join(" / ")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The files of a batch (one job array) under `<workdir>/batches/<batch>/`, shared by the
/// SLURM and Grid Engine wardens: written before the scheduler is asked (intent first), so that
/// `find` can tell after a crash whether a run was submitted.
pub struct Batch {
    pub id: String,
    pub dir: PathBuf,
}

impl Batch {
    /// A new batch for `run_dirs`, task numbers from `first_task`: each run directory gets
    /// `marker` (`<batch> <task>`) and a `script` link to the batch's script; the batch gets
    /// `<task>.log` links to each run's `kid.log` (the scheduler's output file).
    pub fn prepare(
        batches: &std::path::Path,
        run_dirs: &[&std::path::Path],
        first_task: usize,
        marker: &str,
        script: &str,
    ) -> Result<Batch, String> {
        let id = crate::util::random_hex(6).map_err(|e| format!("cannot make a batch id: {e}"))?;
        let dir = batches.join(&id);
        let io = |what: &str, path: &std::path::Path, e: std::io::Error| {
            format!("{what} {}: {e}", path.display())
        };
        std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
        for (i, run_dir) in run_dirs.iter().enumerate() {
            let task = first_task + i;
            let m = run_dir.join(marker);
            std::fs::write(&m, format!("{id} {task}\n")).map_err(|e| io("cannot write", &m, e))?;
            let log = dir.join(format!("{task}.log"));
            let _ = std::fs::remove_file(&log);
            std::os::unix::fs::symlink(run_dir.join("kid.log"), &log)
                .map_err(|e| io("cannot link", &log, e))?;
            let link = run_dir.join(script);
            let _ = std::fs::remove_file(&link);
            let _ = std::os::unix::fs::symlink(dir.join(script), &link);
        }
        Ok(Batch { id, dir })
    }

    /// Write the batch's script.
    pub fn write_script(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Note the scheduler's job id (what `find` reads first).
    pub fn note_job_id(batches: &std::path::Path, batch: &str, id: &str) {
        let _ = crate::util::write_atomic(
            &batches.join(batch).join("jobid"),
            format!("{id}\n").as_bytes(),
        );
    }

    /// A run's batch and task, from its marker (`None`: the scheduler was never asked).
    pub fn of_run(run_dir: &std::path::Path, marker: &str) -> Option<(String, u32)> {
        let text = std::fs::read_to_string(run_dir.join(marker)).ok()?;
        let mut w = text.split_whitespace();
        Some((w.next()?.to_string(), w.next()?.parse().ok()?))
    }

    /// The job id noted for a batch, if the scheduler answered before a crash.
    pub fn job_id(batches: &std::path::Path, batch: &str) -> Option<String> {
        std::fs::read_to_string(batches.join(batch).join("jobid"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
}
