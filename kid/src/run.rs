//! Supervising one job: start it in its own process group, copy stdout/stderr into the run
//! directory while scanning them for metrics, sample resources, evaluate the abort rule, and append
//! every finding to `events.jsonl` (written before anyone is told). Stop = SIGTERM to the group,
//! a grace period, then SIGKILL.

use crate::expr::{self, AmbiguousName, FieldValue, Fields};
use crate::metrics::{self, CsvMetrics, Extractor, Found, LineSplitter, StreamScanner};
use crate::report::*;
use crate::wire::Reporter;
use crate::{gpu, probe, reason};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub enum KidError {
    Io { about: String, source: io::Error },
    Spec(String),
}

impl std::fmt::Display for KidError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KidError::Io { about, source } => write!(f, "{about}: {source}"),
            KidError::Spec(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for KidError {}

fn io_err(about: impl Into<String>) -> impl FnOnce(io::Error) -> KidError {
    let about = about.into();
    move |source| KidError::Io { about, source }
}

/// The most unwritten events the kid keeps while the log cannot be written (a full disk, a
/// quota): past this, the oldest metric and resource samples are dropped to make room for the
/// newest. Start, environment, rule and exit events are never dropped.
const MAX_BACKLOG: usize = 64 << 20;

/// How long the kid waits for its last events to reach mum over TCP (the log has them).
const REPORT_PATIENCE: Duration = Duration::from_secs(2);

/// How long the kid keeps trying to write its exit record before giving up.
const FINAL_WRITE_PATIENCE: Duration = Duration::from_secs(600);

/// The durable event log: one JSON line per event. Writes are exact: what a short or failed
/// write leaves over stays in memory and is written first next time, so a line is never torn in
/// the middle of the file (only its last line can be incomplete, until the next write).
pub struct EventLog {
    file: File,
    path: PathBuf,
    /// Serialized lines not yet all in the file; `pending[..written]` already is.
    pending: Vec<u8>,
    written: usize,
    max_backlog: usize,
    /// Where each line in `pending` ends, and whether it may be dropped on overflow.
    lines: Vec<(usize, bool)>,
    /// Said on stderr that writing fails (once per episode) / that samples were dropped (once).
    warned_failing: bool,
    warned_dropping: bool,
    /// Where `pending[0]` is (or will be) in the file: each line's offset, which mum's copy
    /// over TCP carries.
    pending_start: u64,
    /// Sends every line that reached the file to mum as well ([`crate::wire`]).
    reporter: Option<Reporter>,
}

impl EventLog {
    pub fn open(dir: &Path) -> Result<EventLog, KidError> {
        let path = dir.join(EVENTS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        // A job started again in the same directory (SLURM requeued it) appends after the
        // previous kid's events. A kid killed mid-write left part of a line: cut it off, or
        // the next event would be glued to it.
        cut_partial_line(&file).map_err(io_err(format!("repair {}", path.display())))?;
        let pending_start = file
            .metadata()
            .map_err(io_err(format!("read {}", path.display())))?
            .len();
        Ok(EventLog {
            file,
            path,
            pending: Vec::new(),
            written: 0,
            max_backlog: MAX_BACKLOG,
            lines: Vec::new(),
            warned_failing: false,
            warned_dropping: false,
            pending_start,
            reporter: None,
        })
    }

    /// Also send every line written from now on to mum.
    pub fn report_to(&mut self, reporter: Reporter) {
        self.reporter = Some(reporter);
    }

    /// Stop reporting; what is queued is sent within `patience`.
    fn finish_reporting(&mut self, patience: Duration) {
        if let Some(r) = self.reporter.take() {
            r.finish(patience);
        }
    }

    /// Queue events for the next write.
    pub fn push(&mut self, events: &[KidEvent]) {
        for e in events {
            // Serializing our own types into memory cannot fail.
            if serde_json::to_writer(&mut self.pending, e).is_ok() {
                self.pending.push(b'\n');
                let droppable = matches!(e, KidEvent::Metrics { .. } | KidEvent::Resources { .. });
                self.lines.push((self.pending.len(), droppable));
            }
        }
        if self.pending.len() - self.written > self.max_backlog {
            self.shed();
        }
    }

    /// Write everything queued. On an error what is left stays queued, to be written (after the
    /// part of a line already in the file, if any) by the next call.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.written < self.pending.len() {
            match self.file.write(&self.pending[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(r) = &self.reporter {
            if !self.pending.is_empty() {
                r.send(self.pending_start, &self.pending);
            }
        }
        self.pending_start += self.pending.len() as u64;
        self.pending.clear();
        self.lines.clear();
        self.written = 0;
        Ok(())
    }

    /// `push` then `flush`.
    pub fn append(&mut self, events: &[KidEvent]) -> io::Result<()> {
        self.push(events);
        self.flush()
    }

    /// Flush, and when that fails say so on stderr (once until it works again): the job goes on
    /// and the events wait in memory.
    fn flush_or_warn(&mut self) {
        match self.flush() {
            Ok(()) => {
                if self.warned_failing {
                    eprintln!(
                        "nerokid: the event log {} is written again",
                        self.path.display()
                    );
                    self.warned_failing = false;
                }
            }
            Err(e) => {
                if !self.warned_failing {
                    eprintln!(
                        "nerokid: cannot write the event log {} ({e}); keeping events in memory and retrying",
                        self.path.display()
                    );
                    self.warned_failing = true;
                }
            }
        }
    }

    /// The last write: everything queued (the exit record) and an fsync, retried with backoff for
    /// up to `patience`. When it still fails, an incomplete last line is cut off the file.
    fn finish(&mut self, patience: Duration) -> io::Result<()> {
        let deadline = Instant::now() + patience;
        let mut pause = Duration::from_millis(100);
        loop {
            let result = self.flush().and_then(|()| self.sync());
            match result {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    self.cut_torn_tail();
                    return Err(e);
                }
                Err(e) => {
                    if !self.warned_failing {
                        eprintln!(
                            "nerokid: cannot write the exit record to {} ({e}); retrying for {} s",
                            self.path.display(),
                            patience.as_secs()
                        );
                        self.warned_failing = true;
                    }
                    std::thread::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    );
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// The start of the line that `written` falls in.
    fn current_line_start(&self) -> usize {
        let i = self.lines.partition_point(|(end, _)| *end <= self.written);
        if i == 0 {
            0
        } else {
            self.lines[i - 1].0
        }
    }

    /// If the file ends in part of a line, cut that part off (so a reader never meets it).
    fn cut_torn_tail(&mut self) {
        let torn = (self.written - self.current_line_start()) as u64;
        if torn == 0 {
            return;
        }
        if let Ok(len) = self.file.metadata().map(|m| m.len()) {
            if self.file.set_len(len.saturating_sub(torn)).is_ok() {
                self.written -= torn as usize;
            }
        }
    }

    /// Over the backlog limit: forget what is written, then drop the oldest unwritten samples
    /// until a quarter of the limit is free. The line being written (partly in the file) stays.
    fn shed(&mut self) {
        let base = self.current_line_start();
        let (old, old_lines) = (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.lines),
        );
        let mut excess = (old.len() - base).saturating_sub(self.max_backlog / 4 * 3);
        let mut start = 0;
        let mut dropped = 0u64;
        for (end, droppable) in old_lines {
            let line_start = std::mem::replace(&mut start, end);
            if end <= base {
                continue;
            }
            if droppable && excess > 0 && line_start >= self.written {
                excess = excess.saturating_sub(end - line_start);
                dropped += 1;
                continue;
            }
            self.pending.extend_from_slice(&old[line_start..end]);
            self.lines.push((self.pending.len(), droppable));
        }
        self.written -= base;
        self.pending_start += base as u64;
        if dropped > 0 && !self.warned_dropping {
            eprintln!(
                "nerokid: the event log has fallen {} MiB behind; dropping the oldest metric and resource samples (start, rule and exit events are kept)",
                self.max_backlog >> 20
            );
            self.warned_dropping = true;
        }
    }
}

/// Truncate an append-only log after its last complete line.
fn cut_partial_line(mut file: &File) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut keep = len;
    let mut buf = vec![0u8; 4096];
    loop {
        let start = keep.saturating_sub(buf.len() as u64);
        let n = (keep - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(nl) = memchr::memrchr(b'\n', &buf[..n]) {
            keep = start + nl as u64 + 1;
            break;
        }
        keep = start;
        if start == 0 {
            break;
        }
    }
    if keep < len {
        file.set_len(keep)?;
    }
    Ok(())
}

/// Read every complete event in a run directory's log (skipping a torn last line).
pub fn read_events(dir: &Path) -> io::Result<Vec<KidEvent>> {
    let file = File::open(dir.join(EVENTS_FILE))?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if let Ok(e) = serde_json::from_str(&line) {
            out.push(e);
        }
    }
    Ok(out)
}

/// What a rule sees: `runtime`, the last value of each metric, the row's parameters. Names
/// resolve as in selections (`expr::resolve_name`): exact spelling first, then ignoring case;
/// a metric wins over a parameter of the same name.
pub struct RuleFields<'a> {
    spec: &'a KidSpec,
    last: &'a HashMap<String, f64>,
    runtime: f64,
}

impl<'a> RuleFields<'a> {
    /// The fields as the kid's round sees them (public for the benchmarks).
    pub fn new(spec: &'a KidSpec, last: &'a HashMap<String, f64>, runtime: f64) -> Self {
        RuleFields {
            spec,
            last,
            runtime,
        }
    }
}

impl Fields for RuleFields<'_> {
    fn id(&self) -> &str {
        &self.spec.id
    }
    fn state(&self) -> Option<&str> {
        Some("running")
    }
    fn field(&self, name: &str) -> Result<Option<FieldValue>, AmbiguousName> {
        if name.eq_ignore_ascii_case("runtime") {
            return Ok(Some(FieldValue::Num(self.runtime)));
        }
        let param = |v: &String| match v.trim().parse::<f64>() {
            Ok(n) => FieldValue::Num(n),
            Err(_) => FieldValue::Text(v.clone()),
        };
        // The exact spelling first, without listing every name (this runs every round).
        if let Some(v) = self.last.get(name) {
            return Ok(Some(FieldValue::Num(*v)));
        }
        if let Some(v) = self.spec.params.get(name) {
            return Ok(Some(param(v)));
        }
        // A name other runs printed exactly: this run has not printed it yet.
        if self.spec.known_metrics.iter().any(|k| k == name) {
            return Ok(None);
        }
        let mut metrics: Vec<&str> = self.last.keys().map(String::as_str).collect();
        metrics.extend(self.spec.known_metrics.iter().map(String::as_str));
        let params: Vec<&str> = self.spec.params.keys().map(String::as_str).collect();
        Ok(match expr::resolve_name(name, &[&metrics, &params])? {
            // Known from other runs, not printed by this one yet: missing.
            Some((0, m)) => self.last.get(m).map(|v| FieldValue::Num(*v)),
            Some((_, p)) => Some(param(&self.spec.params[p])),
            None => None,
        })
    }
}

/// The values of a rule's fields now, in the rule's order, each name once (as the rule spells
/// it): numbers as they are, parameters that read as numbers; `runtime` always, at its place
/// in the rule or last.
fn rule_values(rule: &expr::Expr, fields: &RuleFields<'_>) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for c in rule.comparisons() {
        let name = c.field.as_str();
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        let value = match fields.field(name) {
            Ok(Some(FieldValue::Num(v))) => Some(v),
            Ok(Some(FieldValue::Text(t))) => t.trim().parse::<f64>().ok(),
            _ => None,
        };
        if let Some(v) = value {
            out.push((name.to_string(), v));
        }
    }
    if !out.iter().any(|(n, _)| n.eq_ignore_ascii_case("runtime")) {
        out.push(("runtime".into(), fields.runtime));
    }
    for (n, v) in &mut out {
        if n.eq_ignore_ascii_case("runtime") {
            // Milliseconds are plenty for a run's age, and read better.
            *v = (*v * 1000.0).round() / 1000.0;
        }
    }
    out
}

