//! The `sge` warden (Grid Engine: OGE, SGE, Son of Grid Engine): runs go to Grid Engine as
//! array jobs, one `qsub -terse` per group of runs with the same options (at most `array_max`
//! runs each), the script from the template `qsub.sh.j2` on qsub's stdin. One `qstat -xml`
//! call per poll interval answers for every job of this user (`poll_interval`, backing off to
//! 60 s while nothing changes); pending tasks listed as ranges (`3-20:1`) are expanded. A job
//! that leaves qstat is asked about once more with `qacct -j` when accounting is there (the
//! accounting file may lag: asked again for a while), else the kid's record decides. A job in
//! an error state (`Eqw`) ends crashed with `qstat -j`'s reason and is deleted. Cancel is
//! `qdel <job> -t <task>` of the one task.
//!
//! Job ids are `<job>.<task>`, the task Grid Engine's (1-based, in the order of the runs).
//! Files: `<workdir>/batches/<batch>/` holds the array's `qsub.sh`, `jobid` (written when
//! qsub answered) and `<task>.log` links to each run's `kid.log` (qsub's `-o` with `-j y`, so
//! Grid Engine's own words land beside the kid's). Each run directory gets `sge-batch`
//! (`<batch> <task>`, written before qsub is called) and a `qsub.sh` link. After a crash
//! between mum's "launching" and "launched" entries, `find` reads `sge-batch` and looks the
//! batch up by its job name (`neronet-<batch>`): a run is never submitted twice.
//!
//! The commands are found on PATH (Debian's wrappers set SGE_ROOT themselves); else under
//! `$SGE_ROOT/bin/<arch>/`, with SGE_ROOT from the environment or a standard install
//! (`/opt/sge`, `/opt/gridengine`, `/usr/share/gridengine`, `/var/lib/gridengine`, ...).

use super::warden::{run_scheduler, Batch, Found, JobRequest, JobState, Warden};
use crate::cluster::protocol::Verdict;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The array job script; `#$` lines from each run's options.
const TEMPLATE: &str = include_str!("qsub.sh.j2");
/// Every job mum submits is named `neronet-<batch>` (qstat lists the name: `find` looks it up).
pub const JOB_PREFIX: &str = "neronet-";
/// The file in a run directory naming its batch and task (written before qsub is asked).
pub const MARKER: &str = "sge-batch";
/// The longest a poll interval grows to while nothing changes.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a job gone from qstat is asked of qacct before the kid's record decides (the
/// accounting file is written up to `accounting_flush_time` late, 15 s by default).
const ACCOUNTING_PATIENCE: Duration = Duration::from_secs(30);
/// How long a task listed for its rerun counts as running while its old kid still stops.
const RERUN_PATIENCE: Duration = Duration::from_secs(30);
/// Options neromum sets itself: a run cannot give them.
const RESERVED: [&str; 22] = [
    "t", "tc", "N", "o", "e", "j", "S", "terse", "sync", "b", "notify", "wd", "cwd", "i", "V", "v",
    "C", "shell", "now", "verify", "w", "@",
];

/// How the Grid Engine warden is set up (from `neromum --poll-interval --array-max`).
#[derive(Debug, Clone)]
pub struct SgeSettings {
    pub workdir: PathBuf,
    pub poll_interval: Duration,
    pub array_max: u32,
}

/// One array task (or plain job) as `qstat -xml` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    /// `<job>.<task>` (`<job>` alone for a job that is not an array).
    pub job: String,
    pub name: String,
    pub state: String,
    /// The host of its queue instance (`all.q@node7` → `node7`); empty while pending.
    pub node: String,
}

/// What `qacct -j` says of one ended task.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub job: String,
    /// `failed`: 0, or Grid Engine's code with its words (`37  : qmaster enforced h_rt ...`).
    pub failed: u32,
    pub failed_text: String,
    pub exit_status: i32,
}

