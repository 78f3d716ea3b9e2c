//! The `slurm` warden: runs go to SLURM as job arrays, one `sbatch` per group of runs with the
//! same options (at most `array_max` runs each), from the template `sbatch.sh.j2`. One `squeue`
//! call per poll interval answers for every job (`poll_interval`, backing off to 60 s while
//! nothing changes); a job that leaves the queue is asked about once more — `sacct` when the
//! cluster keeps accounting, else `scontrol -o show job` — for how it ended. Cancel is `scancel`
//! of the one array task.
//!
//! Files: `<workdir>/batches/<batch>/` holds the array's `sbatch.sh`, `jobid` (written when
//! sbatch answered) and `<task>.log` links to each run's `kid.log` (SLURM's `--output`, so its
//! own words — "CANCELLED DUE TO TIME LIMIT" — land beside the kid's). Each run directory gets
//! `slurm-batch` (`<batch> <task>`, written before sbatch is called) and an `sbatch.sh` link.
//! After a crash between mum's "launching" and "launched" entries, `find` reads `slurm-batch`
//! and looks the batch up by its job comment (`neronet:<batch>`): a run is never submitted twice.

use super::warden::{Batch, Found, JobRequest, JobState, Warden};
use crate::cluster::protocol::Verdict;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The job array script; `#SBATCH` lines from each run's options.
const TEMPLATE: &str = include_str!("sbatch.sh.j2");
/// Every job mum submits carries this name (`squeue --name` finds them).
pub const JOB_NAME: &str = "neronet";
/// The file in a run directory naming its batch and task (written before sbatch is asked).
const MARKER: &str = "slurm-batch";
/// The file in a run directory that holds its options for the warden (written by mum).
pub const OPTIONS_FILE: &str = "warden_opts.json";
/// The longest a poll interval grows to while nothing changes.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Options neromum sets itself: a run cannot give them.
const RESERVED: [&str; 10] = [
    "array",
    "output",
    "open-mode",
    "error",
    "input",
    "job-name",
    "comment",
    "parsable",
    "wrap",
    "test-only",
];

/// How the SLURM warden is set up (from `neromum --poll-interval --array-max`).
#[derive(Debug, Clone)]
pub struct SlurmSettings {
    pub workdir: PathBuf,
    pub poll_interval: Duration,
    pub array_max: u32,
}

/// How many times each scheduler command ran (for benchmarks and tests).
#[derive(Debug, Default)]
pub struct SchedulerCalls {
    pub sbatch: AtomicU64,
    pub squeue: AtomicU64,
    pub scontrol: AtomicU64,
    pub sacct: AtomicU64,
    pub scancel: AtomicU64,
}

impl SchedulerCalls {
    fn count(&self, which: &AtomicU64, what: &str) {
        let n = which.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!("slurm: {what} call #{n}");
    }
}

/// One line of `squeue`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    pub job: String,
    pub state: String,
    pub reason: String,
    pub node: String,
    pub comment: String,
}

/// What `sacct` or `scontrol` say of an ended job.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub job: String,
    pub state: String,
    pub reason: String,
    pub exit_code: String,
}

pub struct SlurmWarden {
    settings: SlurmSettings,
    calls: Arc<SchedulerCalls>,
    throttle: Option<u32>,
    /// `sacct` works here (asked once, when first needed).
    accounting: Option<bool>,
    /// The state of each job as of the last poll.
    states: HashMap<String, JobState>,
    /// Final states already asked for (a job is asked about once).
    ended: HashMap<String, JobState>,
    /// When each job this mum submitted was accepted by sbatch: one a poll started before that
    /// does not list is new, not gone.
    submitted: HashMap<String, Instant>,
    /// When squeue was last asked (the rate limit), and last answered (how fresh `states` is).
    last_poll: Option<Instant>,
    answered: Option<Instant>,
    interval: Duration,
    /// What `find` last read from squeue: a restarted mum reconciling many launches asks once.
    found_rows: Option<(Instant, Vec<QueueRow>)>,
}

impl SlurmWarden {
    pub fn new(settings: SlurmSettings) -> SlurmWarden {
        let interval = settings.poll_interval;
        SlurmWarden {
            settings,
            calls: Arc::default(),
            throttle: None,
            accounting: None,
            states: HashMap::new(),
            ended: HashMap::new(),
            submitted: HashMap::new(),
            last_poll: None,
            answered: None,
            interval,
            found_rows: None,
        }
    }

