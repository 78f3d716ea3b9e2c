//! One thread per cluster with runs in flight, each holding its own connection to the cluster's
//! mum in a long-poll (`sync` with a wait): when mum has journaled something after the point the
//! store reached, the thread says so on the daemon's channel and waits until the daemon has
//! synced (it owns the store) and sent back the new point. No polling loop: an idle cluster
//! costs one request every [`LONG_POLL`].

use super::Event;
use crate::cluster::client::MumClient;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

/// How long one long-poll is held by mum.
pub const LONG_POLL: Duration = Duration::from_secs(20);

/// The daemon's side of one cluster's news thread. Dropping it ends the thread after its
/// current long-poll.
pub struct NewsThread {
    /// The store's sync point for this cluster: (mum's journal epoch, last stored sequence).
    point: Sender<(String, u64)>,
}

impl NewsThread {
    /// Tell the thread how far the store got (after a sync), so it long-polls from there.
    pub fn synced(&self, epoch: String, seq: u64) -> bool {
        self.point.send((epoch, seq)).is_ok()
    }
}

/// Start the thread for `cluster` on its own connection, long-polling after `point`.
pub fn spawn(
    cluster: String,
    client: MumClient,
    point: (String, u64),
    events: Sender<Event>,
) -> std::io::Result<NewsThread> {
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(point).expect("receiver alive");
    std::thread::Builder::new()
        .name(format!("news-{cluster}"))
        .spawn(move || run(cluster, client, rx, events))?;
    Ok(NewsThread { point: tx })
}

fn run(
    cluster: String,
    mut client: MumClient,
    points: Receiver<(String, u64)>,
    events: Sender<Event>,
) {
    let Ok(mut point) = points.recv() else {
        return;
    };
    loop {
        // The newest point the daemon sent; none pending means the last one still holds.
        match points.try_recv() {
            Ok(p) => point = p,
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
        }
        // A point from another epoch (mum's journal was started afresh) means nothing here:
        // everything in this journal is news.
        let since = if point.0 == client.hello.epoch {
            point.1
        } else {
            0
        };
        match client.sync(since, None, LONG_POLL) {
            Ok(batch) if batch.entries.is_empty() && batch.through <= since && !batch.more => {}
            Ok(_) => {
                if events.send(Event::News(cluster.clone())).is_err() {
                    return;
                }
                // Wait for the daemon to sync and say where the store is now.
                match points.recv_timeout(Duration::from_secs(60)) {
                    Ok(p) => point = p,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                // The same point again (the daemon's sync could not store it): do not spin.
                if point.0 != client.hello.epoch || point.1 <= since {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Err(e) => {
                let _ = events.send(Event::NewsLost {
                    cluster,
                    why: crate::util::error_chain(&e),
                });
                return;
            }
        }
    }
}
