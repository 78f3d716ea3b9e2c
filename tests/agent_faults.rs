//! Fault tests of the agent with the real binaries: neromum killed (SIGKILL, by a failpoint) at
//! every step of submit, launch, tick, sync and compaction while 20 runs are in flight; a full
//! disk under the agent's workdir; an older agent handing over; chatty shells on the bridge.
//! Afterwards every run ran exactly once and every metric line is in the store exactly once.
//! The whole file also runs over `neromum bridge` (`NERONET_TRANSPORT=bridge`, see
//! scripts/test.sh), so each of these holds over a pipe pair as over the unix socket.

mod common;
use common::{wait_until, Project, V};
use std::time::Duration;

const STEPS: usize = 6;

/// Each run appends its id to ran.log (to count executions) and prints STEPS metric lines.
const JOB: &str = r#"
import sys, time
rid = sys.argv[1]
with open("ran.log", "a") as f:
    f.write(rid + "\n")
for i in range(6):
    print(f"step={i} loss={1.0/(i+1):.6f}", flush=True)
    time.sleep(0.15)
"#;

fn twenty(name: &str, yaml: &str) -> Project {
    let p = Project::new(name, yaml);
    p.write("job.py", JOB);
    let rows: Vec<Vec<V>> = (1..=20)
        .map(|i| vec![V::N(i as f64), V::E, V::S("python3 job.py {id}")])
        .collect();
    p.workbook(&["id", "status", "command"], &rows);
    p
}

/// Every run ran once, and every metric line reached the store once.
fn assert_exactly_once(p: &Project, runs: usize) {
    let ran = std::fs::read_to_string(p.path("ran.log")).unwrap_or_default();
    let mut ids: Vec<&str> = ran.lines().collect();
    ids.sort();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "a run ran twice: {ids:?}");
    assert_eq!(unique.len(), runs, "not every run ran: {ids:?}");
    let db = p.store();
    let mut stmt = db
        .prepare("SELECT run_uid, COUNT(*), COUNT(DISTINCT value) FROM metrics WHERE name = 'step' GROUP BY run_uid")
        .unwrap();
    let rows: Vec<(String, i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), runs, "runs with metrics: {rows:?}");
    for (run, n, distinct) in rows {
        assert_eq!(
            (n, distinct),
            (STEPS as i64, STEPS as i64),
            "run {run}: every metric line once"
        );
    }
}

fn mum_log(p: &Project) -> String {
    std::fs::read_to_string(p.mum_dir().join("mum.log")).unwrap_or_default()
}

/// SIGKILL of mum at each step (by `NERONET_FAILPOINT`, at its N-th time so runs are in
/// flight), then plain commands until everything ended: each run exactly once, each metric
/// line exactly once.
#[test]
fn mum_killed_at_every_step_runs_each_job_once_and_loses_no_metric() {
    let steps = [
        "submit.before_journal",
        "submit.after_journal",
        "launch.before_intent@2",
        "launch.after_intent@2",
        "launch.after_warden@2",
        "tick.before_journal@6",
        "tick.after_journal@6",
        "sync.before_reply@2",
        "compact.after_snapshot",
        "compact.after_rewrite",
    ];
    // Two at a time, over separate projects: the machine has two cores.
    for pair in steps.chunks(2) {
        let projects: Vec<(&str, Project)> = pair
            .iter()
            .map(|step| {
                let name = format!("fp-{}", step.replace(['.', '@'], "-"));
                // max_parallel 8: launches happen over several rounds while others run.
                let p = twenty(&name, "clusters:\n  local:\n    max_parallel: 8\n");
                (*step, p)
            })
            .collect();
        for (step, p) in &projects {
            // The mum started by this command inherits the failpoint; compaction is made
            // frequent so its steps are reached. Later commands start a plain mum.
            let out = p.neroman_env(
                &["start", "all"],
                &[("NERONET_FAILPOINT", step), ("NERONET_COMPACT_AFTER", "10")],
            );
            let _ = out; // the command may fail: its agent died under it
        }
        for (step, p) in &projects {
            let name = step.split('@').next().unwrap();
            wait_until(
                &format!("failpoint {step} to fire"),
                Duration::from_secs(30),
                || {
                    // Commands drive the agent's syncs (and restart it once it died).
                    let _ = p.neroman(&["status"]);
                    mum_log(p).contains(&format!("failpoint {name}"))
                },
            );
            wait_until(
                &format!("all finished after {step}"),
                Duration::from_secs(90),
                || {
                    // Runs the dead agent never confirmed are resubmitted by a later sync.
                    let st = p.status();
                    st.iter().all(|e| e["state"] == "finished")
                },
            );
            assert_exactly_once(p, 20);
        }
    }
}

