//! The watcher daemon (`neroman watch`) driven as a real process: detach/stop/status, the CLI
//! beside it, configured columns, a kill -9 and a restart, a command on an invalid row, a row
//! changed under its run. Saves are made the way a spreadsheet program makes them (a new file
//! renamed over the workbook); tests/workbook_loop.rs has LibreOffice doing the editing.

mod common;

use common::lo::Watch;
use common::{wait_until, Project, V};
use neronet::sheet::read::{read_experiments, StatusCell};
use neronet::sheet::writeback::{patch_cells, CellRef, CellValue};
use std::time::Duration;

const YAML: &str = "clusters:\n  local:\n    max_parallel: 8\n";

/// Type values into cells and save, as a spreadsheet program does: the edited workbook is
/// written to a temp file and renamed over the original (whatever lock file exists: the
/// program holding it is the one saving).
fn type_and_save(p: &Project, cells: &[(&str, &str)]) {
    let cells: Vec<(CellRef, CellValue)> = cells
        .iter()
        .map(|(a1, v)| (CellRef::parse(a1).unwrap(), CellValue::Text(v.to_string())))
        .collect();
    let tmp_dir = p.path("editor");
    std::fs::create_dir_all(&tmp_dir).unwrap();
    let copy = tmp_dir.join("experiments.xlsx");
    std::fs::copy(p.path("experiments.xlsx"), &copy).unwrap();
    patch_cells(&copy, "experiments", &cells).unwrap();
    let tmp = p.path(".~saving.tmp");
    std::fs::copy(&copy, &tmp).unwrap();
    std::fs::rename(&tmp, p.path("experiments.xlsx")).unwrap();
}

fn status_cell(p: &Project, id: &str) -> String {
    read_experiments(&p.path("experiments.xlsx"))
        .unwrap()
        .rows
        .into_iter()
        .find(|r| r.id == id)
        .map(|r| match r.status {
            StatusCell::Empty => String::new(),
            StatusCell::State(s) => s.as_str().to_string(),
            StatusCell::Command(c) => format!("{c:?}").to_lowercase(),
            StatusCell::Other(t) => t,
        })
        .unwrap_or_else(|| panic!("no row {id}"))
}

fn tool_value(p: &Project, id: &str, column: &str) -> Option<String> {
    read_experiments(&p.path("experiments.xlsx"))
        .unwrap()
        .rows
        .into_iter()
        .find(|r| r.id == id)
        .and_then(|r| r.tool_values.get(column).cloned())
}

