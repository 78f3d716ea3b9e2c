//! End-to-end runs through the SLURM warden on the real single-node SLURM the test script
//! starts (partition `debug`; no accounting, so final states come from `scontrol`): neroman →
//! neromum (on this machine, `warden: slurm`) → sbatch job arrays → nerokid → job. A missing
//! SLURM fails these tests; they never skip.

mod common;
use common::{wait_until, Project, V};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The cluster every test runs on: polled every second, arrays, a short grace.
const YAML: &str = "clusters:\n  hpc:\n    warden: slurm\n    poll_interval: 1s\n    grace: 2s\n    slurm: {partition: debug}\n";

/// Prints `step=i loss=...` every `pause` seconds until the file `release-<id>` exists (or
/// `n` steps), then exits with `code`. SIGTERM ends it at once with 143; SIGUSR1 (SLURM's
/// warning, passed on by the kid) makes it say `checkpoint`.
const JOB: &str = r#"
import os, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: print("checkpoint", flush=True))
n, pause, code, me = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for i in range(n):
    if os.path.exists("release-" + me):
        break
    print(f"step={i} loss={1.0/(i+1):.6f}", flush=True)
    time.sleep(pause)
sys.exit(code)
"#;

/// A project on the `hpc` cluster with the job script, and rows `(id, n, pause, code)`.
fn slurm_project(name: &str, yaml: &str, rows: &[(&str, f64, f64, f64)]) -> Project {
    common::services::slurm();
    let p = Project::new(name, yaml);
    p.write("job.py", JOB);
    p.job_workbook("hpc", "python3 job.py {n} {pause} {code} {id}", rows);
    p
}

