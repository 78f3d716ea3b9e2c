//! neromum, the per-(host, user, workdir) agent.
//!
//! Theory of operation. mum listens on a unix socket (mode 0600) in its workdir (a remote
//! neroman reaches it through `neromum bridge` over ssh), accepts runs from neroman, writes each
//! run directory, hands jobs to its [`Warden`] when a slot is free, tails every kid's event log,
//! and journals all it learns. Everything mum decides is journaled *before* it acts on the world
//! (intent first): a run is `queued` before the submit is answered, `launching` before the
//! warden is asked, and a kid event's byte offset travels in the same entry as the event, so a
//! kill -9 at any line replays into exactly-once launches and events. A journal that cannot be
//! written (disk full) stops progress, not correctness: nothing in memory advances past what was
//! journaled, the error is reported in every hello and sync reply, and work resumes once space
//! returns.
//!
//! Threads: one main loop owns the rounds (`tick`: plan under the state lock, call the warden
//! and read kid logs outside it, journal and apply under it); one thread per connection answers
//! requests; long-polls wait on a condition variable signalled by every journal append. The
//! loop wakes when a kid exits or a run is submitted, else every `tick`. It stops when idle, on
//! SIGTERM/SIGINT, or when asked (`shutdown`); `serve` then returns.

mod abort;
mod journal;
pub mod kids;
pub mod local;
mod read_log;
pub mod sge;
pub mod slurm;
mod submit;
mod sync;
pub mod warden;

use crate::cluster::protocol::*;
use crate::cluster::socket_path;
use crate::util::failpoint;
use journal::{Journal, Replay, SnapRun, Snapshot};
pub use journal::{JournalError, JOURNAL_FORMAT};
use nerokid::report::{KidEvent, EVENTS_FILE};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use warden::{Found, JobRequest, JobState, Warden, WardenSettings};

/// A connection that sends nothing for this long is dropped (a hung bridge must not keep mum).
const CONNECTION_IDLE: Duration = Duration::from_secs(120);
/// How long after an abort sent to the kid directly the warden cancels the job anyway (beyond
/// the kid's grace, read from its run directory).
const ABORT_BACKSTOP: Duration = Duration::from_secs(20);
/// The shortest time between two rounds woken by kids' reports.
const MIN_ROUND: Duration = Duration::from_millis(20);
/// Compact when this many entries are in the journal and acknowledged.
const COMPACT_AFTER: u64 = 50_000;

