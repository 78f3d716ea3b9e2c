//! Agent benchmarks (`cargo bench --bench agent`, or scripts/bench.sh); prints figures only.
//! 1. Throughput: 1,000 trivial rows (`true`) at `max_parallel: 8`, from "mum accepted them" to
//!    "all finished in the store", beside `xargs -P 8` running the same 1,000 `sh -c true`.
//! 2. mum restart with 1,000,000 journal entries, before and after compaction.
//! 3. Latency job print → store through the long-poll (one held connection, no sleeps), and
//!    the CPU that mum and a long-polling client use while nothing happens.

use nerokid::report::{KidEvent, Outcome};
use neronet::actions::{act, Verb};
use neronet::cluster::mum::{Mum, MumOptions};
use neronet::cluster::protocol::{JournalEntry, MumEvent};
use neronet::project::Project;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use std::time::{Duration, Instant};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    throughput();
    restart_with_a_long_journal();
    latency_and_idle_cpu();
}

fn project(name: &str, yaml: &str, rows: usize, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("neronet-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("neronet.yaml"), yaml).unwrap();
    for (f, text) in files {
        std::fs::write(dir.join(f), text).unwrap();
    }
    use neronet::sheet::template::{BookSpec, Cell};
    let book = BookSpec {
        columns: vec![("id", 8.0), ("status", 8.0)],
        rows: (1..=rows)
            .map(|i| vec![Cell::Num(i as f64), Cell::Empty])
            .collect(),
    };
    std::fs::write(
        dir.join("experiments.xlsx"),
        neronet::sheet::template::build(&book).unwrap(),
    )
    .unwrap();
    dir
}

fn stop_agent(project: &Project) {
    if let Ok(c) = project.connect("local") {
        let _ = c.shutdown();
    }
}

fn throughput() {
    let dir = project(
        "throughput",
        "command: \"true\"\nclusters:\n  local:\n    max_parallel: 8\n",
        1000,
        &[],
    );
    let mut project = Project::open(&dir).unwrap();
    let exps = project.read_experiments().unwrap();
    let t0 = Instant::now();
    let (report, _) = act(&mut project, &exps, Verb::Start, &nerokid::expr::Expr::All).unwrap();
    let accepted = t0.elapsed();
    let uids: Vec<String> = report.started.iter().map(|(_, u)| u.clone()).collect();
    let t1 = Instant::now();
    let mut clients = BTreeMap::new();
    loop {
        project
            .sync_held(&mut clients, Duration::from_secs(2))
            .unwrap();
        let active = project.store.active_runs().unwrap().len();
        if active == 0 {
            break;
        }
        assert!(t1.elapsed() < Duration::from_secs(600), "runs did not end");
    }
    let ran = t1.elapsed();
    let finished = uids
        .iter()
        .filter(|u| {
            project.store.run(u).unwrap().unwrap().state.name()
                == neronet::state::StateName::Finished
        })
        .count();
    drop(clients);
    stop_agent(&project);
    let t2 = Instant::now();
    let xargs = std::process::Command::new("sh")
        .arg("-c")
        .arg("seq 1000 | xargs -P 8 -n 1 sh -c true")
        .status()
        .unwrap();
    assert!(xargs.success());
    let xargs_t = t2.elapsed();
    println!(
        "1,000 `true` rows at max_parallel 8: submitted and accepted in {:.2} s; accepted -> all ended {:.2} s ({:.0} jobs/s, {finished} finished); xargs -P 8 the same 1,000 `sh -c true`: {:.2} s  (goal <= 10 s)",
        accepted.as_secs_f64(),
        ran.as_secs_f64(),
        1000.0 / ran.as_secs_f64(),
        xargs_t.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn restart_with_a_long_journal() {
    let dir = std::env::temp_dir().join(format!("neronet-bench-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("runs")).unwrap();
    std::fs::write(dir.join("epoch"), "benchbenchbench0").unwrap();
    // 1,000 runs × 1,000 entries: queued, launching, launched, 996 metric events, exited.
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(dir.join("journal.jsonl")).unwrap());
    let mut seq = 0u64;
    let mut put = |run: &str, event: MumEvent, kid_offset: Option<u64>| {
        seq += 1;
        let e = JournalEntry {
            seq,
            run: run.into(),
            t: 1.0e9 + seq as f64,
            event,
            kid_offset,
            project: Some("bench".into()),
        };
        serde_json::to_writer(&mut out, &e).unwrap();
        out.write_all(b"\n").unwrap();
    };
    for r in 0..1000 {
        let run = format!("{r}.1");
        let run_dir = dir.join("runs").join(&run).display().to_string();
        put(&run, MumEvent::Queued { run_dir }, None);
        put(&run, MumEvent::Launching, None);
        put(
            &run,
            MumEvent::Launched {
                job: "999999".into(),
            },
            None,
        );
        for i in 0..996u64 {
            let values = vec![
                ("loss".to_string(), 1.0 / (i + 1) as f64),
                ("step".to_string(), i as f64),
            ];
            let event = KidEvent::Metrics {
                t: 1.0e9,
                step: Some(i as f64),
                values,
            };
            put(&run, MumEvent::Kid { event }, Some(100 * (i + 1)));
        }
        let event = KidEvent::Exited {
            t: 1.0e9,
            outcome: Outcome::Exit { code: 0 },
            reason: None,
            stderr_tail: Vec::new(),
        };
        put(&run, MumEvent::Kid { event }, Some(100_000));
    }
    drop(out);
    let size = std::fs::metadata(dir.join("journal.jsonl")).unwrap().len();
    let opts = MumOptions {
        workdir: dir.clone(),
        kid_binary: "/bin/true".into(),
        idle_exit: Duration::from_secs(60),
        tick: Duration::from_millis(100),
        max_parallel: 8,
        warden: Default::default(),
        listen: "off".into(),
    };
    let t = Instant::now();
    let mum = Mum::open_local(opts.clone()).unwrap();
    let before = t.elapsed();
    let (entries, last) = mum.journal_size();
    let t = Instant::now();
    mum.acknowledge("bench", last);
    mum.tick();
    let compacting = t.elapsed();
    let (after_entries, _) = mum.journal_size();
    drop(mum);
    let t = Instant::now();
    let mum = Mum::open_local(opts).unwrap();
    let after = t.elapsed();
    drop(mum);
    println!(
        "mum restart with {entries} journal entries ({:.0} MB): {:.2} s; compaction to {after_entries} entries took {:.2} s; restart after it: {:.3} s  (goal <= 1 s after)",
        size as f64 / 1e6,
        before.as_secs_f64(),
        compacting.as_secs_f64(),
        after.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn latency_and_idle_cpu() {
    let dir = project(
        "longpoll",
        "command: python3 tick.py\n",
        1,
        &[(
            "tick.py",
            "import time\nfor i in range(80):\n    print(f'step={i} sent={time.time():.6f}', flush=True)\n    time.sleep(0.25)\n",
        )],
    );
    let mut project = Project::open(&dir).unwrap();
    let exps = project.read_experiments().unwrap();
    let (report, _) = act(&mut project, &exps, Verb::Start, &nerokid::expr::Expr::All).unwrap();
    let uid = report.started[0].1.clone();
    let mut seen: HashMap<i64, f64> = HashMap::new();
    let mut clients = BTreeMap::new();
    loop {
        project
            .sync_held(&mut clients, Duration::from_secs(2))
            .unwrap();
        let t = nerokid::report::now();
        let db = project.store.conn();
        let mut stmt = db
            .prepare("SELECT value FROM metrics WHERE run_uid = ?1 AND name = 'sent'")
            .unwrap();
        for sent in stmt
            .query_map([&uid], |r| r.get::<_, f64>(0))
            .unwrap()
            .map(Result::unwrap)
        {
            seen.entry((sent * 1e6) as i64).or_insert(t - sent);
        }
        if project
            .store
            .run(&uid)
            .unwrap()
            .unwrap()
            .state
            .is_terminal()
        {
            break;
        }
    }
    let mut lat: Vec<f64> = seen.into_values().collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "metric latency through the long-poll, print -> state store, {} values: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms  (goal p95 <= 500 ms)",
        lat.len(),
        pct(0.5) * 1e3,
        pct(0.95) * 1e3,
        lat.last().unwrap() * 1e3
    );
    // Idle: nothing running; one client holds long-polls for 10 s.
    let mut client = project.connect("local").unwrap();
    let pid = client.hello.pid;
    let last = client.hello.last_seq;
    let ticks = nerokid::probe::ticks_per_second();
    let (mum0, t0) = (cpu_ticks(pid), Instant::now());
    let me0 = cpu_ticks(std::process::id());
    while t0.elapsed() < Duration::from_secs(10) {
        client
            .sync(last, Some(last), Duration::from_secs(5))
            .unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let mum_pct = (cpu_ticks(pid) - mum0) as f64 / ticks / secs * 100.0;
    let me_pct = (cpu_ticks(std::process::id()) - me0) as f64 / ticks / secs * 100.0;
    println!(
        "idle for {secs:.0} s with a client long-polling: neromum {mum_pct:.2} % of a core, the client {me_pct:.2} %  (goal ~0 %)"
    );
    drop(client);
    drop(clients);
    stop_agent(&project);
    let _ = std::fs::remove_dir_all(&dir);
}
