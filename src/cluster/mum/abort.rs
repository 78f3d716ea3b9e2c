//! mum's `Abort` handler: a queued run is cancelled; a running one's job is cancelled through the
//! warden (locally: SIGTERM to its kid, which stops the job's group — SIGTERM, grace, SIGKILL —
//! and records the abort); a run being launched is cancelled once launched; a run mum has not
//! been given yet is cancelled in advance. The warden is called outside the state lock.

use super::{Phase, RunRecord, Shared};
use crate::cluster::protocol::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The kid's grace between SIGTERM and SIGKILL, as its run directory says.
pub(super) fn grace(run_dir: &Path) -> Duration {
    std::fs::read(run_dir.join(nerokid::report::SPEC_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<nerokid::report::KidSpec>(&b).ok())
        .map_or(Duration::from_secs(10), |k| {
            Duration::from_secs_f64(k.grace_secs.clamp(0.0, 86_400.0))
        })
}

pub(super) fn abort(shared: &Shared, a: Abort, project: Option<&str>) -> Response {
    let mut to_cancel = Vec::new();
    {
        let mut s = shared.lock();
        let mut items = Vec::new();
        let mut ended = Vec::new();
        for name in a.runs {
            let run = s
                .find_run(project, &name)
                .unwrap_or_else(|| run_key(project, &name));
            let Some(r) = s.runs.get(&run) else {
                // Not submitted yet (neroman recorded it, then lost its connection): remember the
                // cancel, so a later submit of this run is accepted but never started.
                items.push((run.clone(), MumEvent::Cancelled, None));
                ended.push(run);
                continue;
            };
            match &r.phase {
                Phase::Queued => {
                    items.push((run.clone(), MumEvent::Cancelled, None));
                    ended.push(run);
                }
                Phase::Launching
                | Phase::Launched {
                    job: _,
                    journaled: false,
                } => {
                    // Cancelled as soon as the launch is journaled.
                    if let Some(r) = s.runs.get_mut(&run) {
                        r.abort_requested = true;
                    }
                }
                Phase::Launched { job, .. } => {
                    // The kid hears it directly when it reports over TCP: it stops the job
                    // gracefully at once; the warden cancels only if it is still there later.
                    let direct = shared
                        .kids
                        .get()
                        .is_some_and(|k| k.abort(super::dir_name(&r.run_dir)));
                    if direct {
                        let due = Instant::now() + grace(&r.run_dir) + super::ABORT_BACKSTOP;
                        if let Some(r) = s.runs.get_mut(&run) {
                            r.abort_requested = true;
                            r.cancel_due = Some(due);
                        }
                        items.push((run.clone(), MumEvent::AbortSent, None));
                    } else {
                        to_cancel.push((run.clone(), job.clone(), r.request(&run)))
                    }
                }
                Phase::Ended => {}
            }
        }
        if !s.journal(items) {
            return Response::Error(ErrorReply {
                message: s.health.clone().unwrap_or_default(),
            });
        }
        for run in ended {
            s.queue.retain(|q| *q != run);
            s.runs
                .entry(run)
                .or_insert_with(|| RunRecord::new(PathBuf::new(), Phase::Ended))
                .phase = Phase::Ended;
        }
    }
    let sent: Vec<String> = {
        let mut warden = shared.warden();
        to_cancel
            .into_iter()
            .filter(|(_, job, req)| !job.is_empty() && warden.cancel(job, req))
            .map(|(run, _, _)| run)
            .collect()
    };
    let mut s = shared.lock();
    for run in &sent {
        if let Some(r) = s.runs.get_mut(run) {
            r.abort_requested = true;
        }
    }
    let items = sent
        .into_iter()
        .map(|run| (run, MumEvent::AbortSent, None))
        .collect();
    let ok = s.journal(items);
    drop(s);
    shared.appended.notify_all();
    if ok {
        Response::Done
    } else {
        Response::Error(ErrorReply {
            message: shared.lock().health.clone().unwrap_or_default(),
        })
    }
}
