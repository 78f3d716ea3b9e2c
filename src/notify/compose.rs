//! The words of a message, from the alerts it carries: the subject
//! (`[neronet] 3 crashed, 12 finished — project`), a plain-text table of the runs with the last
//! lines of stderr of crashes and the resource peaks, the same as HTML (every value escaped), and
//! the short form for chat (one line per run).

use super::channel::Kind;
use crate::store::RunRow;
use crate::util::human_duration;
use nerokid::expr::format_number;
use std::fmt::Write;

/// One alert with what the store knew of its run when the message was composed.
#[derive(Debug, Clone)]
pub struct Item {
    pub kind: Kind,
    pub exp_id: String,
    /// The rule's text (`when`), the silence (`stalled`), or the state's reason.
    pub detail: Option<String>,
    pub run: Option<RunRow>,
    /// The last values of up to 4 metrics.
    pub metrics: Vec<(String, f64)>,
}

/// Where the message comes from (its footer, its subject).
#[derive(Debug, Clone)]
pub struct Origin {
    pub project: String,
    pub project_dir: String,
    pub host: String,
}

/// The most stderr lines a crash shows.
const STDERR_LINES: usize = 10;

/// The alerts of one run (one run uid; an alert with no run row stands alone by its id), in
/// [`Kind::ALL`] order: a digest shows each run once, with all its alerts.
pub struct Group<'a> {
    pub items: Vec<&'a Item>,
}

impl<'a> Group<'a> {
    fn first(&self) -> &'a Item {
        self.items[0]
    }

    fn run(&self) -> Option<&'a RunRow> {
        self.items.iter().find_map(|i| i.run.as_ref())
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut k: Vec<Kind> = self.items.iter().map(|i| i.kind).collect();
        k.dedup();
        k
    }

    /// The metrics of the latest alert that has some.
    fn metrics(&self) -> String {
        self.items
            .iter()
            .rev()
            .map(|i| metrics(i))
            .find(|m| !m.is_empty())
            .unwrap_or_default()
    }

    /// Each alert's kind and reason: `when epoch>=6 && acc>0.55; finished`. A run with one
    /// alert shows only its reason (the state column says the rest) unless the kind is not a
    /// state (`stalled no output for 30m`).
    fn reasons(&self) -> String {
        let alone = self.items.len() == 1;
        let mut parts: Vec<String> = Vec::new();
        for i in &self.items {
            let r = reason(i);
            let part = if matches!(i.kind, Kind::Stalled | Kind::Queued | Kind::When) {
                labelled(i.kind, &r)
            } else if alone {
                r
            } else if r.is_empty() {
                i.kind.as_str().to_string()
            } else {
                format!("{}: {r}", i.kind.as_str())
            };
            if !part.is_empty() && !parts.contains(&part) {
                parts.push(part);
            }
        }
        parts.join("; ")
    }
}

/// `when loss>5` from the kind and its detail (which may already start with the kind).
fn labelled(kind: Kind, detail: &str) -> String {
    let k = kind.as_str();
    if detail.is_empty() {
        k.to_string()
    } else if detail.starts_with(k) {
        detail.to_string()
    } else {
        format!("{k} {detail}")
    }
}

/// The alerts grouped by run, runs ordered by their first kind, then by id (numbers as numbers).
pub fn groups(items: &[Item]) -> Vec<Group<'_>> {
    let mut out: Vec<(String, Group<'_>)> = Vec::new();
    for i in sorted(items) {
        let key = match &i.run {
            Some(r) => format!("u{}", r.uid),
            None => format!("i{}", i.exp_id),
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.items.push(i),
            None => out.push((key, Group { items: vec![i] })),
        }
    }
    out.into_iter().map(|(_, g)| g).collect()
}

