//! Selections (SPEC §5) over the project's experiments: what each field means for a row, which
//! field names are known (so a typo is an error that suggests the nearest name), and matching.

use crate::project::{Experiment, Experiments};
use crate::store::{ExperimentRow, RunRow};
use nerokid::expr::{resolve_name, AmbiguousName, Expr, FieldValue, Fields};
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
    "silent",
    "waiting",
    "reason",
];

/// The built-in fields a rule can use while its run goes on (the kid knows only these, besides
/// the row's parameters and the run's metrics).
pub const RULE_FIELDS: &[&str] = &["id", "status", "state", "runtime"];

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

    /// Seconds since a running run's output last grew (or it printed a metric, or it started):
    /// the `silent` field. None for a run not running.
    pub fn silent(&self) -> Option<f64> {
        silent_secs(self.run?, self.now)
    }

    /// Seconds a run not started yet has waited since it was submitted: the `waiting` field.
    pub fn waiting(&self) -> Option<f64> {
        waiting_secs(self.run?, self.now)
    }
}

/// See [`Candidate::silent`]; also the notifier's `stalled` alert.
pub fn silent_secs(run: &RunRow, now: f64) -> Option<f64> {
    if run.state.name() != crate::state::StateName::Running {
        return None;
    }
    let since = run.output_at.or(run.started_at)?;
    Some((now - since).max(0.0))
}

/// See [`Candidate::waiting`]; also the notifier's `queued` alert.
pub fn waiting_secs(run: &RunRow, now: f64) -> Option<f64> {
    use crate::state::StateName;
    if !matches!(run.state.name(), StateName::Submitted | StateName::Queued) {
        return None;
    }
    Some((now - run.submitted_at?).max(0.0))
}

impl Fields for Candidate<'_> {
    fn id(&self) -> &str {
        &self.exp.row.id
    }
    fn state(&self) -> Option<&str> {
        Some(self.state_name())
    }
    fn field(&self, name: &str) -> Result<Option<FieldValue>, AmbiguousName> {
        let lower = name.to_ascii_lowercase();
        let num = FieldValue::Num;
        let builtin = match lower.as_str() {
            "cluster" => Some(FieldValue::Text(self.exp.cluster.clone())),
            "runtime" => self.runtime().map(num),
            "tmod" => self.seen.map(|s| num(self.now - s.row_changed_at)),
            "age" => self.seen.map(|s| num(self.now - s.first_seen)),
            "run" => self.run.map(|r| num(r.run_no as f64)),
            "exit_code" => self.run.and_then(|r| r.exit_code).map(|c| num(c as f64)),
            "node" => self.run.and_then(|r| r.node.clone()).map(FieldValue::Text),
            "job_id" => self
                .run
                .and_then(|r| r.job_id.clone())
                .map(FieldValue::Text),
            "silent" => self.silent().map(num),
            "waiting" => self.waiting().map(num),
            // Why the run ended (`restart 'reason=~"out of memory"'`).
            "reason" => self
                .run
                .and_then(|r| r.state.reason())
                .map(FieldValue::Text),
            _ => return self.metric_or_param(name),
        };
        Ok(builtin)
    }
}

impl Candidate<'_> {
    /// A metric or parameter by the name the selection resolved for the whole project
    /// (`parse_selection`): this run's metric of exactly that name, else the row's parameter
    /// (headers are unique ignoring case). No fallback to another spelling row by row: a row
    /// that has only `Loss` has no `loss` (it matched before, by whichever spelling it had).
    fn metric_or_param(&self, name: &str) -> Result<Option<FieldValue>, AmbiguousName> {
        if let Some(v) = self.metrics.and_then(|m| m.get(name)) {
            return Ok(Some(FieldValue::Num(*v)));
        }
        let params = &self.exp.row.params;
        let found = params.get(name).or_else(|| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        });
        Ok(found.map(|v| match v.number {
            Some(n) => FieldValue::Num(n),
            None => FieldValue::Text(v.text.clone()),
        }))
    }
}

/// What a field name in a selection or rule refers to, given every name the project knows.
#[derive(Debug, PartialEq)]
pub enum FieldCheck {
    Known,
    /// No built-in field, metric or parameter has it; the nearest known name, if close.
    Unknown {
        nearest: Option<String>,
    },
    Ambiguous(AmbiguousName),
}

