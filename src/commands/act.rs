//! `neroman start|restart|abort SEL [--wait]` (and the flag forms `--start SEL`, ...): act on a
//! selection, return once mum has accepted, or with `--wait` follow the runs to their end.

use super::output::{self, outln, OutputError};
use super::{exit, open_synced, print_changes};
use crate::actions::{act, ActionReport, Verb};
use crate::project::{Experiments, Project};
use nerokid::expr::Expr;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
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
    // An abort must work while the workbook cannot be read (a run must be stoppable whatever
    // the file looks like); nothing is started from a workbook that cannot be read.
    let (mut project, exps, sync) = if verb == Verb::Abort {
        let (p, e, s, _) = super::open_synced_or_store(dir)?;
        (p, e, s)
    } else {
        open_synced(dir)?
    };
    print_news(&sync)?;
    let expr = parse(&project, &exps, selection)?;
    let (report, sync) = act(&mut project, &exps, verb, &expr)?;
    print_report(verb, &report, &expr)?;
    print_news(&sync)?;
    // A cluster not reached leaves its rows undone; the others' work is done and said.
    for (cluster, ids, why) in &report.unreached {
        if ids.is_empty() {
            eprintln!("neroman: cluster {cluster}: {why}");
        } else {
            eprintln!(
                "neroman: cluster {cluster}: {why}; not {}: {}",
                past(verb),
                id_list(ids.iter().map(String::as_str))
            );
        }
    }
    let failed = if report.unreached.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    };
    let refused = if verb == Verb::Abort {
        0
    } else {
        wait_accepted(&mut project, &report.started)?
    };
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
        return Ok(if failed != exit::OK {
            failed
        } else if all_finished || verb == Verb::Abort {
            exit::OK
        } else {
            exit::RUNS_FAILED
        });
    }
    // A run the scheduler refused ended before it began.
    Ok(if failed == exit::OK && refused > 0 {
        exit::RUNS_FAILED
    } else {
        failed
    })
}

/// How long `start` waits, with nothing new, for a scheduler to take the rest.
const ACCEPT_STALL: Duration = Duration::from_secs(15);

