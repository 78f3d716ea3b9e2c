//! neroman's SSH link to a cluster's login node. One OpenSSH control master per (user, host,
//! ssh config), shared by this user's neroman processes and kept a few minutes after its last
//! channel closes, carries everything: remote commands, uploads of the static neromum/nerokid,
//! and the `neromum bridge` whose stdin/stdout speak the mum protocol.
//!
//! Theory of operation. The `openssh` crate (native mux) and its tokio runtime stay inside this
//! module; callers are synchronous and get plain results or a [`Connection`] whose streams are
//! bridged from the runtime. Connecting starts the master with the system `ssh` (the user's
//! config as is, plus `-F` when the cluster names `ssh_config:`), or reuses a live one found at
//! its fixed control path. A master that dies (killed, sshd restarted, network gone) is started
//! again with backoff within a budget; an authentication failure or an unknown host is an error
//! at once, with ssh's own words. Reaching the agent costs one remote command when the binaries
//! are current: a gate script checks the architecture and the binaries' checksums, then execs
//! the bridge; when it asks for them, the binaries are uploaded (temp name, checksum checked
//! remotely, rename) and the gate runs again.

use crate::cluster::client::LocalMum;
use crate::cluster::transport::Connection;
use openssh::{Session, Stdio};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The binaries a remote cluster needs, built static so they run on any x86_64 Linux.
pub const REMOTE_BINARIES: [&str; 2] = ["neromum", "nerokid"];
/// How to build them (named in the error when they are missing).
pub const BUILD_STATIC: &str =
    "cargo build --release --target x86_64-unknown-linux-musl --bin neromum --bin nerokid";
/// The one architecture the static binaries are built for.
pub const REMOTE_ARCH: &str = "x86_64";

/// Transient failures are retried this long when no master was up yet in this process.
const FIRST_CONNECT_BUDGET: Duration = Duration::from_secs(8);
/// ... and this long when a master this process used died (killed, sshd restarted).
const RECONNECT_BUDGET: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The master exits this long after its last channel closed (the next neroman reuses it).
const CONTROL_PERSIST_SECS: u64 = 300;
/// How long the gate may take to say whether the bridge starts (a slow shell startup included).
const GATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of shell noise (a chatty `.bashrc`) tolerated before the gate's line.
const MAX_NOISE_LINES: usize = 200;
/// What the gate prints before it execs the bridge (or instead, saying why not).
const GATE: &str = "neronet-gate:";

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh {host}: {message}")]
    Refused { host: String, message: String },
    #[error("ssh {host}: not reached for {secs} s: {message}")]
    Unreachable {
        host: String,
        secs: u64,
        message: String,
    },
    #[error("ssh {host}: {what}")]
    Channel {
        host: String,
        what: String,
        #[source]
        err: openssh::Error,
    },
    #[error("ssh {host}: `{what}` failed ({status}){stderr}")]
    Remote {
        host: String,
        what: String,
        status: String,
        stderr: String,
    },
    #[error("login node is {arch}; neronet ships {REMOTE_ARCH} static binaries only")]
    Arch { arch: String },
    #[error("the static neromum and nerokid for remote clusters are missing ({looked}); build them with `{BUILD_STATIC}`")]
    NoStaticBinaries { looked: String },
    #[error("{path}")]
    Local {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("ssh {host}: {message}")]
    Gate { host: String, message: String },
    #[error("cannot start the ssh runtime")]
    Runtime(#[source] std::io::Error),
    #[error("bad remote path {0:?} (a newline or NUL in it)")]
    BadPath(String),
}

/// Which master: a host as ssh takes it (an alias or user@host) and the config file passed
/// with `-F`, if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshTarget {
    pub host: String,
    pub config_file: Option<PathBuf>,
}

/// The output of a remote command.
#[derive(Debug)]
pub struct RemoteOutput {
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl RemoteOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

fn runtime() -> Result<&'static tokio::runtime::Runtime, SshError> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("neronet-ssh")
        .enable_all()
        .build()
        .map_err(SshError::Runtime)?;
    // Two threads may have built one: the loser's is dropped unused.
    let _ = RT.set(rt);
    Ok(RT.get().expect("set above"))
}

