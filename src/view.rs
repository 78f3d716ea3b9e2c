//! What the user sees of the project: one view per experiment (latest run, parameters, last
//! metrics), turned into the results workbook, the `status` table, or `status --json`.

use crate::project::{CoreError, Experiments, Project};
use crate::select::Candidate;
use crate::sheet::read::StatusCommand;
use crate::sheet::results::{HistoryRow, ProblemRow, ResultRow, Results, Value};
use nerokid::expr::{format_number, Expr};
use serde_json::json;
use std::collections::BTreeMap;

const HISTORY_LIMIT: usize = 1_100_000;

/// `step`, `epoch`, ...: the x axis of the other metrics.
fn is_step_like(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "step" | "epoch" | "iter" | "iteration"
    )
}

/// Metric names in a useful order: step-like first, then alphabetical.
fn order_metrics(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = names.collect();
    v.sort();
    v.dedup();
    let key = |n: &String| (!is_step_like(n), n.to_ascii_lowercase());
    v.sort_by(|a, b| key(a).cmp(&key(b)).then(a.cmp(b)));
    v
}

/// Which metrics the `status` table shows as columns.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricColumns {
    /// At most this many, the most useful first: those the selection names, those the rules
    /// (`abort_when`) name, step-like ones, then the most common (`loss` and `acc` before other
    /// names as common).
    Auto(usize),
    /// These, in this order (matched case-insensitively; `--metrics` or `status_metrics:`).
    Named(Vec<String>),
    /// Every metric.
    All,
}

/// Choose up to `max` of the candidates' metrics (see [`MetricColumns::Auto`]); step-like
/// ones are shown first. Returns the chosen names and how many were left out.
fn choose_metrics(cands: &[Candidate<'_>], sel: Option<&Expr>, max: usize) -> (Vec<String>, usize) {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for m in cands.iter().filter_map(|c| c.metrics) {
        for name in m.keys() {
            *count.entry(name).or_default() += 1;
        }
    }
    let fields = |e: &Expr| -> Vec<String> {
        e.comparisons()
            .iter()
            .map(|c| c.field.to_ascii_lowercase())
            .collect()
    };
    let by_selection: Vec<String> = sel.map(fields).unwrap_or_default();
    let mut by_rule: Vec<String> = Vec::new();
    let mut rules_seen = std::collections::HashSet::new();
    for rule in cands.iter().filter_map(|c| c.exp.abort_when.as_deref()) {
        // A sweep repeats one rule on every row: parse each once.
        if rules_seen.insert(rule) {
            if let Ok(e) = nerokid::expr::parse(rule) {
                by_rule.extend(fields(&e));
            }
        }
    }
    let tier = |name: &str| {
        let lower = name.to_ascii_lowercase();
        if by_selection.contains(&lower) {
            0
        } else if by_rule.contains(&lower) {
            1
        } else if is_step_like(name) {
            2
        } else {
            3
        }
    };
    let familiar = |name: &str| {
        let lower = name.to_ascii_lowercase();
        if lower.contains("loss") {
            0
        } else if lower.contains("acc") {
            1
        } else {
            2
        }
    };
    let mut names: Vec<(&str, usize)> = count.into_iter().collect();
    names.sort_by_key(|(name, n)| {
        (
            tier(name),
            std::cmp::Reverse(*n),
            familiar(name),
            name.to_ascii_lowercase(),
        )
    });
    let hidden = names.len().saturating_sub(max);
    let mut chosen: Vec<String> = names
        .into_iter()
        .take(max)
        .map(|(n, _)| n.to_string())
        .collect();
    chosen.sort_by_key(|n| !is_step_like(n));
    (chosen, hidden)
}

