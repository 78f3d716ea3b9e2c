//! neroman's side of a mum connection: reach the mum (its unix socket, or a bridge process whose
//! stdin/stdout carry the same protocol), start one when none answers, do the version handshake,
//! and make typed requests.
//!
//! Versions: a mum that speaks an older protocol is asked to hand over (the frozen `hello` +
//! `shutdown` pair), then a mum of this version starts and adopts its runs from the journal. A
//! mum that speaks a newer protocol is left alone, with a message to upgrade neroman. A mum that
//! holds its workdir but does not answer is reported, never doubled.

use crate::cluster::protocol::*;
use crate::cluster::socket_path;
use crate::cluster::transport::Connection;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot start neromum ({binary}) for {workdir}")]
    Start {
        binary: PathBuf,
        workdir: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("neromum for {workdir} did not answer (gave up after {secs}s); {log_tail}")]
    NoAnswer {
        workdir: PathBuf,
        secs: u64,
        log_tail: String,
    },
    #[error("talking to neromum at {workdir}")]
    Wire {
        workdir: PathBuf,
        #[source]
        err: WireError,
    },
    #[error("neromum {mum_version} at {workdir} speaks protocol {version}, newer than this neroman's {PROTOCOL_VERSION}: upgrade neroman (the agent was left running)")]
    NewerMum {
        workdir: PathBuf,
        mum_version: String,
        version: u32,
    },
    #[error("neromum at {workdir} ({holder}) does not answer ({why}); not starting a second one — stop it if it is wedged")]
    Wedged {
        workdir: PathBuf,
        /// "pid N" when known here, else where to look.
        holder: String,
        why: String,
    },
    #[error("{transport} printed text where neromum's answer should be (a chatty shell startup file such as .bashrc? make it quiet for non-interactive shells): {text:?}")]
    Preamble { transport: String, text: String },
    #[error("neromum refused: {0}")]
    Refused(String),
    #[error("the agent of {workdir} drives {theirs}, not {ours}: two clusters share that workdir (give each its own `workdir:` in neronet.yaml)")]
    OtherWarden {
        workdir: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("unexpected reply from neromum: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Ssh(#[from] crate::cluster::ssh::SshError),
}

/// How long the version handshake may take before a mum counts as not answering.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A bridge may first start a mum: its hello may take this long.
const BRIDGE_HELLO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one request may take beyond its own long-poll wait (a large sync batch included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of shell noise tolerated before the hello reply.
const MAX_PREAMBLE_LINES: usize = 200;

/// How neroman reaches the mum.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// The mum's unix socket on this machine.
    Socket,
    /// A command whose stdin/stdout is a bridge to the mum (`sh -c` standing in for ssh).
    Bridge { program: PathBuf, args: Vec<String> },
    /// `neromum bridge` on a cluster's login node, through the host's SSH master
    /// (`cluster::ssh`): the mum's workdir and binaries are paths there (relative to the
    /// remote home); with `start: false` the bridge starts no agent.
    Ssh {
        target: crate::cluster::ssh::SshTarget,
        start: bool,
    },
}

/// How to find and start a mum.
#[derive(Debug, Clone)]
pub struct LocalMum {
    pub workdir: PathBuf,
    pub mum_binary: PathBuf,
    pub kid_binary: PathBuf,
    pub max_parallel: u32,
    pub idle_exit_secs: u64,
    /// The project's stable id (mum compacts only what every project has stored).
    pub project: Option<String>,
    pub transport: Transport,
    /// Which warden a mum started for this workdir drives.
    pub warden: crate::cluster::mum::warden::WardenSettings,
    /// Where its kids report over TCP (`neromum --listen`: `auto`, `off`, an address or an
    /// interface name).
    pub listen: String,
}

impl LocalMum {
    /// The settings a mum is started with, as `neromum serve` and `neromum bridge` take them
    /// (after the subcommand): one list, for a local start and for a remote bridge command.
    pub fn agent_args(&self) -> Vec<String> {
        let mut args = vec![
            "--workdir".to_string(),
            self.workdir.display().to_string(),
            "--kid".to_string(),
            self.kid_binary.display().to_string(),
            "--max-parallel".to_string(),
            self.max_parallel.to_string(),
            "--idle-exit".to_string(),
            self.idle_exit_secs.to_string(),
        ];
        args.extend(self.warden.args());
        args.extend(["--listen".to_string(), self.listen.clone()]);
        args
    }
}

pub struct MumClient {
    workdir: PathBuf,
    conn: Connection,
    /// How to connect again when an SSH connection drops (its master killed, sshd restarted):
    /// a request is then sent once more on a new connection. None for the other transports,
    /// where a closed connection means the agent went away (the caller decides).
    resume: Option<LocalMum>,
    pub hello: HelloReply,
    /// True when this call had to start the mum.
    pub started: bool,
}

/// Why a handshake did not give a client.
enum Handshake {
    Older { version: u32 },
    Failed(ClientError),
}

impl MumClient {
    /// Connect to the mum of `m.workdir`, starting one if none answers.
    pub fn connect_or_start(m: &LocalMum) -> Result<MumClient, ClientError> {
        match &m.transport {
            Transport::Socket => Self::connect_socket(m),
            Transport::Bridge { .. } | Transport::Ssh { .. } => Self::connect_bridge(m),
        }
    }

    fn connect_socket(m: &LocalMum) -> Result<MumClient, ClientError> {
        let sock = socket_path(&m.workdir);
        if let Ok(stream) = UnixStream::connect(&sock) {
            let conn = Self::socket_conn(m, stream)?;
            match Self::handshake(m, conn, HELLO_TIMEOUT, false)? {
                Ok(c) => return Ok(c),
                Err(Handshake::Older { version }) => {
                    Self::hand_over(m, version)?;
                }
                Err(Handshake::Failed(e)) => return Err(e),
            }
        }
        let mut child = spawn_mum(m)?;
        let started_at = Instant::now();
        let deadline = started_at + Duration::from_secs(15);
        let mut exited_at: Option<Instant> = None;
        let mut last_error = None;
        loop {
            // Ours, or another mum that won a start race (ours then exits: the workdir is locked).
            if let Ok(stream) = UnixStream::connect(&sock) {
                let conn = Self::socket_conn(m, stream)?;
                match Self::handshake(m, conn, HELLO_TIMEOUT, true)? {
                    Ok(c) => {
                        // Reap it in the background if it exits while we live; it is detached.
                        std::thread::spawn(move || child.wait());
                        return Ok(c);
                    }
                    Err(Handshake::Failed(e)) => last_error = Some(e),
                    Err(_) => {}
                }
            }
            if exited_at.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
                exited_at = Some(Instant::now());
            }
            // A mum that exited gets a few seconds for the winner of a race to come up.
            let gave_up = exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3));
            if gave_up || Instant::now() > deadline {
                if let Some(e) = last_error {
                    return Err(e);
                }
                return Err(ClientError::NoAnswer {
                    workdir: m.workdir.clone(),
                    secs: started_at.elapsed().as_secs(),
                    log_tail: mum_log_tail(&m.workdir),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn socket_conn(m: &LocalMum, stream: UnixStream) -> Result<Connection, ClientError> {
        let describe = format!("unix socket {}", socket_path(&m.workdir).display());
        Connection::unix(stream, describe).map_err(|e| ClientError::Wire {
            workdir: m.workdir.clone(),
            err: e.into(),
        })
    }

    fn bridge_conn(m: &LocalMum) -> Result<Connection, ClientError> {
        let (program, args) = match &m.transport {
            Transport::Bridge { program, args } => (program, args),
            Transport::Ssh { target, start } => {
                return Ok(crate::cluster::ssh::open_bridge(m, target, *start)?)
            }
            Transport::Socket => unreachable!("bridge_conn is only called for bridges"),
        };
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| ClientError::Start {
                binary: program.clone(),
                workdir: m.workdir.clone(),
                err,
            })?;
        let describe = format!("bridge `{} {}`", program.display(), args.join(" "));
        Connection::child(child, describe).map_err(|e| ClientError::Wire {
            workdir: m.workdir.clone(),
            err: e.into(),
        })
    }

    fn connect_bridge(m: &LocalMum) -> Result<MumClient, ClientError> {
        let conn = Self::bridge_conn(m)?;
        match Self::handshake(m, conn, BRIDGE_HELLO_TIMEOUT, false)? {
            Ok(mut c) => {
                c.started = c.hello.first_connection;
                Ok(c)
            }
            Err(Handshake::Older { version }) => {
                Self::hand_over(m, version)?;
                let conn = Self::bridge_conn(m)?;
                match Self::handshake(m, conn, BRIDGE_HELLO_TIMEOUT, true)? {
                    Ok(c) => Ok(c),
                    Err(Handshake::Failed(e)) => Err(e),
                    // Over ssh the agent started next runs the uploaded static build: one
                    // older than this neroman (a development tree rebuilt without it) is
                    // older again.
                    Err(_) if matches!(m.transport, Transport::Ssh { .. }) => {
                        Err(ClientError::Refused(format!(
                            "the agent started after the hand-over speaks an older protocol too: the static neromum this neroman uploads is older than it; rebuild it with `{}`",
                            crate::cluster::ssh::BUILD_STATIC
                        )))
                    }
                    Err(_) => Err(ClientError::Refused(
                        "the older neromum did not hand over".into(),
                    )),
                }
            }
            Err(Handshake::Failed(e)) => Err(e),
        }
    }

    /// Ask an older mum to stop (it speaks `hello` and `shutdown` in its own version); its runs
    /// keep going and the mum started next adopts them from the journal.
    fn hand_over(m: &LocalMum, version: u32) -> Result<(), ClientError> {
        tracing::warn!(
            "neromum at {} speaks protocol {version}; asking it to hand over to this version",
            m.workdir.display()
        );
        let wire = |err| ClientError::Wire {
            workdir: m.workdir.clone(),
            err,
        };
        let mut conn = match &m.transport {
            Transport::Socket => {
                let stream =
                    UnixStream::connect(socket_path(&m.workdir)).map_err(|e| wire(e.into()))?;
                Self::socket_conn(m, stream)?
            }
            Transport::Bridge { .. } | Transport::Ssh { .. } => Self::bridge_conn(m)?,
        };
        let hello = Hello {
            version,
            client: format!("neroman {} (handing over)", env!("CARGO_PKG_VERSION")),
            max_parallel: None,
            project: None,
        };
        conn.send(&Request::Hello(hello)).map_err(wire)?;
        skip_preamble(&mut conn, BRIDGE_HELLO_TIMEOUT).map_err(wire)?;
        conn.send(&Request::Shutdown).map_err(wire)?;
        match conn.recv(HELLO_TIMEOUT).map_err(wire)? {
            Response::Done => {}
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        // The mum started next waits for the old one's lock (`lock_workdir_wait`), which goes
        // with its process.
        drop(conn);
        Ok(())
    }

    fn handshake(
        m: &LocalMum,
        mut conn: Connection,
        timeout: Duration,
        started: bool,
    ) -> Result<Result<MumClient, Handshake>, ClientError> {
        let wire = |err| ClientError::Wire {
            workdir: m.workdir.clone(),
            err,
        };
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client: format!("neroman {}", env!("CARGO_PKG_VERSION")),
            max_parallel: Some(m.max_parallel),
            project: m.project.clone(),
        };
        if let Err(e) = conn.send(&Request::from(hello)) {
            // A bridge whose shell printed its noise and exited before hello could be written
            // (broken pipe) still left that noise on its stdout: show it, it is the explanation.
            if let Err(WireError::Preamble(text)) = skip_preamble(&mut conn, Duration::from_secs(2))
            {
                return Ok(Err(Handshake::Failed(ClientError::Preamble {
                    transport: conn.describe.clone(),
                    text,
                })));
            }
            return Ok(Err(Handshake::Failed(bridge_failure(m, &conn, wire(e)))));
        }
        let reply = match skip_preamble(&mut conn, timeout) {
            Ok(r) => r,
            Err(WireError::Timeout(_)) => {
                // Over the socket the lock file names the agent; through a bridge (a remote
                // host) only the bridge knows, and it said nothing.
                let holder = match m.transport {
                    Transport::Socket => format!(
                        "pid {}",
                        std::fs::read_to_string(m.workdir.join("mum.lock"))
                            .map(|s| s.trim().to_string())
                            .unwrap_or_else(|_| "?".into())
                    ),
                    Transport::Bridge { .. } | Transport::Ssh { .. } => format!(
                        "its pid is in {} on the far side of the bridge",
                        m.workdir.join("mum.lock").display()
                    ),
                };
                let mut why = format!(
                    "no answer to hello within {} s through the {}",
                    timeout.as_secs(),
                    conn.describe
                );
                let stderr = conn.stderr_text();
                if !stderr.is_empty() {
                    why.push_str(&format!("; it said: {stderr}"));
                }
                return Ok(Err(Handshake::Failed(ClientError::Wedged {
                    workdir: m.workdir.clone(),
                    holder,
                    why,
                })));
            }
            Err(WireError::Preamble(text)) => {
                return Ok(Err(Handshake::Failed(ClientError::Preamble {
                    transport: conn.describe.clone(),
                    text,
                })))
            }
            Err(e) => return Ok(Err(Handshake::Failed(bridge_failure(m, &conn, wire(e))))),
        };
        match reply {
            Response::Hello(h)
                if h.version == PROTOCOL_VERSION
                    && h.warden.as_deref().is_some_and(|w| w != m.warden.kind()) =>
            {
                Ok(Err(Handshake::Failed(ClientError::OtherWarden {
                    workdir: m.workdir.clone(),
                    theirs: h.warden.clone().unwrap_or_default(),
                    ours: m.warden.kind().to_string(),
                })))
            }
            Response::Hello(h) if h.version == PROTOCOL_VERSION => Ok(Ok(MumClient {
                workdir: m.workdir.clone(),
                conn,
                resume: matches!(m.transport, Transport::Ssh { .. }).then(|| m.clone()),
                hello: h,
                started,
            })),
            Response::Hello(h) if h.version > PROTOCOL_VERSION => Err(ClientError::NewerMum {
                workdir: m.workdir.clone(),
                mum_version: h.mum_version,
                version: h.version,
            }),
            Response::Hello(h) => Ok(Err(Handshake::Older { version: h.version })),
            // Protocol 1 answered another version with this error and closed the connection.
            Response::Error(e) => match older_version_in(&e.message) {
                Some(version) if version < PROTOCOL_VERSION => {
                    Ok(Err(Handshake::Older { version }))
                }
                _ => Ok(Err(Handshake::Failed(ClientError::Refused(e.message)))),
            },
            other => Ok(Err(Handshake::Failed(ClientError::Unexpected(format!(
                "{other:?}"
            ))))),
        }
    }

    fn request_with_wait(
        &mut self,
        req: impl Into<Request>,
        wait: Duration,
    ) -> Result<Response, ClientError> {
        let req = req.into();
        match self.request_once(&req, wait) {
            // Every request is safe to send again: a submit of runs mum has is answered as
            // before, an abort of an ended run is done, the rest only read.
            Err(e @ ClientError::Wire { .. }) if self.resume.is_some() => {
                tracing::info!(
                    "{}: {}; connecting again",
                    self.conn.describe,
                    crate::util::error_chain(&e)
                );
                let m = self.resume.clone().expect("checked by the guard");
                let fresh = MumClient::connect_or_start(&m)?;
                // Another journal (the agent's workdir started afresh): what the caller
                // computed from the old one does not apply; it syncs again from the start.
                if fresh.hello.epoch != self.hello.epoch {
                    return Err(e);
                }
                self.conn = fresh.conn;
                self.hello = fresh.hello;
                self.request_once(&req, wait)
            }
            r => r,
        }
    }

    fn request_once(&mut self, req: &Request, wait: Duration) -> Result<Response, ClientError> {
        let wire = |err| ClientError::Wire {
            workdir: self.workdir.clone(),
            err,
        };
        self.conn.send(req).map_err(wire)?;
        match self
            .conn
            .recv(REQUEST_TIMEOUT + wait)
            .map_err(|err| ClientError::Wire {
                workdir: self.workdir.clone(),
                err,
            })? {
            Response::Error(e) => Err(ClientError::Refused(e.message)),
            r => Ok(r),
        }
    }

    pub fn request(&mut self, req: impl Into<Request>) -> Result<Response, ClientError> {
        self.request_with_wait(req, Duration::ZERO)
    }

    pub fn submit(&mut self, runs: Vec<RunSpec>) -> Result<Accepted, ClientError> {
        match self.request(Submit { runs })? {
            Response::Accepted(a) => Ok(a),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn abort(&mut self, runs: Vec<String>) -> Result<(), ClientError> {
        match self.request(Abort { runs })? {
            Response::Done => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// One batch of journal entries after `since`, waiting up to `wait` for one to exist;
    /// `ack` tells mum how far this project has stored.
    pub fn sync(
        &mut self,
        since: u64,
        ack: Option<u64>,
        wait: Duration,
    ) -> Result<EventBatch, ClientError> {
        let wait_ms = wait.as_millis().min(u128::from(MAX_WAIT_MS)) as u32;
        let q = SyncSince {
            since,
            max: 5000,
            wait_ms,
            ack,
        };
        match self.request_with_wait(q, wait)? {
            Response::Events(b) => {
                self.hello.health = b.health.clone();
                Ok(b)
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn read_log(
        &mut self,
        run: &str,
        stream: LogStream,
        offset: u64,
        wait: Duration,
    ) -> Result<LogChunk, ClientError> {
        let wait_ms = wait.as_millis().min(u128::from(MAX_WAIT_MS)) as u32;
        let req = ReadLog {
            run: run.into(),
            stream,
            offset,
            max_bytes: 1 << 20,
            wait_ms,
        };
        match self.request_with_wait(req, wait)? {
            Response::Log(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Ask the mum to stop (its runs keep going; the next mum adopts them).
    pub fn shutdown(mut self) -> Result<(), ClientError> {
        match self.request(Request::Shutdown)? {
            Response::Done => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Read the reply to hello, skipping text a remote shell printed first (a chatty `.bashrc`). A
/// line that is not JSON is shell noise; too much of it is an error that shows it.
fn skip_preamble(conn: &mut Connection, timeout: Duration) -> Result<Response, WireError> {
    let deadline = Instant::now() + timeout;
    let mut noise: Vec<String> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match conn.recv_line(left) {
            Ok(l) => l,
            Err(WireError::Closed) if !noise.is_empty() => {
                return Err(WireError::Preamble(noise.join("\n")))
            }
            Err(e) => return Err(e),
        };
        let trimmed = String::from_utf8_lossy(&line).trim().to_string();
        if trimmed.starts_with('{') {
            let reply = decode::<Response>(&line)?;
            if !noise.is_empty() {
                tracing::warn!(
                    "{} printed {} line(s) before neromum answered (a chatty .bashrc?), ignored: {:?}",
                    conn.describe,
                    noise.len(),
                    noise.join(" / ")
                );
            }
            return Ok(reply);
        }
        noise.push(trimmed.chars().take(200).collect());
        if noise.len() > MAX_PREAMBLE_LINES {
            return Err(WireError::Preamble(noise.join("\n")));
        }
    }
}

/// Add what a bridge printed on stderr (ssh's own errors) to a failure.
fn bridge_failure(m: &LocalMum, conn: &Connection, e: ClientError) -> ClientError {
    let stderr = conn.stderr_text();
    if stderr.is_empty() {
        return e;
    }
    ClientError::NoAnswer {
        workdir: m.workdir.clone(),
        secs: 0,
        log_tail: format!(
            "{} said: {stderr} ({})",
            conn.describe,
            crate::util::error_chain(&e)
        ),
    }
}

/// The version in protocol 1's refusal: "protocol version mismatch: neromum X speaks N, ...".
fn older_version_in(message: &str) -> Option<u32> {
    let rest = message.strip_prefix("protocol version mismatch: neromum ")?;
    let (_, after) = rest.split_once(" speaks ")?;
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The last lines of a mum's log, for an error message.
pub(crate) fn mum_log_tail(workdir: &Path) -> String {
    let log = std::fs::read_to_string(workdir.join("mum.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(8).collect();
    format!(
        "its log ends with:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// Start `neromum serve` for `m.workdir`, detached (its own session), logging to `mum.log`.
pub fn spawn_mum(m: &LocalMum) -> Result<Child, ClientError> {
    let start_err = |err| ClientError::Start {
        binary: m.mum_binary.clone(),
        workdir: m.workdir.clone(),
        err,
    };
    std::fs::create_dir_all(&m.workdir).map_err(start_err)?;
    // The log lives in the workdir unless NERONET_MUM_LOG names another file (diagnosis of a
    // workdir whose disk is full).
    let log_path = std::env::var_os("NERONET_MUM_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| m.workdir.join("mum.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(start_err)?;
    let mut cmd = Command::new(&m.mum_binary);
    cmd.arg("serve")
        .args(m.agent_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; detaches mum from the terminal so it outlives neroman.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map_err(start_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_in_a_protocol_1_refusal() {
        let m = "protocol version mismatch: neromum 0.1.0 speaks 1, neroman 0.1.0 speaks 2";
        assert_eq!(older_version_in(m), Some(1));
        assert_eq!(older_version_in("something else"), None);
    }
}
