//! The workdir lock: one mum per workdir, across every login node that shares it. A mum holds an
//! exclusive `flock` on `<workdir>/mum.lock` for its lifetime and records there its pid and the
//! host it runs on (`4242 on login1`). A bridge that finds the lock held by a mum on another
//! host reaches that mum from there (`bridge.rs`) rather than start a second one.
//!
//! flock over NFS: Linux clients turn it into a whole-file POSIX lock that every client sees
//! (unless the home is mounted with `local_lock=flock|all`); the lock of a process that dies is
//! released with it, and a crashed node's locks by the server's lock manager once the node is
//! declared dead. So "held" always means "a live mum, somewhere"; the recorded host says where.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The lock file's name inside a workdir.
pub const LOCK_FILE: &str = "mum.lock";

/// Who holds a workdir's lock, as its lock file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// `None` for a mum that recorded only its pid (before hosts were recorded): it counts as
    /// a mum on this host, which is what such a mum always was.
    pub host: Option<String>,
}

impl Holder {
    /// The holder's host when it is not this one.
    pub fn elsewhere(&self) -> Option<&str> {
        self.host.as_deref().filter(|h| *h != this_host())
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) => write!(f, "pid {} on {host}", self.pid),
            None => write!(f, "pid {}", self.pid),
        }
    }
}

/// This machine's name as `hostname` prints it (`gethostname`): what login nodes call each
/// other by.
pub fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is ours and its length is passed; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Write the holder record into the lock file a mum has just locked: `<pid> on <host>`. The
/// pid comes first, so readers that take the first word as the pid keep working.
pub fn record(lock: &File) -> io::Result<()> {
    lock.set_len(0)?;
    let line = format!("{} on {}\n", std::process::id(), this_host());
    (&*lock).write_all(line.as_bytes())
}

/// Read a lock file's record: `4242 on login1`, or just `4242` (older mums).
pub fn parse(text: &str) -> Option<Holder> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let host = match (words.next(), words.next()) {
        (Some("on"), Some(host)) => Some(host.to_string()),
        _ => None,
    };
    Some(Holder { pid, host })
}

/// What a look at a workdir's lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// No mum holds it (or there is no lock file yet).
    Free,
    /// A live mum holds it; `None` while its record is not written yet (or unreadable).
    Held(Option<Holder>),
}

/// Is the workdir locked by a mum, and by whom? Takes a shared lock for a moment to find out
/// (a mum starting meanwhile waits for it).
pub fn probe(workdir: &Path) -> io::Result<LockState> {
    let mut f = match File::open(workdir.join(LOCK_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockState::Free),
        Err(e) => return Err(e),
    };
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(LockState::Free); // released when `f` closes
    }
    let err = io::Error::last_os_error();
    if err.kind() != io::ErrorKind::WouldBlock {
        return Err(err);
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(LockState::Held(parse(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_names_pid_and_host() {
        assert_eq!(
            parse("4242 on login1\n"),
            Some(Holder {
                pid: 4242,
                host: Some("login1".into())
            })
        );
        // What mums wrote before they recorded their host.
        assert_eq!(
            parse("4242\n"),
            Some(Holder {
                pid: 4242,
                host: None
            })
        );
        assert_eq!(parse(""), None);
        assert_eq!(parse("x on y"), None);
    }

    #[test]
    fn a_holder_on_this_host_is_not_elsewhere() {
        let here = Holder {
            pid: 1,
            host: Some(this_host()),
        };
        assert_eq!(here.elsewhere(), None);
        let old = Holder { pid: 1, host: None };
        assert_eq!(old.elsewhere(), None);
        let there = Holder {
            pid: 1,
            host: Some(format!("not-{}", this_host())),
        };
        assert_eq!(
            there.elsewhere(),
            Some(format!("not-{}", this_host()).as_str())
        );
    }

    #[test]
    fn probe_sees_a_held_lock_and_its_record() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(probe(dir.path()).unwrap(), LockState::Free);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.path().join(LOCK_FILE))
            .unwrap();
        assert_eq!(probe(dir.path()).unwrap(), LockState::Free);
        // flock belongs to the open file: a second open in this process conflicts like another
        // process would.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        assert_eq!(probe(dir.path()).unwrap(), LockState::Held(None));
        record(&lock).unwrap();
        let held = probe(dir.path()).unwrap();
        assert_eq!(
            held,
            LockState::Held(Some(Holder {
                pid: std::process::id(),
                host: Some(this_host())
            }))
        );
        drop(lock);
        assert_eq!(probe(dir.path()).unwrap(), LockState::Free);
    }
}
