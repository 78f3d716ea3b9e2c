//! One watcher per project, and how the CLI finds it: the daemon holds an exclusive `flock` on
//! `.neronet/watch.lock` (which holds its pid) for its whole life, so a crashed daemon never
//! leaves a stale "running"; it keeps `.neronet/watch.json` (what it watches, since when, what
//! waits) current for `neroman status`, and removes it on a clean stop.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "watch.lock";
pub const STATUS_FILE: &str = "watch.json";
pub const LOG_FILE: &str = "watch.log";

/// What a running watcher says about itself (`.neronet/watch.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WatchStatus {
    pub pid: u32,
    pub workbook: String,
    /// Unix seconds.
    pub since: f64,
    /// `inotify`, or `polling every 2s (why)`.
    pub mode: String,
    /// Why state is not written into the workbook now (it is open in a spreadsheet program).
    #[serde(default)]
    pub writeback_waits: Option<String>,
    /// Since when it waits (the lock file's time, unix seconds).
    #[serde(default)]
    pub writeback_waits_since: Option<f64>,
    /// The workbook's last save could not be used (not a workbook, a header missing, ...).
    #[serde(default)]
    pub workbook_problem: Option<String>,
    /// Clusters not reached in the last round.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

/// The held lock: dropping it releases the project for another watcher.
pub struct Held {
    file: File,
    status_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PidError {
    #[error(
        "a watcher already runs for this project (pid {pid}); stop it with `neroman watch --stop`"
    )]
    Running { pid: u32 },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

fn try_flock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

fn read_pid(file: &mut File) -> u32 {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    text.trim().parse().unwrap_or(0)
}

/// Take the project's watcher lock (`state_dir` is `.neronet`), writing our pid into it.
pub fn acquire(state_dir: &Path) -> Result<Held, PidError> {
    let path = state_dir.join(LOCK_FILE);
    let io = |err| PidError::Io {
        path: path.clone(),
        err,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    if !try_flock(&file).map_err(io)? {
        return Err(PidError::Running {
            pid: read_pid(&mut file),
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(Held {
        file,
        status_path: state_dir.join(STATUS_FILE),
    })
}

impl Held {
    /// Publish the watcher's status for `neroman status` (atomically; a failure is only logged).
    pub fn publish(&self, status: &WatchStatus) {
        let text = serde_json::to_vec_pretty(status).expect("status serializes");
        if let Err(e) = crate::util::write_atomic(&self.status_path, &text) {
            tracing::warn!("{}: {e}", self.status_path.display());
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.status_path);
        // The lock goes with the descriptor; the pid stays (harmless, unlocked).
        let _ = &self.file;
    }
}

/// The watcher running for the project whose state dir is `state_dir`, if any: its pid and
/// what it last published. Decided by the lock, not by the files' presence.
pub fn running(state_dir: &Path) -> Option<(u32, Option<WatchStatus>)> {
    let mut file = File::open(state_dir.join(LOCK_FILE)).ok()?;
    // A shared probe: if we can take the lock, nobody holds it.
    // SAFETY: as in try_flock.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if free {
        return None;
    }
    let pid = read_pid(&mut file);
    let status = std::fs::read(state_dir.join(STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<WatchStatus>(&b).ok())
        .filter(|s| s.pid == pid);
    Some((pid, status))
}
