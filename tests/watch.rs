//! The workbook watcher (`neronet::sheet::watch`) against real file operations in a temp dir: the
//! ways spreadsheet programs save, half-written and broken files, other files beside the workbook,
//! reads of the workbook, polling, and a real LibreOffice save.
//!
//! "Nothing else was sent" is checked with a marker: after the scenario the test replaces the
//! workbook once more and the next event must be that marker's change — anything the scenario
//! wrongly sent would arrive before it. Where the wrong behaviour would only show as extra reads of
//! the workbook (the hash hides them), the test counts reads over a window of a few debounce periods.

mod common;

use neronet::sheet::watch::{WatchEvent, WatchMode, WatchOptions, WorkbookWatcher};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const DEBOUNCE: Duration = Duration::from_millis(200);
/// Long enough for any event to come through the debouncer and the retries.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn opts() -> WatchOptions {
    WatchOptions {
        debounce: DEBOUNCE,
        poll: None,
        retry_for: Duration::from_secs(1),
    }
}

/// A valid workbook whose content depends on `tag`.
fn book(tag: &str) -> Vec<u8> {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name("experiments").unwrap();
    ws.write_string(0, 0, "id").unwrap();
    ws.write_string(0, 1, "status").unwrap();
    ws.write_string(1, 0, tag).unwrap();
    wb.save_to_buffer().unwrap()
}

fn hash(bytes: &[u8]) -> u64 {
    neronet::store::fnv(bytes)
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    book: PathBuf,
    watcher: WorkbookWatcher,
    rx: Receiver<WatchEvent>,
}

fn setup_with(opts: WatchOptions) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let book = dir.join("experiments.xlsx");
    std::fs::copy("templates/experiments.xlsx", &book).unwrap();
    let (watcher, rx) = WorkbookWatcher::start(&book, opts).unwrap();
    Setup {
        _dir: tmp,
        dir,
        book,
        watcher,
        rx,
    }
}

fn setup() -> Setup {
    setup_with(opts())
}

fn atomic_write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(".writing.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn next_event(rx: &Receiver<WatchEvent>, what: &str) -> WatchEvent {
    match rx.recv_timeout(EVENT_TIMEOUT) {
        Ok(e) => e,
        Err(e) => panic!("no event ({e:?}) within {EVENT_TIMEOUT:?}: expected {what}"),
    }
}

fn expect_changed(rx: &Receiver<WatchEvent>, want: &[u8], what: &str) {
    match next_event(rx, what) {
        WatchEvent::Changed { bytes, hash: h, .. } => {
            assert_eq!(h, hash(want), "{what}: another content was sent");
            assert_eq!(bytes, want, "{what}");
        }
        other => panic!("{what}: expected a change, got {other:?}"),
    }
}

/// Replaces the workbook with new content; the next event must be its change, so nothing the
/// scenario before it caused was still to come.
fn expect_nothing_before_marker(s: &Setup) {
    let marker = book("marker");
    atomic_write(&s.book, &marker);
    expect_changed(
        &s.rx,
        &marker,
        "the marker's change (anything before it is extra)",
    );
}

/// The watcher's read count stays at `before` for four debounce periods: longer than the
/// debouncer takes to deliver anything, so an event that got through the filter would show.
fn expect_no_reads_since(s: &Setup, before: u64, what: &str) {
    let until = Instant::now() + DEBOUNCE * 4;
    while Instant::now() < until {
        assert_eq!(s.watcher.reads(), before, "{what} made the watcher read");
        std::thread::sleep(Duration::from_millis(20));
    }
    match s.rx.try_recv() {
        Err(std::sync::mpsc::TryRecvError::Empty) => {}
        other => panic!("{what}: unexpected {other:?}"),
    }
}

#[test]
fn atomic_replace_gives_exactly_one_change() {
    let s = setup();
    let new = book("one");
    atomic_write(&s.book, &new);
    expect_changed(&s.rx, &new, "the replace");
    expect_nothing_before_marker(&s);
}

