//! nerokid as a program: real jobs, real signals, the event log on disk.

use nerokid::report::{AbortCause, KidEvent, Outcome};
use nerokid::run::read_events;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn run_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nerokid-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn kid(dir: &PathBuf, extra: &[&str], cmd: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nerokid"));
    c.arg("run")
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .arg("--")
        .args(cmd);
    c
}

fn outcome(dir: &std::path::Path) -> Outcome {
    match read_events(dir).unwrap().pop() {
        Some(KidEvent::Exited { outcome, .. }) => outcome,
        other => panic!("last event is not an exit: {other:?}"),
    }
}

#[test]
fn records_output_metrics_and_exit_code() {
    let d = run_dir("basic");
    let status = kid(
        &d,
        &[],
        &[
            "sh",
            "-c",
            "echo 'epoch=1 loss=0.5'; echo 'acc: 0.9' >&2; printf 'epoch=2 loss=0.25'; exit 4",
        ],
    )
    .status()
    .unwrap();
    assert_eq!(status.code(), Some(4), "the kid exits with the job's code");
    assert_eq!(
        std::fs::read_to_string(d.join("stdout.log")).unwrap(),
        "epoch=1 loss=0.5\nepoch=2 loss=0.25"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("stderr.log")).unwrap(),
        "acc: 0.9\n"
    );
    let events = read_events(&d).unwrap();
    let mut metrics: Vec<(String, f64)> = events
        .iter()
        .filter_map(|e| match e {
            KidEvent::Metrics { values, .. } => Some(values.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    metrics.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(
        metrics,
        [
            ("acc".into(), 0.9),
            ("epoch".into(), 1.0),
            ("epoch".into(), 2.0),
            ("loss".into(), 0.25),
            ("loss".into(), 0.5)
        ]
    );
    assert!(matches!(events[0], KidEvent::Started { .. }));
    assert!(matches!(events[1], KidEvent::Environment { .. }));
    assert_eq!(outcome(&d), Outcome::Exit { code: 4 });
}

#[test]
fn rule_stops_a_diverging_job_with_term_then_kill() {
    let d = run_dir("rule");
    // The job ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    std::fs::write(
        d.join("kid.json"),
        r#"{"id":"6","abort_when":"epoch>=3 && loss>3","grace_secs":0.5}"#,
    )
    .unwrap();
    let script =
        "trap '' TERM; i=0; while true; do i=$((i+1)); echo \"epoch=$i loss=9\"; sleep 0.1; done";
    let start = Instant::now();
    let status = kid(&d, &[], &["sh", "-c", script]).status().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + 9));
    let events = read_events(&d).unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, KidEvent::RuleFired { rule, .. } if rule == "epoch>=3&&loss>3")));
    assert_eq!(
        outcome(&d),
        Outcome::Aborted {
            by: AbortCause::Rule("epoch>=3&&loss>3".into()),
            signal: Some(9),
            code: None
        }
    );
}

#[test]
fn sigterm_to_the_kid_aborts_the_whole_group() {
    let d = run_dir("term");
    let marker = d.join("grandchild.pid");
    let script = format!(
        "sleep 300 & echo $! > {}; echo started; wait",
        marker.display()
    );
    let mut child = kid(&d, &[], &["sh", "-c", &script]).spawn().unwrap();
    let start = Instant::now();
    while !marker.exists() || std::fs::read_to_string(&marker).unwrap().trim().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "job did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let grandchild: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    assert!(
        matches!(
            outcome(&d),
            Outcome::Aborted {
                by: AbortCause::User,
                ..
            }
        ),
        "{:?}",
        outcome(&d)
    );
    let alive = std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
        .is_ok_and(|s| !s.contains(") Z"));
    assert!(!alive, "a process of the job's group outlived the abort");
}

#[test]
fn metric_files_csv_and_jsonl_are_followed() {
    let d = run_dir("files");
    std::fs::write(
        d.join("kid.json"),
        r#"{"metrics":{"tokens":false,"files":[{"path":"m.csv","format":"csv"},{"path":"m.jsonl","format":"jsonl"}]}}"#,
    )
    .unwrap();
    let script = "cd \"$NERO_RUN_DIR\"; echo 'step,val_loss' > m.csv; echo '1,0.5' >> m.csv; sleep 0.7; echo '2,0.4' >> m.csv; \
                  echo '{\"acc\": 0.75, \"tag\": \"x\"}' > m.jsonl; echo 'loss=7 ignored: tokens are off'; sleep 0.7";
    kid(&d, &[], &["sh", "-c", script]).status().unwrap();
    let values: Vec<(String, f64)> = read_events(&d)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            KidEvent::Metrics { values, .. } => Some(values),
            _ => None,
        })
        .flatten()
        .collect();
    for want in [
        ("val_loss", 0.5),
        ("val_loss", 0.4),
        ("step", 2.0),
        ("acc", 0.75),
    ] {
        assert!(
            values.iter().any(|(n, v)| n == want.0 && *v == want.1),
            "missing {want:?} in {values:?}"
        );
    }
    assert!(!values.iter().any(|(n, _)| n == "loss"));
}

