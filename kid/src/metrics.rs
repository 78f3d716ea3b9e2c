//! Finding numbers in what a job prints: `name=value` / `name: value` tokens (a hand-written byte
//! scanner, because it runs on every line and must keep up with millions of lines a second),
//! configured regexes with named groups, and rows of CSV / JSON-lines metric files.

use regex::Regex;
use std::time::{Duration, Instant};

/// Names whose value is the step of the other numbers on the same line, best first: a global
/// `step` is a finer x axis than the `epoch` printed beside it.
const STEP_NAMES: &[&str] = &["step", "iteration", "iter", "epoch"];

/// Token names that are never metrics: ranks, sizes and GPU counts of a distributed run, Lightning's
/// `v_num` (the logger version in its progress bar) and its `using: 0 TPU cores` preamble.
const NOT_METRICS: &[&str] = &[
    "v_num",
    "rank",
    "local_rank",
    "global_rank",
    "node_rank",
    "world_size",
    "local_world_size",
    "n_gpu",
    "using",
];

/// The numbers found on one line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Found {
    pub step: Option<f64>,
    pub values: Vec<(String, f64)>,
}

impl Found {
    fn push(&mut self, name: &str, value: f64) {
        // A later token of the same name on one line wins.
        if let Some(slot) = self.values.iter_mut().find(|(n, _)| n == name) {
            slot.1 = value;
        } else {
            self.values.push((name.to_string(), value));
        }
    }

    /// The step: the value of the best-ranked step name on the line.
    fn done(mut self) -> Option<Found> {
        if self.values.is_empty() {
            return None;
        }
        self.settle_step();
        Some(self)
    }

    fn settle_step(&mut self) {
        self.step = STEP_NAMES.iter().find_map(|s| {
            self.values
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(s))
                .map(|(_, v)| *v)
        });
    }
}

pub struct Extractor {
    tokens: bool,
    patterns: Vec<(Regex, Vec<String>)>,
}

#[derive(Debug)]
pub enum PatternError {
    Bad(String, regex::Error),
    NoGroups(String),
}

impl std::error::Error for PatternError {}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatternError::Bad(p, e) => write!(f, "metric pattern {p:?}: {e}"),
            PatternError::NoGroups(p) => {
                write!(
                    f,
                    "metric pattern {p:?} has no named group (write (?P<loss>[0-9.eE+-]+))"
                )
            }
        }
    }
}

impl Extractor {
    pub fn new(tokens: bool, patterns: &[String]) -> Result<Extractor, PatternError> {
        let mut compiled = Vec::new();
        for p in patterns {
            let re = Regex::new(p).map_err(|e| PatternError::Bad(p.clone(), e))?;
            let names: Vec<String> = re.capture_names().flatten().map(String::from).collect();
            if names.is_empty() {
                return Err(PatternError::NoGroups(p.clone()));
            }
            compiled.push((re, names));
        }
        Ok(Extractor {
            tokens,
            patterns: compiled,
        })
    }

    /// All metrics on one line (without its newline).
    pub fn line(&self, line: &[u8]) -> Option<Found> {
        let mut found = Found::default();
        if self.tokens {
            scan_tokens(line, &mut found);
            if memchr::memchr(b'|', line).is_some() {
                scan_pipe_cells(line, &mut found);
            }
        }
        if !self.patterns.is_empty() {
            if let Ok(text) = std::str::from_utf8(line) {
                for (re, names) in &self.patterns {
                    if let Some(caps) = re.captures(text) {
                        for name in names {
                            if let Some(v) = caps
                                .name(name)
                                .and_then(|m| parse_number(m.as_str().as_bytes()))
                            {
                                found.push(name, v);
                            }
                        }
                    }
                }
            }
        }
        found.done()
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'/' || b == b'-'
}

/// A word whose call-like repr echoes a configuration: argparse's `Namespace(`, `namespace(`
/// (`types.SimpleNamespace`) and any capitalised class name (dataclasses such as Hugging Face's
/// `TrainingArguments(`, `ModelArguments(`).
fn is_echo_word(word: &[u8]) -> bool {
    word.first().is_some_and(u8::is_ascii_uppercase) || word == b"namespace"
}

/// The next `Word(...)` repr at or after `from` whose word is an echo word: the span from the
/// `(` to its matching `)` (or the line's end, for a repr that goes on on the next lines).
fn echo_span(line: &[u8], mut from: usize) -> Option<(usize, usize)> {
    while let Some(off) = memchr::memchr(b'(', &line[from..]) {
        let open = from + off;
        from = open + 1;
        let word_start = line[..open]
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .map_or(0, |p| p + 1);
        if word_start == open || !is_echo_word(&line[word_start..open]) {
            continue;
        }
        let mut depth = 0usize;
        for (i, b) in line[open..].iter().enumerate() {
            match b {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some((open, open + i + 1));
                    }
                }
                _ => {}
            }
        }
        return Some((open, line.len()));
    }
    None
}

