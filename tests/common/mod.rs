//! Shared fixtures for the integration tests: a throw-away project directory, workbooks written
//! cell by cell, the real binaries, LibreOffice for reading files back, and polling helpers.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod lo;
pub mod services;
use rust_xlsxwriter::Workbook;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn neroman_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_neroman"))
}

/// nerokid is another package's binary: `cargo build --workspace` puts it beside neroman.
pub fn nerokid_bin() -> PathBuf {
    let p = neroman_bin().with_file_name("nerokid");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    // `cargo test --test X` rebuilds this package only: a stale kid would test old code.
    let built = std::fs::metadata(&p).and_then(|m| m.modified()).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("kid/src");
    assert!(
        walk_newest(&src) <= built,
        "{} is older than kid/src: run `cargo build --workspace` first",
        p.display()
    );
    p
}

fn walk_newest(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        let t = if path.is_dir() {
            walk_newest(&path)
        } else {
            e.metadata().and_then(|m| m.modified()).unwrap()
        };
        newest = newest.max(t);
    }
    newest
}

pub struct Project {
    pub dir: PathBuf,
    xdg: PathBuf,
    base: PathBuf,
}

/// A cell for `write_workbook`.
pub enum V<'a> {
    N(f64),
    S(&'a str),
    E,
}