/// Where the scheduler commands are, and what they need in their environment.
#[derive(Debug, Clone, Default)]
struct Tools {
    bin: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Tools {
    fn locate() -> Tools {
        let on_path = std::env::var_os("PATH").is_some_and(|p| {
            std::env::split_paths(&p).any(|d| super::local::is_executable(&d.join("qstat")))
        });
        if on_path {
            return Tools::default();
        }
        let roots: Vec<PathBuf> = std::env::var_os("SGE_ROOT")
            .map(PathBuf::from)
            .into_iter()
            .chain(
                [
                    "/opt/sge",
                    "/opt/gridengine",
                    "/opt/ogs",
                    "/usr/local/sge",
                    "/usr/share/gridengine",
                    "/var/lib/gridengine",
                ]
                .map(PathBuf::from),
            )
            .collect();
        for root in roots {
            let Ok(dirs) = std::fs::read_dir(root.join("bin")) else {
                continue;
            };
            let mut found: Vec<PathBuf> = dirs
                .flatten()
                .map(|e| e.path())
                .filter(|d| super::local::is_executable(&d.join("qstat")))
                .collect();
            found.sort();
            if let Some(bin) = found.into_iter().next() {
                let mut env = vec![("SGE_ROOT".to_string(), root.display().to_string())];
                if std::env::var_os("SGE_CELL").is_none() {
                    env.push(("SGE_CELL".into(), "default".into()));
                }
                tracing::info!("sge: using {} (SGE_ROOT {})", bin.display(), root.display());
                return Tools {
                    bin: Some(bin),
                    env,
                };
            }
        }
        Tools::default()
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(match &self.bin {
            Some(b) => b.join(name),
            None => PathBuf::from(name),
        });
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

pub struct SgeWarden {
    settings: SgeSettings,
    tools: Tools,
    user: String,
    throttle: Option<u32>,
    /// `qacct` works here (learned from its first answer).
    accounting: Option<bool>,
    /// The state of each job as of the last poll.
    states: HashMap<String, JobState>,
    /// Final states already decided (a job is decided once).
    ended: HashMap<String, JobState>,
    /// When each job this mum submitted was accepted by qsub: one a poll started before that
    /// does not list is new, not gone.
    submitted: HashMap<String, Instant>,
    /// Jobs seen deleted (`d` in their state): qdel'd, by mum or by someone else.
    deleted: HashSet<String>,
    /// Jobs mum deleted itself (cancel): gone from qstat, they are decided at once.
    cancelled: HashSet<String>,
    /// Tasks listed waiting for their rerun (`Rq`): since when.
    rerun_seen: HashMap<String, Instant>,
    /// Jobs gone from qstat whose accounting record is not there yet: since when.
    awaiting: HashMap<String, Instant>,
    last_poll: Option<Instant>,
    answered: Option<Instant>,
    interval: Duration,
    /// What `find` last read from qstat: a restarted mum reconciling many launches asks once.
    found_rows: Option<(Instant, Vec<QueueRow>)>,
}

impl SgeWarden {
    pub fn new(settings: SgeSettings) -> SgeWarden {
        let interval = settings.poll_interval;
        SgeWarden {
            settings,
            tools: Tools::locate(),
            user: user_name(),
            throttle: None,
            accounting: None,
            states: HashMap::new(),
            ended: HashMap::new(),
            submitted: HashMap::new(),
            deleted: HashSet::new(),
            cancelled: HashSet::new(),
            rerun_seen: HashMap::new(),
            awaiting: HashMap::new(),
            last_poll: None,
            answered: None,
            interval,
            found_rows: None,
        }
    }

    fn batches(&self) -> PathBuf {
        self.settings.workdir.join("batches")
    }

    fn submit_batch(
        &mut self,
        jobs: &[(&JobRequest, &[(String, String)])],
    ) -> Result<String, String> {
        let run_dirs: Vec<&Path> = jobs.iter().map(|(r, _)| r.run_dir.as_path()).collect();
        // Intent first: each run names its batch (tasks count from 1) before qsub is asked, so
        // `find` can look it up.
        let b = Batch::prepare(&self.batches(), &run_dirs, 1, MARKER, "qsub.sh")?;
        let (batch, dir) = (b.id.clone(), b.dir.clone());
        let script = render(&batch, &dir, &run_dirs, jobs[0].1, self.throttle)?;
        b.write_script("qsub.sh", &script)?;
        tracing::debug!("sge: qsub call");
        let out = run_scheduler(
            self.tools.command("qsub").arg("-terse").current_dir(&dir),
            script.as_bytes(),
        )?;
        // `12.1-5:1` for an array.
        let id = out.trim().split('.').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("qsub answered {:?}, not a job id", out.trim()));
        }
        Batch::note_job_id(&self.batches(), &batch, &id);
        tracing::info!(
            "sge: submitted {} run(s) as array job {id} (batch {batch})",
            jobs.len()
        );
        Ok(id)
    }

    fn qstat(&self) -> Result<Vec<QueueRow>, String> {
        tracing::debug!("sge: qstat call");
        let out = run(self.tools.command("qstat").args(["-xml", "-u", &self.user]))?;
        Ok(parse_qstat_xml(&out))
    }

    /// Ask qstat (and, for jobs that left it, qacct) now.
    fn refresh(&mut self, jobs: &[(String, JobRequest)]) {
        let started = Instant::now();
        let rows = match self.qstat() {
            Ok(rows) => rows,
            Err(e) => {
                // Nothing is decided on a failed query: the jobs keep their last known state.
                tracing::warn!("sge: qstat failed (jobs keep their last known state): {e}");
                self.last_poll = Some(started);
                return;
            }
        };
        let listed: HashMap<&str, &QueueRow> = rows.iter().map(|r| (r.job.as_str(), r)).collect();
        let mut states = HashMap::new();
        let mut ask = Vec::new();
        let mut errors = Vec::new();
        for (job, req) in jobs {
            if let Some(s) = self.ended.get(job) {
                states.insert(job.clone(), s.clone());
                continue;
            }
            match listed.get(job.as_str()) {
                Some(row) if row.state.contains('E') => errors.push(job.clone()),
                Some(row) => {
                    if row.state.contains('d') {
                        self.deleted.insert(job.clone());
                    }
                    self.awaiting.remove(job);
                    let mut state = queue_state(&row.state);
                    // A rerun (`qmod -rj`) is listed `Rq` at once, while the old instance
                    // still stops: running until its kid wrote its exit record (for a while).
                    if row.state.starts_with('R') && state == JobState::Queued {
                        let since = *self.rerun_seen.entry(job.clone()).or_insert(started);
                        if since.elapsed() < RERUN_PATIENCE && kid_running(&req.run_dir) {
                            state = JobState::Alive;
                        }
                    } else {
                        self.rerun_seen.remove(job);
                    }
                    states.insert(job.clone(), state);
                }
                // Submitted after this qstat looked: it is new, not gone.
                None if self.submitted.get(job).is_some_and(|t| *t > started) => {
                    states.insert(job.clone(), JobState::Queued);
                }
                None => ask.push(job.clone()),
            }
        }
        if !errors.is_empty() {
            let reasons = self.error_reasons(&errors);
            for job in errors {
                let why = reasons.get(&job).cloned().unwrap_or_default();
                let state = JobState::Ended {
                    verdict: Verdict::Crashed,
                    overrides: true,
                    reason: if why.is_empty() {
                        "Grid Engine: the job is in an error state (Eqw)".into()
                    } else {
                        format!("Grid Engine: the job is in an error state (Eqw): {why}")
                    },
                };
                // It would wait there forever: delete it.
                self.qdel(&job);
                self.ended.insert(job.clone(), state.clone());
                states.insert(job, state);
            }
        }
        if !ask.is_empty() {
            let endings = self.endings(&ask);
            for job in ask {
                let deleted = self.deleted.contains(&job) || self.cancelled.contains(&job);
                let state = match endings.get(&job) {
                    Some(e) => ending_state(e, deleted),
                    None => {
                        let since = *self.awaiting.entry(job.clone()).or_insert(started);
                        // A task mum deleted has nothing more to say (one deleted while
                        // pending has no record at all).
                        let waiting = self.accounting == Some(true)
                            && !self.cancelled.contains(&job)
                            && since.elapsed() < ACCOUNTING_PATIENCE;
                        if waiting {
                            // Not decided yet: as it was last seen.
                            let last = self.states.get(&job).cloned().unwrap_or(JobState::Alive);
                            states.insert(job, last);
                            continue;
                        }
                        if deleted {
                            deleted_state()
                        } else {
                            JobState::Gone
                        }
                    }
                };
                self.awaiting.remove(&job);
                self.ended.insert(job.clone(), state.clone());
                states.insert(job, state);
            }
        }
        let changed = states.iter().any(|(j, s)| self.states.get(j) != Some(s));
        self.interval = if changed || !self.awaiting.is_empty() {
            self.settings.poll_interval
        } else {
            (self.interval * 2).min(MAX_BACKOFF.max(self.settings.poll_interval))
        };
        self.states = states;
        self.last_poll = Some(started);
        self.answered = Some(started);
        // Forget what mum no longer asks about.
        let asked: HashSet<&str> = jobs.iter().map(|(j, _)| j.as_str()).collect();
        self.ended.retain(|j, _| asked.contains(j.as_str()));
        self.submitted.retain(|j, _| asked.contains(j.as_str()));
        self.deleted.retain(|j| asked.contains(j.as_str()));
        self.cancelled.retain(|j| asked.contains(j.as_str()));
        self.rerun_seen.retain(|j, _| asked.contains(j.as_str()));
        self.awaiting.retain(|j, _| asked.contains(j.as_str()));
    }

    /// Why tasks are in an error state: `qstat -j`, once per array job.
    fn error_reasons(&mut self, jobs: &[String]) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for array in array_ids(jobs) {
            tracing::debug!("sge: qstat -j call");
            match run(self.tools.command("qstat").args(["-j", &array])) {
                Ok(text) => {
                    let reason = parse_error_reason(&text);
                    for job in jobs.iter().filter(|j| job_of(j) == array) {
                        out.insert(job.clone(), reason.clone());
                    }
                }
                Err(e) => tracing::warn!("sge: qstat -j {array}: {e}"),
            }
        }
        out
    }

