//! The neroman ↔ neromum wire protocol: one JSON object per line over a unix socket (local) or an
//! SSH stdio bridge (remote). One enum per direction; the first message on every connection is a
//! [`Hello`] carrying [`PROTOCOL_VERSION`]. Journal entries are also what mum keeps on disk.

use nerokid::report::{KidEvent, KidSpec};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// Bump on any incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 1;

/// neroman → mum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello(Hello),
    Submit(Submit),
    Abort(Abort),
    Sync(SyncSince),
    ReadLog(ReadLog),
    Shutdown,
}

/// mum → neroman.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello(HelloReply),
    Accepted(Accepted),
    Events(EventBatch),
    Log(LogChunk),
    Done,
    Error(ErrorReply),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub client: String,
    /// The cluster's `max_parallel` as configured now (mum applies it from then on).
    pub max_parallel: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u32,
    pub mum_version: String,
    /// Random id of this mum's journal: a new epoch means neroman must sync from seq 0.
    pub epoch: String,
    pub workdir: String,
    pub pid: u32,
}

/// One run to start, fully resolved by neroman: mum never interprets workbook values.
/// `Debug` is written by hand so logs show the environment's names, never its values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Unique per mum; names the run directory.
    pub run: String,
    /// The shell command, placeholders already substituted with quoted values.
    pub command: String,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    /// Shell lines run before the command (`module load ...`).
    pub setup: Vec<String>,
    pub kid: KidSpec,
}

impl std::fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSpec")
            .field("run", &self.run)
            .field("command", &self.command)
            .field("cwd", &self.cwd)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("setup", &self.setup)
            .field("kid", &self.kid)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submit {
    pub runs: Vec<RunSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub runs: Vec<AcceptedRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptedRun {
    pub run: String,
    pub run_dir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    pub runs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncSince {
    /// Return journal entries with a sequence number greater than this.
    pub since: u64,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub entries: Vec<JournalEntry>,
    /// More entries wait after the last one in this batch.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadLog {
    pub run: String,
    pub stream: LogStream,
    pub offset: u64,
    pub max_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogChunk {
    /// UTF-8 text (invalid bytes replaced); cut at a character boundary.
    pub text: String,
    /// Offset to ask for next.
    pub next: u64,
    /// The run has ended and everything was read.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub message: String,
}

/// One thing mum learned about one run, numbered in the order it was journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub run: String,
    pub t: f64,
    pub event: MumEvent,
    /// For kid events: the byte offset just past this event in the run's `events.jsonl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid_offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum MumEvent {
    /// mum took the run and wrote its run directory; it waits for a free slot.
    Queued { run_dir: String },
    /// Handed to the warden; `job` is its job id (a pid for local runs).
    Launched { job: String },
    /// Something the kid wrote to its event log.
    Kid { event: KidEvent },
    /// Removed from the queue before it started.
    Cancelled,
    /// The abort was passed on to the kid.
    AbortSent,
    /// The warden no longer knows the job and no kid report explains it.
    Lost { reason: String },
}

macro_rules! request_from {
    ($($t:ident),*) => {$(impl From<$t> for Request { fn from(v: $t) -> Self { Request::$t(v) } })*};
}
request_from!(Hello, Submit, Abort, ReadLog);

impl From<SyncSince> for Request {
    fn from(v: SyncSince) -> Self {
        Request::Sync(v)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o on the connection")]
    Io(#[from] std::io::Error),
    #[error("cannot decode message (version mismatch?): {0}")]
    Decode(String),
}

/// Write one message as a JSON line and flush it.
pub fn send<T: Serialize>(to: &mut impl Write, msg: &T) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(msg).map_err(|e| WireError::Decode(e.to_string()))?;
    line.push(b'\n');
    to.write_all(&line)?;
    to.flush()?;
    Ok(())
}

/// Read one message; `Closed` at end of stream.
pub fn recv<T: for<'de> Deserialize<'de>>(from: &mut impl BufRead) -> Result<T, WireError> {
    let mut line = String::new();
    if from.read_line(&mut line)? == 0 {
        return Err(WireError::Closed);
    }
    serde_json::from_str(&line).map_err(|e| {
        let shown: String = line.trim_end().chars().take(120).collect();
        WireError::Decode(format!("{e} in {shown:?}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshot: wire and journal format. A change here is a protocol change: bump the version.
    #[test]
    fn wire_format_is_stable() {
        let hello: Request = Hello {
            version: 1,
            client: "neroman 0.1.0".into(),
            max_parallel: Some(2),
        }
        .into();
        assert_eq!(
            serde_json::to_string(&hello).unwrap(),
            r#"{"type":"hello","version":1,"client":"neroman 0.1.0","max_parallel":2}"#
        );
        let sync: Request = SyncSince { since: 5, max: 100 }.into();
        assert_eq!(
            serde_json::to_string(&sync).unwrap(),
            r#"{"type":"sync","since":5,"max":100}"#
        );
        let entry = JournalEntry {
            seq: 7,
            run: "12.1".into(),
            t: 1.0,
            event: MumEvent::Launched { job: "4242".into() },
            kid_offset: None,
        };
        assert_eq!(
            serde_json::to_string(&entry).unwrap(),
            r#"{"seq":7,"run":"12.1","t":1.0,"event":{"what":"launched","job":"4242"}}"#
        );
        let err = Response::Error(ErrorReply {
            message: "x".into(),
        });
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"type":"error","message":"x"}"#
        );
    }

    #[test]
    fn decode_failure_says_version_mismatch() {
        let mut input: &[u8] = b"{\"type\":\"frobnicate\"}\n";
        let e = recv::<Request>(&mut input).unwrap_err();
        assert!(e.to_string().contains("version mismatch?"), "{e}");
    }
}
