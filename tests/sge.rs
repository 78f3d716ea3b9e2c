//! End-to-end runs through the Grid Engine warden on the real single-node Grid Engine the test
//! script starts (queue `all.q`, two slots, accounting on): neroman → neromum (on this machine,
//! `warden: sge`) → qsub array jobs → nerokid → job. A missing Grid Engine fails these tests;
//! they never skip. The tests take turns (the queue has two slots, shared).

mod common;
use common::{wait_until, Project};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cluster every test runs on: polled every second, a short grace.
const YAML: &str = "clusters:\n  ge:\n    warden: sge\n    poll_interval: 1s\n    grace: 2s\n    sge: {q: all.q}\n";

/// Prints `step=i loss=...` every `pause` seconds until the file `release-<id>` exists (or
/// `n` steps), then exits with `code`. SIGTERM ends it at once with 143; SIGUSR2 (Grid
/// Engine's -notify warning, passed on by the kid) makes it say `checkpoint`.
const JOB: &str = r#"
import os, signal, sys, time
signal.signal(signal.SIGUSR2, lambda *_: print("checkpoint", flush=True))
n, pause, code, me = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for i in range(n):
    if os.path.exists("release-" + me):
        break
    print(f"step={i} loss={1.0/(i+1):.6f}", flush=True)
    time.sleep(pause)
sys.exit(code)
"#;

/// One test at a time: two slots for all of them.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// A project on the `ge` cluster with the job script, and rows `(id, n, pause, code)`.
fn sge_project(name: &str, rows: &[(&str, f64, f64, f64)]) -> Project {
    common::services::sge();
    let p = Project::new(name, YAML);
    p.write("job.py", JOB);
    p.job_workbook("ge", "python3 job.py {n} {pause} {code} {id}", rows);
    p
}

fn mum_dir(p: &Project) -> PathBuf {
    p.path(".neronet/mum-ge")
}

fn mum_log(p: &Project) -> String {
    std::fs::read_to_string(mum_dir(p).join("mum.log")).unwrap_or_default()
}

fn run_dir(p: &Project, run: &str) -> PathBuf {
    let runs = mum_dir(p).join("runs");
    let suffix = format!("-{run}");
    std::fs::read_dir(&runs)
        .unwrap_or_else(|e| panic!("{}: {e}", runs.display()))
        .flatten()
        .map(|e| e.path())
        .find(|d| d.file_name().unwrap().to_string_lossy().ends_with(&suffix))
        .unwrap_or_else(|| panic!("no directory for run {run} in {}", runs.display()))
}

