//! `neroman show ID [--json]`: one experiment in full (SPEC §6): its row, then every run with its
//! states and their times, command, parameters, reason (with the rule's values when a rule ended
//! it, and the last lines of stderr when it did not finish), run directory and job, the
//! environment the kid found, resource peaks and averages (GPU too), and the last metrics.
//! Read from the state store after a sync, so it works for runs of any cluster and for rows
//! deleted from the workbook.

use super::{exit, open_synced_or_store, output};
use crate::store::RunRow;
use crate::util::human_duration;
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;

pub fn run(dir: &Path, id: &str, json_out: bool) -> anyhow::Result<i32> {
    let (project, exps, sync, _) = open_synced_or_store(dir)?;
    super::refresh_results(&project, &exps, &sync);
    let key = crate::sheet::read::canonical_id(id);
    let exp = exps.get(id);
    let exp_id = match exp {
        Some(e) => e.row.id.clone(),
        None => match project
            .store
            .latest_runs()?
            .into_keys()
            .find(|k| crate::sheet::read::canonical_id(k) == key)
        {
            Some(k) => k,
            None => anyhow::bail!("no experiment has the id {id:?}"),
        },
    };
    let runs = project.store.runs_of(&exp_id)?;
    let now = nerokid::report::now();
    let mut details = Vec::new();
    for r in &runs {
        let (command, env) = project.store.run_command_and_env(&r.uid)?;
        let history = project.store.state_changes(&r.uid)?;
        let metrics = project.store.run_last_metrics(&r.uid)?;
        details.push(RunDetail {
            run: r,
            command,
            env,
            history,
            metrics,
        });
    }
    let row = exp.map(|e| ExpInfo {
        row: e.detached().is_none().then_some(e.row.row),
        cluster: e.cluster.clone(),
        command: e.command.clone(),
        params: e
            .row
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.text.clone()))
            .collect(),
        numbers: e.row.params.values().map(|v| v.number).collect(),
        abort_when: e.abort_when.clone(),
        problems: e.problems.iter().map(|p| p.to_string()).collect(),
    });
    let mut out = std::io::stdout().lock();
    if json_out {
        let v = to_json(&exp_id, row.as_ref(), &details, now);
        output::write_bytes(
            &mut out,
            format!("{}\n", serde_json::to_string_pretty(&v)?).as_bytes(),
        )?;
    } else {
        output::write_bytes(
            &mut out,
            to_text(
                &exp_id,
                row.as_ref(),
                &details,
                now,
                project.config.min_runtime_secs(),
            )
            .as_bytes(),
        )?;
    }
    Ok(exit::OK)
}

struct ExpInfo {
    row: Option<u32>,
    cluster: String,
    command: Option<String>,
    params: Vec<(String, String)>,
    /// Each parameter's number, where it is one.
    numbers: Vec<Option<f64>>,
    /// The auto-termination rule in effect (the row's, else the config's).
    abort_when: Option<String>,
    problems: Vec<String>,
}

struct RunDetail<'a> {
    run: &'a RunRow,
    command: String,
    env: Option<nerokid::report::EnvReport>,
    history: Vec<(String, f64, Option<String>)>,
    metrics: Vec<(String, f64, f64)>,
}

impl RunDetail<'_> {
    fn runtime(&self, now: f64) -> Option<f64> {
        let start = self.run.started_at?;
        Some(self.run.finished_at.unwrap_or(now) - start)
    }
}