/// The metric named `wanted` as the candidates spell it (an exact match first), else as given.
fn spelled(cands: &[Candidate<'_>], wanted: &str) -> String {
    let names = || {
        cands
            .iter()
            .filter_map(|c| c.metrics)
            .flat_map(|m| m.keys())
    };
    names()
        .find(|n| *n == wanted)
        .or_else(|| names().find(|n| n.eq_ignore_ascii_case(wanted)))
        .cloned()
        .unwrap_or_else(|| wanted.to_string())
}

pub struct Snapshot {
    pub latest: BTreeMap<String, crate::store::RunRow>,
    pub metrics: BTreeMap<String, BTreeMap<String, f64>>,
    pub seen: BTreeMap<String, crate::store::ExperimentRow>,
}

impl Snapshot {
    pub fn take(project: &Project) -> Result<Snapshot, CoreError> {
        Ok(Snapshot {
            latest: project.store.latest_runs()?,
            metrics: project.store.last_metrics()?,
            seen: project.store.experiments()?,
        })
    }

    pub fn candidates<'a>(
        &'a self,
        exps: &'a Experiments,
        sel: Option<&Expr>,
    ) -> Vec<Candidate<'a>> {
        crate::actions::select(exps, &self.latest, &self.metrics, &self.seen, sel)
    }

    fn metric_names(&self, cands: &[Candidate<'_>]) -> Vec<String> {
        order_metrics(
            cands
                .iter()
                .filter_map(|c| c.metrics)
                .flat_map(|m| m.keys().cloned()),
        )
    }
}

/// Build the results workbook content.
pub fn results(project: &Project, exps: &Experiments) -> Result<Results, CoreError> {
    let snap = Snapshot::take(project)?;
    let cands = snap.candidates(exps, None);
    let metric_names = snap.metric_names(&cands);
    let mut out = Results {
        params: exps.sheet.params.clone(),
        metrics: metric_headers(&metric_names, &exps.sheet.params),
        ..Results::default()
    };
    for c in &cands {
        let run = c.run;
        out.rows.push(ResultRow {
            id: shown_id(c),
            state: state_label(c),
            cluster: c.exp.cluster.clone(),
            run: run.map(|r| r.run_no),
            job_id: run.and_then(|r| r.job_id.clone()),
            node: run.and_then(|r| r.node.clone()),
            submitted: run.and_then(|r| r.submitted_at),
            started: run.and_then(|r| r.started_at),
            finished: run.and_then(|r| r.finished_at),
            runtime: c.runtime(),
            exit_code: run.and_then(|r| r.exit_code),
            reason: note(c),
            usage: run.map(|r| r.usage.clone()).unwrap_or_default(),
            params: exps
                .sheet
                .params
                .iter()
                .map(|p| {
                    c.exp.row.params.get(p).map(|v| match v.number {
                        // A duration cell (`36:00:00`) is a number of seconds shown with colons
                        // (no plain number has one): it stays a duration in results.xlsx.
                        Some(n) if v.text.contains(':') => Value::Duration(n),
                        Some(n) => Value::Num(n),
                        None => Value::Text(v.text.clone()),
                    })
                })
                .collect(),
            metrics: metric_names
                .iter()
                .map(|m| c.metrics.and_then(|ms| ms.get(m)).copied())
                .collect(),
            updated: run.map(|r| r.updated_at),
        });
    }
    // Every run of every experiment in the workbook, in workbook order, oldest run first.
    let order: BTreeMap<&str, usize> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| (c.exp.row.id.as_str(), i))
        .collect();
    let mut runs: Vec<(String, String, i64)> = project
        .store
        .all_runs()?
        .into_iter()
        .filter(|(_, exp, _)| order.contains_key(exp.as_str()))
        .collect();
    runs.sort_by_key(|(_, exp, n)| (order[exp.as_str()], *n));
    let uids: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    let by_uid: BTreeMap<&str, (&str, i64)> = runs
        .iter()
        .map(|(u, e, n)| (u.as_str(), (e.as_str(), *n)))
        .collect();
    for m in project.store.history(&uids, HISTORY_LIMIT)? {
        let (id, run) = by_uid.get(m.run.as_str()).copied().unwrap_or(("?", 0));
        out.history.push(HistoryRow {
            id: id.to_string(),
            run,
            t: m.t,
            step: m.step,
            metric: m.name,
            value: m.value,
        });
    }
    out.problems = exps
        .problems()
        .map(|p| ProblemRow {
            place: p.cell.clone(),
            id: p.id.clone(),
            message: p.message.clone(),
        })
        .collect();
    Ok(out)
}

