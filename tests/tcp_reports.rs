//! Kids report to mum over TCP as well as in their event logs (nerokid::wire, mum/kids.rs), with
//! the real binaries on this machine: reports arrive when mum cannot read the log at all (an NFS
//! stand-in: the log made unreadable to mum), intruders are dropped while real reports flow, an
//! abort reaches the kid over its connection, and a mum started with `listen: off` mid-run falls
//! back to the log — every metric line stored exactly once.

mod common;
use common::{wait_until, Project};
use nerokid::wire::{self, Secret};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const YAML: &str = "clusters:\n  local:\n    max_parallel: 2\n    grace: 2s\n";

/// Prints `step=i` every `pause` seconds until the file `release-<id>` exists.
const JOB: &str = r#"
import os, sys, time
me, pause = sys.argv[1], float(sys.argv[2])
i = 0
while not os.path.exists("release-" + me):
    print(f"step={i} loss={1.0/(i+1):.6f}", flush=True)
    i += 1
    time.sleep(pause)
print("released", flush=True)
"#;

fn project(name: &str, yaml: &str) -> Project {
    let p = Project::new(name, yaml);
    p.write("job.py", JOB);
    p.job_workbook(
        "local",
        "python3 job.py {id} {pause}",
        &[("1", 0.0, 0.05, 0.0), ("2", 0.0, 0.05, 0.0)],
    );
    p
}

/// The newest step the store has for experiment `id`.
fn step(p: &Project, id: &str) -> f64 {
    p.status()
        .iter()
        .find(|e| e["id"] == id)
        .and_then(|e| e["metrics"]["step"].as_f64())
        .unwrap_or(-1.0)
}

/// Wait until the store has `more` steps past what it has now.
fn steps_keep_coming(p: &Project, id: &str, more: f64, what: &str) {
    let from = step(p, id);
    wait_until(what, Duration::from_secs(30), || step(p, id) >= from + more);
}

/// Every `step` line in the run's event log is in the store once, and nothing else.
fn every_step_once(p: &Project, run: &str) -> i64 {
    let log = std::fs::read_to_string(p.run_dir(run).join("events.jsonl")).unwrap();
    let in_log = log
        .lines()
        .filter(|l| l.contains("\"metrics\"") && l.contains("\"step\""))
        .count() as i64;
    let db = p.store();
    let count = |sql: &str| -> i64 { db.query_row(sql, [run], |r| r.get(0)).unwrap() };
    let n = count("SELECT COUNT(*) FROM metrics WHERE run_uid = ?1 AND name = 'step'");
    let distinct =
        count("SELECT COUNT(DISTINCT value) FROM metrics WHERE run_uid = ?1 AND name = 'step'");
    assert_eq!(
        (n, distinct),
        (in_log, in_log),
        "run {run}: each of the {in_log} step lines of its log stored once"
    );
    n
}

