//! Why a run died, in plain words, read from the end of its output: the last line of a Python
//! traceback, a C++ `terminate` with its `what()`, a Rust panic, a shell's report of a signal
//! death, slurmstepd's out-of-memory kill, a CUDA error. Also the cleaned stderr tail the alert
//! shows. Pure functions over bytes: the kid calls them once, after the job has ended.

use regex::Regex;
use std::sync::OnceLock;

/// The longest reason kept (characters).
pub const MAX_REASON: usize = 300;
/// How many stderr lines the exit record keeps, and how long each may be (characters).
pub const TAIL_LINES: usize = 20;
pub const TAIL_LINE_CHARS: usize = 300;

/// One line as a terminal would show it: ANSI escape sequences removed, and of a line redrawn
/// with `\r` (a progress bar) only the last drawing that is not empty. Trailing blanks go.
pub fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let shown = text
        .split('\r')
        .rev()
        .map(strip_ansi)
        .find(|s| !s.trim().is_empty())
        .unwrap_or_default();
    shown.trim_end().to_string()
}

/// Remove CSI (`ESC [ ... letter`) and OSC (`ESC ] ... BEL`) sequences and stray escapes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {
                chars.next();
            }
        }
    }
    out
}

/// The end of a stream as cleaned lines (empty ones dropped).
fn lines(tail: &[u8]) -> Vec<String> {
    tail.split(|b| *b == b'\n')
        .map(clean_line)
        .filter(|l| !l.is_empty())
        .collect()
}

fn cap(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The last [`TAIL_LINES`] lines of stderr, cleaned and each cut at [`TAIL_LINE_CHARS`].
pub fn stderr_tail(tail: &[u8]) -> Vec<String> {
    let all = lines(tail);
    let from = all.len().saturating_sub(TAIL_LINES);
    all[from..]
        .iter()
        .map(|l| cap(l, TAIL_LINE_CHARS))
        .collect()
}

/// The reason found in stderr's tail, else in stdout's, else a program's own last `error:` /
/// `fatal:` line near the end of stderr; at most [`MAX_REASON`] characters.
pub fn crash_reason(stderr: &[u8], stdout: &[u8]) -> Option<String> {
    let err = unprefixed(lines(stderr));
    find(&err)
        .or_else(|| find(&unprefixed(lines(stdout))))
        .or_else(|| error_line(&err))
        .map(|r| cap(r.trim(), MAX_REASON))
}

/// Lines without the prefix a distributed launcher puts on each child's output
/// (`[rank0]: `, torchrun's `[default0]:`), so that a traceback reads as Python printed it.
fn unprefixed(lines: Vec<String>) -> Vec<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re =
        RE.get_or_init(|| Regex::new(r"^\[(?:rank|default)[0-9]+\]: ?").expect("a valid regex"));
    lines
        .into_iter()
        .map(|l| match re.find(&l) {
            Some(m) => l[m.end()..].to_string(),
            None => l,
        })
        .collect()
}

/// How far from the end of stderr a bare `error: ...` line still counts as the reason.
const ERROR_LINE_WINDOW: usize = 5;

/// A program's own last words when nothing better was found: `fatal: dataset not found`,
/// `Error: CUDA driver too old`, `ERROR: no such file` among the last few lines.
fn error_line(lines: &[String]) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^(?i:fatal|error)(?:\[[^\]]*\])?: +\S").expect("a valid regex")
    });
    lines
        .iter()
        .rev()
        .take(ERROR_LINE_WINDOW)
        .find(|l| re.is_match(l.trim()))
        .map(|l| l.trim().to_string())
}

/// The exit record's reason for a rule abort: `rule loss>2 fired: loss=3.1, runtime=45s`.
pub fn rule_reason(rule: &str, values: &[(String, f64)]) -> String {
    let shown: Vec<String> = values
        .iter()
        .map(|(name, v)| {
            if name.eq_ignore_ascii_case("runtime") {
                format!("{name}={}", duration_words(*v))
            } else {
                format!("{name}={}", crate::expr::format_number(*v))
            }
        })
        .collect();
    cap(
        &format!("rule {rule} fired: {}", shown.join(", ")),
        MAX_REASON,
    )
}

