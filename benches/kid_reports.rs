//! Kids reporting to mum over TCP beside their event logs (`cargo bench --bench kid_reports`,
//! or scripts/bench.sh); prints figures only. `latency` or `load` as an argument picks one part.
//!
//! 1. `latency`: metric printed on the node → in the state store, TCP vs tailing the file, on
//!    SLURM over SSH. Needs what the cluster bench needs (the single-node SLURM, the sshd for
//!    `nerolab`, the static binaries). Two projects whose cluster is `ssh: nerolab` +
//!    `warden: slurm` (`poll_interval: 1s`), one with `listen: auto`, one with `listen: off`,
//!    run side by side in the same window (the same machine noise for both): each job prints
//!    `step=i sent=<time>` every 250 ms for 20 s while neroman syncs each project with a held
//!    long-poll (as `start --wait` and the watcher do); latency = time first seen in the store
//!    − `sent` (one clock: the login node and the compute node are this machine).
//! 2. `load`: mum's CPU and memory with 1,000 kids reporting 10 metric lines a second each. The
//!    release `neromum serve` (local warden, `--max-parallel 1000`) runs 1,000 jobs whose "kid"
//!    is `exec sleep`; the bench plays their kids: per run, a `started` event, then metric lines
//!    appended to `events.jsonl` in one write every 250 ms (the kid's round), each kid's round
//!    at its own phase; with `--listen auto` each written batch also goes over one TCP
//!    connection per kid (`nerokid::wire::event_message`, the secret and address from mum's
//!    workdir), as the real kid sends. 20 s with `--listen auto`, then 20 s with
//!    `--listen off` (a fresh mum and workdir each); mum's CPU (utime + stime from
//!    /proc/PID/stat) and VmRSS/VmHWM, and whether each line written is in the journal exactly
//!    once.
//!
//! About 2 minutes (the 1,000 local launches take 20–30 s of it per configuration).