    /// How the jobs that left qstat ended: `qacct -j`, once per array job.
    fn endings(&mut self, jobs: &[String]) -> HashMap<String, Ending> {
        let mut found = HashMap::new();
        if self.accounting == Some(false) {
            return found;
        }
        for array in array_ids(jobs) {
            tracing::debug!("sge: qacct call");
            let out = self
                .tools
                .command("qacct")
                .args(["-j", &array])
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    self.note_accounting(true);
                    for e in parse_qacct(&String::from_utf8_lossy(&o.stdout)) {
                        // Records come in order: a rerun task's last one is its end.
                        found.insert(e.job.clone(), e);
                    }
                }
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    if err.contains("not found") {
                        // Accounting is there, the record not yet.
                        self.note_accounting(true);
                    } else {
                        tracing::warn!("sge: qacct -j {array}: {}", err.trim());
                        self.note_accounting(false);
                    }
                }
                Err(e) => {
                    tracing::warn!("sge: cannot run qacct: {e}");
                    self.note_accounting(false);
                }
            }
        }
        found
    }

    fn note_accounting(&mut self, works: bool) {
        if self.accounting.is_none() {
            tracing::info!(
                "sge: {}",
                if works {
                    "accounting is on (final job states from qacct)"
                } else {
                    "no accounting (the kid's record decides how jobs ended)"
                }
            );
            self.accounting = Some(works);
        }
    }

    fn qdel(&mut self, job: &str) -> bool {
        tracing::debug!("sge: qdel call");
        let (array, task) = match job.split_once('.') {
            Some((a, t)) => (a, Some(t)),
            None => (job, None),
        };
        let mut cmd = self.tools.command("qdel");
        cmd.arg(array);
        if let Some(t) = task {
            cmd.args(["-t", t]);
        }
        match run(&mut cmd) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("sge: qdel {job}: {e}");
                false
            }
        }
    }
}