/// The link to `target`, one per process (its master is shared across processes).
pub fn link(target: &SshTarget) -> Arc<SshLink> {
    static LINKS: OnceLock<Mutex<HashMap<SshTarget, Arc<SshLink>>>> = OnceLock::new();
    let mut links = LINKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    links
        .entry(target.clone())
        .or_insert_with(|| Arc::new(SshLink::new(target.clone())))
        .clone()
}

/// One host's control master, started or reused on demand.
pub struct SshLink {
    target: SshTarget,
    /// `/tmp/neronet-<uid>/ssh-<hash>`: the control socket, the master's log, a lock file.
    dir: PathBuf,
    /// The master in use. The lock is held while (re)connecting: another thread that needs the
    /// link waits for that connection instead of starting its own.
    master: Mutex<Master>,
}

#[derive(Default)]
struct Master {
    session: Option<Arc<Session>>,
    /// A master was up in this process before: a failure now is a drop, retried longer.
    was_up: bool,
    /// How long the last connection took and whether it reused a running master.
    last_connect: Option<(Duration, bool)>,
}

/// What a connection took, for `neroman clusters`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectInfo {
    pub took: Duration,
    /// A master started earlier (by this or another neroman) was reused.
    pub reused: bool,
}

impl SshLink {
    fn new(target: SshTarget) -> SshLink {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let mut key = target.host.as_bytes().to_vec();
        if let Some(c) = &target.config_file {
            key.push(0);
            key.extend_from_slice(c.as_os_str().as_encoded_bytes());
        }
        // Unix socket paths are short (~108 bytes): the directory is named by a hash.
        let dir = PathBuf::from(format!(
            "/tmp/neronet-{uid}/ssh-{:016x}",
            super::short_hash(&key)
        ));
        SshLink {
            target,
            dir,
            master: Mutex::new(Master::default()),
        }
    }

    pub fn host(&self) -> &str {
        &self.target.host
    }

    /// The control socket (`ssh -S PATH -O check HOST` talks to the master).
    pub fn control_path(&self) -> PathBuf {
        self.dir.join("master")
    }

    /// Connect now (or find the master up) and say how long that took.
    pub fn connect(&self) -> Result<ConnectInfo, SshError> {
        let mut m = self.master.lock().unwrap_or_else(|p| p.into_inner());
        if m.session.is_none() {
            self.reconnect(&mut m)?;
        }
        let (took, reused) = m.last_connect.unwrap_or_default();
        Ok(ConnectInfo { took, reused })
    }

    /// The master to use, connecting first when there is none.
    fn session(&self) -> Result<Arc<Session>, SshError> {
        let mut m = self.master.lock().unwrap_or_else(|p| p.into_inner());
        match &m.session {
            Some(s) => Ok(Arc::clone(s)),
            None => self.reconnect(&mut m),
        }
    }

