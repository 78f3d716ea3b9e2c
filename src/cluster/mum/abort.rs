//! mum's `Abort` handler: a queued run is cancelled; a running one's kid gets SIGTERM (the kid
//! stops the job's group: SIGTERM, grace, SIGKILL, and records the abort); a run mum has not
//! been given yet is cancelled in advance.

use super::{local, Phase, RunRecord, State};
use crate::cluster::protocol::*;
use crate::util::error_chain;

impl State {
    pub(super) fn abort(&mut self, a: Abort) -> Response {
        let mut items = Vec::new();
        for run in a.runs {
            let Some(r) = self.runs.get_mut(&run) else {
                // Not submitted yet (neroman recorded it, then lost its connection): remember the
                // cancel, so a later submit of this run is accepted but never started.
                self.runs.insert(run.clone(), RunRecord::cancelled());
                items.push((run, MumEvent::Cancelled, None));
                continue;
            };
            match &r.phase {
                Phase::Queued => {
                    r.phase = Phase::Ended;
                    self.queue.retain(|q| q != &run);
                    items.push((run, MumEvent::Cancelled, None));
                }
                Phase::Launched { pid, .. } => {
                    if local::signal_kid(*pid, libc::SIGTERM) {
                        items.push((run, MumEvent::AbortSent, None));
                    }
                }
                Phase::Ended => {}
            }
        }
        match self.journal.append(items) {
            Ok(_) => Response::Done,
            Err(e) => Response::Error(ErrorReply {
                message: error_chain(&e),
            }),
        }
    }
}
