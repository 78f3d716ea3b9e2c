//! Everyday use of the CLI with many rows: short output for big selections, messages that say
//! what to do, earlier runs' logs, warnings said once, shell completions.

mod common;
use common::{Project, V};

fn rows(n: usize) -> Vec<Vec<V<'static>>> {
    (1..=n).map(|i| vec![V::N(i as f64), V::E]).collect()
}

/// Regression: `start all` printed two lines per row (2,000 for 1,000 rows) and `abort all`
/// listed every row that was not running.
#[test]
fn big_selections_print_a_summary_not_a_line_per_row() {
    let p = Project::new(
        "summary",
        "command: sleep 30\nclusters:\n  local:\n    max_parallel: 2\n    grace: 1s\n",
    );
    p.workbook(&["id", "status"], &rows(40));
    let out = p.ok(&["start", "1-30"]);
    assert!(out.lines().count() <= 3, "{out}");
    assert!(out.contains("submitted 30 runs: 1-30"), "{out}");
    // Starting them again: one line for the reason, the ids as ranges.
    let again = p.ok(&["start", "1-35"]);
    // (and the agent's news: two runs started meanwhile)
    assert!(again.lines().count() <= 12, "{again}");
    // (`1-30` or `3-30`, as the first two may have started meanwhile)
    assert!(
        again.contains("-30: not started: already queued"),
        "{again}"
    );
    assert!(again.contains("submitted 5 runs: 31-35"), "{again}");
    assert!(
        again.contains("it starts when a slot is free"),
        "a queued row is not told to be aborted first: {again}"
    );
    assert!(!again.contains("abort it first"), "{again}");
    // A restart of a run in flight is what needs the abort first.
    let restart = p.ok(&["restart", "1"]);
    assert!(restart.contains("abort it first"), "{restart}");
    // `abort all` names what it aborted, not the five rows that never ran.
    let abort = p.ok(&["abort", "all"]);
    assert!(abort.contains("abort sent to 35 runs: 1-35"), "{abort}");
    assert!(!abort.contains("36"), "{abort}");
    // An id named on purpose is answered.
    let named = p.ok(&["abort", "38"]);
    assert!(named.contains("38: not aborted: not running"), "{named}");
    p.wait_all_in(&["1", "2", "35"], "aborted");
}

/// Regression: `logs` could only show the latest run; and `NERO_RUN` was `1.2`, not the run's
/// number `2` that `logs --run` and results use.
#[test]
fn logs_show_an_earlier_run() {
    let p = Project::new("logsrun", "command: echo run of $NERO_RUN\n");
    p.workbook(&["id", "status"], &rows(1));
    p.ok(&["start", "1", "--wait"]);
    p.ok(&["restart", "1", "--wait"]);
    let latest = p.ok(&["logs", "1"]);
    assert_eq!(latest.trim(), "run of 2");
    assert_eq!(p.ok(&["logs", "1", "--run", "1"]).trim(), "run of 1");
    let bad = p.neroman(&["logs", "1", "--run", "7"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("no run 7 (its runs are 1 to 2)"), "{err}");
}

/// Regression: the same invalid-row warnings were printed on every command, `logs` included.
#[test]
fn invalid_rows_are_warned_about_once_until_they_change() {
    let p = Project::new("warnonce", "command: echo hi\n");
    p.workbook(
        &["id", "status", "cluster"],
        &[
            vec![V::N(1.0), V::E, V::E],
            vec![V::N(2.0), V::E, V::S("nowhere")],
        ],
    );
    let stderr = |args: &[&str]| {
        let out = p.neroman(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(stderr(&["status"]).contains("nowhere"));
    p.ok(&["start", "1", "--wait"]);
    assert!(!stderr(&["status"]).contains("nowhere"));
    assert!(!stderr(&["logs", "1"]).contains("nowhere"));
    // Selected, it is still named where it is skipped.
    let out = p.ok(&["start", "2"]);
    assert!(
        out.contains("2: not started: invalid row") && out.contains("nowhere"),
        "{out}"
    );
    // A different problem is news again.
    p.workbook(
        &["id", "status", "cluster"],
        &[
            vec![V::N(1.0), V::E, V::E],
            vec![V::N(2.0), V::E, V::S("elsewhere")],
        ],
    );
    assert!(stderr(&["status"]).contains("elsewhere"));
}

/// `neroman completions SHELL` prints a script the shell accepts.
#[test]
fn shell_completions_load_in_bash() {
    let p = Project::new("compl", "");
    let script = p.ok(&["completions", "bash"]);
    let path = p.path("neroman.bash");
    std::fs::write(&path, &script).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p neroman", path.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("neroman"),
        "{out:?}"
    );
    for shell in ["zsh", "fish"] {
        let s = p.ok(&["completions", shell]);
        assert!(
            s.contains("restart") && s.contains("stderr"),
            "{shell}: {s}"
        );
    }
}

/// Regression from a user trial: where the project's state directory cannot be made (a
/// read-only project directory), the error was sqlite's "unable to open database file".
#[test]
fn a_state_directory_that_cannot_be_made_is_named() {
    let p = Project::new("nostate", "command: echo hi\n");
    p.workbook(&["id", "status"], &rows(1));
    // Root ignores permissions: a file where the directory should be fails for anyone.
    p.write(".neronet", "not a directory");
    let out = p.neroman(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot create {}, where the project keeps its state",
            p.path(".neronet").display()
        )),
        "{err}"
    );
}