/// How mum is started (`neromum serve`).
#[derive(Debug, Clone)]
pub struct MumOptions {
    pub workdir: PathBuf,
    /// The nerokid binary the job scripts call.
    pub kid_binary: PathBuf,
    /// Exit after this long with no runs going and no client connected.
    pub idle_exit: Duration,
    /// How often kid logs are tailed (slots are refilled as soon as a kid exits).
    pub tick: Duration,
    pub max_parallel: u32,
    /// Which warden runs the jobs.
    pub warden: WardenSettings,
    /// Where kids report over TCP (`auto`, `off`, an address or an interface name).
    pub listen: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MumError {
    #[error("another neromum already serves {0}")]
    AlreadyRunning(PathBuf),
    #[error("nerokid not found at {0} (job scripts need it; build the workspace or pass --kid)")]
    NoKid(PathBuf),
    #[error("{about} {path}")]
    Io {
        about: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Queued,
    /// "launching" is journaled; the warden has not confirmed yet.
    Launching,
    /// Handed to the warden. `journaled` is false while the `launched` entry still waits to be
    /// written (a failed append, or a launch reconciled on replay).
    Launched {
        job: String,
        journaled: bool,
    },
    Ended,
}

#[derive(Debug, Clone)]
struct RunRecord {
    run_dir: PathBuf,
    phase: Phase,
    /// How far into the kid's `events.jsonl` mum has journaled.
    kid_offset: u64,
    /// The job's process group, once the kid reported it started.
    job_pgid: Option<i32>,
    /// An abort arrived while the launch was in progress: cancel once launched.
    abort_requested: bool,
    /// When mum learned that the kid started (this process's clock; after a restart, the
    /// restart): a warden that lists the job as queued *after* this has requeued it.
    started_seen: Option<Instant>,
    /// An abort went to the kid directly: the warden cancels the job at this time unless it
    /// ended (the backstop).
    cancel_due: Option<Instant>,
}

impl RunRecord {
    fn new(run_dir: PathBuf, phase: Phase) -> RunRecord {
        RunRecord {
            run_dir,
            phase,
            kid_offset: 0,
            job_pgid: None,
            abort_requested: false,
            started_seen: None,
            cancel_due: None,
        }
    }

    fn request(&self, run: &str) -> JobRequest {
        JobRequest {
            run: run.to_string(),
            run_dir: self.run_dir.clone(),
        }
    }
}

struct State {
    opts: MumOptions,
    journal: Journal,
    runs: HashMap<String, RunRecord>,
    queue: VecDeque<String>,
    connections: usize,
    last_activity: Instant,
    /// Why mum cannot make progress right now: its journal cannot be written (cleared by the
    /// next append that succeeds) ...
    health: Option<String>,
    /// ... or a run directory cannot be written (cleared when one can).
    workdir_health: Option<String>,
    /// Kids cannot report over TCP as `listen:` asks (their logs are tailed instead).
    listen_health: Option<String>,
    /// Per project: every entry up to this one is stored by it.
    acks: BTreeMap<String, u64>,
    /// Run directory name → run key (kids name their run by its directory); rebuilt when a
    /// name is missing.
    by_dir: HashMap<String, String>,
    served_first: bool,
}

/// Asks the main loop for a round now instead of at the next tick (a kid exited, a run was
/// submitted, a signal came). Shared with the warden's reaper threads.
#[derive(Default)]
pub struct Waker {
    /// (a round is asked for, kids' reports arrived)
    pending: Mutex<(bool, bool)>,
    signal: Condvar,
}

impl Waker {
    pub fn wake(&self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
        self.signal.notify_all();
    }

    /// Kids reported lines: journal them (a whole round is not needed for that).
    pub fn wake_reports(&self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.signal.notify_all();
    }

    /// Wait until woken or `timeout` passed; either way the wake-ups are used up. Returns
    /// (a round was asked for, reports arrived).
    fn wait(&self, timeout: Duration) -> (bool, bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.0 && !pending.1 {
            pending = self
                .signal
                .wait_timeout(pending, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::take(&mut *pending)
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled after every journal append: long-polls wait on it.
    appended: Condvar,
    waker: Arc<Waker>,
    warden: Mutex<Box<dyn Warden>>,
    /// The warden's own queue takes every run (see [`Warden::queues_itself`]).
    queues_itself: bool,
    /// Kid exit records wait for the warden's word (see [`Warden::holds_exit`]).
    holds_exit: bool,
    /// The warden's name for reasons (`requeued by SLURM`).
    warden_name: &'static str,
    /// When a round last looked at every launched run (see `tick`).
    last_full_round: Mutex<Instant>,
    /// Where kids report over TCP (set by `serve`; absent with `listen: off`, or in-process).
    kids: std::sync::OnceLock<Arc<kids::KidListener>>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the agent down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn warden(&self) -> MutexGuard<'_, Box<dyn Warden>> {
        self.warden.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        self.waker.wake();
    }
}

/// A mum serving one workdir, with its lock held. Tests drive it in-process through
/// [`Mum::handle`] and [`Mum::tick`]; `neromum serve` calls [`Mum::serve`].
pub struct Mum {
    shared: Arc<Shared>,
    _lock: std::fs::File,
}

/// Run mum with the local warden until it goes idle or is stopped. Blocks.
pub fn serve(opts: MumOptions) -> Result<(), MumError> {
    Mum::open_local(opts)?.serve()
}

impl Mum {
    /// Lock the workdir, replay the journal, reconcile interrupted launches; the warden the
    /// options name (`local` unless told otherwise).
    pub fn open_local(opts: MumOptions) -> Result<Mum, MumError> {
        let waker = Arc::new(Waker::default());
        let warden: Box<dyn Warden> = match &opts.warden {
            WardenSettings::Local => {
                let w = Arc::clone(&waker);
                Box::new(local::LocalWarden::new(Arc::new(move || w.wake())))
            }
            WardenSettings::Slurm {
                poll_interval,
                array_max,
            } => Box::new(slurm::SlurmWarden::new(slurm::SlurmSettings {
                workdir: opts.workdir.clone(),
                poll_interval: *poll_interval,
                array_max: *array_max,
            })),
            WardenSettings::Sge {
                poll_interval,
                array_max,
            } => Box::new(sge::SgeWarden::new(sge::SgeSettings {
                workdir: opts.workdir.clone(),
                poll_interval: *poll_interval,
                array_max: *array_max,
            })),
        };
        Mum::open_with(opts, warden, waker)
    }

    pub fn open(opts: MumOptions, warden: Box<dyn Warden>) -> Result<Mum, MumError> {
        Mum::open_with(opts, warden, Arc::default())
    }

    fn open_with(
        opts: MumOptions,
        warden: Box<dyn Warden>,
        waker: Arc<Waker>,
    ) -> Result<Mum, MumError> {
        let workdir = opts.workdir.clone();
        if !local::is_executable(&opts.kid_binary) {
            return Err(MumError::NoKid(opts.kid_binary.clone()));
        }
        let io = |about, path: &Path| {
            let path = path.to_path_buf();
            move |err| MumError::Io { about, path, err }
        };
        std::fs::create_dir_all(workdir.join("runs")).map_err(io("create", &workdir))?;
        let _ = std::fs::set_permissions(&workdir, std::fs::Permissions::from_mode(0o700));
        // A mum handing over (an upgrade) releases the lock within moments: wait a little.
        let lock = local::lock_workdir_wait(&workdir, Duration::from_secs(5))
            .map_err(io("lock", &workdir))?
            .ok_or_else(|| MumError::AlreadyRunning(workdir.clone()))?;

        let mut runs: HashMap<String, RunRecord> = HashMap::new();
        let mut queue = VecDeque::new();
        let (journal, _) = Journal::open(&workdir, |item| match item {
            Replay::Snapshot(snap) => {
                for r in snap.runs {
                    let phase = match (r.phase.as_str(), r.job) {
                        ("queued", _) => Phase::Queued,
                        ("launching", _) => Phase::Launching,
                        ("launched", Some(job)) => Phase::Launched {
                            job,
                            journaled: true,
                        },
                        _ => Phase::Ended,
                    };
                    let mut rec = RunRecord::new(PathBuf::from(r.run_dir), phase);
                    rec.kid_offset = r.kid_offset;
                    rec.job_pgid = r.job_pgid;
                    rec.abort_requested = r.abort_requested;
                    runs.insert(r.run, rec);
                }
                queue.extend(snap.queue);
            }
            Replay::Entry(e) => replay(&mut runs, &mut queue, e),
        })?;
        let acks: BTreeMap<String, u64> = std::fs::read(workdir.join("acks.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        queue.retain(|r| matches!(runs.get(r).map(|x| &x.phase), Some(Phase::Queued)));
        let opened = Instant::now();
        for r in runs.values_mut() {
            if r.job_pgid.is_some() {
                r.started_seen = Some(opened);
            }
            // An abort that went to the kid directly before mum stopped: the warden cancels the
            // job later if it is still there.
            if r.abort_requested && matches!(r.phase, Phase::Launched { .. }) {
                r.cancel_due = Some(opened + abort::grace(&r.run_dir) + ABORT_BACKSTOP);
            }
        }
        let mut warden = warden;
        // Launches journaled as intent only: ask the warden what became of them.
        let mut requeue = Vec::new();
        for (run, rec) in runs.iter_mut() {
            if rec.phase != Phase::Launching {
                continue;
            }
            match warden.find(&rec.request(run)) {
                Found::Running(job) => {
                    tracing::info!("run {run}: launch found running as job {job}; adopted");
                    rec.phase = Phase::Launched {
                        job,
                        journaled: false,
                    };
                }
                Found::Ended => {
                    tracing::info!("run {run}: launch found already ended; following its log");
                    rec.phase = Phase::Launched {
                        job: String::new(),
                        journaled: true,
                    };
                }
                Found::Never => {
                    tracing::info!("run {run}: launch never happened; queued again");
                    rec.phase = Phase::Queued;
                    requeue.push(run.clone());
                }
            }
        }
        requeue.sort();
        for run in requeue.into_iter().rev() {
            queue.push_front(run);
        }
        tracing::info!(
            "neromum {} serving {} (journal at seq {}, {} entries, {} runs known)",
            env!("CARGO_PKG_VERSION"),
            workdir.display(),
            journal.last_seq(),
            journal.entries(),
            runs.len()
        );
        let state = State {
            opts,
            journal,
            runs,
            queue,
            connections: 0,
            last_activity: Instant::now(),
            health: None,
            workdir_health: None,
            listen_health: None,
            acks,
            served_first: false,
            by_dir: HashMap::new(),
        };
        Ok(Mum {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                appended: Condvar::new(),
                waker,
                queues_itself: warden.queues_itself(),
                holds_exit: warden.holds_exit(),
                warden_name: warden.name(),
                last_full_round: Mutex::new(Instant::now()),
                kids: std::sync::OnceLock::new(),
                warden: Mutex::new(warden),
                stop: AtomicBool::new(false),
            }),
            _lock: lock,
        })
    }

    /// Answer one request as a connection of `project` would get it (hello excepted).
    pub fn handle(&self, project: Option<&str>, req: Request) -> Response {
        handle_request(&self.shared, project, req)
    }

    /// One round: journal kid news, notice ended jobs, fill free slots.
    pub fn tick(&self) {
        tick(&self.shared);
    }

    /// Record that `project` has stored every entry up to `seq` (as a sync's `ack` does); the
    /// next round compacts when enough is acknowledged.
    pub fn acknowledge(&self, project: &str, seq: u64) {
        let mut s = self.shared.lock();
        s.register_project(project);
        let seq = seq.min(s.journal.last_seq());
        if let Some(a) = s.acks.get_mut(project) {
            *a = (*a).max(seq);
        }
    }

    /// Entries in the journal file now, and the newest sequence number.
    pub fn journal_size(&self) -> (u64, u64) {
        let s = self.shared.lock();
        (s.journal.entries(), s.journal.last_seq())
    }

    /// Listen on the workdir's socket and run rounds until idle or stopped; then return.
    pub fn serve(self) -> Result<(), MumError> {
        let (workdir, tick_every, idle_exit) = {
            let s = self.shared.lock();
            (s.opts.workdir.clone(), s.opts.tick, s.opts.idle_exit)
        };
        let sock = socket_path(&workdir);
        let _ = std::fs::remove_file(&sock); // we hold the lock: any socket file is stale
        let listener = UnixListener::bind(&sock).map_err(|err| MumError::Io {
            about: "listen on",
            path: sock.clone(),
            err,
        })?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(|err| {
            MumError::Io {
                about: "chmod",
                path: sock.clone(),
                err,
            }
        })?;
        // Kids report over TCP as well as in their event logs; without a listener (`listen:
        // off`, or none possible) the logs alone are tailed.
        let (listen, local) = {
            let s = self.shared.lock();
            (
                s.opts.listen.clone(),
                s.opts.warden == WardenSettings::Local,
            )
        };
        let waker = Arc::clone(&self.shared.waker);
        match kids::KidListener::start(
            &workdir,
            &listen,
            local,
            Arc::new(move || waker.wake_reports()),
        ) {
            Ok(Some(l)) => {
                let _ = self.shared.kids.set(l);
            }
            Ok(None) => tracing::info!(
                "kids' reports over TCP are off (listen: off): event logs are tailed"
            ),
            Err(e) => {
                let why = format!(
                    "neromum cannot listen for its kids' reports ({e}); their event logs are read instead, which is slower on a shared file system (see `listen:` in neronet.yaml)"
                );
                tracing::error!("{why}");
                self.shared.lock().listen_health = Some(why);
            }
        }
        // SIGTERM/SIGINT stop the loop (a thread blocked on the signals; no polling).
        let signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ]);
        match signals {
            Ok(mut signals) => {
                let shared = Arc::clone(&self.shared);
                std::thread::spawn(move || {
                    if signals.forever().next().is_some() {
                        tracing::info!("signal received: stopping");
                        shared.stop.store(true, Ordering::SeqCst);
                        shared.wake();
                    }
                });
            }
            Err(e) => tracing::warn!("cannot handle SIGTERM/SIGINT: {e}"),
        }
        {
            let shared = Arc::clone(&self.shared);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || {
                        shared.lock().connections += 1;
                        if let Err(e) = handle_connection(&shared, conn) {
                            if !matches!(e, WireError::Closed) {
                                tracing::warn!("connection ended: {e}");
                            }
                        }
                        let mut s = shared.lock();
                        s.connections -= 1;
                        s.last_activity = Instant::now();
                    });
                }
            });
        }
        let mut idle_round = false;
        let mut last_round = Instant::now();
        let mut last_reports = Instant::now();
        loop {
            // With nothing launched there are no logs to tail: a submit or a signal wakes the
            // loop; the idle check needs no more than a round a second.
            let every = if idle_round {
                Duration::from_secs(1)
            } else {
                tick_every
            };
            let (asked, reported) = self
                .shared
                .waker
                .wait(every.saturating_sub(last_round.elapsed()));
            if self.shared.stop.load(Ordering::SeqCst) {
                tracing::info!("stopping (runs in flight keep running; the next mum adopts them)");
                break;
            }
            if !asked && reported && last_round.elapsed() < every {
                // Kids' reports between rounds: journal what continues each run's log at once
                // (at most every MIN_ROUND, so a thousand reporting kids share appends and
                // fsyncs); the rest waits for the round.
                if let Some(left) = MIN_ROUND.checked_sub(last_reports.elapsed()) {
                    std::thread::sleep(left);
                }
                last_reports = Instant::now();
                take_reports(&self.shared);
                continue;
            }
            last_round = Instant::now();
            tick(&self.shared);
            let mut s = self.shared.lock();
            let busy = s.runs.values().any(|r| r.phase != Phase::Ended);
            idle_round = s.in_flight() == 0;
            if busy || s.connections > 0 {
                s.last_activity = Instant::now();
            } else if s.last_activity.elapsed() >= idle_exit {
                tracing::info!("idle for {idle_exit:?}: exiting");
                break;
            }
        }
        let _ = std::fs::remove_file(&sock);
        if let Some(k) = self.shared.kids.get() {
            k.close();
        }
        Ok(())
    }
}