/// A line that opens a repr printed one field per line (`TrainingArguments(` then `_n_gpu=1,`
/// ... then `)`): the lines up to the closing `)` are configuration, not metrics.
pub fn opens_echo_block(line: &[u8]) -> bool {
    let Some(body) = line.trim_ascii_end().strip_suffix(b"(") else {
        return false;
    };
    let word_start = body
        .iter()
        .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .map_or(0, |p| p + 1);
    word_start < body.len() && is_echo_word(&body[word_start..])
}

/// `name=value`, `name = value`, `name: value`; name starts with a letter or `_`.
/// Configuration echoes are skipped: see `NOT_METRICS`, `echo_span` and the phrase rule below.
fn scan_tokens(line: &[u8], found: &mut Found) {
    let mut i = 0;
    let mut echo = echo_span(line, 0);
    // Jump from separator to separator: most bytes of a log line are neither.
    while let Some(off) = memchr::memchr2(b'=', b':', &line[i..]) {
        let sep = i + off;
        // Name: walk back over spaces, then name bytes. A quoted name (`'loss': 0.5`, as
        // Python dicts and JSON print them) needs its opening quote too.
        let mut end = sep;
        while end > 0 && line[end - 1] == b' ' {
            end -= 1;
        }
        let spaced = end < sep;
        let quote = (end > 0 && matches!(line[end - 1], b'\'' | b'"')).then(|| line[end - 1]);
        if quote.is_some() {
            end -= 1;
        }
        let mut start = end;
        while start > 0 && is_name_byte(line[start - 1]) {
            start -= 1;
        }
        if let Some(q) = quote {
            if start == 0 || line[start - 1] != q {
                i = sep + 1;
                continue;
            }
        }
        // Trim leading punctuation that cannot start a name (`--lr=3` → `lr`).
        while start < end && !(line[start].is_ascii_alphabetic() || line[start] == b'_') {
            start += 1;
        }
        i = sep + 1;
        if start == end {
            continue;
        }
        // Inside a configuration repr (`Namespace(lr=1.0, ...)`): not a metric.
        while let Some((_, e)) = echo {
            if start < e {
                break;
            }
            echo = echo_span(line, e);
        }
        if echo.is_some_and(|(s, _)| start > s) {
            continue;
        }
        // A path or address is not a name (`/a/b.py:3:`, `http://host:6006`).
        let raw_start = line[..start]
            .iter()
            .rposition(|b| !is_name_byte(*b))
            .map_or(0, |p| p + 1);
        if line[raw_start..end].starts_with(b"/")
            || line[raw_start..end].windows(2).any(|w| w == b"//")
        {
            continue;
        }
        // `==`, `:=` etc. are not tokens.
        if i < line.len() && (line[i] == b'=' || line[i] == b':') {
            i += 1;
            continue;
        }
        // `name: value` needs the space (`train:42`, `host:8080`, `12:30` are not metrics).
        if line[sep] == b':' && line.get(i) != Some(&b' ') {
            continue;
        }
        // The last word of a phrase before a spaced `=` is prose, as in the settings a trainer
        // lists before it starts (`  Num examples = 25,000`, `  Batch size = 8`).
        if line[sep] == b'='
            && spaced
            && quote.is_none()
            && start >= 2
            && line[start - 1] == b' '
            && line[start - 2].is_ascii_alphabetic()
        {
            continue;
        }
        let mut v = i;
        while v < line.len() && line[v] == b' ' {
            v += 1;
        }
        // A number in the name's own quotes (`"loss": "4.123"`, fairseq's JSON log).
        let value_quote = quote.filter(|q| line.get(v) == Some(q));
        if value_quote.is_some() {
            v += 1;
        }
        let mut vend = v;
        while vend < line.len()
            && matches!(
                line[vend],
                b'0'..=b'9'
                    | b'.'
                    | b'-'
                    | b'+'
                    | b'e'
                    | b'E'
                    | b'n'
                    | b'a'
                    | b'i'
                    | b'f'
                    | b'N'
                    | b'I'
            )
        {
            vend += 1;
        }
        // The value must end the token: `lr=0.1,` and `loss=2)` are numbers; `x=3abc`,
        // `ratio=1/2`, `port=80/tcp` and `file.py:3:` are not.
        // Also `%` (`acc=95.2%`) and control bytes (a colour code, Keras' backspaces).
        let ends_token = |b: u8| {
            b.is_ascii_whitespace()
                || b.is_ascii_control()
                || matches!(
                    b,
                    b',' | b';' | b')' | b']' | b'}' | b'|' | b'"' | b'\'' | b'%'
                )
        };
        if vend == v || (vend < line.len() && !ends_token(line[vend]) && line[vend] != b'.') {
            continue;
        }
        if let Some(q) = value_quote {
            if line.get(vend) != Some(&q) {
                continue;
            }
        }
        // `25,000`: a thousands separator, not the end of a value.
        if line.get(vend) == Some(&b',') && line.get(vend + 1).is_some_and(u8::is_ascii_digit) {
            continue;
        }
        // A trailing `.` belongs to the sentence, not the number.
        let mut num_end = vend;
        while num_end > v && line[num_end - 1] == b'.' {
            num_end -= 1;
        }
        if let Some(value) = parse_number(&line[v..num_end]) {
            if let Ok(name) = std::str::from_utf8(&line[start..end]) {
                if !NOT_METRICS.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                    found.push(name, value);
                }
            }
        }
        i = vend;
    }
}