enum Msg {
    /// The numbers found in one chunk of output, each with the time it was read.
    Found(Vec<(f64, Found)>),
    /// A stream ended (0 stdout, 1 stderr); its last bytes (where a shell reports how the job
    /// ended, and a crash its reason).
    Closed(usize, Vec<u8>),
}

/// How much of the end of each stream the kid keeps, to read the shell's report, the crash
/// reason and the stderr tail from. A reader lets its copy grow to twice this before cutting it
/// back, so the hot path moves these bytes once per STREAM_TAIL read, not per read.
const STREAM_TAIL: usize = 64 << 10;

/// How long a reader lets output pile up after a short read. Bounds the kid's wake-ups (and so
/// its CPU) for jobs that flush every line, at the cost of this much latency.
const COALESCE: Duration = Duration::from_millis(100);

/// A bigger pipe lets a chatty job run on while the reader coalesces (Linux; best effort).
fn grow_pipe(fd: &impl std::os::unix::io::AsRawFd) {
    // SAFETY: fcntl on a pipe descriptor we own; failure is harmless.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// Wait up to `limit` for a pipe's writers to be gone, without waking for new data (POLLHUP is
/// reported even when no event is asked for): coalesces a busy job's output, yet a short job's
/// end is seen at once.
fn linger(pipe: &impl std::os::unix::io::AsRawFd, limit: Duration) {
    poll_pipe(pipe, 0, limit);
}

/// Wait up to `limit` for something to read (or the writers gone); false when the time is up.
fn readable(pipe: &impl std::os::unix::io::AsRawFd, limit: Duration) -> bool {
    poll_pipe(pipe, libc::POLLIN, limit)
}

fn poll_pipe(
    pipe: &impl std::os::unix::io::AsRawFd,
    events: libc::c_short,
    limit: Duration,
) -> bool {
    let mut fd = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call; an error or EINTR just ends the
    // wait early.
    unsafe { libc::poll(&mut fd, 1, ms) > 0 }
}

fn spawn_reader(
    stream: usize,
    mut from: impl Read + std::os::unix::io::AsRawFd + Send + 'static,
    mut to: File,
    extractor: Arc<Extractor>,
    tx: mpsc::Sender<Msg>,
    output_bytes: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    grow_pipe(&from);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut scanner = StreamScanner::new();
        let mut tail: Vec<u8> = Vec::new();
        let mut found = Vec::new();
        let send = |found: &mut Vec<Found>| {
            if !found.is_empty() {
                let t = now();
                let _ = tx.send(Msg::Found(found.drain(..).map(|f| (t, f)).collect()));
            }
        };
        loop {
            // A progress bar's latest numbers wait for their period; write them then even if
            // the job prints nothing more meanwhile.
            if let Some(due) = scanner.due() {
                if !readable(&from, due.saturating_duration_since(Instant::now())) {
                    scanner.tick(&extractor, Instant::now(), &mut found);
                    send(&mut found);
                    continue;
                }
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            // The log file first: whatever the job printed is kept even if parsing is behind.
            let _ = to.write_all(&buf[..n]);
            output_bytes.fetch_add(n as u64, Ordering::Relaxed);
            let chunk = &buf[..n];
            let keep = chunk.len().min(STREAM_TAIL);
            tail.extend_from_slice(&chunk[chunk.len() - keep..]);
            if tail.len() > 2 * STREAM_TAIL {
                tail.drain(..tail.len() - STREAM_TAIL);
            }
            scanner.feed(&extractor, chunk, Instant::now(), &mut found);
            send(&mut found);
            if n < buf.len() {
                linger(&from, COALESCE);
            }
        }
        scanner.finish(&extractor, &mut found);
        send(&mut found);
        if tail.len() > STREAM_TAIL {
            tail.drain(..tail.len() - STREAM_TAIL);
        }
        let _ = tx.send(Msg::Closed(stream, tail));
    })
}