/// On a scheduler cluster (SLURM, Grid Engine) a run is in once the scheduler took it and gave
/// it a job id. `start` waits for that — a progress line on a terminal — and says in one line
/// how it went, so a refused submission (a wrong partition) shows at once. It stops waiting
/// when nothing has moved for 15 s (runs held back by `max_parallel` wait in the agent).
fn wait_accepted(project: &mut Project, started: &[(String, String)]) -> anyhow::Result<usize> {
    let mut by_cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, uid) in started {
        if let Some(run) = project.store.run(uid)? {
            let warden = project
                .config
                .clusters
                .get(&run.cluster)
                .map(|c| c.warden())
                .unwrap_or_default();
            if warden != crate::config::Warden::Local {
                by_cluster.entry(run.cluster).or_default().push(run.uid);
            }
        }
    }
    if by_cluster.is_empty() {
        return Ok(0);
    }
    let total: usize = by_cluster.values().map(Vec::len).sum();
    let progress = total > MAX_LINES && std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut clients = BTreeMap::new();
    let mut last_move = Instant::now();
    let mut last_count = usize::MAX;
    let mut changes = Vec::new();
    let rows = loop {
        let sync = project.sync_held(&mut clients, Duration::from_millis(300))?;
        changes.extend(sync.changes);
        let mut rows = Vec::new();
        for uids in by_cluster.values() {
            for uid in uids {
                if let Some(r) = project.store.run(uid)? {
                    rows.push(r);
                }
            }
        }
        let done = rows
            .iter()
            .filter(|r| r.job_id.is_some() || r.state.is_terminal())
            .count();
        if done != last_count {
            last_count = done;
            last_move = Instant::now();
        }
        if progress {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[Kaccepted by the scheduler: {done}/{total}, {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            let _ = err.flush();
        }
        if done == total || last_move.elapsed() > ACCEPT_STALL {
            break rows;
        }
        if let Some((cluster, why)) = sync.unreachable.first() {
            if last_move.elapsed() > ACCEPT_STALL / 3 {
                if progress {
                    clear_progress();
                }
                outln!("cluster {cluster} did not answer while the runs were handed over ({why}); they stay submitted and are sent again by the next command")?;
                return Ok(0);
            }
        }
    };
    if progress {
        clear_progress();
    }
    // Runs the scheduler refused ended (lost, with sbatch's answer): say those one by one.
    let refused_count = rows
        .iter()
        .filter(|r| r.job_id.is_none() && r.state.is_terminal())
        .count();
    let refused: Vec<_> = changes
        .into_iter()
        .filter(|(_, _, st)| st.is_terminal())
        .collect();
    if !refused.is_empty() {
        print_news(&crate::project::SyncReport {
            changes: refused,
            ..Default::default()
        })?;
    }
    let secs = t0.elapsed().as_secs_f64();
    for (cluster, uids) in &by_cluster {
        let mine: Vec<&crate::store::RunRow> =
            rows.iter().filter(|r| uids.contains(&r.uid)).collect();
        let warden = project.config.clusters[cluster].warden().as_str();
        outln!("{}", accepted_line(cluster, warden, &mine, secs))?;
    }
    Ok(refused_count)
}

/// `hpc: 1000 runs accepted by slurm in 1.4 s, as job arrays 4101 (600 tasks), 4102 (400 tasks)`.
fn accepted_line(cluster: &str, warden: &str, rows: &[&crate::store::RunRow], secs: f64) -> String {
    let mut jobs: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if let Some(job) = &r.job_id {
            let base = job.split('_').next().unwrap_or(job).to_string();
            match jobs.iter_mut().find(|(b, _)| *b == base) {
                Some((_, n)) => *n += 1,
                None => jobs.push((base, 1)),
            }
        }
    }
    let accepted: usize = jobs.iter().map(|(_, n)| n).sum();
    let refused = rows
        .iter()
        .filter(|r| r.job_id.is_none() && r.state.is_terminal())
        .count();
    let waiting = rows.len() - accepted - refused;
    let mut line = format!(
        "{cluster}: {accepted} run{} accepted by {warden} in {secs:.1} s",
        plural(accepted)
    );
    if !jobs.is_empty() {
        const SHOWN: usize = 6;
        let mut named: Vec<String> = jobs
            .iter()
            .take(SHOWN)
            .map(|(b, n)| {
                if *n == 1 {
                    b.clone()
                } else {
                    format!("{b} ({n} tasks)")
                }
            })
            .collect();
        if jobs.len() > SHOWN {
            named.push(format!("… {} more", jobs.len() - SHOWN));
        }
        line.push_str(&format!(
            ", as job{} {}",
            plural(jobs.len()),
            named.join(", ")
        ));
    }
    if refused > 0 {
        line.push_str(&format!("; {refused} refused (above)"));
    }
    if waiting > 0 {
        line.push_str(&format!(
            "; {waiting} still wait in the agent (max_parallel, or the scheduler is slow: `neroman status` follows them)"
        ));
    }
    line
}

/// Up to this many lines, every run gets its own line; beyond, a summary (a 1,000-row start
/// printed 2,000 lines).
const MAX_LINES: usize = 12;