/// `| name value |` cells, as fairseq prints its epoch summaries (`| epoch 001 | loss 4.123 |
/// ppl 17.42`): a cell after a ` | ` that is exactly a name and a number.
fn scan_pipe_cells(line: &[u8], found: &mut Found) {
    let line = line.trim_ascii_end();
    let mut cells = line.split(|b| *b == b'|').skip(1).peekable();
    while let Some(cell) = cells.next() {
        let last = cells.peek().is_none();
        if !cell.starts_with(b" ") || !(last || cell.ends_with(b" ")) {
            continue;
        }
        let mut words = cell.split(|b| *b == b' ').filter(|w| !w.is_empty());
        let (Some(name), Some(value), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if !(name[0].is_ascii_alphabetic() || name[0] == b'_')
            || !name.iter().all(|b| is_name_byte(*b))
        {
            continue;
        }
        let (Some(v), Ok(name)) = (parse_number(value), std::str::from_utf8(name)) else {
            continue;
        };
        if !NOT_METRICS.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            found.push(name, v);
        }
    }
}

fn parse_number(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if !text.bytes().any(|b| b.is_ascii_digit())
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            // glibc's printf writes `-nan` for a NaN with its sign bit set (C and C++ code).
            "nan" | "-nan" | "+nan" | "inf" | "-inf" | "+inf"
        )
    {
        return None;
    }
    text.parse::<f64>().ok()
}

/// The longest segment the scanner reads; the rest of a longer one (up to its end) is skipped,
/// so a job that prints megabytes without a line end keeps the kid's memory flat.
pub const MAX_SEGMENT: usize = 64 << 10;

/// What ended a segment of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `\n` or `\r\n`: a line.
    Newline,
    /// A lone `\r`: the terminal will draw the next segment over this one (a progress bar).
    Return,
}

/// Split a chunk of bytes into complete segments, keeping the unfinished tail in `pending`.
/// Metric files split at `\n` only ([`LineSplitter::new`]); a job's output also at a lone
/// `\r` ([`LineSplitter::with_returns`]), since progress bars redraw one line for hours.
pub struct LineSplitter {
    pending: Vec<u8>,
    returns: bool,
    /// The chunk ended in a `\r`: a `\n` may follow it (a Windows line end).
    cr: bool,
    /// The segment passed `MAX_SEGMENT`: the rest of it is skipped.
    cut: bool,
    /// The last segment handed out ended with a lone `\r`.
    after_return: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl LineSplitter {
    pub fn new() -> Self {
        LineSplitter {
            pending: Vec::new(),
            returns: false,
            cr: false,
            cut: false,
            after_return: false,
        }
    }

    pub fn with_returns() -> Self {
        LineSplitter {
            returns: true,
            ..Self::new()
        }
    }

    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(&[u8], End)) {
        let mut rest = chunk;
        if std::mem::take(&mut self.cr) && !rest.is_empty() {
            let end = if rest[0] == b'\n' {
                rest = &rest[1..];
                End::Newline
            } else {
                End::Return
            };
            self.hand_out(&[], end, &mut each);
        }
        loop {
            let found = if self.returns {
                memchr::memchr2(b'\n', b'\r', rest)
            } else {
                memchr::memchr(b'\n', rest)
            };
            let Some(pos) = found else { break };
            let (segment, tail) = rest.split_at(pos);
            let end = match (tail[0], tail.get(1)) {
                (b'\n', _) => End::Newline,
                (_, Some(b'\n')) => {
                    rest = &tail[2..];
                    self.hand_out(segment, End::Newline, &mut each);
                    continue;
                }
                (_, Some(_)) => End::Return,
                (_, None) => {
                    // Which end this is shows with the next byte.
                    self.append(segment);
                    self.cr = true;
                    return;
                }
            };
            rest = &tail[1..];
            self.hand_out(segment, end, &mut each);
        }
        self.append(rest);
    }

