//! The watcher daemon, `neroman watch`: the workbook drives everything.
//!
//! Theory of operation. One thread owns the project (config, store connection, mum clients) and
//! runs one event loop; everything else feeds its channel ([`Event`]): the workbook watcher
//! (`sheet::watch`: a save whose content changed, or a workbook that stays broken), one news
//! thread per cluster with runs in flight ([`news`]: mum journaled something), and a stop
//! (SIGINT/SIGTERM, or the caller). Timers are deadlines the loop waits up to.
//!
//! A save is read from the very bytes the watcher hashed; its rows are compared with the store's
//! last snapshot (a row changed under a run in flight is reported, never applied to that run),
//! and the commands typed into status cells are decided by the rule in [`cells`] and acted on
//! through the same path as the CLI (`actions`). News from mum is synced into the store; every
//! second the store is also checked for news another neroman (the CLI) stored. The workbook is
//! then brought up to date ([`writeback`]: state words, reasons, configured columns, under a new
//! revision stamp) when no spreadsheet program holds it open, at most once a second, and
//! `results.xlsx` is rewritten, coalesced (at most every 500 ms, or twice the time the last
//! write took). `.neronet/watch.json` tells `neroman status` what the daemon is doing
//! ([`pidfile`]).

pub mod cells;
mod news;
pub mod pidfile;
mod writeback;

use crate::actions::{act_on_ids, Verb};
use crate::cluster::client::MumClient;
use crate::project::{CoreError, Experiments, Origin, Project, SyncReport};
use crate::sheet::read::StatusCommand;
use crate::sheet::watch::{WatchEvent, WatchMode, WatchOptions, WorkbookWatcher};
use crate::sheet::writeback::WritebackError;
use crate::store::StatusSeen;
use cells::{cell_value, decide, needs_record, Decision};
use nerokid::report::now;
use pidfile::WatchStatus;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

/// What the loop hears.
#[derive(Debug)]
pub enum Event {
    Workbook(WatchEvent),
    /// mum of this cluster journaled something the store does not have yet.
    News(String),
    /// A cluster's news thread lost its connection (a new one is made on the next tick).
    NewsLost {
        cluster: String,
        why: String,
    },
    Stop,
}

/// What stops the daemon (everything else is reported and survived).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Core(#[from] Box<CoreError>),
    #[error(transparent)]
    Pid(#[from] pidfile::PidError),
    #[error(transparent)]
    Watch(#[from] crate::sheet::watch::WatchError),
    #[error("cannot start the daemon's threads")]
    Thread(#[from] std::io::Error),
}

/// The state store key of the last revision stamp the daemon wrote.
const REVISION_KEY: &str = "workbook_revision";
/// Write-backs into the user's workbook: at most this often.
const WRITEBACK_EVERY: Duration = Duration::from_secs(1);
/// Configured values that changed without a state change (a metric, the runtime) are written
/// at most this often, so a busy project does not rewrite the workbook every second.
const VALUES_EVERY: Duration = Duration::from_secs(30);
const RESULTS_EVERY: Duration = Duration::from_millis(500);
/// How often the store is checked for news stored by another neroman, and the lock file for
/// a write-back that waits.
const TICK: Duration = Duration::from_secs(1);
/// Commands that could not be sent (a cluster not reached) are tried again after this.
const RETRY: Duration = Duration::from_secs(30);

/// Run the daemon in this thread until SIGINT or SIGTERM (`neroman watch`). `ready` is called
/// once, after the first read of the workbook was acted on.
pub fn run(dir: &Path, ready: impl FnOnce(&WatchStatus)) -> Result<(), DaemonError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let stop = tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!("signal {sig}: stopping");
                let _ = stop.send(Event::Stop);
            }
        })?;
    serve(dir, tx, rx, ready)
}

/// A daemon running in a thread of this process (the demo, tests).
pub struct InProcess {
    events: Sender<Event>,
    join: std::thread::JoinHandle<Result<(), DaemonError>>,
}

impl InProcess {
    /// Start it and wait until it is ready (or failed).
    pub fn start(dir: &Path) -> Result<InProcess, DaemonError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let dir = dir.to_path_buf();
        let events = tx.clone();
        let join = std::thread::Builder::new()
            .name("neroman-watch".into())
            .spawn(move || {
                serve(&dir, tx, rx, |_| {
                    let _ = ready_tx.send(());
                })
            })?;
        if ready_rx.recv().is_err() {
            // It ended before it was ready: its error says why.
            return match join.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(DaemonError::Thread(std::io::Error::other(
                    "the watcher thread ended at start",
                ))),
            };
        }
        Ok(InProcess { events, join })
    }

    pub fn stop(self) -> Result<(), DaemonError> {
        let _ = self.events.send(Event::Stop);
        self.join
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the watcher thread panicked").into()))
    }
}

