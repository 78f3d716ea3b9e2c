//! start / restart / abort of a selection — the one path that CLI verbs and (later) workbook
//! commands both take. A run is recorded in the store as `submitted` before mum is asked, so a
//! crash in between is repaired by the next sync (which resubmits what mum never confirmed).

use crate::project::{CoreError, Experiments, Project, SyncReport};
use crate::select::Candidate;
use crate::sheet::read::StatusCommand;
use crate::store::{NewRun, RunRow};
use nerokid::expr::Expr;
use nerokid::report::now;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Restart,
    Abort,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Restart => "restart",
            Verb::Abort => "abort",
        }
    }
}

#[derive(Debug, Default)]
pub struct ActionReport {
    /// (experiment id, run uid)
    pub started: Vec<(String, String)>,
    pub aborted: Vec<(String, String)>,
    /// (experiment id, why nothing was done)
    pub skipped: Vec<(String, String)>,
    /// `abort`: selected experiments with nothing in flight (experiment id, its state). Kept
    /// apart from `skipped`: `abort all` is not about every finished row.
    pub idle: Vec<(String, &'static str)>,
    /// Clusters that could not be reached: (cluster, the experiment ids left undone there, why).
    /// The other clusters' work is done all the same.
    pub unreached: Vec<(String, Vec<String>, String)>,
}

impl ActionReport {
    /// What was done, for a message: `2 runs submitted`, `1 abort sent`, `nothing was done`.
    pub fn done(&self, verb: Verb) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        match (self.started.len(), self.aborted.len()) {
            (0, 0) => format!("nothing to {}", verb.as_str()),
            (n, 0) => format!("{} submitted", plural(n, "run", "runs")),
            (0, n) => format!("{} sent", plural(n, "abort", "aborts")),
            (s, a) => format!(
                "{} submitted, {} sent",
                plural(s, "run", "runs"),
                plural(a, "abort", "aborts")
            ),
        }
    }

    pub fn touched_runs(&self) -> Vec<String> {
        self.started
            .iter()
            .chain(&self.aborted)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// The experiments a selection picks (every row for `None`), with their latest runs, in
/// workbook order.
pub fn select<'a>(
    exps: &'a Experiments,
    latest: &'a BTreeMap<String, RunRow>,
    metrics: &'a BTreeMap<String, BTreeMap<String, f64>>,
    seen: &'a BTreeMap<String, crate::store::ExperimentRow>,
    expr: Option<&Expr>,
) -> Vec<Candidate<'a>> {
    let t = now();
    exps.list
        .iter()
        // A row without a usable id can be shown (no selection) but never selected.
        .filter(|e| expr.is_none() || !e.row.id.is_empty())
        .map(|e| {
            let run = latest.get(&e.row.id).filter(|_| e.shows_runs());
            Candidate {
                exp: e,
                run,
                metrics: run.and_then(|r| metrics.get(&r.uid)),
                seen: seen.get(&e.row.id),
                now: t,
            }
        })
        .filter(|c| expr.is_none_or(|e| e.matches(c)))
        .collect()
}

/// Apply a verb to a selection. The store must have been synced just before.
pub fn act(
    project: &mut Project,
    exps: &Experiments,
    verb: Verb,
    expr: &Expr,
) -> Result<(ActionReport, SyncReport), CoreError> {
    act_where(project, exps, verb, |c| expr.matches(c))
}

/// Apply a verb to the experiments with these ids (the watcher's commands typed into status
/// cells): the same path as [`act`].
pub fn act_on_ids(
    project: &mut Project,
    exps: &Experiments,
    verb: Verb,
    ids: &[String],
) -> Result<(ActionReport, SyncReport), CoreError> {
    let ids: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    act_where(project, exps, verb, |c| {
        c.exp.detached().is_none() && ids.contains(c.exp.row.id.as_str())
    })
}