/// What an action did: one line per run for a few, grouped ids for many. `abort` lists a
/// selected experiment with nothing in flight only when the selection named its id (`abort
/// all` does not list every finished row).
pub fn print_report(verb: Verb, r: &ActionReport, expr: &Expr) -> Result<(), OutputError> {
    let named: Vec<String> = expr
        .ids()
        .iter()
        .map(|i| crate::sheet::read::canonical_id(i))
        .collect();
    let is_named = |id: &String| named.contains(&crate::sheet::read::canonical_id(id));
    let (named_idle, quiet): (Vec<_>, Vec<_>) = r.idle.iter().partition(|(id, _)| is_named(id));
    let idle_reasons: Vec<(String, String)> = named_idle
        .iter()
        .map(|(id, state)| (id.clone(), format!("not running (state {state})")))
        .collect();
    let skipped: Vec<&(String, String)> = r.skipped.iter().chain(&idle_reasons).collect();
    if r.started.is_empty() && r.aborted.is_empty() && skipped.is_empty() {
        // Rows left undone on a cluster not reached are said with its error, on stderr.
        if !r.unreached.is_empty() {
            return Ok(());
        }
        if quiet.is_empty() {
            outln!("nothing to {}: no experiment matches {expr}", verb.as_str())?;
        } else {
            outln!(
                "nothing to abort: none of the {} selected experiment{} has a run in flight",
                quiet.len(),
                plural(quiet.len())
            )?;
        }
        return Ok(());
    }
    let lines = r.started.len() + r.aborted.len() + skipped.len();
    if lines <= MAX_LINES {
        for (id, uid) in &r.started {
            outln!("{id}: submitted (run {})", run_no(uid))?;
        }
        for (id, _) in &r.aborted {
            outln!("{id}: abort sent")?;
        }
        for (id, why) in &skipped {
            outln!("{id}: not {}: {why}", past(verb))?;
        }
        return Ok(());
    }
    if !r.started.is_empty() {
        outln!(
            "submitted {} run{}: {}",
            r.started.len(),
            plural(r.started.len()),
            id_list(r.started.iter().map(|(id, _)| id.as_str()))
        )?;
    }
    if !r.aborted.is_empty() {
        outln!(
            "abort sent to {} run{}: {}",
            r.aborted.len(),
            plural(r.aborted.len()),
            id_list(r.aborted.iter().map(|(id, _)| id.as_str()))
        )?;
    }
    // Skipped rows grouped by reason, the biggest groups first; reasons that differ row by
    // row (an invalid row's cell) are counted after the first few.
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (id, why) in &skipped {
        match groups.iter_mut().find(|(w, _)| *w == why.as_str()) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((why, vec![id])),
        }
    }
    groups.sort_by_key(|(_, ids)| std::cmp::Reverse(ids.len()));
    let shown = groups.len().min(MAX_LINES);
    for (why, ids) in &groups[..shown] {
        outln!(
            "{}: not {}: {why}",
            id_list(ids.iter().copied()),
            past(verb)
        )?;
    }
    let rest: usize = groups[shown..].iter().map(|(_, ids)| ids.len()).sum();
    if rest > 0 {
        outln!(
            "not {} for other reasons: {rest} more (`neroman status` shows each row)",
            past(verb)
        )?;
    }
    Ok(())
}