fn serve(
    dir: &Path,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    ready: impl FnOnce(&WatchStatus),
) -> Result<(), DaemonError> {
    let project = Project::open(dir).map_err(Box::new)?;
    let held = pidfile::acquire(&project.dir.join(crate::project::STATE_DIR))?;
    // A workbook reached through a symbolic link is saved where the link points (spreadsheet
    // programs replace the target, and put their lock file beside it): watch that file.
    let path = project.workbook_path();
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let watch_cfg = project.config.watch.clone().unwrap_or_default();
    let mut opts = WatchOptions {
        poll: watch_cfg.poll(),
        ..WatchOptions::default()
    };
    if let Some(d) = watch_cfg.debounce() {
        opts.debounce = d;
    }
    let (watcher, wrx) = WorkbookWatcher::start(&path, opts)?;
    let mode = match watcher.mode() {
        WatchMode::Inotify => "inotify".to_string(),
        WatchMode::Poll { interval, why } => {
            format!(
                "polling every {} ({why})",
                crate::util::human_duration(interval.as_secs_f64())
            )
        }
    };
    let forward = tx.clone();
    std::thread::Builder::new()
        .name("workbook".into())
        .spawn(move || {
            for e in wrx {
                if forward.send(Event::Workbook(e)).is_err() {
                    return;
                }
            }
        })?;
    let revision = project
        .store
        .daemon_value(REVISION_KEY)
        .map_err(|e| Box::new(CoreError::from(e)))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let dir_of_project = project.dir.clone();
    // State changes from before this daemon are history, not news for its log.
    let project_seq = project.store.news_mark().map_or(0, |m| m.0);
    // Alerts (email:, chat:): only the watcher sends them (docs/NOTIFY.md).
    let notifier = crate::notify::Notifier::start(&project);
    let status = WatchStatus {
        pid: std::process::id(),
        workbook: path.display().to_string(),
        since: now(),
        mode: mode.clone(),
        ..WatchStatus::default()
    };
    let mut d = Daemon {
        project,
        path,
        held,
        status,
        watcher,
        events: tx,
        exps: None,
        file_hash: None,
        file_rev: 0,
        revision,
        clients: BTreeMap::new(),
        news: BTreeMap::new(),
        news_mark: (0, 0, 0),
        log_seq: project_seq,
        news_checked: Instant::now(),
        config_mtime: config_mtime(&dir_of_project),
        results_due: None,
        results_cost: Duration::ZERO,
        results_last: None,
        writeback_due: None,
        writeback_last: None,
        values_last: Instant::now(),
        retry_at: None,
        lock_said: None,
        ods_said: false,
        notes: HashMap::new(),
        started_as: HashMap::new(),
        notifier,
    };
    tracing::info!("watching {} ({mode})", d.path.display());
    // The workbook as it is now: the watcher only reports changes from here on.
    match std::fs::read(&d.path) {
        Ok(bytes) => {
            let hash = crate::store::fnv(&bytes);
            d.on_save(bytes, hash, SystemTime::now());
        }
        Err(e) => d.workbook_problem(format!("{}: cannot read it: {e}", d.path.display())),
    }
    if let Some(exps) = &d.exps {
        for f in d.project.config.workbook_columns.iter().flatten() {
            let f = f.trim();
            let known = crate::select::BUILTIN_FIELDS
                .iter()
                .any(|b| b.eq_ignore_ascii_case(f))
                || exps.sheet.params.iter().any(|p| p.eq_ignore_ascii_case(f))
                || exps.known_metrics.iter().any(|m| m.eq_ignore_ascii_case(f));
            if !known {
                let names = crate::select::BUILTIN_FIELDS
                    .iter()
                    .copied()
                    .chain(exps.sheet.params.iter().map(String::as_str))
                    .chain(exps.known_metrics.iter().map(String::as_str));
                let hint = crate::select::nearest(f, names)
                    .map(|n| format!("; did you mean {n}?"))
                    .unwrap_or_default();
                tracing::warn!(
                    "workbook_columns in neronet.yaml: {f:?} is no field, parameter or metric a run has printed so far{hint} (its column stays empty until one does)"
                );
            }
        }
    }
    d.sync();
    d.tick();
    d.held.publish(&d.status);
    ready(&d.status);
    loop {
        let timeout = d.next_deadline().saturating_duration_since(Instant::now());
        match rx.recv_timeout(timeout) {
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(Event::Workbook(WatchEvent::Changed { bytes, hash, at })) => {
                // The same content again is nothing new, unless a broken file came in between
                // (the good workbook put back as it was).
                if d.file_hash != Some(hash) || d.status.workbook_problem.is_some() {
                    d.on_save(bytes, hash, at);
                }
            }
            Ok(Event::Workbook(WatchEvent::Broken { why, .. })) => {
                d.workbook_problem(format!("{}: {why}", d.path.display()))
            }
            Ok(Event::News(cluster)) => {
                tracing::debug!("news from cluster {cluster}");
                d.sync();
            }
            Ok(Event::NewsLost { cluster, why }) => {
                tracing::warn!(
                    "cluster {cluster}: lost the connection to its agent ({why}); connecting again"
                );
                d.news.remove(&cluster);
                d.clients.remove(&cluster);
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        d.tick();
    }
    // Leave the workbook and results.xlsx current.
    if d.writeback_due.is_some() {
        d.write_back(true);
    }
    if d.results_due.is_some() {
        d.write_results();
    }
    if let Some(n) = d.notifier.take() {
        n.stop();
    }
    // The watcher goes with the daemon's state (its threads joined), after the lock is released.
    drop(d);
    tracing::info!("stopped");
    Ok(())
}

struct Daemon {
    project: Project,
    path: PathBuf,
    held: pidfile::Held,
    status: WatchStatus,
    watcher: WorkbookWatcher,
    events: Sender<Event>,
    /// The last good read of the workbook (kept for results while the file is broken:
    /// `status.workbook_problem` says so, and nothing is written into it then).
    exps: Option<Experiments>,
    /// The hash of the content last handled (good or not), and its revision stamp.
    file_hash: Option<u64>,
    file_rev: u64,
    /// The last revision stamp written.
    revision: u64,
    clients: BTreeMap<String, MumClient>,
    news: BTreeMap<String, news::NewsThread>,
    news_mark: (i64, i64, i64),
    /// The last state change logged.
    log_seq: i64,
    /// When clusters without a news thread were last looked for (and neronet.yaml's time).
    news_checked: Instant,
    config_mtime: Option<SystemTime>,
    results_due: Option<Instant>,
    results_cost: Duration,
    results_last: Option<Instant>,
    writeback_due: Option<Instant>,
    writeback_last: Option<Instant>,
    values_last: Instant,
    retry_at: Option<Instant>,
    /// What was last said about a lock holder (said again only when it changes).
    lock_said: Option<String>,
    /// Whether the log said that an .ods is not written into.
    ods_said: bool,
    /// id → what changed in its row under the run in flight (shown until that run ends).
    notes: HashMap<String, (String, String)>,
    /// id → (run uid, the row's snapshot when that run started), once the row changed under it.
    started_as: HashMap<String, (String, String)>,
    /// Alerts by e-mail and chat, when configured.
    notifier: Option<crate::notify::Notifier>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn verb_of(c: StatusCommand) -> Option<Verb> {
    match c {
        StatusCommand::Start => Some(Verb::Start),
        StatusCommand::Restart => Some(Verb::Restart),
        StatusCommand::Abort => Some(Verb::Abort),
        StatusCommand::Hold => None,
    }
}

impl Daemon {
    fn next_deadline(&self) -> Instant {
        let tick = Instant::now() + TICK;
        [self.results_due, self.writeback_due, self.retry_at]
            .into_iter()
            .flatten()
            .fold(tick, Instant::min)
    }

    fn workbook_problem(&mut self, why: String) {
        tracing::warn!("{why}; nothing in it is acted on until a save fixes it");
        self.status.workbook_problem = Some(why);
        self.held.publish(&self.status);
    }

    /// A save whose content changed: read it, compare its rows, act on its commands.
    fn on_save(&mut self, bytes: Vec<u8>, hash: u64, at: SystemTime) {
        self.file_hash = Some(hash);
        let at = unix(at);
        let exps = match self.project.read_experiments_bytes(&bytes, at) {
            Ok(e) => e,
            Err(e) => {
                // Never acted on, and never written into: the last good read stays for results.
                self.workbook_problem(crate::util::error_chain(&e));
                return;
            }
        };
        let rev = match crate::sheet::writeback::read_revision_bytes(&self.path, &bytes) {
            Ok(r) => r.unwrap_or(0),
            Err(WritebackError::Unsupported { .. }) => 0,
            Err(e) => {
                tracing::warn!("{e}: the revision stamp is read as absent");
                0
            }
        };
        if self.status.workbook_problem.take().is_some() {
            tracing::info!("{}: readable again", self.path.display());
            self.held.publish(&self.status);
        }
        crate::commands::warn_new_problems(&self.project, &exps);
        tracing::debug!(
            "read {} rows of {} (revision {rev})",
            exps.list.len(),
            self.path.display()
        );
        self.diff_rows(&exps);
        self.file_rev = rev;
        self.exps = Some(exps);
        drop(bytes);
        release_freed_memory();
        self.apply_commands(at);
        self.want_writeback();
        self.want_results();
    }

    /// Compare each row with its snapshot in the store: a change under a run in flight is
    /// reported (it applies to the next run, never to the one going on).
    fn diff_rows(&mut self, exps: &Experiments) {
        let (old, latest) = match (
            self.project.store.row_snapshots(),
            self.project.store.latest_runs(),
        ) {
            (Ok(o), Ok(l)) => (o, l),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("state store: {}", crate::util::error_chain(&e));
                return;
            }
        };
        let mut changed: Vec<(&str, String)> = Vec::new();
        for e in exps
            .list
            .iter()
            .filter(|e| e.origin == Origin::Row && !e.row.id.is_empty())
        {
            let snap = snapshot(e);
            let text = serde_json::to_string(&snap).expect("snapshot serializes");
            let Some(before) = old.get(&e.row.id) else {
                changed.push((&e.row.id, text));
                continue;
            };
            if *before == text {
                continue;
            }
            if let Some(run) = latest.get(&e.row.id).filter(|r| !r.state.is_terminal()) {
                // Compared with the row as the run started (the first snapshot that differed).
                let original = match self.started_as.get(&e.row.id) {
                    Some((uid, orig)) if *uid == run.uid => orig.clone(),
                    _ => before.clone(),
                };
                if original == text {
                    if self.notes.remove(&e.row.id).is_some() {
                        tracing::info!(
                            "row {} (id {}): back to what run {} started with",
                            e.row.row,
                            e.row.id,
                            run.run_no
                        );
                    }
                } else {
                    let was: BTreeMap<String, String> =
                        serde_json::from_str(&original).unwrap_or_default();
                    let what = describe_change(&was, &snap);
                    let note = format!(
                        "changed while run {} is {}: {what}; the run keeps what it started with, the next run uses the new values",
                        run.run_no,
                        run.state.name().as_str()
                    );
                    tracing::warn!("row {} (id {}): {note}", e.row.row, e.row.id);
                    self.notes.insert(e.row.id.clone(), (run.uid.clone(), note));
                }
                self.started_as
                    .insert(e.row.id.clone(), (run.uid.clone(), original));
            }
            changed.push((&e.row.id, text));
        }
        if let Err(e) = self.project.store.set_row_snapshots(&changed) {
            tracing::error!("state store: {}", crate::util::error_chain(&e));
        }
    }

    /// Decide about every status cell of the last read and act on the new commands.
    fn apply_commands(&mut self, at: f64) {
        let Some(exps) = self.exps.take() else {
            return;
        };
        let rev = self.file_rev;
        let baselines = match self.project.store.status_baselines(rev) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("state store: {}", crate::util::error_chain(&e));
                self.exps = Some(exps);
                return;
            }
        };
        let latest = self.project.store.latest_runs().unwrap_or_default();
        let gone = self.project.store.ids_gone_from_rows().unwrap_or_default();
        let mut records: Vec<(String, StatusSeen)> = Vec::new();
        let mut fire: BTreeMap<u8, (Verb, Vec<String>)> = BTreeMap::new();
        // Rows whose queued run is cancelled because `hold` was typed (not a command to record).
        let mut held: Vec<String> = Vec::new();
        for e in &exps.list {
            let id = &e.row.id;
            if id.is_empty() || e.origin != Origin::Row {
                continue;
            }
            let b = baselines.get(id);
            let value = cell_value(&e.row.status);
            let seen = |consumed: bool| StatusSeen {
                value: value.clone(),
                consumed,
                why: None,
                rev,
                at,
            };
            // A row whose id was changed in place (its old id is gone, last seen on this very
            // row) keeps what its status cell's command did under the old id.
            let renamed = b.is_none().then(|| {
                gone.get(&e.row.row)
                    .into_iter()
                    .flatten()
                    .filter_map(|old| baselines.get(old).map(|s| (old, s)))
                    .find(|(_, s)| s.consumed && s.value == value)
            });
            if let Some(Some((old, s))) = renamed {
                if matches!(e.row.status, crate::sheet::read::StatusCell::Command(_)) {
                    tracing::info!(
                        "row {} (id {id}, was {old}): `{value}` was acted on under id {old}; not again",
                        e.row.row
                    );
                    records.push((
                        id.clone(),
                        StatusSeen {
                            value: value.clone(),
                            consumed: true,
                            why: s.why.clone(),
                            rev,
                            at,
                        },
                    ));
                    continue;
                }
            }
            match decide(&e.row.status, b, e.is_valid()) {
                Decision::Fire(c) => {
                    if let Some(verb) = verb_of(c) {
                        // Aborts first, so an abort and a restart in one save free slots first.
                        let order = match verb {
                            Verb::Abort => 0,
                            Verb::Restart => 1,
                            Verb::Start => 2,
                        };
                        fire.entry(order)
                            .or_insert((verb, Vec::new()))
                            .1
                            .push(id.clone());
                    }
                }
                Decision::Wait(c) => {
                    let new = seen(false);
                    if needs_record(b, &new) {
                        tracing::info!(
                            "row {} (id {id}): `{}` waits until the row is valid: {}",
                            e.row.row,
                            cell_value(&crate::sheet::read::StatusCell::Command(c)),
                            e.problems
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        );
                        records.push((id.clone(), new));
                    }
                }
                Decision::Nothing => {
                    let kept = b.is_some_and(|b| b.consumed && b.value == value);
                    if !kept {
                        let mut new = seen(false);
                        // A reason stays with the cell the tool wrote after the command.
                        if let Some(b) = b.filter(|b| b.value == value && b.why.is_some()) {
                            new.why = b.why.clone();
                            new.at = b.at;
                        }
                        // `hold` typed over a row whose run waits for a slot: it never starts.
                        if e.row.status.is(StatusCommand::Hold)
                            && b.is_none_or(|b| b.value != value)
                            && latest.get(id).is_some_and(|r| {
                                matches!(
                                    r.state.name(),
                                    crate::state::StateName::Submitted
                                        | crate::state::StateName::Queued
                                )
                            })
                        {
                            fire.entry(0)
                                .or_insert((Verb::Abort, Vec::new()))
                                .1
                                .push(id.clone());
                            held.push(id.clone());
                        }
                        if needs_record(b, &new) {
                            records.push((id.clone(), new));
                        }
                    }
                }
            }
        }
        for (_, (verb, ids)) in fire {
            let (on_hold, typed): (Vec<&String>, Vec<&String>) =
                ids.iter().partition(|i| held.contains(i));
            if !typed.is_empty() {
                tracing::info!(
                    "workbook: {} {}",
                    verb.as_str(),
                    crate::commands::act::id_list(typed.iter().map(|s| s.as_str()))
                );
            }
            if !on_hold.is_empty() {
                tracing::info!(
                    "workbook: hold over a run waiting for a slot: cancelling the queued runs of {}",
                    crate::commands::act::id_list(on_hold.iter().map(|s| s.as_str()))
                );
            }
            match act_on_ids(&mut self.project, &exps, verb, &ids) {
                Ok((report, sync)) => {
                    let mut why: HashMap<&str, String> = HashMap::new();
                    for (id, uid) in &report.started {
                        tracing::info!("{id}: run {} submitted", crate::commands::act::run_no(uid));
                    }
                    for (id, _) in &report.aborted {
                        tracing::info!("{id}: abort sent");
                    }
                    for (id, w) in &report.skipped {
                        tracing::info!("{id}: {} not done: {w}", verb.as_str());
                        let hint = if verb == Verb::Start && w.starts_with("already ran") {
                            w.replace("use restart", "type restart")
                        } else {
                            w.clone()
                        };
                        why.insert(id.as_str(), format!("{}: {hint}", verb.as_str()));
                    }
                    for (id, state) in &report.idle {
                        why.insert(id.as_str(), format!("abort: nothing in flight ({state})"));
                    }
                    // A cluster not reached: its rows' commands wait (not consumed), tried
                    // again after RETRY, with the reason in their neronet.why.
                    let mut waiting: HashMap<&str, String> = HashMap::new();
                    for (cluster, left, err) in &report.unreached {
                        tracing::warn!(
                            "workbook: {} on cluster {cluster}: {err}; trying again in {} s",
                            verb.as_str(),
                            RETRY.as_secs()
                        );
                        self.retry_at = Some(Instant::now() + RETRY);
                        for id in left {
                            waiting.insert(
                                id.as_str(),
                                format!(
                                    "{} waits: cluster {cluster}: {err}; trying again every {} s",
                                    verb.as_str(),
                                    RETRY.as_secs()
                                ),
                            );
                        }
                    }
                    self.note_sync(&sync);
                    for id in ids.iter().filter(|i| !held.contains(i)) {
                        let e = exps.get(id);
                        let value = e.map(|e| cell_value(&e.row.status)).unwrap_or_default();
                        let (consumed, reason) = match waiting.remove(id.as_str()) {
                            Some(w) => (false, Some(w)),
                            None => (true, why.get(id.as_str()).cloned()),
                        };
                        records.push((
                            id.clone(),
                            StatusSeen {
                                value,
                                consumed,
                                why: reason,
                                rev,
                                at,
                            },
                        ));
                    }
                }
                Err(e) => {
                    // Not consumed: tried again after RETRY (and at the next save).
                    tracing::warn!(
                        "workbook: {} {}: {}; trying again in {} s",
                        verb.as_str(),
                        ids.join(","),
                        crate::util::error_chain(&e),
                        RETRY.as_secs()
                    );
                    self.retry_at = Some(Instant::now() + RETRY);
                }
            }
        }
        if let Err(e) = self.project.store.note_status(rev, &records) {
            tracing::error!("state store: {}", crate::util::error_chain(&e));
        }
        self.exps = Some(exps);
        self.ensure_news();
    }

    /// Log every state change stored since the last look, whoever stored it (this daemon's
    /// sync, or a CLI command beside it).
    fn log_changes(&mut self) {
        match self.project.store.state_changes_after(self.log_seq) {
            Ok(changes) => {
                for (seq, id, state, detail) in changes {
                    let reason = detail.map(|r| format!(" ({r})")).unwrap_or_default();
                    tracing::info!("{id}: {state}{reason}");
                    self.log_seq = seq;
                }
            }
            Err(e) => tracing::error!("state store: {}", crate::util::error_chain(&e)),
        }
    }

    fn note_sync(&mut self, sync: &SyncReport) {
        self.log_changes();
        let unreachable: Vec<String> = sync.unreachable.iter().map(|(c, _)| c.clone()).collect();
        for (c, why) in &sync.unreachable {
            if !self.status.unreachable.contains(c) {
                tracing::warn!("cluster {c} not reached: {why}");
            }
        }
        if unreachable != self.status.unreachable {
            self.status.unreachable = unreachable;
            self.held.publish(&self.status);
        }
        if !sync.changes.is_empty() {
            self.want_writeback();
        }
        if !sync.changes.is_empty() || sync.metric_values > 0 {
            self.want_results();
        }
    }

    /// Bring the store up to date from the clusters with runs in flight (held connections).
    fn sync(&mut self) {
        let mut clients = std::mem::take(&mut self.clients);
        let held_before: Vec<String> = clients.keys().cloned().collect();
        let mut r = self.project.sync_held(&mut clients, Duration::ZERO);
        // A held connection the agent closed meanwhile (it ends idle ones) is no news: the
        // clusters it failed for are tried once more on a new connection before any warning.
        if let Ok(first) = &r {
            if first
                .unreachable
                .iter()
                .any(|(c, _)| held_before.contains(c))
            {
                if let Ok(mut again) = self.project.sync_held(&mut clients, Duration::ZERO) {
                    let mut changes = first.changes.clone();
                    changes.append(&mut again.changes);
                    again.changes = changes;
                    again.metric_values += first.metric_values;
                    r = Ok(again);
                }
            }
        }
        self.clients = clients;
        match r {
            Ok(sync) => self.note_sync(&sync),
            Err(e) => tracing::error!("sync: {}", crate::util::error_chain(&e)),
        }
        // Tell each news thread where the store is now.
        let mut gone = Vec::new();
        for (cluster, t) in &self.news {
            let epoch = self.clients.get(cluster).map(|c| c.hello.epoch.clone());
            let point = self.project.store.sync_point(cluster).ok().flatten();
            let (epoch, seq) = match (point, epoch) {
                (Some((e, s)), _) => (e, s),
                (None, Some(e)) => (e, 0),
                (None, None) => (String::new(), 0),
            };
            if !t.synced(epoch, seq) {
                gone.push(cluster.clone());
            }
        }
        for c in gone {
            self.news.remove(&c);
        }
        // The store's news mark is left for the tick: what another neroman stored meanwhile
        // (its own sync, not ours) must still be written back.
    }

    /// A news thread for every cluster with runs in flight; none for the others.
    fn ensure_news(&mut self) {
        let active = match self.project.active_clusters() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("state store: {}", crate::util::error_chain(&e));
                return;
            }
        };
        self.news.retain(|c, _| active.contains(c));
        for cluster in active {
            if self.news.contains_key(&cluster) {
                continue;
            }
            let client = match self.project.connect(&cluster) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("cluster {cluster}: {}", crate::util::error_chain(&e));
                    continue;
                }
            };
            let point = match self.project.store.sync_point(&cluster) {
                Ok(Some(p)) => p,
                _ => (client.hello.epoch.clone(), 0),
            };
            match news::spawn(cluster.clone(), client, point, self.events.clone()) {
                Ok(t) => {
                    self.news.insert(cluster, t);
                }
                Err(e) => tracing::error!("cannot start the news thread of {cluster}: {e}"),
            }
        }
    }

    /// The timers: store news from another neroman, commands to retry, the write-back, results.
    fn tick(&mut self) {
        let now = Instant::now();
        match self.project.store.news_mark() {
            Ok(mark) if mark != self.news_mark => {
                self.news_mark = mark;
                self.log_changes();
                // Someone (the CLI) stored news or started runs: show it, and follow them.
                self.want_writeback();
                self.want_results();
                self.ensure_news();
            }
            Ok(_) => {}
            Err(e) => tracing::error!("state store: {}", crate::util::error_chain(&e)),
        }
        if now.duration_since(self.news_checked) >= Duration::from_secs(10) {
            // A cluster whose news thread could not connect, or lost it: try again.
            self.news_checked = now;
            self.ensure_news();
            let mtime = config_mtime(&self.project.dir);
            if mtime != self.config_mtime {
                self.config_mtime = mtime;
                tracing::warn!(
                    "neronet.yaml changed: this watcher keeps the configuration it started with; restart it (`neroman watch --stop`, then `neroman watch --detach`) to use the new one"
                );
            }
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.sync();
            self.apply_commands(nerokid::report::now());
            self.want_writeback();
        }
        if self.writeback_due.is_some_and(|t| t <= now) {
            self.write_back(false);
        } else if self.writeback_due.is_none() && self.values_last.elapsed() >= VALUES_EVERY {
            // Configured values (runtime, metrics) move without a state change.
            if self
                .project
                .config
                .workbook_columns
                .as_ref()
                .is_some_and(|c| !c.is_empty())
            {
                self.values_last = now;
                self.write_back(true);
            }
        }
        if self.results_due.is_some_and(|t| t <= now) {
            self.write_results();
        }
        if let Some(n) = &mut self.notifier {
            n.tick(&mut self.project.store, self.exps.as_ref());
        }
    }

    /// Say (once per holder) that the write-back waits for a spreadsheet program.
    fn lock_seen(&mut self, holder: &crate::sheet::writeback::LockInfo) {
        let who = holder.who();
        if self.lock_said.as_deref() != Some(&who) {
            tracing::info!("{}: the write-back waits: {who}", self.path.display());
            self.lock_said = Some(who.clone());
            self.status.writeback_waits = Some(who);
            self.status.writeback_waits_since = holder.since.map(unix);
            self.held.publish(&self.status);
        }
    }

    fn want_writeback(&mut self) {
        if self.writeback_due.is_none() {
            let at = self
                .writeback_last
                .map_or(Instant::now(), |t| t + WRITEBACK_EVERY)
                .max(Instant::now());
            self.writeback_due = Some(at);
        }
    }

    fn want_results(&mut self) {
        if self.results_due.is_none() {
            let gap = RESULTS_EVERY.max(self.results_cost * 2);
            let at = self
                .results_last
                .map_or(Instant::now(), |t| t + gap)
                .max(Instant::now());
            self.results_due = Some(at);
        }
    }

    fn write_results(&mut self) {
        self.results_due = None;
        let Some(exps) = &self.exps else {
            return;
        };
        let started = Instant::now();
        let notes: Vec<crate::sheet::results::ProblemRow> = self
            .notes
            .iter()
            .map(|(id, (_, n))| crate::sheet::results::ProblemRow {
                place: exps
                    .get(id)
                    .map(|e| e.row.id_cell.clone())
                    .unwrap_or_default(),
                id: Some(id.clone()),
                message: n.clone(),
            })
            .collect();
        match crate::view::write_results_noting(&self.project, exps, notes) {
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "{} not written: {}",
                self.project.results_path().display(),
                crate::util::error_chain(&e)
            ),
        }
        self.results_cost = started.elapsed();
        release_freed_memory();
        self.results_last = Some(Instant::now());
    }

    /// Patch states, reasons and configured values into the workbook, unless it is open in a
    /// spreadsheet program (then it waits) or changed since it was read (then the new save is
    /// read first). `values` also writes configured values that changed on their own.
    fn write_back(&mut self, values: bool) {
        self.writeback_due = None;
        let (Some(exps), Some(hash)) = (&self.exps, self.file_hash) else {
            return;
        };
        if self.status.workbook_problem.is_some() {
            // The file on disk is not the workbook last read well: never write into it.
            return;
        }
        if let Some(holder) = crate::sheet::writeback::lock_holder(&self.path) {
            self.lock_seen(&holder);
            // Checked again on the next tick.
            self.writeback_due = Some(Instant::now() + TICK);
            return;
        }
        if self.lock_said.take().is_some() {
            tracing::info!("{}: closed; writing states back", self.path.display());
            self.status.writeback_waits = None;
            self.status.writeback_waits_since = None;
            self.held.publish(&self.status);
        }
        let snap = match crate::view::Snapshot::take(&self.project) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("state store: {}", crate::util::error_chain(&e));
                return;
            }
        };
        let cands = snap.candidates(exps, None);
        // Reasons about a run in flight last as long as that run.
        self.notes.retain(|id, (uid, _)| {
            cands.iter().any(|c| {
                c.exp.row.id == *id
                    && c.run
                        .is_some_and(|r| r.uid == *uid && !r.state.is_terminal())
            })
        });
        let notes: HashMap<String, String> = self
            .notes
            .iter()
            .map(|(id, (_, n))| (id.clone(), n.clone()))
            .collect();
        let baselines = match self.project.store.status_baselines(self.file_rev) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("state store: {}", crate::util::error_chain(&e));
                return;
            }
        };
        let columns = self
            .project
            .config
            .workbook_columns
            .clone()
            .unwrap_or_default();
        let rev = self.revision.max(self.file_rev) + 1;
        let plan = writeback::plan(exps, &cands, &baselines, &notes, &columns, rev);
        drop(cands);
        if plan.cells.is_empty() || (!plan.states_change && !values) {
            return;
        }
        if !crate::sheet::writeback::supports(&self.path) {
            if !self.ods_said {
                tracing::info!(
                    "{}: states are not written into an .ods (only .xlsx); they show in results.xlsx and `neroman status`",
                    self.path.display()
                );
                self.ods_said = true;
            }
            return;
        }
        // Intent first: the revision and what its cells hold are stored before the file is
        // replaced, so the write-back can never read as the user's edit.
        let stored = self
            .project
            .store
            .set_daemon_value(REVISION_KEY, &rev.to_string())
            .and_then(|_| self.project.store.note_status(rev, &plan.records));
        if let Err(e) = stored {
            tracing::error!("state store: {}", crate::util::error_chain(&e));
            return;
        }
        self.revision = rev;
        let sheet = exps.sheet.sheet.clone();
        match crate::sheet::writeback::patch_cells_over(&self.path, &sheet, &plan.cells, rev, hash)
        {
            Ok(report) => {
                // Our own write: known, so it is not read again, and a save that puts back
                // what was there before is a change.
                self.watcher.wrote(report.written_hash);
                self.file_hash = Some(report.written_hash);
                self.file_rev = rev;
                if let Some(exps) = &mut self.exps {
                    apply_plan(exps, &plan);
                }
                tracing::debug!(
                    "wrote {} cells back (revision {rev}): {}",
                    plan.cells.len(),
                    plan.cells
                        .iter()
                        .map(|(c, v)| format!("{c}={v:?}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                self.writeback_last = Some(Instant::now());
                self.values_last = Instant::now();
            }
            Err(WritebackError::Changed { .. }) => {
                // She saved meanwhile: that save is read first (the watcher reports it).
                tracing::debug!("the workbook changed before the write-back; reading it first");
                self.writeback_due = Some(Instant::now() + TICK);
            }
            Err(WritebackError::Locked { holder, .. }) => {
                self.lock_seen(&holder);
                self.writeback_due = Some(Instant::now() + TICK);
            }
            Err(e) => {
                tracing::warn!("write-back: {}", crate::util::error_chain(&e));
                self.writeback_last = Some(Instant::now());
            }
        }
    }
}

/// What the workbook holds after a write-back, in the last read of it: the status cells and
/// the tool's columns as written (the rest did not change).
fn apply_plan(exps: &mut Experiments, plan: &writeback::Plan) {
    let sheet = &mut exps.sheet;
    for (cell, value) in &plan.cells {
        if cell.row == 0 {
            if let crate::sheet::writeback::CellValue::Text(name) = value {
                sheet
                    .tool_columns
                    .insert(name.to_ascii_lowercase(), cell.col);
                sheet.next_col = sheet.next_col.max(cell.col + 1);
            }
        }
    }
    let tool_name = |col: u32| {
        sheet
            .tool_columns
            .iter()
            .find(|(_, c)| **c == col)
            .map(|(n, _)| n.clone())
    };
    let text = |v: &crate::sheet::writeback::CellValue| match v {
        crate::sheet::writeback::CellValue::Text(t) => t.clone(),
        crate::sheet::writeback::CellValue::Number(n) => nerokid::expr::format_number(*n),
        _ => String::new(),
    };
    let by_row: HashMap<u32, usize> = exps
        .list
        .iter()
        .enumerate()
        .filter(|(_, e)| e.row.row > 0)
        .map(|(i, e)| (e.row.row - 1, i))
        .collect();
    for (cell, value) in plan.cells.iter().filter(|(c, _)| c.row > 0) {
        let Some(&i) = by_row.get(&cell.row) else {
            continue;
        };
        let row = &mut exps.list[i].row;
        let t = text(value);
        if cell.col == sheet.status_col {
            row.status = crate::sheet::read::StatusCell::parse(&t);
        } else if let Some(name) = tool_name(cell.col) {
            if t.is_empty() {
                row.tool_values.remove(&name);
            } else {
                row.tool_values.insert(name, t);
            }
        }
    }
}

/// Give the memory a big read or write freed back to the system: glibc keeps freed heap for
/// reuse, so a daemon idle after reading 10,000 rows would keep that peak resident.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn config_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(crate::config::CONFIG_FILE))
        .and_then(|m| m.modified())
        .ok()
}

/// What a row holds that its runs use (not the status cell, not the tool's columns).
fn snapshot(e: &crate::project::Experiment) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("command", &e.row.command),
        ("cluster", &e.row.cluster),
        ("abort_when", &e.row.abort_when),
    ] {
        if let Some(v) = v {
            m.insert(k.to_string(), v.clone());
        }
    }
    for (k, v) in &e.row.warden_options {
        m.insert(k.clone(), v.clone());
    }
    for (k, v) in &e.row.params {
        m.insert(k.clone(), v.text.clone());
    }
    m
}

/// `lr 0.1 → 0.2, batch 32 → (empty)`.
fn describe_change(was: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    let empty = String::from("(empty)");
    for k in was
        .keys()
        .chain(now.keys().filter(|k| !was.contains_key(*k)))
    {
        let (a, b) = (was.get(k).unwrap_or(&empty), now.get(k).unwrap_or(&empty));
        if a != b {
            parts.push(format!("{k} {a} → {b}"));
        }
    }
    parts.join(", ")
}