    /// The last unterminated segment, at end of stream.
    pub fn finish(&mut self, mut each: impl FnMut(&[u8], End)) {
        let end = if std::mem::take(&mut self.cr) {
            End::Return
        } else {
            End::Newline
        };
        if !self.pending.is_empty() {
            self.hand_out(&[], end, &mut each);
        }
    }

    /// The segment a progress bar is drawing now (after a `\r`, not yet ended), if any.
    pub fn open_redraw(&self) -> Option<&[u8]> {
        ((self.after_return || self.cr) && !self.pending.is_empty())
            .then(|| whole_tokens(&self.pending, self.cut))
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.cut {
            return;
        }
        let room = MAX_SEGMENT - self.pending.len();
        if bytes.len() > room {
            self.pending.extend_from_slice(&bytes[..room]);
            self.cut = true;
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }

    fn hand_out(&mut self, segment: &[u8], end: End, each: &mut impl FnMut(&[u8], End)) {
        let segment = if self.returns {
            segment
        } else {
            segment.strip_suffix(b"\r").unwrap_or(segment)
        };
        if self.pending.is_empty() && !self.cut {
            each(whole_tokens(segment, segment.len() > MAX_SEGMENT), end);
        } else {
            self.append(segment);
            let pending = std::mem::take(&mut self.pending);
            each(whole_tokens(&pending, self.cut), end);
            self.pending = pending;
            self.pending.clear();
        }
        self.cut = false;
        self.after_return = end == End::Return;
    }
}

/// A segment cut at `MAX_SEGMENT` ends at its last space, so no number is read half.
fn whole_tokens(segment: &[u8], cut: bool) -> &[u8] {
    if !cut {
        return segment;
    }
    let head = &segment[..segment.len().min(MAX_SEGMENT)];
    memchr::memrchr(b' ', head).map_or(&[], |p| &head[..p])
}

/// The most lines a configuration repr printed one field per line may take.
const MAX_ECHO_LINES: u32 = 1000;

/// How often a progress bar's numbers reach the event log at most (the latest of each period).
pub const BAR_PERIOD: Duration = Duration::from_secs(1);

/// A bar's drawing that no later one has ended yet is read once the stream has been quiet this
/// long: by then the write that drew it is whole (a slow bar, redrawn once per long batch, still
/// shows its numbers at once), and a fast bar never waits for it.
pub const QUIET: Duration = Duration::from_millis(200);

/// Reads one output stream of a job: segments at `\n` and `\r`, configuration echoes skipped,
/// and a progress bar's in-place redraws thinned to its latest numbers at most once per
/// [`BAR_PERIOD`], never twice the same numbers in a row; a line that ends a bar (its final
/// `\n`) is read like any line unless it repeats what was just written.
pub struct StreamScanner {
    split: LineSplitter,
    /// Lines left in a configuration repr printed one field per line; 0 = none open.
    echo_lines: u32,
    /// The bar's latest numbers, not yet written.
    held: Option<Found>,
    /// The bar's numbers last written, and when.
    shown: Option<Found>,
    shown_at: Option<Instant>,
    /// The last segment ended with a lone `\r`.
    after_return: bool,
    /// When output last came, and whether a bar's drawing since then is still to be read.
    last_feed: Instant,
    open_unread: bool,
}

impl Default for StreamScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamScanner {
    pub fn new() -> Self {
        StreamScanner {
            split: LineSplitter::with_returns(),
            echo_lines: 0,
            held: None,
            shown: None,
            shown_at: None,
            after_return: false,
            last_feed: Instant::now(),
            open_unread: false,
        }
    }

    /// Read a chunk of output that arrived at `now`; what it yields goes to `out`.
    pub fn feed(&mut self, ex: &Extractor, chunk: &[u8], now: Instant, out: &mut Vec<Found>) {
        let mut split = std::mem::take(&mut self.split);
        split.feed(chunk, |segment, end| self.segment(ex, segment, end, out));
        self.split = split;
        self.last_feed = now;
        self.open_unread = self.split.open_redraw().is_some();
        self.tick(ex, now, out);
    }

