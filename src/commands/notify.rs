//! `neroman notify --test`: one test message through every configured channel, now (not
//! through the outbox), one line per channel saying what happened in the server's words.

use super::exit;
use super::output::outln;
use crate::config::Config;
use crate::notify::{self, channel};
use std::path::Path;

/// Exit code when neither `email:` nor `chat:` is configured.
pub const NOTHING_CONFIGURED: i32 = 2;

pub fn test(dir: &Path) -> anyhow::Result<i32> {
    let config = Config::load(dir)?;
    let channels = channel::channels(&config).map_err(anyhow::Error::msg)?;
    if channels.is_empty() {
        eprintln!(
            "neroman: no alerts are configured: add `email:` or `chat:` to {} (see docs/NOTIFY.md)",
            dir.join(crate::config::CONFIG_FILE).display()
        );
        return Ok(NOTHING_CONFIGURED);
    }
    let origin = notify::origin(dir);
    let subject = format!("[neronet] test message — {}", origin.project);
    let body = format!(
        "This is a test message from `neroman notify --test`.\nAlerts of project {} on {} will come this way.\n",
        origin.project_dir, origin.host
    );
    let html = format!(
        "<p>This is a test message from <code>neroman notify --test</code>.</p><p>Alerts of project {} on {} will come this way.</p>",
        notify::compose::escape(&origin.project_dir),
        notify::compose::escape(&origin.host)
    );
    let stamp = format!(
        "<neronet.test.{}.{}@{}>",
        std::process::id(),
        nerokid::report::now() as u64,
        origin.host
    );
    let mut failed = 0;
    for ch in &channels {
        let what = notify::describe(ch);
        match notify::send(ch, &subject, &body, Some(&html), &stamp) {
            Ok(()) => outln!("{what}: sent")?,
            Err(e) => {
                failed += 1;
                outln!("{what}: failed: {}", e.answer)?;
            }
        }
    }
    Ok(if failed > 0 { exit::ERROR } else { exit::OK })
}
