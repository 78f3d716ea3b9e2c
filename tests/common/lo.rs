//! The loop between a real LibreOffice and a real `neroman watch`: a driver for
//! scripts/lo-session.py (a workbook kept open and edited step by step) and for the one-shot
//! scripts/lo-edit.py, the watcher daemon as a child process, and cells read back with calamine.
//! These helpers take no lock: a test file that runs several LibreOffices serializes them itself.

use super::{soffice, wait_until, Project};
use calamine::{Data, Reader};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long one LibreOffice step may take: starting soffice on a loaded 2-core machine is the
/// slow one (3 s when idle).
const LO_STEP: Duration = Duration::from_secs(60);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Stop a child we started: SIGTERM, a grace period, then SIGKILL; reaps it. With `group`, the
/// child leads its own process group and the whole group goes (a soffice the script started).
fn stop(child: &mut Child, grace: Duration, group: bool) -> Option<ExitStatus> {
    let target = if group {
        -(child.id() as i32)
    } else {
        child.id() as i32
    };
    let kill = |sig| unsafe { libc::kill(target, sig) };
    if let Ok(Some(status)) = child.try_wait() {
        if group {
            kill(libc::SIGKILL);
        }
        return Some(status);
    }
    kill(libc::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            if group {
                kill(libc::SIGKILL);
            }
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(libc::SIGKILL);
    child.wait().ok()
}

/// A workbook open in a real LibreOffice (scripts/lo-session.py): each command waits for its
/// one-line answer, so when `save` returns the file is on disk, and while the session is open
/// LibreOffice's lock file `.~lock.<name>#` lies beside the workbook.
pub struct LoSession {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: Receiver<String>,
    stderr: PathBuf,
    book: PathBuf,
}

impl LoSession {
    /// Open `book` (its first sheet). The script's stderr goes to `<book>.lo-session.<n>.log`
    /// beside the project directory, shown when a step fails.
    pub fn open(book: &Path) -> LoSession {
        soffice();
        let stderr = log_path(book, "lo-session");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script("lo-session.py"))
            .arg(book)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            // Its own group: Drop ends the soffice it starts as well.
            .process_group(0)
            .spawn()
            .expect("run /usr/bin/python3 scripts/lo-session.py (needs python3-uno)");
        let stdout = child.stdout.take().unwrap();
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut s = LoSession {
            child,
            stdin,
            answers,
            stderr,
            book: book.to_path_buf(),
        };
        s.answer("open");
        s
    }

    /// The next answer line; panics on `error ...`, on a timeout and when the script ended.
    fn answer(&mut self, what: &str) -> String {
        let got = self.answers.recv_timeout(LO_STEP);
        let line = match got {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "lo-session {what}: no answer within {LO_STEP:?}{}",
                    self.tail()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                panic!(
                    "lo-session {what}: the script ended ({status:?}){}",
                    self.tail()
                )
            }
        };
        match line.strip_prefix("ok") {
            Some(rest) => rest.trim_start().to_owned(),
            None => panic!(
                "lo-session {what} on {}: {line}{}",
                self.book.display(),
                self.tail()
            ),
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        if text.trim().is_empty() {
            String::new()
        } else {
            format!("\nlo-session stderr:\n{text}")
        }
    }

    fn command(&mut self, line: &str) -> String {
        assert!(!line.contains('\n'), "one line per command: {line:?}");
        let stdin = self.stdin.as_mut().expect("the session was closed already");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!("lo-session {line}: write failed ({e}){}", self.tail());
        }
        self.answer(line)
    }

    /// Type `value` into `cell` (a number becomes a numeric cell, `=...` a formula, else text;
    /// an empty value empties the cell).
    pub fn set(&mut self, cell: &str, value: &str) {
        self.command(&format!("set {cell} {value}"));
    }

    /// Ctrl+S: LibreOffice writes a temp file and renames it over the workbook.
    pub fn save(&mut self) {
        self.command("save");
    }

    /// The cell's text as LibreOffice shows it.
    pub fn read(&mut self, cell: &str) -> String {
        self.command(&format!("read {cell}"))
    }

    /// File > Reload: what another program wrote to the file.
    pub fn reload(&mut self) {
        self.command("reload");
    }

    /// Close the document (LibreOffice removes its lock file) and wait for the script to end.
    pub fn close(mut self) {
        self.command("close");
        self.stdin = None;
        let deadline = Instant::now() + LO_STEP;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "lo-session ended {status}{}", self.tail());
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => panic!("lo-session did not end after close{}", self.tail()),
            }
        }
    }
}

impl Drop for LoSession {
    fn drop(&mut self) {
        // End of input closes the document in the script's `finally`; a killed one would leave
        // its lock file behind.
        self.stdin = None;
        stop(&mut self.child, Duration::from_secs(15), true);
    }
}