impl Warden for SgeWarden {
    fn name(&self) -> &'static str {
        "Grid Engine"
    }

    fn submit(&mut self, jobs: &[JobRequest]) -> Vec<Result<String, String>> {
        let mut results: Vec<Option<Result<String, String>>> = vec![None; jobs.len()];
        // Runs with the same options share an array, in the order given.
        let mut groups: BTreeMap<Vec<(String, String)>, Vec<usize>> = BTreeMap::new();
        let mut order = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            match read_options(&j.run_dir) {
                Ok(opts) => {
                    if !groups.contains_key(&opts) {
                        order.push(opts.clone());
                    }
                    groups.entry(opts).or_default().push(i);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let max = self.settings.array_max.max(1) as usize;
        for opts in order {
            let members = groups.remove(&opts).unwrap_or_default();
            for chunk in members.chunks(max) {
                let batch: Vec<(&JobRequest, &[(String, String)])> =
                    chunk.iter().map(|i| (&jobs[*i], opts.as_slice())).collect();
                match self.submit_batch(&batch) {
                    Ok(id) => {
                        for (n, i) in chunk.iter().enumerate() {
                            let job = format!("{id}.{}", n + 1);
                            self.submitted.insert(job.clone(), Instant::now());
                            results[*i] = Some(Ok(job));
                        }
                    }
                    Err(e) => {
                        for i in chunk {
                            results[*i] = Some(Err(format!("Grid Engine refused the job: {e}")));
                        }
                    }
                }
            }
        }
        self.hurry();
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err("not submitted".into())))
            .collect()
    }

    fn poll(&mut self, jobs: &[(String, JobRequest)]) -> HashMap<String, JobState> {
        let due = self.last_poll.is_none_or(|t| t.elapsed() >= self.interval);
        if due {
            self.refresh(jobs);
        }
        jobs.iter()
            .map(|(job, _)| {
                let state = self
                    .states
                    .get(job)
                    .or_else(|| self.ended.get(job))
                    .cloned()
                    // Not polled yet (submitted since, or adopted): still the warden's.
                    .unwrap_or(JobState::Queued);
                (job.clone(), state)
            })
            .collect()
    }

    fn cancel(&mut self, job: &str, _req: &JobRequest) -> bool {
        if job.is_empty() {
            return false;
        }
        let ok = self.qdel(job);
        if ok {
            self.cancelled.insert(job.to_string());
        }
        self.hurry();
        ok
    }

    fn find(&mut self, req: &JobRequest) -> Found {
        let Some((batch, task)) = Batch::of_run(&req.run_dir, MARKER) else {
            // qsub was never asked for this run.
            return Found::Never;
        };
        if let Some(id) = Batch::job_id(&self.batches(), &batch) {
            return Found::Running(format!("{id}.{task}"));
        }
        // qsub may have answered just before the crash: Grid Engine knows the batch by name.
        let name = format!("{JOB_PREFIX}{batch}");
        for attempt in 0..3 {
            let recent = self
                .found_rows
                .as_ref()
                .filter(|(t, _)| t.elapsed() < Duration::from_secs(5))
                .map(|(_, rows)| rows.clone());
            let listing = match recent {
                Some(rows) => Ok(rows),
                None => self
                    .qstat()
                    .inspect(|rows| self.found_rows = Some((Instant::now(), rows.clone()))),
            };
            match listing {
                Ok(rows) => {
                    if let Some(row) = rows.iter().find(|r| r.name == name) {
                        let array = job_of(&row.job).to_string();
                        Batch::note_job_id(&self.batches(), &batch, &array);
                        return Found::Running(format!("{array}.{task}"));
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!("sge: qstat failed looking for batch {batch}: {e}");
                    std::thread::sleep(Duration::from_millis(500 << attempt));
                }
            }
        }
        if req.run_dir.join(nerokid::report::EVENTS_FILE).exists() {
            Found::Ended
        } else {
            Found::Never
        }
    }

    fn clean_up(&mut self, _req: &JobRequest, _job_pgid: Option<i32>) {
        // The job script stops the kid (and so the job's group) on -notify's warning; the
        // job's node is not this machine.
    }

    fn queues_itself(&self) -> bool {
        true
    }

    fn holds_exit(&self) -> bool {
        true
    }

    fn set_throttle(&mut self, max: Option<u32>) {
        self.throttle = max;
    }

    fn hurry(&mut self) {
        self.interval = self.settings.poll_interval;
    }

    fn refreshed(&self) -> Option<Instant> {
        self.answered
    }
}

/// The user whose jobs qstat lists (mum's own).
fn user_name() -> String {
    // SAFETY: getuid cannot fail; getpwuid_r writes only into the buffers given.
    unsafe {
        let uid = libc::getuid();
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) == 0
            && !result.is_null()
            && !pw.pw_name.is_null()
        {
            return std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned();
        }
        std::env::var("USER").unwrap_or_else(|_| uid.to_string())
    }
}

/// Run a scheduler command; its stdout, or an error with its words.
fn run(cmd: &mut Command) -> Result<String, String> {
    run_scheduler(cmd, &[])
}

/// The run's kid has started and not written its exit record yet.
fn kid_running(run_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(run_dir.join(nerokid::report::EVENTS_FILE)) else {
        return false;
    };
    match (
        text.rfind(r#""event":"started""#),
        text.rfind(r#""event":"exited""#),
    ) {
        (Some(s), Some(e)) => s > e,
        (Some(_), None) => true,
        _ => false,
    }
}

fn job_of(job: &str) -> &str {
    job.split('.').next().unwrap_or(job)
}

/// `12.3,12.4,15.1` → `12`, `15`: qacct and `qstat -j` are asked per array job.
fn array_ids(jobs: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = jobs.iter().map(|j| job_of(j).to_string()).collect();
    ids.sort();
    ids.dedup();
    ids
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The text of `<tag>...</tag>` in `block` (first one).
fn tag<'a>(block: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = block.find(&open)? + open.len();
    let end = block[start..].find(&format!("</{name}>"))? + start;
    Some(&block[start..end])
}

/// Task ids of a qstat `tasks` field: `3`, `3-20:1`, `1-9:2`, `4,7-8:1`.
pub fn expand_tasks(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (range, step) = match part.split_once(':') {
            Some((r, s)) => (r, s.parse::<u32>().unwrap_or(1).max(1)),
            None => (part, 1),
        };
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (range.parse::<u32>(), range.parse::<u32>()),
        };
        if let (Ok(lo), Ok(hi)) = (lo, hi) {
            // A range as long as any real array (a garbled line cannot allocate without end).
            out.extend((lo..=hi.min(lo.saturating_add(100_000))).step_by(step as usize));
        }
    }
    out
}