use nerokid::report::KidEvent;
use nerokid::wire::{self, Secret};
use neronet::actions::{act, Verb};
use neronet::cluster::client::{LocalMum, MumClient, Transport};
use neronet::cluster::mum::warden::WardenSettings;
use neronet::cluster::protocol::{JournalEntry, MumEvent, RunSpec};
use neronet::project::Project;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SSH_DIR: &str = "/tmp/neronet-sshlab";
/// Simulated kids, metric lines per second each, the kid's round, the measured window.
const KIDS: usize = 1000;
const LINES_PER_SEC: f64 = 10.0;
const ROUND: Duration = Duration::from_millis(250);
const WINDOW: Duration = Duration::from_secs(20);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wants = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let t0 = Instant::now();
    if wants("latency") {
        latency_over_slurm();
    }
    if wants("load") {
        neronet::cluster::mum::kids::raise_fd_limit();
        let auto = load("auto");
        let off = load("off");
        print_load(&[auto, off]);
    }
    println!("(whole bench: {:.0} s)", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// 1. Latency on SLURM over SSH, TCP beside file tailing.

fn latency_over_slurm() {
    let ssh_config = Path::new(SSH_DIR).join("ssh_config");
    preflight(&ssh_config);
    let statics =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-unknown-linux-musl/release");
    // In-process neroman: this bench binary lives in target/release/deps, so the static build
    // is named for it (the neroman binary finds it beside its own target directory).
    std::env::set_var("NERONET_STATIC_DIR", &statics);
    let neroman = PathBuf::from(env!("CARGO_BIN_EXE_neroman"));
    let pid = std::process::id();
    let base = std::env::temp_dir().join(format!("neronet-bench-kid-reports-{pid}"));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    // The job's script must be readable by nerolab, whose jobs these are.
    std::fs::write(
        base.join("tick.py"),
        "import time\nfor i in range(80):\n    print(f'step={i} sent={time.time():.6f}', flush=True)\n    time.sleep(0.25)\n",
    )
    .unwrap();
    let modes = ["auto", "off"];
    let dirs: Vec<(String, PathBuf, String)> = modes
        .iter()
        .map(|mode| {
            let dir = base.join(format!("project-{mode}"));
            let workdir = format!("neronet-bench-kr-{mode}-{pid}");
            write_slurm_project(&dir, &base, &ssh_config, &workdir, mode);
            (mode.to_string(), dir, workdir)
        })
        .collect();
    // Submissions one after the other (both upload the static binaries on first contact); the
    // jobs then run side by side and each project is synced by its own thread.
    let starting = Arc::new(Mutex::new(()));
    let threads: Vec<_> = dirs
        .iter()
        .map(|(mode, dir, _)| {
            let (mode, dir, starting) = (mode.clone(), dir.clone(), Arc::clone(&starting));
            std::thread::spawn(move || follow(&mode, &dir, &starting))
        })
        .collect();
    let results: Vec<(String, Result<Followed, String>)> = threads
        .into_iter()
        .zip(&dirs)
        .map(|(t, (mode, _, _))| {
            let r = t
                .join()
                .unwrap_or_else(|_| Err("the thread panicked".into()));
            (mode.clone(), r)
        })
        .collect();
    println!(
        "metric printed on the node -> in the state store, SSH + SLURM (poll_interval 1s), the two projects side by side, neroman long-polling:"
    );
    println!(
        "  {:<22} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "listen:", "values", "p50 ms", "p95 ms", "min ms", "max ms"
    );
    for (mode, r) in &results {
        let label = if mode == "auto" {
            "auto (TCP + the file)"
        } else {
            "off (the file only)"
        };
        match r {
            Ok(f) if !f.latencies.is_empty() => {
                let s = Stats::of(&f.latencies);
                println!(
                    "  {label:<22} {:>6} {:>8.0} {:>8.0} {:>8.0} {:>8.0}{}",
                    f.latencies.len(),
                    s.p50 * 1e3,
                    s.p95 * 1e3,
                    s.min * 1e3,
                    s.max * 1e3,
                    if f.finished {
                        ""
                    } else {
                        "  (did not finish in time)"
                    }
                );
            }
            Ok(_) => println!("  {label:<22} nothing measured"),
            Err(e) => println!("  {label:<22} failed: {e}"),
        }
    }
    println!(
        "  (the kid writes and sends its events every 250 ms, so either path carries up to 250 ms of the kid's round; here the run directory is on local disk, not NFS: no attribute cache hides the appends, so the file path is only as slow as mum's round (100 ms); on a cluster's NFS it is seconds)"
    );
    // Which mum listened (the login node's home is this machine's /home/nerolab).
    let listening: Vec<String> = dirs
        .iter()
        .map(|(mode, _, workdir)| {
            let addr =
                std::fs::read_to_string(format!("/home/nerolab/{workdir}/{}", wire::ADDR_FILE));
            format!(
                "listen: {mode}: {}",
                addr.map_or("no kids.addr".into(), |a| format!("kids.addr {}", a.trim()))
            )
        })
        .collect();
    println!("  ({})", listening.join("; "));
    for (_, dir, workdir) in &dirs {
        let _ = Command::new(&neroman)
            .arg("-C")
            .arg(dir)
            .args(["agents", "--stop"])
            .stdin(Stdio::null())
            .output();
        let _ = std::fs::remove_dir_all(format!("/home/nerolab/{workdir}"));
    }
    let _ = std::fs::remove_dir_all(&base);
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

fn write_slurm_project(dir: &Path, base: &Path, ssh_config: &Path, workdir: &str, listen: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("neronet.yaml"),
        format!(
            "command: python3 {}/tick.py\nclusters:\n  hpc:\n    ssh: nerolab\n    ssh_config: {}\n    warden: slurm\n    workdir: {workdir}\n    poll_interval: 1s\n    listen: {listen}\n    slurm:\n      partition: debug\n      time: '0:05:00'\n",
            base.display(),
            ssh_config.display()
        ),
    )
    .unwrap();
    use neronet::sheet::template::{BookSpec, Cell};
    let book = BookSpec {
        columns: vec![("id", 8.0), ("status", 10.0), ("cluster", 8.0)],
        rows: vec![vec![Cell::Num(1.0), Cell::Empty, Cell::Text("hpc")]],
    };
    std::fs::write(
        dir.join("experiments.xlsx"),
        neronet::sheet::template::build(&book).unwrap(),
    )
    .unwrap();
}

struct Followed {
    latencies: Vec<f64>,
    finished: bool,
}

/// Start the project's one row and follow it: each `sent` value's first sighting in the store.
fn follow(mode: &str, dir: &Path, starting: &Mutex<()>) -> Result<Followed, String> {
    let mut project = Project::open(dir).map_err(|e| format!("{mode}: open: {e}"))?;
    let uid = {
        let _one_at_a_time = starting.lock().unwrap_or_else(|p| p.into_inner());
        let exps = project
            .read_experiments()
            .map_err(|e| format!("{mode}: {e}"))?;
        let (report, _) = act(&mut project, &exps, Verb::Start, &nerokid::expr::Expr::All)
            .map_err(|e| format!("{mode}: start: {e}"))?;
        report
            .started
            .first()
            .map(|(_, u)| u.clone())
            .ok_or_else(|| format!("{mode}: nothing started"))?
    };
    let mut seen: HashMap<i64, f64> = HashMap::new();
    let mut clients = BTreeMap::new();
    let start = Instant::now();
    let mut finished = false;
    while start.elapsed() < Duration::from_secs(120) {
        project
            .sync_held(&mut clients, Duration::from_secs(2))
            .map_err(|e| format!("{mode}: sync: {e}"))?;
        let t = nerokid::report::now();
        let db = project.store.conn();
        let mut stmt = db
            .prepare("SELECT value FROM metrics WHERE run_uid = ?1 AND name = 'sent'")
            .map_err(|e| e.to_string())?;
        let sent: Vec<f64> = stmt
            .query_map([&uid], |r| r.get::<_, f64>(0))
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .collect();
        for s in sent {
            seen.entry((s * 1e6) as i64).or_insert(t - s);
        }
        let state = project.store.run(&uid).ok().flatten().map(|r| r.state);
        if state.is_some_and(|s| s.is_terminal()) {
            finished = true;
            break;
        }
    }
    Ok(Followed {
        latencies: seen.into_values().collect(),
        finished,
    })
}

struct Stats {
    p50: f64,
    p95: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Stats {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Stats {
            p50: pct(0.5),
            p95: pct(0.95),
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. mum under 1,000 reporting kids.

/// What one configuration measured.
struct Load {
    listen: &'static str,
    launch_secs: f64,
    idle_cpu: f64,
    cpu: f64,
    rss_kb: u64,
    hwm_kb: u64,
    bench_cpu: f64,
    written: u64,
    journaled: u64,
    drain_secs: f64,
    runs_exact: usize,
    doubled: u64,
    missing: u64,
    send_failures: u64,
    behind_ms: f64,
    appends_per_sec: f64,
}

/// The mum under test and the jobs it launched: stopped and killed however the bench ends.
struct MumUnderTest {
    child: Child,
    workdir: PathBuf,
    job_pids: Vec<i32>,
}

impl Drop for MumUnderTest {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child's process group (it was started as its own group) and on
        // the jobs it launched (each in a session of its own, its pid the group id); no memory
        // is involved.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
        for pid in &self.job_pids {
            // SAFETY: as above.
            unsafe {
                libc::kill(-*pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// One simulated kid: its run, its event log and (listening mum) its connection.
struct SimKid {
    /// The run's name at mum (the journal's) and its directory's name (the wire's).
    name: String,
    run: String,
    log: std::fs::File,
    offset: u64,
    conn: Option<TcpStream>,
    lines: u64,
    step: u64,
}

fn load(listen: &'static str) -> Load {
    let pid = std::process::id();
    let workdir = std::env::temp_dir().join(format!("neronet-bench-kr-load-{listen}-{pid}"));
    let _ = std::fs::remove_dir_all(&workdir);
    std::fs::create_dir_all(&workdir).unwrap();
    // The jobs cost nothing: the "kid" each job script execs is a sleep.
    let kid = workdir.join("sleeping-kid.sh");
    std::fs::write(&kid, "#!/bin/sh\nexec sleep 100000\n").unwrap();
    std::fs::set_permissions(&kid, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mum_binary = PathBuf::from(env!("CARGO_BIN_EXE_neromum"));
    let m = LocalMum {
        workdir: workdir.clone(),
        mum_binary: mum_binary.clone(),
        kid_binary: kid.clone(),
        max_parallel: KIDS as u32,
        idle_exit_secs: 600,
        project: Some("bench".into()),
        transport: Transport::Socket,
        warden: WardenSettings::Local,
        listen: listen.into(),
    };
    let child = Command::new(&mum_binary)
        .arg("serve")
        .args(m.agent_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(workdir.join("mum.log")).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let mum_pid = child.id();
    let mut mum = MumUnderTest {
        child,
        workdir: workdir.clone(),
        job_pids: Vec::new(),
    };
    let sock = neronet::cluster::socket_path(&workdir);
    wait_for("mum's socket", Duration::from_secs(15), || sock.exists());
    let mut client = MumClient::connect_or_start(&m).unwrap();
    assert_eq!(client.hello.pid, mum_pid, "the bench's own mum answers");

    // 1,000 runs, all launched at once.
    let t = Instant::now();
    let specs: Vec<RunSpec> = (0..KIDS)
        .map(|i| RunSpec {
            run: format!("k{i:04}"),
            command: "true".into(),
            cwd: None,
            env: Vec::new(),
            setup: Vec::new(),
            kid: Default::default(),
            warden_opts: Vec::new(),
        })
        .collect();
    let accepted = client.submit(specs).unwrap();
    let run_dirs: HashMap<String, PathBuf> = accepted
        .runs
        .iter()
        .map(|r| (r.run.clone(), PathBuf::from(&r.run_dir)))
        .collect();
    let mut jobs: HashMap<String, i32> = HashMap::new();
    let mut since = 0;
    while jobs.len() < KIDS {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "only {} of {KIDS} runs launched after 120 s",
            jobs.len()
        );
        let batch = client.sync(since, None, Duration::from_secs(1)).unwrap();
        since = batch.through.max(since);
        for e in batch.entries {
            match e.event {
                MumEvent::Launched { job } => {
                    let pid: i32 = job.parse().expect("a local job id is a pid");
                    mum.job_pids.push(pid);
                    jobs.insert(e.run, pid);
                }
                MumEvent::Lost { reason } => panic!("run {} lost: {reason}", e.run),
                _ => {}
            }
        }
    }
    let launch_secs = t.elapsed().as_secs_f64();

    // mum with 1,000 launched runs whose kids have written nothing yet.
    std::thread::sleep(Duration::from_secs(1));
    let ticks = nerokid::probe::ticks_per_second();
    let (c0, t0) = (cpu_ticks(mum_pid), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let idle_cpu = (cpu_ticks(mum_pid) - c0) as f64 / ticks / t0.elapsed().as_secs_f64() * 100.0;

    // The kids.
    let secret = (listen != "off")
        .then(|| Secret::read(&workdir).expect("a listening mum writes kids.secret"));
    let addr = secret.as_ref().map(|_| {
        std::fs::read_to_string(workdir.join(wire::ADDR_FILE))
            .expect("a listening mum writes kids.addr")
            .trim()
            .to_string()
    });
    let mut names: Vec<&String> = jobs.keys().collect();
    names.sort();
    let mut kids: Vec<SimKid> = names
        .iter()
        .map(|name| {
            let dir = &run_dirs[*name];
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(nerokid::report::EVENTS_FILE))
                .unwrap();
            SimKid {
                name: (*name).clone(),
                run: dir.file_name().unwrap().to_str().unwrap().to_string(),
                log,
                offset: 0,
                conn: None,
                lines: 0,
                step: 0,
            }
        })
        .collect();
    let host = nerokid::probe::hostname();
    let mut send_failures = 0u64;
    let mut behind = Duration::ZERO;
    let wall0 = nerokid::report::now();
    let (m0, b0, w0) = (
        cpu_ticks(mum_pid),
        cpu_ticks(std::process::id()),
        Instant::now(),
    );
    let rounds = (WINDOW.as_secs_f64() / ROUND.as_secs_f64()).round() as u32;
    let mut out = Vec::with_capacity(4096);
    let mut msg = Vec::with_capacity(8192);
    for n in 0..rounds {
        for (k, kid) in kids.iter_mut().enumerate() {
            // Each kid's round at its own phase, as independent kids are.
            let due = w0 + ROUND * n + ROUND.mul_f64(k as f64 / KIDS as f64);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            } else if now > due {
                behind = behind.max(now - due);
            }
            out.clear();
            let t = nerokid::report::now();
            if n == 0 {
                let pid = jobs[&kid.name] as u32;
                let started = KidEvent::Started {
                    t,
                    pid,
                    job_pid: pid,
                    host: host.clone(),
                };
                serde_json::to_writer(&mut out, &started).unwrap();
                out.push(b'\n');
            }
            // 10 lines a second: 2 or 3 per round.
            let due_lines = ((n + 1) as f64 * ROUND.as_secs_f64() * LINES_PER_SEC) as u64;
            while kid.step < due_lines {
                let i = kid.step as f64;
                let e = KidEvent::Metrics {
                    t,
                    step: Some(i),
                    values: vec![("step".into(), i), ("loss".into(), 1.0 / (i + 1.0))],
                };
                serde_json::to_writer(&mut out, &e).unwrap();
                out.push(b'\n');
                kid.step += 1;
            }
            // One write per round, as the kid flushes.
            kid.log.write_all(&out).unwrap();
            let start = kid.offset;
            kid.offset += out.len() as u64;
            kid.lines += out.iter().filter(|b| **b == b'\n').count() as u64;
            if let (Some(secret), Some(addr)) = (&secret, &addr) {
                if kid.conn.is_none() {
                    kid.conn = TcpStream::connect(addr).ok().inspect(|s| {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                    });
                }
                if let Some(conn) = &mut kid.conn {
                    msg.clear();
                    let mut offset = start;
                    for line in out.split_inclusive(|b| *b == b'\n') {
                        let event = line.strip_suffix(b"\n").unwrap_or(line);
                        msg.extend(wire::event_message(secret, &kid.run, offset, event));
                        offset += line.len() as u64;
                    }
                    if conn.write_all(&msg).is_err() {
                        // As the kid: the file carries it.
                        send_failures += 1;
                        kid.conn = None;
                    }
                }
            } else if listen != "off" {
                send_failures += 1;
            }
        }
    }
    let window = w0.elapsed().as_secs_f64();
    let wall1 = nerokid::report::now();
    let cpu = (cpu_ticks(mum_pid) - m0) as f64 / ticks / window * 100.0;
    let bench_cpu = (cpu_ticks(std::process::id()) - b0) as f64 / ticks / window * 100.0;
    let (rss_kb, hwm_kb) = memory_kb(mum_pid);
    let written: u64 = kids.iter().map(|k| k.lines).sum();

    // Until every line written is journaled (or 60 s), then count per run.
    let mut journal = JournalReader::new(&workdir.join("journal.jsonl"));
    let drained = Instant::now();
    loop {
        journal.read_more();
        if journal.kid_entries >= written || drained.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_secs = drained.elapsed().as_secs_f64();
    // Entries of one append share their time: appends carrying kid events in the window.
    let appends = journal
        .append_times
        .iter()
        .filter(|t| (wall0..wall1).contains(&f64::from_bits(**t)))
        .count();
    // A few more rounds: anything journaled twice would show now.
    std::thread::sleep(Duration::from_millis(500));
    journal.read_more();
    let mut runs_exact = 0;
    let (mut doubled, mut missing) = (0u64, 0u64);
    for kid in &kids {
        let offsets = journal.offsets.get(&kid.name).cloned().unwrap_or_default();
        let distinct: HashSet<u64> = offsets.iter().copied().collect();
        doubled += (offsets.len() - distinct.len()) as u64;
        missing += kid.lines.saturating_sub(distinct.len() as u64);
        if offsets.len() as u64 == kid.lines
            && distinct.len() == offsets.len()
            && offsets.iter().max().copied() == Some(kid.offset)
        {
            runs_exact += 1;
        }
    }
    // mum first (its runs keep running), then the jobs: the guard's drop.
    let _ = client.shutdown();
    let stopping = Instant::now();
    while stopping.elapsed() < Duration::from_secs(10) && matches!(mum.child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(kids);
    drop(mum);
    Load {
        listen,
        launch_secs,
        idle_cpu,
        cpu,
        rss_kb,
        hwm_kb,
        bench_cpu,
        written,
        journaled: journal.kid_entries,
        drain_secs,
        runs_exact,
        doubled,
        missing,
        send_failures,
        behind_ms: behind.as_secs_f64() * 1e3,
        appends_per_sec: appends as f64 / (wall1 - wall0),
    }
}

fn print_load(results: &[Load]) {
    println!(
        "neromum with {KIDS} kids reporting {LINES_PER_SEC} metric lines/s each (one write per kid every 250 ms), {} s per configuration:",
        WINDOW.as_secs()
    );
    println!(
        "  {:<14} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>12}",
        "--listen",
        "idle CPU",
        "CPU",
        "VmRSS MB",
        "VmHWM MB",
        "written",
        "journaled",
        "drain s",
        "exact",
        "bench CPU"
    );
    for r in results {
        println!(
            "  {:<14} {:>8.1}% {:>8.1}% {:>9.1} {:>9.1} {:>10} {:>10} {:>9.2} {:>9} {:>11.1}%",
            if r.listen == "off" {
                "off (file)"
            } else {
                "auto (TCP)"
            },
            r.idle_cpu,
            r.cpu,
            r.rss_kb as f64 / 1024.0,
            r.hwm_kb as f64 / 1024.0,
            r.written,
            r.journaled,
            r.drain_secs,
            format!("{}/{KIDS}", r.runs_exact),
            r.bench_cpu,
        );
    }
    for r in results {
        println!(
            "  --listen {}: journal appends with kid events {:.1}/s; lines journaled twice {}, never {}; TCP sends that failed {}; {KIDS} runs launched in {:.1} s; the simulated kids were at most {:.0} ms late for a round",
            r.listen, r.appends_per_sec, r.doubled, r.missing, r.send_failures, r.launch_secs, r.behind_ms
        );
    }
    println!(
        "  (CPU: % of one core, utime + stime of neromum over the window; idle CPU: the {KIDS} runs launched, nothing written yet, 5 s; drain: after the window, until the journal held every line written; exact: runs whose every line is journaled once, at its offset; bench CPU: the process playing the {KIDS} kids)"
    );
}

/// Reads journal.jsonl as it grows: `kid` entries, and each run's kid offsets.
struct JournalReader {
    file: std::io::BufReader<std::fs::File>,
    partial: Vec<u8>,
    kid_entries: u64,
    offsets: HashMap<String, Vec<u64>>,
    /// The distinct times (as bits) of entries with kid events: one per append.
    append_times: HashSet<u64>,
}

impl JournalReader {
    fn new(path: &Path) -> JournalReader {
        let mut f = std::fs::File::open(path).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        JournalReader {
            file: std::io::BufReader::with_capacity(1 << 20, f),
            partial: Vec::new(),
            kid_entries: 0,
            offsets: HashMap::new(),
            append_times: HashSet::new(),
        }
    }

    fn read_more(&mut self) {
        loop {
            let n = self.file.read_until(b'\n', &mut self.partial).unwrap();
            if n == 0 || !self.partial.ends_with(b"\n") {
                // The rest of this line is not written yet: keep it for the next call.
                return;
            }
            if let Ok(e) = serde_json::from_slice::<JournalEntry>(&self.partial) {
                if let (MumEvent::Kid { .. }, Some(o)) = (&e.event, e.kid_offset) {
                    self.kid_entries += 1;
                    self.append_times.insert(e.t.to_bits());
                    self.offsets.entry(e.run).or_default().push(o);
                }
            }
            self.partial.clear();
        }
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// VmRSS and VmHWM of `pid`, in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/status")) {
        let _ = f.read_to_string(&mut text);
    }
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
