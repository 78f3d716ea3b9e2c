//! End-to-end runs on this machine with the real binaries: neroman → neromum → nerokid → job.

mod common;
use common::{kill, wait_until, Project, V};
use std::time::Duration;

const YAML: &str = "clusters:\n  local:\n    max_parallel: 2\n    grace: 2s\n";

/// A job that prints `step=i loss=...` lines with a pause, then exits with the given code.
const JOB: &str = r#"
import sys, time
n, pause, code = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    print(f"step={i} loss={1.0/(i+1):.6f}", flush=True)
    time.sleep(pause)
print("done", file=sys.stderr, flush=True)
sys.exit(code)
"#;

fn job_project(name: &str, rows: &[(&str, f64, f64, f64)]) -> Project {
    let p = Project::new(name, YAML);
    p.write("job.py", JOB);
    job_rows(&p, rows);
    p
}

/// (Re)write the workbook of a [`job_project`] with these rows.
fn job_rows(p: &Project, rows: &[(&str, f64, f64, f64)]) {
    p.job_workbook("local", "python3 job.py {n} {pause} {code}", rows);
}

#[test]
fn runs_finish_and_crash_with_metrics_in_store_and_results() {
    let p = job_project(
        "basic",
        &[
            ("1", 5.0, 0.05, 0.0),
            ("2", 3.0, 0.05, 3.0),
            ("3", 2.0, 0.0, 0.0),
        ],
    );
    let out = p.neroman(&["start", "1-2", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "--wait exits 3 when a run did not finish"
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("1: finished"), "{out}");
    assert!(out.contains("2: crashed (exit code 3)"), "{out}");
    let st = p.status();
    assert_eq!(st[0]["state"], "finished");
    assert_eq!(st[0]["metrics"]["step"], 4.0);
    assert_eq!(st[1]["exit_code"], 3);
    assert_eq!(st[2]["state"], "defined", "3 was not selected");
    // Every printed metric line is in the store: 5 lines × 2 metrics.
    let n: i64 = p
        .store()
        .query_row(
            "SELECT COUNT(*) FROM metrics WHERE run_uid = '1.1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 10);
    // Every state change is kept with its time.
    let states: Vec<String> = {
        let db = p.store();
        let mut s = db
            .prepare("SELECT state FROM state_changes WHERE run_uid = '1.1' ORDER BY seq")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(states, ["submitted", "queued", "running", "finished"]);
    // Logs through mum.
    let logs = p.ok(&["logs", "1"]);
    assert!(
        logs.starts_with("step=0 loss=1.000000\n") && logs.contains("step=4"),
        "{logs}"
    );
    assert_eq!(p.ok(&["logs", "1", "--stderr"]), "done\n");
    // Starting again is refused (it ran); restart makes run 2.
    let again = p.ok(&["start", "1"]);
    assert!(again.contains("already ran"), "{again}");
    let re = String::from_utf8_lossy(&p.neroman(&["--restart", "crashed", "--wait"]).stdout)
        .into_owned();
    assert!(re.contains("2: submitted (run 2)"), "{re}");
    let runs: i64 = p
        .store()
        .query_row("SELECT COUNT(*) FROM runs WHERE exp_id = '2'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(runs, 2);
    // results.xlsx opens in LibreOffice and holds the rows.
    let csv = common::soffice_csv(&p.path("results.xlsx"), 0);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,state,cluster,run,"), "{csv}");
    assert!(lines[1].starts_with("1,finished,local,1,"), "{csv}");
    assert!(lines[2].starts_with("2,crashed,local,2,"), "{csv}");
    assert!(lines[3].starts_with("3,defined,local,"), "{csv}");
    let history = common::soffice_csv(&p.path("results.xlsx"), 1);
    assert!(history.lines().count() > 10, "{history}");
}

#[test]
fn max_parallel_queues_the_rest() {
    let rows: Vec<(&str, f64, f64, f64)> = vec![
        ("a", 30.0, 0.1, 0.0),
        ("b", 30.0, 0.1, 0.0),
        ("c", 30.0, 0.1, 0.0),
    ];
    let p = job_project("parallel", &rows);
    p.ok(&["start", "all"]);
    wait_until("two running", Duration::from_secs(20), || {
        p.status()
            .iter()
            .filter(|e| e["state"] == "running")
            .count()
            == 2
    });
    assert_eq!(p.state_of("c"), "queued", "third waits for a slot");
    p.wait_all("finished", Duration::from_secs(60));
}

#[test]
fn kill_9_of_a_job_ends_crashed_with_its_signal() {
    let p = job_project("kill-job", &[("7", 600.0, 0.1, 0.0)]);
    p.ok(&["start", "7"]);
    p.wait_for_state("7", "running");
    let (_, job_pid) = p.started("7.1");
    // The job is `sh command.sh`; kill the python it runs as well as sh: the group's leader is sh.
    kill(job_pid, libc::SIGKILL);
    wait_until("crashed", Duration::from_secs(20), || {
        p.state_of("7") == "crashed"
    });
    let st = &p.status()[0];
    assert!(st["reason"].as_str().unwrap().contains("signal 9"), "{st}");
}

#[test]
fn kill_9_of_mum_loses_nothing() {
    let p = job_project(
        "kill-mum",
        &[
            ("1", 40.0, 0.05, 0.0),
            ("2", 40.0, 0.05, 0.0),
            ("3", 30.0, 0.05, 0.0),
        ],
    );
    p.ok(&["start", "all"]);
    wait_until("some metrics", Duration::from_secs(20), || {
        p.status()
            .iter()
            .any(|e| e["metrics"]["step"].as_f64().unwrap_or(0.0) >= 3.0)
    });
    let pid = p.mum_pid().expect("mum pid");
    kill(pid, libc::SIGKILL);
    wait_until("mum gone", Duration::from_secs(10), || {
        !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
    });
    // The next CLI call starts a new mum, which picks up the runs still going.
    let status = p.neroman(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(String::from_utf8_lossy(&status.stderr).contains("started it again"));
    assert_ne!(p.mum_pid(), Some(pid));
    p.wait_all("finished", Duration::from_secs(60));
    for e in p.status() {
        // Runs of 1-2 s get at least the first resource sample (taken at 1 s).
        assert!(
            e["rss_bytes"].as_i64().unwrap_or(0) > 0,
            "no resource sample: {e}"
        );
        assert!(!e["node"].as_str().unwrap_or("").is_empty(), "no node: {e}");
    }
    let db = p.store();
    for (run, lines) in [("1.1", 40), ("2.1", 40), ("3.1", 30)] {
        let n: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM metrics WHERE run_uid = ?1 AND name = 'step'",
                [run],
                |r| r.get(0),
            )
            .unwrap();
        let distinct: i64 = db
            .query_row(
                "SELECT COUNT(DISTINCT value) FROM metrics WHERE run_uid = ?1 AND name = 'step'",
                [run],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            (n, distinct),
            (lines, lines),
            "run {run}: every metric line once"
        );
    }
}

#[test]
fn abort_by_cli_stops_the_group() {
    let p = job_project(
        "abort",
        &[
            ("1", 600.0, 0.1, 0.0),
            ("2", 600.0, 0.1, 0.0),
            ("3", 600.0, 0.1, 0.0),
        ],
    );
    p.write(
        "neronet.yaml",
        "clusters:\n  local:\n    max_parallel: 2\n    grace: 2s\n",
    );
    p.ok(&["start", "all"]);
    wait_until("two running", Duration::from_secs(20), || {
        p.status()
            .iter()
            .filter(|e| e["state"] == "running")
            .count()
            == 2
    });
    let groups: Vec<(&str, i32)> = ["1.1", "2.1"]
        .into_iter()
        .map(|run| {
            let (_, pgid) = p.started(run);
            assert!(
                !common::group_members(pgid).is_empty(),
                "run {run}'s job group is running"
            );
            (run, pgid)
        })
        .collect();
    let out = p.ok(&["--abort", "running,3", "--wait"]);
    assert!(out.contains("abort sent"), "{out}");
    let st = p.status();
    assert!(st.iter().all(|e| e["state"] == "aborted"), "{st:?}");
    assert_eq!(st[2]["reason"], "cancelled before it started");
    // No process of the jobs' groups is left.
    for (run, pgid) in groups {
        let members = common::group_members(pgid);
        assert!(
            members.is_empty(),
            "run {run}: processes {members:?} of its group outlived the abort"
        );
    }
}

#[test]
fn kill_9_of_the_kid_ends_lost_and_takes_the_job_down() {
    // A job that prints nothing, so no broken pipe would end it by itself.
    let p = job_project("kill-kid", &[("9", 1.0, 600.0, 0.0)]);
    p.ok(&["start", "9"]);
    p.wait_for_state("9", "running");
    let (kid, pgid) = p.started("9.1");
    assert!(!common::group_members(pgid).is_empty());
    kill(kid, libc::SIGKILL);
    wait_until("lost", Duration::from_secs(20), || {
        p.state_of("9") == "lost"
    });
    let st = &p.status()[0];
    assert!(
        st["reason"]
            .as_str()
            .unwrap()
            .contains("without writing an exit record"),
        "{st}"
    );
    wait_until(
        "the job's group to be gone",
        Duration::from_secs(10),
        || common::group_members(pgid).is_empty(),
    );
}

/// Regression: neromans syncing at the same moment applied the same journal entries twice
/// (metrics doubled) and failed with "database is locked".
#[test]
fn concurrent_commands_apply_each_entry_once() {
    let rows: Vec<(String, f64, f64, f64)> =
        (1..=6).map(|i| (i.to_string(), 60.0, 0.02, 0.0)).collect();
    let rows: Vec<(&str, f64, f64, f64)> = rows
        .iter()
        .map(|(i, a, b, c)| (i.as_str(), *a, *b, *c))
        .collect();
    let p = job_project("concurrent", &rows);
    p.write("neronet.yaml", "clusters:\n  local:\n    max_parallel: 4\n");
    p.ok(&["start", "all"]);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let start = std::time::Instant::now();
                loop {
                    let out = p.neroman(&["status", "--json"]);
                    assert!(
                        out.status.success(),
                        "status failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    if v.as_array()
                        .unwrap()
                        .iter()
                        .all(|e| e["state"] == "finished")
                    {
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(90),
                        "runs did not finish"
                    );
                }
            });
        }
    });
    let db = p.store();
    for i in 1..=6 {
        let n: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM metrics WHERE run_uid = ?1",
                [format!("{i}.1")],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 120, "run {i}: 60 lines × 2 metrics, each once");
    }
}

