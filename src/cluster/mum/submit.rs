//! mum's `Submit` handler: write each new run's directory, journal it as queued, start what fits.
//! A run mum already has is accepted again unchanged (neroman retrying after a lost reply).

use super::{local, Phase, RunRecord, State};
use crate::cluster::protocol::*;
use crate::util::error_chain;

impl State {
    pub(super) fn submit(&mut self, sub: Submit) -> Response {
        let mut accepted = Vec::new();
        let mut journal_items = Vec::new();
        for spec in sub.runs {
            if self.runs.contains_key(&spec.run) {
                // Resubmitting the same run (neroman retrying after a dropped reply) is harmless.
                let run_dir = self.runs[&spec.run].run_dir.display().to_string();
                accepted.push(AcceptedRun {
                    run: spec.run,
                    run_dir,
                });
                continue;
            }
            let run_dir = self.opts.workdir.join("runs").join(&spec.run);
            if let Err(e) = local::write_run_dir(&run_dir, &spec, &self.opts.kid_binary) {
                return Response::Error(ErrorReply {
                    message: format!(
                        "run {}: write run directory {}: {e}",
                        spec.run,
                        run_dir.display()
                    ),
                });
            }
            journal_items.push((
                spec.run.clone(),
                MumEvent::Queued {
                    run_dir: run_dir.display().to_string(),
                },
                None,
            ));
            accepted.push(AcceptedRun {
                run: spec.run.clone(),
                run_dir: run_dir.display().to_string(),
            });
            self.runs.insert(
                spec.run.clone(),
                RunRecord {
                    run_dir,
                    phase: Phase::Queued,
                    kid_offset: 0,
                    job_pgid: None,
                },
            );
            self.queue.push_back(spec.run);
        }
        if let Err(e) = self.journal.append(journal_items) {
            return Response::Error(ErrorReply {
                message: error_chain(&e),
            });
        }
        // Start what fits now rather than at the next tick.
        if let Err(e) = self.launch_queued() {
            tracing::error!("launch: {e}");
        }
        Response::Accepted(Accepted { runs: accepted })
    }
}