    /// The scheduler call counters (shared: they keep counting).
    pub fn calls(&self) -> Arc<SchedulerCalls> {
        Arc::clone(&self.calls)
    }

    fn batches(&self) -> PathBuf {
        self.settings.workdir.join("batches")
    }

    fn submit_batch(
        &mut self,
        jobs: &[(&JobRequest, &[(String, String)])],
    ) -> Result<String, String> {
        let run_dirs: Vec<&Path> = jobs.iter().map(|(r, _)| r.run_dir.as_path()).collect();
        // Intent first: each run names its batch before sbatch is asked, so `find` can look it up.
        let b = Batch::prepare(&self.batches(), &run_dirs, 0, MARKER, "sbatch.sh")?;
        let (batch, dir) = (b.id.clone(), b.dir.clone());
        let script = render(&batch, &dir, &run_dirs, jobs[0].1, self.throttle)?;
        let path = b.write_script("sbatch.sh", &script)?;
        self.calls.count(&self.calls.sbatch, "sbatch");
        let out = run(Command::new("sbatch")
            .arg("--parsable")
            .arg(&path)
            .current_dir(&dir))?;
        // `1234` or `1234;cluster`.
        let id = out.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("sbatch answered {out:?}, not a job id"));
        }
        Batch::note_job_id(&self.batches(), &batch, &id);
        tracing::info!(
            "slurm: submitted {} run(s) as job array {id} (batch {batch})",
            jobs.len()
        );
        Ok(id)
    }

    /// Ask squeue (and, for jobs that left the queue, sacct or scontrol) now.
    fn refresh(&mut self, jobs: &[(String, JobRequest)]) {
        let started = Instant::now();
        self.calls.count(&self.calls.squeue, "squeue");
        let rows = match squeue() {
            Ok(rows) => rows,
            Err(e) => {
                // Nothing is decided on a failed query: the jobs keep their last known state.
                tracing::warn!("slurm: squeue failed (jobs keep their last known state): {e}");
                self.last_poll = Some(started);
                return;
            }
        };
        let listed: HashMap<&str, &QueueRow> = rows.iter().map(|r| (r.job.as_str(), r)).collect();
        let mut states = HashMap::new();
        let mut ask = Vec::new();
        for (job, _) in jobs {
            if let Some(s) = self.ended.get(job) {
                states.insert(job.clone(), s.clone());
                continue;
            }
            match listed.get(job.as_str()) {
                Some(row) => match queue_state(&row.state) {
                    Some(s) => {
                        states.insert(job.clone(), s);
                    }
                    // squeue's word on how it ended is enough, but for the exit code of a
                    // failed job.
                    None if row.state != "FAILED" => {
                        let s = ending_state(&row.state, &row.reason, "");
                        self.ended.insert(job.clone(), s.clone());
                        states.insert(job.clone(), s);
                    }
                    None => ask.push(job.clone()),
                },
                // Submitted after this squeue looked: it is new, not gone.
                None if self.submitted.get(job).is_some_and(|t| *t > started) => {
                    states.insert(job.clone(), JobState::Queued);
                }
                None => ask.push(job.clone()),
            }
        }
        if !ask.is_empty() {
            let endings = self.endings(&ask);
            for job in ask {
                let row = listed.get(job.as_str());
                let state = match endings.get(&job) {
                    Some(e) => ending_state(&e.state, &e.reason, &e.exit_code),
                    None => match row {
                        Some(r) => ending_state(&r.state, &r.reason, ""),
                        None => JobState::Gone,
                    },
                };
                self.ended.insert(job.clone(), state.clone());
                states.insert(job, state);
            }
        }
        let changed = states.iter().any(|(j, s)| self.states.get(j) != Some(s));
        self.interval = if changed {
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
    }

    /// How the jobs that left the queue ended, in one call.
    fn endings(&mut self, jobs: &[String]) -> HashMap<String, Ending> {
        if self.accounting.is_none() {
            let works = Command::new("sacct")
                .args(["-n", "-X", "-P", "-o", "JobID", "-S", "now"])
                .output()
                .is_ok_and(|o| o.status.success());
            tracing::info!(
                "slurm: {} (final job states from {})",
                if works {
                    "accounting is on"
                } else {
                    "no accounting"
                },
                if works { "sacct" } else { "scontrol" }
            );
            self.accounting = Some(works);
        }
        let result = if self.accounting == Some(true) {
            self.calls.count(&self.calls.sacct, "sacct");
            run(Command::new("sacct")
                .args(["-n", "-X", "-P", "-o", "JobID,State,ExitCode,Reason", "-j"])
                .arg(array_ids(jobs)))
            .map(|out| parse_sacct(&out))
        } else {
            // One call per job array (its tasks come together), not the whole cluster's list.
            let mut all = Vec::new();
            let mut failure = None;
            for array in array_ids(jobs).split(',') {
                self.calls.count(&self.calls.scontrol, "scontrol");
                match run(Command::new("scontrol").args(["-o", "show", "job", array])) {
                    Ok(out) => all.extend(parse_scontrol(&out)),
                    Err(e) => failure = Some(e),
                }
            }
            match failure {
                Some(e) if all.is_empty() => Err(e),
                _ => Ok(all),
            }
        };
        match result {
            Ok(list) => list.into_iter().map(|e| (e.job.clone(), e)).collect(),
            Err(e) => {
                tracing::warn!("slurm: cannot ask how jobs ended: {e}");
                HashMap::new()
            }
        }
    }
}