#[test]
fn saving_identical_content_gives_nothing() {
    let s = setup();
    let same = std::fs::read(&s.book).unwrap();
    atomic_write(&s.book, &same);
    // In place too: truncate and write the same bytes.
    std::fs::write(&s.book, &same).unwrap();
    common::wait_until(
        "the watcher to read the saved workbook",
        EVENT_TIMEOUT,
        || s.watcher.reads() > 1,
    );
    expect_nothing_before_marker(&s);
}

#[test]
fn in_place_writes_in_chunks_give_one_change_with_the_final_content() {
    use std::io::Write;
    // A debounce shorter than the pauses, so the watcher reads the file between chunks.
    let s = setup_with(WatchOptions {
        debounce: Duration::from_millis(100),
        ..opts()
    });
    let new = book("chunked, a longer text so the chunks differ from the template");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&s.book)
        .unwrap();
    // The pauses are the scenario (a slow writer), not a wait for the watcher.
    for chunk in new.chunks(new.len().div_ceil(3)) {
        std::thread::sleep(Duration::from_millis(150));
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
    }
    drop(f);
    expect_changed(&s.rx, &new, "the chunked write");
    expect_nothing_before_marker(&s);
}

#[test]
fn excel_save_pattern_gives_one_change() {
    let s = setup();
    let owner = s.dir.join("~$experiments.xlsx");
    let temp = s.dir.join("A1B2C3D4");
    let old = s.dir.join("9F8E7D6C");
    let new = book("saved by excel");
    std::fs::write(&owner, b"owner").unwrap();
    std::fs::write(&temp, &new).unwrap();
    std::fs::rename(&s.book, &old).unwrap();
    // Longer than the debounce: the watcher finds no workbook, and must wait for it to come back.
    std::thread::sleep(DEBOUNCE * 2);
    std::fs::rename(&temp, &s.book).unwrap();
    std::fs::remove_file(&old).unwrap();
    std::fs::remove_file(&owner).unwrap();
    expect_changed(&s.rx, &new, "excel's save");
    expect_nothing_before_marker(&s);
}

#[test]
fn a_broken_workbook_is_reported_once_and_never_as_a_change() {
    let s = setup();
    std::fs::write(&s.book, b"garbage, not a zip at all").unwrap();
    match next_event(&s.rx, "the broken workbook") {
        WatchEvent::Broken { why, .. } => assert!(why.contains("workbook"), "{why}"),
        other => panic!("expected Broken, got {other:?}"),
    }
    // Saved again with the same garbage: still the same broken content, not reported again.
    let reads = s.watcher.reads();
    std::fs::write(&s.book, b"garbage, not a zip at all").unwrap();
    common::wait_until("the watcher to read it again", EVENT_TIMEOUT, || {
        s.watcher.reads() > reads
    });
    // An absence: wait out the retries (1 s) and the debounce; a second Broken would come in it.
    let quiet = s.rx.recv_timeout(Duration::from_secs(1) + DEBOUNCE * 3);
    assert_eq!(
        quiet,
        Err(RecvTimeoutError::Timeout),
        "the same garbage reported twice"
    );
    let good = book("fixed");
    atomic_write(&s.book, &good);
    // A second Broken for the same garbage would arrive before this.
    expect_changed(&s.rx, &good, "the fixed workbook");
    expect_nothing_before_marker(&s);
}

#[test]
fn the_workbook_missing_for_a_while_is_reported_once() {
    let s = setup();
    std::fs::remove_file(&s.book).unwrap();
    match next_event(&s.rx, "the missing workbook") {
        WatchEvent::Broken { why, .. } => assert!(why.contains("missing"), "{why}"),
        other => panic!("expected Broken, got {other:?}"),
    }
    let back = book("back");
    atomic_write(&s.book, &back);
    expect_changed(&s.rx, &back, "the workbook back");
}

