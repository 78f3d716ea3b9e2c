//! neroman's side of a mum connection: connect to the socket, start a detached mum when none
//! answers, do the version handshake, and make typed requests.

use crate::cluster::protocol::*;
use crate::cluster::socket_path;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    #[error("neromum for {workdir} did not answer (gave up after {secs}s); its log ends with:\n{log_tail}")]
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
    #[error("neromum refused: {0}")]
    Refused(String),
    #[error("unexpected reply from neromum: {0}")]
    Unexpected(String),
}

/// How long the version handshake may take before a mum counts as not answering.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take (a large sync batch included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How to find and start a local mum.
#[derive(Debug, Clone)]
pub struct LocalMum {
    pub workdir: PathBuf,
    pub mum_binary: PathBuf,
    pub kid_binary: PathBuf,
    pub max_parallel: u32,
    pub idle_exit_secs: u64,
}

pub struct MumClient {
    workdir: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub hello: HelloReply,
    /// True when this call had to start the mum.
    pub started: bool,
}

impl MumClient {
    /// Connect to the mum of `workdir`, starting one if none answers.
    pub fn connect_or_start(m: &LocalMum) -> Result<MumClient, ClientError> {
        if let Ok(stream) = UnixStream::connect(socket_path(&m.workdir)) {
            if let Ok(c) = Self::handshake(&m.workdir, stream, m.max_parallel, false) {
                return Ok(c);
            }
        }
        std::fs::create_dir_all(&m.workdir).map_err(|err| ClientError::Start {
            binary: m.mum_binary.clone(),
            workdir: m.workdir.clone(),
            err,
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.workdir.join("mum.log"))
            .map_err(|err| ClientError::Start {
                binary: m.mum_binary.clone(),
                workdir: m.workdir.clone(),
                err,
            })?;
        let mut cmd = Command::new(&m.mum_binary);
        cmd.arg("serve")
            .arg("--workdir")
            .arg(&m.workdir)
            .arg("--kid")
            .arg(&m.kid_binary)
            .arg("--max-parallel")
            .arg(m.max_parallel.to_string())
            .arg("--idle-exit")
            .arg(m.idle_exit_secs.to_string())
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
        let mut child = cmd.spawn().map_err(|err| ClientError::Start {
            binary: m.mum_binary.clone(),
            workdir: m.workdir.clone(),
            err,
        })?;
        let started_at = Instant::now();
        let deadline = started_at + Duration::from_secs(15);
        let mut exited_at: Option<Instant> = None;
        loop {
            // Ours, or another mum that won a start race (ours then exits: the workdir is locked).
            if let Ok(stream) = UnixStream::connect(socket_path(&m.workdir)) {
                if let Ok(c) = Self::handshake(&m.workdir, stream, m.max_parallel, true) {
                    // Reap it in the background if it exits while we live; it is detached otherwise.
                    std::thread::spawn(move || child.wait());
                    return Ok(c);
                }
            }
            if exited_at.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
                exited_at = Some(Instant::now());
            }
            // A mum that exited gets a few seconds for the winner of a race to come up.
            let gave_up = exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3));
            if gave_up || Instant::now() > deadline {
                let log = std::fs::read_to_string(m.workdir.join("mum.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                return Err(ClientError::NoAnswer {
                    workdir: m.workdir.clone(),
                    secs: started_at.elapsed().as_secs(),
                    log_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn handshake(
        workdir: &Path,
        stream: UnixStream,
        max_parallel: u32,
        started: bool,
    ) -> Result<MumClient, ClientError> {
        let wire = |err| ClientError::Wire {
            workdir: workdir.to_path_buf(),
            err,
        };
        stream
            // A live mum answers hello at once; one that does not (stopped, wedged) is not waited on.
            .set_read_timeout(Some(HELLO_TIMEOUT))
            .map_err(|e| wire(e.into()))?;
        let mut writer = stream.try_clone().map_err(|e| wire(e.into()))?;
        let mut reader = BufReader::new(stream);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client: format!("neroman {}", env!("CARGO_PKG_VERSION")),
            max_parallel: Some(max_parallel),
        };
        send(&mut writer, &Request::from(hello)).map_err(wire)?;
        match recv::<Response>(&mut reader).map_err(wire)? {
            Response::Hello(h) if h.version == PROTOCOL_VERSION => {
                reader.get_ref().set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| wire(e.into()))?;
                Ok(MumClient { workdir: workdir.to_path_buf(), reader, writer, hello: h, started })
            }
            Response::Hello(h) => Err(ClientError::Refused(format!(
                "protocol version mismatch: neromum {} speaks {}, neroman speaks {PROTOCOL_VERSION}",
                h.mum_version, h.version
            ))),
            Response::Error(e) => Err(ClientError::Refused(e.message)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn request(&mut self, req: impl Into<Request>) -> Result<Response, ClientError> {
        let wire = |err| ClientError::Wire {
            workdir: self.workdir.clone(),
            err,
        };
        send(&mut self.writer, &req.into()).map_err(wire)?;
        match recv::<Response>(&mut self.reader).map_err(|err| ClientError::Wire {
            workdir: self.workdir.clone(),
            err,
        })? {
            Response::Error(e) => Err(ClientError::Refused(e.message)),
            r => Ok(r),
        }
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

    /// One batch of journal entries after `since`.
    pub fn sync(&mut self, since: u64) -> Result<EventBatch, ClientError> {
        match self.request(SyncSince { since, max: 5000 })? {
            Response::Events(b) => Ok(b),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub fn read_log(
        &mut self,
        run: &str,
        stream: LogStream,
        offset: u64,
    ) -> Result<LogChunk, ClientError> {
        match self.request(ReadLog {
            run: run.into(),
            stream,
            offset,
            max_bytes: 1 << 20,
        })? {
            Response::Log(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}