/// Check a field name against the built-in fields, the metrics (seen or configured) and the
/// parameters, resolved as at evaluation (`resolve_name`).
pub fn check_field(field: &str, metrics: &[&str], params: &[&str]) -> FieldCheck {
    if BUILTIN_FIELDS.iter().any(|b| b.eq_ignore_ascii_case(field)) {
        return FieldCheck::Known;
    }
    match resolve_name(field, &[metrics, params]) {
        Ok(Some(_)) => FieldCheck::Known,
        Err(a) => FieldCheck::Ambiguous(a),
        Ok(None) => {
            let known = BUILTIN_FIELDS.iter().chain(metrics).chain(params).copied();
            FieldCheck::Unknown {
                nearest: nearest(field, known).map(String::from),
            }
        }
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
    let mut expr = nerokid::expr::parse(src).map_err(|e| format!("selection {src:?}: {e}"))?;
    let params: Vec<&str> = exps.sheet.params.iter().map(String::as_str).collect();
    let metrics: Vec<&str> = metric_names
        .iter()
        .chain(config_metrics)
        .map(String::as_str)
        .collect();
    for c in expr.comparisons_mut() {
        match check_field(&c.field, &metrics, &params) {
            FieldCheck::Known => {
                // Resolved once for the whole project: `loss` stays `loss` where any run printed
                // `loss`, and a row that has only `Loss` does not match it (row by row, each
                // row fell back to whichever spelling it had).
                if !BUILTIN_FIELDS
                    .iter()
                    .any(|b| b.eq_ignore_ascii_case(&c.field))
                {
                    if let Ok(Some((_, name))) = resolve_name(&c.field, &[&metrics, &params]) {
                        c.field = name.to_string();
                    }
                }
            }
            FieldCheck::Unknown { nearest } => {
                let hint = nearest
                    .map(|n| format!("; did you mean {n}?"))
                    .unwrap_or_default();
                return Err(format!(
                    "selection {src:?}: column {}: no experiment, parameter or metric knows the field {:?}{hint}",
                    c.column, c.field
                ));
            }
            FieldCheck::Ambiguous(a) => {
                return Err(format!("selection {src:?}: column {}: {a}", c.column));
            }
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
    fn silent_and_waiting_are_for_runs_in_flight() {
        use crate::state::RunState;
        let mut run = RunRow {
            uid: "1.1".into(),
            exp_id: "1".into(),
            run_no: 1,
            cluster: "local".into(),
            state: RunState::Queued {
                at: 5.0,
                submitted_at: 2.0,
            },
            job_id: None,
            node: None,
            run_dir: None,
            submitted_at: Some(2.0),
            started_at: None,
            finished_at: None,
            exit_code: None,
            params: BTreeMap::new(),
            cpu_percent: None,
            rss_bytes: None,
            abort_sent: false,
            updated_at: 5.0,
            usage: Default::default(),
            output_at: None,
            stderr_tail: vec![],
            fired: None,
        };
        assert_eq!(waiting_secs(&run, 100.0), Some(98.0));
        assert_eq!(silent_secs(&run, 100.0), None);
        run.state = RunState::Running {
            at: 10.0,
            node: "n".into(),
        };
        run.started_at = Some(10.0);
        assert_eq!(waiting_secs(&run, 100.0), None);
        assert_eq!(silent_secs(&run, 100.0), Some(90.0), "since the start");
        run.output_at = Some(70.0);
        assert_eq!(silent_secs(&run, 100.0), Some(30.0));
        assert_eq!(check_field("Silent", &[], &[]), FieldCheck::Known);
        assert_eq!(check_field("waiting", &[], &[]), FieldCheck::Known);
    }

    /// Regression: with metrics `Loss` (PyTorch's training lines) and `loss` (its test lines),
    /// `LOSS>1` silently picked one of them.
    #[test]
    fn an_ambiguous_field_is_an_error_naming_both() {
        let metrics = ["Loss", "loss", "acc"];
        let params = ["lr"];
        assert_eq!(check_field("Loss", &metrics, &params), FieldCheck::Known);
        assert_eq!(check_field("ACC", &metrics, &params), FieldCheck::Known);
        assert_eq!(check_field("RUNTIME", &metrics, &params), FieldCheck::Known);
        let FieldCheck::Ambiguous(a) = check_field("LOSS", &metrics, &params) else {
            panic!("LOSS is ambiguous")
        };
        assert_eq!(a.matches, ["Loss", "loss"]);
        assert_eq!(
            check_field("los", &metrics, &params),
            FieldCheck::Unknown {
                nearest: Some("Loss".into())
            }
        );
    }

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
