//! `neroman status [SEL] [--json] [--metrics NAMES]`: the experiments, their states,
//! parameters and last metrics.

use super::output::{out, outln};
use super::{exit, open_synced_or_store};
use crate::view::MetricColumns;
use std::path::Path;

/// How many metric columns the table shows when neither `--metrics` nor `status_metrics:` says.
const DEFAULT_METRIC_COLUMNS: usize = 6;

pub fn run(
    dir: &Path,
    selection: Option<&str>,
    json: bool,
    metrics: Option<&str>,
) -> anyhow::Result<i32> {
    let (project, exps, sync, unreadable) = open_synced_or_store(dir)?;
    super::refresh_results(&project, &exps, &sync);
    let sel = match selection {
        Some(s) => Some(super::act::parse(&project, &exps, s)?),
        None => None,
    };
    if json {
        let v = crate::view::status_json(&project, &exps, sel.as_ref())?;
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let table = match metrics {
            Some(list) => {
                let columns = metric_columns(list, &project.store.metric_names()?)?;
                crate::view::status_table_with(&project, &exps, sel.as_ref(), &columns)?
            }
            // The config's `status_metrics`, else chosen. A configured name no run has reported
            // keeps its (empty) column — its metric may come later — but a likely typo is said.
            None => {
                let known = project.store.metric_names()?;
                for n in project.config.status_metrics.iter().flatten() {
                    if !known.is_empty() && !known.iter().any(|k| k.eq_ignore_ascii_case(n)) {
                        let hint = crate::select::nearest(n, known.iter().map(String::as_str))
                            .map(|k| format!("; did you mean {k}?"))
                            .unwrap_or_default();
                        tracing::warn!(
                            "status_metrics in neronet.yaml: no run has reported a metric {n:?} yet{hint}"
                        );
                    }
                }
                crate::view::status_table(&project, &exps, sel.as_ref(), DEFAULT_METRIC_COLUMNS)?
            }
        };
        out!("{table}")?;
        outln!("{}", super::watch::status_line(&project.dir))?;
        // Alerts the watcher retries, and those it gave up on (the server refused them, or it
        // never answered).
        let now = nerokid::report::now();
        for line in [
            crate::notify::retrying_line(&project.store, now),
            crate::notify::undeliverable_line(&project.store),
        ]
        .into_iter()
        .flatten()
        {
            outln!("{line}")?;
        }
    }
    Ok(if unreadable { exit::ERROR } else { exit::OK })
}

/// `--metrics loss,acc` (or `all`): every name must be a metric some run reported, so a typo
/// is an error that suggests the name, not an empty column.
fn metric_columns(list: &str, known: &[String]) -> anyhow::Result<MetricColumns> {
    let names: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    if names.len() == 1 && names[0].eq_ignore_ascii_case("all") {
        return Ok(MetricColumns::All);
    }
    if names.is_empty() {
        anyhow::bail!("--metrics: give metric names separated by commas (loss,acc), or all");
    }
    for n in &names {
        if !known.iter().any(|k| k.eq_ignore_ascii_case(n)) {
            let hint = crate::select::nearest(n, known.iter().map(String::as_str))
                .map(|k| format!("; did you mean {k}?"))
                .unwrap_or_default();
            anyhow::bail!("--metrics: no run has reported a metric {n:?}{hint}");
        }
    }
    Ok(MetricColumns::Named(names))
}
