//! `neromum bridge`: joins its stdin/stdout to the local mum's unix socket, starting the mum
//! when none answers. `ssh host neromum bridge --workdir W` is how neroman reaches a remote mum:
//! no port is opened, the protocol is the same bytes as over the socket. The bridge ends when
//! either side closes (neroman gone: stdin ends; mum gone: the socket ends).
//!
//! Login nodes: clusters put one name (login.example.org) in front of several login nodes that
//! share the home directory, so two connections may land on different nodes. The workdir lock
//! (`workdir_lock.rs`) records the host of the mum holding it; a bridge that finds the workdir
//! served by a mum on another node hops there (`ssh <that host> <this neromum> bridge ...`, its
//! own arguments) and joins its stdin/stdout to that: the mum is reached where it runs, never
//! killed and never doubled. Login nodes must reach each other by the name `hostname` prints,
//! with the user's keys and no prompt (normal on clusters).

use crate::cluster::client::{mum_log_tail, spawn_mum, ClientError, LocalMum};
use crate::cluster::socket_path;
use crate::cluster::workdir_lock::{self, Holder, LockState};
use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a bridge with `start: false` prints (and exits 3) when no agent answers.
pub const NO_AGENT: &str = "neromum: no agent running";

/// The hidden argument a hopping bridge adds, naming the host it hops from: a bridge reached
/// by a hop never hops again.
pub const HOPPED_FROM: &str = "--hopped-from";

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the agent for {workdir} runs on {host} ({holder}); this bridge on {here} reaches it with `ssh {host}`, which failed: {said} (login nodes must reach each other by the name `hostname` prints, with the user's ssh keys and no prompt)", host = holder.host.as_deref().unwrap_or("?"))]
    Hop {
        workdir: PathBuf,
        holder: Holder,
        here: String,
        said: String,
    },
    #[error("cannot run ssh to reach the agent for {workdir} on {host}")]
    Spawn {
        workdir: PathBuf,
        host: String,
        #[source]
        err: std::io::Error,
    },
    #[error("the lock of {workdir} names the agent {holder}, but `ssh {host}` from {from} landed on {here}: login nodes must reach each other by the name `hostname` prints there", host = holder.host.as_deref().unwrap_or("?"))]
    HopAgain {
        workdir: PathBuf,
        holder: Holder,
        from: String,
        here: String,
    },
    #[error("cannot pass {0:?} on to another login node: not UTF-8 or contains NUL")]
    Unquotable(OsString),
}

/// What a bridge needs to hop to another login node.
#[derive(Debug, Clone, Default)]
pub struct Hop {
    /// This bridge's command line, program name first: passed on as it came (the workdir made
    /// absolute, [`HOPPED_FROM`] added).
    pub argv: Vec<OsString>,
    /// The host whose bridge hopped here ([`HOPPED_FROM`]), if any.
    pub from: Option<String>,
}

