//! `neroman watch`: run the watcher daemon ([`crate::daemon`]) in the foreground, `--detach`
//! it into the background (log in `.neronet/watch.log`), or `--stop` the one running.

use super::exit;
use super::output::outln;
use crate::daemon::pidfile::{self, LOG_FILE};
use crate::project::STATE_DIR;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn state_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    // The project must exist before a daemon is started or looked for.
    let project = crate::project::Project::open(dir)?;
    Ok(project.dir.join(STATE_DIR))
}

/// Foreground: until SIGINT/SIGTERM.
pub fn run(dir: &Path) -> anyhow::Result<i32> {
    crate::daemon::run(dir, |s| {
        let stop = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            " Ctrl-C stops."
        } else {
            ""
        };
        eprintln!(
            "neroman: watching {} ({}); pid {}. Type start, restart or abort into a status cell and save.{stop}",
            s.workbook, s.mode, s.pid
        );
    })?;
    Ok(exit::OK)
}

/// `--detach`: start `neroman watch` in the background and return once it is ready.
pub fn detach(dir: &Path, verbose: u8) -> anyhow::Result<i32> {
    let state = state_dir(dir)?;
    if let Some((pid, _)) = pidfile::running(&state) {
        outln!("a watcher already runs for this project (pid {pid})")?;
        return Ok(exit::OK);
    }
    let log_path = state.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", log_path.display()))?;
    let start_len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--dir").arg(dir).arg("watch");
    if verbose > 1 {
        cmd.arg("-vv");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: a closed terminal or a Ctrl-C in it does not reach the daemon.
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((pid, Some(status))) = pidfile::running(&state) {
            if pid == child.id() {
                outln!(
                    "watching {} in the background (pid {pid}, {}); log: {}; stop with `neroman watch --stop`",
                    status.workbook,
                    status.mode,
                    log_path.display()
                )?;
                return Ok(exit::OK);
            }
        }
        if let Some(code) = child.try_wait()? {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let tail =
                String::from_utf8_lossy(&text[(start_len as usize).min(text.len())..]).to_string();
            anyhow::bail!(
                "the watcher stopped at start ({code}):\n{}",
                tail.trim_end()
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the watcher (pid {}) did not get ready within 60 s; see {}",
                child.id(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--stop`: SIGTERM, wait for the lock to go (SIGKILL after 20 s).
pub fn stop(dir: &Path) -> anyhow::Result<i32> {
    let state = state_dir(dir)?;
    let Some((pid, _)) = pidfile::running(&state) else {
        outln!("no watcher runs for this project")?;
        return Ok(exit::OK);
    };
    // SAFETY: kill with a pid read from the lock its holder keeps.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let started = Instant::now();
    let mut killed = false;
    while pidfile::running(&state).is_some() {
        if !killed && started.elapsed() > Duration::from_secs(20) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            killed = true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the watcher (pid {pid}) did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if killed {
        outln!("stopped the watcher (pid {pid}) with SIGKILL after 20 s")?;
    } else {
        outln!("stopped the watcher (pid {pid})")?;
    }
    Ok(exit::OK)
}

/// The line `status` prints about the watcher.
pub fn status_line(dir: &Path) -> String {
    match pidfile::running(&dir.join(STATE_DIR)) {
        None => "watcher: not running (workbook commands are not acted on; start one with `neroman watch --detach`)".into(),
        Some((pid, None)) => format!("watcher: running (pid {pid}), starting"),
        Some((pid, Some(s))) => {
            let mut line = format!(
                "watcher: running (pid {pid}, since {}, {})",
                crate::util::human_duration(nerokid::report::now() - s.since)
                    + " ago",
                s.mode
            );
            if let Some(w) = &s.writeback_waits {
                let since = s
                    .writeback_waits_since
                    .map(|t| format!(", for {}", crate::util::human_duration(nerokid::report::now() - t)))
                    .unwrap_or_default();
                line.push_str(&format!("\nwrite-back waits: the workbook is {w}{since}"));
            }
            if let Some(p) = &s.workbook_problem {
                line.push_str(&format!("\nworkbook not acted on: {p}"));
            }
            if !s.unreachable.is_empty() {
                line.push_str(&format!("\nclusters not reached: {}", s.unreachable.join(", ")));
            }
            line
        }
    }
}
