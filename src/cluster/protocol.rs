//! The neroman ↔ neromum wire protocol: one JSON object per line over a unix socket (local) or an
//! SSH stdio bridge (remote). One enum per direction; the first message on every connection is a
//! [`Hello`] carrying [`PROTOCOL_VERSION`]. Journal entries are also what mum keeps on disk.

use nerokid::report::{KidEvent, KidSpec};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read, Write};

/// Bump on any incompatible change to the messages below. Two messages are frozen across every
/// version so that a newer neroman can always ask an older mum to hand over: `hello` (whose
/// reply names the mum's version) and `shutdown`. Version 1 had no long-poll, acks or health;
/// version 2 knew no `rule_problem` kid event (an older neroman could not decode a batch that
/// holds one). From version 3 on an unknown kid event decodes as `KidEvent::Unknown`. Version
/// 3 knew no `ended` or `requeued` journal entries (the SLURM warden's) and no run spec
/// `warden_opts`.
pub const PROTOCOL_VERSION: u32 = 4;

/// The largest message either side accepts (one line of JSON); a bigger one ends the connection.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The longest a long-poll (`sync` or `read_log` with `wait_ms`) is held by mum.
pub const MAX_WAIT_MS: u32 = 30_000;

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
    /// A stable id of the neroman project: mum keeps each project's acknowledged sequence number
    /// and compacts its journal only past what every project has stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u32,
    pub mum_version: String,
    /// Random id of this mum's journal: a new epoch means neroman must sync from seq 0.
    pub epoch: String,
    pub workdir: String,
    pub pid: u32,
    /// The newest journal entry: a neroman that stored more than this from the same epoch knows
    /// the journal got shorter (restored from a backup, cut by hand) and syncs from here.
    #[serde(default)]
    pub last_seq: u64,
    /// The warden this mum drives (`local`, `slurm`, `sge`; absent from older mums): a cluster
    /// configured with another one shares its workdir by mistake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warden: Option<String>,
    #[serde(default)]
    pub queued: u32,
    #[serde(default)]
    pub running: u32,
    /// What keeps mum from doing its work right now (its journal cannot be written: disk full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// This is the first connection this mum process serves (it was just started).
    #[serde(default)]
    pub first_connection: bool,
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
    /// Scheduler options for this run, in order: the cluster's `slurm:` map overlaid by the
    /// row's `slurm.<key>` columns (`("time", "0:10:00")`). An empty value is a flag
    /// (`--exclusive`). The SLURM warden writes them as `#SBATCH --key=value`; others ignore them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warden_opts: Vec<(String, String)>,
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
            .field("warden_opts", &self.warden_opts)
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
    /// Long-poll: when nothing is newer than `since`, wait up to this long for something.
    #[serde(default)]
    pub wait_ms: u32,
    /// The project has stored every entry up to this one: mum may compact them away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub entries: Vec<JournalEntry>,
    /// More entries wait after the last one in this batch.
    pub more: bool,
    /// The newest entry in the journal when this batch was read.
    #[serde(default)]
    pub last_seq: u64,
    /// Every entry up to this one was looked at (entries of other projects are left out, so
    /// the batch may hold fewer, or none): the client's sync point may move up to here.
    #[serde(default)]
    pub through: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadLog {
    pub run: String,
    pub stream: LogStream,
    pub offset: u64,
    pub max_bytes: u32,
    /// Long-poll: when nothing new is there yet, wait up to this long for output.
    #[serde(default)]
    pub wait_ms: u32,
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
    /// The project that submitted the run (its id from hello). Run names are the project's own
    /// (`12.1`), so two projects sharing an agent workdir are told apart by this; entries
    /// without it were written for a neroman of protocol 1 and belong to whoever knows the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl JournalEntry {
    /// mum's own key for the run: `project/run`, or the bare run name for protocol 1.
    pub fn key(&self) -> String {
        run_key(self.project.as_deref(), &self.run)
    }
}

/// mum's key for a project's run.
pub fn run_key(project: Option<&str>, run: &str) -> String {
    match project {
        Some(p) => format!("{p}/{run}"),
        None => run.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum MumEvent {
    /// mum took the run and wrote its run directory; it waits for a free slot.
    Queued { run_dir: String },
    /// About to be handed to the warden (journaled first, so a crash in between is reconciled
    /// with the warden on replay instead of launching twice).
    Launching,
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
    /// The warden's verdict on how the job ended, where it overrides the kid's own record (a
    /// SLURM time limit: the kid saw only a SIGTERM). Journaled right before the kid's exit
    /// record, or alone when the kid left none.
    Ended { verdict: Verdict, reason: String },
    /// The warden put the job back in its queue (SLURM requeue, preemption): the run keeps its
    /// number and its metrics, and its kid starts again in the same run directory.
    Requeued { reason: String },
}

/// The warden's word on how a job ended (see [`MumEvent::Ended`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Timeout,
    Crashed,
    Aborted,
    Lost,
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
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("no answer within {} s", .0.as_secs_f64().round())]
    Timeout(std::time::Duration),
    #[error("text where a message should be: {0:?}")]
    Preamble(String),
}