fn runs_of(p: &Project, id: &str) -> i64 {
    p.store()
        .query_row("SELECT COUNT(*) FROM runs WHERE exp_id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
}

fn wait_cell(p: &Project, id: &str, want: &str, w: &Watch) {
    wait_until(
        &format!("row {id}'s status cell to say {want}"),
        Duration::from_secs(30),
        || status_cell(p, id) == want,
    );
    let _ = w;
}

#[test]
fn detach_status_and_stop() {
    let p = Project::new("watch-detach", YAML);
    p.workbook(
        &["id", "status", "command"],
        &[vec![V::N(1.0), V::E, V::S("true")]],
    );
    let out = p.ok(&["status"]);
    assert!(out.contains("watcher: not running"), "{out}");
    let out = p.ok(&["watch", "--detach"]);
    assert!(out.contains("in the background (pid"), "{out}");
    let out = p.ok(&["status"]);
    assert!(out.contains("watcher: running (pid"), "{out}");
    // One per project.
    let second = p.neroman(&["watch"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("a watcher already runs for this project"),
        "{second:?}"
    );
    type_and_save(&p, &[("B2", "start")]);
    wait_until(
        "the detached watcher to finish row 1",
        Duration::from_secs(30),
        || status_cell(&p, "1") == "finished",
    );
    let log = std::fs::read_to_string(p.path(".neronet/watch.log")).unwrap();
    assert!(log.contains("workbook: start 1"), "{log}");
    let out = p.ok(&["watch", "--stop"]);
    assert!(out.contains("stopped the watcher"), "{out}");
    let out = p.ok(&["status"]);
    assert!(out.contains("watcher: not running"), "{out}");
    assert!(!p.path(".neronet/watch.json").exists());
}

#[test]
fn cli_actions_beside_the_watcher_are_written_back_and_never_doubled() {
    let p = Project::new("watch-cli", YAML);
    p.workbook(
        &["id", "status", "command"],
        &[
            vec![V::N(1.0), V::E, V::S("sleep 1")],
            vec![V::N(2.0), V::E, V::S("sleep 1")],
        ],
    );
    let w = Watch::start(&p);
    // The CLI starts row 1: the watcher writes its state back.
    p.ok(&["start", "1"]);
    wait_cell(&p, "1", "finished", &w);
    // Row 2 typed and started from the CLI at once: one run.
    type_and_save(&p, &[("B3", "start")]);
    let _ = p.neroman(&["start", "2"]);
    wait_cell(&p, "2", "finished", &w);
    assert_eq!(runs_of(&p, "1"), 1);
    assert_eq!(runs_of(&p, "2"), 1);
}

#[test]
fn configured_columns_are_tool_owned_and_kept_current() {
    let p = Project::new(
        "watch-columns",
        "workbook_columns: [runtime, loss]\nclusters:\n  local:\n    max_parallel: 4\n",
    );
    p.workbook(
        &["id", "status", "command", "loss"],
        &[vec![
            V::N(1.0),
            V::E,
            V::S("echo loss=0.25"),
            V::S("user's own"),
        ]],
    );
    let w = Watch::start(&p);
    type_and_save(&p, &[("B2", "start")]);
    wait_cell(&p, "1", "finished", &w);
    wait_until(
        "neronet.loss to be written",
        Duration::from_secs(30),
        || tool_value(&p, "1", "neronet.loss").as_deref() == Some("0.25"),
    );
    assert!(tool_value(&p, "1", "neronet.runtime").is_some());
    // Created at the right end; the user's own `loss` column untouched.
    let csv = common::soffice_csv(&p.path("experiments.xlsx"), 0);
    let header = csv.lines().next().unwrap();
    assert!(
        header.starts_with("id,status,command,loss,neronet.runtime,neronet.loss"),
        "{csv}"
    );
    assert!(
        csv.lines().nth(1).unwrap().contains(",user's own,"),
        "{csv}"
    );
}

#[test]
fn a_killed_watcher_fires_nothing_twice_and_acts_on_what_was_typed_while_it_was_down() {
    let p = Project::new("watch-kill", YAML);
    p.workbook(
        &["id", "status", "command"],
        &[
            vec![V::N(1.0), V::E, V::S("true")],
            vec![V::N(2.0), V::E, V::S("true")],
        ],
    );
    let w = Watch::start(&p);
    // Open in LibreOffice: nothing can be written back, so the cell keeps saying restart.
    let lock = p.path(".~lock.experiments.xlsx#");
    std::fs::write(&lock, "Ada,ada,lab1,27.11.2026 10:00,file:///home/ada;").unwrap();
    type_and_save(&p, &[("B2", "restart")]);
    wait_until("run 1 of row 1", Duration::from_secs(30), || {
        runs_of(&p, "1") == 1
    });
    wait_until(
        "status to say the write-back waits",
        Duration::from_secs(30),
        || {
            p.ok(&["status"]).contains(
                "write-back waits: the workbook is open in LibreOffice by Ada (ada) on lab1",
            )
        },
    );
    w.kill9();
    std::fs::remove_file(&lock).unwrap();
    assert_eq!(status_cell(&p, "1"), "restart");
    // Typed while no watcher runs.
    type_and_save(&p, &[("B3", "start")]);
    let w = Watch::start(&p);
    wait_cell(&p, "2", "finished", &w);
    wait_cell(&p, "1", "finished", &w);
    assert_eq!(runs_of(&p, "1"), 1, "the restart fired once:\n{}", w.log());
    assert_eq!(runs_of(&p, "2"), 1);
}

#[test]
fn a_command_on_an_invalid_row_waits_and_fires_once_the_row_is_fixed() {
    let p = Project::new("watch-invalid", YAML);
    p.workbook(
        &["id", "status", "command", "n"],
        &[vec![V::N(1.0), V::E, V::S("echo {n}"), V::E]],
    );
    let w = Watch::start(&p);
    type_and_save(&p, &[("B2", "start")]);
    wait_until("the reason in neronet.why", Duration::from_secs(30), || {
        tool_value(&p, "1", "neronet.why").is_some_and(|t| t.contains("waits for a valid row"))
    });
    assert_eq!(status_cell(&p, "1"), "start", "the command stays");
    assert_eq!(runs_of(&p, "1"), 0);
    // Fixed: it fires, and the reason goes.
    let cells = [(CellRef::parse("D2").unwrap(), CellValue::Number(3.0))];
    wait_until(
        "a save the watcher does not race",
        Duration::from_secs(30),
        || patch_cells(&p.path("experiments.xlsx"), "experiments", &cells).is_ok(),
    );
    wait_cell(&p, "1", "finished", &w);
    wait_until("neronet.why cleared", Duration::from_secs(30), || {
        tool_value(&p, "1", "neronet.why").is_none()
    });
    assert_eq!(p.ok(&["logs", "1"]), "3\n");
}

#[test]
fn a_row_changed_under_its_run_is_reported_and_used_by_the_next_run() {
    let p = Project::new("watch-changed", YAML);
    p.workbook(
        &["id", "status", "command", "n"],
        &[vec![V::N(1.0), V::E, V::S("sleep 4; echo {n}"), V::N(1.0)]],
    );
    let w = Watch::start(&p);
    type_and_save(&p, &[("B2", "start")]);
    wait_cell(&p, "1", "running", &w);
    let cells = [(CellRef::parse("D2").unwrap(), CellValue::Number(2.0))];
    wait_until(
        "a save the watcher does not race",
        Duration::from_secs(30),
        || patch_cells(&p.path("experiments.xlsx"), "experiments", &cells).is_ok(),
    );
    wait_until(
        "the change noted beside the row",
        Duration::from_secs(30),
        || {
            tool_value(&p, "1", "neronet.why")
                .is_some_and(|t| t.contains("changed while run 1 is running: n 1 → 2"))
        },
    );
    assert!(w.log().contains("n 1 → 2"), "{}", w.log());
    wait_cell(&p, "1", "finished", &w);
    assert_eq!(p.ok(&["logs", "1"]), "1\n", "the run kept its value");
    wait_until(
        "the note gone with its run",
        Duration::from_secs(30),
        || tool_value(&p, "1", "neronet.why").is_none(),
    );
    type_and_save(&p, &[("B2", "restart")]);
    wait_until("run 2", Duration::from_secs(30), || runs_of(&p, "1") == 2);
    wait_cell(&p, "1", "finished", &w);
    assert_eq!(p.ok(&["logs", "1"]), "2\n");
}

/// Regression (new-user trial): `hold` typed over a row whose run waited for a slot let it
/// start anyway.
#[test]
fn hold_typed_over_a_queued_run_keeps_it_from_starting() {
    let p = Project::new("watch-hold", "clusters:\n  local:\n    max_parallel: 1\n");
    p.workbook(
        &["id", "status", "command"],
        &[
            vec![V::N(1.0), V::E, V::S("sleep 3")],
            vec![V::N(2.0), V::E, V::S("echo ran")],
        ],
    );
    let w = Watch::start(&p);
    p.ok(&["start", "1,2"]);
    wait_cell(&p, "2", "queued", &w);
    type_and_save(&p, &[("B3", "hold")]);
    wait_until("run 1 to end", Duration::from_secs(30), || {
        p.state_of("1") == "finished"
    });
    wait_until(
        "row 2's queued run cancelled",
        Duration::from_secs(30),
        || p.state_of("2") == "aborted",
    );
    assert_eq!(status_cell(&p, "2"), "hold", "hold stays in the cell");
    assert!(p.ok(&["logs", "2"]).is_empty(), "the job never ran");
}

/// Regression (new-user trial): a refusal's reason stayed beside the row after its run moved
/// on (`abort: nothing in flight (finished)` through a whole new run).
#[test]
fn a_refusal_reason_goes_once_the_row_moves_on() {
    let p = Project::new("watch-stale-why", YAML);
    p.workbook(
        &["id", "status", "command"],
        &[vec![V::N(1.0), V::E, V::S("true")]],
    );
    let w = Watch::start(&p);
    p.ok(&["start", "1", "--wait"]);
    wait_cell(&p, "1", "finished", &w);
    type_and_save(&p, &[("B2", "abort")]);
    wait_until("the refusal's reason", Duration::from_secs(30), || {
        tool_value(&p, "1", "neronet.why").is_some_and(|t| t.contains("abort: nothing in flight"))
    });
    p.ok(&["restart", "1", "--wait"]);
    wait_until(
        "the reason gone with the new run",
        Duration::from_secs(30),
        || tool_value(&p, "1", "neronet.why").is_none(),
    );
}

/// Regression (new-user trial): while the workbook could not be read (two columns with one
/// header, or the file moved away) the CLI could neither show nor stop a running job.
#[test]
fn runs_can_be_seen_and_aborted_while_the_workbook_cannot_be_read() {
    let p = Project::new("unreadable-workbook", YAML);
    p.workbook(
        &["id", "status", "command"],
        &[
            vec![V::N(1.0), V::E, V::S("sleep 600")],
            vec![V::N(2.0), V::E, V::S("true")],
        ],
    );
    p.ok(&["start", "1"]);
    p.wait_for_state("1", "running");
    // Two columns headed "command": the whole file is unusable.
    p.workbook(
        &["id", "status", "command", "command"],
        &[vec![V::N(1.0), V::E, V::S("sleep 600"), V::S("x")]],
    );
    // Shown, and still an error (exit 1): the workbook is.
    let out = p.neroman(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("1 ") && l.contains("running")),
        "{stdout}"
    );
    assert!(stderr.contains("both headed"), "{stderr}");
    assert!(stderr.contains("the workbook cannot be read"), "{stderr}");
    // Nothing is started from it.
    let start = p.neroman(&["start", "2"]);
    assert_eq!(start.status.code(), Some(1), "{start:?}");
    // The workbook moved away: the same.
    std::fs::remove_file(p.path("experiments.xlsx")).unwrap();
    let out = p.neroman(&["abort", "1", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let state: String = p
        .store()
        .query_row("SELECT state FROM runs WHERE exp_id = '1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(state, "aborted");
}

/// Regression (new-user trial): a workbook reached through a symbolic link was saved where the
/// link points, which the watcher did not watch; and LibreOffice's lock file beside the target
/// did not stop the write-back.
#[test]
fn a_workbook_behind_a_symbolic_link_is_watched_where_it_lives() {
    let p = Project::new("watch-symlink", YAML);
    p.workbook(
        &["id", "status", "command"],
        &[vec![V::N(1.0), V::E, V::S("true")]],
    );
    let real_dir = p.path("real");
    std::fs::create_dir_all(&real_dir).unwrap();
    let real = real_dir.join("book.xlsx");
    std::fs::rename(p.path("experiments.xlsx"), &real).unwrap();
    std::os::unix::fs::symlink(&real, p.path("experiments.xlsx")).unwrap();
    let w = Watch::start(&p);
    // LibreOffice opens the target: its lock and its save are there.
    let lock = real_dir.join(".~lock.book.xlsx#");
    std::fs::write(&lock, "Ada,ada,lab1,27.11.2026 10:00,file:///home/ada;").unwrap();
    let copy = p.path("copy.xlsx");
    std::fs::copy(&real, &copy).unwrap();
    patch_cells(
        &copy,
        "experiments",
        &[(
            CellRef::parse("B2").unwrap(),
            CellValue::Text("start".into()),
        )],
    )
    .unwrap();
    std::fs::rename(&copy, &real).unwrap();
    wait_until(
        "the save seen through the link",
        Duration::from_secs(30),
        || runs_of(&p, "1") == 1,
    );
    wait_until(
        "the write-back to wait for the lock",
        Duration::from_secs(30),
        || p.ok(&["status"]).contains("write-back waits"),
    );
    assert_eq!(status_cell(&p, "1"), "start", "nothing written while open");
    std::fs::remove_file(&lock).unwrap();
    wait_cell(&p, "1", "finished", &w);
    assert!(std::fs::symlink_metadata(p.path("experiments.xlsx"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// Regression (new-user trial): changing a row's id while its status cell still held a command
/// already acted on (the file open, so nothing was written back) fired it again under the new id.
#[test]
fn an_id_changed_in_place_does_not_fire_its_cell_again() {
    let p = Project::new("watch-renamed-id", YAML);
    p.workbook(
        &["id", "status", "command"],
        &[vec![V::N(2.0), V::E, V::S("sleep 5")]],
    );
    let w = Watch::start(&p);
    let lock = p.path(".~lock.experiments.xlsx#");
    std::fs::write(&lock, "Ada,ada,lab1,27.11.2026 10:00,file:///home/ada;").unwrap();
    type_and_save(&p, &[("B2", "restart")]);
    wait_until("run 1 of id 2", Duration::from_secs(30), || {
        runs_of(&p, "2") == 1
    });
    type_and_save(&p, &[("A2", "22")]);
    wait_until("the rename seen", Duration::from_secs(30), || {
        w.log().contains("was acted on under id 2")
    });
    assert_eq!(runs_of(&p, "22"), 0, "{}", w.log());
    std::fs::remove_file(&lock).unwrap();
}