impl Warden for SlurmWarden {
    fn name(&self) -> &'static str {
        "SLURM"
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
                        for (task, i) in chunk.iter().enumerate() {
                            let job = format!("{id}_{task}");
                            self.submitted.insert(job.clone(), Instant::now());
                            results[*i] = Some(Ok(job));
                        }
                    }
                    Err(e) => {
                        for i in chunk {
                            results[*i] = Some(Err(format!("SLURM refused the job: {e}")));
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
        self.calls.count(&self.calls.scancel, "scancel");
        let ok = match run(Command::new("scancel").arg(job)) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("slurm: scancel {job}: {e}");
                false
            }
        };
        self.hurry();
        ok
    }

    fn find(&mut self, req: &JobRequest) -> Found {
        let Some((batch, task)) = Batch::of_run(&req.run_dir, MARKER) else {
            // sbatch was never asked for this run.
            return Found::Never;
        };
        if let Some(id) = Batch::job_id(&self.batches(), &batch) {
            return Found::Running(format!("{id}_{task}"));
        }
        // sbatch may have answered just before the crash: SLURM knows the batch by its comment.
        let comment = format!("{JOB_NAME}:{batch}");
        for attempt in 0..3 {
            let recent = self
                .found_rows
                .as_ref()
                .filter(|(t, _)| t.elapsed() < Duration::from_secs(5))
                .map(|(_, rows)| rows.clone());
            let listing = match recent {
                Some(rows) => Ok(rows),
                None => {
                    self.calls.count(&self.calls.squeue, "squeue");
                    squeue().inspect(|rows| self.found_rows = Some((Instant::now(), rows.clone())))
                }
            };
            match listing {
                Ok(rows) => {
                    if let Some(row) = rows.iter().find(|r| r.comment == comment) {
                        let array = row.job.split('_').next().unwrap_or_default();
                        Batch::note_job_id(&self.batches(), &batch, array);
                        return Found::Running(format!("{array}_{task}"));
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!("slurm: squeue failed looking for batch {batch}: {e}");
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
        // SLURM ends what is left of a job's processes when its batch step ends.
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

/// Run a scheduler command; its stdout, or an error with its words.
fn run(cmd: &mut Command) -> Result<String, String> {
    super::warden::run_scheduler(cmd, &[])
}

/// Every job of this user named `neronet`, one line per array task.
fn squeue() -> Result<Vec<QueueRow>, String> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let out = run(Command::new("squeue").args([
        "-h",
        "-r",
        "--states=all",
        "-u",
        &uid.to_string(),
        "--name",
        JOB_NAME,
        "-o",
        "%i|%T|%r|%N|%k",
    ]))?;
    Ok(parse_squeue(&out))
}

/// `squeue -o '%i|%T|%r|%N|%k'` lines (the comment last: it may hold anything).
pub fn parse_squeue(text: &str) -> Vec<QueueRow> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(5, '|');
            let job = f.next()?.trim().to_string();
            let state = f.next()?.trim().to_string();
            let row = QueueRow {
                job,
                state,
                reason: f.next().unwrap_or_default().trim().to_string(),
                node: f.next().unwrap_or_default().trim().to_string(),
                comment: f.next().unwrap_or_default().trim().to_string(),
            };
            (!row.job.is_empty()).then_some(row)
        })
        .collect()
}

/// `sacct -n -X -P -o JobID,State,ExitCode,Reason` lines. The state may read
/// `CANCELLED by 1000`.
pub fn parse_sacct(text: &str) -> Vec<Ending> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            (f.len() >= 3 && !f[0].is_empty()).then(|| Ending {
                job: f[0].trim().to_string(),
                state: f[1]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                exit_code: f[2].trim().to_string(),
                reason: f.get(3).map_or(String::new(), |r| r.trim().to_string()),
            })
        })
        .collect()
}

