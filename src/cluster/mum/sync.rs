//! mum's `Sync` handler: journal entries past a sequence number, in batches, so neroman can
//! apply each exactly once. With `wait_ms` it is a long-poll: when nothing is newer, the reply
//! waits (on the journal's append signal, no polling) until something is or the time is up. An
//! `ack` records how far the project has stored, which lets mum compact its journal.

use super::Shared;
use crate::cluster::protocol::*;
use crate::util::{error_chain, failpoint};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The most entries one reply carries, whatever the client asks.
const MAX_BATCH: u32 = 20_000;

pub(super) fn sync(shared: &Shared, project: Option<&str>, q: SyncSince) -> Response {
    let deadline = Instant::now() + Duration::from_millis(u64::from(q.wait_ms.min(MAX_WAIT_MS)));
    let mut s = shared.lock();
    if let (Some(p), Some(ack)) = (project, q.ack) {
        let ack = ack.min(s.journal.last_seq());
        if let Some(known) = s.acks.get_mut(p) {
            *known = (*known).max(ack);
        }
    }
    // Wait while there is nothing newer (and the client is not ahead of a shortened journal).
    while s.journal.last_seq() == q.since && !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        s = shared
            .appended
            .wait_timeout(s, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    let reply = match s
        .journal
        .read_since(q.since, q.max.clamp(1, MAX_BATCH) as usize)
    {
        Ok((mut entries, more)) => {
            let through = entries
                .last()
                .map_or(q.since.max(s.journal.last_seq()), |e| e.seq);
            let through = if more {
                through
            } else {
                through.max(s.journal.last_seq())
            };
            // Another project's runs are none of this one's business (a shared workdir).
            entries.retain(|e| e.project.is_none() || e.project.as_deref() == project);
            Response::Events(EventBatch {
                entries,
                more,
                last_seq: s.journal.last_seq(),
                through,
                health: s.problem(),
            })
        }
        Err(e) => Response::Error(ErrorReply {
            message: error_chain(&e),
        }),
    };
    failpoint("sync.before_reply");
    reply
}