/// Regression: one `loss=nan` on a line made the whole metrics event unreadable for mum, so
/// every metric on that line (and the line's step) was lost.
#[test]
fn nan_and_infinite_metrics_are_kept() {
    let p = Project::new("nan", "command: echo epoch=3 loss=nan grad=1e400 acc=0.5\n");
    p.workbook(&["id", "status"], &[vec![V::N(1.0), V::E]]);
    p.ok(&["start", "1", "--wait"]);
    let st = &p.status()[0];
    assert_eq!(st["metrics"]["epoch"], 3.0, "{st}");
    assert_eq!(st["metrics"]["acc"], 0.5, "{st}");
    assert_eq!(st["metrics"]["loss"], "nan", "{st}");
    assert_eq!(st["metrics"]["grad"], "inf", "{st}");
}

/// Regression: neromans that found no mum and started one at the same moment — the losers'
/// mums exit (the workdir is locked) and those neromans gave up instead of using the winner.
#[test]
fn parallel_starts_share_one_mum() {
    let rows: Vec<(&str, f64, f64, f64)> = vec![
        ("1", 2.0, 0.01, 0.0),
        ("2", 2.0, 0.01, 0.0),
        ("3", 2.0, 0.01, 0.0),
        ("4", 2.0, 0.01, 0.0),
    ];
    let p = job_project("parallel-starts", &rows);
    p.write("neronet.yaml", "clusters:\n  local:\n    max_parallel: 4\n");
    p.ok(&["status"]); // creates the store, starts no mum
    std::thread::scope(|s| {
        for id in ["1", "2", "3", "4"] {
            let p = &p;
            s.spawn(move || p.ok(&["start", id]));
        }
    });
    p.wait_all("finished", Duration::from_secs(30));
}