#[test]
fn a_missing_program_is_recorded_not_lost() {
    let d = run_dir("missing");
    let status = kid(&d, &[], &["/nonexistent/train"]).status().unwrap();
    assert_eq!(status.code(), Some(127));
    assert!(matches!(outcome(&d), Outcome::FailedToStart { .. }));
}

#[test]
fn bad_arguments_say_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_nerokid"))
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dir is required"));
}

/// Regression: a negative `sample_secs` in kid.json made the kid panic in
/// `Duration::from_secs_f64` after the job had started; a bad spec is now refused up front.
#[test]
fn a_bad_period_in_the_spec_is_refused_not_a_panic() {
    for (spec, key) in [
        (r#"{"sample_secs":-1}"#, "sample_secs"),
        (r#"{"sample_secs":0}"#, "sample_secs"),
        (r#"{"grace_secs":-0.5}"#, "grace_secs"),
    ] {
        let d = run_dir("badspec");
        std::fs::write(d.join("kid.json"), spec).unwrap();
        let out = kid(&d, &[], &["true"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{spec}: {err}");
        assert!(
            err.contains(key) && !err.contains("panicked"),
            "{spec}: {err}"
        );
    }
}

/// Regression: the kid slept a whole round (250 ms) before it looked at the job at all, so a
/// trivial job took at least that long and 1,000 of them at 8 in parallel at least 31 s. The
/// best of a few runs must come in well under one round.
#[test]
fn a_short_job_does_not_wait_a_whole_tick() {
    let d = run_dir("short");
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            let status = kid(&d, &[], &["sh", "-c", "echo loss=1"]).status().unwrap();
            assert!(status.success());
            start.elapsed()
        })
        .min()
        .unwrap();
    assert!(best < Duration::from_millis(200), "{best:?}");
    assert_eq!(outcome(&d), Outcome::Exit { code: 0 });
}

/// The state letter in /proc/<pid>/stat (`T` when stopped); None once it is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression: under Grid Engine (`NERONET_WARDEN=sge`), `qmod -sj` sends `-notify`'s SIGUSR1
/// to the script's group (the kid) before its SIGSTOP; the kid passed it on and the job died
/// "killed by SIGUSR1", and the SIGSTOP/SIGCONT never reached the job's own group. Now the kid
/// stops the job's group on SIGUSR1, continues it on SIGCONT, and a SIGTERM while stopped
/// reaches the job at once (not only with the SIGKILL after the grace).
#[test]
fn under_grid_engine_usr1_suspends_the_job_and_sigcont_resumes_it() {
    let d = run_dir("sge-suspend");
    std::fs::write(d.join("kid.json"), r#"{"id":"1","grace_secs":30}"#).unwrap();
    let pid_file = d.join("job.pid");
    let release = d.join("release");
    let script = format!(
        "trap 'echo got=term; exit 7' TERM; echo $$ > {}; i=0; while [ ! -e {} ]; do i=$((i+1)); echo step=$i; sleep 0.05; done; echo done=1",
        pid_file.display(),
        release.display()
    );
    let job_pid = |child: &mut std::process::Child| -> i32 {
        wait_for("the job's pid", || {
            std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
                || child.try_wait().unwrap().is_some()
        });
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let signal = |child: &std::process::Child, sig: i32| unsafe {
        libc::kill(child.id() as i32, sig);
    };
    let mut child = kid(&d, &[], &["sh", "-c", &script])
        .env("NERONET_WARDEN", "sge")
        .spawn()
        .unwrap();
    let pid = job_pid(&mut child);
    signal(&child, libc::SIGUSR1);
    wait_for("the job stopped", || proc_state(pid) == Some('T'));
    signal(&child, libc::SIGCONT);
    wait_for("the job continued", || {
        proc_state(pid).is_some_and(|s| s != 'T')
    });
    std::fs::write(&release, "").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(outcome(&d), Outcome::Exit { code: 0 });
    let out = std::fs::read_to_string(d.join("stdout.log")).unwrap();
    assert!(out.ends_with("done=1\n"), "{out}");

    // Stopped, then asked to stop (qdel's SIGUSR2 → the script's SIGTERM to the kid).
    let d2 = run_dir("sge-suspend-term");
    std::fs::write(d2.join("kid.json"), r#"{"id":"2","grace_secs":30}"#).unwrap();
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_file(&release);
    let mut child = kid(&d2, &[], &["sh", "-c", &script])
        .env("NERONET_WARDEN", "sge")
        .spawn()
        .unwrap();
    let pid = job_pid(&mut child);
    signal(&child, libc::SIGUSR1);
    wait_for("the job stopped", || proc_state(pid) == Some('T'));
    let asked = Instant::now();
    signal(&child, libc::SIGTERM);
    child.wait().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the job got its SIGTERM only with the SIGKILL"
    );
    let out = std::fs::read_to_string(d2.join("stdout.log")).unwrap();
    assert!(out.contains("got=term"), "{out}");
}