/// Write one message as a JSON line and flush it.
pub fn send<T: Serialize>(to: &mut impl Write, msg: &T) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(msg).map_err(|e| WireError::Decode(e.to_string()))?;
    line.push(b'\n');
    to.write_all(&line)?;
    to.flush()?;
    Ok(())
}

/// Read one line of at most [`MAX_MESSAGE_BYTES`]; `Closed` at end of stream.
pub fn recv_line(from: &mut impl BufRead) -> Result<Vec<u8>, WireError> {
    let mut line = Vec::new();
    let n = (&mut *from)
        .take(MAX_MESSAGE_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(WireError::Closed);
    }
    if line.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(MAX_MESSAGE_BYTES));
    }
    Ok(line)
}

/// Decode one line as a message.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(line).map_err(|e| {
        let shown: String = String::from_utf8_lossy(line)
            .trim_end()
            .chars()
            .take(120)
            .collect();
        WireError::Decode(format!("{e} in {shown:?}"))
    })
}

/// Read one message; `Closed` at end of stream.
pub fn recv<T: for<'de> Deserialize<'de>>(from: &mut impl BufRead) -> Result<T, WireError> {
    decode(&recv_line(from)?)
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
            project: None,
        }
        .into();
        assert_eq!(
            serde_json::to_string(&hello).unwrap(),
            r#"{"type":"hello","version":1,"client":"neroman 0.1.0","max_parallel":2}"#
        );
        let sync: Request = SyncSince {
            since: 5,
            max: 100,
            wait_ms: 0,
            ack: Some(4),
        }
        .into();
        assert_eq!(
            serde_json::to_string(&sync).unwrap(),
            r#"{"type":"sync","since":5,"max":100,"wait_ms":0,"ack":4}"#
        );
        // Frozen across versions: an older mum must understand a newer neroman's handover.
        assert_eq!(
            serde_json::to_string(&Request::Shutdown).unwrap(),
            r#"{"type":"shutdown"}"#
        );
        let entry = JournalEntry {
            seq: 7,
            run: "12.1".into(),
            t: 1.0,
            event: MumEvent::Launched { job: "4242".into() },
            kid_offset: None,
            project: None,
        };
        assert_eq!(
            serde_json::to_string(&entry).unwrap(),
            r#"{"seq":7,"run":"12.1","t":1.0,"event":{"what":"launched","job":"4242"}}"#
        );
        let ended = JournalEntry {
            seq: 8,
            run: "12.1".into(),
            t: 2.0,
            event: MumEvent::Ended {
                verdict: Verdict::Timeout,
                reason: "SLURM: time limit (TIMEOUT)".into(),
            },
            kid_offset: None,
            project: None,
        };
        assert_eq!(
            serde_json::to_string(&ended).unwrap(),
            r#"{"seq":8,"run":"12.1","t":2.0,"event":{"what":"ended","verdict":"timeout","reason":"SLURM: time limit (TIMEOUT)"}}"#
        );
        let requeued = MumEvent::Requeued { reason: "x".into() };
        assert_eq!(
            serde_json::to_string(&requeued).unwrap(),
            r#"{"what":"requeued","reason":"x"}"#
        );
        let err = Response::Error(ErrorReply {
            message: "x".into(),
        });
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"type":"error","message":"x"}"#
        );
    }

    /// A version-1 mum's journal and a version-1 neroman's sync must still decode.
    #[test]
    fn version_1_messages_still_decode() {
        let old: Request = decode(br#"{"type":"sync","since":5,"max":100}"#).unwrap();
        assert!(matches!(
            old,
            Request::Sync(SyncSince {
                since: 5,
                wait_ms: 0,
                ack: None,
                ..
            })
        ));
        let reply: Response = decode(
            br#"{"type":"hello","version":1,"mum_version":"0.1.0","epoch":"ab","workdir":"/w","pid":7}"#,
        )
        .unwrap();
        assert!(matches!(
            reply,
            Response::Hello(HelloReply {
                version: 1,
                last_seq: 0,
                ..
            })
        ));
    }

    /// A run spec from a neroman that knows no warden options still decodes (none), and one
    /// without options is written as before.
    #[test]
    fn a_run_spec_without_warden_options_is_unchanged() {
        let old =
            r#"{"run":"1.1","command":"true","cwd":null,"env":[],"setup":[],"kid":{"id":"1"}}"#;
        let spec: RunSpec = serde_json::from_str(old).unwrap();
        assert!(spec.warden_opts.is_empty());
        assert!(!serde_json::to_string(&spec)
            .unwrap()
            .contains("warden_opts"));
        let mut with = spec.clone();
        with.warden_opts = vec![("time".into(), "0:10:00".into())];
        assert!(serde_json::to_string(&with)
            .unwrap()
            .contains(r#""warden_opts":[["time","0:10:00"]]"#));
    }

    #[test]
    fn an_oversized_message_is_refused() {
        let big = vec![b'x'; MAX_MESSAGE_BYTES + 10];
        let mut input: &[u8] = &big;
        assert!(matches!(recv_line(&mut input), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn decode_failure_says_version_mismatch() {
        let mut input: &[u8] = b"{\"type\":\"frobnicate\"}\n";
        let e = recv::<Request>(&mut input).unwrap_err();
        assert!(e.to_string().contains("version mismatch?"), "{e}");
    }
}