    /// End of stream: the last segment and the bar's latest numbers.
    pub fn finish(&mut self, ex: &Extractor, out: &mut Vec<Found>) {
        let mut split = std::mem::take(&mut self.split);
        split.finish(|segment, end| self.segment(ex, segment, end, out));
        self.split = split;
        out.extend(self.held.take());
    }

    /// When [`StreamScanner::tick`] has something to do if no output comes meanwhile: the bar's
    /// held numbers are due, or the drawing on screen is to be read (`None`: nothing to do).
    pub fn due(&self) -> Option<Instant> {
        let held = self
            .held
            .as_ref()
            .map(|_| self.shown_at.map_or(self.last_feed, |at| at + BAR_PERIOD));
        let open = self.open_unread.then(|| self.last_feed + QUIET);
        held.into_iter().chain(open).min()
    }

    /// Read the bar on screen once the stream is quiet, and write the bar's held numbers if
    /// their period has come.
    pub fn tick(&mut self, ex: &Extractor, now: Instant, out: &mut Vec<Found>) {
        if self.open_unread && now >= self.last_feed + QUIET {
            self.open_unread = false;
            if let Some(open) = self.split.open_redraw() {
                let found = ex.line(open);
                self.redraw(found, out);
            }
        }
        if self.held.is_some() && self.shown_at.is_none_or(|at| now >= at + BAR_PERIOD) {
            let found = self.held.take();
            out.extend(found.clone());
            self.shown = found;
            self.shown_at = Some(now);
        }
    }

    fn segment(&mut self, ex: &Extractor, segment: &[u8], end: End, out: &mut Vec<Found>) {
        let after_return = std::mem::replace(&mut self.after_return, end == End::Return);
        if end == End::Return {
            self.redraw(ex.line(segment), out);
            return;
        }
        if self.echo_lines > 0 {
            self.echo_lines -= 1;
            if segment.trim_ascii_start().starts_with(b")") {
                self.echo_lines = 0;
            }
            return;
        }
        if ex.tokens && opens_echo_block(segment) {
            self.echo_lines = MAX_ECHO_LINES;
        }
        let found = ex.line(segment);
        let held = self.held.take();
        if held.is_some() && held != found {
            out.extend(held);
        }
        // The final `\n` of a bar whose last drawing was written already.
        let repeat = after_return && found.is_some() && found == self.shown;
        if !repeat {
            out.extend(found);
        }
        self.shown = None;
        self.shown_at = None;
    }

    fn redraw(&mut self, found: Option<Found>, out: &mut Vec<Found>) {
        let Some(new) = &found else {
            return;
        };
        // A bar whose set of numbers changes (Lightning adds `val_loss` at an epoch's end, then
        // starts the next epoch's bar at once) keeps the last drawing of the old set.
        if let Some(held) = &self.held {
            let same_names = held.values.len() == new.values.len()
                && held.values.iter().zip(&new.values).all(|(a, b)| a.0 == b.0);
            if !same_names {
                let old = self.held.take();
                out.extend(old.clone());
                self.shown = old;
            }
        }
        if found == self.shown {
            self.held = None;
        } else {
            self.held = found;
        }
    }
}

/// The most bytes a CSV record may take while its quote is open; past it the buffer is dropped.
const MAX_CSV_PENDING: usize = 1 << 20;

/// Rows of a CSV metrics file as it grows (read with the `csv` crate): a header row, then one
/// row per step. Quoted fields may hold commas; empty cells (a metric not logged at that step,
/// as Lightning's `CSVLogger` leaves them) and text are skipped; a row is read only once its
/// line end is written, so a half-written last line is never taken for a short row.
#[derive(Debug, Default)]
pub struct CsvMetrics {
    header: Option<Vec<String>>,
    buf: Vec<u8>,
    /// Data rows read so far.
    rows: u64,
    /// Data rows to pass over: read already, before the file was rewritten.
    skip: u64,
}

impl CsvMetrics {
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Found>) {
        self.buf.extend_from_slice(chunk);
        let Some(last_newline) = memchr::memrchr(b'\n', &self.buf) else {
            return;
        };
        let complete = last_newline + 1;
        let buf = std::mem::take(&mut self.buf);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&buf[..complete]);
        let mut record = csv::ByteRecord::new();
        let mut used = 0;
        loop {
            let start = reader.position().byte() as usize;
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
            let end = (reader.position().byte() as usize).min(complete);
            // A quoted field still open at the end of what is written: wait for the rest.
            let quotes = memchr::memchr_iter(b'"', &buf[start..end]).count();
            if end == complete && quotes % 2 == 1 {
                break;
            }
            used = end;
            self.row(&record, out);
        }
        drop(reader);
        self.buf = buf;
        self.buf.drain(..used);
        if self.buf.len() > MAX_CSV_PENDING {
            self.buf.clear();
        }
    }

    /// The file was rewritten from its start (Lightning's `CSVLogger` does so when a new metric
    /// widens the header): read the new header, pass over the rows read before.
    pub fn rewritten(&mut self) {
        self.header = None;
        self.buf.clear();
        self.skip = self.rows;
    }

    fn row(&mut self, record: &csv::ByteRecord, out: &mut Vec<Found>) {
        let Some(header) = &self.header else {
            let mut names: Vec<String> = record
                .iter()
                .map(|h| String::from_utf8_lossy(h.trim_ascii()).into_owned())
                .collect();
            if let Some(first) = names.first_mut() {
                if let Some(rest) = first.strip_prefix('\u{feff}') {
                    *first = rest.to_string();
                }
            }
            self.header = Some(names);
            return;
        };
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        self.rows += 1;
        let mut found = Found::default();
        for (name, cell) in header.iter().zip(record.iter()) {
            if let Some(v) = parse_number(cell.trim_ascii()) {
                found.push(name, v);
            }
        }
        out.extend(found.done());
    }
}