impl Project {
    /// A workbook of jobs on `cluster`, all running `command` (placeholders {n}, {pause},
    /// {code}, {id}), one row per `(id, n, pause, code)`.
    pub fn job_workbook(&self, cluster: &str, command: &str, rows: &[(&str, f64, f64, f64)]) {
        self.workbook(
            &["id", "status", "cluster", "command", "n", "pause", "code"],
            &rows
                .iter()
                .map(|(id, n, pause, code)| {
                    vec![
                        V::S(id),
                        V::E,
                        V::S(cluster),
                        V::S(command),
                        V::N(*n),
                        V::N(*pause),
                        V::N(*code),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }

    /// An empty project directory with a neronet.yaml.
    pub fn new(name: &str, yaml: &str) -> Project {
        let base = std::env::temp_dir().join(format!(
            "neronet-test-{name}-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("project");
        let xdg = base.join("xdg");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&xdg).unwrap();
        std::fs::write(dir.join("neronet.yaml"), yaml).unwrap();
        nerokid_bin();
        Project { dir, xdg, base }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The user's defaults file (`$XDG_CONFIG_HOME/neronet/neronet.yaml`) for this project's runs.
    pub fn user_config(&self, text: &str) -> PathBuf {
        let path = self.xdg.join("neronet/neronet.yaml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.dir.join(rel), text).unwrap();
    }

    /// Write `experiments.xlsx` with a header row and data rows.
    pub fn workbook(&self, header: &[&str], rows: &[Vec<V<'_>>]) {
        write_workbook(&self.path("experiments.xlsx"), "experiments", header, rows);
    }

    /// Run neroman in this project; returns the output (not asserting success).
    pub fn neroman(&self, args: &[&str]) -> Output {
        self.neroman_env(args, &[])
    }

    /// neroman in this project, to be spawned (a daemon) or run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(neroman_bin());
        c.arg("--dir")
            .arg(&self.dir)
            .args(args)
            .env("XDG_CONFIG_HOME", &self.xdg)
            .env("NERONET_MUM_IDLE_SECS", "60")
            .env_remove("RUST_LOG");
        c
    }

    /// Run neroman with extra environment variables (a mum it starts inherits them).
    pub fn neroman_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(neroman_bin())
            .envs(env.iter().copied())
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .env("XDG_CONFIG_HOME", &self.xdg)
            .env("NERONET_MUM_IDLE_SECS", "60")
            .env_remove("RUST_LOG")
            .output()
            .expect("run neroman")
    }

    /// Run neroman and require exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.neroman(args);
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "neroman {args:?} failed ({}):\nstdout:\n{so}\nstderr:\n{se}",
            out.status
        );
        so.into_owned()
    }

    /// `status --json` as parsed JSON.
    pub fn status(&self) -> Vec<serde_json::Value> {
        let text = self.ok(&["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn state_of(&self, id: &str) -> String {
        self.status()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["state"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no experiment {id} in status"))
    }

    /// Poll until every experiment is in `state`.
    pub fn wait_all(&self, state: &str, timeout: Duration) {
        wait_until(&format!("all {state}"), timeout, || {
            self.status().iter().all(|e| e["state"] == state)
        });
    }

    /// Poll until each of `ids` is in `state` (60 s at most).
    pub fn wait_all_in(&self, ids: &[&str], state: &str) {
        wait_until(&format!("{ids:?} {state}"), Duration::from_secs(60), || {
            self.status()
                .iter()
                .filter(|e| ids.iter().any(|i| e["id"] == *i))
                .all(|e| e["state"] == state)
        });
    }

    /// Poll until experiment `id` is in `state` (20 s at most).
    pub fn wait_for_state(&self, id: &str, state: &str) {
        wait_until(
            &format!("{id} to be {state}"),
            Duration::from_secs(20),
            || self.state_of(id) == state,
        );
    }

    /// (kid pid, job pid = the job's process group) from a run's first event.
    pub fn started(&self, run: &str) -> (i32, i32) {
        let events = std::fs::read_to_string(self.run_dir(run).join("events.jsonl")).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(events.lines().next().unwrap()).unwrap();
        (
            first["pid"].as_i64().unwrap() as i32,
            first["job_pid"].as_i64().unwrap() as i32,
        )
    }

    /// A run's directory in the agent's workdir: `runs/<project id prefix>-<run>`.
    pub fn run_dir(&self, run: &str) -> PathBuf {
        let runs = self.mum_dir().join("runs");
        let suffix = format!("-{run}");
        std::fs::read_dir(&runs)
            .unwrap_or_else(|e| panic!("{}: {e}", runs.display()))
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(&suffix))
            .unwrap_or_else(|| panic!("no directory for run {run} in {}", runs.display()))
    }

    pub fn mum_dir(&self) -> PathBuf {
        self.path(".neronet/mum-local")
    }

    /// The pid the lock file records (`4242 on HOST`: the first word).
    pub fn mum_pid(&self) -> Option<i32> {
        lock_pid(&self.mum_dir())
    }

    pub fn store(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path(".neronet/state.db")).unwrap()
    }
}

/// The pid of the mum holding `workdir` (its lock records `<pid> on <host>`).
pub fn lock_pid(workdir: &Path) -> Option<i32> {
    std::fs::read_to_string(workdir.join("mum.lock"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// SIGTERM to a mum, if that pid still is one.
pub fn stop_mum(pid: Option<i32>) {
    if let Some(pid) = pid {
        if std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("neromum"))
        {
            // SAFETY: kill(2) on a pid just checked to be a neromum; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Stop this project's mum so tests leave no agents behind.
        stop_mum(self.mum_pid());
        // A failed test keeps its directory for a post-mortem.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1000 + (nerokid::report::now().fract() * 1000.0) as u64
}

pub fn write_workbook(path: &Path, sheet: &str, header: &[&str], rows: &[Vec<V<'_>>]) {
    let mut book = Workbook::new();
    let ws = book.add_worksheet();
    ws.set_name(sheet).unwrap();
    for (c, h) in header.iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    for (r, row) in rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let (r, c) = (r as u32 + 1, c as u16);
            match v {
                V::N(n) => {
                    ws.write_number(r, c, *n).unwrap();
                }
                V::S(s) => {
                    ws.write_string(r, c, *s).unwrap();
                }
                V::E => {}
            }
        }
    }
    book.save(path).unwrap();
}

/// Poll `cond` every 100 ms until it holds; panic with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// LibreOffice must be installed for these tests (the test script installs it); never skip.
pub fn soffice() -> PathBuf {
    let found = ["/usr/bin/soffice", "/usr/bin/libreoffice"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    found.expect("LibreOffice (soffice) is required by this test: run the README's test command, which installs it")
}

/// Convert `src` with a real LibreOffice (a private profile) into `out_dir`; fails on any
/// complaint. Returns what soffice printed on stderr.
pub fn soffice_convert(src: &Path, format: &str, out_dir: &Path, profile: &Path) -> String {
    let out = Command::new(soffice())
        .arg("--headless")
        .arg(format!(
            "-env:UserInstallation=file://{}",
            profile.display()
        ))
        .args(["--convert-to", format, "--outdir"])
        .arg(out_dir)
        .arg(src)
        .output()
        .expect("run soffice");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "soffice failed on {}: {stderr}",
        src.display()
    );
    stderr
}

/// Convert one sheet of a workbook to CSV with a real LibreOffice; fails on any complaint.
pub fn soffice_csv(book: &Path, sheet_index: usize) -> String {
    let out_dir = book.parent().unwrap().join(format!("csv-{}", unique()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let profile = out_dir.join("profile");
    // Filter options: comma, double quote, UTF-8, line 1, ..., sheet number (1-based).
    let filter = format!(
        "csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,false,{}",
        sheet_index + 1
    );
    let stderr = soffice_convert(book, &filter, &out_dir, &profile);
    let stem = book.file_stem().unwrap().to_string_lossy();
    let csv = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "csv")
                && p.file_name().unwrap().to_string_lossy().starts_with(&*stem)
        })
        .unwrap_or_else(|| {
            panic!(
                "soffice wrote no CSV for {} (stderr: {stderr})",
                book.display()
            )
        });
    std::fs::read_to_string(csv).unwrap()
}

pub fn kill(pid: i32, sig: i32) {
    unsafe { libc::kill(pid, sig) };
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    nerokid::probe::group_processes(pgid)
        .into_iter()
        .map(|p| p.pid)
        .collect()
}