fn replay(runs: &mut HashMap<String, RunRecord>, queue: &mut VecDeque<String>, e: &JournalEntry) {
    let key = e.key();
    match &e.event {
        MumEvent::Queued { run_dir } => {
            runs.insert(
                key.clone(),
                RunRecord::new(PathBuf::from(run_dir), Phase::Queued),
            );
            queue.push_back(key.clone());
        }
        MumEvent::Launching => {
            if let Some(r) = runs.get_mut(&key) {
                if r.phase == Phase::Queued {
                    r.phase = Phase::Launching;
                }
            }
        }
        MumEvent::Launched { job } => {
            if let Some(r) = runs.get_mut(&key) {
                if r.phase != Phase::Ended {
                    r.phase = Phase::Launched {
                        job: job.clone(),
                        journaled: true,
                    };
                }
            }
        }
        MumEvent::Kid { event } => {
            if let Some(r) = runs.get_mut(&key) {
                if let Some(off) = e.kid_offset {
                    r.kid_offset = off;
                }
                if let KidEvent::Started { job_pid, .. } = event {
                    r.job_pgid = Some(*job_pid as i32);
                }
                if matches!(event, KidEvent::Exited { .. }) {
                    r.phase = Phase::Ended;
                }
            }
        }
        MumEvent::Requeued { .. } => {
            if let Some(r) = runs.get_mut(&key) {
                if let Some(off) = e.kid_offset {
                    r.kid_offset = off;
                }
                r.job_pgid = None;
            }
        }
        MumEvent::Cancelled | MumEvent::Lost { .. } | MumEvent::Ended { .. } => {
            runs.entry(key.clone())
                .or_insert_with(|| RunRecord::new(PathBuf::new(), Phase::Ended))
                .phase = Phase::Ended;
        }
        MumEvent::AbortSent => {
            if let Some(r) = runs.get_mut(&key) {
                r.abort_requested = true;
            }
        }
    }
}