/// Write results.xlsx next to the workbook.
pub fn write_results(
    project: &Project,
    exps: &Experiments,
) -> Result<std::path::PathBuf, CoreError> {
    write_results_noting(project, exps, Vec::new())
}

/// [`write_results`] with more lines for its `problems` sheet (the watcher's notes).
pub fn write_results_noting(
    project: &Project,
    exps: &Experiments,
    notes: Vec<ProblemRow>,
) -> Result<std::path::PathBuf, CoreError> {
    let mut r = results(project, exps)?;
    r.problems.extend(notes);
    let path = project.results_path();
    crate::sheet::results::write(&path, &r)?;
    Ok(path)
}

/// A whole number as a JSON integer (`16`, not `16.0`), anything else as it is.
/// A metric value in JSON, which has no NaN or infinity: those as `"nan"`, `"inf"`, `"-inf"`.
pub fn json_metric(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string().to_ascii_lowercase())
    }
}

pub fn json_number(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 9e15 {
        json!(n as i64)
    } else {
        json!(n)
    }
}

/// Column titles for metrics; one named like a parameter or a fixed column says it is a metric
/// (`lr (metric)`), so no title appears twice. Selections see the metric under the bare name.
fn metric_headers(metrics: &[String], params: &[String]) -> Vec<String> {
    const FIXED: &[&str] = &[
        "id",
        "state",
        "cluster",
        "run",
        "runtime",
        "node",
        "reason",
        "note",
        "exit code",
    ];
    metrics
        .iter()
        .map(|m| {
            let taken = params.iter().any(|p| p.eq_ignore_ascii_case(m))
                || FIXED.iter().any(|f| f.eq_ignore_ascii_case(m));
            if taken {
                format!("{m} (metric)")
            } else {
                m.clone()
            }
        })
        .collect()
}

/// The id, or where the row is when it has none (an invalid row still shows).
fn shown_id(c: &Candidate<'_>) -> String {
    if c.exp.row.id.is_empty() {
        format!("(row {})", c.exp.row.row)
    } else {
        c.exp.row.id.clone()
    }
}