    /// `session` failed to carry a channel: if its master is gone, forget it (the next use
    /// connects again) and say so.
    fn master_gone(&self, session: &Arc<Session>) -> bool {
        let alive = runtime()
            .map(|rt| rt.block_on(session.check()).is_ok())
            .unwrap_or(false);
        if !alive {
            let mut m = self.master.lock().unwrap_or_else(|p| p.into_inner());
            if m.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
                m.session = None;
            }
            tracing::info!(
                "ssh {}: the connection was lost; connecting again",
                self.host()
            );
        }
        !alive
    }

    /// Start (or find) the master, retrying transient failures with backoff within the budget.
    fn reconnect(&self, m: &mut Master) -> Result<Arc<Session>, SshError> {
        let budget = if m.was_up {
            RECONNECT_BUDGET
        } else {
            FIRST_CONNECT_BUDGET
        };
        let started = Instant::now();
        let mut delay = BACKOFF_FIRST;
        loop {
            match self.try_connect() {
                Ok((session, reused)) => {
                    let session = Arc::new(session);
                    m.session = Some(Arc::clone(&session));
                    m.was_up = true;
                    m.last_connect = Some((started.elapsed(), reused));
                    return Ok(session);
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(message)) => {
                    if started.elapsed() + delay > budget {
                        return Err(SshError::Unreachable {
                            host: self.target.host.clone(),
                            secs: started.elapsed().as_secs(),
                            message,
                        });
                    }
                    tracing::info!(
                        "ssh {}: {message}; trying again in {:.1} s",
                        self.host(),
                        delay.as_secs_f64()
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One try: reuse a live master at the control path, else start one there.
    fn try_connect(&self) -> Result<(Session, bool), Failure> {
        let local = |path: &Path, err| {
            Failure::Fatal(SshError::Local {
                path: path.to_path_buf(),
                err,
            })
        };
        let rt = runtime().map_err(Failure::Fatal)?;
        create_private_dir(&self.dir).map_err(|e| local(&self.dir, e))?;
        let ctl = self.control_path();
        let resume = || Session::resume_mux(ctl.clone().into_boxed_path(), None);
        if ctl.exists() && rt.block_on(resume().check()).is_ok() {
            return Ok((resume(), true));
        }
        // Another neroman may be starting the master right now: one at a time per host.
        let lock_path = self.dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| local(&lock_path, e))?;
        // SAFETY: flock on a file descriptor we own; it is released when `lock` is closed.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(local(&lock_path, std::io::Error::last_os_error()));
        }
        if ctl.exists() && rt.block_on(resume().check()).is_ok() {
            return Ok((resume(), true));
        }
        // A socket left by a master that died: ssh refuses to listen over it.
        let _ = std::fs::remove_file(&ctl);
        self.start_master()?;
        Ok((resume(), false))
    }

    /// `ssh -M -f -N`: the master authenticates, then goes to the background by itself.
    fn start_master(&self) -> Result<(), Failure> {
        let log = self.dir.join("log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = std::process::Command::new("ssh");
        cmd.arg("-E")
            .arg(&log)
            .arg("-S")
            .arg(self.control_path())
            .args(["-M", "-f", "-N", "-T"])
            .arg("-o")
            .arg(format!("ControlPersist={CONTROL_PERSIST_SECS}"))
            .args(["-o", "BatchMode=yes"]);
        // What the user's config leaves unset gets a value that keeps a dead network from
        // hanging a command: a connect timeout, and keepalives so a dead master notices.
        let effective = self.effective_config();
        if effective.get("connecttimeout").is_none_or(|v| v == "none") {
            cmd.args(["-o", "ConnectTimeout=15"]);
        }
        if effective
            .get("serveraliveinterval")
            .is_none_or(|v| v == "0")
        {
            cmd.args([
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=3",
            ]);
        }
        if let Some(cfg) = &self.target.config_file {
            cmd.arg("-F").arg(cfg);
        }
        // `--` so a host that starts with `-` is never an option.
        cmd.arg("--").arg(&self.target.host);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let out = cmd.output().map_err(|err| {
            Failure::Fatal(SshError::Local {
                path: PathBuf::from("ssh"),
                err,
            })
        })?;
        if out.status.success() {
            return Ok(());
        }
        let mut said = std::fs::read_to_string(&log).unwrap_or_default();
        said.push_str(&String::from_utf8_lossy(&out.stderr));
        let message = ssh_message(&said, out.status.code());
        if is_transient(&said) {
            Err(Failure::Transient(message))
        } else {
            Err(Failure::Fatal(SshError::Refused {
                host: self.target.host.clone(),
                message,
            }))
        }
    }

    /// `ssh -G`: the options in effect for the host (no connection is made).
    fn effective_config(&self) -> HashMap<String, String> {
        let mut cmd = std::process::Command::new("ssh");
        cmd.arg("-G");
        if let Some(cfg) = &self.target.config_file {
            cmd.arg("-F").arg(cfg);
        }
        cmd.arg("--").arg(&self.target.host);
        let Ok(out) = cmd.stdin(std::process::Stdio::null()).output() else {
            return HashMap::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect()
    }

    /// Run `script` with `sh -c` on the remote side, feeding it `stdin`. A master found dead is
    /// replaced and the command run once more (the scripts given here are safe to repeat).
    pub fn run(&self, what: &str, script: &str, stdin: &[u8]) -> Result<RemoteOutput, SshError> {
        let rt = runtime()?;
        let command = remote_sh(script);
        let mut tries = 0;
        loop {
            tries += 1;
            let session = self.session()?;
            let result = rt.block_on(run_on(&session, &command, stdin));
            match result {
                Ok(out) => return Ok(out),
                Err(err) => {
                    if tries < 3 && self.master_gone(&session) {
                        continue;
                    }
                    return Err(SshError::Channel {
                        host: self.target.host.clone(),
                        what: what.to_string(),
                        err,
                    });
                }
            }
        }
    }

    /// Start `script` with `sh -c` on the remote side, its stdio piped, and read its stdout up
    /// to the gate's line (skipping shell noise before it).
    fn open_gated(&self, script: &str, describe: String) -> Result<Gated, SshError> {
        let rt = runtime()?;
        let command = remote_sh(script);
        let mut tries = 0;
        loop {
            tries += 1;
            let session = self.session()?;
            match rt.block_on(spawn_gated(Arc::clone(&session), &command)) {
                Ok(g) => return Ok(g.into_gated(rt.handle().clone(), describe)),
                Err(GateFailure::Channel(err)) => {
                    if tries < 3 && self.master_gone(&session) {
                        continue;
                    }
                    return Err(SshError::Channel {
                        host: self.target.host.clone(),
                        what: "start the bridge".into(),
                        err,
                    });
                }
                Err(GateFailure::Said(message)) => {
                    // The channel ended before the gate spoke: a dead master explains it.
                    if tries < 3 && self.master_gone(&session) {
                        continue;
                    }
                    return Err(SshError::Gate {
                        host: self.target.host.clone(),
                        message,
                    });
                }
            }
        }
    }
}

enum Failure {
    /// Worth another try (connection refused, timed out, closed while sshd restarts).
    Transient(String),
    /// Trying again will not help (authentication, unknown host, a bad config).
    Fatal(SshError),
}

/// ssh's own words for a failure, without its noise.
fn ssh_message(said: &str, code: Option<i32>) -> String {
    let lines: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect();
    if lines.is_empty() {
        return format!(
            "ssh failed (exit {}) without saying why",
            code.map_or("by signal".into(), |c| c.to_string())
        );
    }
    lines.join("; ")
}

/// Whether what ssh said is a failure worth retrying: the host did not answer (yet), as
/// opposed to refusing us (keys, host key, unknown name, bad config).
fn is_transient(said: &str) -> bool {
    const TRANSIENT: [&str; 9] = [
        "Connection refused",
        "Connection timed out",
        "Operation timed out",
        "Network is unreachable",
        "No route to host",
        "Connection reset",
        "Connection closed by",
        "kex_exchange_identification",
        "Temporary failure in name resolution",
    ];
    const FATAL: [&str; 5] = [
        "Permission denied",
        "Host key verification failed",
        "host key is known",
        "IDENTIFICATION HAS CHANGED",
        "Bad configuration option",
    ];
    !FATAL.iter().any(|f| said.contains(f)) && TRANSIENT.iter().any(|t| said.contains(t))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // Only this user may talk to the master (a control socket is a login), and only this user
    // may replace the directory that holds it (a /tmp squatter could otherwise swap it).
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    for d in [dir.parent().unwrap_or(dir), dir] {
        let meta = std::fs::symlink_metadata(d)?;
        if !meta.is_dir() || std::os::unix::fs::MetadataExt::uid(&meta) != uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "not a directory of this user's: refusing to keep an ssh control socket there",
            ));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// The command line given to the remote login shell: POSIX `sh` runs the script, whatever the
/// user's shell is (a csh login shell reads this one line fine).
fn remote_sh(script: &str) -> String {
    format!("exec sh -c {}", quote(script))
}

/// Shell-quote one value for the remote `sh`.
pub fn quote(s: &str) -> String {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        // Only a NUL cannot be quoted; such a value never names a path or option here.
        .unwrap_or_else(|_| "''".into())
}

async fn run_on(
    session: &Session,
    command: &str,
    stdin: &[u8],
) -> Result<RemoteOutput, openssh::Error> {
    let mut child = session
        .raw_command(command)
        .stdin(if stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .await?;
    let input = child.stdin().take();
    let feed = async move {
        if let Some(mut input) = input {
            input.write_all(stdin).await?;
            input.shutdown().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let (fed, out) = tokio::join!(feed, child.wait_with_output());
    let status = match out {
        Ok(out) => {
            fed.map_err(openssh::Error::ChildIo)?;
            return Ok(RemoteOutput {
                status: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            });
        }
        Err(e) => e,
    };
    // 127 comes back as an error of its own: it is an exit status like another.
    match status {
        openssh::Error::Remote(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RemoteOutput {
            status: Some(127),
            stdout: Vec::new(),
            stderr: b"command not found".to_vec(),
        }),
        e => Err(e),
    }
}

/// A remote process whose gate spoke.
struct Spawned {
    child: openssh::Child<Arc<Session>>,
    stdout: BufReader<openssh::ChildStdout>,
    gate: String,
    noise: Vec<String>,
}

enum GateFailure {
    Channel(openssh::Error),
    /// The remote side ended (or said nothing) before its gate line: what it said instead.
    Said(String),
}

async fn spawn_gated(session: Arc<Session>, command: &str) -> Result<Spawned, GateFailure> {
    let mut child = Session::to_raw_command(session, command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(GateFailure::Channel)?;
    let stdout = child
        .stdout()
        .take()
        .ok_or_else(|| GateFailure::Said("no stdout".into()))?;
    let mut stdout = BufReader::new(stdout);
    let mut noise = Vec::new();
    let read_gate = async {
        loop {
            let mut line = Vec::new();
            // A line is capped: a shell that prints megabytes without a newline is noise too.
            let n = (&mut stdout)
                .take(64 << 10)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&line).trim().to_string();
            if let Some(rest) = text.strip_prefix(GATE) {
                return Ok(Some(rest.trim().to_string()));
            }
            if noise.len() >= MAX_NOISE_LINES {
                return Ok(None);
            }
            noise.push(text.chars().take(200).collect::<String>());
        }
    };
    let gate = match tokio::time::timeout(GATE_TIMEOUT, read_gate).await {
        Ok(Ok(Some(gate))) => gate,
        Ok(Err(e)) => return Err(GateFailure::Channel(openssh::Error::ChildIo(e))),
        Ok(Ok(None)) | Err(_) => {
            let mut said = String::new();
            if let Some(mut err) = child.stderr().take() {
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    (&mut err).take(16 << 10).read_to_end(&mut buf),
                )
                .await;
                said = String::from_utf8_lossy(&buf).trim().to_string();
            }
            if !noise.is_empty() {
                if !said.is_empty() {
                    said.push_str("; ");
                }
                said.push_str(&format!(
                    "it printed (a chatty shell startup file such as .bashrc? make it quiet for non-interactive shells): {}",
                    noise.join(" / ")
                ));
            }
            if said.is_empty() {
                said = "the remote shell ended before the bridge started, saying nothing".into();
            }
            return Err(GateFailure::Said(said));
        }
    };
    Ok(Spawned {
        child,
        stdout,
        gate,
        noise,
    })
}

/// What the gate said.
enum Gated {
    Open(Connection),
    Arch(String),
    Upload(Vec<String>),
    Other(String),
}

impl Spawned {
    fn into_gated(mut self, handle: tokio::runtime::Handle, describe: String) -> Gated {
        if !self.noise.is_empty() {
            tracing::warn!(
                "{describe}: the remote shell printed {} line(s) before the bridge started (a chatty .bashrc?), ignored: {:?}",
                self.noise.len(),
                self.noise.join(" / ")
            );
        }
        let mut words = self.gate.split_whitespace();
        match words.next() {
            Some("ok") => {}
            Some("arch") => return Gated::Arch(words.next().unwrap_or("?").to_string()),
            Some("upload") => return Gated::Upload(words.map(str::to_string).collect()),
            _ => return Gated::Other(self.gate),
        }
        let (Some(stdin), Some(stderr)) = (self.child.stdin().take(), self.child.stderr().take())
        else {
            return Gated::Other("no stdin/stderr".into());
        };
        let reader = tokio_util::io::SyncIoBridge::new_with_handle(self.stdout, handle.clone());
        let writer = tokio_util::io::SyncIoBridge::new_with_handle(stdin, handle.clone());
        let stderr: Box<dyn Read + Send> = Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
            stderr,
            handle.clone(),
        ));
        let child = self.child;
        // The channel lives as long as the child handle: it is waited on once the connection
        // is dropped (its stdin is closed by then, so the bridge ends).
        let close = Box::new(move || {
            handle.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            });
        });
        Gated::Open(Connection::streams(
            reader,
            writer,
            Some(stderr),
            close,
            describe,
        ))
    }
}

/// The static neromum and nerokid this neroman uploads, with their checksums.
pub struct StaticBinaries {
    pub dir: PathBuf,
    /// (name, sha256 hex) in [`REMOTE_BINARIES`] order.
    pub sums: Vec<(String, String)>,
}

/// Find the static binaries (see [`static_dir`]) and checksum them, once per process.
pub fn static_binaries() -> Result<&'static StaticBinaries, SshError> {
    static BINS: OnceLock<StaticBinaries> = OnceLock::new();
    if let Some(b) = BINS.get() {
        return Ok(b);
    }
    let dir = static_dir()?;
    let mut sums = Vec::new();
    for name in REMOTE_BINARIES {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|err| SshError::Local {
            path: path.clone(),
            err,
        })?;
        sums.push((name.to_string(), sha256_hex(&bytes)));
    }
    let _ = BINS.set(StaticBinaries { dir, sums });
    Ok(BINS.get().expect("set above"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the static binaries are: `$NERONET_STATIC_DIR`, else the musl release build beside
/// this neroman's target directory (`target/x86_64-unknown-linux-musl/release/`), else this
/// neroman's own directory when the binaries there are static (an install of static builds).
pub fn static_dir() -> Result<PathBuf, SshError> {
    let has_both = |d: &Path| REMOTE_BINARIES.iter().all(|b| d.join(b).is_file());
    if let Some(d) = std::env::var_os("NERONET_STATIC_DIR") {
        let d = PathBuf::from(d);
        if has_both(&d) {
            return Ok(d);
        }
        return Err(SshError::NoStaticBinaries {
            looked: format!("NERONET_STATIC_DIR={} lacks them", d.display()),
        });
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut looked = Vec::new();
    if let Some(target) = exe_dir.parent() {
        let musl = target.join("x86_64-unknown-linux-musl/release");
        if has_both(&musl) {
            return Ok(musl);
        }
        looked.push(musl.display().to_string());
    }
    if has_both(&exe_dir)
        && REMOTE_BINARIES
            .iter()
            .all(|b| is_static_x86_64(&exe_dir.join(b)))
    {
        return Ok(exe_dir);
    }
    looked.push(format!("{} (not static there)", exe_dir.display()));
    Err(SshError::NoStaticBinaries {
        looked: format!("looked in {}; or set NERONET_STATIC_DIR", looked.join(", ")),
    })
}

/// An x86_64 ELF executable without a program interpreter: it needs no shared library.
pub fn is_static_x86_64(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit little-endian ELF for x86-64 (EM_X86_64 = 62).
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") || u16_at(0x12) != Some(62) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..usize::from(phnum)).all(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        u32_at(at).is_some_and(|t| t != PT_INTERP)
    })
}

/// The remote layout of one agent: paths relative to the remote home (or absolute).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteLayout {
    /// The agent's workdir as configured (`neronet` by default).
    pub workdir: String,
    /// `<workdir>/bin/<version>`.
    pub bin_dir: String,
}

impl RemoteLayout {
    pub fn new(workdir: &str) -> RemoteLayout {
        // Relative paths are relative to the remote home already; `~/x` means the same (every
        // value is quoted, so a `~` would otherwise name a directory called `~`).
        let workdir = match workdir {
            "~" => ".",
            w => w.strip_prefix("~/").unwrap_or(w),
        };
        let workdir = workdir.trim_end_matches('/');
        let workdir = if workdir.is_empty() { "." } else { workdir };
        RemoteLayout {
            workdir: workdir.to_string(),
            bin_dir: format!("{workdir}/bin/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    pub fn binary(&self, name: &str) -> String {
        format!("{}/{name}", self.bin_dir)
    }
}

/// Refuse an architecture the static binaries cannot run on.
pub fn check_arch(uname_m: &str) -> Result<(), SshError> {
    match uname_m.trim() {
        REMOTE_ARCH | "amd64" => Ok(()),
        other => Err(SshError::Arch {
            arch: if other.is_empty() { "unknown" } else { other }.to_string(),
        }),
    }
}

fn checked_path(p: &str) -> Result<&str, SshError> {
    if p.contains(['\n', '\0']) {
        return Err(SshError::BadPath(p.to_string()));
    }
    Ok(p)
}

/// The gate: one remote command that checks the architecture and the binaries' checksums and
/// then execs `command` (the bridge), or says what is missing. Every value is quoted.
fn gate_script(
    layout: &RemoteLayout,
    bins: &StaticBinaries,
    command: &[String],
) -> Result<String, SshError> {
    let mut s = String::from("cd || exit 1; a=$(uname -m); ");
    // Kept in step with `check_arch`: the answer is checked here again before anything runs.
    s.push_str(&format!(
        "case \"$a\" in {REMOTE_ARCH}|amd64) ;; *) echo \"{GATE} arch $a\"; exit 0;; esac; u=; "
    ));
    for (name, sum) in &bins.sums {
        let path = layout.binary(name);
        s.push_str(&format!(
            "printf '%s  %s\\n' {sum} {} | sha256sum -c --status >/dev/null 2>&1 || u=\"$u {name}\"; ",
            quote(checked_path(&path)?)
        ));
    }
    let command: Vec<String> = command.iter().map(|a| quote(a)).collect();
    // The agent outlives this ssh session, and so do the jobs it starts: they must not look
    // started by sshd (bash would then read ~/.bashrc into every job, and its noise into the
    // job's output and metrics).
    s.push_str(&format!(
        "if [ -z \"$u\" ]; then echo '{GATE} ok'; unset SSH_CLIENT SSH2_CLIENT SSH_CONNECTION SSH_TTY; exec {}; fi; echo \"{GATE} upload$u\"",
        command.join(" ")
    ));
    Ok(s)
}

/// Upload one binary: a temp name beside the target, checksum checked remotely, then renamed
/// over it (a process running the old file keeps it).
fn upload_script(layout: &RemoteLayout, name: &str, sum: &str) -> Result<String, SshError> {
    let dir = quote(checked_path(&layout.bin_dir)?);
    let name_q = quote(name);
    Ok(format!(
        "cd || exit 1; umask 022; d={dir}; mkdir -p \"$d\" || exit 1; t=\"$d/.\"{name_q}\".upload.$$\"; \
         if cat >\"$t\" && chmod 755 \"$t\" && printf '%s  %s\\n' {sum} \"$t\" | sha256sum -c --status; \
         then mv -f \"$t\" \"$d/\"{name_q}; else rm -f \"$t\"; echo 'arrived damaged or could not be written' >&2; exit 1; fi"
    ))
}

/// Upload the named binaries (in parallel, on one master).
pub fn upload(
    link: &SshLink,
    layout: &RemoteLayout,
    bins: &StaticBinaries,
    names: &[String],
) -> Result<(), SshError> {
    let started = Instant::now();
    let mut total = 0usize;
    let results: Vec<Result<(), SshError>> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (name, sum) in bins.sums.iter().filter(|(n, _)| names.contains(n)) {
            let path = bins.dir.join(name);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(err) => return vec![Err(SshError::Local { path, err })],
            };
            total += bytes.len();
            let script = match upload_script(layout, name, sum) {
                Ok(s) => s,
                Err(e) => return vec![Err(e)],
            };
            let what = format!("upload {name} to {}", layout.binary(name));
            handles.push(scope.spawn(move || {
                let out = link.run(&what, &script, &bytes)?;
                if out.success() {
                    return Ok(());
                }
                Err(remote_failure(link.host(), &what, &out))
            }));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SshError::Gate {
                        host: link.host().to_string(),
                        message: "an upload thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    for r in results {
        r?;
    }
    tracing::info!(
        "ssh {}: uploaded {} ({:.1} MB) to {} in {:.2} s",
        link.host(),
        names.join(", "),
        total as f64 / 1e6,
        layout.bin_dir,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn remote_failure(host: &str, what: &str, out: &RemoteOutput) -> SshError {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    SshError::Remote {
        host: host.to_string(),
        what: what.to_string(),
        status: out
            .status
            .map_or("killed by a signal".into(), |c| format!("exit {c}")),
        stderr: if stderr.is_empty() {
            String::new()
        } else {
            format!(": {stderr}")
        },
    }
}

/// Reach `m`'s agent through `target`: the gate, an upload when it asks for one, the bridge.
/// `m.workdir` and its binaries are the remote paths; `m.agent_args()` go to the bridge.
pub fn open_bridge(m: &LocalMum, target: &SshTarget, start: bool) -> Result<Connection, SshError> {
    let bins = static_binaries()?;
    let link = link(target);
    let layout = RemoteLayout::new(&m.workdir.display().to_string());
    let mut command = vec![m.mum_binary.display().to_string(), "bridge".into()];
    command.extend(m.agent_args());
    if !start {
        command.push("--no-start".into());
    }
    let script = gate_script(&layout, bins, &command)?;
    let describe = format!("ssh {} bridge to {}", target.host, layout.workdir);
    for round in 0..2 {
        match link.open_gated(&script, describe.clone())? {
            Gated::Open(conn) => return Ok(conn),
            Gated::Arch(arch) => return Err(SshError::Arch { arch }),
            Gated::Upload(names) if round == 0 => {
                tracing::info!(
                    "ssh {}: {} missing or different in {}: uploading",
                    target.host,
                    names.join(", "),
                    layout.bin_dir
                );
                upload(&link, &layout, bins, &names)?
            }
            Gated::Upload(names) => {
                return Err(SshError::Gate {
                    host: target.host.clone(),
                    message: format!(
                        "{} still missing or different in {} after the upload",
                        names.join(", "),
                        layout.bin_dir
                    ),
                })
            }
            Gated::Other(said) => {
                return Err(SshError::Gate {
                    host: target.host.clone(),
                    message: format!("unexpected answer from the remote start: {said:?}"),
                })
            }
        }
    }
    unreachable!("the loop returns in its second round")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_x86_64_login_nodes_are_accepted() {
        assert!(check_arch("x86_64\n").is_ok());
        let e = check_arch("aarch64").unwrap_err().to_string();
        assert_eq!(
            e,
            "login node is aarch64; neronet ships x86_64 static binaries only"
        );
        assert!(check_arch("ppc64le").is_err());
    }

    #[test]
    fn ssh_failures_are_sorted_into_retry_or_give_up() {
        assert!(is_transient(
            "ssh: connect to host 127.0.0.1 port 2222: Connection refused"
        ));
        assert!(is_transient(
            "kex_exchange_identification: read: Connection reset by peer"
        ));
        assert!(!is_transient(
            "nerolab@127.0.0.1: Permission denied (publickey)."
        ));
        assert!(!is_transient("Host key verification failed."));
        assert!(!is_transient(
            "ssh: Could not resolve hostname nohost: Name or service not known"
        ));
    }

    #[test]
    fn the_gate_quotes_every_value() {
        let bins = StaticBinaries {
            dir: PathBuf::from("/x"),
            sums: vec![
                ("neromum".into(), "ab".into()),
                ("nerokid".into(), "cd".into()),
            ],
        };
        let layout = RemoteLayout::new("my dir/$(touch x)");
        let script = gate_script(
            &layout,
            &bins,
            &[
                "a b".into(),
                "bridge".into(),
                "--workdir".into(),
                "it's".into(),
            ],
        )
        .unwrap();
        assert!(script.contains("'my dir/$(touch x)/bin/"), "{script}");
        assert!(script.contains("exec 'a b' bridge --workdir"), "{script}");
        assert!(!script.contains(" it's"), "{script}");
        // It runs: with no binaries there, it asks for both.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script.replace("cd || exit 1;", "cd /nonexistent-neronet 2>/dev/null;"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("neronet-gate: upload neromum nerokid")
                || text.contains("neronet-gate: arch"),
            "{text}"
        );
        assert!(RemoteLayout::new("a\nb").bin_dir.contains('\n'));
        assert_eq!(RemoteLayout::new("~/nn/").workdir, "nn");
        assert_eq!(
            RemoteLayout::new("/scratch/me/nn").workdir,
            "/scratch/me/nn"
        );
        assert!(gate_script(&RemoteLayout::new("a\nb"), &bins, &[]).is_err());
    }

    #[test]
    fn a_dynamically_linked_binary_is_not_static() {
        // (tests/ssh.rs runs the musl builds in an empty chroot: the positive case.)
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_x86_64(&me));
        assert!(!is_static_x86_64(Path::new("/nonexistent")));
        assert!(!is_static_x86_64(Path::new("/bin/sh")));
    }
}