/// Regression: after the agent's workdir was lost, runs it held stayed queued/running forever.
#[test]
fn a_wiped_agent_workdir_turns_its_runs_lost() {
    let p = job_project("wiped", &[("1", 1.0, 600.0, 0.0)]);
    p.ok(&["start", "1"]);
    p.wait_for_state("1", "running");
    let (kid, job) = p.started("1.1");
    kill(p.mum_pid().unwrap(), libc::SIGKILL);
    kill(kid, libc::SIGKILL);
    kill(-job, libc::SIGKILL);
    std::fs::remove_dir_all(p.mum_dir()).unwrap();
    let st = &p.status()[0];
    assert_eq!(st["state"], "lost", "{st}");
    assert!(
        st["reason"].as_str().unwrap().contains("journal was reset"),
        "{st}"
    );
    // And it can be run again.
    p.ok(&["restart", "1"]);
    wait_until("run 2 running", Duration::from_secs(20), || {
        p.state_of("1") == "running"
    });
    p.ok(&["abort", "1", "--wait"]);
}

/// Regression: `source venv/bin/activate` (the documented setup example) failed under dash and
/// the job ran anyway, outside its environment, and was reported finished.
#[test]
fn setup_lines_run_in_bash_and_a_failing_one_stops_the_run() {
    let p = Project::new(
        "setup",
        "command: echo venv=$VENV_ON\nclusters:\n  local:\n    setup: ['source venv/bin/activate']\n",
    );
    std::fs::create_dir_all(p.path("venv/bin")).unwrap();
    p.write("venv/bin/activate", "export VENV_ON=yes\n");
    p.workbook(&["id", "status"], &[vec![V::N(1.0), V::E]]);
    p.ok(&["start", "1", "--wait"]);
    assert_eq!(p.ok(&["logs", "1"]), "venv=yes\n");
    // Now a setup line that fails: the command must not run.
    std::fs::remove_dir_all(p.path("venv")).unwrap();
    let out = p.neroman(&["restart", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        p.ok(&["logs", "1"]),
        "",
        "the command ran after its setup failed"
    );
    let err = p.ok(&["logs", "1", "--stderr"]);
    assert!(
        err.contains("neronet: a setup line failed (exit 1): source venv/bin/activate"),
        "{err}"
    );
    assert_eq!(p.state_of("1"), "crashed");
    assert_eq!(p.status()[0]["exit_code"], 125);
    // Lines continue across items (`\`), and `set -e` in setup does not leak into the command.
    p.write(
        "neronet.yaml",
        "command: echo start; false; echo A=$A\nclusters:\n  local:\n    setup: ['set -e', 'export A=7 \\', '  B=8']\n",
    );
    p.ok(&["restart", "1", "--wait"]);
    assert_eq!(p.ok(&["logs", "1"]), "start\nA=7\n");
}

/// Regressions: results.xlsx went stale when only `status` saw runs end, and its history sheet
/// held only each experiment's latest run (with ids as text, unlike the results sheet).
#[test]
fn results_follow_status_and_history_keeps_every_run() {
    let p = job_project("history", &[("1", 3.0, 0.05, 0.0)]);
    p.ok(&["start", "1", "--wait"]);
    p.ok(&["restart", "1"]);
    wait_until("run 2 finished", Duration::from_secs(30), || {
        let st = &p.status()[0];
        st["run"] == 2 && st["state"] == "finished"
    });
    let results = common::soffice_csv(&p.path("results.xlsx"), 0);
    assert!(
        results
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("1,finished,local,2,"),
        "{results}"
    );
    let history = common::soffice_csv(&p.path("results.xlsx"), 1);
    let runs: Vec<&str> = history
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(
        runs.iter().filter(|r| **r == "1").count(),
        6,
        "run 1: 3 lines × 2 metrics\n{history}"
    );
    assert_eq!(
        runs.iter().filter(|r| **r == "2").count(),
        6,
        "run 2: 3 lines × 2 metrics\n{history}"
    );
}

/// `status` still answers from the store when an agent cannot be reached, and says so.
#[test]
fn status_works_while_the_agent_is_unreachable() {
    use std::os::unix::io::AsRawFd;
    let p = job_project("unreachable", &[("1", 1.0, 600.0, 0.0)]);
    p.ok(&["start", "1"]);
    p.wait_for_state("1", "running");
    let pid = p.mum_pid().unwrap();
    kill(pid, libc::SIGKILL);
    wait_until("mum gone", Duration::from_secs(10), || {
        !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
    });
    // Hold the workdir's lock as a wedged agent would: no new mum can serve it.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(p.mum_dir().join("mum.lock"))
        .unwrap();
    // The killed agent's last threads may still be exiting (its main thread is already a
    // zombie): poll until its lock is free.
    wait_until(
        "the dead agent's lock to be free",
        Duration::from_secs(10),
        || unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 },
    );
    let out = p.neroman(&["status", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("cluster local not reached"), "{err}");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st[0]["state"], "running", "the stored state is shown");
    drop(lock);
    // With the lock free again, the next call restarts mum, which picks the run up; end it.
    p.ok(&["abort", "1", "--wait"]);
    assert_eq!(p.state_of("1"), "aborted");
}

