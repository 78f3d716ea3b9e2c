//! A cluster over SSH with SLURM as the warden (`cargo bench --bench cluster`, or
//! scripts/bench.sh); prints figures only. Needs what the test command brings up: the single-node
//! SLURM and the sshd for user `nerolab` (scripts/services.sh `need_slurm`, `need_sshd_lab`), and
//! the static binaries (`cargo build --release --target x86_64-unknown-linux-musl --bin neromum
//! --bin nerokid`). The project lives here; its cluster `hpc` is `ssh: nerolab` with
//! `warden: slurm`, so every run goes through SSH, the remote mum and sbatch.
//!
//! 1. Bulk submission: `neroman start 1-1000` (each row `sleep 600`), timed from the command's
//!    start until every run has its SLURM job id in the state store — `start` on a scheduler
//!    cluster returns only then — and checked against `squeue`. Beside it, on the same SLURM,
//!    submitit (`pip install submitit`; a comparison, not a dependency; it has no SSH, so it
//!    submits on this machine): 200 jobs one by one (its per-job rate) and 1,000 with
//!    `map_array`. Goal ≤ 2 s.
//! 2. Scheduler calls with the 1,000 jobs queued: slurmctld's own RPC counters (`sdiag`, reset
//!    with `sdiag -r`) over 60 s while the watcher daemon follows the runs: squeue's
//!    REQUEST_JOB_INFO per poll interval. Goal 1.
//! 3. Metric printed on the node → in results.xlsx through SSH + SLURM: after `abort all`, one
//!    job prints `step=i sent=<time>` every 250 ms for 20 s; the watcher daemon keeps
//!    results.xlsx; the bench stats it every 50 ms and reads each new copy's `history` sheet.
//!    Goal ≤ 3 s p95.
//!
//! About 4 minutes.

#[path = "common/mod.rs"]
mod common;

use common::{print_latency, results_latency};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROWS: u32 = 1000;
const SSH_DIR: &str = "/tmp/neronet-sshlab";
const POLL_SECS: u64 = 5;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let neroman = PathBuf::from(env!("CARGO_BIN_EXE_neroman"));
    let ssh_config = Path::new(SSH_DIR).join("ssh_config");
    preflight(&ssh_config);
    let t0 = Instant::now();
    let b = Bench::new(&neroman, &ssh_config);

    // 1. Bulk submission.
    let t = Instant::now();
    let out = b.neroman(&["start", &format!("1-{ROWS}")]);
    let took = t.elapsed().as_secs_f64();
    let with_job = b.runs_with_job_id();
    println!(
        "neroman start 1-{ROWS} over SSH to SLURM: {took:.2} s until the command returned, {with_job} runs with a SLURM job id (goal <= 2 s)"
    );
    println!("  its summary: {}", last_line(&out));
    let queued = wait_for(Duration::from_secs(60), || {
        let n = squeue_count("nerolab");
        (n >= ROWS as usize).then_some(n)
    });
    println!(
        "  squeue lists {} jobs of nerolab",
        queued.map_or("fewer than 1000".into(), |n| n.to_string())
    );
    submitit(&b.base);

    // 2. Scheduler calls per poll interval, the watcher daemon following the runs.
    let mut daemon = b.start_daemon();
    run(Command::new("sdiag").arg("-r"));
    let window = Duration::from_secs(60);
    let t = Instant::now();
    while t.elapsed() < window {
        std::thread::sleep(Duration::from_millis(500));
    }
    let calls = sdiag_counts();
    let intervals = window.as_secs_f64() / POLL_SECS as f64;
    println!(
        "scheduler calls with {ROWS} jobs queued, over {} s (poll_interval {POLL_SECS}s): squeue (REQUEST_JOB_INFO) {}, {:.2} per interval (goal 1); scontrol/sacct single-job queries {}; sbatch {}; every RPC of user nerolab {}",
        window.as_secs(),
        calls.get("REQUEST_JOB_INFO").copied().unwrap_or(0),
        calls.get("REQUEST_JOB_INFO").copied().unwrap_or(0) as f64 / intervals,
        calls.get("REQUEST_JOB_INFO_SINGLE").copied().unwrap_or(0),
        calls.get("REQUEST_SUBMIT_BATCH_JOB").copied().unwrap_or(0),
        calls.get("user nerolab").copied().unwrap_or(0),
    );

    // 3. Metric latency, with the queue emptied first.
    let t = Instant::now();
    b.neroman(&["abort", "all"]);
    let emptied = wait_for(Duration::from_secs(120), || {
        (squeue_count("nerolab") == 0).then_some(())
    });
    println!(
        "abort all: {:.1} s until squeue was empty{}",
        t.elapsed().as_secs_f64(),
        if emptied.is_some() {
            ""
        } else {
            " (it was not, after 120 s)"
        }
    );
    metric_latency(&b);
    daemon.stop();
    b.finish();
    println!("(whole bench: {:.0} s)", t0.elapsed().as_secs_f64());
}