/// A run's age in whole seconds as people write it: `45s`, `12m 5s`, `2h 3m`, `1d 4h`.
pub fn duration_words(secs: f64) -> String {
    let s = if secs.is_finite() {
        secs.max(0.0).round() as u64
    } else {
        0
    };
    let (d, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// Words a shell prints for a command that died from a signal (C locale).
const SHELL_WORDS: &str =
    "Segmentation fault|Bus error|Killed|Aborted|Illegal instruction|Floating point exception";

fn shell_report() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // Alone (`Killed`, `Segmentation fault (core dumped)`), or bash's report naming the
        // script line and the pid (`run.sh: line 4:  4242 Killed   python3 train.py`).
        Regex::new(&format!(
            r"^(?:({SHELL_WORDS})( +\(core dumped\))?|.*: line [0-9]+: +[0-9]+ +({SHELL_WORDS})( +\(core dumped\))?(?: .*)?)$"
        ))
        .expect("a valid regex")
    })
}

/// Whether a reason is only a shell's words for a signal death (`Segmentation fault (core
/// dumped)`, `Killed`): neroman then says the signal's own name instead, not both.
pub fn is_shell_report(reason: &str) -> bool {
    shell_report().is_match(reason.trim())
}

/// A shell's report of a signal death follows what the program said just before dying (the C++
/// exception behind `Aborted`): a finding this many lines before the report wins over it.
const REPORT_CAUSE_LINES: usize = 3;

/// The last thing in these lines that says why the job died (what happened last is what ended
/// the run). A shell's signal words are weaker: a program's own last words just before them
/// (an exception, a panic) say more.
fn find(lines: &[String]) -> Option<String> {
    // (line, words, strength): 0 a shell's report, 1 a program's own words, 2 a traceback's
    // exception line (preferred where the same line also reads as a CUDA error alone).
    let mut findings: Vec<(usize, String, u8)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let l = line.trim();
        if l.ends_with("Traceback (most recent call last):") {
            if let Some((at, exception)) = traceback_exception(lines, i + 1) {
                findings.push((at, exception, 2));
            }
        } else if let Some((r, strong)) = single_line(lines, i, l) {
            findings.push((i, r, u8::from(strong)));
        }
    }
    findings.sort_by_key(|(at, _, strength)| (*at, *strength));
    let (at, last, strength) = findings.pop()?;
    if strength > 0 {
        return Some(last);
    }
    let cause = findings
        .into_iter()
        .rev()
        .take_while(|(i, _, _)| *i + REPORT_CAUSE_LINES >= at)
        .find(|(_, _, strength)| *strength > 0);
    Some(cause.map_or(last, |(_, r, _)| r))
}

/// How many lines of a message that goes on after a colon are joined to it.
const CONTINUATION_LINES: usize = 3;

/// The exception line after a traceback's frames: its first line that is not indented (the
/// frames, the source lines and the `^^^^` markers are). A message of several lines gives its
/// first — joined with the next few where the first ends with a colon (`shapes do not
/// match:`). An exception without a message (`AssertionError`) says the source line that
/// raised it. A later traceback (a chained exception) is found first by [`find`].
fn traceback_exception(lines: &[String], from: usize) -> Option<(usize, String)> {
    let (at, line) = lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| !l.starts_with([' ', '\t']) && !l.trim().is_empty())?;
    let mut words = line.trim().to_string();
    if words.ends_with(':') {
        let more: Vec<&str> = lines[at + 1..]
            .iter()
            .map(|l| l.trim())
            .take_while(|l| !l.is_empty() && !l.ends_with("Traceback (most recent call last):"))
            .take(CONTINUATION_LINES)
            .collect();
        if !more.is_empty() {
            words = format!("{words} {}", more.join(" "));
        }
    } else if !words.contains(':') {
        // The last source line shown before it: indented deeper than the `File` lines, not
        // the `^^^^` markers.
        let source = lines[from..at].iter().rev().map(|l| l.trim()).find(|l| {
            !l.is_empty() && !l.starts_with("File \"") && !l.chars().all(|c| "^~ ".contains(c))
        });
        if let Some(src) = source {
            words = format!("{words} at `{src}`");
        }
    }
    Some((at, words))
}