/// What to tell about an experiment beside its state: why it has no row of its own, the run's
/// reason, else the row's problems.
fn note(c: &Candidate<'_>) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    parts.extend(c.exp.detached().map(String::from));
    match c.run.and_then(|r| r.state.reason()) {
        Some(reason) => parts.push(reason),
        None => parts.extend(c.exp.problems.iter().map(|p| p.to_string())),
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The state for people (the table and the results sheet): `invalid` for a row that cannot run,
/// `(hold)` for one held back.
fn state_label(c: &Candidate<'_>) -> String {
    let s = c.state_name().to_string();
    if !c.exp.is_valid() && c.run.is_none() {
        "invalid".into()
    } else if c.exp.row.status.is(StatusCommand::Hold) && c.run.is_none() {
        format!("{s} (hold)")
    } else {
        s
    }
}

/// `status --json`: one object per experiment.
pub fn status_json(
    project: &Project,
    exps: &Experiments,
    sel: Option<&Expr>,
) -> Result<serde_json::Value, CoreError> {
    let snap = Snapshot::take(project)?;
    let items: Vec<serde_json::Value> = snap
        .candidates(exps, sel)
        .iter()
        .map(|c| {
            let params: BTreeMap<&String, serde_json::Value> = c
                .exp
                .row
                .params
                .iter()
                .map(|(k, v)| (k, v.number.map_or_else(|| json!(v.text), json_number)))
                .collect();
            let metrics: BTreeMap<&String, serde_json::Value> = c
                .metrics
                .map(|m| m.iter().map(|(k, v)| (k, json_metric(*v))).collect())
                .unwrap_or_default();
            json!({
                "id": c.exp.row.id,
                "row": c.exp.detached().is_none().then_some(c.exp.row.row),
                // SPEC §4's names only; a hold and a row's problems are fields of their own.
                "state": c.state_name(),
                "hold": c.exp.row.status.is(StatusCommand::Hold),
                "detached": c.exp.detached(),
                "cluster": c.exp.cluster,
                "runtime": c.runtime(),
                "run": c.run.map(|r| r.run_no),
                "exit_code": c.run.and_then(|r| r.exit_code),
                "reason": c.run.and_then(|r| r.state.reason()),
                "problems": c.exp.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "params": params,
                "metrics": metrics,
                "run_dir": c.run.and_then(|r| r.run_dir.clone()),
                "node": c.run.and_then(|r| r.node.clone()),
                "job_id": c.run.and_then(|r| r.job_id.clone()),
                "cpu_percent": c.run.and_then(|r| r.cpu_percent),
                "rss_bytes": c.run.and_then(|r| r.rss_bytes),
                // Peaks and means over the run's samples (GPU ones for the GPUs it used).
                "resources": c.run.map(|r| &r.usage),
            })
        })
        .collect();
    Ok(serde_json::Value::Array(items))
}

/// A readable table of the selected experiments, with the metric columns of the config's
/// `status_metrics`, else at most `max_metrics` chosen ones.
pub fn status_table(
    project: &Project,
    exps: &Experiments,
    sel: Option<&Expr>,
    max_metrics: usize,
) -> Result<String, CoreError> {
    let columns = match &project.config.status_metrics {
        Some(names) => MetricColumns::Named(names.clone()),
        None => MetricColumns::Auto(max_metrics),
    };
    status_table_with(project, exps, sel, &columns)
}

/// A readable table of the selected experiments with these metric columns.
pub fn status_table_with(
    project: &Project,
    exps: &Experiments,
    sel: Option<&Expr>,
    columns: &MetricColumns,
) -> Result<String, CoreError> {
    let snap = Snapshot::take(project)?;
    let cands = snap.candidates(exps, sel);
    let (metric_names, hidden) = match columns {
        MetricColumns::Auto(max) => choose_metrics(&cands, sel, *max),
        MetricColumns::Named(names) => (names.iter().map(|n| spelled(&cands, n)).collect(), 0),
        MetricColumns::All => (snap.metric_names(&cands), 0),
    };
    let mut header: Vec<String> = ["id", "state", "cluster", "runtime"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // A scheduler's job id and node say where to look (`scontrol show job`, the node's logs).
    let scheduled = cands.iter().any(|c| {
        project
            .config
            .clusters
            .get(&c.exp.cluster)
            .is_some_and(|k| k.warden() != crate::config::Warden::Local)
    });
    if scheduled {
        header.extend(["job".to_string(), "node".to_string()]);
    }
    header.extend(exps.sheet.params.iter().cloned());
    header.extend(metric_headers(&metric_names, &exps.sheet.params));
    header.push("note".into());
    let mut rows: Vec<Vec<String>> = Vec::new();
    for c in &cands {
        let mut row = vec![
            shown_id(c),
            state_label(c),
            c.exp.cluster.clone(),
            c.runtime()
                .map(crate::util::human_duration)
                .unwrap_or_default(),
        ];
        if scheduled {
            row.push(c.run.and_then(|r| r.job_id.clone()).unwrap_or_default());
            row.push(c.run.and_then(|r| r.node.clone()).unwrap_or_default());
        }
        for p in &exps.sheet.params {
            row.push(
                c.exp
                    .row
                    .params
                    .get(p)
                    .map(|v| v.text.clone())
                    .unwrap_or_default(),
            );
        }
        for m in &metric_names {
            row.push(
                c.metrics
                    .and_then(|ms| ms.get(m))
                    .map(|v| short_number(*v))
                    .unwrap_or_default(),
            );
        }
        row.push(note(c).unwrap_or_default());
        rows.push(row);
    }
    let mut table = render_table(&header, &rows);
    if hidden > 0 {
        table.push_str(&format!(
            "({hidden} more metric{} not shown: `neroman status --metrics all` or `--metrics NAME,...`, `--json`, results.xlsx)\n",
            if hidden == 1 { "" } else { "s" }
        ));
    }
    Ok(table)
}

/// Four significant digits, without trailing zeros: `0.6208`, `12.35`, `1.5e-5`.
fn short_number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string().to_ascii_lowercase();
    }
    if v.fract() == 0.0 && v.abs() < 1e9 {
        return format_number(v);
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-4..9).contains(&magnitude) {
        return format!("{v:.3e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A value as one line of a table: a line break shows as `⏎`, a tab as a space, other control
/// characters (an escape sequence would recolour the terminal) as their visible symbols.
fn one_line(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' | '\u{2028}' | '\u{2029}' => out.push('⏎'),
            '\t' => out.push(' '),
            // U+2400.. are the "control pictures" of C0 characters: ␛ for ESC.
            c if (c as u32) < 0x20 => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('�')),
            '\u{7f}' => out.push('␡'),
            c if c.is_control() => out.push('�'),
            c => out.push(c),
        }
    }
    out
}

/// Columns a text takes on a terminal (CJK characters take two, combining marks none).
fn display_width(s: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(s)
}

/// At most `limit` columns of `s`; a cut value ends in `…`.
fn fit_width(s: String, limit: usize) -> String {
    if display_width(&s) <= limit {
        return s;
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w > limit.saturating_sub(1) {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// Columns aligned by display width, every cell on one line; the last column (the note) is not
/// padded. Cells are cut at 60 columns (the last at 200).
pub fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let fitted = |cells: &[String]| -> Vec<String> {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| fit_width(one_line(c), if i == last { 200 } else { 60 }))
            .collect()
    };
    let header = fitted(header);
    let rows: Vec<Vec<String>> = rows.iter().map(|r| fitted(r)).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| display_width(h)).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(display_width(c));
        }
    }
    let mut out = String::new();
    for cells in std::iter::once(&header).chain(&rows) {
        let last = cells.len().saturating_sub(1);
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            line.push_str(c);
            if i != last {
                let pad = widths[i] - display_width(c) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{render_table, short_number};

    /// Regression: a newline inside a value broke the status table over two lines, a tab pushed
    /// the columns after it aside, and CJK characters (two columns wide each) misaligned it.
    #[test]
    fn table_cells_stay_on_one_line_and_columns_align() {
        let header: Vec<String> = ["id", "name", "lr", "note"].map(String::from).to_vec();
        let rows: Vec<Vec<String>> = [
            ["1", "two\nlines", "0.1", "a"],
            ["2", "tab\there", "0.2", "b"],
            ["3", "学習率テスト", "0.3", "c"],
            ["4", "plain", "0.4", "line one\r\nline two"],
            ["5", "\u{1b}[31mred", "0.5", "d"],
        ]
        .iter()
        .map(|r| r.map(String::from).to_vec())
        .collect();
        let table = render_table(&header, &rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 6, "one line per row:\n{table}");
        assert!(lines[1].contains("two⏎lines"), "{table}");
        assert!(lines[4].ends_with("line one⏎line two"), "{table}");
        assert!(
            !table.contains('\t') && !table.contains('\u{1b}'),
            "{table:?}"
        );
        // The `lr` column starts at the same display column on every line.
        let lr_at = |line: &str| {
            let i = line
                .find(" 0.")
                .unwrap_or_else(|| line.find("lr").unwrap() - 1);
            unicode_width::UnicodeWidthStr::width(&line[..i])
        };
        let at = lr_at(lines[0]);
        for l in &lines[1..] {
            assert_eq!(lr_at(l), at, "misaligned:\n{table}");
        }
    }

    /// Regression: small values showed as 0 (four fixed decimals).
    #[test]
    fn short_numbers_keep_small_values() {
        assert_eq!(short_number(0.00001), "1.000e-5");
        assert_eq!(short_number(-0.00002), "-2.000e-5");
        assert_eq!(short_number(0.62081), "0.6208");
        assert_eq!(short_number(0.0003), "0.0003");
        assert_eq!(short_number(12.3456), "12.35");
        assert_eq!(short_number(30.0), "30");
        assert_eq!(short_number(1234.5678), "1235");
    }
}