fn mum_dir(p: &Project) -> PathBuf {
    p.path(".neronet/mum-hpc")
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

/// The batches (job arrays) this project's mum submitted.
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

fn scontrol(args: &[&str]) -> String {
    let out = Command::new("scontrol").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "scontrol {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn job_state(job: &str) -> String {
    let text = scontrol(&["-o", "show", "job", job]);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or_default()
        .to_string()
}

fn hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn runs_start_finish_abort_and_restart_through_slurm() {
    let t = Instant::now();
    let p = slurm_project(
        "slurm-basic",
        YAML,
        &[("1", 3.0, 0.1, 0.0), ("2", 600.0, 0.2, 0.0)],
    );
    p.ok(&["start", "1-2"]);
    wait_state(&p, "1", "finished", 60);
    let one = entry(&p, "1");
    assert_eq!(one["metrics"]["step"], 2.0, "{one}");
    // The job id is SLURM's (an array task) and the node is where the kid ran.
    let job = one["job_id"].as_str().unwrap_or_default().to_string();
    assert!(
        job.contains('_') && job.split('_').all(|x| x.parse::<u64>().is_ok()),
        "{one}"
    );
    assert_eq!(one["node"], hostname(), "{one}");
    wait_state(&p, "2", "running", 60);
    let two = entry(&p, "2");
    let job2 = two["job_id"].as_str().unwrap().to_string();
    assert_eq!(job_state(&job2), "RUNNING");
    // Both rows went in one array: two tasks of one job.
    assert_eq!(
        job.split('_').next(),
        job2.split('_').next(),
        "{job} {job2}"
    );
    p.ok(&["abort", "2"]);
    wait_state(&p, "2", "aborted", 60);
    assert!(
        entry(&p, "2")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("aborted by user"),
        "{}",
        entry(&p, "2")
    );
    // The abort reached the kid over its TCP connection: it stopped the job (exit 143), so
    // SLURM records the task FAILED; scancel (CANCELLED) when the kid had no connection.
    let ended = job_state(&job2);
    assert!(ended == "FAILED" || ended == "CANCELLED", "{ended}");
    // Only that array task was stopped: task 1's record stays COMPLETED.
    assert_eq!(job_state(&job), "COMPLETED");
    p.ok(&["restart", "1"]);
    wait_state(&p, "1", "finished", 60);
    let again = entry(&p, "1");
    assert_ne!(again["job_id"], one["job_id"], "a new run is a new job");
    assert_eq!(batches(&p).len(), 2, "one array per start");
    // So do status's table ...
    let table = p.ok(&["status"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("job") && header.contains("node"), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_default();
    assert!(
        line.contains(again["job_id"].as_str().unwrap()) && line.contains(&hostname()),
        "{table}"
    );
    // ... and the results workbook.
    p.ok(&["results"]);
    let mut book = calamine::open_workbook_auto(p.path("results.xlsx")).unwrap();
    let sheet = calamine::Reader::worksheet_range(&mut book, "results").unwrap();
    let rows: Vec<Vec<String>> = sheet
        .rows()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect();
    let col = |name: &str| rows[0].iter().position(|h| h == name).unwrap();
    let first = rows.iter().find(|r| r[0] == "1").unwrap();
    assert_eq!(
        first[col("job id")],
        again["job_id"].as_str().unwrap(),
        "{rows:?}"
    );
    assert_eq!(first[col("node")], hostname(), "{rows:?}");
    eprintln!("basic: {:?}", t.elapsed());
}

#[test]
fn fifty_rows_are_one_sbatch_call() {
    let t = Instant::now();
    let rows: Vec<(String, f64, f64, f64)> =
        (1..=50).map(|i| (i.to_string(), 1.0, 0.0, 0.0)).collect();
    let rows: Vec<(&str, f64, f64, f64)> = rows
        .iter()
        .map(|(i, n, pa, c)| (i.as_str(), *n, *pa, *c))
        .collect();
    let p = slurm_project("slurm-array", YAML, &rows);
    // The mum this starts logs each scheduler call.
    let out = p
        .command(&["start", "all"])
        .env("RUST_LOG", "info,neronet::cluster::mum::slurm=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    wait_until("all 50 finished", Duration::from_secs(150), || {
        p.status().iter().all(|e| e["state"] == "finished")
    });
    let log = mum_log(&p);
    assert_eq!(
        log.matches("slurm: submitted").count(),
        1,
        "one sbatch call for 50 rows:\n{log}"
    );
    assert!(log.contains("submitted 50 run(s) as job array"), "{log}");
    assert_eq!(batches(&p).len(), 1);
    let arrays: std::collections::BTreeSet<String> = p
        .status()
        .iter()
        .map(|e| {
            e["job_id"]
                .as_str()
                .unwrap()
                .split('_')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(arrays.len(), 1, "{arrays:?}");
    // One squeue per poll interval (1 s here) for all 50 jobs, never one per job.
    let squeues = log.matches("slurm: squeue call #").count();
    let limit = started.elapsed().as_secs() + 2;
    assert!(
        squeues >= 2 && squeues as u64 <= limit,
        "{squeues} squeue calls in {:?}",
        started.elapsed()
    );
    eprintln!("50 rows: {:?}", t.elapsed());
}

#[test]
fn a_failing_job_crashes_and_a_time_limit_is_a_timeout() {
    let t = Instant::now();
    let p = slurm_project(
        "slurm-fail",
        YAML,
        &[("1", 1.0, 0.0, 3.0), ("2", 600.0, 0.2, 0.0)],
    );
    p.ok(&["start", "all"]);
    wait_state(&p, "1", "crashed", 60);
    let one = entry(&p, "1");
    assert_eq!(one["exit_code"], 3, "{one}");
    assert_eq!(one["reason"], "exit code 3", "{one}");
    wait_state(&p, "2", "running", 60);
    // SLURM's time limit, reached now: a limit of 0 minutes ends the job within seconds.
    let job = entry(&p, "2")["job_id"].as_str().unwrap().to_string();
    scontrol(&["update", &format!("JobId={job}"), "TimeLimit=0"]);
    wait_state(&p, "2", "timeout", 60);
    // The warden's word is the reason, in status and in `show`.
    let two = entry(&p, "2");
    assert!(
        two["reason"].as_str().unwrap_or("").contains("time limit"),
        "{two}"
    );
    let shown = p.ok(&["show", "2"]);
    assert!(
        shown.contains("run 1 — timeout") && shown.contains("reason       SLURM: time limit"),
        "{shown}"
    );
    assert!(shown.contains(&format!("job {job}")), "{shown}");
    // SLURM's words are in the run's kid.log (its --output).
    let kid_log = std::fs::read_to_string(run_dir(&p, "2.1").join("kid.log")).unwrap();
    assert!(kid_log.contains("DUE TO TIME LIMIT"), "{kid_log}");
    eprintln!("fail+timeout: {:?}", t.elapsed());
}

#[test]
fn a_requeued_job_keeps_its_run_and_metrics() {
    let t = Instant::now();
    let yaml = YAML.replace("    grace: 2s\n", "    grace: 2s\n    requeue: true\n");
    let p = slurm_project("slurm-requeue", &yaml, &[("1", 100000.0, 0.1, 0.0)]);
    p.ok(&["start", "1"]);
    wait_state(&p, "1", "running", 60);
    let script = std::fs::read_to_string(run_dir(&p, "1.1").join("sbatch.sh")).unwrap();
    assert!(
        script.contains("#SBATCH --requeue\n")
            && script.contains("#SBATCH --signal=\"B:USR1@2\"\n"),
        "{script}"
    );
    let job = entry(&p, "1")["job_id"].as_str().unwrap().to_string();
    wait_until(
        "metrics before the requeue",
        Duration::from_secs(30),
        || entry(&p, "1")["metrics"]["step"].as_f64().unwrap_or(0.0) >= 2.0,
    );
    // SLURM's warning before the end (`--signal=B:USR1@N`, here sent at once) reaches the job
    // through the kid, which goes on. (Sent once the job printed: its handler is set by then.)
    let out = Command::new("scancel")
        .args(["--signal=USR1", "--batch", &job])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = run_dir(&p, "1.1").join("stdout.log");
    wait_until("the job to checkpoint", Duration::from_secs(20), || {
        std::fs::read_to_string(&stdout).is_ok_and(|s| s.contains("checkpoint"))
    });
    assert_eq!(p.state_of("1"), "running");
    scontrol(&["requeue", &job]);
    let requeued_at = Instant::now();
    wait_state(&p, "1", "queued", 60);
    // SLURM holds a requeued job back for about two minutes: start it now — but not within
    // two seconds of the requeue, when slurmd still refuses it ("Job credential revoked") and
    // the job fails (mum then reports it crashed, as SLURM says).
    wait_until(
        "the job pending again, 2 s after",
        Duration::from_secs(30),
        || job_state(&job) == "PENDING" && requeued_at.elapsed() >= Duration::from_secs(2),
    );
    scontrol(&["update", &format!("JobId={job}"), "StartTime=now"]);
    wait_state(&p, "1", "running", 60);
    let step_zeros = || -> i64 {
        p.store()
            .query_row(
                "SELECT COUNT(*) FROM metrics WHERE run_uid = '1.1' AND name = 'step' AND value = 0",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    // The second kid's metrics join the first one's.
    wait_until(
        "the restarted job's first metrics",
        Duration::from_secs(30),
        || {
            let _ = p.neroman(&["status"]);
            step_zeros() == 2
        },
    );
    let steps_before: i64 = p
        .store()
        .query_row(
            "SELECT COUNT(*) FROM metrics WHERE run_uid = '1.1' AND name = 'step'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    release(&p, "1");
    wait_state(&p, "1", "finished", 60);
    let e = entry(&p, "1");
    assert_eq!(e["run"], 1, "the run keeps its number: {e}");
    let (steps, zeros): (i64, i64) = p
        .store()
        .query_row(
            "SELECT COUNT(*), SUM(value = 0) FROM metrics WHERE run_uid = '1.1' AND name = 'step'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        steps >= steps_before,
        "metrics kept: {steps} < {steps_before}"
    );
    assert_eq!(zeros, 2, "both kids' metrics are the run's (step 0 twice)");
    let history: Vec<String> = p
        .store()
        .prepare("SELECT state FROM state_changes WHERE run_uid = '1.1' ORDER BY rowid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        history.join(" "),
        "submitted queued running queued running finished",
        "{history:?}"
    );
    let events = std::fs::read_to_string(run_dir(&p, "1.1").join("events.jsonl")).unwrap();
    assert_eq!(
        events.matches(r#""event":"started""#).count(),
        2,
        "{events}"
    );
    eprintln!("requeue: {:?}", t.elapsed());
}

#[test]
fn slurm_columns_reach_the_script_and_metacharacters_stay_inert() {
    let t = Instant::now();
    common::services::slurm();
    let p = Project::new("slurm-columns", YAML);
    let evil = "$(touch pwned-param); `touch pwned-tick` 'q' \"d\" \\";
    p.workbook(
        &[
            "id",
            "status",
            "cluster",
            "command",
            "msg",
            "slurm.time",
            "slurm.account",
            "slurm.Bad Key",
        ],
        &[
            vec![
                V::S("1"),
                V::E,
                V::S("hpc"),
                V::S("echo {msg}"),
                V::S(evil),
                V::S("7"),
                V::S("a$(touch pwned-opt)\"x\\@example.org"),
                V::E,
            ],
            vec![
                V::S("2"),
                V::E,
                V::S("hpc"),
                V::S("echo hi"),
                V::E,
                V::E,
                V::E,
                V::S("x"),
            ],
            vec![
                V::S("3"),
                V::E,
                V::S("hpc"),
                V::S("echo hi"),
                V::E,
                V::S("nosuch"),
                V::E,
                V::E,
            ],
        ],
    );
    let out = p.neroman(&["start", "2"]);
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains(
            "2: not started: invalid row: experiments!H3: slurm.bad key: an option name is"
        ),
        "the cell is named: {err}"
    );
    assert_eq!(p.state_of("2"), "defined");
    p.ok(&["start", "1"]);
    wait_state(&p, "1", "finished", 60);
    // A job sbatch refuses is lost, with SLURM's words, said by `start` itself (exit 3: a
    // run ended other than finished).
    let out = p.neroman(&["start", "3"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("3: lost (SLURM refused the job") && said.contains("1 refused (above)"),
        "{said}"
    );
    wait_state(&p, "3", "lost", 30);
    let reason = entry(&p, "3")["reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with("SLURM refused the job: sbatch failed")
            && reason.contains("Invalid --time specification"),
        "{reason}"
    );
    let dir = run_dir(&p, "1.1");
    let script = std::fs::read_to_string(dir.join("sbatch.sh")).unwrap();
    assert!(
        script.contains("#SBATCH --partition=\"debug\"\n"),
        "{script}"
    );
    assert!(script.contains("#SBATCH --time=\"7\"\n"), "{script}");
    assert!(
        script.contains("#SBATCH --account=\"a$(touch pwned-opt)\\\"x\\\\@example.org\"\n"),
        "{script}"
    );
    // SLURM read them as written.
    let job = entry(&p, "1")["job_id"].as_str().unwrap().to_string();
    let shown = scontrol(&["-o", "show", "job", &job]);
    assert!(shown.contains("TimeLimit=00:07:00"), "{shown}");
    assert!(shown.contains("Account=a$(touch"), "{shown}");
    let stdout = std::fs::read_to_string(dir.join("stdout.log")).unwrap();
    assert_eq!(stdout.trim_end(), evil, "the parameter arrives as text");
    for place in [p.dir.clone(), dir.clone(), mum_dir(&p)] {
        for f in ["pwned-param", "pwned-tick", "pwned-opt"] {
            assert!(!place.join(f).exists(), "{f} in {}", place.display());
        }
    }
    eprintln!("columns: {:?}", t.elapsed());
}

#[test]
fn mum_killed_while_jobs_queue_and_run_submits_nothing_twice() {
    let t = Instant::now();
    let rows: Vec<(&str, f64, f64, f64)> = ["1", "2", "3", "4"]
        .iter()
        .map(|id| (*id, 100000.0, 0.2, 0.0))
        .collect();
    let p = slurm_project("slurm-kill", YAML, &rows);
    // mum dies right after sbatch answered, before it journaled the launch.
    let out = p.neroman_env(
        &["start", "all"],
        &[("NERONET_FAILPOINT", "launch.after_warden")],
    );
    let _ = out; // the command may fail: its agent died under it
    wait_until("the failpoint to fire", Duration::from_secs(30), || {
        mum_log(&p).contains("failpoint launch.after_warden")
    });
    // The next command starts a mum that finds the batch SLURM already has.
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
    // Now a plain kill -9 while two run and two wait in SLURM's queue.
    let pid = common::lock_pid(&mum_dir(&p)).expect("the agent's lock names its pid");
    common::kill(pid, libc::SIGKILL);
    let st = p.status();
    assert!(
        st.iter()
            .all(|e| e["state"] == "running" || e["state"] == "queued"),
        "{st:?}"
    );
    // A run still in SLURM's queue is aborted there (two CPUs: two of the four wait).
    let waiting = st
        .iter()
        .find(|e| e["state"] == "queued")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .expect("a run waiting in SLURM's queue");
    p.ok(&["abort", &waiting]);
    wait_state(&p, &waiting, "aborted", 30);
    let reason = entry(&p, &waiting)["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("aborted by user"), "{reason}");
    let others: Vec<&str> = ["1", "2", "3", "4"]
        .into_iter()
        .filter(|id| *id != waiting)
        .collect();
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
        let events =
            std::fs::read_to_string(run_dir(&p, &format!("{id}.1")).join("events.jsonl")).unwrap();
        assert_eq!(
            events.matches(r#""event":"started""#).count(),
            1,
            "{id}: {events}"
        );
    }
    eprintln!("kill: {:?}", t.elapsed());
}