fn batches(p: &Project) -> Vec<PathBuf> {
    std::fs::read_dir(mum_dir(p).join("batches"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn entry(p: &Project, id: &str) -> serde_json::Value {
    p.status()
        .into_iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no experiment {id} in status"))
}

fn wait_state(p: &Project, id: &str, state: &str, secs: u64) {
    wait_until(
        &format!("{id} to be {state} ({})", mum_log(p)),
        Duration::from_secs(secs),
        || p.state_of(id) == state,
    );
}

fn release(p: &Project, id: &str) {
    std::fs::write(p.path(&format!("release-{id}")), "").unwrap();
}

fn sge(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn count(p: &Project, sql: &str) -> i64 {
    p.store().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn runs_start_finish_abort_and_restart_through_grid_engine() {
    let _turn = turn();
    let t = Instant::now();
    let p = sge_project("sge-basic", &[("1", 3.0, 0.1, 0.0), ("2", 600.0, 0.2, 0.0)]);
    p.ok(&["start", "1-2"]);
    wait_state(&p, "1", "finished", 60);
    let one = entry(&p, "1");
    assert_eq!(one["metrics"]["step"], 2.0, "{one}");
    // The job id is Grid Engine's (`<job>.<task>`) and the node is where the kid ran.
    let job = one["job_id"].as_str().unwrap_or_default().to_string();
    assert!(
        job.contains('.') && job.split('.').all(|x| x.parse::<u64>().is_ok()),
        "{one}"
    );
    assert_eq!(one["node"], hostname(), "{one}");
    wait_state(&p, "2", "running", 60);
    let job2 = entry(&p, "2")["job_id"].as_str().unwrap().to_string();
    assert_eq!(job.split('.').next(), job2.split('.').next(), "one array");
    // The script went to qsub on stdin; a copy sits beside each run.
    let script = std::fs::read_to_string(run_dir(&p, "2.1").join("qsub.sh")).unwrap();
    assert!(script.contains("#$ -q \"all.q\"\n"), "{script}");
    p.ok(&["abort", "2"]);
    wait_state(&p, "2", "aborted", 60);
    let two = entry(&p, "2");
    assert!(
        two["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("aborted by user"),
        "{two}"
    );
    p.ok(&["restart", "1"]);
    wait_state(&p, "1", "finished", 60);
    let again = entry(&p, "1");
    assert_ne!(again["job_id"], one["job_id"], "a new run is a new job");
    assert_eq!(batches(&p).len(), 2, "one array per start");
    // Job id and node reach `status --json` (above); the table's job/node columns are
    // src/view.rs's (SLURM only there for now).
    assert_eq!(again["node"], hostname(), "{again}");
    eprintln!("basic: {:?}", t.elapsed());
}

#[test]
fn twenty_rows_are_one_qsub_call() {
    let _turn = turn();
    let t = Instant::now();
    let rows: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let rows: Vec<(&str, f64, f64, f64)> =
        rows.iter().map(|i| (i.as_str(), 2.0, 0.0, 0.0)).collect();
    let p = sge_project("sge-array", &rows);
    let out = p
        .command(&["start", "all"])
        .env("RUST_LOG", "info,neronet::cluster::mum::sge=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    wait_until("all 20 finished", Duration::from_secs(120), || {
        p.status().iter().all(|e| e["state"] == "finished")
    });
    let log = mum_log(&p);
    assert_eq!(log.matches("sge: qsub call").count(), 1, "{log}");
    assert!(log.contains("submitted 20 run(s) as array job"), "{log}");
    assert_eq!(batches(&p).len(), 1);
    // One qstat per poll interval (1 s) for all 20 jobs, never one per job.
    let qstats = log.matches("sge: qstat call").count();
    let limit = started.elapsed().as_secs() + 3;
    assert!(
        qstats >= 2 && qstats as u64 <= limit,
        "{qstats} qstat calls in {:?}",
        started.elapsed()
    );
    // Every run's metrics, once.
    let steps = count(
        &p,
        "SELECT COUNT(*) FROM metrics WHERE name = 'step' AND value = 1",
    );
    assert_eq!(steps, 20);
    for e in p.status() {
        assert_eq!(e["metrics"]["step"], 1.0, "{e}");
    }
    eprintln!("20 rows: {:?}", t.elapsed());
}

#[test]
fn a_failure_crashes_h_rt_is_a_timeout_and_a_rerun_keeps_its_run() {
    let _turn = turn();
    let t = Instant::now();
    common::services::sge();
    let yaml = YAML.replace("    grace: 2s\n", "    grace: 2s\n    requeue: true\n");
    let p = Project::new("sge-fail", &yaml);
    p.write("job.py", JOB);
    let cmd = "python3 job.py {n} {pause} {code} {id}";
    use common::V;
    p.workbook(
        &[
            "id",
            "status",
            "cluster",
            "command",
            "n",
            "pause",
            "code",
            "sge.l.h_rt",
        ],
        &[
            vec![
                V::S("1"),
                V::E,
                V::S("ge"),
                V::S(cmd),
                V::N(1.0),
                V::N(0.0),
                V::N(3.0),
                V::E,
            ],
            vec![
                V::S("2"),
                V::E,
                V::S("ge"),
                V::S(cmd),
                V::N(100000.0),
                V::N(0.2),
                V::N(0.0),
                V::S("0:0:3"),
            ],
            vec![
                V::S("3"),
                V::E,
                V::S("ge"),
                V::S(cmd),
                V::N(100000.0),
                V::N(0.1),
                V::N(0.0),
                V::E,
            ],
        ],
    );
    p.ok(&["start", "all"]);
    wait_state(&p, "1", "crashed", 60);
    let one = entry(&p, "1");
    assert_eq!(one["exit_code"], 3, "{one}");
    assert_eq!(one["reason"], "exit code 3", "{one}");
    // h_rt from the row's sge.l.h_rt cell: 3 s, then a timeout with Grid Engine's word.
    wait_state(&p, "2", "timeout", 60);
    let two = entry(&p, "2");
    assert!(
        two["reason"]
            .as_str()
            .unwrap_or("")
            .contains("Grid Engine: time limit reached (h_rt)"),
        "{two}"
    );
    let script = std::fs::read_to_string(run_dir(&p, "2.1").join("qsub.sh")).unwrap();
    assert!(
        script.contains("#$ -l h_rt=0:0:3\n") && script.contains("#$ -r \"y\"\n"),
        "{script}"
    );
    // qmod -rj: Grid Engine reruns the job; the run goes on, same number, metrics kept.
    wait_state(&p, "3", "running", 60);
    let job = entry(&p, "3")["job_id"].as_str().unwrap().to_string();
    wait_until("metrics before the rerun", Duration::from_secs(30), || {
        entry(&p, "3")["metrics"]["step"].as_f64().unwrap_or(0.0) >= 2.0
    });
    sge("qmod", &["-rj", &job]);
    let zeros = || {
        count(
            &p,
            "SELECT COUNT(*) FROM metrics WHERE run_uid = '3.1' AND name = 'step' AND value = 0",
        )
    };
    wait_until("the rerun's first metrics", Duration::from_secs(60), || {
        let _ = p.neroman(&["status"]);
        zeros() == 2
    });
    release(&p, "3");
    wait_state(&p, "3", "finished", 60);
    let e = entry(&p, "3");
    assert_eq!(e["run"], 1, "the run keeps its number: {e}");
    assert_eq!(e["job_id"], job.as_str(), "{e}");
    let history: Vec<String> = p
        .store()
        .prepare("SELECT state FROM state_changes WHERE run_uid = '3.1' ORDER BY rowid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let text = history.join(" ");
    assert!(
        text.starts_with("submitted queued running")
            && text.ends_with("running finished")
            && history.iter().filter(|s| *s == "running").count() == 2,
        "{history:?}"
    );
    // mum journaled the requeue once, in Grid Engine's name.
    let journal = std::fs::read_to_string(mum_dir(&p).join("journal.jsonl")).unwrap();
    let requeues = journal
        .lines()
        .filter(|l| l.contains(r#""run":"3.1""#) && l.contains("requeued by Grid Engine"))
        .count();
    assert_eq!(requeues, 1, "{journal}");
    eprintln!("fail+timeout+rerun: {:?}", t.elapsed());
}

#[test]
fn mum_killed_while_jobs_queue_and_run_submits_nothing_twice() {
    let _turn = turn();
    let t = Instant::now();
    let rows: Vec<(&str, f64, f64, f64)> = ["1", "2", "3", "4"]
        .iter()
        .map(|id| (*id, 100000.0, 0.2, 0.0))
        .collect();
    let p = sge_project("sge-kill", &rows);
    // mum dies right after qsub answered, before it journaled the launch.
    let _ = p.neroman_env(
        &["start", "all"],
        &[("NERONET_FAILPOINT", "launch.after_warden")],
    );
    wait_until("the failpoint to fire", Duration::from_secs(30), || {
        mum_log(&p).contains("failpoint launch.after_warden")
    });
    wait_until("two running", Duration::from_secs(60), || {
        p.status()
            .iter()
            .filter(|e| e["state"] == "running")
            .count()
            >= 2
    });
    assert!(
        mum_log(&p).contains("launch found running"),
        "{}",
        mum_log(&p)
    );
    assert_eq!(batches(&p).len(), 1, "submitted once");
    // Now a plain kill -9 while two run and two wait in Grid Engine's queue.
    let pid = common::lock_pid(&mum_dir(&p)).expect("the agent's lock names its pid");
    common::kill(pid, libc::SIGKILL);
    let st = p.status();
    assert!(
        st.iter()
            .all(|e| e["state"] == "running" || e["state"] == "queued"),
        "{st:?}"
    );
    let waiting = st
        .iter()
        .find(|e| e["state"] == "queued")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .expect("a run waiting in Grid Engine's queue");
    p.ok(&["abort", &waiting]);
    wait_state(&p, &waiting, "aborted", 30);
    let others: Vec<&str> = ["1", "2", "3", "4"]
        .into_iter()
        .filter(|id| *id != waiting)
        .collect();
    // Metrics before the end, then everyone finishes.
    for id in &others {
        release(&p, id);
    }
    wait_until("the others finished", Duration::from_secs(90), || {
        p.status()
            .iter()
            .all(|e| e["state"] == "finished" || e["id"] == waiting.as_str())
    });
    assert_eq!(batches(&p).len(), 1, "submitted once");
    for id in others {
        let run = format!("{id}.1");
        let events = std::fs::read_to_string(run_dir(&p, &run).join("events.jsonl")).unwrap();
        assert_eq!(
            events.matches(r#""event":"started""#).count(),
            1,
            "{id}: {events}"
        );
        let dup = count(
            &p,
            &format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM metrics WHERE run_uid = '{run}' AND name = 'step' GROUP BY value HAVING COUNT(*) > 1)"
            ),
        );
        assert_eq!(dup, 0, "{run}: a metric stored twice");
        let ends = count(
            &p,
            &format!(
                "SELECT COUNT(*) FROM state_changes WHERE run_uid = '{run}' AND state = 'finished'"
            ),
        );
        assert_eq!(ends, 1, "{run} ended once");
    }
    eprintln!("kill: {:?}", t.elapsed());
}

/// The state letter of each process in /proc/<pid>/stat (`T` when stopped).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Regression: `qmod -sj` crashed the run "killed by SIGUSR1 (signal 10)": with `-notify`
/// Grid Engine sends SIGUSR1 to the script's group before a suspend, and the kid passed it on
/// to the job as SLURM's checkpoint warning; the SIGSTOP/SIGCONT that follow reach the kid's
/// group, not the job's. Under Grid Engine the kid now stops the job's group on USR1 and
/// continues it on SIGCONT: the run stays `running` and ends with all its metrics.
#[test]
fn a_suspended_job_stops_and_resumes_and_finishes() {
    let _turn = turn();
    let t = Instant::now();
    let p = sge_project("sge-suspend", &[("1", 100000.0, 0.1, 0.0)]);
    p.ok(&["start", "1"]);
    wait_state(&p, "1", "running", 60);
    wait_until(
        "metrics before the suspend",
        Duration::from_secs(30),
        || entry(&p, "1")["metrics"]["step"].as_f64().unwrap_or(0.0) >= 2.0,
    );
    let job = entry(&p, "1")["job_id"].as_str().unwrap().to_string();
    let events = std::fs::read_to_string(run_dir(&p, "1.1").join("events.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    let pgid = first["job_pid"].as_i64().unwrap() as i32;
    let all_stopped = |stopped: bool| {
        let members = common::group_members(pgid);
        !members.is_empty()
            && members
                .iter()
                .all(|pid| proc_state(*pid).is_some_and(|s| (s == 'T') == stopped))
    };
    sge("qmod", &["-sj", &job]);
    wait_until(
        "the job's processes stopped (state T)",
        Duration::from_secs(30),
        || all_stopped(true),
    );
    assert_eq!(p.state_of("1"), "running", "{}", mum_log(&p));
    sge("qmod", &["-usj", &job]);
    wait_until(
        "the job's processes running again",
        Duration::from_secs(30),
        || all_stopped(false),
    );
    let before = entry(&p, "1")["metrics"]["step"].as_f64().unwrap_or(0.0);
    wait_until("metrics after the resume", Duration::from_secs(30), || {
        entry(&p, "1")["metrics"]["step"].as_f64().unwrap_or(0.0) > before
    });
    assert_eq!(p.state_of("1"), "running");
    release(&p, "1");
    wait_state(&p, "1", "finished", 60);
    let e = entry(&p, "1");
    assert_eq!(e["exit_code"], 0, "{e}");
    // Every step once, none lost: 0..=last.
    let last = e["metrics"]["step"].as_f64().unwrap() as i64;
    let steps = count(
        &p,
        "SELECT COUNT(DISTINCT value) FROM metrics WHERE run_uid = '1.1' AND name = 'step'",
    );
    assert_eq!(steps, last + 1, "{e}");
    let log = std::fs::read_to_string(run_dir(&p, "1.1").join("kid.log")).unwrap_or_default();
    assert!(log.contains("Grid Engine suspends the job"), "{log}");
    eprintln!("suspend: {:?}", t.elapsed());
}