/// Connect (starting mum if needed and `start`), then pump bytes both ways until one side
/// closes. A workdir served from another login node is reached through that node.
pub fn run(m: &LocalMum, start: bool, hop: &Hop) -> Result<(), BridgeError> {
    if let Some(holder) = holder_elsewhere(&m.workdir) {
        return hop_to(m, hop, holder);
    }
    if !start && UnixStream::connect(socket_path(&m.workdir)).is_err() {
        eprintln!("{NO_AGENT} for {}", m.workdir.display());
        std::process::exit(3);
    }
    let stream = match connect_or_start(m)? {
        Reached::Here(stream) => stream,
        Reached::Elsewhere(holder) => return hop_to(m, hop, holder),
    };
    let mut to_mum = stream.try_clone().map_err(|e| io_err(m, e))?;
    let mut from_mum = stream;
    std::thread::spawn(move || {
        pump(&mut std::io::stdin().lock(), &mut to_mum);
        // neroman is gone (or closed its end): let mum see the end of the stream.
        let _ = to_mum.shutdown(std::net::Shutdown::Write);
    });
    // A closed stdout (ssh gone) is an error here, not a SIGPIPE death. The stdin side ends
    // with stdin; the process exits now either way.
    pump(&mut from_mum, &mut std::io::stdout().lock());
    let _ = from_mum.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// The mum holding the workdir's lock when it runs on another host. Read twice a moment apart:
/// a mum that has just taken the lock writes its record right after, over what the previous
/// holder (perhaps on another host) left there.
fn holder_elsewhere(workdir: &Path) -> Option<Holder> {
    let once = || match workdir_lock::probe(workdir) {
        Ok(LockState::Held(Some(h))) if h.elsewhere().is_some() => Some(h),
        _ => None,
    };
    let first = once()?;
    std::thread::sleep(Duration::from_millis(50));
    once().filter(|again| *again == first)
}

/// Reach the mum on its own host: `ssh HOST NEROMUM bridge ...` with this bridge's arguments,
/// its stdin and stdout joined to ours. Returns when ssh ends; a failed ssh is an error that
/// names the host and what ssh said; another exit status is passed on as ours.
fn hop_to(m: &LocalMum, hop: &Hop, holder: Holder) -> Result<(), BridgeError> {
    let host = holder.host.clone().unwrap_or_default();
    let here = workdir_lock::this_host();
    if let Some(from) = &hop.from {
        return Err(BridgeError::HopAgain {
            workdir: m.workdir.clone(),
            holder,
            from: from.clone(),
            here,
        });
    }
    let command = remote_command(m, hop, &here)?;
    tracing::info!(
        "{} is served by the agent {holder}: bridging through `ssh {host}`",
        m.workdir.display()
    );
    let mut child = Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "--"])
        .arg(&host)
        .arg(&command)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| BridgeError::Spawn {
            workdir: m.workdir.clone(),
            host: host.clone(),
            err,
        })?;
    // Pass ssh's stderr (and the far bridge's) on as it comes; keep the last lines for the error.
    let stderr = child.stderr.take();
    let relay = std::thread::spawn(move || {
        let mut last: Vec<String> = Vec::new();
        let Some(stderr) = stderr else {
            return last;
        };
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            last.push(line);
            if last.len() > 5 {
                last.remove(0);
            }
        }
        last
    });
    let status = child.wait().map_err(|err| BridgeError::Spawn {
        workdir: m.workdir.clone(),
        host: host.clone(),
        err,
    })?;
    let said = relay.join().unwrap_or_default();
    match status.code() {
        Some(0) => Ok(()),
        // ssh's own failure (cannot connect, authenticate, resolve the name).
        Some(255) | None => Err(BridgeError::Hop {
            workdir: m.workdir.clone(),
            holder,
            here,
            said: if said.is_empty() {
                format!("ssh ended with {status}")
            } else {
                said.join("; ")
            },
        }),
        Some(code) => std::process::exit(code),
    }
}

/// The far side's command line: the program (absolute when this one was started by path), this
/// bridge's arguments with the workdir made absolute, and where the hop comes from.
fn remote_command(m: &LocalMum, hop: &Hop, here: &str) -> Result<String, BridgeError> {
    let mut argv = hop.argv.iter();
    let program = match argv.next() {
        Some(p) if !p.as_encoded_bytes().contains(&b'/') => p.clone(),
        _ => m.mum_binary.clone().into_os_string(),
    };
    let mut words = vec![program];
    while let Some(arg) = argv.next() {
        let bytes = arg.as_encoded_bytes();
        if arg == "--workdir" || arg == HOPPED_FROM {
            argv.next();
        } else if !(bytes.starts_with(b"--workdir=") || bytes.starts_with(b"--hopped-from=")) {
            words.push(arg.clone());
        }
    }
    words.push("--workdir".into());
    words.push(m.workdir.clone().into_os_string());
    words.push(HOPPED_FROM.into());
    words.push(here.into());
    let quoted: Result<Vec<String>, BridgeError> = words
        .into_iter()
        .map(|w| {
            w.to_str()
                .and_then(|s| shlex::try_quote(s).ok())
                .map(|q| q.into_owned())
                .ok_or_else(|| BridgeError::Unquotable(w.clone()))
        })
        .collect();
    Ok(quoted?.join(" "))
}

