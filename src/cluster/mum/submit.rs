//! mum's `Submit` handler: write each new run's directory, journal the batch as queued (one
//! append), and only then take the runs; the main loop starts what fits. A run mum already has is
//! accepted again unchanged (neroman retrying after a lost reply). A run whose spec cannot be
//! written (a bad environment name) is journaled as lost with the reason; a run whose directory
//! cannot be written for want of space (or any other I/O error) is not taken — neroman resubmits
//! it later — and the problem is reported. The others of the batch go ahead either way; when the
//! journal itself cannot be written, nothing of the batch is taken.

use super::{local, Phase, RunRecord, State};
use crate::cluster::protocol::*;
use crate::util::failpoint;

impl State {
    pub(super) fn submit(&mut self, sub: Submit, project: Option<&str>) -> Response {
        let mut accepted = Vec::new();
        let mut items = Vec::new();
        let mut new_runs = Vec::new();
        let mut transient = false;
        for spec in sub.runs {
            // Runs are the project's own (`12.1`): keyed with its id, another project sharing
            // this workdir has runs of the same names. Never matched with a run held under its
            // bare name from before an upgrade: that may be another project's.
            let key = run_key(project, &spec.run);
            if let Some(known) = self.runs.get(&key) {
                // Resubmitting the same run (neroman retrying after a dropped reply) is harmless.
                accepted.push(AcceptedRun {
                    run: spec.run.clone(),
                    run_dir: known.run_dir.display().to_string(),
                });
                continue;
            }
            if new_runs.iter().any(|(r, _, _)| *r == key) {
                continue; // the same run twice in one batch
            }
            let dir_name = match project {
                Some(p) => format!("{}-{}", &p[..p.len().min(12)], spec.run),
                None => spec.run.clone(),
            };
            let run_dir = self.opts.workdir.join("runs").join(dir_name);
            let event = match local::write_run_dir(&run_dir, &spec, &self.opts.kid_binary) {
                Ok(()) => {
                    self.workdir_health = None;
                    MumEvent::Queued {
                        run_dir: run_dir.display().to_string(),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => MumEvent::Lost {
                    reason: format!("cannot write the run directory {}: {e}", run_dir.display()),
                },
                Err(e) => {
                    // Transient (disk full, quota): not taken; neroman sends it again later.
                    let _ = std::fs::remove_dir_all(&run_dir);
                    self.set_workdir_unhealthy(format!(
                        "the run directory {}: {e}",
                        run_dir.display()
                    ));
                    transient = true;
                    continue;
                }
            };
            let queued = matches!(event, MumEvent::Queued { .. });
            items.push((key.clone(), event, None));
            new_runs.push((key, run_dir.clone(), queued));
            accepted.push(AcceptedRun {
                run: spec.run,
                run_dir: run_dir.display().to_string(),
            });
        }
        failpoint("submit.before_journal");
        if !self.journal(items) {
            return Response::Error(ErrorReply {
                message: self.health.clone().unwrap_or_default(),
            });
        }
        failpoint("submit.after_journal");
        if transient && accepted.is_empty() {
            return Response::Error(ErrorReply {
                message: self.problem().unwrap_or_default(),
            });
        }
        for (run, run_dir, queued) in new_runs {
            let phase = if queued { Phase::Queued } else { Phase::Ended };
            self.runs
                .insert(run.clone(), RunRecord::new(run_dir, phase));
            if queued {
                self.queue.push_back(run);
            }
        }
        Response::Accepted(Accepted { runs: accepted })
    }
}