fn handle_connection(shared: &Shared, conn: UnixStream) -> Result<(), WireError> {
    // Tests shorten it to see a silent client dropped.
    let idle = std::env::var("NERONET_MUM_CONN_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(CONNECTION_IDLE, Duration::from_secs);
    conn.set_read_timeout(Some(idle))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    // Handshake first: nothing else is understood before the versions agree.
    let hello = match recv::<Request>(&mut reader) {
        Ok(Request::Hello(h)) => h,
        Ok(_) => {
            let message = "expected hello first".into();
            send(&mut writer, &Response::Error(ErrorReply { message }))?;
            return Ok(());
        }
        Err(WireError::Decode(d)) => {
            let message = format!("cannot decode hello (version mismatch?): {d}");
            send(&mut writer, &Response::Error(ErrorReply { message }))?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let reply = {
        let mut s = shared.lock();
        if hello.version == PROTOCOL_VERSION {
            if let Some(n) = hello.max_parallel {
                s.opts.max_parallel = n.max(1);
            }
            if let Some(p) = &hello.project {
                s.register_project(p);
            }
        }
        s.hello_reply()
    };
    send(&mut writer, &Response::Hello(reply))?;
    if hello.version != PROTOCOL_VERSION {
        // Another version: our hello reply told it ours. The one request every version
        // understands is `shutdown`, with which a newer neroman takes over (an upgrade).
        tracing::info!(
            "{} speaks protocol {}, this neromum {PROTOCOL_VERSION}: only shutdown is served",
            hello.client,
            hello.version
        );
        loop {
            let line = recv_line(&mut reader)?;
            if let Ok(Request::Shutdown) = decode::<Request>(&line) {
                send(&mut writer, &Response::Done)?;
                shutdown(shared);
                return Ok(());
            }
            let message = format!(
                "neromum {} speaks protocol {PROTOCOL_VERSION}, not {}: only shutdown is understood",
                env!("CARGO_PKG_VERSION"),
                hello.version
            );
            send(&mut writer, &Response::Error(ErrorReply { message }))?;
        }
    }
    loop {
        let req = match recv::<Request>(&mut reader) {
            Ok(r) => r,
            Err(WireError::Decode(d)) => {
                let message = format!("cannot decode request (version mismatch?): {d}");
                send(&mut writer, &Response::Error(ErrorReply { message }))?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let is_shutdown = matches!(req, Request::Shutdown);
        let response = handle_request(shared, hello.project.as_deref(), req);
        send(&mut writer, &response)?;
        if is_shutdown {
            shutdown(shared);
            return Ok(());
        }
    }
}

fn shutdown(shared: &Shared) {
    tracing::info!("shutdown requested");
    let workdir = shared.lock().opts.workdir.clone();
    // Remove the socket now: the next client must not reach a mum that is going away.
    let _ = std::fs::remove_file(socket_path(&workdir));
    shared.stop.store(true, Ordering::SeqCst);
    shared.wake();
}

fn handle_request(shared: &Shared, project: Option<&str>, req: Request) -> Response {
    match req {
        Request::Hello(_) => Response::Error(ErrorReply {
            message: "hello twice".into(),
        }),
        Request::Submit(sub) => {
            let r = shared.lock().submit(sub, project);
            shared.appended.notify_all();
            shared.wake();
            r
        }
        Request::Abort(a) => abort::abort(shared, a, project),
        Request::Sync(q) => sync::sync(shared, project, q),
        Request::ReadLog(r) => read_log::read_log(shared, r, project),
        Request::Shutdown => Response::Done,
    }
}

impl State {
    fn hello_reply(&mut self) -> HelloReply {
        let started = self
            .runs
            .values()
            .filter(|r| {
                matches!(r.phase, Phase::Launching | Phase::Launched { .. }) && r.job_pgid.is_some()
            })
            .count();
        let first_connection = !self.served_first;
        self.served_first = true;
        HelloReply {
            version: PROTOCOL_VERSION,
            mum_version: env!("CARGO_PKG_VERSION").into(),
            epoch: self.journal.epoch.clone(),
            workdir: self.opts.workdir.display().to_string(),
            pid: std::process::id(),
            last_seq: self.journal.last_seq(),
            // A run in a scheduler's queue is queued until its kid starts.
            queued: (self.queue.len() + (self.in_flight() - started)) as u32,
            running: started as u32,
            health: self.problem(),
            first_connection,
            warden: Some(self.opts.warden.kind().to_string()),
        }
    }

    /// A project seen for the first time holds back compaction from now on; written at once,
    /// so a crash cannot forget it.
    fn register_project(&mut self, project: &str) {
        if !self.acks.contains_key(project) {
            // Everything it may not have stored yet is after the oldest entry still in the file.
            let from = self.journal.compacted_through();
            self.acks.insert(project.to_string(), from);
            self.write_acks();
        }
    }

    /// Acks are kept in `acks.json`, written whole. Progress lost in a crash only delays
    /// compaction; a project registered is never forgotten once this returned.
    fn write_acks(&self) {
        let path = self.opts.workdir.join("acks.json");
        let bytes = serde_json::to_vec(&self.acks).expect("acks serialize");
        if let Err(e) = crate::util::write_atomic(&path, &bytes) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut runs: Vec<SnapRun> = self
            .runs
            .iter()
            .map(|(run, r)| {
                let (phase, job) = match &r.phase {
                    Phase::Queued => ("queued", None),
                    Phase::Launching => ("launching", None),
                    // A launch not yet journaled is recorded as intent: replay reconciles it.
                    Phase::Launched {
                        journaled: false, ..
                    } => ("launching", None),
                    Phase::Launched { job, .. } => ("launched", Some(job.clone())),
                    Phase::Ended => ("ended", None),
                };
                SnapRun {
                    run: run.clone(),
                    run_dir: r.run_dir.display().to_string(),
                    phase: phase.into(),
                    job,
                    kid_offset: r.kid_offset,
                    job_pgid: r.job_pgid,
                    abort_requested: r.abort_requested,
                }
            })
            .collect();
        runs.sort_by(|a, b| a.run.cmp(&b.run));
        Snapshot {
            format: JOURNAL_FORMAT,
            epoch: self.journal.epoch.clone(),
            base_seq: self.journal.last_seq(),
            runs,
            queue: self.queue.iter().cloned().collect(),
        }
    }

    /// Compact when enough entries are acknowledged by every project that ever synced.
    fn maybe_compact(&mut self) {
        let Some(acked) = self.acks.values().min().copied() else {
            return;
        };
        let first = self.journal.compacted_through();
        // Tests make compaction frequent to reach its failpoints.
        let after = std::env::var("NERONET_COMPACT_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(COMPACT_AFTER);
        if acked.saturating_sub(first) < after.max(1) {
            return;
        }
        let t = Instant::now();
        let before = self.journal.entries();
        let snap = self.snapshot();
        match self.journal.compact(&snap, acked) {
            Ok(()) => tracing::info!(
                "journal compacted: {before} → {} entries in {:?}",
                self.journal.entries(),
                t.elapsed()
            ),
            Err(e) => tracing::warn!("journal compaction failed (kept as it was): {e}"),
        }
    }

    /// Journal `items`; on failure remember why (shown to every client) and return false.
    fn journal(&mut self, items: Vec<(String, MumEvent, Option<u64>)>) -> bool {
        if items.is_empty() {
            return true;
        }
        match self.journal.append(items) {
            Ok(_) => {
                if self.health.take().is_some() {
                    tracing::info!("journal writable again");
                }
                true
            }
            Err(e) => {
                self.set_unhealthy(format!("its journal: {}", crate::util::error_chain(&e)));
                false
            }
        }
    }

    /// Remember (and log once) that the journal cannot be written; every hello and sync reply
    /// shows it until the next successful journal append.
    fn set_unhealthy(&mut self, what: String) {
        let why = format!("neromum cannot write {what}; nothing is lost, work resumes once it can");
        if self.health.as_deref() != Some(why.as_str()) {
            tracing::error!("{why}");
        }
        self.health = Some(why);
    }

    /// The same for a run directory; shown until a run directory can be written again.
    fn set_workdir_unhealthy(&mut self, what: String) {
        let why = format!(
            "neromum cannot write {what}; those runs wait (nothing is lost) and are sent again"
        );
        if self.workdir_health.is_none() {
            tracing::error!("{why}");
        }
        self.workdir_health = Some(why);
    }

    /// What every hello and sync reply reports, if anything.
    fn problem(&self) -> Option<String> {
        let all: Vec<&str> = [&self.health, &self.workdir_health, &self.listen_health]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    }

    /// The key of `project`'s run `run`: its own, or (a run submitted by a neroman of
    /// protocol 1, before the upgrade) the bare name.
    fn find_run(&self, project: Option<&str>, run: &str) -> Option<String> {
        let key = run_key(project, run);
        if self.runs.contains_key(&key) {
            return Some(key);
        }
        self.runs.contains_key(run).then(|| run.to_string())
    }

    /// The run whose directory is named `name`.
    fn run_of_dir(&mut self, name: &str) -> Option<String> {
        if !self.by_dir.contains_key(name) {
            self.by_dir = self
                .runs
                .iter()
                .filter(|(_, r)| r.phase != Phase::Ended)
                .map(|(k, r)| (dir_name(&r.run_dir).to_string(), k.clone()))
                .collect();
        }
        self.by_dir.get(name).cloned()
    }

    fn in_flight(&self) -> usize {
        self.runs
            .values()
            .filter(|r| matches!(r.phase, Phase::Launching | Phase::Launched { .. }))
            .count()
    }
}

/// What one round reads outside the lock for one launched run.
struct Watched {
    run: String,
    job: String,
    req: JobRequest,
    offset: u64,
    job_pgid: Option<i32>,
    abort_requested: bool,
    started_seen: Option<Instant>,
}

fn tick(shared: &Shared) {
    // 1. Under the lock: journal the intent to launch what fits, note what to watch.
    let mut backstop: Vec<(String, JobRequest)> = Vec::new();
    let (to_launch, watched, throttle, all) = {
        let mut s = shared.lock();
        // A warden with a queue of its own takes every run; mum's limit becomes its hint.
        let free = if shared.queues_itself {
            usize::MAX
        } else {
            (s.opts.max_parallel as usize).saturating_sub(s.in_flight())
        };
        let throttle = (s.opts.max_parallel != u32::MAX).then_some(s.opts.max_parallel);
        let mut picked = Vec::new();
        while picked.len() < free {
            let Some(run) = s.queue.pop_front() else {
                break;
            };
            if s.runs.get(&run).is_some_and(|r| r.phase == Phase::Queued) {
                picked.push(run);
            }
        }
        let mut to_launch = Vec::new();
        if !picked.is_empty() {
            failpoint("launch.before_intent");
            let items = picked
                .iter()
                .map(|r| (r.clone(), MumEvent::Launching, None))
                .collect();
            if s.journal(items) {
                for run in &picked {
                    let rec = s.runs.get_mut(run).expect("picked from runs");
                    rec.phase = Phase::Launching;
                    to_launch.push(rec.request(run));
                }
                shared.appended.notify_all();
            } else {
                for run in picked.into_iter().rev() {
                    s.queue.push_front(run);
                }
            }
        }
        // Runs waiting in a warden's own queue (thousands, under SLURM) have their logs read
        // once a second; runs whose kid started, every round.
        let all = !shared.queues_itself || {
            let mut last = shared
                .last_full_round
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = last.elapsed() >= Duration::from_secs(1);
            if due {
                *last = Instant::now();
            }
            due
        };
        // Aborts sent to kids directly whose jobs are still there: the warden cancels them.
        let now = Instant::now();
        for (run, r) in s.runs.iter_mut() {
            if let (Some(due), Phase::Launched { job, .. }) = (r.cancel_due, &r.phase) {
                if due <= now {
                    r.cancel_due = None;
                    backstop.push((job.clone(), r.request(run)));
                }
            }
        }
        if all {
            if let Some(k) = shared.kids.get() {
                let keep: std::collections::HashSet<&str> = s
                    .runs
                    .values()
                    .filter(|r| r.phase != Phase::Ended)
                    .map(|r| dir_name(&r.run_dir))
                    .collect();
                k.reports.retain(&keep);
            }
        }
        let watched: Vec<Watched> = s
            .runs
            .iter()
            .filter_map(|(run, r)| match &r.phase {
                Phase::Launched { job, .. } => Some(Watched {
                    run: run.clone(),
                    job: job.clone(),
                    req: r.request(run),
                    offset: r.kid_offset,
                    job_pgid: r.job_pgid,
                    abort_requested: r.abort_requested,
                    started_seen: r.started_seen,
                }),
                _ => None,
            })
            .collect();
        (to_launch, watched, throttle, all)
    };
    if !to_launch.is_empty() {
        failpoint("launch.after_intent");
    }

    // 2. Outside the lock: the warden and the kids' logs.
    if !backstop.is_empty() {
        let mut warden = shared.warden();
        for (job, req) in &backstop {
            if !job.is_empty() {
                tracing::info!(
                    "run {}: still there after the abort sent to its kid; cancelling job {job}",
                    req.run
                );
                warden.cancel(job, req);
            }
        }
    }
    let launched = if to_launch.is_empty() {
        Vec::new()
    } else {
        let mut warden = shared.warden();
        warden.set_throttle(throttle);
        warden.submit(&to_launch)
    };
    if !launched.is_empty() {
        failpoint("launch.after_warden");
    }
    let polled: Vec<(String, JobRequest)> = watched
        .iter()
        .filter(|w| !w.job.is_empty())
        .map(|w| (w.job.clone(), w.req.clone()))
        .collect();
    // Ask the warden first, then read the logs: a kid writes its exit record before it exits.
    let (states, refreshed) = if polled.is_empty() {
        (HashMap::new(), None)
    } else {
        let mut warden = shared.warden();
        let states = warden.poll(&polled);
        (states, warden.refreshed())
    };
    let news: Vec<RunNews> = watched
        .iter()
        .map(|w| {
            if !all && w.job_pgid.is_none() && !w.abort_requested && !reported(shared, w) {
                return RunNews::default();
            }
            let state = states.get(&w.job).cloned().unwrap_or(JobState::Gone);
            let events = kid_events(shared, w, !state.is_alive());
            if shared.holds_exit {
                warden_news(w, &events, &state, refreshed, shared.warden_name)
            } else {
                kid_news(w, events, &state)
            }
        })
        .collect();
    if news.iter().any(|n| n.held) {
        // A kid's exit record waits for the warden's word: ask it at the normal pace.
        shared.warden().hurry();
    }

    // 3. Under the lock: journal everything learned in one append, then apply it.
    let mut to_cancel = Vec::new();
    let mut freed = false;
    let mut lost_jobs = Vec::new();
    {
        let mut s = shared.lock();
        let mut items = Vec::new();
        for (req, result) in to_launch.iter().zip(&launched) {
            match result {
                Ok(job) => items.push((
                    req.run.clone(),
                    MumEvent::Launched { job: job.clone() },
                    None,
                )),
                Err(reason) => items.push((
                    req.run.clone(),
                    MumEvent::Lost {
                        reason: reason.clone(),
                    },
                    None,
                )),
            }
        }
        // Launches from earlier rounds whose entry could not be written yet.
        for (run, r) in &s.runs {
            if let Phase::Launched {
                job,
                journaled: false,
            } = &r.phase
            {
                items.push((run.clone(), MumEvent::Launched { job: job.clone() }, None));
            }
        }
        for (w, n) in watched.iter().zip(news) {
            // Skip runs changed meanwhile (an abort ended a run, another round applied).
            let current = s.runs.get(&w.run);
            if current.is_none_or(|r| r.kid_offset != w.offset || r.phase == Phase::Ended) {
                continue;
            }
            if n.lost {
                lost_jobs.push((w.req.clone(), w.job_pgid));
            }
            items.extend(n.items.into_iter().map(|(e, o)| (w.run.clone(), e, o)));
        }
        if items.is_empty() {
            s.maybe_compact();
            return;
        }
        failpoint("tick.before_journal");
        let applied = items.clone();
        if !s.journal(items) {
            // Nothing advanced: the same news is read again next round. Launches already made
            // are kept in memory, to be journaled when the journal is writable again.
            for (req, result) in to_launch.iter().zip(&launched) {
                if let (Ok(job), Some(r)) = (result, s.runs.get_mut(&req.run)) {
                    r.phase = Phase::Launched {
                        job: job.clone(),
                        journaled: false,
                    };
                }
            }
            return;
        }
        failpoint("tick.after_journal");
        for (run, event, offset) in &applied {
            let Some(r) = s.runs.get_mut(run) else {
                continue;
            };
            match event {
                MumEvent::Launched { job } if r.phase != Phase::Ended => {
                    r.phase = Phase::Launched {
                        job: job.clone(),
                        journaled: true,
                    };
                    if r.abort_requested {
                        to_cancel.push((job.clone(), r.request(run)));
                    }
                }
                MumEvent::Lost { .. } | MumEvent::Ended { .. } => {
                    r.phase = Phase::Ended;
                    freed = true;
                }
                MumEvent::Requeued { .. } => {
                    if let Some(o) = offset {
                        r.kid_offset = *o;
                    }
                    r.job_pgid = None;
                    r.started_seen = None;
                }
                MumEvent::Kid { event } => {
                    if let Some(o) = offset {
                        r.kid_offset = *o;
                    }
                    if let KidEvent::Started { job_pid, .. } = event {
                        r.job_pgid = Some(*job_pid as i32);
                        r.started_seen = Some(Instant::now());
                    }
                    if matches!(event, KidEvent::Exited { .. }) {
                        r.phase = Phase::Ended;
                        freed = true;
                    }
                }
                _ => {}
            }
        }
        s.maybe_compact();
        shared.appended.notify_all();
    }
    if !lost_jobs.is_empty() || !to_cancel.is_empty() {
        let sent: Vec<String> = {
            let mut warden = shared.warden();
            // Nobody supervises these jobs any more: end them rather than leave them unseen.
            for (req, pgid) in &lost_jobs {
                warden.clean_up(req, *pgid);
            }
            to_cancel
                .iter()
                .filter(|(job, req)| warden.cancel(job, req))
                .map(|(_, req)| req.run.clone())
                .collect()
        };
        // Aborts that arrived during the launch were passed on now.
        let items: Vec<_> = sent
            .into_iter()
            .map(|r| (r, MumEvent::AbortSent, None))
            .collect();
        if !items.is_empty() && shared.lock().journal(items) {
            shared.appended.notify_all();
        }
    }
    // A slot freed in this round is refilled in the next one, at once.
    if freed {
        shared.wake();
    }
}

/// What one round learned of one launched run: entries to journal (with the kid-log offset
/// each moves to), whether its job is lost (clean up after it), whether an exit record waits.
#[derive(Default)]
struct RunNews {
    items: Vec<(MumEvent, Option<u64>)>,
    lost: bool,
    held: bool,
}

fn kid_item(event: &KidEvent, offset: u64) -> (MumEvent, Option<u64>) {
    (
        MumEvent::Kid {
            event: event.clone(),
        },
        Some(offset),
    )
}

fn no_exit_record(w: &Watched) -> String {
    format!(
        "the kid ended without writing an exit record (killed, or its node died){}",
        local::kid_log_tail(&w.req.run_dir)
    )
}

/// A warden whose word ends nothing (local): the kid's events as they are; a job gone without
/// an exit record is lost.
fn kid_news(w: &Watched, events: Vec<(KidEvent, u64)>, state: &JobState) -> RunNews {
    let ended = events
        .iter()
        .any(|(e, _)| matches!(e, KidEvent::Exited { .. }));
    let mut items: Vec<_> = events.iter().map(|(e, o)| kid_item(e, *o)).collect();
    let lost = !ended && !state.is_alive();
    if lost {
        items.push((
            MumEvent::Lost {
                reason: no_exit_record(w),
            },
            None,
        ));
    }
    RunNews {
        items,
        lost,
        held: false,
    }
}

/// Why a run went back to its warden's queue.
fn requeued(warden: &str) -> String {
    format!("requeued by {warden}: it runs again in the same run directory")
}

/// A warden that outlives the kid's exit record (SLURM). The record is journaled only once the
/// warden is done with the job, after the warden's own verdict when that wins (a time limit);
/// an exit record followed by a new start, or a job queued again after its kid started, is a
/// requeue. `refreshed`: when the warden last asked its scheduler (a "queued" older than the
/// kid's start says nothing about a requeue).
fn warden_news(
    w: &Watched,
    events: &[(KidEvent, u64)],
    state: &JobState,
    refreshed: Option<Instant>,
    warden_name: &str,
) -> RunNews {
    let mut items = Vec::new();
    let mut started_seen = w.started_seen;
    let requeued_since = |seen: Option<Instant>| {
        *state == JobState::Queued && seen.zip(refreshed).is_some_and(|(s, r)| r > s)
    };
    let mut ended = false;
    let mut held = false;
    for (i, (event, offset)) in events.iter().enumerate() {
        match event {
            KidEvent::Started { .. } => {
                // Seen now: only a later look at the queue can tell of a requeue.
                started_seen = None;
                items.push(kid_item(event, *offset));
            }
            KidEvent::Exited { .. } => {
                let restarted = events[i + 1..]
                    .iter()
                    .any(|(e, _)| matches!(e, KidEvent::Started { .. }));
                if restarted || requeued_since(started_seen) {
                    // The kid ended because SLURM requeued the job: not the run's end.
                    items.push((
                        MumEvent::Requeued {
                            reason: requeued(warden_name),
                        },
                        Some(*offset),
                    ));
                    started_seen = None;
                    continue;
                }
                match state {
                    JobState::Ended {
                        verdict,
                        overrides,
                        reason,
                    } => {
                        // Cancelled by us: the kid's "aborted by user" says it all.
                        let ours = *verdict == Verdict::Aborted && w.abort_requested;
                        if *overrides && !ours {
                            items.push((
                                MumEvent::Ended {
                                    verdict: *verdict,
                                    reason: reason.clone(),
                                },
                                None,
                            ));
                        }
                    }
                    JobState::Gone => {}
                    // Still the warden's: it may be requeued, or end with its own verdict.
                    JobState::Alive | JobState::Queued => {
                        held = true;
                        break;
                    }
                }
                items.push(kid_item(event, *offset));
                ended = true;
                break;
            }
            _ => items.push(kid_item(event, *offset)),
        }
    }
    let mut lost = false;
    if !ended && !held {
        let kid_started = w.job_pgid.is_some()
            || events
                .iter()
                .any(|(e, _)| matches!(e, KidEvent::Started { .. }));
        match state {
            // Aborted by us before its kid ever started: nothing else to say (the kid log may
            // hold SLURM's line for a task it started and cancelled at once, or a requeue's).
            JobState::Ended { .. } | JobState::Gone if w.abort_requested && !kid_started => {
                items.push((
                    MumEvent::Ended {
                        verdict: Verdict::Aborted,
                        reason: "cancelled before it started".into(),
                    },
                    None,
                ));
                lost = true;
            }
            JobState::Ended {
                verdict, reason, ..
            } => {
                // Cancelled by us: SLURM's word is enough; the kid log's last lines may be an
                // older requeue's.
                let tail = if *verdict == Verdict::Aborted && w.abort_requested {
                    String::new()
                } else {
                    local::kid_log_tail(&w.req.run_dir)
                };
                items.push((
                    MumEvent::Ended {
                        verdict: *verdict,
                        reason: format!("{reason}{tail}"),
                    },
                    None,
                ));
                lost = true;
            }
            JobState::Gone => {
                items.push((
                    MumEvent::Lost {
                        reason: no_exit_record(w),
                    },
                    None,
                ));
                lost = true;
            }
            JobState::Queued if kid_started && requeued_since(started_seen) => {
                // Requeued before its kid could write an exit record (killed at once).
                items.push((
                    MumEvent::Requeued {
                        reason: requeued(warden_name),
                    },
                    None,
                ));
            }
            _ => {}
        }
    }
    RunNews { items, lost, held }
}

/// The run directory's name: how kids name their run in reports.
fn dir_name(run_dir: &Path) -> &str {
    run_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// Whether the kid of a run reported lines over TCP that this round has not journaled.
fn reported(shared: &Shared, w: &Watched) -> bool {
    shared
        .kids
        .get()
        .is_some_and(|k| k.reports.has(dir_name(&w.req.run_dir), w.offset))
}

/// A run's new events past its journaled offset, each with the offset after it: what its kid
/// reported over TCP, and — when a reported line is missing, the kid is quiet or does not
/// report, at least once a second, and always once its job is gone (`ended`: the last lines
/// may still be on their way over TCP) — what its `events.jsonl` holds (the source of truth).
fn kid_events(shared: &Shared, w: &Watched, ended: bool) -> Vec<(KidEvent, u64)> {
    let run_dir = &w.req.run_dir;
    let Some(kids) = shared.kids.get() else {
        return tail_events(run_dir, w.offset);
    };
    let name = dir_name(run_dir);
    let mut events = if kids.reports.plan(name, w.offset).read_file || ended {
        tail_events(run_dir, w.offset)
    } else {
        Vec::new()
    };
    let from = events.last().map_or(w.offset, |(_, o)| *o);
    let more = kids.reports.contiguous(name, from);
    parse_events(run_dir, &more, from, &mut events);
    events
}

/// Between rounds: journal the lines kids reported over TCP that continue their runs' logs —
/// metrics, resource samples, rule events — in one append, touching only the runs that
/// reported. A start or an exit record (and a run not launched for good) waits for the round,
/// which weighs it against the warden's word; this asks for that round.
fn take_reports(shared: &Shared) {
    let Some(kids) = shared.kids.get() else {
        return;
    };
    let dirty = kids.reports.take_dirty();
    if dirty.is_empty() {
        return;
    }
    let mut round_needed = false;
    let mut s = shared.lock();
    let mut items = Vec::new();
    let mut moved: Vec<(String, u64)> = Vec::new();
    for name in dirty {
        let Some(key) = s.run_of_dir(&name) else {
            continue;
        };
        let Some(r) = s.runs.get(&key) else { continue };
        if !matches!(
            r.phase,
            Phase::Launched {
                journaled: true,
                ..
            }
        ) {
            round_needed = true;
            continue;
        }
        let bytes = kids.reports.contiguous(&name, r.kid_offset);
        let mut events = Vec::new();
        parse_events(&r.run_dir, &bytes, r.kid_offset, &mut events);
        let mut last = None;
        for (event, offset) in events {
            if matches!(event, KidEvent::Started { .. } | KidEvent::Exited { .. }) {
                round_needed = true;
                break;
            }
            items.push((key.clone(), MumEvent::Kid { event }, Some(offset)));
            last = Some(offset);
        }
        if let Some(o) = last {
            moved.push((key, o));
        }
    }
    if !items.is_empty() && s.journal(items) {
        for (key, offset) in moved {
            if let Some(r) = s.runs.get_mut(&key) {
                r.kid_offset = offset;
            }
        }
        shared.appended.notify_all();
    }
    drop(s);
    if round_needed {
        shared.wake();
    }
}

/// Complete new events in a run's `events.jsonl` past `offset`, each with the offset after it.
fn tail_events(run_dir: &Path, offset: u64) -> Vec<(KidEvent, u64)> {
    let mut out = Vec::new();
    let Ok(mut f) = std::fs::File::open(run_dir.join(EVENTS_FILE)) else {
        return out;
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return out;
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return out;
    }
    parse_events(run_dir, &buf, offset, &mut out);
    out
}

/// The complete lines of `buf` (which starts at `offset` in the log) as events, each with the
/// offset after its line. An unreadable line is skipped (with a warning), its offset passed.
fn parse_events(run_dir: &Path, buf: &[u8], mut offset: u64, out: &mut Vec<(KidEvent, u64)>) {
    let mut pos = 0;
    while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
        let line = &buf[pos..pos + nl];
        pos += nl + 1;
        offset += (nl + 1) as u64;
        match serde_json::from_slice::<KidEvent>(line) {
            Ok(e) => out.push((e, offset)),
            Err(e) => tracing::warn!("{}: unreadable kid event: {e}", run_dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Handlers driven in-process (no fork of mum): a temp workdir, the real journal, and a
    //! recording warden where a test needs to see what mum asked of it.
    use super::*;
    use nerokid::report::KidSpec;

    fn workdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nero-mum-{name}-{}-{}",
            std::process::id(),
            journal::tests::tempdir()
                .file_name()
                .unwrap()
                .to_string_lossy()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn opts(dir: &Path) -> MumOptions {
        MumOptions {
            workdir: dir.to_path_buf(),
            kid_binary: PathBuf::from("/bin/true"),
            idle_exit: Duration::from_secs(60),
            tick: Duration::from_millis(50),
            max_parallel: 2,
            warden: WardenSettings::Local,
            listen: "auto".into(),
        }
    }

    fn spec(run: &str) -> RunSpec {
        RunSpec {
            run: run.into(),
            command: "true".into(),
            cwd: None,
            env: vec![],
            setup: vec![],
            kid: KidSpec::default(),
            warden_opts: vec![],
        }
    }

    /// One submit call: how many jobs, with what throttle.
    type Batch = (usize, Option<u32>);

    /// Records every call; `find` answers what the test set.
    #[derive(Default, Clone)]
    struct Recorder {
        submitted: Arc<Mutex<Vec<String>>>,
        /// The journal as it was when submit was called.
        journal_at_submit: Arc<Mutex<String>>,
        journal_path: PathBuf,
        found: Option<Found>,
        /// Acts as a warden with a queue of its own (SLURM); records each submit's size and
        /// the throttle it was given.
        queues: bool,
        batches: Arc<Mutex<Vec<Batch>>>,
        throttle: Option<u32>,
    }

    impl Warden for Recorder {
        fn queues_itself(&self) -> bool {
            self.queues
        }
        fn set_throttle(&mut self, max: Option<u32>) {
            self.throttle = max;
        }
        fn submit(&mut self, jobs: &[JobRequest]) -> Vec<Result<String, String>> {
            self.batches
                .lock()
                .unwrap()
                .push((jobs.len(), self.throttle));
            *self.journal_at_submit.lock().unwrap() =
                std::fs::read_to_string(&self.journal_path).unwrap_or_default();
            let mut s = self.submitted.lock().unwrap();
            jobs.iter()
                .map(|j| {
                    s.push(j.run.clone());
                    Ok(format!("job-{}", j.run))
                })
                .collect()
        }
        fn poll(&mut self, jobs: &[(String, JobRequest)]) -> HashMap<String, JobState> {
            jobs.iter()
                .map(|(j, _)| (j.clone(), JobState::Alive))
                .collect()
        }
        fn cancel(&mut self, _job: &str, _req: &JobRequest) -> bool {
            true
        }
        fn find(&mut self, _req: &JobRequest) -> Found {
            self.found.clone().unwrap_or(Found::Never)
        }
        fn clean_up(&mut self, _req: &JobRequest, _pgid: Option<i32>) {}
    }

    fn recorder(dir: &Path) -> Recorder {
        Recorder {
            journal_path: dir.join("journal.jsonl"),
            ..Default::default()
        }
    }

    fn journal_events(dir: &Path) -> Vec<(String, String)> {
        std::fs::read_to_string(dir.join("journal.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let e: JournalEntry = serde_json::from_str(l).unwrap();
                let what = serde_json::to_value(&e.event).unwrap()["what"]
                    .as_str()
                    .unwrap()
                    .to_string();
                (e.run, what)
            })
            .collect()
    }

    /// A warden with a queue of its own (SLURM) is handed every run at once, whatever
    /// max_parallel says; max_parallel reaches it as its throttle, "unlimited" as none.
    #[test]
    fn a_warden_that_queues_itself_gets_every_run_at_once() {
        for (max_parallel, throttle) in [(2, Some(2)), (u32::MAX, None)] {
            let dir = workdir("queues");
            let mut rec = recorder(&dir);
            rec.queues = true;
            let mut o = opts(&dir);
            o.max_parallel = max_parallel;
            let mum = Mum::open(o, Box::new(rec.clone())).unwrap();
            let runs: Vec<RunSpec> = (0..30).map(|i| spec(&format!("{i}.1"))).collect();
            mum.handle(None, Submit { runs }.into());
            mum.tick();
            mum.tick();
            assert_eq!(*rec.batches.lock().unwrap(), [(30, throttle)]);
        }
    }

    fn watched(started_seen: Option<Instant>, abort_requested: bool) -> Watched {
        let run_dir = std::env::temp_dir().join("nero-mum-no-such-run");
        Watched {
            run: "1.1".into(),
            job: "7_0".into(),
            req: JobRequest {
                run: "1.1".into(),
                run_dir,
            },
            offset: 0,
            job_pgid: started_seen.map(|_| 42),
            abort_requested,
            started_seen,
        }
    }

    fn exited(code: i32) -> KidEvent {
        KidEvent::Exited {
            t: 1.0,
            outcome: nerokid::report::Outcome::Exit { code },
            reason: None,
            stderr_tail: Vec::new(),
        }
    }

    fn what(news: &RunNews) -> Vec<String> {
        news.items
            .iter()
            .map(|(e, o)| {
                let v = serde_json::to_value(e).unwrap();
                let name = match e {
                    MumEvent::Kid { event } => serde_json::to_value(event).unwrap()["event"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    MumEvent::Ended { .. } => format!("ended:{}", v["verdict"].as_str().unwrap()),
                    _ => v["what"].as_str().unwrap().to_string(),
                };
                match o {
                    Some(o) => format!("{name}@{o}"),
                    None => name,
                }
            })
            .collect()
    }

    /// SLURM: the kid's exit record is journaled only once SLURM is done with the job, after
    /// SLURM's own verdict when that wins (a time limit: the kid saw only a SIGTERM).
    #[test]
    fn a_kid_exit_waits_for_the_warden_and_its_verdict_comes_first() {
        let t0 = Instant::now();
        let w = watched(Some(t0), false);
        let events = vec![(exited(143), 100)];
        let news = warden_news(&w, &events, &JobState::Alive, Some(t0), "SLURM");
        assert!(news.held && news.items.is_empty());
        let timeout = JobState::Ended {
            verdict: Verdict::Timeout,
            overrides: true,
            reason: "SLURM: time limit reached (TIMEOUT)".into(),
        };
        let news = warden_news(&w, &events, &timeout, Some(t0), "SLURM");
        assert_eq!(what(&news), ["ended:timeout", "exited@100"]);
        assert!(!news.held && !news.lost);
        // Cancelled by us: the kid's own "aborted by user" stands.
        let cancelled = JobState::Ended {
            verdict: Verdict::Aborted,
            overrides: true,
            reason: "SLURM: cancelled (CANCELLED)".into(),
        };
        let ours = watched(Some(t0), true);
        assert_eq!(
            what(&warden_news(&ours, &events, &cancelled, Some(t0), "SLURM")),
            ["exited@100"]
        );
        assert_eq!(
            what(&warden_news(&w, &events, &cancelled, Some(t0), "SLURM")),
            ["ended:aborted", "exited@100"]
        );
        // A failed job: the kid's exit code says more than SLURM's FAILED.
        let failed = JobState::Ended {
            verdict: Verdict::Crashed,
            overrides: false,
            reason: "SLURM: the job failed (FAILED, exit code 3:0)".into(),
        };
        assert_eq!(
            what(&warden_news(&w, &events, &failed, Some(t0), "SLURM")),
            ["exited@100"]
        );
        // No exit record at all: SLURM's word is all there is.
        let news = warden_news(&w, &[], &failed, Some(t0), "SLURM");
        assert_eq!(what(&news), ["ended:crashed"]);
        assert!(news.lost);
        // Aborted by us before its kid ever started (pending, or started and cancelled at
        // once): "cancelled before it started", not SLURM's words or a kid that died.
        let never = watched(None, true);
        for state in [cancelled, JobState::Gone] {
            let news = warden_news(&never, &[], &state, Some(t0), "SLURM");
            assert_eq!(what(&news), ["ended:aborted"]);
            assert!(
                matches!(&news.items[0].0, MumEvent::Ended { reason, .. } if reason == "cancelled before it started")
            );
        }
    }

    /// A job listed as queued after its kid started was requeued — but only a listing newer
    /// than the start says so: one from before (the warden polls every few seconds) is stale.
    #[test]
    fn a_requeue_is_told_apart_from_a_stale_queue_listing() {
        let t0 = Instant::now();
        let before = t0 - Duration::from_secs(1);
        let after = t0 + Duration::from_secs(1);
        let w = watched(Some(t0), false);
        let events = vec![(exited(143), 100)];
        let news = warden_news(&w, &events, &JobState::Queued, Some(before), "SLURM");
        assert!(news.held && news.items.is_empty(), "{:?}", what(&news));
        let news = warden_news(&w, &events, &JobState::Queued, Some(after), "SLURM");
        assert_eq!(what(&news), ["requeued@100"]);
        // Started and ended within one listing's age: not a requeue, the record waits.
        let fresh = watched(None, false);
        let started = KidEvent::Started {
            t: 1.0,
            pid: 1,
            job_pid: 2,
            host: "n".into(),
        };
        let both = vec![(started.clone(), 50), (exited(0), 100)];
        let news = warden_news(&fresh, &both, &JobState::Queued, Some(after), "SLURM");
        assert_eq!(what(&news), ["started@50"]);
        assert!(news.held);
        // An exit record followed by a new start: requeued, whatever the listing says.
        let again = vec![(exited(143), 100), (started, 150)];
        let news = warden_news(&w, &again, &JobState::Alive, Some(before), "SLURM");
        assert_eq!(what(&news), ["requeued@100", "started@150"]);
        // Killed before it could write a record, and queued again.
        let news = warden_news(&w, &[], &JobState::Queued, Some(after), "SLURM");
        assert_eq!(what(&news), ["requeued"]);
        assert!(
            warden_news(&w, &[], &JobState::Queued, Some(before), "SLURM")
                .items
                .is_empty()
        );
    }

    /// Regression: a submit batch in which one run failed returned early; the runs before it
    /// were queued in memory but never journaled, so a restarted mum ran them again.
    #[test]
    fn a_failing_run_in_a_batch_does_not_drop_the_others() {
        let dir = workdir("batch");
        let rec = recorder(&dir);
        {
            let mum = Mum::open(opts(&dir), Box::new(rec.clone())).unwrap();
            let mut bad = spec("2.1");
            bad.env.push(("NOT A NAME".into(), "x".into()));
            let reply = mum.handle(
                None,
                Submit {
                    runs: vec![spec("1.1"), bad, spec("3.1")],
                }
                .into(),
            );
            assert!(
                matches!(reply, Response::Accepted(ref a) if a.runs.len() == 3),
                "{reply:?}"
            );
        }
        let events = journal_events(&dir);
        assert!(
            events.contains(&("1.1".into(), "queued".into())),
            "{events:?}"
        );
        assert!(
            events.contains(&("2.1".into(), "lost".into())),
            "{events:?}"
        );
        assert!(
            events.contains(&("3.1".into(), "queued".into())),
            "{events:?}"
        );
        // After a restart each good run is launched once, the bad one never.
        let mum = Mum::open(opts(&dir), Box::new(rec.clone())).unwrap();
        mum.tick();
        mum.tick();
        assert_eq!(*rec.submitted.lock().unwrap(), ["1.1", "3.1"]);
    }

    /// Regression: a job was started before its launch was journaled, so a crash in between
    /// started it a second time.
    #[test]
    fn launch_intent_is_journaled_before_the_warden_is_asked() {
        let dir = workdir("intent");
        let rec = recorder(&dir);
        let mum = Mum::open(opts(&dir), Box::new(rec.clone())).unwrap();
        mum.handle(
            None,
            Submit {
                runs: vec![spec("1.1")],
            }
            .into(),
        );
        mum.tick();
        assert_eq!(*rec.submitted.lock().unwrap(), ["1.1"]);
        let seen = rec.journal_at_submit.lock().unwrap().clone();
        assert!(
            seen.contains(r#""run":"1.1""#) && seen.contains(r#""what":"launching""#),
            "{seen}"
        );
        let events = journal_events(&dir);
        assert_eq!(
            events.last().unwrap(),
            &("1.1".to_string(), "launched".to_string())
        );
    }

    #[test]
    fn an_interrupted_launch_is_reconciled_never_repeated() {
        for (found, launches) in [
            (Found::Running("job-7".into()), 0),
            (Found::Ended, 0),
            (Found::Never, 1),
        ] {
            let dir = workdir("reconcile");
            {
                let (mut j, _) = Journal::open(&dir, |_| {}).unwrap();
                let run_dir = dir.join("runs/1.1").display().to_string();
                j.append(vec![
                    ("1.1".into(), MumEvent::Queued { run_dir }, None),
                    ("1.1".into(), MumEvent::Launching, None),
                ])
                .unwrap();
            }
            let mut rec = recorder(&dir);
            rec.found = Some(found.clone());
            let mum = Mum::open(opts(&dir), Box::new(rec.clone())).unwrap();
            mum.tick();
            mum.tick();
            assert_eq!(rec.submitted.lock().unwrap().len(), launches, "{found:?}");
            if let Found::Running(job) = found {
                let events = journal_events(&dir);
                assert_eq!(events.last().unwrap().1, "launched");
                assert!(std::fs::read_to_string(dir.join("journal.jsonl"))
                    .unwrap()
                    .contains(&job));
            }
        }
    }

    #[test]
    fn a_long_poll_answers_as_soon_as_something_is_journaled() {
        let dir = workdir("longpoll");
        let mum = Arc::new(Mum::open(opts(&dir), Box::new(recorder(&dir))).unwrap());
        let m = Arc::clone(&mum);
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let q = SyncSince {
                since: 0,
                max: 100,
                wait_ms: 10_000,
                ack: None,
            };
            (m.handle(None, q.into()), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        mum.handle(
            None,
            Submit {
                runs: vec![spec("1.1")],
            }
            .into(),
        );
        let (reply, took) = waiter.join().unwrap();
        assert!(
            matches!(reply, Response::Events(ref b) if b.entries.len() == 1),
            "{reply:?}"
        );
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        // Nothing new: it waits the time asked, then answers empty.
        let t = Instant::now();
        let q = SyncSince {
            since: 1,
            max: 100,
            wait_ms: 300,
            ack: None,
        };
        assert!(
            matches!(mum.handle(None, q.into()), Response::Events(ref b) if b.entries.is_empty())
        );
        assert!(t.elapsed() >= Duration::from_millis(250));
    }

    /// A journal written by neromum 0.1.0 (protocol 1, journal format 1, captured from a real
    /// demo run) is adopted by this version: its runs are known and numbering continues.
    #[test]
    fn a_version_1_journal_is_adopted() {
        let dir = workdir("v1");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mum-v1");
        let text = std::fs::read_to_string(fixture.join("journal.jsonl")).unwrap();
        std::fs::write(
            dir.join("journal.jsonl"),
            text.replace("/FIXTURE", &dir.display().to_string()),
        )
        .unwrap();
        std::fs::copy(fixture.join("epoch"), dir.join("epoch")).unwrap();
        let lines = text.lines().count() as u64;
        let mum = Mum::open(opts(&dir), Box::new(recorder(&dir))).unwrap();
        {
            let s = mum.shared.lock();
            assert_eq!(s.journal.last_seq(), lines);
            assert_eq!(s.runs.len(), 6);
            assert!(s.runs.values().all(|r| r.phase == Phase::Ended));
        }
        let q = SyncSince {
            since: 0,
            max: 1000,
            wait_ms: 0,
            ack: None,
        };
        assert!(
            matches!(mum.handle(None, q.into()), Response::Events(ref b) if b.entries.len() as u64 == lines)
        );
        mum.handle(
            None,
            Submit {
                runs: vec![spec("7.1")],
            }
            .into(),
        );
        assert_eq!(mum.shared.lock().journal.last_seq(), lines + 1);
        assert_eq!(
            std::fs::read_to_string(dir.join("journal.format"))
                .unwrap()
                .trim(),
            JOURNAL_FORMAT.to_string()
        );
    }

    #[test]
    fn acknowledged_entries_are_compacted_and_replay_stays_the_same() {
        let dir = workdir("compact");
        {
            let mum = Mum::open(opts(&dir), Box::new(recorder(&dir))).unwrap();
            mum.shared.lock().register_project("p");
            let runs: Vec<RunSpec> = (0..30).map(|i| spec(&format!("{i}.1"))).collect();
            mum.handle(Some("p"), Submit { runs }.into());
            for _ in 0..20 {
                mum.tick();
            }
            let mut s = mum.shared.lock();
            let last = s.journal.last_seq();
            s.acks.insert("p".into(), last - 5);
            let before = s.journal.entries();
            // Below the threshold nothing happens; force it as the threshold would.
            let snap = s.snapshot();
            s.journal.compact(&snap, last - 5).unwrap();
            assert!(s.journal.entries() < before);
            assert_eq!(s.journal.entries(), 5);
        }
        let mum = Mum::open(opts(&dir), Box::new(recorder(&dir))).unwrap();
        let s = mum.shared.lock();
        assert_eq!(s.runs.len(), 30);
        let launched = s
            .runs
            .values()
            .filter(|r| matches!(r.phase, Phase::Launched { .. }))
            .count();
        assert_eq!(launched, 2, "max_parallel 2: two launched, the rest queued");
        assert_eq!(s.queue.len(), 28);
    }
}
