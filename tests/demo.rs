//! `neroman demo`, the README's main command: the whole loop with the embedded sample.

mod common;

#[test]
fn demo_runs_the_sample_and_writes_results() {
    let p = common::Project::new("demo", "");
    let dir = p.path("demo-project");
    let out = std::process::Command::new(common::neroman_bin())
        .arg("--dir")
        .arg(&dir)
        .arg("demo")
        .env("NERONET_MUM_IDLE_SECS", "60")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("5 finished, 1 aborted by the rule, 0 other"),
        "{stdout}"
    );
    // Once: the reasons were printed a second time after the final table (a regression).
    assert_eq!(
        stdout
            .matches("6: aborted (rule epoch>=3&&(loss>3||loss==nan) fired: epoch=")
            .count(),
        1,
        "the abort and its rule, said once:\n{stdout}"
    );
    // The workbook loop: `start` typed into the status cells, the states written back.
    assert!(
        stdout.contains("typing `start` into the status cells of rows 2-7"),
        "{stdout}"
    );
    let column = stdout
        .split("as the watcher wrote it back:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no status column printed:\n{stdout}"));
    let states: Vec<&str> = column
        .lines()
        .take(6)
        .map(|l| l.split_whitespace().nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        states,
        ["finished", "finished", "finished", "finished", "finished", "aborted"],
        "{stdout}"
    );
    let book = common::soffice_csv(&dir.join("experiments.xlsx"), 0);
    assert!(
        book.lines()
            .nth(6)
            .is_some_and(|l| l.starts_with("6,aborted,")),
        "{book}"
    );
    // The results workbook opens in LibreOffice: six experiments, their metric history.
    let results = common::soffice_csv(&dir.join("results.xlsx"), 0);
    let rows: Vec<&str> = results.lines().collect();
    assert_eq!(rows.len(), 7, "{results}");
    assert!(rows[0].contains("epoch,errorrate,loss"), "{results}");
    assert!(rows[6].starts_with("6,aborted,local,1,"), "{results}");
    let history = common::soffice_csv(&dir.join("results.xlsx"), 1);
    // Five runs × 30 epochs × 3 metrics, plus the aborted run's few epochs.
    assert!(history.lines().count() > 450, "{}", history.lines().count());
    // The demo leaves no agent running.
    let pid =
        common::lock_pid(&dir.join(".neronet/mum-local")).expect("the agent's lock names its pid");
    common::wait_until(
        "the demo's mum to exit",
        std::time::Duration::from_secs(10),
        || !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")),
    );
}
