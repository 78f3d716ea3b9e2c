//! neromum, the per-(host, user, workdir) agent. It listens on a unix socket (mode 0600) in its
//! workdir, accepts runs from neroman, writes each run directory (job script, kid spec), hands jobs
//! to the warden when a slot is free, tails every kid's event log, and journals all it learns.
//! It keeps running and collecting while neroman is away; a restarted mum replays its journal and
//! picks up the runs still going.

mod abort;
mod journal;
mod local;
mod read_log;
mod submit;
mod sync;

use crate::cluster::protocol::*;
use crate::cluster::socket_path;
use journal::Journal;
use nerokid::report::{KidEvent, EVENTS_FILE};
use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use journal::JournalError;

/// How mum is started (`neromum serve`).
#[derive(Debug, Clone)]
pub struct MumOptions {
    pub workdir: PathBuf,
    /// The nerokid binary the job scripts call.
    pub kid_binary: PathBuf,
    /// Exit after this long with no runs going and no client connected.
    pub idle_exit: Duration,
    /// How often kid logs are tailed and slots refilled.
    pub tick: Duration,
    pub max_parallel: u32,
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

enum Phase {
    Queued,
    /// Handed to the warden. `child` is set while this mum is the job's parent (not after a restart).
    Launched {
        pid: i32,
        child: Option<std::process::Child>,
    },
    Ended,
}

struct RunRecord {
    run_dir: PathBuf,
    phase: Phase,
    /// How far into the kid's `events.jsonl` mum has journaled.
    kid_offset: u64,
    /// The job's process group, once the kid reported it started.
    job_pgid: Option<i32>,
}

impl RunRecord {
    /// A run cancelled before mum was given it: known, ended, with no directory.
    fn cancelled() -> RunRecord {
        RunRecord {
            run_dir: PathBuf::new(),
            phase: Phase::Ended,
            kid_offset: 0,
            job_pgid: None,
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
}

/// Run mum until it goes idle. Blocks; meant for the `neromum serve` process.
pub fn serve(opts: MumOptions) -> Result<(), MumError> {
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
    let _lock = local::lock_workdir(&workdir)
        .map_err(io("lock", &workdir))?
        .ok_or_else(|| MumError::AlreadyRunning(workdir.clone()))?;

    let mut runs: HashMap<String, RunRecord> = HashMap::new();
    let mut queue = VecDeque::new();
    let journal = Journal::open(&workdir, |e| replay(&mut runs, &mut queue, e))?;
    queue.retain(|r| matches!(runs.get(r).map(|x| &x.phase), Some(Phase::Queued)));
    tracing::info!(
        "neromum {} serving {} (journal at seq {}, {} runs known)",
        env!("CARGO_PKG_VERSION"),
        workdir.display(),
        journal.last_seq(),
        runs.len()
    );

    let sock = socket_path(&workdir);
    let _ = std::fs::remove_file(&sock); // we hold the lock: any socket file is stale
    let listener = UnixListener::bind(&sock).map_err(io("listen on", &sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", &sock))?;

    let state = Arc::new(Mutex::new(State {
        opts: opts.clone(),
        journal,
        runs,
        queue,
        connections: 0,
        last_activity: Instant::now(),
    }));
    {
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    lock(&state).connections += 1;
                    if let Err(e) = handle_connection(&state, conn) {
                        if !matches!(e, WireError::Closed) {
                            tracing::warn!("connection ended: {e}");
                        }
                    }
                    let mut s = lock(&state);
                    s.connections -= 1;
                    s.last_activity = Instant::now();
                });
            }
        });
    }
    loop {
        std::thread::sleep(opts.tick);
        let mut s = lock(&state);
        if let Err(e) = s.tick() {
            tracing::error!("tick: {e}");
        }
        let busy = s.runs.values().any(|r| !matches!(r.phase, Phase::Ended));
        if busy || s.connections > 0 {
            s.last_activity = Instant::now();
        } else if s.last_activity.elapsed() >= opts.idle_exit {
            tracing::info!("idle for {:?}: exiting", opts.idle_exit);
            let _ = std::fs::remove_file(&sock);
            return Ok(());
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking connection thread must not take the agent down with it.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn replay(runs: &mut HashMap<String, RunRecord>, queue: &mut VecDeque<String>, e: &JournalEntry) {
    match &e.event {
        MumEvent::Queued { run_dir } => {
            runs.insert(
                e.run.clone(),
                RunRecord {
                    run_dir: PathBuf::from(run_dir),
                    phase: Phase::Queued,
                    kid_offset: 0,
                    job_pgid: None,
                },
            );
            queue.push_back(e.run.clone());
        }
        MumEvent::Launched { job } => {
            if let Some(r) = runs.get_mut(&e.run) {
                r.phase = Phase::Launched {
                    pid: job.parse().unwrap_or(-1),
                    child: None,
                };
            }
        }
        MumEvent::Kid { event } => {
            if let Some(r) = runs.get_mut(&e.run) {
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
        MumEvent::Cancelled | MumEvent::Lost { .. } => {
            runs.entry(e.run.clone())
                .or_insert_with(RunRecord::cancelled)
                .phase = Phase::Ended;
        }
        MumEvent::AbortSent => {}
    }
}

fn handle_connection(state: &Mutex<State>, conn: UnixStream) -> Result<(), WireError> {
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    // Handshake first: nothing else is understood before the versions agree.
    let hello = match recv::<Request>(&mut reader) {
        Ok(Request::Hello(h)) => h,
        Ok(_) => {
            send(
                &mut writer,
                &Response::Error(ErrorReply {
                    message: "expected hello first".into(),
                }),
            )?;
            return Ok(());
        }
        Err(WireError::Decode(d)) => {
            send(
                &mut writer,
                &Response::Error(ErrorReply {
                    message: format!("cannot decode hello (version mismatch?): {d}"),
                }),
            )?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if hello.version != PROTOCOL_VERSION {
        let message = format!(
            "protocol version mismatch: neromum {} speaks {PROTOCOL_VERSION}, {} speaks {}",
            env!("CARGO_PKG_VERSION"),
            hello.client,
            hello.version
        );
        send(&mut writer, &Response::Error(ErrorReply { message }))?;
        return Ok(());
    }
    let reply = {
        let mut s = lock(state);
        if let Some(n) = hello.max_parallel {
            s.opts.max_parallel = n.max(1);
        }
        HelloReply {
            version: PROTOCOL_VERSION,
            mum_version: env!("CARGO_PKG_VERSION").into(),
            epoch: s.journal.epoch.clone(),
            workdir: s.opts.workdir.display().to_string(),
            pid: std::process::id(),
        }
    };
    send(&mut writer, &Response::Hello(reply))?;
    loop {
        let req = match recv::<Request>(&mut reader) {
            Ok(r) => r,
            Err(WireError::Decode(d)) => {
                send(
                    &mut writer,
                    &Response::Error(ErrorReply {
                        message: format!("cannot decode request (version mismatch?): {d}"),
                    }),
                )?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let response = {
            let mut s = lock(state);
            s.last_activity = Instant::now();
            match req {
                Request::Hello(_) => Response::Error(ErrorReply {
                    message: "hello twice".into(),
                }),
                Request::Submit(sub) => s.submit(sub),
                Request::Abort(a) => s.abort(a),
                Request::Sync(q) => s.sync(q),
                Request::ReadLog(r) => s.read_log(r),
                Request::Shutdown => {
                    send(&mut writer, &Response::Done)?;
                    tracing::info!("shutdown requested");
                    let _ = std::fs::remove_file(socket_path(&s.opts.workdir));
                    std::process::exit(0);
                }
            }
        };
        send(&mut writer, &response)?;
    }
}

impl State {
    fn running(&self) -> usize {
        self.runs
            .values()
            .filter(|r| matches!(r.phase, Phase::Launched { .. }))
            .count()
    }

    fn launch_queued(&mut self) -> Result<(), MumError> {
        while self.running() < self.opts.max_parallel as usize {
            let Some(run) = self.queue.pop_front() else {
                break;
            };
            let Some(rec) = self.runs.get_mut(&run) else {
                continue;
            };
            if !matches!(rec.phase, Phase::Queued) {
                continue;
            }
            match local::launch(&rec.run_dir) {
                Ok(child) => {
                    let pid = child.id() as i32;
                    rec.phase = Phase::Launched {
                        pid,
                        child: Some(child),
                    };
                    self.journal.append(vec![(
                        run,
                        MumEvent::Launched {
                            job: pid.to_string(),
                        },
                        None,
                    )])?;
                }
                Err(e) => {
                    rec.phase = Phase::Ended;
                    let reason = format!("could not start the job script: {e}");
                    self.journal
                        .append(vec![(run, MumEvent::Lost { reason }, None)])?;
                }
            }
        }
        Ok(())
    }

    /// One round: notice ended jobs, journal new kid events, fill free slots.
    fn tick(&mut self) -> Result<(), MumError> {
        let mut items = Vec::new();
        for (run, rec) in self.runs.iter_mut() {
            let Phase::Launched { pid, child } = &mut rec.phase else {
                continue;
            };
            // Exit first, then a last read of the log: a kid writes its exit record before it exits.
            let gone = match child {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => !local::kid_alive(*pid),
            };
            let mut ended = false;
            for (event, offset) in tail_events(&rec.run_dir, &mut rec.kid_offset) {
                ended |= matches!(event, KidEvent::Exited { .. });
                if let KidEvent::Started { job_pid, .. } = &event {
                    rec.job_pgid = Some(*job_pid as i32);
                }
                items.push((run.clone(), MumEvent::Kid { event }, Some(offset)));
            }
            if ended {
                if let Some(c) = child {
                    let _ = c.wait();
                }
                rec.phase = Phase::Ended;
            } else if gone {
                rec.phase = Phase::Ended;
                // Nobody supervises the job any more: end it rather than leave it running unseen.
                if let Some(pgid) = rec.job_pgid {
                    local::kill_group(pgid, &rec.run_dir);
                }
                let reason = format!(
                    "the kid ended without writing an exit record (killed, or its node died){}",
                    local::kid_log_tail(&rec.run_dir)
                );
                items.push((run.clone(), MumEvent::Lost { reason }, None));
            }
        }
        self.journal.append(items)?;
        self.launch_queued()
    }
}

/// Complete new events in a run's `events.jsonl` past `offset`, each with the offset after it.
fn tail_events(run_dir: &Path, offset: &mut u64) -> Vec<(KidEvent, u64)> {
    let mut out = Vec::new();
    let Ok(mut f) = std::fs::File::open(run_dir.join(EVENTS_FILE)) else {
        return out;
    };
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return out;
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return out;
    }
    let mut pos = 0;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + nl];
        pos += nl + 1;
        *offset += (nl + 1) as u64;
        match serde_json::from_slice::<KidEvent>(line) {
            Ok(e) => out.push((e, *offset)),
            Err(e) => tracing::warn!("{}: unreadable kid event: {e}", run_dir.display()),
        }
    }
    out
}