/// The entries of `status --json` with this id.
fn entries(p: &Project, id: &str) -> Vec<serde_json::Value> {
    p.status().into_iter().filter(|e| e["id"] == id).collect()
}

/// Regression: a running experiment whose row was deleted from the workbook vanished from
/// `status`, `status --json` and results.xlsx, and could not be aborted (`abort 9`: no such id;
/// `abort all` skipped it). It stays listed, marked, and controllable; once ended it stays
/// listed for a day (its history with it), and it cannot be started again without its row.
#[test]
fn a_running_experiment_whose_row_is_deleted_stays_visible_and_abortable() {
    let p = job_project(
        "row-deleted",
        &[
            ("8", 1.0, 0.0, 0.0),
            ("9", 600.0, 0.1, 0.0),
            ("10", 600.0, 0.1, 0.0),
        ],
    );
    p.ok(&["start", "9,10"]);
    p.wait_all_in(&["9", "10"], "running");
    job_rows(&p, &[("8", 1.0, 0.0, 0.0)]);
    let st = p.status();
    assert_eq!(st.len(), 3, "{st:?}");
    for (e, id) in st[1..].iter().zip(["9", "10"]) {
        assert_eq!(e["id"], id, "{st:?}");
        assert_eq!(e["state"], "running", "{e}");
        assert_eq!(e["row"], serde_json::Value::Null, "{e}");
        assert!(
            e["detached"]
                .as_str()
                .unwrap()
                .contains("no longer in the workbook"),
            "{e}"
        );
    }
    assert_eq!(st[0]["detached"], serde_json::Value::Null);
    let table = p.ok(&["status"]);
    let line = table.lines().find(|l| l.starts_with("9 ")).unwrap();
    assert!(
        line.contains("running") && line.contains("no longer in the workbook"),
        "{table}"
    );
    wait_until("9's first line", Duration::from_secs(20), || {
        p.ok(&["logs", "9"]).starts_with("step=0 ")
    });
    let out = p.ok(&["abort", "9"]);
    assert!(out.contains("9: abort sent"), "{out}");
    let out = p.ok(&["abort", "all"]);
    assert!(out.contains("10: abort sent"), "{out}");
    p.wait_all_in(&["9", "10"], "aborted");
    let out = p.ok(&["restart", "9"]);
    assert!(
        out.contains("9: not restarted: its row is no longer in the workbook"),
        "{out}"
    );
    // Ended, it is still listed (for a day), in results.xlsx with its history too.
    let results = common::soffice_csv(&p.path("results.xlsx"), 0);
    assert!(
        results.lines().any(|l| l.starts_with("9,aborted,local,1,")),
        "{results}"
    );
    let history = common::soffice_csv(&p.path("results.xlsx"), 1);
    assert!(history.lines().any(|l| l.starts_with("9,1,")), "{history}");
    // With its row back, it is an ordinary row again.
    job_rows(&p, &[("8", 1.0, 0.0, 0.0), ("9", 600.0, 0.1, 0.0)]);
    let nine = entries(&p, "9");
    assert_eq!(nine.len(), 1, "{nine:?}");
    assert_eq!(nine[0]["row"], 3);
    assert_eq!(nine[0]["state"], "aborted");
}