fn act_where(
    project: &mut Project,
    exps: &Experiments,
    verb: Verb,
    pick: impl Fn(&Candidate<'_>) -> bool,
) -> Result<(ActionReport, SyncReport), CoreError> {
    let latest = project.store.latest_runs()?;
    let metrics = project.store.last_metrics()?;
    let seen = project.store.experiments()?;
    let chosen: Vec<Candidate<'_>> = select(exps, &latest, &metrics, &seen, None)
        .into_iter()
        .filter(|c| !c.exp.row.id.is_empty() && pick(c))
        .collect();
    let mut report = ActionReport::default();
    // cluster → (experiment id, its run spec, uid still to be decided)
    let mut to_start: BTreeMap<String, Vec<(String, crate::cluster::protocol::RunSpec)>> =
        BTreeMap::new();
    let mut to_abort: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for c in &chosen {
        let id = c.exp.row.id.clone();
        let active = c.run.filter(|r| !r.state.is_terminal());
        match verb {
            Verb::Abort => match active {
                Some(r) => to_abort
                    .entry(r.cluster.clone())
                    .or_default()
                    .push((id, r.uid.clone())),
                None => report.idle.push((id, c.state_name())),
            },
            Verb::Start | Verb::Restart => {
                if let Some(r) = active {
                    // Starting what is already on its way needs nothing; only a restart has to
                    // wait for the run in flight to end.
                    let why = match (verb, r.state.name().as_str()) {
                        (Verb::Start, state @ ("submitted" | "queued")) => {
                            format!("already {state}; it starts when a slot is free")
                        }
                        (Verb::Start, state) => format!("already {state}"),
                        (_, state) => format!(
                            "run {} is still {state}; abort it first for a new run",
                            r.run_no
                        ),
                    };
                    report.skipped.push((id, why));
                    continue;
                }
                if let Some(why) = c.exp.detached() {
                    report.skipped.push((id, why.to_string()));
                    continue;
                }
                if verb == Verb::Start {
                    if let Some(r) = c.run {
                        report.skipped.push((
                            id,
                            format!(
                                "already ran ({}); use restart for a new run",
                                r.state.name().as_str()
                            ),
                        ));
                        continue;
                    }
                }
                if c.exp.row.status.is(StatusCommand::Hold) {
                    report
                        .skipped
                        .push((id, "on hold (status cell says hold)".into()));
                    continue;
                }
                if !c.exp.is_valid() {
                    let why: Vec<String> = c.exp.problems.iter().map(|p| p.to_string()).collect();
                    report
                        .skipped
                        .push((id, format!("invalid row: {}", why.join("; "))));
                    continue;
                }
                // The run's uid is decided when the store records it (below); mum gets it then.
                let Some(spec) = project.run_spec(c.exp, "", &exps.known_metrics) else {
                    report
                        .skipped
                        .push((id, "cannot build the run (no command or cluster)".into()));
                    continue;
                };
                to_start
                    .entry(c.exp.cluster.clone())
                    .or_default()
                    .push((id, spec));
            }
        }
    }

    let mut sync = SyncReport::default();
    let unreached = |e: &CoreError| match e {
        CoreError::Cluster { err, .. } => Some(crate::util::error_chain(err)),
        _ => None,
    };
    for (cluster, runs) in to_start {
        let mut client = match project.connect(&cluster) {
            Ok(c) => c,
            Err(e) => {
                let Some(why) = unreached(&e) else {
                    return Err(e);
                };
                let ids = runs.into_iter().map(|(id, _)| id).collect();
                report.unreached.push((cluster, ids, why));
                continue;
            }
        };
        let t = now();
        let mut specs = Vec::new();
        for (id, mut spec) in runs {
            let new_run = NewRun {
                exp_id: &id,
                cluster: &cluster,
                command: &spec.command,
                params: &spec.kid.params,
            };
            let as_json = |uid: &str| {
                let mut with_uid = spec.clone();
                with_uid.run = uid.to_string();
                serde_json::to_string(&with_uid).expect("run spec serializes")
            };
            let recorded = project
                .store
                .new_run(&new_run, verb == Verb::Restart, as_json, t)?;
            match recorded {
                Some(run) => {
                    spec.run = run.uid.clone();
                    report.started.push((id, run.uid));
                    specs.push(spec);
                }
                None => report
                    .skipped
                    .push((id, "started meanwhile by another neroman".into())),
            }
        }
        match client.submit(specs) {
            Ok(_) => {}
            // The agent cannot take them now (its disk is full): they stay recorded as
            // submitted and every later command (or `--wait`) sends them again.
            Err(crate::cluster::client::ClientError::Refused(why)) => sync.agent_problems.push((
                cluster.clone(),
                format!(
                    "{why} (the runs stay submitted; the next command sends them again, or use --wait)"
                ),
            )),
            // Recorded as submitted: a later command (or the watcher) sends them again.
            Err(err) => {
                let why = crate::util::error_chain(&err);
                report.unreached.push((
                    cluster,
                    Vec::new(),
                    format!("{why} (the runs stay submitted; the next command sends them again)"),
                ));
                continue;
            }
        }
        if let Err(e) =
            project.sync_with(&cluster, &mut client, &mut sync, std::time::Duration::ZERO)
        {
            let Some(why) = unreached(&e) else {
                return Err(e);
            };
            report.unreached.push((cluster, Vec::new(), why));
        }
    }
    for (cluster, runs) in to_abort {
        let ids: Vec<String> = runs.iter().map(|(id, _)| id.clone()).collect();
        let sent = project.connect(&cluster).and_then(|mut client| {
            project.sync_with(&cluster, &mut client, &mut sync, std::time::Duration::ZERO)?;
            client
                .abort(runs.iter().map(|(_, uid)| uid.clone()).collect())
                .map_err(|err| CoreError::Cluster {
                    cluster: cluster.clone(),
                    err,
                })?;
            report.aborted.extend(runs);
            project.sync_with(&cluster, &mut client, &mut sync, std::time::Duration::ZERO)
        });
        if let Err(e) = sent {
            let Some(why) = unreached(&e) else {
                return Err(e);
            };
            report.unreached.push((cluster, ids, why));
        }
    }
    Ok((report, sync))
}