fn preflight(ssh_config: &Path) {
    let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if !ok(Command::new("scontrol").arg("ping")) {
        fail("SLURM is not running: bring it up with scripts/services.sh (need_slurm)");
    }
    if !ok(Command::new("ssh")
        .arg("-F")
        .arg(ssh_config)
        .args(["nerolab", "true"]))
    {
        fail("ssh nerolab does not answer: bring it up with scripts/services.sh (need_sshd_lab)");
    }
    let statics = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-musl/release/neromum");
    if !statics.exists() {
        fail("no static neromum: cargo build --release --target x86_64-unknown-linux-musl --bin neromum --bin nerokid");
    }
}

fn fail(why: &str) -> ! {
    eprintln!("{why}");
    std::process::exit(1);
}

struct Bench {
    neroman: PathBuf,
    base: PathBuf,
    dir: PathBuf,
    workdir: String,
}

struct Daemon {
    child: Child,
}

impl Bench {
    fn new(neroman: &Path, ssh_config: &Path) -> Bench {
        let pid = std::process::id();
        let base = std::env::temp_dir().join(format!("neronet-bench-cluster-{pid}"));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("project");
        std::fs::create_dir_all(&dir).unwrap();
        // The job's script must be readable by nerolab, whose jobs these are.
        std::fs::write(
            base.join("tick.py"),
            "import time\nfor i in range(80):\n    print(f'step={i} sent={time.time():.6f}', flush=True)\n    time.sleep(0.25)\n",
        )
        .unwrap();
        let workdir = format!("neronet-bench-{pid}");
        std::fs::write(
            dir.join("neronet.yaml"),
            format!(
                "command: sleep 600\nclusters:\n  hpc:\n    ssh: nerolab\n    ssh_config: {}\n    warden: slurm\n    workdir: {workdir}\n    poll_interval: {POLL_SECS}s\n    slurm:\n      partition: debug\n      time: '0:20:00'\n",
                ssh_config.display()
            ),
        )
        .unwrap();
        let mut rows: Vec<Vec<neronet::sheet::template::Cell>> = (1..=ROWS)
            .map(|i| {
                use neronet::sheet::template::Cell;
                vec![
                    Cell::Num(i as f64),
                    Cell::Empty,
                    Cell::Empty,
                    Cell::Text("hpc"),
                ]
            })
            .collect();
        rows.push({
            use neronet::sheet::template::Cell;
            vec![
                Cell::Num((ROWS + 1) as f64),
                Cell::Empty,
                Cell::Text(Box::leak(
                    format!("python3 {}/tick.py", base.display()).into_boxed_str(),
                )),
                Cell::Text("hpc"),
            ]
        });
        let book = neronet::sheet::template::BookSpec {
            columns: vec![
                ("id", 8.0),
                ("status", 10.0),
                ("command", 30.0),
                ("cluster", 8.0),
            ],
            rows,
        };
        std::fs::write(
            dir.join("experiments.xlsx"),
            neronet::sheet::template::build(&book).unwrap(),
        )
        .unwrap();
        Bench {
            neroman: neroman.to_owned(),
            base,
            dir,
            workdir,
        }
    }

