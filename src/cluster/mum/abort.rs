//! mum's `Abort` handler: a queued run is cancelled; a running one's kid gets SIGTERM (the kid
//! stops the job's group: SIGTERM, grace, SIGKILL, and records the abort).

use super::{local, Phase, State};
use crate::cluster::protocol::*;
use crate::util::error_chain;

impl State {
    pub(super) fn abort(&mut self, a: Abort) -> Response {
        let mut items = Vec::new();
        for run in a.runs {
            let Some(r) = self.runs.get_mut(&run) else {
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
