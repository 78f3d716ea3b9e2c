//! `neroman logs ID [--run N] [-f] [--stderr]`: the output of the latest run (or run N), read through mum (the same path
//! for a local or a remote cluster).

use super::{exit, open_synced_or_store};
use crate::cluster::protocol::LogStream;
use std::path::Path;
use std::time::Duration;

pub fn run(
    dir: &Path,
    id: &str,
    run_no: Option<i64>,
    follow: bool,
    stderr: bool,
) -> anyhow::Result<i32> {
    let (project, exps, sync, _) = open_synced_or_store(dir)?;
    super::refresh_results(&project, &exps, &sync);
    let latest = project.store.latest_runs()?;
    // A row deleted from the workbook still has its runs in the store.
    let key = crate::sheet::read::canonical_id(id);
    let exp_id = match exps.get(id) {
        Some(exp) => exp.row.id.clone(),
        None => match latest
            .keys()
            .find(|k| crate::sheet::read::canonical_id(k) == key)
        {
            Some(k) => k.clone(),
            None => anyhow::bail!("no experiment has the id {id:?}"),
        },
    };
    let Some(last) = latest.get(&exp_id) else {
        anyhow::bail!("experiment {id} has not run yet");
    };
    let run = match run_no {
        None => last.clone(),
        Some(n) => match project.store.run(&crate::store::run_uid(&exp_id, n))? {
            Some(r) => r,
            None => anyhow::bail!(
                "experiment {id} has no run {n} (its runs are 1 to {})",
                last.run_no
            ),
        },
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
