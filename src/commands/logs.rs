//! `neroman logs ID [-f] [--stderr]`: the latest run's output, read through mum (the same path
//! for a local or a remote cluster).

use super::{exit, open_synced};
use crate::cluster::protocol::LogStream;
use std::path::Path;
use std::time::Duration;

pub fn run(dir: &Path, id: &str, follow: bool, stderr: bool) -> anyhow::Result<i32> {
    let (project, exps, sync) = open_synced(dir)?;
    super::refresh_results(&project, &exps, &sync);
    let Some(exp) = exps.get(id) else {
        anyhow::bail!("no experiment has the id {id:?}");
    };
    let latest = project.store.latest_runs()?;
    let Some(run) = latest.get(&exp.row.id) else {
        anyhow::bail!("experiment {id} has not run yet");
    };
    let stream = if stderr {
        LogStream::Stderr
    } else {
        LogStream::Stdout
    };
    let mut client = project.connect(&run.cluster)?;
    let mut offset = 0;
    let mut failures = 0;
    let mut out = std::io::stdout().lock();
    loop {
        // Following: mum holds the request until output arrives (one connection, no polling).
        let wait = if follow {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        };
        let chunk = match client.read_log(&run.uid, stream, offset, wait) {
            Ok(c) => {
                failures = 0;
                c
            }
            // The agent went away (killed, restarted): the next one picks the run up again.
            Err(e) if follow && failures < 5 => {
                failures += 1;
                tracing::warn!("lost neromum ({e}); reconnecting");
                std::thread::sleep(Duration::from_millis(500));
                client = project.connect(&run.cluster)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        super::output::write_bytes(&mut out, chunk.text.as_bytes())?;
        let got_some = chunk.next > offset;
        offset = chunk.next;
        if chunk.complete || (!follow && !got_some) {
            break;
        }
    }
    Ok(exit::OK)
}