/// Metrics in one JSON object line (numeric members; booleans and strings are skipped).
pub fn jsonl_row(line: &str) -> Option<Found> {
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        // Python's json module writes NaN and Infinity, which JSON does not have: read them
        // as the strings the values below turn back into numbers.
        Err(_) => serde_json::from_str(&python_specials(line)).ok()?,
    };
    let obj = value.as_object()?;
    let mut found = Found::default();
    for (k, v) in obj {
        let n = match v {
            serde_json::Value::String(s) => match s.as_str() {
                "\u{0}NaN" => Some(f64::NAN),
                "\u{0}Infinity" => Some(f64::INFINITY),
                "\u{0}-Infinity" => Some(f64::NEG_INFINITY),
                _ => None,
            },
            other => other.as_f64(),
        };
        if let Some(n) = n {
            found.push(k, n);
        }
    }
    found.done()
}

/// Quote bare `NaN`, `Infinity`, `-Infinity` outside strings (marked with a NUL so a string
/// that really says "NaN" stays text).
fn python_specials(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let special = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w));
        if let Some(word) = special {
            out.push_str(&format!("\"\\u0000{word}\""));
            rest = &rest[word.len()..];
        } else {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(line: &str) -> Vec<(String, f64)> {
        Extractor::new(true, &[])
            .unwrap()
            .line(line.as_bytes())
            .map(|f| f.values)
            .unwrap_or_default()
    }

    #[test]
    fn finds_name_value_tokens() {
        assert_eq!(
            tokens("epoch=3 loss=0.25 errorrate=1e-2"),
            [
                ("epoch".into(), 3.0),
                ("loss".into(), 0.25),
                ("errorrate".into(), 0.01)
            ]
        );
        assert_eq!(
            tokens("val/acc: 0.91, lr = 3e-4."),
            [("val/acc".into(), 0.91), ("lr".into(), 3e-4)]
        );
        assert_eq!(tokens("--lr=0.5"), [("lr".into(), 0.5)]);
        let nan = tokens("loss=nan");
        assert_eq!(nan.len(), 1);
        assert!(nan[0].1.is_nan());
        // Regression (user trial): C's printf prints `-nan`; it was not read, so no NaN rule
        // could fire on it.
        for text in ["Loss: -nan", "loss=-NaN", "loss=+nan"] {
            let got = tokens(text);
            assert_eq!(got.len(), 1, "{text}");
            assert!(got[0].1.is_nan(), "{text}");
        }
    }

    #[test]
    fn ignores_what_is_not_a_metric() {
        assert!(tokens("at 12:30:45 started").is_empty());
        assert!(tokens("see http://example.org").is_empty());
        // Seen in real logs (regressions: each became a metric column).
        assert!(tokens("TensorBoard at http://localhost:6006/ (Press CTRL+C)").is_empty());
        assert!(tokens("GET http://x.org:8080/a").is_empty());
        assert!(tokens("/home/me/job.py:3: UserWarning: deprecated").is_empty());
        assert!(tokens("2026-11-26 12:00:01 | INFO | train:42 - step done").is_empty());
        assert!(tokens("/tmp/x/command.sh: 2: source: not found").is_empty());
        assert!(tokens("ratio=1/2 port=80/tcp").is_empty());
        assert_eq!(
            tokens("(loss=2.5) [acc=0.5] 'x=1'"),
            [("loss".into(), 2.5), ("acc".into(), 0.5), ("x".into(), 1.0)]
        );
        assert!(tokens("a==3 mode=fast x=3abc").is_empty());
    }

    /// Regressions: percentages and colour codes after a value, and Python/JSON dicts.
    #[test]
    fn common_training_formats() {
        assert_eq!(
            tokens("epoch 3 acc=95.2% loss=0.3"),
            [("acc".into(), 95.2), ("loss".into(), 0.3)]
        );
        assert_eq!(tokens("accuracy: 95.2%"), [("accuracy".into(), 95.2)]);
        assert_eq!(
            tokens("loss=0.25\x1b[0m acc=0.9"),
            [("loss".into(), 0.25), ("acc".into(), 0.9)]
        );
        assert_eq!(
            tokens("{'loss': 0.5, 'learning_rate': 5e-05, 'epoch': 1.0}"),
            [
                ("loss".into(), 0.5),
                ("learning_rate".into(), 5e-5),
                ("epoch".into(), 1.0)
            ]
        );
        assert_eq!(
            tokens(r#"{"loss": 0.5, "step": 10}"#),
            [("loss".into(), 0.5), ("step".into(), 10.0)]
        );
        assert_eq!(
            tokens("loss: 0.4512 - accuracy: 0.8123 - val_loss: 0.5"),
            [
                ("loss".into(), 0.4512),
                ("accuracy".into(), 0.8123),
                ("val_loss".into(), 0.5)
            ]
        );
        // Regression: Lightning's `v_num` (its logger's version) became a metric.
        assert_eq!(
            tokens("[00:01<00:00, loss=0.123, v_num=0]"),
            [("loss".into(), 0.123)]
        );
        assert!(tokens("no numbers here").is_empty());
    }

    /// Regression: argparse's `Namespace(batch_size=64, epochs=14, lr=1.0, ...)` gave six metrics
    /// (and the metric `lr` shadowed the parameter `lr`); Lightning's preamble and rank tags gave
    /// `using`, `LOCAL_RANK` and `rank`; Hugging Face's settings list gave `examples=25`.
    #[test]
    fn configuration_echoes_are_not_metrics() {
        for line in [
            "Namespace(batch_size=64, dry_run=False, epochs=14, gamma=0.7, log_interval=10, lr=1.0, no_cuda=False, save_model=False, seed=1, test_batch_size=1000)",
            "namespace(lr=0.1, momentum=0.9)",
            "Training/evaluation parameters ModelArguments(model_name_or_path='bert-base-cased', cache_dir=None, use_fast_tokenizer=True, model_revision='main', token=None, trust_remote_code=False, ignore_mismatched_sizes=False)",
            "TPU available: False, using: 0 TPU cores",
            "IPU available: False, using: 0 IPUs",
            "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]",
            "[rank: 0] Seed set to 42",
            "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2",
            "  Num examples = 25,000",
            "  Num Epochs = 3",
            "  Instantaneous batch size per device = 8",
            "  Total optimization steps = 9,375",
            "  Number of trainable parameters = 66,955,010",
        ] {
            assert_eq!(tokens(line), [], "{line}");
        }
        // Beside an echo, the rest of the line is still read.
        assert_eq!(
            tokens("args: Namespace(lr=1.0) loss=0.5"),
            [("loss".into(), 0.5)]
        );
        assert_eq!(
            tokens("  eval_loss               =     0.3012"),
            [("eval_loss".into(), 0.3012)]
        );
        assert!(opens_echo_block(
            b"Training/evaluation parameters TrainingArguments("
        ));
        assert!(!opens_echo_block(b"loss=0.5 ("));
        assert!(!opens_echo_block(b"print("));
    }

    /// fairseq's JSON log writes its numbers as strings.
    #[test]
    fn quoted_numbers_in_json_logs() {
        assert_eq!(
            tokens(r#"{"epoch": 1, "update": 0.05, "loss": "13.951", "tag": "x", "n": "3a"}"#),
            [
                ("epoch".into(), 1.0),
                ("update".into(), 0.05),
                ("loss".into(), 13.951)
            ]
        );
    }

    #[test]
    fn step_prefers_step_over_epoch() {
        let f = Extractor::new(true, &[])
            .unwrap()
            .line(b"epoch=2 step=1200 loss=1")
            .unwrap();
        assert_eq!(f.step, Some(1200.0));
    }

    #[test]
    fn step_comes_from_epoch() {
        let f = Extractor::new(true, &[])
            .unwrap()
            .line(b"epoch=7 loss=1")
            .unwrap();
        assert_eq!(f.step, Some(7.0));
    }

    #[test]
    fn named_group_patterns() {
        let ex = Extractor::new(false, &[r"Acc (?P<acc>[0-9.]+)%".into()]).unwrap();
        assert_eq!(
            ex.line(b"Test Acc 93.5% done").unwrap().values,
            [("acc".into(), 93.5)]
        );
        assert!(Extractor::new(false, &["(".into()]).is_err());
        assert!(Extractor::new(false, &["[0-9]+".into()]).is_err());
    }

    #[test]
    fn splitter_keeps_partial_lines() {
        let mut s = LineSplitter::new();
        let mut lines = Vec::new();
        s.feed(b"a=1\nb=", |l, _| lines.push(l.to_vec()));
        s.feed(b"2\r\nc", |l, _| lines.push(l.to_vec()));
        s.finish(|l, _| lines.push(l.to_vec()));
        assert_eq!(lines, [b"a=1".to_vec(), b"b=2".to_vec(), b"c".to_vec()]);
    }

    fn segments(chunks: &[&[u8]]) -> Vec<(String, End)> {
        let mut s = LineSplitter::with_returns();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l, e| {
                out.push((String::from_utf8_lossy(l).into_owned(), e))
            });
        }
        s.finish(|l, e| out.push((String::from_utf8_lossy(l).into_owned(), e)));
        out
    }

    /// Regression: a progress bar redraws one line with `\r` and no metric appeared until its
    /// final `\n`. A `\r\n` (Windows) is one line end, even split between two reads.
    #[test]
    fn returns_end_segments_and_crlf_is_one_line_end() {
        use End::*;
        assert_eq!(
            segments(&[b"\ra=1\ra=2\ra=3\n"]),
            [
                ("".into(), Return),
                ("a=1".into(), Return),
                ("a=2".into(), Return),
                ("a=3".into(), Newline)
            ]
        );
        assert_eq!(
            segments(&[b"x=1\r", b"\ny=2\r\n"]),
            [("x=1".into(), Newline), ("y=2".into(), Newline)]
        );
        assert_eq!(
            segments(&[b"x=1\r", b"y=2"]),
            [("x=1".into(), Return), ("y=2".into(), Newline)]
        );
        assert_eq!(segments(&[b"x=1\r"]), [("x=1".into(), Return)]);
    }

    /// A bar that never ends its line, or a line of megabytes, keeps memory flat: the segment is
    /// cut at `MAX_SEGMENT` (at a space, so no number is read half) and the rest skipped.
    #[test]
    fn an_overlong_segment_is_cut_and_memory_stays_flat() {
        let mut s = LineSplitter::with_returns();
        let mut out = Vec::new();
        let big = "loss=1 ".repeat(MAX_SEGMENT / 7 + 100);
        for _ in 0..3 {
            s.feed(big.as_bytes(), |l, _| out.push(l.len()));
            assert!(
                s.pending.capacity() <= 2 * MAX_SEGMENT,
                "{}",
                s.pending.capacity()
            );
        }
        s.feed(b"tail\nacc=2\n", |l, _| out.push(l.len()));
        assert_eq!(out.len(), 2);
        assert!(
            out[0] <= MAX_SEGMENT && out[0] > MAX_SEGMENT - 8,
            "{}",
            out[0]
        );
        assert_eq!(out[1], 5);
        // A bar that redraws for hours never grows a buffer.
        let mut bar = LineSplitter::with_returns();
        for i in 0..100_000 {
            bar.feed(format!("\r{i}% loss={i}").as_bytes(), |_, _| {});
        }
        assert!(bar.pending.capacity() < 1024);
    }

    #[test]
    fn files_rows() {
        let mut csv = CsvMetrics::default();
        let mut out = Vec::new();
        csv.feed(b"step,loss,name\n3,0.5,x\n", &mut out);
        assert_eq!(out[0].values, [("step".into(), 3.0), ("loss".into(), 0.5)]);
        assert_eq!(
            jsonl_row(r#"{"loss": 2, "tag": "a"}"#).unwrap().values,
            [("loss".into(), 2.0)]
        );
        // Regression: Python's `json.dumps` writes NaN/Infinity; the whole line was dropped.
        let f = jsonl_row(r#"{"step": 3, "loss": NaN, "big": -Infinity, "note": "NaN"}"#).unwrap();
        assert_eq!(f.values.len(), 3, "{f:?}");
        let get = |n: &str| f.values.iter().find(|(k, _)| k == n).unwrap().1;
        assert!(get("loss").is_nan());
        assert_eq!((get("big"), get("step")), (f64::NEG_INFINITY, 3.0));
    }
}