/// Follows one metrics file in the run directory.
struct FileTail {
    path: PathBuf,
    format: MetricFileFormat,
    offset: u64,
    /// The file's first line as last read (CSV): a different one means the file was rewritten.
    first_line: Vec<u8>,
    csv: CsvMetrics,
    split: LineSplitter,
}

/// The first line of a file, with its `\n`, if it is all written (at most `MAX_SEGMENT`).
fn first_line(f: &mut File, len: usize) -> Option<Vec<u8>> {
    let mut head = vec![0u8; len];
    f.seek(SeekFrom::Start(0)).ok()?;
    let n = f.read(&mut head).ok()?;
    let end = memchr::memchr(b'\n', &head[..n])?;
    head.truncate(end + 1);
    Some(head)
}

impl FileTail {
    fn new(path: PathBuf, format: MetricFileFormat) -> FileTail {
        FileTail {
            path,
            format,
            offset: 0,
            first_line: Vec::new(),
            csv: CsvMetrics::default(),
            split: LineSplitter::new(),
        }
    }

    fn poll(&mut self, out: &mut Vec<(f64, Found)>) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        let len = f.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            // A new file in its place: read it from the start.
            *self = FileTail::new(std::mem::take(&mut self.path), self.format);
        }
        if self.format == MetricFileFormat::Csv {
            if self.first_line.is_empty() {
                self.first_line = first_line(&mut f, metrics::MAX_SEGMENT).unwrap_or_default();
            } else if first_line(&mut f, self.first_line.len()).as_ref() != Some(&self.first_line) {
                // Rewritten with another header (Lightning's CSVLogger, when a metric appears):
                // the rows read before are in it again.
                self.csv.rewritten();
                self.offset = 0;
                self.first_line = first_line(&mut f, metrics::MAX_SEGMENT).unwrap_or_default();
            }
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut chunk = Vec::new();
        if f.read_to_end(&mut chunk).is_err() || chunk.is_empty() {
            return;
        }
        self.offset += chunk.len() as u64;
        let t = now();
        let mut found = Vec::new();
        match self.format {
            MetricFileFormat::Csv => self.csv.feed(&chunk, &mut found),
            MetricFileFormat::Jsonl => self.split.feed(&chunk, |line, _| {
                if let Some(f) = std::str::from_utf8(line).ok().and_then(metrics::jsonl_row) {
                    found.push(f);
                }
            }),
        }
        out.extend(found.into_iter().map(|f| (t, f)));
    }
}