/// Whether mum closed `s` within `within` (reads end; whatever was unread is discarded).
fn closed_by_mum(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10)),
        ))
        .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn reports_arrive_over_tcp_intruders_are_dropped_and_an_abort_reaches_the_kid() {
    neronet::cluster::mum::kids::raise_fd_limit();
    let p = project("tcp", YAML);
    p.ok(&["start", "1"]);
    wait_until("the first steps", Duration::from_secs(30), || {
        step(&p, "1") >= 3.0
    });
    let mum = p.mum_dir();
    let addr = std::fs::read_to_string(mum.join(wire::ADDR_FILE))
        .expect("mum writes kids.addr")
        .trim()
        .to_string();
    for f in [wire::ADDR_FILE, wire::SECRET_FILE] {
        let mode = std::fs::metadata(mum.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} is the user's alone");
    }
    assert!(
        addr.starts_with("127.0.0.1:"),
        "the local warden's kids are here: {addr}"
    );

    // mum can no longer see the event log (as when NFS has not shown the node's appends yet;
    // the kid writes on through its open file): what reaches the store now came over TCP.
    let run_dir = p.run_dir("1.1");
    let events = run_dir.join("events.jsonl");
    let hidden = run_dir.join("events.jsonl.hidden");
    std::fs::rename(&events, &hidden).unwrap();
    steps_keep_coming(
        &p,
        "1",
        10.0,
        "steps over TCP while the log is out of sight",
    );

    // Intruders, while the reports keep flowing.
    let run = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    let forged = Secret::new(&"0f".repeat(32)).unwrap();
    let event = format!(
        r#"{{"event":"metrics","t":{},"step":null,"values":{{"intruder":999}}}}"#,
        nerokid::report::now()
    );
    let mut wrong = TcpStream::connect(&addr).unwrap();
    wrong
        .write_all(&wire::event_message(&forged, &run, 0, event.as_bytes()))
        .unwrap();
    assert!(
        closed_by_mum(&mut wrong, Duration::from_secs(5)),
        "a report with the wrong secret closes its connection"
    );
    let real = std::fs::read_to_string(mum.join(wire::SECRET_FILE)).unwrap();
    let real = Secret::new(&real).unwrap();
    let whole = wire::event_message(&real, &run, 1 << 40, event.as_bytes());
    let mut truncated = TcpStream::connect(&addr).unwrap();
    truncated.write_all(&whole[..whole.len() / 2]).unwrap();
    drop(truncated);
    let mut garbage = TcpStream::connect(&addr).unwrap();
    let mut noise = vec![0u8; 10 << 20];
    getrandom_fill(&mut noise);
    // No line break: one endless line (a garbage line with one is refused as malformed).
    noise
        .iter_mut()
        .filter(|b| **b == b'\n')
        .for_each(|b| *b = b'x');
    // mum closes the connection after a line of 1 MiB: the rest may not be taken.
    let _ = garbage.write_all(&noise);
    assert!(
        closed_by_mum(&mut garbage, Duration::from_secs(5)),
        "10 MB of garbage closes its connection"
    );
    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|i| TcpStream::connect(&addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}")))
        .collect();
    steps_keep_coming(&p, "1", 10.0, "steps over TCP beside 1000 idle connections");
    // Connections that say nothing valid are closed within HELLO_WITHIN (10 s).
    let mut open_after = 0;
    for s in idle.iter_mut() {
        if !closed_by_mum(s, Duration::from_secs(15)) {
            open_after += 1;
        }
    }
    assert_eq!(open_after, 0, "idle connections are closed");
    drop(idle);

    // The abort reaches the kid over its connection; its exit record comes over TCP too (the
    // log is still out of mum's sight).
    p.ok(&["abort", "1"]);
    p.wait_for_state("1", "aborted");
    let kid_log = std::fs::read_to_string(run_dir.join("kid.log")).unwrap();
    assert!(
        kid_log.contains("mum asked to stop the job"),
        "the abort came over TCP:\n{kid_log}"
    );
    std::fs::rename(&hidden, &events).unwrap();
    every_step_once(&p, "1.1");
    let db = p.store();
    let forged_rows: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM metrics WHERE name = 'intruder'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(forged_rows, 0, "nothing of the intruders reached the store");
    let log = std::fs::read_to_string(mum.join("mum.log")).unwrap();
    for said in [
        "does not carry this mum's secret",
        "truncated message",
        "over 1 MiB",
        "sent nothing valid",
    ] {
        assert!(log.contains(said), "mum.log says {said:?}:\n{log}");
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    f.read_exact(buf).unwrap();
}

#[test]
fn a_mum_started_with_listen_off_mid_run_reads_the_logs_and_loses_nothing() {
    let p = project("tcp-off", YAML);
    p.ok(&["start", "1,2"]);
    wait_until("the first steps", Duration::from_secs(30), || {
        step(&p, "1") >= 3.0 && step(&p, "2") >= 3.0
    });
    let mum = p.mum_dir();
    assert!(mum.join(wire::ADDR_FILE).exists());
    // The listener goes (a firewall stand-in): mum stops, and the next one starts without it.
    let old = p.mum_pid();
    p.ok(&["agents", "--stop"]);
    wait_until("the old mum gone", Duration::from_secs(20), || {
        p.mum_pid() != old || old.is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
    p.write(
        "neronet.yaml",
        "clusters:\n  local:\n    max_parallel: 2\n    grace: 2s\n    listen: off\n",
    );
    p.ok(&["status"]);
    assert!(
        !mum.join(wire::ADDR_FILE).exists(),
        "a mum with listen: off leaves no address for kids"
    );
    steps_keep_coming(&p, "1", 10.0, "steps from the log after the listener went");
    steps_keep_coming(&p, "2", 10.0, "steps from the log after the listener went");
    p.write("release-1", "");
    p.write("release-2", "");
    p.wait_all("finished", Duration::from_secs(30));
    every_step_once(&p, "1.1");
    every_step_once(&p, "2.1");
    let log = std::fs::read_to_string(mum.join("mum.log")).unwrap();
    assert!(log.contains("listen: off"), "{log}");
}

#[test]
fn a_listener_that_cannot_start_is_said_and_the_logs_are_read() {
    let p = project(
        "tcp-eth9",
        "clusters:\n  local:\n    max_parallel: 2\n    grace: 2s\n    listen: nosuch9\n",
    );
    p.ok(&["start", "1"]);
    wait_until("the first steps", Duration::from_secs(30), || {
        step(&p, "1") >= 3.0
    });
    // Every command says it (not only mum.log): the interface, and what happens instead.
    let out = p.neroman(&["status"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cannot listen for its kids' reports")
            && said.contains("no interface \"nosuch9\"")
            && said.contains("event logs are read instead"),
        "{said}"
    );
    assert!(!p.mum_dir().join(wire::ADDR_FILE).exists());
    p.write("release-1", "");
    p.wait_for_state("1", "finished");
    every_step_once(&p, "1.1");
}