/// `2026-11-27 10:02:11 UTC`.
pub fn utc(t: f64) -> String {
    // Rounded to the second, as results.xlsx shows the same instant.
    let secs = t.round() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

use crate::util::human_bytes as bytes;

fn num(v: f64) -> String {
    nerokid::expr::format_number(v)
}

fn to_text(
    id: &str,
    exp: Option<&ExpInfo>,
    runs: &[RunDetail<'_>],
    now: f64,
    min_runtime: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "experiment {id}");
    match exp {
        Some(e) => {
            match e.row {
                Some(r) => {
                    let _ = writeln!(s, "  row          {r} of the workbook");
                }
                None => {
                    let _ = writeln!(s, "  row          (none: deleted or moved)");
                }
            }
            let _ = writeln!(s, "  cluster      {}", e.cluster);
            if let Some(c) = &e.command {
                let _ = writeln!(s, "  command      {c}");
            }
            if !e.params.is_empty() {
                let p: Vec<String> = e.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(s, "  parameters   {}", p.join(", "));
            }
            if let Some(rule) = &e.abort_when {
                let grace = match min_runtime {
                    m if m > 0.0 => format!(" (not before {} of runtime)", human_duration(m)),
                    _ => String::new(),
                };
                let _ = writeln!(s, "  abort_when   {rule}{grace}");
            }
            for p in &e.problems {
                let _ = writeln!(s, "  problem      {p}");
            }
        }
        None => {
            let _ = writeln!(s, "  (not in the workbook any more; its runs are kept)");
        }
    }
    if runs.is_empty() {
        match exp {
            Some(e) if !e.problems.is_empty() => {
                let _ = writeln!(
                    s,
                    "  state        invalid (it cannot run: see the problems above)"
                );
            }
            _ => {
                let _ = writeln!(s, "  state        defined (it has not run yet)");
            }
        }
        return s;
    }
    let _ = writeln!(s, "  runs         {}", runs.len());
    for d in runs.iter().rev() {
        let r = d.run;
        let _ = writeln!(s);
        let runtime = d
            .runtime(now)
            .map(|t| format!(", runtime {}", human_duration(t)))
            .unwrap_or_default();
        let _ = writeln!(s, "run {} — {}{runtime}", r.run_no, r.state.name().as_str());
        if let Some(reason) = r.state.reason() {
            let _ = writeln!(s, "  reason       {reason}");
        }
        if let Some(f) = &r.fired {
            let values: Vec<String> = f
                .values
                .iter()
                .map(|(k, v)| {
                    if k == "runtime" {
                        format!("{k}={}", human_duration(*v))
                    } else {
                        format!("{k}={}", num(*v))
                    }
                })
                .collect();
            // The reason already says the rule and its values when the rule ended the run.
            let said = r.state.reason().is_some_and(|why| why.starts_with("rule "));
            if said {
                let _ = writeln!(s, "  rule fired   at {}", utc(f.t));
            } else {
                let values = if values.is_empty() {
                    String::new()
                } else {
                    format!(": {}", values.join(", "))
                };
                let _ = writeln!(s, "  rule fired   {} at {}{values}", f.rule, utc(f.t));
            }
        }
        let mut place = format!("  cluster      {}", r.cluster);
        if let Some(j) = &r.job_id {
            let _ = write!(place, ", job {j}");
        }
        if let Some(n) = &r.node {
            let _ = write!(place, ", on {n}");
        }
        let _ = writeln!(s, "{place}");
        // What the run was started with, where it differs from the row as it is now.
        if exp.and_then(|e| e.command.as_deref()) != Some(d.command.as_str()) {
            let _ = writeln!(s, "  command      {}", d.command);
        }
        let run_params: Vec<(String, String)> = r
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !r.params.is_empty() && exp.is_none_or(|e| e.params != run_params) {
            let p: Vec<String> = run_params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  parameters   {}", p.join(", "));
        }
        if let Some(dir) = &r.run_dir {
            let _ = writeln!(s, "  run dir      {dir}");
        }
        let _ = writeln!(s, "  states");
        for (state, at, _) in &d.history {
            let _ = writeln!(s, "    {:<10} {}", state, utc(*at));
        }
        let u = &r.usage;
        if u.samples > 0 {
            let mut line = String::from("  resources    ");
            if let Some(p) = u.cpu_peak {
                let _ = write!(line, "CPU peak {p:.0} %");
                if let Some(a) = u.cpu_avg {
                    let _ = write!(line, " (mean {a:.0} %)");
                }
            }
            if let Some(b) = u.rss_peak {
                let _ = write!(line, ", memory peak {}", bytes(b));
            }
            let plural = if u.samples == 1 { "" } else { "s" };
            let _ = write!(line, " — {} sample{plural}", u.samples);
            let _ = writeln!(s, "{line}");
        }
        if !u.gpus.is_empty() || u.gpu_peak.is_some() {
            let mut line = format!("  gpu          {}", u.gpus.join("; "));
            if let Some(p) = u.gpu_peak {
                let _ = write!(line, ": utilisation peak {p:.0} %");
                if let Some(a) = u.gpu_avg {
                    let _ = write!(line, " (mean {a:.0} %)");
                }
            }
            if let Some(m) = u.gpu_mem_peak {
                let _ = write!(line, ", memory peak {}", bytes(m));
            }
            let _ = writeln!(s, "{line}");
        } else if u.samples > 0 {
            let _ = writeln!(s, "  gpu          none used");
        } else if r.started_at.is_some() {
            let _ = writeln!(
                s,
                "  resources    no sample yet (the kid samples every 5 s, the first after 1 s)"
            );
        }
        if !d.metrics.is_empty() {
            let m: Vec<String> = d
                .metrics
                .iter()
                .map(|(k, v, _)| format!("{k}={}", num(*v)))
                .collect();
            let _ = writeln!(s, "  last metrics {}", m.join(", "));
        }
        if let Some(e) = &d.env {
            let mut line = format!(
                "  environment  {} ({} CPUs, {} memory), user {}",
                e.host,
                e.cpus,
                bytes(e.mem_total_bytes as i64),
                e.user
            );
            if let Some(c) = &e.git_commit {
                let _ = write!(line, ", git {}", &c[..c.len().min(12)]);
            }
            let _ = write!(line, ", nerokid {}", e.kid_version);
            let _ = writeln!(s, "{line}");
            for g in &e.gpus {
                let _ = writeln!(s, "    gpu        {g}");
            }
            let _ = writeln!(s, "    cwd        {}", e.cwd);
            for (k, v) in &e.scheduler {
                let _ = writeln!(s, "    {k}={v}");
            }
        }
        if !r.stderr_tail.is_empty() {
            let _ = writeln!(s, "  stderr (last lines)");
            for l in &r.stderr_tail {
                let _ = writeln!(s, "    | {l}");
            }
        }
    }
    s
}

use crate::view::json_metric as finite;

fn to_json(id: &str, exp: Option<&ExpInfo>, runs: &[RunDetail<'_>], now: f64) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = runs
        .iter()
        .map(|d| {
            let r = d.run;
            json!({
                "run": r.run_no,
                "uid": r.uid,
                "state": r.state.name().as_str(),
                "reason": r.state.reason(),
                "cluster": r.cluster,
                "job_id": r.job_id,
                "node": r.node,
                "run_dir": r.run_dir,
                "command": d.command,
                // Numbers as numbers, as the experiment's own `params` and `status --json`.
                "params": r.params.iter().map(|(k, v)| {
                    let n = v.trim().parse::<f64>().ok().filter(|n| n.is_finite());
                    (k.clone(), n.map_or_else(|| json!(v), crate::view::json_number))
                }).collect::<serde_json::Map<_, _>>(),
                "submitted_at": r.submitted_at,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "runtime": d.runtime(now),
                "exit_code": r.exit_code,
                "states": d.history.iter().map(|(state, at, detail)| json!({
                    "state": state, "at": at, "detail": detail,
                })).collect::<Vec<_>>(),
                "rule": r.fired.as_ref().map(|f| json!({
                    "rule": f.rule,
                    "at": f.t,
                    "values": f.values.iter().map(|(k, v)| (k.clone(), finite(*v))).collect::<serde_json::Map<_, _>>(),
                })),
                "resources": r.usage,
                "environment": d.env,
                "metrics": d.metrics.iter().map(|(k, v, _)| (k.clone(), finite(*v))).collect::<serde_json::Map<_, _>>(),
                "stderr_tail": r.stderr_tail,
            })
        })
        .collect();
    json!({
        "id": id,
        "row": exp.and_then(|e| e.row),
        "cluster": exp.map(|e| e.cluster.clone()),
        "command": exp.and_then(|e| e.command.clone()),
        "abort_when": exp.and_then(|e| e.abort_when.clone()),
        "params": exp.map(|e| e.params.iter().zip(&e.numbers).map(|((k, v), n)| (k.clone(), n.map_or_else(|| json!(v), crate::view::json_number))).collect::<serde_json::Map<_, _>>()),
        "problems": exp.map(|e| e.problems.clone()).unwrap_or_default(),
        "state": runs.last().map_or(json!("defined"), |r| r["state"].clone()),
        "runs": runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_773_731.4), "2026-11-27 10:02:11 UTC");
        assert_eq!(utc(1_795_773_731.6), "2026-11-27 10:02:12 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
    }
}