/// Regression: a failed journal append (disk full) advanced the kid offset and the run phase
/// before writing, dropped those events, glued later entries to the torn line, and `status`
/// said nothing. Now nothing advances, `status` warns, and everything arrives once space returns.
#[test]
fn a_full_disk_under_the_agent_loses_nothing_and_is_reported() {
    let p = twenty(
        "disk-full",
        "clusters:\n  local:\n    max_parallel: 4\n    workdir: agent\n",
    );
    let agent = p.path("agent");
    std::fs::create_dir_all(&agent).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&agent)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "this test needs to mount a tmpfs (run as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(agent.clone());

    // The agent's log stays in its workdir, on the full disk, as it would be (regression: the
    // failed log write made tracing report it on that same stderr, which panicked the thread
    // answering neroman: "connection closed").
    let log = agent.join("mum.log");
    p.ok(&["start", "1-4"]);
    wait_until("runs going", Duration::from_secs(20), || {
        p.status()
            .iter()
            .filter(|e| e["state"] == "running")
            .count()
            == 4
    });
    // Fill the agent's file system.
    let filler = agent.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .output();
    let out = p.neroman(&["start", "5-20"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("neromum cannot write"),
        "{said}\nagent log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Every command keeps working while the disk is full (regression: once the refused runs
    // were 5 s old, each sync resent them and the refusal failed `status`, `abort`, ...).
    let full_since = std::time::Instant::now();
    wait_until(
        "status to keep working past the resend",
        Duration::from_secs(30),
        || {
            let out = p.neroman(&["status"]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "status fails while the disk is full: {stderr}"
            );
            assert!(
                stderr.contains("neromum cannot write"),
                "status must warn: {stderr}"
            );
            assert!(
                stderr.contains("No space left"),
                "status must say why: {stderr}"
            );
            full_since.elapsed() > Duration::from_secs(7)
        },
    );
    std::fs::remove_file(&filler).unwrap();
    // `--wait` waits for the runs still `submitted` too, sending them (regression: it refused
    // them as "already submitted" and returned at once).
    let out = p.neroman(&["start", "5-20", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.wait_all("finished", Duration::from_secs(120));
    assert_exactly_once(&p, 20);
    let out = p.neroman(&["status"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("neromum cannot write"));
}

/// Regression: with an agent of another protocol version running (normal right after an
/// upgrade), neroman started a second agent that could not get the lock, then gave up with a
/// misleading message. Now the older agent is asked to hand over, and the new one takes its
/// workdir. The older agent here is a stand-in (tests/fixtures/mum_v1.py) that speaks exactly
/// what neromum 0.1.0 (protocol 1) answers: its refusal text, hello, shutdown, and its lock.
#[test]
fn an_older_agent_hands_over_instead_of_being_doubled() {
    let p = twenty("handover", "clusters:\n  local:\n    max_parallel: 8\n");
    let dir = p.mum_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut old = std::process::Command::new("python3")
        .arg(fixture.join("mum_v1.py"))
        .arg(&dir)
        .spawn()
        .unwrap();
    wait_until("old agent listening", Duration::from_secs(10), || {
        dir.join("mum.sock").exists()
    });
    let out = p.neroman(&["start", "1-3", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hand over"), "{stderr}");
    // The old agent was asked to stop, and did.
    let status = old.wait().unwrap();
    assert!(status.success());
    assert!(std::fs::read_to_string(dir.join("v1-log"))
        .unwrap()
        .contains("shutdown"));
    let agents = p.ok(&["agents"]);
    assert!(
        agents.contains(&format!("neromum {}", env!("CARGO_PKG_VERSION"))),
        "{agents}"
    );
}

/// A newer agent is left alone, with a message to upgrade neroman (no second agent).
#[test]
fn a_newer_agent_is_left_alone() {
    let p = twenty("newer", "clusters:\n  local:\n    max_parallel: 8\n");
    let dir = p.mum_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut newer = std::process::Command::new("python3")
        .arg(fixture.join("mum_v1.py"))
        .arg(&dir)
        .arg("--protocol=99")
        .spawn()
        .unwrap();
    wait_until("newer agent listening", Duration::from_secs(10), || {
        dir.join("mum.sock").exists()
    });
    let out = p.neroman(&["start", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upgrade neroman"), "{stderr}");
    assert!(
        newer.try_wait().unwrap().is_none(),
        "the newer agent must keep running"
    );
    newer.kill().unwrap();
    let _ = newer.wait();
}

/// `neroman agents --stop` stops the agent cleanly; the runs it had keep going and the next
/// command's agent adopts them.
#[test]
fn agents_can_be_stopped_and_their_runs_are_adopted() {
    let p = twenty("stop", "clusters:\n  local:\n    max_parallel: 20\n");
    p.ok(&["start", "1-5"]);
    let pid = p.mum_pid().unwrap();
    let out = p.ok(&["agents", "--stop"]);
    assert!(out.contains("stopped"), "{out}");
    wait_until("agent gone", Duration::from_secs(10), || {
        !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
    });
    assert!(mum_log(&p).contains("stopping"));
    p.wait_all_in(&["1", "2", "3", "4", "5"], "finished");
    assert!(p.ok(&["agents"]).contains("running"));
}

/// A remote shell that prints text before neromum answers (a chatty `.bashrc`) is tolerated
/// and reported; one that never lets neromum answer gets an error that shows the text.
#[test]
fn chatty_shells_on_the_bridge_are_detected_and_explained() {
    use neronet::cluster::client::{LocalMum, MumClient, Transport};
    let p = Project::new("chatty", "");
    let bin = common::neroman_bin();
    let bridge = |script: &str| LocalMum {
        workdir: p.path("mum"),
        mum_binary: bin.with_file_name("neromum"),
        kid_binary: common::nerokid_bin(),
        max_parallel: 2,
        idle_exit_secs: 30,
        project: None,
        warden: Default::default(),
        listen: "auto".into(),
        transport: Transport::Bridge {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                script.into(),
                bin.with_file_name("neromum").display().to_string(),
                p.path("mum").display().to_string(),
                common::nerokid_bin().display().to_string(),
            ],
        },
    };
    let chatty = bridge(
        "echo 'Welcome to the cluster!'; echo 'You have new mail.'; exec \"$0\" bridge --workdir \"$1\" --kid \"$2\" --idle-exit 30",
    );
    let mut c = MumClient::connect_or_start(&chatty).expect("noise before hello is skipped");
    assert!(c.started, "the bridge started the agent");
    let batch = c.sync(0, None, Duration::ZERO).unwrap();
    assert!(batch.entries.is_empty());
    c.shutdown().unwrap();

    // The second one closes its stdin first, so writing hello fails with a broken pipe: the
    // text it printed is still the explanation (this raced before and showed only EPIPE; one try
    // in five hit the race, so it is tried ten times).
    let quick =
        "exec 0<&-; echo 'Last login: Fri Nov 27'; echo 'neromum: command not found' >&2; exit 127";
    let slow = "echo 'Last login: Fri Nov 27'; echo 'neromum: command not found' >&2; exit 127";
    for script in std::iter::once(slow).chain(std::iter::repeat_n(quick, 10)) {
        let err = match MumClient::connect_or_start(&bridge(script)) {
            Ok(_) => panic!("a bridge that never answers must fail"),
            Err(e) => neronet::util::error_chain(&e),
        };
        assert!(
            err.contains(".bashrc") && err.contains("Last login"),
            "{script}: {err}"
        );
    }
}

/// SIGTERM stops the agent cleanly (socket removed, log says so); a client that connects and
/// then says nothing (a hung bridge) is dropped, so it cannot keep an idle agent alive.
#[test]
fn sigterm_stops_the_agent_and_a_silent_client_cannot_keep_it_alive() {
    use std::io::Write;
    let p = twenty("sigterm", "clusters:\n  local:\n    max_parallel: 4\n");
    let mum = common::neroman_bin().with_file_name("neromum");
    let workdir = p.path("w");
    let spawn = |idle: &str| {
        std::process::Command::new(&mum)
            .args(["serve", "--idle-exit", idle, "--kid"])
            .arg(common::nerokid_bin())
            .arg("--workdir")
            .arg(&workdir)
            .env("NERONET_MUM_CONN_IDLE_SECS", "2")
            .stderr(std::fs::File::create(p.path("mum.err")).unwrap())
            .spawn()
            .unwrap()
    };
    let sock = workdir.join("mum.sock");
    let mut child = spawn("600");
    wait_until("socket", Duration::from_secs(10), || sock.exists());
    common::kill(child.id() as i32, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "the socket is removed");
    assert!(std::fs::read_to_string(p.path("mum.err"))
        .unwrap()
        .contains("stopping"));

    // Idle exit after 1 s, with a client connected that never sends a byte.
    let mut child = spawn("1");
    wait_until("socket", Duration::from_secs(10), || sock.exists());
    let mut silent = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let _ = silent.write_all(b"");
    wait_until(
        "agent to exit despite the silent client",
        Duration::from_secs(15),
        || matches!(child.try_wait(), Ok(Some(_))),
    );
}

/// Regression: neroman could not tell that an agent's journal had become shorter than what it
/// had stored (a workdir restored from a backup): the new entries reused sequence numbers it
/// had already applied, were skipped, and new runs never left `submitted`/`queued`.
#[test]
fn a_shortened_journal_is_noticed_and_new_events_still_arrive() {
    let p = twenty("shortened", "clusters:\n  local:\n    max_parallel: 4\n");
    p.ok(&["start", "1-2", "--wait"]);
    p.ok(&["agents", "--stop"]);
    let journal = p.mum_dir().join("journal.jsonl");
    wait_until("agent gone", Duration::from_secs(10), || {
        !p.mum_dir().join("mum.sock").exists()
    });
    // Keep only the first three entries, as a restored backup would.
    let text = std::fs::read_to_string(&journal).unwrap();
    let kept: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&journal, kept).unwrap();
    let _ = std::fs::remove_file(p.mum_dir().join("journal.snap"));
    let out = p.neroman(&["start", "3-4", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("journal ends at"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.wait_all_in(&["3", "4"], "finished");
}

/// Regression: two projects whose agent workdir is the same (an absolute `workdir:` in the
/// user's defaults) got each other's runs: run names are the project's own (`1.1`), the agent
/// took the second project's `1.1` for the first one's, and its command never ran.
#[test]
fn projects_sharing_an_agent_workdir_keep_their_own_runs() {
    let a = twenty("shared-a", "");
    let shared = a.path("../shared-agent");
    let yaml = format!(
        "clusters:\n  local:\n    max_parallel: 4\n    workdir: {}\n",
        shared.display()
    );
    a.write("neronet.yaml", &yaml);
    let b = twenty("shared-b", &yaml);
    a.ok(&["start", "1-2", "--wait"]);
    b.ok(&["start", "1-2", "--wait"]);
    for p in [&a, &b] {
        let ran = std::fs::read_to_string(p.path("ran.log")).unwrap_or_default();
        assert_eq!(
            ran.lines().count(),
            2,
            "each project's own jobs ran: {ran:?}"
        );
        let logs = p.ok(&["logs", "1"]);
        assert!(logs.contains("step=5"), "{logs}");
        let n: i64 = p
            .store()
            .query_row(
                "SELECT COUNT(*) FROM metrics WHERE name = 'step'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2 * STEPS as i64, "only its own metrics");
    }
    let _ = std::process::Command::new("pkill")
        .arg("-f")
        .arg(format!("neromum serve --workdir {}", shared.display()))
        .status();
}

/// `neroman agents` starts no agent, over the socket and over a bridge (regression: a bridge
/// started one to be asked, and `agents --stop` started one to stop it).
#[test]
fn agents_reports_no_agent_without_starting_one() {
    let p = twenty("no-agent", "");
    let out = p.ok(&["agents"]);
    assert!(out.contains("no agent running"), "{out}");
    let out = p.ok(&["agents", "--stop"]);
    assert!(out.contains("no agent running"), "{out}");
    assert!(
        !p.mum_dir().join("mum.sock").exists(),
        "an agent was started"
    );
    assert!(!mum_log(&p).contains("serving"), "{}", mum_log(&p));
}

/// Regression: entries journaled for a protocol-1 neroman carry no project; in a workdir a new
/// project shares, they were taken for the new project's runs of the same names (its jobs never
/// ran, the old runs' metrics showed as its own).
#[test]
fn old_runs_in_a_shared_workdir_are_not_taken_for_a_new_projects() {
    let p = twenty("legacy-shared", "");
    let shared = p.path("../legacy-agent");
    std::fs::create_dir_all(&shared).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mum-v1");
    let journal = std::fs::read_to_string(fixture.join("journal.jsonl")).unwrap();
    std::fs::write(
        shared.join("journal.jsonl"),
        journal.replace("/FIXTURE", &shared.display().to_string()),
    )
    .unwrap();
    std::fs::copy(fixture.join("epoch"), shared.join("epoch")).unwrap();
    p.write(
        "neronet.yaml",
        &format!(
            "clusters:\n  local:\n    max_parallel: 4\n    workdir: {}\n",
            shared.display()
        ),
    );
    p.ok(&["start", "1-3", "--wait"]);
    let ran = std::fs::read_to_string(p.path("ran.log")).unwrap_or_default();
    assert_eq!(
        ran.lines().count(),
        3,
        "the project's own jobs ran: {ran:?}"
    );
    let names: Vec<String> = {
        let db = p.store();
        let mut st = db
            .prepare("SELECT DISTINCT name FROM metrics ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(names, ["loss", "step"], "only its own metrics");
    p.ok(&["agents", "--stop"]);
}

/// A copied project directory gets a project id of its own (two copies on one agent workdir
/// would take each other's runs); a moved one keeps its id (its agent knows its runs by it).
#[test]
fn a_copied_project_gets_its_own_id_and_a_moved_one_keeps_it() {
    let p = twenty("copy-id", "");
    p.ok(&["status"]);
    p.ok(&["agents"]);
    let read_id = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join(".neronet/project-id"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    p.ok(&["start", "1"]);
    p.wait_for_state("1", "running");
    let original = read_id(&p.dir);
    let copy = p.path("../copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&p.dir)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let out = neroman_in(&copy, &["agents"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(read_id(&copy), original, "a copy gets its own id");
    assert_eq!(read_id(&p.dir), original, "the original keeps its id");
    // The run in flight was copied as a record only: it goes on for the original; the copy
    // says so and can restart it (regression: it stayed `queued` for good and refused restart).
    let in_copy = |args: &[&str]| neroman_in(&copy, args);
    let st = String::from_utf8_lossy(&in_copy(&["status", "--json"]).stdout).into_owned();
    assert!(
        st.contains("\"lost\"") && st.contains("copied from"),
        "{st}"
    );
    let out = in_copy(&["restart", "1", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.wait_for_state("1", "finished"); // the original's run is untouched
    let _ = in_copy(&["agents", "--stop"]);
    let moved = p.path("../moved");
    std::fs::rename(&copy, &moved).unwrap();
    let before = read_id(&moved);
    let out = neroman_in(&moved, &["agents"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_id(&moved), before, "a moved project keeps its id");
}

/// neroman run in another directory than a test project's own (a copy, a moved project).
fn neroman_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::neroman_bin())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}