/// A finding on line `i` alone (or with the line after it), and whether it is strong (the
/// program's own words) rather than a shell's report of a signal.
fn single_line(lines: &[String], i: usize, l: &str) -> Option<(String, bool)> {
    if let Some(kind) = l
        .strip_prefix("terminate called after throwing an instance of '")
        .and_then(|r| r.strip_suffix('\''))
    {
        let what = lines
            .get(i + 1)
            .and_then(|n| n.trim().strip_prefix("what():"))
            .map(str::trim);
        let r = match what {
            Some(w) => format!("{kind}: {w}"),
            None => l.to_string(),
        };
        return Some((r, true));
    }
    if l.starts_with("thread '") && l.contains("' panicked at ") {
        // Since Rust 1.73 the message follows on the next line; before, it was quoted inline.
        let message = lines
            .get(i + 1)
            .map(|n| n.trim())
            .filter(|n| !n.is_empty() && !n.starts_with("note: "));
        let r = match (l.ends_with(':'), message) {
            (true, Some(m)) => format!("{l} {m}"),
            _ => l.to_string(),
        };
        return Some((r, true));
    }
    if l.contains("slurmstepd") {
        let lower = l.to_ascii_lowercase();
        if lower.contains("oom-kill")
            || lower.contains("oom_kill")
            || lower.contains("out of memory")
        {
            let words = l.split_once("error: ").map_or(l, |(_, w)| w);
            return Some((words.trim().to_string(), true));
        }
    }
    if let Some(c) = shell_report().captures(l) {
        let words = c.get(1).or(c.get(3)).map_or("", |m| m.as_str());
        let core = c.get(2).or(c.get(4)).map_or("", |_| " (core dumped)");
        return Some((format!("{words}{core}"), false));
    }
    if let Some(at) = l.find("CUDA error: ") {
        return Some((l[at..].to_string(), true));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(stderr: &str) -> Option<String> {
        crash_reason(stderr.as_bytes(), b"")
    }

    const OOM: &str = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 18.56 GiB is free.";

    #[test]
    fn the_last_line_of_a_python_traceback() {
        let log = format!(
            "epoch 1 loss=0.3\nTraceback (most recent call last):\n  File \"train.py\", line 9, in <module>\n    x = torch.empty(n, device='cuda')\n        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n{OOM}\n"
        );
        assert_eq!(reason(&log).as_deref(), Some(OOM));
    }

    /// tqdm redraws its bar with `\r` and never ends the line before Python prints the
    /// traceback on the same line.
    #[test]
    fn a_traceback_after_a_progress_bar() {
        let log = format!(
            "\r  1%|          | 1/100 [00:00<00:09]\r\x1b[32m  2%\x1b[0m|▏         | 2/100 [00:00<00:09]Traceback (most recent call last):\n  File \"t.py\", line 3, in <module>\n    boom()\n{OOM}\n"
        );
        assert_eq!(reason(&log).as_deref(), Some(OOM));
        let tail = stderr_tail(log.as_bytes());
        assert_eq!(
            tail[0],
            "  2%|▏         | 2/100 [00:00<00:09]Traceback (most recent call last):"
        );
        assert_eq!(tail.last().map(String::as_str), Some(OOM));
    }

    /// torchrun prefixes each line of a child's output with its rank.
    #[test]
    fn a_traceback_behind_rank_prefixes() {
        let log = format!(
            "[rank0]: Traceback (most recent call last):\n[rank0]:   File \"train.py\", line 3, in <module>\n[rank0]:     loss.backward()\n[rank0]: {OOM}\n"
        );
        assert_eq!(reason(&log).as_deref(), Some(OOM));
        let log = format!("[default0]:Traceback (most recent call last):\n[default0]:  File \"t.py\", line 1, in <module>\n[default0]:{OOM}\n");
        assert_eq!(reason(&log).as_deref(), Some(OOM));
    }

    #[test]
    fn a_message_that_goes_on_after_a_colon_is_joined() {
        let log = "Traceback (most recent call last):\n  File \"t.py\", line 1, in <module>\nValueError: shapes do not match:\n  got (32, 128)\n  expected (32, 256)\n";
        assert_eq!(
            reason(log).as_deref(),
            Some("ValueError: shapes do not match: got (32, 128) expected (32, 256)")
        );
    }

    #[test]
    fn an_exception_without_a_message_says_its_source_line() {
        let log = "Traceback (most recent call last):\n  File \"t.py\", line 4, in <module>\n    assert acc > 0.5, \n           ^^^^^^^^^\nAssertionError\n";
        assert_eq!(
            reason(log).as_deref(),
            Some("AssertionError at `assert acc > 0.5,`")
        );
    }

    #[test]
    fn a_programs_own_error_line_when_nothing_else_says_why() {
        assert_eq!(
            reason("loading\nfatal: dataset not found: /data/x\n").as_deref(),
            Some("fatal: dataset not found: /data/x")
        );
        assert_eq!(
            reason("ERROR: no GPU\nbye\n").as_deref(),
            Some("ERROR: no GPU")
        );
        // Not just any line that mentions an error, and not one long before the end.
        assert_eq!(reason("errors so far: 3\n"), None);
        assert_eq!(reason("error: early\n1\n2\n3\n4\n5\n"), None);
    }

    #[test]
    fn a_shell_report_is_told_apart() {
        assert!(is_shell_report("Segmentation fault (core dumped)"));
        assert!(is_shell_report("Killed"));
        assert!(!is_shell_report(
            "torch.OutOfMemoryError: CUDA out of memory."
        ));
    }

    #[test]
    fn a_message_of_several_lines_gives_its_first() {
        let log = "Traceback (most recent call last):\n  File \"t.py\", line 1, in <module>\nValueError: bad shape\n  expected (3, 4)\n  got (4, 3)\n";
        assert_eq!(reason(log).as_deref(), Some("ValueError: bad shape"));
    }

    #[test]
    fn a_chained_traceback_gives_the_last_exception() {
        let log = "Traceback (most recent call last):\n  File \"t.py\", line 2, in <module>\nKeyError: 'x'\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"t.py\", line 4, in <module>\nRuntimeError: CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously reported at some other API call\n";
        assert_eq!(
            reason(log).as_deref(),
            Some("RuntimeError: CUDA error: an illegal memory access was encountered")
        );
    }

    #[test]
    fn cpp_terminate_with_what() {
        let log = "step 3\nterminate called after throwing an instance of 'std::runtime_error'\n  what():  tensor shape mismatch\nAborted (core dumped)\n";
        // The shell's report comes last, but the exception just before it says more.
        assert_eq!(
            reason(log).as_deref(),
            Some("std::runtime_error: tensor shape mismatch")
        );
        // Long before the report, an exception was something else (caught, logged).
        let far = "terminate called after throwing an instance of 'X'\n  what():  y\na\nb\nc\nd\nKilled\n";
        assert_eq!(reason(far).as_deref(), Some("Killed"));
        let without_shell = "terminate called after throwing an instance of 'c10::Error'\n  what():  CUDA driver error\n";
        assert_eq!(
            reason(without_shell).as_deref(),
            Some("c10::Error: CUDA driver error")
        );
    }

    #[test]
    fn a_rust_panic_old_and_new() {
        let new = "thread 'main' panicked at src/main.rs:4:5:\nindex out of bounds: the len is 3 but the index is 7\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            reason(new).as_deref(),
            Some("thread 'main' panicked at src/main.rs:4:5: index out of bounds: the len is 3 but the index is 7")
        );
        let old = "thread 'main' panicked at 'boom', src/main.rs:2:5\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            reason(old).as_deref(),
            Some("thread 'main' panicked at 'boom', src/main.rs:2:5")
        );
    }

    #[test]
    fn shell_reports_of_signals() {
        assert_eq!(
            reason("x.sh: line 2:   77 Segmentation fault      (core dumped) ./a.out\n").as_deref(),
            Some("Segmentation fault (core dumped)")
        );
        assert_eq!(reason("loss=1\nKilled\n").as_deref(), Some("Killed"));
        assert_eq!(reason("Bus error\n").as_deref(), Some("Bus error"));
        // A job's own words that merely contain the signal's name are not a report.
        assert_eq!(reason("Killed the old checkpoint writer\n"), None);
        assert_eq!(reason("epoch 3: Segmentation faults seen: 0\n"), None);
    }

    #[test]
    fn slurm_oom_kill_and_cuda_errors() {
        let slurm = "slurmstepd: error: Detected 1 oom_kill event in StepId=123.batch. Some of the step tasks have been OOM Killed.\n";
        assert_eq!(
            reason(slurm).as_deref(),
            Some("Detected 1 oom_kill event in StepId=123.batch. Some of the step tasks have been OOM Killed.")
        );
        let cuda = "[rank0] CUDA error: device-side assert triggered\n";
        assert_eq!(
            reason(cuda).as_deref(),
            Some("CUDA error: device-side assert triggered")
        );
    }

    #[test]
    fn stdout_when_stderr_says_nothing_and_none_when_neither() {
        let out = "Traceback (most recent call last):\n  File \"a\", line 1\nZeroDivisionError: division by zero\n";
        assert_eq!(
            crash_reason(b"", out.as_bytes()).as_deref(),
            Some("ZeroDivisionError: division by zero")
        );
        assert_eq!(crash_reason(b"warning: slow\n", b"loss=3\n"), None);
        // A traceback cut off before its exception line finds nothing rather than a frame.
        assert_eq!(
            reason("Traceback (most recent call last):\n  File \"a\", line 1\n"),
            None
        );
    }

    #[test]
    fn reasons_and_tail_lines_are_capped() {
        let long = format!(
            "Traceback (most recent call last):\nValueError: {}\n",
            "x".repeat(1000)
        );
        let r = reason(&long).unwrap();
        assert_eq!(r.chars().count(), MAX_REASON);
        assert!(r.ends_with('…'));
        let many: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let tail = stderr_tail(many.as_bytes());
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[0], "line 30");
        assert_eq!(tail[19], "line 49");
        let wide = stderr_tail(format!("{}\n", "é".repeat(400)).as_bytes());
        assert_eq!(wide[0].chars().count(), TAIL_LINE_CHARS);
    }

    #[test]
    fn a_rule_reason_names_the_values() {
        let values = vec![("loss".to_string(), 3.1), ("runtime".to_string(), 45.2)];
        assert_eq!(
            rule_reason("loss>2", &values),
            "rule loss>2 fired: loss=3.1, runtime=45s"
        );
        let values = vec![
            ("runtime".to_string(), 725.0),
            ("acc".to_string(), 0.5),
            ("lr".to_string(), 1e-3),
        ];
        assert_eq!(
            rule_reason("runtime>10m&&acc<0.6", &values),
            "rule runtime>10m&&acc<0.6 fired: runtime=12m 5s, acc=0.5, lr=0.001"
        );
        assert_eq!(
            rule_reason("loss==nan", &[("loss".into(), f64::NAN)]),
            "rule loss==nan fired: loss=nan"
        );
    }

    #[test]
    fn durations_in_words() {
        for (secs, words) in [
            (0.2, "0s"),
            (45.0, "45s"),
            (60.0, "1m"),
            (725.0, "12m 5s"),
            (7380.0, "2h 3m"),
            (3600.0, "1h"),
            (100800.0, "1d 4h"),
            (86400.0, "1d"),
            (f64::NAN, "0s"),
        ] {
            assert_eq!(duration_words(secs), words, "{secs}");
        }
    }

    #[test]
    fn clean_line_strips_escapes_and_redraws() {
        assert_eq!(
            clean_line(b"\x1b[1;31mred\x1b[0m text\x1b]0;title\x07"),
            "red text"
        );
        assert_eq!(clean_line(b"10%\r50%\r100%\r"), "100%");
        assert_eq!(clean_line(b"done   "), "done");
    }
}
