//! The whole loop with real programs: a real LibreOffice (scripts/lo-edit.py, lo-session.py)
//! types commands into the experiments workbook and saves it while the real `neroman watch`
//! runs; the daemon starts, restarts and aborts local runs and writes their states back into the
//! status cells. Every scenario ends with LibreOffice reading the workbook: the user's ids,
//! commands and parameters must be as they were.
//!
//! Waits poll (the store, the workbook's cells); an absence ("nothing fired twice") is checked
//! over a quiet window of [`QUIET`], longer than the daemon's debounce plus its one-second
//! write-back coalescing, so a wrongly fired command would show in it. LibreOffice runs one at a
//! time across the tests (the [`LO`] lock): two soffice starting at once on two cores slow each
//! other down past the tests' waits.
//!
//! A test that fails because of a daemon bug says so in a comment above it (never `#[ignore]`);
//! a regression test says what broke.
//! NERONET_SHOW_WATCH_LOG=1 prints the daemon's log for passing tests as well.

mod common;

use common::lo::{self, cell, try_cell, try_cells, LoSession, Watch};
use common::{wait_until, Project, V};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One LibreOffice at a time.
static LO: Mutex<()> = Mutex::new(());

fn libreoffice() -> MutexGuard<'static, ()> {
    // A test that failed while holding it must not fail the others.
    LO.lock().unwrap_or_else(|e| e.into_inner())
}

/// Longer than the daemon's debounce and its one write-back per second, with room for a run
/// that was wrongly started to show in the store.
const QUIET: Duration = Duration::from_secs(3);
/// For a run to start or end, and for a write-back to land.
const WAIT: Duration = Duration::from_secs(30);

const YAML: &str = "clusters:\n  local:\n    max_parallel: 8\n    grace: 2s\n";
const HEADER: [&str; 6] = ["id", "status", "command", "secs", "code", "notes"];
/// Prints a metric, sleeps `secs`, exits with `code`.
const COMMAND: &str = "echo loss=0.5; sleep {secs}; exit {code}";

/// One experiment row: id, secs, code (the notes cell starts empty).
#[derive(Clone, Copy)]
struct Row<'a>(&'a str, f64, f64);