/// Copy bytes until either side ends or fails, flushing each chunk as it comes.
fn pump(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = [0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Where the mum was reached.
enum Reached {
    Here(UnixStream),
    /// A mum on another host holds the workdir (it won a start race with ours).
    Elsewhere(Holder),
}

fn connect_or_start(m: &LocalMum) -> Result<Reached, ClientError> {
    let sock = socket_path(&m.workdir);
    if let Ok(s) = UnixStream::connect(&sock) {
        return Ok(Reached::Here(s));
    }
    let mut child = spawn_mum(m)?;
    let started = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            std::thread::spawn(move || child.wait());
            return Ok(Reached::Here(s));
        }
        // A mum that lost a start race exits at once; the winner's socket appears shortly, or
        // the winner runs on another login node.
        if let Ok(Some(_)) = child.try_wait() {
            if let Some(holder) = holder_elsewhere(&m.workdir) {
                return Ok(Reached::Elsewhere(holder));
            }
        }
        if started.elapsed() > Duration::from_secs(15) {
            return Err(ClientError::NoAnswer {
                workdir: m.workdir.clone(),
                secs: started.elapsed().as_secs(),
                log_tail: mum_log_tail(&m.workdir),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn io_err(m: &LocalMum, err: std::io::Error) -> ClientError {
    ClientError::Wire {
        workdir: m.workdir.clone(),
        err: err.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::client::Transport;

    fn mum(workdir: &str) -> LocalMum {
        LocalMum {
            warden: crate::cluster::mum::warden::WardenSettings::Local,
            workdir: workdir.into(),
            mum_binary: "/shared/bin/neromum".into(),
            kid_binary: "/shared/bin/nerokid".into(),
            max_parallel: 2,
            idle_exit_secs: 900,
            listen: "auto".into(),
            project: None,
            transport: Transport::Socket,
        }
    }

    fn hop(argv: &[&str]) -> Hop {
        Hop {
            argv: argv.iter().map(OsString::from).collect(),
            from: None,
        }
    }

    #[test]
    fn the_far_bridge_gets_the_same_arguments_and_an_absolute_workdir() {
        let m = mum("/home/u/neronet");
        let cmd = remote_command(
            &m,
            &hop(&[
                "/shared/bin/neromum",
                "bridge",
                "--workdir",
                "neronet",
                "--max-parallel",
                "4",
                "--kid",
                "/shared/bin/nerokid",
            ]),
            "login2",
        )
        .unwrap();
        assert_eq!(
            cmd,
            "/shared/bin/neromum bridge --max-parallel 4 --kid /shared/bin/nerokid --workdir /home/u/neronet --hopped-from login2"
        );
        // A neromum found on PATH is found on PATH there too; quoting survives the far shell.
        let m = mum("/home/u/my runs");
        let cmd = remote_command(
            &m,
            &hop(&[
                "neromum",
                "bridge",
                "--workdir=my runs",
                "--no-start",
                "--hopped-from=x",
            ]),
            "login2",
        )
        .unwrap();
        assert_eq!(
            cmd,
            "neromum bridge --no-start --workdir '/home/u/my runs' --hopped-from login2"
        );
        assert_eq!(
            shlex::split(&cmd).unwrap(),
            [
                "neromum",
                "bridge",
                "--no-start",
                "--workdir",
                "/home/u/my runs",
                "--hopped-from",
                "login2"
            ]
        );
    }

    #[test]
    fn a_bridge_reached_by_a_hop_never_hops_again() {
        let m = mum("/home/u/neronet");
        let mut h = hop(&["/shared/bin/neromum", "bridge", "--workdir", "neronet"]);
        h.from = Some("login1".into());
        let holder = Holder {
            pid: 7,
            host: Some("login3".into()),
        };
        let err = hop_to(&m, &h, holder).unwrap_err();
        assert!(matches!(err, BridgeError::HopAgain { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("pid 7 on login3") && text.contains("from login1"),
            "{text}"
        );
    }

    #[test]
    fn a_lock_held_on_another_host_is_found_and_one_held_here_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.path().join(workdir_lock::LOCK_FILE))
            .unwrap();
        use std::os::unix::io::AsRawFd;
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        workdir_lock::record(&lock).unwrap();
        assert_eq!(holder_elsewhere(dir.path()), None);
        std::fs::write(dir.path().join(workdir_lock::LOCK_FILE), "42 on login9\n").unwrap();
        assert_eq!(
            holder_elsewhere(dir.path()),
            Some(Holder {
                pid: 42,
                host: Some("login9".into())
            })
        );
        // The record stays, the holder is gone (flock released with it): nothing to hop to.
        drop(lock);
        assert_eq!(holder_elsewhere(dir.path()), None);
    }
}