/// `<project base>/<what>.<pid>.<n>.log`: beside the project directory, never in it.
fn log_path(book: &Path, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = book.parent().unwrap();
    let base = dir.parent().unwrap_or(dir);
    // The pid too: tests of several binaries may share a base directory (a temp dir's parent).
    base.join(format!(
        "{what}.{}.{}.log",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// One-shot edit with a real LibreOffice (scripts/lo-edit.py): open `book`, type each
/// `(cell, value)`, save once (Ctrl+S), close.
pub fn edit(book: &Path, cells: &[(&str, &str)]) {
    soffice();
    let log = log_path(book, "lo-edit");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script("lo-edit.py"))
        .arg(book)
        .args(cells.iter().map(|(c, v)| format!("{c}={v}")))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .process_group(0)
        .spawn()
        .expect("run /usr/bin/python3 scripts/lo-edit.py (needs python3-uno)");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LO_STEP {
            stop(&mut child, Duration::from_secs(1), true);
            panic!(
                "lo-edit {cells:?} took over {LO_STEP:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "lo-edit {cells:?} on {} failed ({status}):\n{}",
        book.display(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// `neroman watch -vv` running as a child of the test in a project; its stdout and stderr go to
/// a file beside the project directory, printed when the test fails. Drop stops it with SIGTERM.
pub struct Watch {
    child: Child,
    log: PathBuf,
    dir: PathBuf,
}

impl Watch {
    /// Start the daemon and wait until it is ready (`.neronet/watch.json` names its pid).
    pub fn start(p: &Project) -> Watch {
        let log = log_path(&p.path("experiments.xlsx"), "watch");
        let out = std::fs::File::create(&log).unwrap();
        let child = p
            .command(&["watch", "-vv"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("run neroman watch");
        let mut w = Watch {
            child,
            log,
            dir: p.dir.clone(),
        };
        let ready = w.dir.join(".neronet/watch.json");
        let pid = w.child.id();
        wait_until("neroman watch to be ready", Duration::from_secs(30), || {
            if let Ok(Some(status)) = w.child.try_wait() {
                panic!("neroman watch exited ({status}) before it was ready");
            }
            std::fs::read_to_string(&ready)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["pid"] == pid)
        });
        w
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) when the daemon has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("neroman watch exited ({status})");
        }
    }

    /// Kill it with SIGKILL (a crash at an arbitrary moment) and wait for it.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stop it with SIGTERM: it must exit 0 and remove `.neronet/watch.json`.
    pub fn stop(mut self) {
        self.assert_alive();
        let status = stop(&mut self.child, Duration::from_secs(15), false);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "neroman watch on SIGTERM: {status:?}"
        );
        assert!(
            !self.dir.join(".neronet/watch.json").exists(),
            "watch.json left after a clean stop"
        );
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(15), false);
        // NERONET_SHOW_WATCH_LOG=1 shows it for passing tests too: to see that a scenario
        // reached the daemon at all (an absence passes just as well when nothing arrived).
        if std::thread::panicking() || std::env::var_os("NERONET_SHOW_WATCH_LOG").is_some() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(200);
            eprintln!(
                "---- neroman watch log ({}, last {} lines) ----\n{}\n---- end of log ----",
                self.log.display(),
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}

/// Cells' texts (`""` when empty) from the sheet `experiments`, else the first sheet; `None`
/// while the file is not a readable workbook.
pub fn try_cells(book: &Path, a1s: &[&str]) -> Option<Vec<String>> {
    let mut wb = calamine::open_workbook_auto(book).ok()?;
    let names = wb.sheet_names();
    let sheet = names
        .iter()
        .find(|n| n.as_str() == "experiments")
        .or(names.first())?
        .clone();
    let range = wb.worksheet_range(&sheet).ok()?;
    Some(
        a1s.iter()
            .map(|a1| match range.get_value(a1_to_rc(a1)) {
                None | Some(Data::Empty) => String::new(),
                Some(v) => v.to_string(),
            })
            .collect(),
    )
}

/// One cell's text, as [`try_cells`].
pub fn try_cell(book: &Path, a1: &str) -> Option<String> {
    try_cells(book, &[a1]).map(|mut v| v.remove(0))
}

/// A cell's text; panics when the workbook cannot be read.
pub fn cell(book: &Path, a1: &str) -> String {
    try_cell(book, a1).unwrap_or_else(|| panic!("{} is not a readable workbook", book.display()))
}

/// `B12` → (row 11, column 1), zero-based.
pub fn a1_to_rc(a1: &str) -> (u32, u32) {
    let letters: String = a1.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let digits = &a1[letters.len()..];
    let col = letters.chars().fold(0u32, |n, c| {
        n * 26 + (c.to_ascii_uppercase() as u32 - 'A' as u32 + 1)
    });
    let row: u32 = digits.parse().unwrap_or_else(|_| panic!("bad cell {a1}"));
    (row - 1, col - 1)
}

/// A CSV text (as `soffice_csv` writes it) as rows of fields (the `csv` crate: quoted fields may
/// hold commas, doubled quotes and line breaks; rows may differ in length).
pub fn csv_rows(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.expect("soffice's CSV").iter().map(String::from).collect())
        .collect()
}