/// `scontrol -o show job` lines: `JobId=5 ArrayJobId=2 ArrayTaskId=1 ... JobState=FAILED
/// Reason=NonZeroExitCode ... ExitCode=1:0 ...`. An array task is named `<array>_<task>`.
pub fn parse_scontrol(text: &str) -> Vec<Ending> {
    text.lines()
        .filter_map(|line| {
            let mut fields: HashMap<&str, &str> = HashMap::new();
            for word in line.split_whitespace() {
                if let Some((k, v)) = word.split_once('=') {
                    fields.entry(k).or_insert(v);
                }
            }
            let job = match (fields.get("ArrayJobId"), fields.get("ArrayTaskId")) {
                (Some(a), Some(t)) if t.chars().all(|c| c.is_ascii_digit()) => format!("{a}_{t}"),
                (Some(_), Some(_)) => return None, // the pending rest of an array: `3-50`
                _ => fields.get("JobId")?.to_string(),
            };
            Some(Ending {
                job,
                state: fields.get("JobState")?.to_string(),
                reason: fields.get("Reason").unwrap_or(&"").to_string(),
                exit_code: fields.get("ExitCode").unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// The state of a job squeue lists, or `None` when it has ended (then asked about once more).
fn queue_state(state: &str) -> Option<JobState> {
    match state {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" => Some(JobState::Queued),
        "RUNNING" | "COMPLETING" | "CONFIGURING" | "SUSPENDED" | "STOPPED" | "RESIZING"
        | "SIGNALING" | "STAGE_OUT" | "RESV_DEL_HOLD" => Some(JobState::Alive),
        _ => None,
    }
}

/// What an ended job's SLURM state means for its run.
pub fn ending_state(state: &str, reason: &str, exit_code: &str) -> JobState {
    let ended = |verdict, overrides, reason: String| JobState::Ended {
        verdict,
        overrides,
        reason,
    };
    let code = exit_code.trim();
    match state {
        "COMPLETED" => ended(
            Verdict::Lost,
            false,
            "SLURM says the job completed, but its kid left no exit record".into(),
        ),
        "FAILED" => {
            let why = match (code, reason) {
                ("", "" | "None") => String::new(),
                ("", r) => format!(", {r}"),
                (c, _) => format!(", exit code {c}"),
            };
            ended(
                Verdict::Crashed,
                false,
                format!("SLURM: the job failed (FAILED{why})"),
            )
        }
        "OUT_OF_MEMORY" => ended(
            Verdict::Crashed,
            true,
            "SLURM: out of memory (OUT_OF_MEMORY)".into(),
        ),
        "NODE_FAIL" => ended(
            Verdict::Crashed,
            true,
            "SLURM: its node failed (NODE_FAIL)".into(),
        ),
        "BOOT_FAIL" => ended(
            Verdict::Crashed,
            true,
            "SLURM: its node failed to boot (BOOT_FAIL)".into(),
        ),
        "TIMEOUT" => ended(
            Verdict::Timeout,
            true,
            "SLURM: time limit reached (TIMEOUT)".into(),
        ),
        "DEADLINE" => ended(
            Verdict::Timeout,
            true,
            "SLURM: deadline reached (DEADLINE)".into(),
        ),
        "CANCELLED" => ended(
            Verdict::Aborted,
            true,
            "SLURM: cancelled (CANCELLED)".into(),
        ),
        "PREEMPTED" => ended(
            Verdict::Lost,
            true,
            "SLURM: preempted and not requeued (PREEMPTED)".into(),
        ),
        other => ended(
            Verdict::Lost,
            true,
            format!("SLURM: the job ended as {other}"),
        ),
    }
}

/// `1234_5,1234_6,77` → the array ids sacct is asked about (`1234,77`): fewer words.
fn array_ids(jobs: &[String]) -> String {
    let mut ids: Vec<&str> = jobs
        .iter()
        .map(|j| j.split('_').next().unwrap_or(j))
        .collect();
    ids.sort();
    ids.dedup();
    ids.join(",")
}

/// A run's options as mum wrote them beside its scripts (none: no file).
fn read_options(run_dir: &Path) -> Result<Vec<(String, String)>, String> {
    let path = run_dir.join(OPTIONS_FILE);
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

/// Whether `slurm.<key> = value` can become an `#SBATCH` line; the error names the key.
pub fn check_option(key: &str, value: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !well_formed {
        return Err(format!(
            "slurm.{key}: an option name is lower-case letters, digits and '-' (as sbatch spells its long options)"
        ));
    }
    if RESERVED.contains(&key) {
        return Err(format!("slurm.{key}: neronet sets --{key} itself"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "slurm.{key}: {value:?} holds a line break or another control character"
        ));
    }
    Ok(())
}

/// `value` as sbatch reads it on an `#SBATCH` line: in double quotes, `"` and `\` escaped.
fn sbatch_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
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
    for (k, v) in options {
        check_option(k, v)?;
        lines.push(if v.is_empty() {
            format!("--{k}")
        } else {
            format!("--{k}={}", sbatch_quote(v))
        });
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
    let mut array = format!("0-{}", run_dirs.len().saturating_sub(1));
    if let Some(n) = throttle.filter(|n| (*n as usize) < run_dirs.len()) {
        array.push_str(&format!("%{n}"));
    }
    // SLURM expands `%` patterns in the output path: a literal one is written `\%`... rare
    // enough to refuse.
    let output = batch_dir.join("%a.log").display().to_string();
    if batch_dir.display().to_string().contains('%') || output.chars().any(char::is_control) {
        return Err(format!(
            "the workdir {} holds '%' or a control character",
            batch_dir.display()
        ));
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("sbatch.sh", TEMPLATE)
        .map_err(|e| format!("the sbatch template: {e}"))?;
    let tmpl = env
        .get_template("sbatch.sh")
        .map_err(|e| format!("the sbatch template: {e}"))?;
    tmpl.render(minijinja::context! {
        batch => batch,
        job_name => JOB_NAME,
        comment => sbatch_quote(&format!("{JOB_NAME}:{batch}")),
        array => array,
        output => sbatch_quote(&output),
        options => lines,
        run_dirs => dirs,
    })
    // The engine drops the template's last line break (as Jinja does): a script ends in one.
    .map(|text| text + "\n")
    .map_err(|e| format!("the sbatch template: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_are_read() {
        let text = "2_2|PENDING|Resources|||\n2_0|RUNNING|None|vm|neronet:abc|x\n";
        let rows = parse_squeue(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].state, "PENDING");
        assert_eq!(rows[1].node, "vm");
        assert_eq!(
            rows[1].comment, "neronet:abc|x",
            "the comment keeps its bars"
        );
    }

    #[test]
    fn scontrol_lines_are_read_with_array_ids() {
        let text = "JobId=4 ArrayJobId=2 ArrayTaskId=1 JobName=neronet JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 ExitCode=3:0 RunTime=00:00:02\n\
JobId=2 ArrayJobId=2 ArrayTaskId=3-50 JobState=PENDING Reason=Resources ExitCode=0:0\n\
JobId=9 JobName=other JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15\n";
        let e = parse_scontrol(text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].job, "2_1");
        assert_eq!(e[0].state, "FAILED");
        assert_eq!(e[0].exit_code, "3:0");
        assert_eq!(e[1].job, "9");
        assert_eq!(e[1].state, "TIMEOUT");
    }

    #[test]
    fn sacct_lines_are_read() {
        let e = parse_sacct("12_3|CANCELLED by 1000|0:15|None\n13|OUT_OF_MEMORY|0:125|\n");
        assert_eq!(e[0].job, "12_3");
        assert_eq!(e[0].state, "CANCELLED");
        assert_eq!(e[1].state, "OUT_OF_MEMORY");
    }

    #[test]
    fn slurm_states_map_to_verdicts() {
        let v = |s: &str| match ending_state(s, "", "3:0") {
            JobState::Ended {
                verdict, overrides, ..
            } => (verdict, overrides),
            other => panic!("{other:?}"),
        };
        assert_eq!(v("TIMEOUT"), (Verdict::Timeout, true));
        assert_eq!(v("OUT_OF_MEMORY"), (Verdict::Crashed, true));
        assert_eq!(v("NODE_FAIL"), (Verdict::Crashed, true));
        assert_eq!(
            v("FAILED"),
            (Verdict::Crashed, false),
            "the kid's exit code is better"
        );
        assert_eq!(v("COMPLETED"), (Verdict::Lost, false));
        assert_eq!(v("CANCELLED"), (Verdict::Aborted, true));
        assert_eq!(v("PREEMPTED"), (Verdict::Lost, true));
        assert!(matches!(
            ending_state("OUT_OF_MEMORY", "", ""),
            JobState::Ended { reason, .. } if reason == "SLURM: out of memory (OUT_OF_MEMORY)"
        ));
        assert_eq!(queue_state("PENDING"), Some(JobState::Queued));
        assert_eq!(queue_state("COMPLETING"), Some(JobState::Alive));
        assert_eq!(queue_state("TIMEOUT"), None);
    }

    #[test]
    fn options_are_checked_by_name() {
        assert!(check_option("time", "0:10:00").is_ok());
        assert!(check_option("gres", "gpu:a100:2").is_ok());
        for (k, v) in [
            ("Time", "1"),
            ("ti me", "1"),
            ("1x", "1"),
            ("", "1"),
            ("x_y", "1"),
        ] {
            let e = check_option(k, v).unwrap_err();
            assert!(e.starts_with(&format!("slurm.{k}:")), "{e}");
        }
        let e = check_option("array", "0-9").unwrap_err();
        assert!(e.contains("sets --array itself"), "{e}");
        let e = check_option("comment", "a\n#SBATCH --x").unwrap_err();
        assert!(e.contains("slurm.comment"), "{e}");
        let e = check_option("mem", "1G\n#SBATCH --wrap=x").unwrap_err();
        assert!(e.contains("line break"), "{e}");
    }

    /// Snapshot of the script for two runs: options quoted for sbatch's own parser, run
    /// directories quoted for the shell, shell metacharacters inert.
    #[test]
    fn the_template_renders_an_array() {
        let dirs = [Path::new("/w/runs/a-1.1"), Path::new("/w/runs/it's $(x)")];
        let opts = vec![
            ("partition".to_string(), "debug".to_string()),
            (
                "comment-x".to_string(),
                r#"a "b" \c $(touch x); `id`"#.to_string(),
            ),
            ("exclusive".to_string(), String::new()),
        ];
        let s = render("ab12", Path::new("/w/batches/ab12"), &dirs, &opts, Some(1)).unwrap();
        let expected = r#"#!/bin/bash
# Generated by neromum: a SLURM job array of 2 Neronet run(s), batch ab12.
# Task N runs the job.sh of the N-th run directory below, which runs the command under nerokid.
# Every value below was quoted or checked by neromum; `#SBATCH` lines are read by sbatch only.
#SBATCH --job-name=neronet
#SBATCH --comment="neronet:ab12"
#SBATCH --array=0-1%1
#SBATCH --output="/w/batches/ab12/%a.log"
#SBATCH --open-mode=append
#SBATCH --partition="debug"
#SBATCH --comment-x="a \"b\" \\c $(touch x); `id`"
#SBATCH --exclusive

case "$SLURM_ARRAY_TASK_ID" in
0) run_dir=/w/runs/a-1.1 ;;
1) run_dir="/w/runs/it's "'$(x)' ;;
*) echo "neronet: no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 125 ;;
esac
exec /bin/sh "$run_dir/job.sh"
"#;
        assert_eq!(s, expected);
        // No throttle when it does not bind.
        let s = render("ab12", Path::new("/w/b"), &dirs, &[], Some(5)).unwrap();
        assert!(s.contains("#SBATCH --array=0-1\n"), "{s}");
        assert!(render(
            "x",
            Path::new("/w/b"),
            &dirs,
            &[("mem".into(), "1\n".into())],
            None
        )
        .is_err());
    }
}