#[test]
fn other_files_in_the_directory_give_nothing() {
    let s = setup();
    let before = s.watcher.reads();
    atomic_write(&s.dir.join("other.xlsx"), &book("other"));
    std::fs::write(s.dir.join(".~lock.experiments.xlsx#"), b",me,host,now,").unwrap();
    std::fs::write(s.dir.join("lu12345abc.tmp"), b"x").unwrap();
    std::fs::remove_file(s.dir.join("lu12345abc.tmp")).unwrap();
    std::fs::remove_file(s.dir.join(".~lock.experiments.xlsx#")).unwrap();
    expect_no_reads_since(&s, before, "other files");
    expect_nothing_before_marker(&s);
}

#[test]
fn reading_the_workbook_triggers_nothing() {
    let s = setup();
    let before = s.watcher.reads();
    for _ in 0..3 {
        std::fs::read(&s.book).unwrap();
        neronet::sheet::read::read_experiments(&s.book).unwrap();
    }
    expect_no_reads_since(&s, before, "reading the workbook");
}

#[test]
fn forced_polling_sees_a_change() {
    let s = setup_with(WatchOptions {
        poll: Some(Duration::from_millis(100)),
        ..opts()
    });
    assert!(matches!(s.watcher.mode(), WatchMode::Poll { .. }));
    let new = book("polled");
    atomic_write(&s.book, &new);
    expect_changed(&s.rx, &new, "the polled change");
    expect_nothing_before_marker(&s);
}

#[test]
fn dropping_the_watcher_ends_it() {
    let s = setup();
    let Setup { watcher, rx, .. } = s;
    assert_eq!(watcher.mode(), &WatchMode::Inotify);
    drop(watcher);
    // The worker thread owned the sender: joined by drop, so the channel is closed now.
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(1)),
        Err(RecvTimeoutError::Disconnected)
    );
}

/// LibreOffice (through lo-edit.py and python3-uno) loads the watched workbook, sets a cell and
/// saves it: its lock file, temp file and reads must add up to exactly one change.
#[test]
fn a_libreoffice_save_gives_exactly_one_change() {
    let s = setup();
    common::lo::edit(&s.book, &[("B2", "start")]);
    let saved = std::fs::read(&s.book).unwrap();
    expect_changed(&s.rx, &saved, "libreoffice's save");
    expect_nothing_before_marker(&s);
}

/// Regression (found by tests/workbook_loop.rs): the workbook put back byte for byte after a
/// broken file was never reported, so the daemon kept saying the workbook was not acted on.
#[test]
fn the_same_workbook_put_back_after_a_broken_file_is_a_change() {
    let s = setup();
    let original = std::fs::read(&s.book).unwrap();
    atomic_write(&s.book, b"just text now");
    match next_event(&s.rx, "the text file") {
        WatchEvent::Broken { .. } => {}
        other => panic!("expected Broken, got {other:?}"),
    }
    atomic_write(&s.book, &original);
    expect_changed(&s.rx, &original, "the workbook put back as it was");
}

/// Regression (found by tests/workbook_loop.rs): after the caller wrote the workbook itself, an
/// old copy put back before the watcher looked matched the watcher's old baseline and was
/// never reported.
#[test]
fn content_the_caller_wrote_is_not_reported_and_the_old_content_back_is() {
    let s = setup();
    let original = std::fs::read(&s.book).unwrap();
    let ours = book("written back");
    // The caller's write-back, and right after it (within the debounce) the old copy saved.
    atomic_write(&s.book, &ours);
    s.watcher.wrote(hash(&ours));
    atomic_write(&s.book, &original);
    expect_changed(&s.rx, &original, "the old copy over the write-back");
    // Our own write alone gives nothing.
    let ours2 = book("written back again");
    atomic_write(&s.book, &ours2);
    s.watcher.wrote(hash(&ours2));
    expect_nothing_before_marker(&s);
}
