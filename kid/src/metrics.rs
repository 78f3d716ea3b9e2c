//! Finding numbers in what a job prints: `name=value` / `name: value` tokens (a hand-written byte
//! scanner, because it runs on every line and must keep up with millions of lines a second),
//! configured regexes with named groups, and rows of CSV / JSON-lines metric files.

use regex::Regex;

/// Names whose value is the step of the other numbers on the same line.
const STEP_NAMES: &[&str] = &["step", "epoch", "iter", "iteration"];

/// The numbers found on one line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Found {
    pub step: Option<f64>,
    pub values: Vec<(String, f64)>,
}

impl Found {
    fn push(&mut self, name: &str, value: f64) {
        if self.step.is_none() && STEP_NAMES.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            self.step = Some(value);
        }
        // A later token of the same name on one line wins.
        if let Some(slot) = self.values.iter_mut().find(|(n, _)| n == name) {
            slot.1 = value;
        } else {
            self.values.push((name.to_string(), value));
        }
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
        (!found.values.is_empty()).then_some(found)
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'/' || b == b'-'
}

/// `name=value`, `name = value`, `name: value`; name starts with a letter or `_`.
fn scan_tokens(line: &[u8], found: &mut Found) {
    let mut i = 0;
    // Jump from separator to separator: most bytes of a log line are neither.
    while let Some(off) = memchr::memchr2(b'=', b':', &line[i..]) {
        let sep = i + off;
        // Name: walk back over spaces, then name bytes. A quoted name (`'loss': 0.5`, as
        // Python dicts and JSON print it) needs its opening quote too.
        let mut end = sep;
        while end > 0 && line[end - 1] == b' ' {
            end -= 1;
        }
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
        let mut v = i;
        while v < line.len() && line[v] == b' ' {
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
        // Also `%` (`acc=95.2%`) and ESC (a colour code right after the number).
        let ends_token = |b: u8| {
            b.is_ascii_whitespace()
                || matches!(
                    b,
                    b',' | b';' | b')' | b']' | b'}' | b'|' | b'"' | b'\'' | b'%' | 0x1b
                )
        };
        if vend == v || (vend < line.len() && !ends_token(line[vend]) && line[vend] != b'.') {
            continue;
        }
        // A trailing `.` belongs to the sentence, not the number.
        let mut num_end = vend;
        while num_end > v && line[num_end - 1] == b'.' {
            num_end -= 1;
        }
        if let Some(value) = parse_number(&line[v..num_end]) {
            if let Ok(name) = std::str::from_utf8(&line[start..end]) {
                found.push(name, value);
            }
        }
        i = vend;
    }
}

fn parse_number(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if !text.bytes().any(|b| b.is_ascii_digit())
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "nan" | "inf" | "-inf" | "+inf"
        )
    {
        return None;
    }
    text.parse::<f64>().ok()
}

/// Split a chunk of bytes into complete lines, keeping the unfinished tail in `pending`.
pub struct LineSplitter {
    pending: Vec<u8>,
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
        }
    }

    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(&[u8])) {
        let mut rest = chunk;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(pos);
            if self.pending.is_empty() {
                each(trim_cr(line));
            } else {
                self.pending.extend_from_slice(line);
                each(trim_cr(&self.pending));
                self.pending.clear();
            }
            rest = &tail[1..];
        }
        self.pending.extend_from_slice(rest);
        // A job that prints megabytes without a newline: give up on that line, keep memory flat.
        if self.pending.len() > 1 << 20 {
            self.pending.clear();
        }
    }

    /// The last unterminated line, at end of stream.
    pub fn finish(&mut self, mut each: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            each(trim_cr(&self.pending));
            self.pending.clear();
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Metrics in a CSV row, given the header.
pub fn csv_row(header: &[String], line: &str) -> Option<Found> {
    let mut found = Found::default();
    for (name, cell) in header.iter().zip(line.split(',')) {
        if let Some(v) = parse_number(cell.trim().as_bytes()) {
            found.push(name, v);
        }
    }
    (!found.values.is_empty()).then_some(found)
}

pub fn csv_header(line: &str) -> Vec<String> {
    line.split(',')
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect()
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
    (!found.values.is_empty()).then_some(found)
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
        assert_eq!(
            tokens("[00:01<00:00, loss=0.123, v_num=0]"),
            [("loss".into(), 0.123), ("v_num".into(), 0.0)]
        );
        assert!(tokens("no numbers here").is_empty());
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
        s.feed(b"a=1\nb=", |l| lines.push(l.to_vec()));
        s.feed(b"2\r\nc", |l| lines.push(l.to_vec()));
        s.finish(|l| lines.push(l.to_vec()));
        assert_eq!(lines, [b"a=1".to_vec(), b"b=2".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn files_rows() {
        let h = csv_header("step,loss,name");
        assert_eq!(
            csv_row(&h, "3,0.5,x").unwrap().values,
            [("step".into(), 3.0), ("loss".into(), 0.5)]
        );
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