fn project(name: &str, rows: &[Row<'_>]) -> Project {
    let p = Project::new(name, YAML);
    p.workbook(
        &HEADER,
        &rows
            .iter()
            .map(|Row(id, secs, code)| {
                vec![V::S(id), V::E, V::S(COMMAND), V::N(*secs), V::N(*code)]
            })
            .collect::<Vec<_>>(),
    );
    p
}

fn book(p: &Project) -> std::path::PathBuf {
    p.path("experiments.xlsx")
}

/// Type into the workbook with a one-shot LibreOffice (open, type, Ctrl+S, close).
fn lo_edit(p: &Project, cells: &[(&str, &str)]) {
    let _lo = libreoffice();
    lo::edit(&book(p), cells);
}

/// The store's runs of experiment `id`: (run number, state), oldest first. Opened without
/// creating it: the daemon makes the store.
fn runs(p: &Project, id: &str) -> Vec<(i64, String)> {
    use rusqlite::OpenFlags;
    let db = rusqlite::Connection::open_with_flags(
        p.path(".neronet/state.db"),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open .neronet/state.db");
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut q = db
        .prepare("SELECT run_no, state FROM runs WHERE exp_id = ?1 ORDER BY run_no")
        .unwrap();
    q.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Poll until experiment `id` has exactly `n` runs and the last is in `state`.
fn wait_runs(p: &Project, id: &str, n: usize, state: &str) {
    let start = Instant::now();
    loop {
        let seen = runs(p, id);
        if seen.len() == n && seen.last().is_some_and(|(_, s)| s == state) {
            return;
        }
        assert!(
            seen.len() <= n,
            "experiment {id}: more than {n} runs: {seen:?}"
        );
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for experiment {id} to have {n} runs, the last \
             {state}; runs: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Poll until the workbook's cell `a1` reads `want` (the daemon's write-back).
fn wait_cell(p: &Project, a1: &str, want: &str) {
    let mut seen = None;
    let start = Instant::now();
    while seen.as_deref() != Some(want) {
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {a1} to read {want:?}; it reads {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        seen = try_cell(&book(p), a1);
    }
}

/// Poll `neroman status` (the table) until `cond` holds for its output.
fn wait_status(p: &Project, what: &str, cond: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let table = p.ok(&["status"]);
        if cond(&table) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for `neroman status` to show {what}:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cond` holds on every check for [`QUIET`]: an absence of something that would show by then.
fn quiet(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + QUIET;
    while Instant::now() < until {
        assert!(cond(), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each experiment has exactly its count of runs, and still has it after [`QUIET`]: nothing
/// fired again.
fn runs_stay(p: &Project, counts: &[(&str, usize)]) {
    quiet("a command fired again", || {
        for (id, n) in counts {
            let r = runs(p, id);
            assert_eq!(r.len(), *n, "experiment {id} should have {n} runs: {r:?}");
        }
        true
    });
}

/// The header cell that reads `name`, as a column letter (tool-owned columns are added at the
/// right end).
fn column_of(p: &Project, name: &str) -> Option<char> {
    let letters: Vec<String> = ('A'..='L').map(|c| format!("{c}1")).collect();
    let refs: Vec<&str> = letters.iter().map(String::as_str).collect();
    let header = try_cells(&book(p), &refs)?;
    header
        .iter()
        .position(|h| h == name)
        .map(|i| (b'A' + i as u8) as char)
}

/// LibreOffice reads the workbook: the header's user columns and every row's id, command and
/// parameters are as the test wrote them (`notes` as given, when given).
fn assert_user_values_intact(p: &Project, rows: &[Row<'_>], notes: &[(&str, &str)]) {
    let csv = {
        let _lo = libreoffice();
        common::soffice_csv(&book(p), 0)
    };
    let grid = lo::csv_rows(&csv);
    assert_eq!(
        grid[0][..HEADER.len()],
        HEADER,
        "the header's user columns changed:\n{csv}"
    );
    for (i, Row(id, secs, code)) in rows.iter().enumerate() {
        let line = &grid[i + 1];
        let field = |c: usize| line.get(c).map(String::as_str).unwrap_or("");
        assert_eq!(
            [field(0), field(2), field(3), field(4)],
            [*id, COMMAND, &secs.to_string(), &code.to_string()],
            "row {} changed:\n{csv}",
            i + 2
        );
        let note = notes.iter().find(|(n, _)| n == id).map_or("", |(_, v)| v);
        assert_eq!(field(5), note, "row {}'s notes:\n{csv}", i + 2);
    }
    assert!(
        grid[rows.len() + 1..]
            .iter()
            .all(|l| l[..HEADER.len().min(l.len())].iter().all(String::is_empty)),
        "rows after the last experiment:\n{csv}"
    );
}

#[test]
fn start_typed_in_libreoffice_runs_once_and_the_state_comes_back() {
    let rows = [Row("1", 0.0, 0.0), Row("2", 0.0, 0.0)];
    let p = project("loop-start", &rows);
    let w = Watch::start(&p);
    let table = p.ok(&["status"]);
    assert!(
        table.contains(&format!("watcher: running (pid {}", w.pid())),
        "{table}"
    );

    lo_edit(&p, &[("B2", "start")]);
    wait_runs(&p, "1", 1, "finished");
    wait_cell(&p, "B2", "finished");
    runs_stay(&p, &[("1", 1), ("2", 0)]);
    assert_eq!(cell(&book(&p), "B2"), "finished");
    assert_eq!(cell(&book(&p), "B3"), "", "2's status cell was not touched");
    let status = p.status();
    assert_eq!(status[0]["state"], "finished");
    assert_eq!(status[0]["run"], 1);
    assert_eq!(status[1]["state"], "defined");

    // `start` again on the row that ran: no second run, and the reason says what to type.
    lo_edit(&p, &[("B2", "start")]);
    wait_until("the reason in neronet.why", WAIT, || {
        column_of(&p, "neronet.why").is_some_and(|c| {
            try_cell(&book(&p), &format!("{c}2")).is_some_and(|r| r.contains("restart"))
        })
    });
    runs_stay(&p, &[("1", 1), ("2", 0)]);

    w.stop();
    let table = p.ok(&["status"]);
    assert!(table.contains("watcher: not running"), "{table}");
    assert_user_values_intact(&p, &rows, &[]);
}

#[test]
fn restart_of_a_crashed_row_makes_run_2() {
    let rows = [Row("1", 0.0, 3.0)];
    let p = project("loop-restart", &rows);
    let _w = Watch::start(&p);
    lo_edit(&p, &[("B2", "start")]);
    wait_runs(&p, "1", 1, "crashed");
    wait_cell(&p, "B2", "crashed");

    lo_edit(&p, &[("B2", "restart")]);
    wait_runs(&p, "1", 2, "crashed");
    wait_cell(&p, "B2", "crashed");
    runs_stay(&p, &[("1", 2)]);
    assert_eq!(
        runs(&p, "1"),
        [(1, "crashed".to_owned()), (2, "crashed".to_owned())]
    );
    assert_user_values_intact(&p, &rows, &[]);
}

#[test]
fn abort_typed_in_libreoffice_ends_a_running_row() {
    let rows = [Row("1", 600.0, 0.0)];
    let p = project("loop-abort", &rows);
    let _w = Watch::start(&p);
    lo_edit(&p, &[("B2", "start")]);
    wait_runs(&p, "1", 1, "running");
    wait_cell(&p, "B2", "running");
    let (_, job) = p.started("1.1");

    lo_edit(&p, &[("B2", "abort")]);
    wait_runs(&p, "1", 1, "aborted");
    wait_cell(&p, "B2", "aborted");
    wait_until("the job's processes to end", WAIT, || {
        common::group_members(job).is_empty()
    });
    runs_stay(&p, &[("1", 1)]);
    assert_user_values_intact(&p, &rows, &[]);
}

#[test]
fn fifty_starts_in_one_save_run_each_once() {
    let ids: Vec<String> = (1..=50).map(|i| i.to_string()).collect();
    let rows: Vec<Row<'_>> = ids.iter().map(|id| Row(id, 0.0, 0.0)).collect();
    let p = project("loop-fifty", &rows);
    let _w = Watch::start(&p);
    let status_cells: Vec<String> = (2..=51).map(|r| format!("B{r}")).collect();
    {
        let _lo = libreoffice();
        let mut s = LoSession::open(&book(&p));
        for c in &status_cells {
            s.set(c, "start");
        }
        s.save();
        s.close();
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let start = Instant::now();
    for id in &id_refs {
        // One shared deadline for all fifty: they run eight at a time.
        let left = Duration::from_secs(60).saturating_sub(start.elapsed());
        wait_until(&format!("experiment {id} to finish"), left, || {
            let r = runs(&p, id);
            assert!(r.len() <= 1, "experiment {id} ran twice: {r:?}");
            r.last().is_some_and(|(_, s)| s == "finished")
        });
    }
    let refs: Vec<&str> = status_cells.iter().map(String::as_str).collect();
    wait_until("every status cell to read finished", WAIT, || {
        try_cells(&book(&p), &refs).is_some_and(|v| v.iter().all(|s| s == "finished"))
    });
    runs_stay(&p, &id_refs.iter().map(|id| (*id, 1)).collect::<Vec<_>>());
    assert_user_values_intact(&p, &rows, &[]);
}

#[test]
fn saving_twice_while_open_fires_once_and_the_write_back_waits_for_close() {
    let rows = [Row("1", 0.0, 0.0), Row("2", 0.0, 0.0)];
    let p = project("loop-open", &rows);
    let _w = Watch::start(&p);
    lo_edit(&p, &[("B2", "start")]);
    wait_runs(&p, "1", 1, "finished");
    wait_cell(&p, "B2", "finished");

    let lo_lock = libreoffice();
    let mut s = LoSession::open(&book(&p));
    assert!(p.path(".~lock.experiments.xlsx#").exists());
    s.set("B2", "restart");
    s.save();
    wait_runs(&p, "1", 2, "finished");
    // Open in LibreOffice: the state is known but not written into the file.
    assert_eq!(cell(&book(&p), "B2"), "restart");
    wait_status(&p, "write-back waits naming LibreOffice", |t| {
        t.lines()
            .any(|l| l.starts_with("write-back waits") && l.contains("LibreOffice"))
    });

    // She goes on working and saves again, `restart` still in the cell. (A save with nothing
    // typed since writes the same bytes, which the daemon rightly never reads as news.)
    s.set("F3", "a note typed while open");
    s.save();
    runs_stay(&p, &[("1", 2), ("2", 0)]);
    assert_eq!(cell(&book(&p), "B2"), "restart", "written while open");
    assert_eq!(cell(&book(&p), "F3"), "a note typed while open");
    assert_eq!(s.read("B2"), "restart");

    s.close();
    drop(lo_lock);
    wait_cell(&p, "B2", "finished");
    runs_stay(&p, &[("1", 2), ("2", 0)]);
    wait_status(&p, "no write-back waiting", |t| {
        !t.contains("write-back waits")
    });
    assert_user_values_intact(&p, &rows, &[("2", "a note typed while open")]);
}

/// Run 1 finished, then `restart` typed and saved while LibreOffice holds the file: run 2. That
/// save, copied aside before the daemon's write-back (which waits for LibreOffice to close the
/// file), is returned: the path of the copy. The status cell reads `finished` again at the end.
fn restart_saved_and_copied_aside(p: &Project) -> std::path::PathBuf {
    lo_edit(p, &[("B2", "start")]);
    wait_runs(p, "1", 1, "finished");
    wait_cell(p, "B2", "finished");
    let old_copy = p.dir.parent().unwrap().join("old-copy.xlsx");
    {
        let _lo = libreoffice();
        let mut s = LoSession::open(&book(p));
        s.set("B2", "restart");
        s.save();
        std::fs::copy(book(p), &old_copy).unwrap();
        wait_runs(p, "1", 2, "finished");
        s.close();
    }
    wait_cell(p, "B2", "finished");
    old_copy
}

/// Put a copy over the workbook as a file manager or a sync tool does: written beside, renamed
/// over.
fn put_back(p: &Project, copy: &Path) {
    put_back_bytes(p, &std::fs::read(copy).unwrap());
}

fn put_back_bytes(p: &Project, bytes: &[u8]) {
    let beside = p.path(".put-back.partial");
    std::fs::write(&beside, bytes).unwrap();
    std::fs::rename(&beside, book(p)).unwrap();
}

/// Regression (fixed in c8b381c): the old copy came back within the watcher's 300 ms debounce
/// after the daemon's write-back, the watcher had never read that write-back and took the old
/// copy's bytes for its last content, so the old copy was never read and its stale `restart`
/// stayed in the status cell although run 2 had finished and nothing held the file.
#[test]
fn an_old_copy_put_back_after_the_write_back_fires_nothing_and_shows_the_state() {
    let rows = [Row("1", 0.0, 0.0)];
    let p = project("loop-old-copy", &rows);
    let _w = Watch::start(&p);
    let old_copy = restart_saved_and_copied_aside(&p);

    put_back(&p, &old_copy);
    // The old copy's `restart` was consumed: the daemon writes the state over it, as over any
    // consumed command, and starts nothing.
    wait_cell(&p, "B2", "finished");
    runs_stay(&p, &[("1", 2)]);
    assert_user_values_intact(&p, &rows, &[]);
}

#[test]
fn an_old_copy_saved_by_libreoffice_fires_only_what_was_typed_into_it() {
    let rows = [Row("1", 0.0, 0.0), Row("2", 0.0, 0.0)];
    let p = project("loop-old-copy-lo", &rows);
    let _w = Watch::start(&p);
    let old_copy = restart_saved_and_copied_aside(&p);

    // The old copy opened in LibreOffice where it lies, a note and a new command typed, saved,
    // and put back: its `restart` is still the old one, the `start` of 2 is a new edit. (Edited
    // outside the project so that no write-back can land in between and make it current.)
    {
        let _lo = libreoffice();
        lo::edit(
            &old_copy,
            &[("F2", "saved from an old copy"), ("B3", "start")],
        );
    }
    put_back(&p, &old_copy);
    wait_runs(&p, "2", 1, "finished");
    wait_cell(&p, "B3", "finished");
    wait_cell(&p, "B2", "finished");
    runs_stay(&p, &[("1", 2), ("2", 1)]);
    assert_eq!(
        runs(&p, "1"),
        [(1, "finished".to_owned()), (2, "finished".to_owned())]
    );
    assert_user_values_intact(&p, &rows, &[("1", "saved from an old copy")]);
}

#[test]
fn a_row_deleted_while_its_run_is_in_flight_can_still_be_aborted() {
    let rows = [Row("1", 600.0, 0.0), Row("2", 0.0, 0.0)];
    let p = project("loop-delete", &rows);
    let mut w = Watch::start(&p);
    lo_edit(&p, &[("B2", "start")]);
    wait_runs(&p, "1", 1, "running");
    wait_cell(&p, "B2", "running");
    let (_, job) = p.started("1.1");

    // Delete row 2 as LibreOffice's "Delete Rows" leaves it: row 3 moves up, row 3 is empty.
    lo_edit(
        &p,
        &[
            ("A2", "2"),
            ("B2", ""),
            ("C2", COMMAND),
            ("D2", "0"),
            ("E2", "0"),
            ("A3", ""),
            ("B3", ""),
            ("C3", ""),
            ("D3", ""),
            ("E3", ""),
        ],
    );
    // The daemon reads the file without 1 and must not move 1's state onto 2's row.
    quiet("the deleted row's state written into another row", || {
        w.assert_alive();
        try_cell(&book(&p), "B2").is_some_and(|s| s.is_empty())
    });
    assert_eq!(runs(&p, "1"), [(1, "running".to_owned())]);
    assert_eq!(runs(&p, "2"), []);

    let out = p.ok(&["abort", "1"]);
    wait_runs(&p, "1", 1, "aborted");
    wait_until("the job's processes to end", WAIT, || {
        common::group_members(job).is_empty()
    });
    quiet("the aborted state written into another row", || {
        w.assert_alive();
        try_cell(&book(&p), "B2").is_some_and(|s| s.is_empty())
    });
    assert_eq!(runs(&p, "2"), [], "abort 1 printed:\n{out}");
    assert_eq!(cell(&book(&p), "A2"), "2");
    w.assert_alive();
    assert_user_values_intact(&p, &[Row("2", 0.0, 0.0)], &[]);
}

#[test]
fn a_renamed_column_stops_its_rows_until_it_is_named_back() {
    let rows = [Row("1", 0.0, 0.0), Row("2", 0.0, 0.0)];
    let p = project("loop-header", &rows);
    let mut w = Watch::start(&p);

    // `secs` renamed: every row's command names {secs}, which no column gives now.
    lo_edit(&p, &[("D1", "seconds"), ("B2", "start")]);
    let mut why = None;
    wait_until("the reason in neronet.why", WAIT, || {
        why = column_of(&p, "neronet.why");
        why.is_some_and(|c| {
            try_cell(&book(&p), &format!("{c}2")).is_some_and(|r| r.contains("secs"))
        })
    });
    quiet("a command on an invalid row fired", || {
        w.assert_alive();
        runs(&p, "1").is_empty() && runs(&p, "2").is_empty()
    });
    assert_eq!(cell(&book(&p), "B2"), "start", "the command is kept");
    let status = p.status();
    let problems = status[0]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|t| t.as_str().unwrap().contains("secs")),
        "{status:?}"
    );

    // Named back: the row is valid and its command fires once.
    lo_edit(&p, &[("D1", "secs")]);
    wait_runs(&p, "1", 1, "finished");
    wait_cell(&p, "B2", "finished");
    let why = why.unwrap();
    wait_cell(&p, &format!("{why}2"), "");
    runs_stay(&p, &[("1", 1), ("2", 0)]);
    assert_eq!(runs(&p, "2"), []);
    w.assert_alive();
    assert_user_values_intact(&p, &rows, &[]);
}

#[test]
fn a_renamed_status_column_fires_nothing_until_it_is_named_back() {
    let rows = [Row("1", 0.0, 0.0)];
    let p = project("loop-status-header", &rows);
    let mut w = Watch::start(&p);

    // No `status` column: `start` typed under the renamed header is no command.
    lo_edit(&p, &[("B1", "state"), ("B2", "start")]);
    quiet("a command fired without a status column", || {
        w.assert_alive();
        runs(&p, "1").is_empty()
    });
    assert_eq!(cell(&book(&p), "B2"), "start");

    lo_edit(&p, &[("B1", "status")]);
    wait_runs(&p, "1", 1, "finished");
    wait_cell(&p, "B2", "finished");
    runs_stay(&p, &[("1", 1)]);
    w.assert_alive();
    assert_user_values_intact(&p, &rows, &[]);
}

/// Replace the workbook with a text file; the daemon must log it, and start and write nothing.
/// Returns the workbook's bytes from before.
fn text_over_the_workbook(p: &Project, w: &mut Watch) -> Vec<u8> {
    let good = std::fs::read(book(p)).unwrap();
    let logged = w.log().len();
    // As a program that saved the sheet as text under the workbook's name would leave it.
    let text = "id,status,command\n1,start,echo hi\n";
    let beside = p.path(".experiments.partial");
    std::fs::write(&beside, text).unwrap();
    std::fs::rename(&beside, book(p)).unwrap();
    wait_until("the daemon to log the broken workbook", WAIT, || {
        w.log()[logged..].lines().any(|l| {
            (l.contains("WARN") || l.contains("ERROR"))
                && (l.contains("workbook") || l.contains("experiments.xlsx"))
        })
    });
    quiet("the daemon acted on a text file", || {
        w.assert_alive();
        runs(p, "1").is_empty() && std::fs::read_to_string(book(p)).is_ok_and(|t| t == text)
    });
    good
}

#[test]
fn a_text_file_over_the_workbook_is_reported_and_acts_on_nothing() {
    let rows = [Row("1", 0.0, 0.0)];
    let p = project("loop-text", &rows);
    let mut w = Watch::start(&p);
    let good = text_over_the_workbook(&p, &mut w);

    // The workbook back from a backup, then LibreOffice types a command into it.
    put_back_bytes(&p, &good);
    lo_edit(&p, &[("B2", "start")]);
    wait_runs(&p, "1", 1, "finished");
    wait_cell(&p, "B2", "finished");
    runs_stay(&p, &[("1", 1)]);
    w.assert_alive();
    assert_user_values_intact(&p, &rows, &[]);
}

/// Regression (fixed in c8b381c): the workbook put back byte-identical to the last one the
/// watcher had accepted was no change to it, so the daemon kept its "not a workbook" problem
/// (`neroman status`: "workbook not acted on") and skipped every write-back until a different
/// save: the state of a run started meanwhile never reached the status cell.
#[test]
fn the_workbook_put_back_over_a_text_file_gets_states_again() {
    let rows = [Row("1", 0.0, 0.0)];
    let p = project("loop-text-back", &rows);
    let mut w = Watch::start(&p);
    let good = text_over_the_workbook(&p, &mut w);

    put_back_bytes(&p, &good);
    p.ok(&["start", "1"]);
    wait_runs(&p, "1", 1, "finished");
    wait_cell(&p, "B2", "finished");
    runs_stay(&p, &[("1", 1)]);
    w.assert_alive();
    assert_user_values_intact(&p, &rows, &[]);
}

#[test]
fn excel_save_pattern_fires_once_and_the_write_back_waits_for_its_owner_file() {
    let rows = [Row("1", 0.0, 0.0)];
    let p = project("loop-excel", &rows);
    let _w = Watch::start(&p);

    // The new content, typed and saved by LibreOffice in a directory the daemon does not watch.
    let elsewhere = p.dir.parent().unwrap().join("excel");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let edited = elsewhere.join("experiments.xlsx");
    std::fs::copy(book(&p), &edited).unwrap();
    {
        let _lo = libreoffice();
        lo::edit(&edited, &[("B2", "start")]);
    }

    // Excel: the owner file while open; a save writes a temp file, moves the original away,
    // moves the temp in and deletes the original.
    let owner = p.path("~$experiments.xlsx");
    std::fs::write(&owner, b"\x0bresearcher").unwrap();
    let temp = p.path("5A3C1F20");
    let away = p.path("8E2B4D71.tmp");
    std::fs::copy(&edited, &temp).unwrap();
    std::fs::rename(book(&p), &away).unwrap();
    std::fs::rename(&temp, book(&p)).unwrap();
    std::fs::remove_file(&away).unwrap();

    wait_runs(&p, "1", 1, "finished");
    wait_status(&p, "write-back waits naming Excel", |t| {
        t.lines()
            .any(|l| l.starts_with("write-back waits") && l.contains("Excel"))
    });
    runs_stay(&p, &[("1", 1)]);
    assert_eq!(
        cell(&book(&p), "B2"),
        "start",
        "written while Excel has it open"
    );

    // Excel closes the workbook.
    std::fs::remove_file(&owner).unwrap();
    wait_cell(&p, "B2", "finished");
    runs_stay(&p, &[("1", 1)]);
    assert_eq!(runs(&p, "1").len(), 1);
    assert_user_values_intact(&p, &rows, &[]);
}