/// The job's exit status as the shell that ran it reports it, where the shell outlived the
/// command (neromum starts `bash -c <script>`, which execs the last command, so this is the
/// uncommon case: see docs/ARCHITECTURE.md). bash forks such a command and, when it dies from
/// signal N, exits with 128+N — the code a job's own `exit(128+N)` gives too. What tells them
/// apart is bash's report of the death on stderr (`command.sh: line 3:  4242 Killed   python
/// train.py`, or the name alone for SIGTERM and for signals the script traps), in the C
/// locale's words for the signal.
/// Returns the signal when the code is 128+N and such a report for N ends one of the streams.
fn signal_behind_shell(code: i32, tails: &[Vec<u8>]) -> Option<i32> {
    let signal = code.checked_sub(128).filter(|s| (1..=64).contains(s))?;
    // SAFETY: strsignal returns a valid C string for any number (its buffer is only reused by
    // another strsignal call, and the kid makes none elsewhere); it is copied at once.
    let name = unsafe {
        let p = libc::strsignal(signal);
        if p.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    let name = regex::escape(&name);
    let report = regex::bytes::Regex::new(&format!(
        r"^(?:.*: +[0-9]+ {name}(?: \(core dumped\))?(?: .*)?|{name}(?: \(core dumped\))?)$"
    ))
    .ok()?;
    tails
        .iter()
        .flat_map(|tail| tail.split(|b| *b == b'\n' || *b == b'\r'))
        .any(|line| report.is_match(line.trim_ascii_end()))
        .then_some(signal)
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Names the warden that started the kid, where it changes how signals are handled: `sge`
/// (set by the Grid Engine warden's qsub script) makes SIGUSR1 a suspend (see [`run`]).
pub const WARDEN_ENV: &str = "NERONET_WARDEN";

/// The kid's round: events reach the log at most this late; also bounds its wake-ups.
const TICK: Duration = Duration::from_millis(250);

/// Run `command` under supervision in `dir`; returns the exit code the kid should exit with.
pub fn run(dir: &Path, spec: &KidSpec, command: &[String]) -> Result<i32, KidError> {
    run_reporting(dir, spec, command, None)
}

/// [`run`], also sending every event to the mum whose workdir is `mum_dir` ([`crate::wire`]);
/// an abort from it stops the job as a SIGTERM does.
pub fn run_reporting(
    dir: &Path,
    spec: &KidSpec,
    command: &[String],
    mum_dir: Option<&Path>,
) -> Result<i32, KidError> {
    spec.validate()
        .map_err(|e| KidError::Spec(format!("{SPEC_FILE}: {e}")))?;
    std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    let rule = match spec
        .abort_when
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        Some(r) => Some(
            expr::parse_rule(r).map_err(|e| KidError::Spec(format!("abort_when {r:?}: {e}")))?,
        ),
        None => None,
    };
    let extractor = Arc::new(
        Extractor::new(spec.metrics.tokens, &spec.metrics.patterns)
            .map_err(|e| KidError::Spec(e.to_string()))?,
    );
    let mut log = EventLog::open(dir)?;
    let stop_requested = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop_requested))
            .map_err(io_err("install signal handler"))?;
    }
    if let Some(r) =
        mum_dir.and_then(|m| Reporter::start(m.to_path_buf(), dir, Arc::clone(&stop_requested)))
    {
        log.report_to(r);
    }
    // SIGUSR1 (SLURM's warning before a time limit or preemption, `--signal=B:USR1@N`) and
    // SIGUSR2 (Grid Engine's `-notify` warning before a kill) are passed on to the job's group,
    // so the job can checkpoint. Under Grid Engine (`NERONET_WARDEN=sge`, from the qsub
    // script) SIGUSR1 is `-notify`'s warning before a suspend: its SIGSTOP and SIGCONT reach
    // the script's group (the kid), not the job's own, so the kid stops the job's group itself
    // and continues it on the kid's SIGCONT.
    let suspend_on_usr1 = std::env::var(WARDEN_ENV).is_ok_and(|w| w == "sge");
    let usr1 = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
        .map_err(io_err("install signal handler"))?;
    let usr2 = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR2, Arc::clone(&usr2))
        .map_err(io_err("install signal handler"))?;
    let cont = Arc::new(AtomicBool::new(false));
    if suspend_on_usr1 {
        signal_hook::flag::register(signal_hook::consts::SIGCONT, Arc::clone(&cont))
            .map_err(io_err("install signal handler"))?;
    }
    let mut suspended = false;
    let open_log = |name: &str| {
        let p = dir.join(name);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io_err(format!("open {}", p.display())))
    };
    let (out_file, err_file) = (open_log(STDOUT_FILE)?, open_log(STDERR_FILE)?);
    let cwd = std::env::current_dir().unwrap_or_else(|_| dir.to_path_buf());

    let Some((program, args)) = command.split_first() else {
        return Err(KidError::Spec("no command given".into()));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NERO_RUN_DIR", dir)
        .process_group(0);
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log.push(&[KidEvent::Exited {
                t: now(),
                outcome: Outcome::FailedToStart {
                    error: format!("{program}: {e}"),
                },
                reason: None,
                stderr_tail: Vec::new(),
            }]);
            log.finish(FINAL_WRITE_PATIENCE)
                .map_err(io_err("write event log"))?;
            log.finish_reporting(REPORT_PATIENCE);
            return Ok(127);
        }
    };
    let started = Instant::now();
    let job_pid = child.id() as i32;
    log.push(&[
        KidEvent::Started {
            t: now(),
            pid: std::process::id(),
            job_pid: job_pid as u32,
            host: probe::hostname(),
        },
        KidEvent::Environment {
            t: now(),
            report: probe::env_report(&cwd),
        },
    ]);
    log.flush_or_warn();

    // GPU sampling starts with the job; its helper processes belong to the kid, not the job.
    let mut gpus = if spec.gpu {
        gpu::Sampler::start(Duration::from_secs_f64(spec.sample_secs.max(0.2)))
    } else {
        None
    };
    let output_bytes = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let readers = [
        spawn_reader(
            0,
            child.stdout.take().expect("piped stdout"),
            out_file,
            Arc::clone(&extractor),
            tx.clone(),
            Arc::clone(&output_bytes),
        ),
        spawn_reader(
            1,
            child.stderr.take().expect("piped stderr"),
            err_file,
            Arc::clone(&extractor),
            tx.clone(),
            Arc::clone(&output_bytes),
        ),
    ];
    drop(tx);
    let mut tails: Vec<FileTail> = spec
        .metrics
        .files
        .iter()
        .map(|f| FileTail::new(dir.join(&f.path), f.format))
        .collect();

    let mut last: HashMap<String, f64> = HashMap::new();
    // Rule fields found ambiguous so far: each is reported once.
    let mut ambiguous_reported: Vec<String> = Vec::new();
    let mut abort: Option<(AbortCause, Instant)> = None;
    let mut killed = false;
    let mut open_streams = 2;
    let (ticks, page) = (probe::ticks_per_second(), probe::page_size());
    let mut prev_sample: Option<(Instant, u64)> = None;
    let mut next_sample = started + Duration::from_secs_f64(spec.sample_secs.min(1.0));
    let mut next_tail = started;
    let mut exit_status = None;
    let mut streams_done_at: Option<Instant> = None;
    let mut pending: Vec<KidEvent> = Vec::new();
    // The last bytes of stdout and stderr, as their readers hand them over at the end.
    let mut stream_tails: [Vec<u8>; 2] = Default::default();
    // Why the rule stopped the job (the exit record's reason).
    let mut rule_reason: Option<String> = None;

    let mut round_start = started;
    let mut ending_pause = Duration::from_millis(1);
    loop {
        let mut found: Vec<(f64, Found)> = Vec::new();
        if open_streams > 0 {
            // One round every TICK: what the readers find meanwhile is written in one go. But
            // the job's streams closing (it is ending) starts the next round at once.
            let deadline = round_start + TICK;
            while open_streams > 0 {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                match rx.recv_timeout(left) {
                    Ok(Msg::Found(f)) => found.extend(f),
                    Ok(Msg::Closed(stream, tail)) => {
                        stream_tails[stream] = tail;
                        open_streams -= 1;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => open_streams = 0,
                }
            }
        } else {
            // The streams are closed, so the job is ending (or runs on without them): look for
            // its exit soon, then less and less often, up to once per TICK.
            std::thread::sleep(ending_pause);
            ending_pause = (ending_pause * 2).min(TICK);
        }
        round_start = Instant::now();
        let now_i = Instant::now();
        if now_i >= next_tail && !tails.is_empty() {
            for tail in &mut tails {
                tail.poll(&mut found);
            }
            next_tail = now_i + Duration::from_millis(500);
        }
        for (t, f) in found {
            // Only a rule reads the last values; without one, keep the hot path lean.
            if rule.is_some() {
                for (name, v) in &f.values {
                    // No new String for a name already known (every line, usually).
                    match last.get_mut(name) {
                        Some(slot) => *slot = *v,
                        None => {
                            last.insert(name.clone(), *v);
                        }
                    }
                }
            }
            pending.push(KidEvent::Metrics {
                t,
                step: f.step,
                values: f.values,
            });
        }
        if now_i >= next_sample && exit_status.is_none() {
            let procs = probe::group_processes(job_pid);
            let s = probe::GroupSample {
                cpu_ticks: procs.iter().map(|p| p.cpu_ticks).sum(),
                rss_pages: procs.iter().map(|p| p.rss_pages).sum(),
                processes: procs.len() as u32,
            };
            let cpu_percent = match prev_sample {
                Some((at, prev)) => {
                    let dt = now_i.duration_since(at).as_secs_f64().max(1e-3);
                    (s.cpu_ticks.saturating_sub(prev) as f64 / ticks) / dt * 100.0
                }
                None => {
                    (s.cpu_ticks as f64 / ticks) / started.elapsed().as_secs_f64().max(1e-3) * 100.0
                }
            };
            prev_sample = Some((now_i, s.cpu_ticks));
            if s.processes > 0 {
                let pids: Vec<u32> = procs.iter().map(|p| p.pid as u32).collect();
                let use_ = gpus.as_mut().and_then(|g| g.usage(&pids));
                let (gpu_percent, gpu_mem_bytes, gpu_names) = match use_ {
                    Some(u) => (Some(u.percent), Some(u.mem_bytes), u.gpus),
                    None => (None, None, Vec::new()),
                };
                pending.push(KidEvent::Resources {
                    t: now(),
                    cpu_percent: (cpu_percent * 10.0).round() / 10.0,
                    rss_bytes: s.rss_pages * page,
                    processes: s.processes,
                    gpu_percent,
                    gpu_mem_bytes,
                    gpus: gpu_names,
                    output_bytes: Some(output_bytes.load(Ordering::Relaxed)),
                });
            }
            next_sample = now_i + Duration::from_secs_f64(spec.sample_secs.max(0.2));
        }
        if usr1.swap(false, Ordering::Relaxed) && exit_status.is_none() {
            if suspend_on_usr1 {
                eprintln!("nerokid: Grid Engine suspends the job (SIGUSR1): stopping it");
                signal_group(job_pid, libc::SIGSTOP);
                suspended = true;
            } else {
                signal_group(job_pid, libc::SIGUSR1);
            }
        }
        // A suspend's USR1 and the resume's SIGCONT in one round: stopped, then continued.
        if cont.swap(false, Ordering::Relaxed) && suspended {
            eprintln!("nerokid: Grid Engine resumes the job (SIGCONT): continuing it");
            signal_group(job_pid, libc::SIGCONT);
            suspended = false;
        }
        if usr2.swap(false, Ordering::Relaxed) && exit_status.is_none() {
            signal_group(job_pid, libc::SIGUSR2);
        }
        // Decide whether to stop the job.
        if abort.is_none() && exit_status.is_none() {
            if stop_requested.load(Ordering::Relaxed) {
                abort = Some((AbortCause::User, now_i));
            } else if let Some(rule) = rule
                .as_ref()
                .filter(|_| started.elapsed().as_secs_f64() >= spec.min_runtime_secs)
            {
                // Before min_runtime the rule is not even looked at: early noise (a loss spike
                // in the first steps) cannot end a run.
                let fields = RuleFields {
                    spec,
                    last: &last,
                    runtime: started.elapsed().as_secs_f64(),
                };
                let verdict = rule.evaluate_rule(&fields, &mut |a| {
                    if !ambiguous_reported.contains(&a.field) {
                        let message = format!(
                            "abort_when {:?}: {a}; the rule cannot fire on that comparison",
                            rule.to_string()
                        );
                        eprintln!("nerokid: {message}");
                        pending.push(KidEvent::RuleProblem { t: now(), message });
                        ambiguous_reported.push(a.field);
                    }
                });
                if verdict == Some(true) {
                    let text = rule.to_string();
                    let values = rule_values(rule, &fields);
                    rule_reason = Some(reason::rule_reason(&text, &values));
                    pending.push(KidEvent::RuleFired {
                        t: now(),
                        rule: text.clone(),
                        values,
                    });
                    abort = Some((AbortCause::Rule(text), now_i));
                }
            }
            if abort.is_some() {
                signal_group(job_pid, libc::SIGTERM);
                // A stopped job would get its SIGTERM only when continued: after the grace,
                // with the SIGKILL.
                if suspended {
                    signal_group(job_pid, libc::SIGCONT);
                    suspended = false;
                }
            }
        }
        if let Some((_, since)) = &abort {
            if !killed && exit_status.is_none() && since.elapsed().as_secs_f64() >= spec.grace_secs
            {
                signal_group(job_pid, libc::SIGKILL);
                killed = true;
            }
        }
        // Durable before anything else learns of it. A log that cannot be written (a full disk)
        // keeps its events in memory and is retried next round; the job is not stopped for it.
        log.push(&pending);
        pending.clear();
        log.flush_or_warn();

        if exit_status.is_none() {
            if let Some(status) = child.try_wait().map_err(io_err("wait for job"))? {
                exit_status = Some(status);
            }
        }
        if let Some(status) = exit_status {
            if open_streams == 0 {
                break;
            }
            // The job is gone but something it started still holds the pipes: end the group.
            let since = *streams_done_at.get_or_insert(now_i);
            if since.elapsed() > Duration::from_secs(2) {
                signal_group(job_pid, libc::SIGKILL);
                if since.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            let _ = status;
        }
    }
    // Drop stragglers in the group so no process outlives its run.
    signal_group(job_pid, libc::SIGKILL);
    if let Some(g) = gpus.take() {
        g.stop();
    }
    // Streams held open by a straggler close now that it is gone: take their tails (briefly).
    let tails_deadline = Instant::now() + Duration::from_secs(1);
    while open_streams > 0 {
        let Some(left) = tails_deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match rx.recv_timeout(left) {
            Ok(Msg::Closed(stream, tail)) => {
                stream_tails[stream] = tail;
                open_streams -= 1;
            }
            Ok(Msg::Found(_)) => {}
            Err(_) => break,
        }
    }
    for r in readers {
        if r.is_finished() {
            let _ = r.join();
        }
    }
    let status = exit_status.expect("loop ends only after the job exited");
    let (mut code, mut signal) = (status.code(), status.signal());
    if let Some(sig) = code.and_then(|c| signal_behind_shell(c, &stream_tails)) {
        (code, signal) = (None, Some(sig));
    }
    let clean = matches!((&abort, code), (None, Some(0)));
    let reason = match &abort {
        Some((AbortCause::Rule(_), _)) => rule_reason,
        Some((AbortCause::User, _)) => None,
        None if clean => None,
        None => reason::crash_reason(&stream_tails[1], &stream_tails[0]),
    };
    let stderr_tail = if clean {
        Vec::new()
    } else {
        reason::stderr_tail(&stream_tails[1])
    };
    let outcome = match abort {
        Some((by, _)) => Outcome::Aborted { by, signal, code },
        None => match (code, signal) {
            (Some(code), _) => Outcome::Exit { code },
            (None, Some(signal)) => Outcome::Signal { signal },
            (None, None) => Outcome::Exit { code: -1 },
        },
    };
    log.push(&[KidEvent::Exited {
        t: now(),
        outcome,
        reason,
        stderr_tail,
    }]);
    log.finish(FINAL_WRITE_PATIENCE)
        .map_err(io_err("write event log"))?;
    log.finish_reporting(REPORT_PATIENCE);
    Ok(code.unwrap_or_else(|| 128 + signal.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(step: u32) -> KidEvent {
        KidEvent::Metrics {
            t: 1.0,
            step: Some(f64::from(step)),
            values: vec![("loss".into(), 0.5)],
        }
    }

    /// bash's reports of a command's death by signal, as a script prints them on stderr.
    #[test]
    fn the_shell_report_of_a_signal_death() {
        let tail = |s: &str| vec![s.as_bytes().to_vec()];
        let report =
            "loss=1\n/run/command.sh: line 4:  4242 Killed                  python3 train.py\n";
        assert_eq!(signal_behind_shell(137, &tail(report)), Some(9));
        assert_eq!(
            signal_behind_shell(139, &tail(report)),
            None,
            "another signal"
        );
        let segv = "x.sh: line 2:   77 Segmentation fault      (core dumped) ./a.out\n";
        assert_eq!(signal_behind_shell(139, &tail(segv)), Some(11));
        assert_eq!(
            signal_behind_shell(143, &tail("step 3\nTerminated\n")),
            Some(15)
        );
        assert_eq!(
            signal_behind_shell(134, &tail("Aborted (core dumped)\n")),
            Some(6)
        );
        // The name alone is how bash reports SIGTERM, and any signal the script traps.
        assert_eq!(signal_behind_shell(137, &tail("Killed\n")), Some(9));
        for words in ["Killed by the user\n", "", "done\n"] {
            assert_eq!(signal_behind_shell(137, &tail(words)), None, "{words:?}");
        }
        assert_eq!(signal_behind_shell(1, &tail(report)), None);
        assert_eq!(signal_behind_shell(300, &tail(report)), None);
    }

    /// A kid started again in the same run directory (SLURM requeue) appends after the
    /// previous kid's events; a line the previous kid left half-written is cut off first.
    #[test]
    fn a_log_reopened_after_a_torn_write_continues_cleanly() {
        let dir = std::env::temp_dir().join(format!("nerokid-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = EventLog::open(&dir).unwrap();
        log.append(&[metric(1)]).unwrap();
        drop(log);
        let path = dir.join(EVENTS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event":"metrics","t":1.0,"st"#).unwrap();
        drop(f);
        let mut log = EventLog::open(&dir).unwrap();
        log.append(&[metric(2)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(read_events(&dir).unwrap(), vec![metric(1), metric(2)]);
        // A log that holds no newline at all is emptied.
        std::fs::write(&path, b"{\"torn").unwrap();
        drop(EventLog::open(&dir).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A log that cannot be written keeps a bounded backlog: the newest samples and every
    /// start, rule and exit event; once writable, it writes them in order, whole lines only.
    #[test]
    fn a_backlog_over_the_limit_drops_old_samples_only() {
        let dir = std::env::temp_dir().join(format!("nerokid-backlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = EventLog::open(&dir).unwrap();
        let real = std::mem::replace(
            &mut log.file,
            OpenOptions::new().write(true).open("/dev/full").unwrap(),
        );
        log.max_backlog = 4096;
        log.push(&[KidEvent::RuleFired {
            t: 1.0,
            rule: "loss>1".into(),
            values: Vec::new(),
        }]);
        for step in 0..1000 {
            log.push(&[metric(step)]);
            assert!(log.flush().is_err(), "/dev/full is always full");
        }
        log.push(&[KidEvent::Exited {
            t: 2.0,
            outcome: Outcome::Exit { code: 0 },
            reason: None,
            stderr_tail: Vec::new(),
        }]);
        assert!(log.pending.len() <= 4096 + 200, "{}", log.pending.len());
        log.file = real;
        log.finish(Duration::ZERO).unwrap();
        let events = read_events(&dir).unwrap();
        assert_eq!(
            events.len(),
            std::fs::read_to_string(dir.join(EVENTS_FILE))
                .unwrap()
                .lines()
                .count(),
            "no torn line"
        );
        assert!(matches!(events[0], KidEvent::RuleFired { .. }));
        assert!(matches!(events.last(), Some(KidEvent::Exited { .. })));
        let steps: Vec<f64> = events
            .iter()
            .filter_map(|e| match e {
                KidEvent::Metrics { step, .. } => *step,
                _ => None,
            })
            .collect();
        assert!(steps.len() > 10 && steps.len() < 100, "{}", steps.len());
        assert_eq!(steps.last(), Some(&999.0), "the newest are kept");
        assert!(steps.windows(2).all(|w| w[1] == w[0] + 1.0), "{steps:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
