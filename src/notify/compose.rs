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

/// `3 crashed, 12 finished`, kinds in [`Kind::ALL`] order.
pub fn counts(items: &[Item]) -> String {
    Kind::ALL
        .iter()
        .filter_map(|k| {
            let n = items.iter().filter(|i| i.kind == *k).count();
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
fn natural(id: &str) -> (u8, i64, String) {
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

fn table_rows(items: &[&Item], now: f64) -> Vec<[String; 6]> {
    items
        .iter()
        .map(|i| {
            [
                i.exp_id.clone(),
                run_no(i),
                if matches!(i.kind, Kind::Stalled | Kind::Queued | Kind::When) {
                    format!("{} ({})", state(i), i.kind.as_str())
                } else {
                    state(i)
                },
                runtime(i, now),
                metrics(i),
                reason(i),
            ]
        })
        .collect()
}

const HEADER: [&str; 6] = ["id", "run", "state", "runtime", "metrics", "reason"];

/// The plain-text body.
pub fn text(items: &[Item], origin: &Origin, now: f64) -> String {
    let items = sorted(items);
    let rows = table_rows(&items, now);
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
    let _ = writeln!(out, "{}\n", counts_sentence(&items));
    out.push_str(&line(HEADER));
    out.push('\n');
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
        out.push('\n');
    }
    for i in &items {
        let Some(run) = &i.run else { continue };
        let tail = tail_of(i);
        let peaks = peaks(run);
        if tail.is_empty() && peaks.is_none() {
            continue;
        }
        let _ = writeln!(out, "\n{} (run {}):", i.exp_id, run.run_no);
        if let Some(p) = peaks {
            let _ = writeln!(out, "  {p}");
        }
        if let Some(node) = &run.node {
            let _ = writeln!(out, "  on {node} ({})", run.cluster);
        }
        if !tail.is_empty() {
            let _ = writeln!(out, "  last lines of stderr:");
            for l in tail {
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

fn counts_sentence(items: &[&Item]) -> String {
    let owned: Vec<Item> = items.iter().map(|i| (*i).clone()).collect();
    format!("Runs: {}.", counts(&owned))
}

/// The last lines of stderr shown for a run that crashed (or was stopped, or lost).
fn tail_of(i: &Item) -> &[String] {
    let Some(run) = &i.run else { return &[] };
    if !matches!(
        i.kind,
        Kind::Crashed | Kind::Rule | Kind::Timeout | Kind::Lost
    ) {
        return &[];
    }
    let t = &run.stderr_tail;
    &t[t.len().saturating_sub(STDERR_LINES)..]
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

/// The HTML alternative: the same table and details, every value escaped.
pub fn html(items: &[Item], origin: &Origin, now: f64) -> String {
    let items = sorted(items);
    let rows = table_rows(&items, now);
    let mut out = String::from("<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif\">\n");
    let _ = writeln!(out, "<p>{}</p>", escape(&counts_sentence(&items)));
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
    for i in &items {
        let Some(run) = &i.run else { continue };
        let tail = tail_of(i);
        let peaks = peaks(run);
        if tail.is_empty() && peaks.is_none() {
            continue;
        }
        let _ = writeln!(out, "<h4>{} (run {})</h4>", escape(&i.exp_id), run.run_no);
        if let Some(p) = peaks {
            let _ = writeln!(out, "<p>{}</p>", escape(&p));
        }
        if !tail.is_empty() {
            out.push_str("<pre>");
            for l in tail {
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

/// The chat form: one line per run (`12 crashed: ValueError: boom (exit code 1)`).
pub fn short(items: &[Item], now: f64) -> String {
    let items = sorted(items);
    let mut out = String::new();
    for i in items {
        let mut l = format!("{} {}", i.exp_id, i.kind.phrase());
        let rt = runtime(i, now);
        if rt != "-" {
            let _ = write!(l, " after {rt}");
        }
        let m = metrics(i);
        if !m.is_empty() {
            let _ = write!(l, " [{m}]");
        }
        let r = reason(i);
        if !r.is_empty() {
            let _ = write!(l, ": {r}");
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
            Some("7 crashed after 1m 00s: ValueError: <boom> & more (exit code 3)")
        );
        assert_eq!(s.lines().count(), 3);
    }
}
