//! mum's `Sync` handler: journal entries past a sequence number, in batches, so neroman can
//! apply each exactly once.

use super::State;
use crate::cluster::protocol::*;
use crate::util::error_chain;

/// The most entries one reply carries, whatever the client asks.
const MAX_BATCH: u32 = 20_000;

impl State {
    pub(super) fn sync(&self, q: SyncSince) -> Response {
        match self
            .journal
            .read_since(q.since, q.max.clamp(1, MAX_BATCH) as usize)
        {
            Ok((entries, more)) => Response::Events(EventBatch { entries, more }),
            Err(e) => Response::Error(ErrorReply {
                message: error_chain(&e),
            }),
        }
    }
}