/// `qstat -xml` (`<job_list>` blocks: running ones under `queue_info`, pending ones under
/// `job_info`); one row per task, pending ranges expanded.
pub fn parse_qstat_xml(text: &str) -> Vec<QueueRow> {
    let mut rows = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<job_list") {
        let Some(len) = rest[start..].find("</job_list>") else {
            break;
        };
        let block = &rest[start..start + len];
        rest = &rest[start + len..];
        let Some(number) = tag(block, "JB_job_number").map(str::trim) else {
            continue;
        };
        let name = unescape(tag(block, "JB_name").unwrap_or_default().trim());
        let state = tag(block, "state").unwrap_or_default().trim().to_string();
        let queue = tag(block, "queue_name").unwrap_or_default().trim();
        let node = queue
            .split_once('@')
            .map(|(_, h)| h.to_string())
            .unwrap_or_default();
        let row = |job: String| QueueRow {
            job,
            name: name.clone(),
            state: state.clone(),
            node: node.clone(),
        };
        match tag(block, "tasks").map(str::trim).filter(|t| !t.is_empty()) {
            Some(tasks) => {
                for t in expand_tasks(tasks) {
                    rows.push(row(format!("{number}.{t}")));
                }
            }
            None => rows.push(row(number.to_string())),
        }
    }
    rows
}

/// `qacct -j` records (`====` between them): job, task, `failed`, `exit_status`.
pub fn parse_qacct(text: &str) -> Vec<Ending> {
    let mut out = Vec::new();
    for record in text.split("\n==============================================================") {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for line in record.lines() {
            let line = line.trim_end();
            if let Some((k, v)) = line.split_once(char::is_whitespace) {
                fields.entry(k).or_insert(v.trim());
            }
        }
        let Some(number) = fields.get("jobnumber") else {
            continue;
        };
        let job = match fields.get("taskid") {
            Some(t) if t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty() => {
                format!("{number}.{t}")
            }
            _ => number.to_string(),
        };
        let failed_field = fields.get("failed").copied().unwrap_or("0");
        let (code, words) = match failed_field.split_once(':') {
            Some((c, w)) => (c.trim(), w.trim()),
            None => (failed_field.trim(), ""),
        };
        let exit_status = fields
            .get("exit_status")
            .and_then(|e| e.split_whitespace().next())
            .and_then(|e| e.parse().ok())
            .unwrap_or(0);
        out.push(Ending {
            job,
            failed: code.parse().unwrap_or(0),
            failed_text: words.to_string(),
            exit_status,
        });
    }
    out
}