/// Regression: two rows sharing an id while a run of that id was in flight both showed
/// `running`, as if each had a run. The rows are invalid (either could be the one meant) and
/// show so; the run is listed apart, under its id, and can still be aborted.
#[test]
fn a_run_whose_id_is_now_on_two_rows_is_listed_once_apart_from_them() {
    let p = job_project("dup-running", &[("12", 600.0, 0.1, 0.0)]);
    p.ok(&["start", "12"]);
    p.wait_for_state("12", "running");
    job_rows(&p, &[("12", 600.0, 0.1, 0.0), ("12", 5.0, 0.1, 0.0)]);
    let twelve = entries(&p, "12");
    assert_eq!(twelve.len(), 3, "{twelve:?}");
    for (e, row) in twelve[..2].iter().zip([2, 3]) {
        assert_eq!(e["row"], row, "{e}");
        assert_eq!(e["state"], "defined", "{e}");
        assert_eq!(e["run"], serde_json::Value::Null, "{e}");
        assert!(
            e["problems"][0]
                .as_str()
                .unwrap()
                .contains("duplicate id 12"),
            "{e}"
        );
    }
    let run = &twelve[2];
    assert_eq!(run["state"], "running", "{run}");
    assert_eq!(run["run"], 1, "{run}");
    assert_eq!(run["row"], serde_json::Value::Null, "{run}");
    assert!(
        run["detached"].as_str().unwrap().contains("A2, A3"),
        "{run}"
    );
    let table = p.ok(&["status"]);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("12 ") && l.contains("running"))
            .count(),
        1,
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains("invalid")).count(),
        2,
        "{table}"
    );
    let out = p.ok(&["abort", "12"]);
    assert!(out.contains("12: abort sent"), "{out}");
    wait_until("the run aborted", Duration::from_secs(20), || {
        entries(&p, "12").iter().any(|e| e["state"] == "aborted")
    });
}