/// `3 crashed, 12 finished`, kinds in [`Kind::ALL`] order: how many runs had an alert of
/// each kind (a run that matched a rule and then finished counts in both).
pub fn counts(items: &[Item]) -> String {
    let groups = groups(items);
    Kind::ALL
        .iter()
        .filter_map(|k| {
            let n = groups.iter().filter(|g| g.kinds().contains(k)).count();
            (n > 0).then(|| format!("{n} {}", k.phrase()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn subject(items: &[Item], origin: &Origin) -> String {
    format!("[neronet] {} — {}", counts(items), origin.project)
}

fn sorted(items: &[Item]) -> Vec<&Item> {
    let mut v: Vec<&Item> = items.iter().collect();
    v.sort_by(|a, b| {
        a.kind
            .cmp(&b.kind)
            .then_with(|| natural(&a.exp_id).cmp(&natural(&b.exp_id)))
    });
    v
}

/// Ids that are numbers sort as numbers.
pub fn natural(id: &str) -> (u8, i64, String) {
    match id.trim().parse::<i64>() {
        Ok(n) => (0, n, String::new()),
        Err(_) => (1, 0, id.to_string()),
    }
}

fn run_no(i: &Item) -> String {
    i.run
        .as_ref()
        .map_or_else(|| "-".into(), |r| r.run_no.to_string())
}

fn state(i: &Item) -> String {
    i.run
        .as_ref()
        .map_or_else(|| "-".into(), |r| r.state.name().as_str().to_string())
}

fn runtime(i: &Item, now: f64) -> String {
    let Some(r) = &i.run else {
        return "-".into();
    };
    match r.started_at {
        Some(s) => human_duration((r.finished_at.unwrap_or(now) - s).max(0.0)),
        None => "-".into(),
    }
}

fn metrics(i: &Item) -> String {
    i.metrics
        .iter()
        .map(|(k, v)| format!("{k}={}", format_number(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the alert says beyond the state: the reason, the rule, the silence.
pub fn reason(i: &Item) -> String {
    let from_run = i.run.as_ref().and_then(|r| r.state.reason());
    match i.kind {
        Kind::Stalled | Kind::Queued | Kind::When => i.detail.clone().unwrap_or_default(),
        _ => from_run.or_else(|| i.detail.clone()).unwrap_or_default(),
    }
}

use crate::util::human_bytes as bytes;

/// `CPU peak 180%, RSS peak 1.2 GiB, GPU peak 97% (0: NVIDIA H100), GPU memory peak 40.1 GiB`.
pub fn peaks(run: &RunRow) -> Option<String> {
    let u = &run.usage;
    let mut parts = Vec::new();
    if let Some(c) = u.cpu_peak {
        parts.push(format!("CPU peak {c:.0}%"));
    }
    if let Some(r) = u.rss_peak {
        parts.push(format!("RSS peak {}", bytes(r)));
    }
    if let Some(g) = u.gpu_peak {
        let which = if u.gpus.is_empty() {
            String::new()
        } else {
            format!(" ({})", u.gpus.join(", "))
        };
        parts.push(format!("GPU peak {g:.0}%{which}"));
    }
    if let Some(m) = u.gpu_mem_peak {
        parts.push(format!("GPU memory peak {}", bytes(m)));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn table_rows(groups: &[Group<'_>], now: f64) -> Vec<[String; 6]> {
    groups
        .iter()
        .map(|g| {
            let i = g.first();
            [
                i.exp_id.clone(),
                run_no(i),
                state(i),
                runtime(i, now),
                g.metrics(),
                g.reasons(),
            ]
        })
        .collect()
}

const HEADER: [&str; 6] = ["id", "run", "state", "runtime", "metrics", "reason"];

/// What a run's block below the table shows: its resource peaks, where it ran, the last lines
/// of stderr.
struct Block {
    title: String,
    peaks: Option<String>,
    place: Option<String>,
    tail: Vec<String>,
}

fn block(g: &Group<'_>) -> Option<Block> {
    let run = g.run()?;
    let tail = tail_of(g);
    let peaks = peaks(run);
    if tail.is_empty() && peaks.is_none() {
        return None;
    }
    Some(Block {
        title: format!("{} (run {})", g.first().exp_id, run.run_no),
        peaks,
        place: run
            .node
            .as_ref()
            .map(|node| format!("on {node} ({})", run.cluster)),
        tail,
    })
}

/// The plain-text body.
pub fn text(items: &[Item], origin: &Origin, now: f64) -> String {
    let groups = groups(items);
    let rows = table_rows(&groups, now);
    let mut widths = HEADER.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()).take(5) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (n, c) in cells.iter().enumerate() {
            if n < 5 {
                let _ = write!(s, "{c:<w$}  ", w = widths[n]);
            } else {
                s.push_str(c);
            }
        }
        s.trim_end().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", counts_sentence(items));
    out.push_str(&line(HEADER));
    out.push('\n');
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
        out.push('\n');
    }
    for b in groups.iter().filter_map(block) {
        let _ = writeln!(out, "\n{}:", b.title);
        if let Some(p) = &b.peaks {
            let _ = writeln!(out, "  {p}");
        }
        if let Some(p) = &b.place {
            let _ = writeln!(out, "  {p}");
        }
        if !b.tail.is_empty() {
            let _ = writeln!(out, "  last lines of stderr:");
            for l in &b.tail {
                let _ = writeln!(out, "    {l}");
            }
        }
    }
    let _ = write!(
        out,
        "\n-- \nneronet on {}, project {}\n",
        origin.host, origin.project_dir
    );
    out
}

fn counts_sentence(items: &[Item]) -> String {
    format!("Runs: {}.", counts(items))
}

/// Consecutive identical lines as one: a progress bar's 8 copies read `80%|#### | 4/5 (×8)`.
pub fn collapse(lines: &[String]) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for l in lines {
        match out.last_mut() {
            Some((last, n)) if last == l => *n += 1,
            _ => out.push((l.clone(), 1)),
        }
    }
    out.into_iter()
        .map(|(l, n)| if n > 1 { format!("{l} (×{n})") } else { l })
        .collect()
}

/// The last lines of stderr shown for a run that crashed (or was stopped, or lost), repeats
/// collapsed.
fn tail_of(g: &Group<'_>) -> Vec<String> {
    let Some(run) = g.run() else { return vec![] };
    if !g.items.iter().any(|i| {
        matches!(
            i.kind,
            Kind::Crashed | Kind::Rule | Kind::Timeout | Kind::Lost
        )
    }) {
        return vec![];
    }
    let t = collapse(&run.stderr_tail);
    t[t.len().saturating_sub(STDERR_LINES)..].to_vec()
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML alternative: the same table and details as the text, every value escaped.
pub fn html(items: &[Item], origin: &Origin, now: f64) -> String {
    let groups = groups(items);
    let rows = table_rows(&groups, now);
    let mut out = String::from("<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif\">\n");
    let _ = writeln!(out, "<p>{}</p>", escape(&counts_sentence(items)));
    out.push_str("<table cellpadding=\"4\" style=\"border-collapse: collapse\">\n<tr>");
    for h in HEADER {
        let _ = write!(out, "<th align=\"left\">{h}</th>");
    }
    out.push_str("</tr>\n");
    for r in &rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{}</td>", escape(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    for b in groups.iter().filter_map(block) {
        let _ = writeln!(out, "<h4>{}</h4>", escape(&b.title));
        if let Some(p) = &b.peaks {
            let _ = writeln!(out, "<p>{}</p>", escape(p));
        }
        if let Some(p) = &b.place {
            let _ = writeln!(out, "<p>{}</p>", escape(p));
        }
        if !b.tail.is_empty() {
            out.push_str("<p>last lines of stderr:</p>\n<pre>");
            for l in &b.tail {
                out.push_str(&escape(l));
                out.push('\n');
            }
            out.push_str("</pre>\n");
        }
    }
    let _ = writeln!(
        out,
        "<p style=\"color: gray\">neronet on {}, project {}</p>\n</body></html>",
        escape(&origin.host),
        escape(&origin.project_dir)
    );
    out
}

/// The chat form: one line per run, the id marked so that it does not read as a count
/// (`#12 (run 1): crashed after 3s: ValueError: boom (exit code 1)`). A chat service with a
/// length limit cuts at whole lines and reads the ids back from the `#`.
pub fn short(items: &[Item], now: f64) -> String {
    let mut out = String::new();
    for g in groups(items) {
        let i = g.first();
        let mut l = format!("#{}", i.exp_id);
        if let Some(r) = g.run() {
            let _ = write!(l, " (run {})", r.run_no);
        }
        let phrases: Vec<&str> = g.kinds().iter().map(|k| k.phrase()).collect();
        let _ = write!(l, ": {}", phrases.join(", "));
        let rt = runtime(i, now);
        if rt != "-" {
            let _ = write!(l, " after {rt}");
        }
        let m = g.metrics();
        if !m.is_empty() {
            let _ = write!(l, " [{m}]");
        }
        let reasons: Vec<String> = g
            .items
            .iter()
            .map(|i| reason(i))
            .filter(|r| !r.is_empty())
            .fold(Vec::new(), |mut v, r| {
                if !v.contains(&r) {
                    v.push(r);
                }
                v
            });
        if !reasons.is_empty() {
            let _ = write!(l, ": {}", reasons.join("; "));
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RunState;

    fn run(id: &str, state: RunState) -> RunRow {
        RunRow {
            uid: format!("{id}.1"),
            exp_id: id.into(),
            run_no: 1,
            cluster: "local".into(),
            state,
            job_id: None,
            node: Some("node1".into()),
            run_dir: None,
            submitted_at: Some(0.0),
            started_at: Some(10.0),
            finished_at: Some(70.0),
            exit_code: Some(3),
            params: Default::default(),
            cpu_percent: None,
            rss_bytes: None,
            abort_sent: false,
            updated_at: 70.0,
            usage: crate::store::Usage {
                cpu_peak: Some(99.0),
                rss_peak: Some(3 * 1024 * 1024 * 1024 / 2),
                ..Default::default()
            },
            output_at: None,
            stderr_tail: vec!["Traceback".into(), "ValueError: <boom> & more".into()],
            fired: None,
        }
    }

    #[test]
    fn a_crash_and_finishes() {
        let crashed = RunState::Crashed {
            at: 70.0,
            started_at: Some(10.0),
            exit_code: Some(3),
            signal: None,
            reason: "ValueError: <boom> & more (exit code 3)".into(),
        };
        let fin = RunState::Finished {
            at: 70.0,
            started_at: Some(10.0),
        };
        let items = vec![
            Item {
                kind: Kind::Finished,
                exp_id: "10".into(),
                detail: None,
                run: Some(run("10", fin.clone())),
                metrics: vec![("loss".into(), 0.25)],
            },
            Item {
                kind: Kind::Crashed,
                exp_id: "7".into(),
                detail: None,
                run: Some(run("7", crashed)),
                metrics: vec![],
            },
            Item {
                kind: Kind::Finished,
                exp_id: "9".into(),
                detail: None,
                run: Some(run("9", fin)),
                metrics: vec![],
            },
        ];
        let origin = Origin {
            project: "mnist".into(),
            project_dir: "/home/u/mnist".into(),
            host: "box".into(),
        };
        assert_eq!(
            subject(&items, &origin),
            "[neronet] 1 crashed, 2 finished — mnist"
        );
        let t = text(&items, &origin, 100.0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].starts_with("id  run  state"), "{t}");
        assert!(lines[3].starts_with("7   1    crashed   1m"), "{t}");
        assert!(
            lines[3].ends_with("ValueError: <boom> & more (exit code 3)"),
            "{t}"
        );
        assert!(lines[4].starts_with("9 "), "numeric order: {t}");
        assert!(t.contains("loss=0.25"), "{t}");
        assert!(t.contains("    ValueError: <boom> & more\n"), "{t}");
        assert!(t.contains("RSS peak 1.5 GiB"), "{t}");
        assert!(t.contains("neronet on box, project /home/u/mnist"), "{t}");
        let h = html(&items, &origin, 100.0);
        assert!(h.contains("ValueError: &lt;boom&gt; &amp; more"), "{h}");
        assert!(!h.contains("<boom>"), "{h}");
        let s = short(&items, 100.0);
        assert_eq!(
            s.lines().next(),
            Some("#7 (run 1): crashed after 1m 00s: ValueError: <boom> & more (exit code 3)")
        );
        assert_eq!(s.lines().count(), 3);
    }

    fn origin() -> Origin {
        Origin {
            project: "p".into(),
            project_dir: "/d".into(),
            host: "h".into(),
        }
    }

    fn item(kind: Kind, id: &str, detail: Option<&str>, state: RunState) -> Item {
        Item {
            kind,
            exp_id: id.into(),
            detail: detail.map(str::to_string),
            run: Some(run(id, state)),
            metrics: vec![("acc".into(), 0.6)],
        }
    }

    #[test]
    fn a_run_with_several_alerts_shows_once() {
        let fin = RunState::Finished {
            at: 70.0,
            started_at: Some(10.0),
        };
        let crashed = RunState::Crashed {
            at: 70.0,
            started_at: Some(10.0),
            exit_code: Some(3),
            signal: None,
            reason: "boom (exit code 3)".into(),
        };
        let items = vec![
            item(
                Kind::When,
                "15",
                Some("when epoch>=6 && acc>0.55"),
                fin.clone(),
            ),
            item(Kind::Finished, "15", None, fin.clone()),
            item(
                Kind::Stalled,
                "3",
                Some("no output for 5m"),
                crashed.clone(),
            ),
            item(Kind::Crashed, "3", None, crashed),
            item(
                Kind::Queued,
                "16",
                Some("waiting for 1h to start"),
                fin.clone(),
            ),
            item(Kind::Finished, "16", None, fin),
        ];
        assert_eq!(
            subject(&items, &origin()),
            "[neronet] 1 crashed, 1 stalled, 1 queued too long, 1 matched a rule, 2 finished — p"
        );
        let t = text(&items, &origin(), 100.0);
        let rows: Vec<&str> = t.lines().skip(3).take_while(|l| !l.is_empty()).collect();
        assert_eq!(rows.len(), 3, "{t}");
        assert!(rows[0].starts_with("3   1    crashed"), "{t}");
        assert!(
            rows[0].ends_with("crashed: boom (exit code 3); stalled no output for 5m"),
            "{t}"
        );
        // Runs in the order of their first kind: queued before a matched rule.
        assert!(
            rows[1].ends_with("queued waiting for 1h to start; finished"),
            "{t}"
        );
        assert!(rows[2].starts_with("15  1    finished"), "{t}");
        assert!(
            rows[2].ends_with("when epoch>=6 && acc>0.55; finished"),
            "{t}"
        );
        assert_eq!(t.matches("\n15 (run 1):").count(), 1, "{t}");
        assert_eq!(t.matches("\n3 (run 1):").count(), 1, "{t}");
        assert_eq!(t.matches("last lines of stderr:").count(), 1, "{t}");
        let h = html(&items, &origin(), 100.0);
        assert_eq!(h.matches("<tr>").count(), 4, "{h}");
        assert_eq!(h.matches("<h4>15 (run 1)</h4>").count(), 1, "{h}");
        assert!(
            h.contains("when epoch&gt;=6 &amp;&amp; acc&gt;0.55; finished"),
            "{h}"
        );
        let s = short(&items, 100.0);
        assert_eq!(s.lines().count(), 3, "{s}");
        assert_eq!(
            s.lines().nth(2),
            Some("#15 (run 1): matched a rule, finished after 1m 00s [acc=0.6]: when epoch>=6 && acc>0.55")
        );
    }

    #[test]
    fn the_html_says_what_the_text_says() {
        let crashed = RunState::Crashed {
            at: 70.0,
            started_at: Some(10.0),
            exit_code: Some(3),
            signal: None,
            reason: "boom".into(),
        };
        let mut it = item(Kind::Crashed, "1", None, crashed);
        if let Some(r) = it.run.as_mut() {
            r.node = Some("vm<1>".into());
        }
        let items = vec![it];
        let t = text(&items, &origin(), 100.0);
        assert!(
            t.contains("  on vm<1> (local)\n  last lines of stderr:\n"),
            "{t}"
        );
        let h = html(&items, &origin(), 100.0);
        assert!(
            h.contains(
                "<p>on vm&lt;1&gt; (local)</p>\n<p>last lines of stderr:</p>\n<pre>Traceback\n"
            ),
            "{h}"
        );
    }

    #[test]
    fn repeated_stderr_lines_collapse() {
        let crashed = RunState::Crashed {
            at: 70.0,
            started_at: Some(10.0),
            exit_code: Some(1),
            signal: None,
            reason: "boom".into(),
        };
        let mut it = item(Kind::Crashed, "1", None, crashed);
        let bar = "80%|#### | 4/5";
        let mut tail: Vec<String> = vec!["start".into()];
        tail.extend(std::iter::repeat_n(bar.to_string(), 8));
        tail.extend(["Traceback".into(), "ValueError: boom".into()]);
        if let Some(r) = it.run.as_mut() {
            r.stderr_tail = tail;
        }
        let t = text(&[it], &origin(), 100.0);
        assert!(
            t.contains("    start\n    80%|#### | 4/5 (×8)\n    Traceback\n    ValueError: boom\n"),
            "{t}"
        );
        assert_eq!(
            collapse(&["a".into(), "a".into(), "b".into(), "a".into()]),
            ["a (×2)", "b", "a"]
        );
    }
}
