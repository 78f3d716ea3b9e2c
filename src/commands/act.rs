//! `neroman start|restart|abort SEL [--wait]` (and the flag forms `--start SEL`, ...): act on a
//! selection, return once mum has accepted, or with `--wait` follow the runs to their end.

use super::output::{self, outln, OutputError};
use super::{exit, open_synced, print_changes};
use crate::actions::{act, ActionReport, Verb};
use crate::project::{Experiments, Project};
use nerokid::expr::Expr;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// Parse a selection against what this project knows.
pub fn parse(project: &Project, exps: &Experiments, src: &str) -> anyhow::Result<Expr> {
    let metric_names = project.store.metric_names()?;
    let config_metrics: Vec<String> = project
        .config
        .metrics
        .iter()
        .flat_map(|m| m.patterns.iter())
        .filter_map(|p| regex::Regex::new(p).ok())
        .flat_map(|r| {
            r.capture_names()
                .flatten()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    crate::select::parse_selection(src, exps, &metric_names, &config_metrics)
        .map_err(anyhow::Error::msg)
}

pub fn run(dir: &Path, verb: Verb, selection: &str, wait: bool) -> anyhow::Result<i32> {
    let (mut project, exps, sync) = open_synced(dir)?;
    print_changes(&sync)?;
    let expr = parse(&project, &exps, selection)?;
    let (report, sync) = act(&mut project, &exps, verb, &expr)?;
    if report.started.is_empty() && report.aborted.is_empty() && report.skipped.is_empty() {
        outln!(
            "nothing to {}: no experiment matches {selection:?}",
            verb.as_str()
        )?;
    }
    print_report(verb, &report)?;
    print_changes(&sync)?;
    for (c, why) in &sync.agent_problems {
        eprintln!("neroman: warning: cluster {c}: {why}");
    }
    // The runs are started (or aborted) whether or not results.xlsx can be written: exit 0.
    if let Some(path) = super::results::write_after(&project, &exps, &report.done(verb)) {
        tracing::info!("wrote {}", path.display());
    }
    // `--wait` also waits for selected runs already in flight (a run still `submitted` because
    // its agent could not take it yet is sent by the waiting loop).
    let mut waited = report.touched_runs();
    if wait {
        let latest = project.store.latest_runs()?;
        for (id, _) in &report.skipped {
            if let Some(r) = latest.get(id).filter(|r| !r.state.is_terminal()) {
                if !waited.contains(&r.uid) {
                    waited.push(r.uid.clone());
                }
            }
        }
    }
    if wait && !waited.is_empty() {
        let all_finished = wait_for(&mut project, &exps, &waited, false)?;
        // Waiting for an abort succeeds when the runs have ended, however they ended.
        return Ok(if all_finished || verb == Verb::Abort {
            exit::OK
        } else {
            exit::RUNS_FAILED
        });
    }
    Ok(exit::OK)
}

pub fn print_report(verb: Verb, r: &ActionReport) -> Result<(), OutputError> {
    for (id, uid) in &r.started {
        outln!(
            "{id}: submitted (run {})",
            uid.rsplit('.').next().unwrap_or(uid)
        )?;
    }
    for (id, _) in &r.aborted {
        outln!("{id}: abort sent")?;
    }
    for (id, why) in &r.skipped {
        outln!("{id}: not {}: {why}", past(verb))?;
    }
    Ok(())
}

fn past(verb: Verb) -> &'static str {
    match verb {
        Verb::Start => "started",
        Verb::Restart => "restarted",
        Verb::Abort => "aborted",
    }
}

/// Follow runs until every one is in a final state, syncing every half second and rewriting
/// results.xlsx when something changed. `live` redraws a status table (for a terminal).
/// Returns whether every run finished (exit 0).
pub fn wait_for(
    project: &mut Project,
    exps: &Experiments,
    runs: &[String],
    live: bool,
) -> anyhow::Result<bool> {
    let live = live && std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_drawn_lines = 0usize;
    let mut last_results = Instant::now();
    let mut dirty = true;
    let mut unreachable_since: Option<Instant> = None;
    // One connection per cluster for the whole wait; each round long-polls for news.
    let mut clients = BTreeMap::new();
    let mut warned = std::collections::HashSet::new();
    let mut states = Vec::new();
    let mut first = true;
    let mut states_read = Instant::now();
    let mut results_warned = false;
    loop {
        let sync = project.sync_held(
            &mut clients,
            Duration::from_millis(if live { 500 } else { 2000 }),
        )?;
        for (c, why) in &sync.agent_problems {
            // Once per problem, not once per round.
            if warned.insert(format!("{c}\0{why}")) {
                eprintln!("neroman: warning: cluster {c}: {why}");
            }
        }
        // Keep trying for a while (a restarting agent), then say what is wrong.
        if let Some((cluster, why)) = sync.unreachable.first() {
            let since = *unreachable_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("cluster {cluster} has not answered for 30 s: {why}");
            }
        } else {
            unreachable_since = None;
        }
        if !sync.changes.is_empty() || sync.metric_values > 0 {
            dirty = true;
        }
        if !live {
            print_changes(&sync)?;
        }
        // The runs' states change with news (read them then: 1,000 runs are 1,000 reads), or
        // when another neroman applied the news; so also every 2 s.
        if first || !sync.changes.is_empty() || states_read.elapsed() > Duration::from_secs(2) {
            states_read = Instant::now();
            states = runs
                .iter()
                .filter_map(|u| project.store.run(u).ok().flatten())
                .collect();
            first = false;
        }
        let done = states.iter().all(|r| r.state.is_terminal());
        // Results at most every second while running; always at the end.
        if dirty && (done || last_results.elapsed() >= Duration::from_secs(1)) {
            // An unwritable results.xlsx is warned about once; the runs go on either way.
            let written = if results_warned {
                crate::view::write_results(project, exps).is_ok()
            } else {
                super::results::write_after(project, exps, "the runs are followed").is_some()
            };
            results_warned |= !written;
            last_results = Instant::now();
            dirty = false;
        }
        if live {
            let table = crate::view::status_table(project, exps, None, 4)?;
            let mut out = std::io::stdout().lock();
            if last_drawn_lines > 0 {
                // Move up and clear what we drew last time.
                output::write_to(&mut out, format_args!("\x1b[{last_drawn_lines}A\x1b[J"))?;
            }
            let running = states.iter().filter(|r| !r.state.is_terminal()).count();
            let header = format!(
                "{} of {} runs still going, {:.0}s elapsed\n",
                running,
                states.len(),
                started.elapsed().as_secs_f64()
            );
            // Redrawing moves the cursor up by lines: a line the terminal wraps would break it.
            let width = crate::util::terminal_width()
                .unwrap_or(usize::MAX)
                .saturating_sub(1)
                .max(20);
            let fitted: String = format!("{header}{table}")
                .lines()
                .map(|l| {
                    let mut l: String = l.chars().take(width).collect();
                    l.push('\n');
                    l
                })
                .collect();
            output::write_bytes(&mut out, fitted.as_bytes())?;
            last_drawn_lines = table.lines().count() + 1;
        }
        if done {
            return Ok(states
                .iter()
                .all(|r| r.state.name() == crate::state::StateName::Finished));
        }
        if !sync.unreachable.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
