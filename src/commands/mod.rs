//! One file per CLI subcommand. Each opens the project, syncs from mum first (so output is current
//! without a daemon), does its work, and returns an exit code from [`exit`].

pub mod act;
pub mod agents;
pub mod clusters;
pub mod demo;
pub mod init;
pub mod logs;
pub mod notify;
pub mod output;
pub mod results;
pub mod show;
pub mod status;
pub mod watch;

use crate::project::{CoreError, Experiments, Project, SyncReport};
use std::path::Path;

/// Documented exit codes of `neroman`.
pub mod exit {
    pub const OK: i32 = 0;
    /// Something failed: the message says what.
    pub const ERROR: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// `start/restart --wait`: at least one run ended other than `finished`.
    pub const RUNS_FAILED: i32 = 3;
}

/// [`open_synced`] for commands that can work from the state store alone (`status`, `abort`,
/// `logs`): when the workbook cannot be read, say why and go on with the runs the store knows
/// (the last value is then `true`: `status` still exits 1, the workbook being an error).
pub fn open_synced_or_store(
    dir: &Path,
) -> Result<(Project, Experiments, SyncReport, bool), CoreError> {
    let mut project = Project::open(dir)?;
    let sync = project.sync()?;
    report_sync(&sync);
    let mut unreadable = false;
    let exps = match project.read_experiments() {
        Ok(exps) => exps,
        Err(CoreError::Sheet(e)) => {
            unreadable = true;
            let why = crate::util::error_chain(&e);
            eprintln!(
                "neroman: warning: {why}\nneroman: the workbook cannot be read: showing the runs the state store knows (they can be aborted; nothing is started until the workbook is fixed)"
            );
            project.experiments_from_store(&why)?
        }
        Err(e) => return Err(e),
    };
    warn_new_problems(&project, &exps);
    Ok((project, exps, sync, unreadable))
}

fn report_sync(sync: &SyncReport) {
    for (c, why) in &sync.unreachable {
        eprintln!(
            "neroman: warning: cluster {c} not reached, showing what was known before: {why}"
        );
    }
    for (c, why) in &sync.agent_problems {
        eprintln!("neroman: warning: cluster {c}: {why}");
    }
    for c in &sync.restarted_mum {
        tracing::warn!(
            "cluster {c}: neromum was not running; started it again (runs in flight are picked up)"
        );
    }
}

/// Open the project, sync every cluster with runs in flight, read and check the workbook.
pub fn open_synced(dir: &Path) -> Result<(Project, Experiments, SyncReport), CoreError> {
    let mut project = Project::open(dir)?;
    let sync = project.sync()?;
    report_sync(&sync);
    let exps = project.read_experiments()?;
    warn_new_problems(&project, &exps);
    Ok((project, exps, sync))
}

/// Warn about the workbook's problems (invalid rows, clashing headers) the first time a command
/// meets them, not on every command: `status` shows invalid rows in its table and results.xlsx
/// on its problems sheet, and `start` names a selected invalid row when it skips it. A problem
/// fixed and made again is new again.
pub fn warn_new_problems(project: &Project, exps: &Experiments) {
    let seen_path = project.dir.join(crate::project::STATE_DIR).join("warned");
    let seen: std::collections::HashSet<u64> = std::fs::read_to_string(&seen_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.trim(), 16).ok())
        .collect();
    let now: Vec<(u64, String)> = exps
        .warnings
        .iter()
        .cloned()
        .chain(exps.problems().map(|p| p.to_string()))
        .map(|text| (crate::store::fnv(text.as_bytes()), text))
        .collect();
    for (hash, text) in &now {
        if !seen.contains(hash) {
            tracing::warn!("{text}");
        }
    }
    let current: std::collections::HashSet<u64> = now.iter().map(|(h, _)| *h).collect();
    if current != seen {
        let mut lines: Vec<String> = current.iter().map(|h| format!("{h:016x}")).collect();
        lines.sort();
        let mut text = lines.join("\n");
        text.push('\n');
        // Only a memory of what was said: failing to keep it means saying it again.
        if let Err(e) = crate::util::write_atomic(&seen_path, text.as_bytes()) {
            tracing::debug!("{}: {e}", seen_path.display());
        }
    }
}

/// For commands that do not write results.xlsx themselves (`status`, `logs`): when the sync
/// brought news from the agents, bring the workbook up to date too.
pub fn refresh_results(project: &Project, exps: &Experiments, sync: &SyncReport) {
    if !sync.changes.is_empty() || sync.metric_values > 0 {
        results::write_after(project, exps, "the news from the agents is stored");
    }
}

/// Print state changes as they happen, one line each.
pub fn print_changes(sync: &SyncReport) -> Result<(), output::OutputError> {
    for (_, id, state) in &sync.changes {
        let reason = state
            .reason()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        output::outln!("{id}: {}{reason}", state.name().as_str())?;
    }
    Ok(())
}