/// The first `error reason` of `qstat -j` (`error reason 1: 11/27/2026 15:39:19 [0:3278]:
/// error: can't chdir to /x: No such file or directory` → `can't chdir to /x: ...`).
pub fn parse_error_reason(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error reason"))
        .map(|rest| {
            let rest = rest.split_once(':').map_or(rest, |(_, r)| r).trim();
            // Past the date and the `[uid:pid]:` part.
            let rest = rest.split_once("]:").map_or(rest, |(_, r)| r).trim();
            rest.strip_prefix("error:")
                .unwrap_or(rest)
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The state of a job qstat lists: `qw`, `hqw`, `Rq` (rerun, waiting) wait; `r`, `t`, `Rr`,
/// `s`, `S`, `T` (suspended) run; a deleted one (`dr`, `dt`, `dqw`) counts as running until it
/// leaves qstat (it never waits again: never a requeue).
pub fn queue_state(state: &str) -> JobState {
    if state.contains('d') {
        return JobState::Alive;
    }
    if state.contains('q') || state.contains('w') {
        return JobState::Queued;
    }
    JobState::Alive
}

fn deleted_state() -> JobState {
    JobState::Ended {
        verdict: Verdict::Aborted,
        overrides: true,
        reason: "Grid Engine: deleted (qdel)".into(),
    }
}

/// What qacct's record of an ended task means for its run (`deleted`: qstat showed it
/// being deleted).
pub fn ending_state(e: &Ending, deleted: bool) -> JobState {
    let ended = |verdict, overrides, reason: String| JobState::Ended {
        verdict,
        overrides,
        reason,
    };
    let words = if e.failed_text.is_empty() {
        format!("failed {}", e.failed)
    } else {
        format!("failed {}: {}", e.failed, e.failed_text)
    };
    match (e.failed, e.exit_status) {
        (37, _) => ended(
            Verdict::Timeout,
            true,
            "Grid Engine: time limit reached (h_rt)".into(),
        ),
        (_, _) if e.failed_text.contains("h_rt") => ended(
            Verdict::Timeout,
            true,
            format!("Grid Engine: time limit reached (h_rt; {words})"),
        ),
        _ if deleted => deleted_state(),
        (0, 0) => ended(
            Verdict::Lost,
            false,
            "Grid Engine says the job completed, but its kid left no exit record".into(),
        ),
        (0 | 100, 137) => ended(
            Verdict::Crashed,
            false,
            "Grid Engine: killed (exit status 137: SIGKILL, from Grid Engine, the node or out of memory)"
                .into(),
        ),
        (0, code) => ended(
            Verdict::Crashed,
            false,
            format!("Grid Engine: the job failed (exit status {code})"),
        ),
        (_, code) => ended(
            Verdict::Crashed,
            false,
            format!("Grid Engine: the job failed ({words}; exit status {code})"),
        ),
    }
}

/// A run's options as mum wrote them beside its scripts (none: no file).
fn read_options(run_dir: &Path) -> Result<Vec<(String, String)>, String> {
    let path = run_dir.join(super::slurm::OPTIONS_FILE);
    let opts: Vec<(String, String)> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    for (k, v) in &opts {
        check_option(k, v)?;
    }
    Ok(opts)
}

/// Whether `sge.<key> = value` can become a `#$` line; the error names the key. A key is a
/// qsub option without its dash (`q`, `pe`, `P`, `l`, `hold_jid`), or `l.<resource>` for one
/// resource of `-l` (`l.h_rt: 0:10:00`).
pub fn check_option(key: &str, value: &str) -> Result<(), String> {
    let (name, resource) = match key.split_once('.') {
        Some((n, r)) => (n, Some(r)),
        None => (key, None),
    };
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        return Err(format!(
            "sge.{key}: an option name is letters, digits and '_' (as qsub spells it, without the dash: q, pe, l, P), or l.<resource>"
        ));
    }
    if let Some(r) = resource {
        let ok = name == "l"
            && !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(format!(
                "sge.{key}: only -l takes a resource in its name (l.h_rt, l.mem_free)"
            ));
        }
        if value.is_empty() || value.contains([',', ' ', '\t', '"', '\'']) {
            return Err(format!(
                "sge.{key}: {value:?} is not one resource value (no commas, spaces or quotes)"
            ));
        }
    }
    if RESERVED.contains(&name) {
        return Err(format!("sge.{key}: neronet sets -{name} itself"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "sge.{key}: {value:?} holds a line break or another control character"
        ));
    }
    if value.contains('"') && value.contains('\'') {
        return Err(format!(
            "sge.{key}: {value:?} holds both kinds of quotes; qsub cannot read that on a #$ line"
        ));
    }
    Ok(())
}

/// `value` as qsub reads it on a `#$` line: in double quotes (qsub knows no backslash escapes),
/// in single quotes when it holds a double quote.
fn qsub_quote(value: &str) -> String {
    if value.contains('"') {
        format!("'{value}'")
    } else {
        format!("\"{value}\"")
    }
}

/// The resources of every `l` and `l.<resource>` option, for one `-l` line: a resource given
/// again replaces the earlier one in its place (names compared as Grid Engine does: case and
/// all). A shortcut and its full name (`mf`, `mem_free`) are two names here; within one `-l`
/// list Grid Engine itself takes the later of the two.
#[derive(Debug, Default)]
struct Resources(Vec<(String, String)>);

impl Resources {
    /// `h_vmem=4G,mem_free=4G` as qsub takes it (spaces around an item are dropped).
    fn add_list(&mut self, list: &str) {
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let name = item.split_once('=').map_or(item, |(n, _)| n).trim();
            self.set(name, item.to_string());
        }
    }

    fn set(&mut self, name: &str, item: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = item,
            None => self.0.push((name.to_string(), item)),
        }
    }

    /// `-l h_rt=1:00:00,mem_free=1G`, quoted for qsub when an item needs it.
    fn line(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let list = self
            .0
            .iter()
            .map(|(_, item)| item.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let plain = list
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.,:=+/*@|!&".contains(c));
        Some(if plain {
            format!("-l {list}")
        } else {
            format!("-l {}", qsub_quote(&list))
        })
    }
}

/// The array script for these run directories.
pub fn render(
    batch: &str,
    batch_dir: &Path,
    run_dirs: &[&Path],
    options: &[(String, String)],
    throttle: Option<u32>,
) -> Result<String, String> {
    let mut lines = Vec::new();
    let mut resources = Resources::default();
    for (k, v) in options {
        check_option(k, v)?;
        if k == "l" {
            resources.add_list(v);
        } else if let Some(r) = k.strip_prefix("l.") {
            resources.set(r, format!("{r}={v}"));
        } else if v.is_empty() {
            lines.push(format!("-{k}"));
        } else {
            lines.push(format!("-{k} {}", qsub_quote(v)));
        }
    }
    if let Some(line) = resources.line() {
        lines.push(line);
    }
    let quote = |p: &Path| {
        shlex::try_quote(&p.display().to_string())
            .map(|q| q.into_owned())
            .map_err(|_| format!("{} holds a NUL byte", p.display()))
    };
    let dirs = run_dirs
        .iter()
        .map(|d| quote(d))
        .collect::<Result<Vec<_>, _>>()?;
    let dir_text = batch_dir.display().to_string();
    if dir_text.contains(['"', '$']) || dir_text.chars().any(char::is_control) {
        return Err(format!(
            "the workdir {dir_text} holds '\"', '$' or a control character"
        ));
    }
    let throttle = throttle.filter(|n| (*n as usize) < run_dirs.len());
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("qsub.sh", TEMPLATE)
        .map_err(|e| format!("the qsub template: {e}"))?;
    let tmpl = env
        .get_template("qsub.sh")
        .map_err(|e| format!("the qsub template: {e}"))?;
    tmpl.render(minijinja::context! {
        batch => batch,
        job_name => format!("{JOB_PREFIX}{batch}"),
        array => format!("1-{}", run_dirs.len()),
        throttle => throttle,
        output => qsub_quote(&format!("{dir_text}/$TASK_ID.log")),
        workdir => qsub_quote(&dir_text),
        options => lines,
        run_dirs => dirs,
    })
    // The engine drops the template's last line break (as Jinja does): a script ends in one.
    .map(|text| text + "\n")
    .map_err(|e| format!("the qsub template: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Grid Engine 8.1.9: two tasks running, the rest of the array pending as a
    /// range, one task waiting for its rerun, a job in an error state.
    const QSTAT_XML: &str = r#"<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>1</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>neronet-abc123</JB_name>
      <JB_owner>root</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-11-27T15:36:23</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>1</slots>
      <tasks>1</tasks>
    </job_list>
    <job_list state="running">
      <JB_job_number>1</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>neronet-abc123</JB_name>
      <JB_owner>root</JB_owner>
      <state>dr</state>
      <JAT_start_time>2026-11-27T15:36:23</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>1</slots>
      <tasks>2</tasks>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>1</JB_job_number>
      <JAT_prio>0.00000</JAT_prio>
      <JB_name>neronet-abc123</JB_name>
      <JB_owner>root</JB_owner>
      <state>qw</state>
      <JB_submission_time>2026-11-27T15:36:23</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
      <tasks>3-5:1</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>7</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>neronet-eqw</JB_name>
      <JB_owner>root</JB_owner>
      <state>Eqw</state>
      <JB_submission_time>2026-11-27T15:39:19</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
      <tasks>1-3:1</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>8</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>neronet-rr</JB_name>
      <JB_owner>root</JB_owner>
      <state>Rq</state>
      <JB_submission_time>2026-11-27T15:39:22</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
      <tasks>1</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>9</JB_job_number>
      <JB_name>plain&amp;job</JB_name>
      <state>hqw</state>
      <queue_name></queue_name>
    </job_list>
  </job_info>
</job_info>
"#;

    #[test]
    fn qstat_xml_is_read_with_ranges_expanded() {
        let rows = parse_qstat_xml(QSTAT_XML);
        let jobs: Vec<&str> = rows.iter().map(|r| r.job.as_str()).collect();
        assert_eq!(
            jobs,
            ["1.1", "1.2", "1.3", "1.4", "1.5", "7.1", "7.2", "7.3", "8.1", "9"]
        );
        assert_eq!(rows[0].node, "vm");
        assert_eq!(rows[0].name, "neronet-abc123");
        assert_eq!(rows[2].node, "", "pending: no node");
        assert_eq!(rows[5].state, "Eqw");
        assert_eq!(rows[9].name, "plain&job");
        assert_eq!(rows[9].state, "hqw");
        assert!(
            parse_qstat_xml("<job_info>\n  <queue_info>\n  </queue_info>\n</job_info>").is_empty()
        );
    }

    #[test]
    fn task_ranges_expand() {
        assert_eq!(expand_tasks("3-6:1"), [3, 4, 5, 6]);
        assert_eq!(expand_tasks("1-9:4"), [1, 5, 9]);
        assert_eq!(expand_tasks("2"), [2]);
        assert_eq!(expand_tasks("4,7-8:1"), [4, 7, 8]);
        assert!(expand_tasks("x").is_empty());
    }

    #[test]
    fn qstat_states_map() {
        for s in ["qw", "hqw", "Rq", "hRwq"] {
            assert_eq!(queue_state(s), JobState::Queued, "{s}");
        }
        for s in [
            "r", "t", "Rr", "Rt", "s", "S", "T", "dr", "dt", "dqw", "dRr",
        ] {
            assert_eq!(queue_state(s), JobState::Alive, "{s}");
        }
    }

    /// Captured: a task ended normally, one deleted while running (killed after -notify's
    /// time), one over its h_rt, one rescheduled by `qmod -rj` then run again.
    const QACCT: &str = "==============================================================
qname        all.q               
hostname     vm                  
jobname      neronet-abc123      
jobnumber    1                   
taskid       1                   
failed       0    
exit_status  0                   
ru_wallclock 5s
==============================================================
qname        all.q               
jobname      STDIN               
jobnumber    2                   
taskid       1                   
failed       100 : assumedly after job
exit_status  137                  (Killed)
==============================================================
qname        all.q               
jobname      hrt                 
jobnumber    4                   
taskid       undefined           
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  143                  (Terminated)
==============================================================
jobnumber    6                   
taskid       3                   
failed       25  : rescheduling
exit_status  0                   
==============================================================
jobnumber    6                   
taskid       3                   
failed       0    
exit_status  3                   
";

    #[test]
    fn qacct_records_are_read() {
        let e = parse_qacct(QACCT);
        assert_eq!(e.len(), 5, "{e:?}");
        assert_eq!(e[0].job, "1.1");
        assert_eq!((e[0].failed, e[0].exit_status), (0, 0));
        assert_eq!(e[1].job, "2.1");
        assert_eq!((e[1].failed, e[1].exit_status), (100, 137));
        assert_eq!(e[1].failed_text, "assumedly after job");
        assert_eq!(e[2].job, "4", "not an array");
        assert_eq!((e[2].failed, e[2].exit_status), (37, 143));
        assert_eq!(e[4].job, "6.3");
        assert_eq!(e[4].exit_status, 3);
    }

    #[test]
    fn qacct_records_map_to_verdicts() {
        let v = |failed: u32, text: &str, code: i32, deleted: bool| match ending_state(
            &Ending {
                job: "1.1".into(),
                failed,
                failed_text: text.into(),
                exit_status: code,
            },
            deleted,
        ) {
            JobState::Ended {
                verdict,
                overrides,
                reason,
            } => (verdict, overrides, reason),
            other => panic!("{other:?}"),
        };
        let t = v(
            37,
            "qmaster enforced h_rt, h_cpu, or h_vmem limit",
            143,
            false,
        );
        assert_eq!(
            t,
            (
                Verdict::Timeout,
                true,
                "Grid Engine: time limit reached (h_rt)".into()
            )
        );
        assert_eq!(v(37, "", 143, true).0, Verdict::Timeout, "h_rt wins");
        assert_eq!(v(0, "", 0, false).0, Verdict::Lost);
        assert!(!v(0, "", 0, false).1, "the kid's record is better");
        let killed = v(100, "assumedly after job", 137, false);
        assert_eq!((killed.0, killed.1), (Verdict::Crashed, false));
        assert!(killed.2.contains("killed (exit status 137"), "{}", killed.2);
        assert_eq!(
            v(100, "assumedly after job", 137, true),
            (Verdict::Aborted, true, "Grid Engine: deleted (qdel)".into())
        );
        let failed = v(26, "opening input/output file", 0, false);
        assert_eq!(failed.0, Verdict::Crashed);
        assert!(
            failed.2.contains("failed 26: opening input/output file"),
            "{}",
            failed.2
        );
        assert!(v(0, "", 3, false).2.contains("exit status 3"));
    }

    #[test]
    fn the_error_reason_is_read() {
        let text = "job_number:                 7\n\
error reason          1:      11/27/2026 15:39:19 [0:3278]: error: can't chdir to /nonexistent/dir: No such file or directory\n\
error reason          2:      11/27/2026 15:39:19 [0:3279]: error: can't chdir to /nonexistent/dir: No such file or directory\n\
scheduling info:            Job is in error state\n";
        assert_eq!(
            parse_error_reason(text),
            "can't chdir to /nonexistent/dir: No such file or directory"
        );
        assert_eq!(parse_error_reason("job_number: 7\n"), "");
    }

    #[test]
    fn options_are_checked_by_name() {
        for (k, v) in [
            ("q", "all.q"),
            ("pe", "smp 4"),
            ("P", "proj"),
            ("l", "h_rt=0:10:00,mem_free=1G"),
            ("l.h_rt", "0:10:00"),
            ("hold_jid", "12"),
            ("ac", "x=\"y\""),
        ] {
            assert!(check_option(k, v).is_ok(), "{k}={v}");
        }
        for (k, v) in [
            ("", "1"),
            ("-q", "x"),
            ("a b", "1"),
            ("pe.x", "1"),
            ("1x", "1"),
        ] {
            let e = check_option(k, v).unwrap_err();
            assert!(e.starts_with(&format!("sge.{k}:")), "{e}");
        }
        for k in [
            "t", "N", "o", "e", "j", "S", "terse", "sync", "b", "notify", "tc",
        ] {
            let e = check_option(k, "1").unwrap_err();
            assert!(e.contains(&format!("neronet sets -{k} itself")), "{e}");
        }
        let e = check_option("q", "a\n#$ -b y").unwrap_err();
        assert!(e.contains("sge.q") && e.contains("line break"), "{e}");
        let e = check_option("ac", "a\"b'c").unwrap_err();
        assert!(e.contains("both kinds of quotes"), "{e}");
        let e = check_option("l.h_rt", "1,mem=2").unwrap_err();
        assert!(e.contains("sge.l.h_rt"), "{e}");
    }

    /// Regression: `l` and `l.<resource>` keys made two `-l` lines (`-l "h_vmem=1G"` and
    /// `-l h_rt=0:05:00`), and a cluster's `l: h_rt=1:00:00,...` with a row's `l.h_rt` gave
    /// both h_rt values. They are one `-l` now, a later resource replacing an earlier one of the
    /// same name (case-sensitive, as Grid Engine's names are).
    #[test]
    fn resources_merge_into_one_l_line() {
        let dirs = [Path::new("/w/r/1")];
        let opts = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let l_lines = |pairs: &[(&str, &str)]| -> Vec<String> {
            render("b", Path::new("/w/b"), &dirs, &opts(pairs), None)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("#$ -l "))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            l_lines(&[("l", "h_vmem=1G"), ("l.h_rt", "0:05:00")]),
            ["#$ -l h_vmem=1G,h_rt=0:05:00"]
        );
        assert_eq!(
            l_lines(&[
                ("l", "h_rt=1:00:00, mem_free=4G"),
                ("l.h_rt", "0:02:00"),
                ("l.H_RT", "9"),
            ]),
            ["#$ -l h_rt=0:02:00,mem_free=4G,H_RT=9"]
        );
        // A later `l` list replaces resources of an earlier `l.<r>` too.
        assert_eq!(
            l_lines(&[("l.h_rt", "1:00:00"), ("l", "h_rt=0:01:00,arch=lx-amd64")]),
            ["#$ -l h_rt=0:01:00,arch=lx-amd64"]
        );
        assert_eq!(
            l_lines(&[("l", "h=node 1")]),
            ["#$ -l \"h=node 1\""],
            "quoted for qsub when it must be"
        );
        assert!(l_lines(&[("q", "all.q")]).is_empty());
    }

    /// Snapshot of the script for two runs: options quoted for qsub's own reader, run
    /// directories quoted for the shell, shell metacharacters inert.
    #[test]
    fn the_template_renders_an_array() {
        let dirs = [Path::new("/w/runs/a-1.1"), Path::new("/w/runs/it's $(x)")];
        let opts = vec![
            ("q".to_string(), "all.q".to_string()),
            (
                "ac".to_string(),
                r#"note=a "b" $(touch x); `id`"#.to_string(),
            ),
            ("l".to_string(), "mem_free=1G".to_string()),
            ("l.h_rt".to_string(), "0:10:00".to_string()),
            ("l.s_rt".to_string(), "0:09:00".to_string()),
            ("R".to_string(), String::new()),
        ];
        let s = render("ab12", Path::new("/w/batches/ab12"), &dirs, &opts, Some(1)).unwrap();
        let expected = r#"#!/bin/sh
# Generated by neromum: a Grid Engine array job of 2 Neronet run(s), batch ab12.
# Task N runs the job.sh of the N-th run directory below, which runs the command under nerokid.
# Every value below was quoted or checked by neromum; `#$` lines are read by qsub only.
#$ -N neronet-ab12
#$ -t 1-2
#$ -tc 1
#$ -o "/w/batches/ab12/$TASK_ID.log"
#$ -j y
#$ -S /bin/sh
#$ -wd "/w/batches/ab12"
#$ -notify
#$ -v PATH
#$ -q "all.q"
#$ -ac 'note=a "b" $(touch x); `id`'
#$ -R
#$ -l mem_free=1G,h_rt=0:10:00,s_rt=0:09:00

case "$SGE_TASK_ID" in
1) run_dir=/w/runs/a-1.1 ;;
2) run_dir="/w/runs/it's "'$(x)' ;;
*) echo "neronet: no run for array task $SGE_TASK_ID" >&2; exit 125 ;;
esac
"#;
        assert!(s.starts_with(expected), "{s}");
        assert!(s.ends_with("exit \"$status\"\n"), "{s}");
        // The kid learns it runs under Grid Engine (SIGUSR1 is a suspend there).
        let export = format!("{0}=sge\nexport {0}\n", nerokid::run::WARDEN_ENV);
        assert!(s.contains(&export), "{s}");
        // No throttle when it does not bind.
        let s = render("ab12", Path::new("/w/b"), &dirs, &[], Some(5)).unwrap();
        assert!(!s.contains("-tc"), "{s}");
        assert!(render(
            "x",
            Path::new("/w/b"),
            &dirs,
            &[("q".into(), "1\n".into())],
            None
        )
        .is_err());
    }
}
