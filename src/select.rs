//! Selections (SPEC §5) over the project's experiments: what each field means for a row, which
//! field names are known (so a typo is an error that suggests the nearest name), and matching.

use crate::project::{Experiment, Experiments};
use crate::store::{ExperimentRow, RunRow};
use nerokid::expr::{Expr, FieldValue, Fields};
use std::collections::BTreeMap;

/// Fields every experiment has, besides its parameters and metrics.
pub const BUILTIN_FIELDS: &[&str] = &[
    "id",
    "status",
    "state",
    "cluster",
    "runtime",
    "tmod",
    "age",
    "run",
    "exit_code",
    "node",
    "job_id",
];

/// One experiment as a selection sees it.
pub struct Candidate<'a> {
    pub exp: &'a Experiment,
    pub run: Option<&'a RunRow>,
    pub metrics: Option<&'a BTreeMap<String, f64>>,
    pub seen: Option<&'a ExperimentRow>,
    pub now: f64,
}

impl Candidate<'_> {
    pub fn state_name(&self) -> &'static str {
        self.run.map_or("defined", |r| r.state.name().as_str())
    }

    pub fn runtime(&self) -> Option<f64> {
        let run = self.run?;
        let start = run.started_at?;
        Some(run.finished_at.unwrap_or(self.now) - start)
    }
}

impl Fields for Candidate<'_> {
    fn id(&self) -> &str {
        &self.exp.row.id
    }
    fn state(&self) -> Option<&str> {
        Some(self.state_name())
    }
    fn field(&self, name: &str) -> Option<FieldValue> {
        let lower = name.to_ascii_lowercase();
        let num = FieldValue::Num;
        match lower.as_str() {
            "cluster" => return Some(FieldValue::Text(self.exp.cluster.clone())),
            "runtime" => return self.runtime().map(num),
            "tmod" => return self.seen.map(|s| num(self.now - s.row_changed_at)),
            "age" => return self.seen.map(|s| num(self.now - s.first_seen)),
            "run" => return self.run.map(|r| num(r.run_no as f64)),
            "exit_code" => return self.run.and_then(|r| r.exit_code).map(|c| num(c as f64)),
            "node" => return self.run.and_then(|r| r.node.clone()).map(FieldValue::Text),
            "job_id" => {
                return self
                    .run
                    .and_then(|r| r.job_id.clone())
                    .map(FieldValue::Text)
            }
            _ => {}
        }
        if let Some(m) = self.metrics {
            // Names are matched case-insensitively everywhere; an exact match wins.
            let v = m.get(name).or_else(|| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            });
            if let Some(v) = v {
                return Some(num(*v));
            }
        }
        let param = self
            .exp
            .row
            .params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)?;
        Some(match param.number {
            Some(n) => num(n),
            None => FieldValue::Text(param.text.clone()),
        })
    }
}

/// The closest known name, if it is close enough to be a likely typo.
pub fn nearest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    known
        .map(|k| (strsim::levenshtein(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Parse a selection and check every field and bare id in it against what the project knows.
pub fn parse_selection(
    src: &str,
    exps: &Experiments,
    metric_names: &[String],
    config_metrics: &[String],
) -> Result<Expr, String> {
    let expr = nerokid::expr::parse(src).map_err(|e| format!("selection {src:?}: {e}"))?;
    let mut known: Vec<&str> = BUILTIN_FIELDS.to_vec();
    known.extend(exps.sheet.params.iter().map(String::as_str));
    known.extend(metric_names.iter().map(String::as_str));
    known.extend(config_metrics.iter().map(String::as_str));
    for c in expr.comparisons() {
        if !known.iter().any(|k| k.eq_ignore_ascii_case(&c.field)) {
            let hint = nearest(&c.field, known.iter().copied())
                .map(|n| format!("; did you mean {n}?"))
                .unwrap_or_default();
            return Err(format!(
                "selection {src:?}: column {}: no experiment, parameter or metric knows the field {:?}{hint}",
                c.column, c.field
            ));
        }
    }
    for id in expr.ids() {
        if exps.get(id).is_none() {
            let state_hint = nearest(
                id,
                nerokid::expr::STATE_NAMES.iter().copied().chain(["all"]),
            )
            .map(|n| format!("; did you mean the state {n}?"))
            .unwrap_or_default();
            return Err(format!(
                "selection {src:?}: no experiment has the id {id:?}{state_hint}"
            ));
        }
    }
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_suggests_typos_only() {
        let known = ["errorrate", "loss", "runtime"];
        assert_eq!(
            nearest("erorrate", known.iter().copied()),
            Some("errorrate")
        );
        assert_eq!(nearest("runtim", known.iter().copied()), Some("runtime"));
        assert_eq!(nearest("banana", known.iter().copied()), None);
    }
}