/// Regression: a job killed by a signal while the shell that runs its command (with setup
/// lines, or `cd dir && python ...`) survived it was reported as "exit code 137/139", not as
/// the signal. A job that really exits 137 stays an exit code.
#[test]
fn signal_deaths_behind_setup_lines_and_lists_are_reported_as_signals() {
    let p = Project::new(
        "signals",
        "clusters:\n  local:\n    setup: ['export NERONET_SETUP=1', 'true']\n",
    );
    p.workbook(
        &["id", "status", "command"],
        &[
            vec![
                V::S("kill9"),
                V::E,
                V::S("cd . && python3 -c 'import os; os.kill(os.getpid(), 9)'"),
            ],
            vec![
                V::S("segv"),
                V::E,
                V::S("test \"$NERONET_SETUP\" = 1 && python3 -c 'import ctypes; ctypes.string_at(0)'"),
            ],
            vec![V::S("exit137"), V::E, V::S("python3 -c 'raise SystemExit(137)'")],
        ],
    );
    // Exit 3: the runs did not finish.
    assert_eq!(
        p.neroman(&["start", "all", "--wait"]).status.code(),
        Some(3)
    );
    let reason = |id: &str| {
        p.status()
            .into_iter()
            .find(|e| e["id"] == id)
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .unwrap()
    };
    assert!(
        reason("kill9").contains("killed by SIGKILL (signal 9"),
        "{}",
        reason("kill9")
    );
    assert!(
        reason("segv").contains("killed by SIGSEGV (signal 11"),
        "{}",
        reason("segv")
    );
    assert!(reason("exit137").contains("137"), "{}", reason("exit137"));
    assert!(
        !reason("exit137").contains("signal"),
        "{}",
        reason("exit137")
    );
}