    fn neroman(&self, args: &[&str]) -> String {
        let out = Command::new(&self.neroman)
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            fail(&format!("neroman {} failed: {text}", args.join(" ")));
        }
        text
    }

    fn runs_with_job_id(&self) -> usize {
        let db = rusqlite::Connection::open(self.dir.join(".neronet/state.db")).unwrap();
        db.query_row(
            "SELECT count(*) FROM runs WHERE job_id IS NOT NULL AND job_id != ''",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize
    }

    fn start_daemon(&self) -> Daemon {
        let child = Command::new(&self.neroman)
            .arg("-C")
            .arg(&self.dir)
            .arg("watch")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.base.join("watch.out")).unwrap())
            .stderr(std::fs::File::create(self.base.join("watch.log")).unwrap())
            .spawn()
            .unwrap();
        let ready = self.dir.join(".neronet/watch.json");
        if wait_for(Duration::from_secs(60), || ready.exists().then_some(())).is_none() {
            fail("neroman watch not ready after 60 s");
        }
        Daemon { child }
    }

    fn finish(&self) {
        // The remote mum goes when idle; its workdir is the bench's own.
        let _ = self.neroman(&["agents", "--stop"]);
        let _ = Command::new("rm")
            .args(["-rf", &format!("/home/nerolab/{}", self.workdir)])
            .status();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

impl Daemon {
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn metric_latency(b: &Bench) {
    let id = ROWS + 1;
    let results = b.dir.join("results.xlsx");
    b.neroman(&["start", &id.to_string()]);
    let lat = results_latency(&results, id, 80, Duration::from_secs(60));
    print_latency(
        "metric printed on the node -> in results.xlsx through SSH + SLURM",
        &lat,
        "  (goal p95 <= 3000 ms)",
    );
    if lat.len() < 80 {
        println!("  only {} of the 80 values seen within 60 s", lat.len());
    }
}

/// submitit on the same SLURM, per job and as one array (the shared recipe's measurements).
fn submitit(base: &Path) {
    let script = base.join("submitit-bench.py");
    std::fs::write(
        &script,
        r#"import sys, time, tempfile
import submitit
def work(i):
    return i * 2
folder = tempfile.mkdtemp(prefix="subm-")
ex = submitit.AutoExecutor(folder=folder + "/%j")
ex.update_parameters(timeout_min=5, slurm_partition="debug", cpus_per_task=1)
n = 200
t0 = time.time()
jobs = [ex.submit(work, i) for i in range(n)]
t1 = time.time()
print(f"submitit per-job: {n} jobs in {t1 - t0:.2f} s ({n / (t1 - t0):.1f} jobs/s; 1,000 would take about {1000 * (t1 - t0) / n:.0f} s)")
ex.update_parameters(slurm_array_parallelism=1000)
t2 = time.time()
ajobs = ex.map_array(work, list(range(1000)))
t3 = time.time()
print(f"submitit map_array: 1000 jobs in {t3 - t2:.2f} s")
for j in jobs + ajobs:
    j.cancel(check=False)
"#,
    )
    .unwrap();
    match Command::new("python3").arg(&script).output() {
        Ok(o) if o.status.success() => {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                println!("  {line} (on this machine, no SSH)");
            }
        }
        Ok(o) => println!(
            "  submitit: not measured ({}) — pip install submitit",
            last_line(&String::from_utf8_lossy(&o.stderr))
        ),
        Err(e) => println!("  submitit: not measured (python3: {e})"),
    }
    // Its jobs were cancelled; wait until they are out of the queue.
    let _ = wait_for(Duration::from_secs(60), || {
        (squeue_count("root") == 0).then_some(())
    });
}

fn squeue_count(user: &str) -> usize {
    let out = Command::new("squeue")
        .args(["-h", "-r", "-u", user, "-o", "%i"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// slurmctld's RPC counts since the last `sdiag -r`: by message type, and `user NAME`.
fn sdiag_counts() -> HashMap<String, u64> {
    let out = run(&mut Command::new("sdiag"));
    let mut counts = HashMap::new();
    let mut by_user = false;
    for line in out.lines() {
        if line.contains("by user") {
            by_user = true;
        }
        let Some((name, rest)) = line.trim().split_once('(') else {
            continue;
        };
        let Some(count) = rest
            .split("count:")
            .nth(1)
            .and_then(|c| c.split_whitespace().next())
            .and_then(|c| c.parse::<u64>().ok())
        else {
            continue;
        };
        let key = if by_user {
            format!("user {}", name.trim())
        } else {
            name.trim().to_string()
        };
        counts.insert(key, count);
    }
    counts
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}
