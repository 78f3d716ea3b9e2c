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

/// Metric names in a useful order: step-like first, then alphabetical.
fn order_metrics(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = names.collect();
    v.sort();
    v.dedup();
    let rank = |n: &str| match n.to_ascii_lowercase().as_str() {
        "step" | "epoch" | "iter" | "iteration" => 0,
        _ => 1,
    };
    let key = |n: &String| (rank(n), n.to_ascii_lowercase());
    v.sort_by(|a, b| key(a).cmp(&key(b)).then(a.cmp(b)));
    v
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
            reason: run.and_then(|r| r.state.reason()).or_else(|| {
                (!c.exp.is_valid()).then(|| {
                    c.exp
                        .problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            }),
            params: exps
                .sheet
                .params
                .iter()
                .map(|p| {
                    c.exp.row.params.get(p).map(|v| match v.number {
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
    let r = results(project, exps)?;
    let path = project.results_path();
    crate::sheet::results::write(&path, &r)?;
    Ok(path)
}

/// A whole number as a JSON integer (`16`, not `16.0`), anything else as it is.
fn json_number(n: f64) -> serde_json::Value {
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
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k,
                                if v.is_finite() {
                                    json!(v)
                                } else {
                                    json!(v.to_string().to_ascii_lowercase())
                                },
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "id": c.exp.row.id,
                "row": c.exp.row.row,
                "state": state_label(c),
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
            })
        })
        .collect();
    Ok(serde_json::Value::Array(items))
}

/// A readable table of the selected experiments.
pub fn status_table(
    project: &Project,
    exps: &Experiments,
    sel: Option<&Expr>,
    max_metrics: usize,
) -> Result<String, CoreError> {
    let snap = Snapshot::take(project)?;
    let cands = snap.candidates(exps, sel);
    let all_metrics = snap.metric_names(&cands);
    let hidden = all_metrics.len().saturating_sub(max_metrics);
    let metric_names: Vec<String> = all_metrics.into_iter().take(max_metrics).collect();
    let mut header: Vec<String> = ["id", "state", "cluster", "runtime"]
        .iter()
        .map(|s| s.to_string())
        .collect();
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
        let note = c
            .run
            .and_then(|r| r.state.reason())
            .or_else(|| c.exp.problems.first().map(|p| p.to_string()))
            .unwrap_or_default();
        row.push(note);
        rows.push(row);
    }
    let mut table = render_table(&header, &rows);
    if hidden > 0 {
        table.push_str(&format!(
            "({hidden} more metric{} not shown: see `neroman status --json` or results.xlsx)\n",
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

pub fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count().min(60));
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            let limit = if i == last { 200 } else { 60 };
            // A cut value says so.
            let c: String = if c.chars().count() > limit {
                c.chars().take(limit - 1).chain(['…']).collect()
            } else {
                c.clone()
            };
            if i == last {
                out.push_str(&c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(header, &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::short_number;

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