/// State changes the agents reported: one line each for a handful, counts for many (right
/// after a 1,000-run start, or news that came in since the last command).
fn print_news(sync: &crate::project::SyncReport) -> Result<(), OutputError> {
    if sync.changes.len() <= MAX_LINES {
        return print_changes(sync);
    }
    let mut latest: BTreeMap<&str, &str> = BTreeMap::new();
    for (uid, _, state) in &sync.changes {
        latest.insert(uid, state.name().as_str());
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for state in latest.values() {
        *counts.entry(state).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    outln!(
        "news from the agents: {} (`neroman status` shows each)",
        parts.join(", ")
    )
}

/// One line on stderr, redrawn in place: `412/1000 ended (400 finished, 12 other), 4 running, 584 waiting, 73s`.
/// Print state changes: every one into a file or a pipe; on a terminal with many runs (a
/// progress line) only the runs that ended other than `finished`; none under the live table,
/// which shows them.
fn say_changes(
    changes: Vec<(String, String, crate::state::RunState)>,
    progress: bool,
    live: bool,
) -> Result<(), OutputError> {
    let changes: Vec<_> = if progress {
        changes
            .into_iter()
            .filter(|(_, _, st)| st.is_terminal() && st.name() != crate::state::StateName::Finished)
            .collect()
    } else if live {
        return Ok(());
    } else {
        changes
    };
    if changes.is_empty() {
        return Ok(());
    }
    if progress {
        clear_progress();
    }
    print_changes(&crate::project::SyncReport {
        changes,
        ..Default::default()
    })
}

fn draw_progress(states: &[crate::store::RunRow], secs: f64, done: bool) {
    use crate::state::StateName;
    let count = |f: &dyn Fn(&crate::store::RunRow) -> bool| states.iter().filter(|r| f(r)).count();
    let ended = count(&|r| r.state.is_terminal());
    let finished = count(&|r| r.state.name() == StateName::Finished);
    let running = count(&|r| r.state.name() == StateName::Running);
    let line = format!(
        "{ended}/{} ended ({finished} finished, {} other), {running} running, {} waiting, {secs:.0}s",
        states.len(),
        ended - finished,
        states.len() - ended - running
    );
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K{line}{}", if done { "\n" } else { "" });
    let _ = err.flush();
}

fn clear_progress() {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}

pub fn run_no(uid: &str) -> &str {
    uid.rsplit('.').next().unwrap_or(uid)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Ids as a short list: runs of consecutive whole numbers become ranges (`1-998, 1000, x7`),
/// and a very long list is cut with a count.
pub fn id_list<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    // (text, how many ids it stands for)
    let mut parts: Vec<(String, i64)> = Vec::new();
    let mut range: Option<(i64, i64)> = None;
    let flush = |range: &mut Option<(i64, i64)>, parts: &mut Vec<(String, i64)>| {
        if let Some((lo, hi)) = range.take() {
            match hi - lo {
                0 => parts.push((lo.to_string(), 1)),
                1 => {
                    parts.push((lo.to_string(), 1));
                    parts.push((hi.to_string(), 1));
                }
                n => parts.push((format!("{lo}-{hi}"), n + 1)),
            }
        }
    };
    for id in ids {
        match (id.parse::<i64>(), range) {
            (Ok(n), Some((lo, hi))) if hi.checked_add(1) == Some(n) => range = Some((lo, n)),
            (Ok(n), _) => {
                flush(&mut range, &mut parts);
                range = Some((n, n));
            }
            (Err(_), _) => {
                flush(&mut range, &mut parts);
                parts.push((id.to_string(), 1));
            }
        }
    }
    flush(&mut range, &mut parts);
    const SHOWN: usize = 40;
    let mut text: Vec<String> = parts.iter().take(SHOWN).map(|(t, _)| t.clone()).collect();
    let more: i64 = parts.iter().skip(SHOWN).map(|(_, n)| n).sum();
    if more > 0 {
        text.push(format!("… and {more} more"));
    }
    text.join(", ")
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
    let progress = !live
        && runs.len() > MAX_LINES
        && std::io::stdout().is_terminal()
        && std::io::stderr().is_terminal();
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
    // The last state said for each run: news another neroman stored (a watcher running beside
    // this command syncs too) is found in the store and said as well, once. What the store
    // holds now was said already (the command's own report and news).
    let mut said: std::collections::HashMap<String, crate::state::StateName> = runs
        .iter()
        .map(|u| {
            let now = project.store.run(u).ok().flatten().map(|r| r.state.name());
            (u.clone(), now.unwrap_or(crate::state::StateName::Submitted))
        })
        .collect();
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
        // With many runs on a terminal, only this command's runs get a line (the rest a count).
        let from_sync = if progress {
            sync.changes
                .iter()
                .filter(|(uid, _, _)| runs.contains(uid))
                .cloned()
                .collect()
        } else {
            sync.changes.clone()
        };
        say_changes(from_sync, progress, live)?;
        for (uid, _, st) in &sync.changes {
            if let Some(s) = said.get_mut(uid) {
                *s = st.name();
            }
        }
        // The runs' states change with news (read them then: 1,000 runs are 1,000 reads), or
        // when another neroman applied the news; so also every second.
        if first || !sync.changes.is_empty() || states_read.elapsed() > Duration::from_secs(1) {
            states_read = Instant::now();
            states = runs
                .iter()
                .filter_map(|u| project.store.run(u).ok().flatten())
                .collect();
            first = false;
            let missed: Vec<(String, String, crate::state::RunState)> = states
                .iter()
                .filter(|r| said.get(&r.uid).is_some_and(|s| *s != r.state.name()))
                .map(|r| (r.uid.clone(), r.exp_id.clone(), r.state.clone()))
                .collect();
            for (uid, _, st) in &missed {
                said.insert(uid.clone(), st.name());
            }
            say_changes(missed, progress, live)?;
        }
        let done = states.iter().all(|r| r.state.is_terminal());
        if progress {
            draw_progress(&states, started.elapsed().as_secs_f64(), done);
        }
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

#[cfg(test)]
mod tests {
    use super::id_list;

    #[test]
    fn id_lists_are_ranges_and_a_long_one_is_cut() {
        let ids: Vec<String> = (1..=998).chain([1000]).map(|i| i.to_string()).collect();
        assert_eq!(id_list(ids.iter().map(|s| s.as_str())), "1-998, 1000");
        assert_eq!(
            id_list(["3", "4", "x", "7", "8", "9"].into_iter()),
            "3, 4, x, 7-9"
        );
        let sparse: Vec<String> = (0..100).map(|i| (i * 2).to_string()).collect();
        let text = id_list(sparse.iter().map(|s| s.as_str()));
        assert!(text.ends_with(", 78, … and 60 more"), "{text}");
    }
}
