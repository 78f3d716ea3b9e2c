//! Runs on a cluster reached over SSH, against the real sshd the test script starts (user
//! `nerolab` on 127.0.0.1:2222, alias `nerolab` in /tmp/neronet-sshlab/ssh_config): neroman
//! uploads the static neromum/nerokid, starts the agent through `neromum bridge`, and keeps
//! going through a killed control master and a restarted sshd. Each test has a workdir of its
//! own in nerolab's home; the one that cuts connections has a master of its own.

mod common;
use common::{wait_until, Project, V};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

const ALIAS: &str = "nerolab";
const REMOTE_HOME: &str = "/home/nerolab";

/// Tests that stop sshd or change nerolab's .bashrc hold this for writing, so nothing else
/// runs meanwhile; every other test holds it for reading (through [`Lab`]).
static LAB_WIDE: RwLock<()> = RwLock::new(());

fn lab_config() -> PathBuf {
    // Not while a test has sshd stopped.
    let _shared = LAB_WIDE.read().unwrap_or_else(|p| p.into_inner());
    let lab = common::services::ssh_lab();
    assert_eq!(lab.alias, ALIAS);
    lab.config
}

/// One test's cluster on nerolab: its own remote workdir, removed (agent stopped) at the end.
struct Lab {
    cfg: PathBuf,
    workdir: String,
    _lab_wide: LabWide,
}

enum LabWide {
    Shared(#[expect(dead_code, reason = "held")] RwLockReadGuard<'static, ()>),
    Alone(#[expect(dead_code, reason = "held")] RwLockWriteGuard<'static, ()>),
}

impl Lab {
    fn new(name: &str) -> Lab {
        Lab::with_config(name, lab_config(), false)
    }

    /// A lab for a test that stops sshd or changes nerolab's .bashrc: no other test runs
    /// meanwhile.
    fn alone(name: &str, cfg: PathBuf) -> Lab {
        Lab::with_config(name, cfg, true)
    }

    fn with_config(name: &str, cfg: PathBuf, alone: bool) -> Lab {
        let lab_wide = if alone {
            LabWide::Alone(LAB_WIDE.write().unwrap_or_else(|p| p.into_inner()))
        } else {
            LabWide::Shared(LAB_WIDE.read().unwrap_or_else(|p| p.into_inner()))
        };
        common::services::static_binaries();
        let workdir = format!(
            "neronet-test-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().subsec_nanos() % 1000
        );
        let lab = Lab {
            cfg,
            workdir,
            _lab_wide: lab_wide,
        };
        lab.ssh(&format!("rm -rf {}", lab.workdir));
        lab
    }

    fn yaml(&self) -> String {
        format!(
            "clusters:\n  lab:\n    ssh: {ALIAS}\n    ssh_config: {}\n    workdir: {}\n    max_parallel: 4\n    grace: 2s\n",
            self.cfg.display(),
            self.workdir
        )
    }

    /// Run a command as nerolab with plain ssh (not through neroman's master).
    fn ssh(&self, cmd: &str) -> Output {
        Command::new("ssh")
            .arg("-F")
            .arg(&self.cfg)
            .args(["-o", "ControlPath=none", ALIAS, cmd])
            .output()
            .expect("run ssh")
    }

    fn ssh_ok(&self, cmd: &str) -> String {
        let out = self.ssh(cmd);
        assert!(
            out.status.success(),
            "ssh {cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn remote_path(&self, rel: &str) -> PathBuf {
        Path::new(REMOTE_HOME).join(&self.workdir).join(rel)
    }

    /// `<workdir>/bin/<version>` on the login node (the same filesystem as here).
    fn bin_dir(&self) -> PathBuf {
        self.remote_path(&format!("bin/{}", env!("CARGO_PKG_VERSION")))
    }

    fn mum_pid(&self) -> Option<i32> {
        common::lock_pid(&self.remote_path(""))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        common::stop_mum(self.mum_pid());
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(Path::new(REMOTE_HOME).join(&self.workdir));
        }
    }
}

/// A shell job for the remote side: `n` lines of `step=i loss=...` with `pause` between them,
/// the uid it ran as, then exit `code`.
const JOB: &str = "i=0; while [ $i -lt {n} ]; do echo step=$i loss=0.$i; i=$((i+1)); sleep {pause}; done; echo uid=$(id -u); exit {code}";

fn lab_project(name: &str, lab: &Lab, rows: &[(&str, f64, f64, f64)]) -> Project {
    project_with(name, &lab.yaml(), rows)
}

/// A project on the cluster `lab` configured by `yaml`, rows `(id, n, pause, code)` running
/// [`JOB`].
fn project_with(name: &str, yaml: &str, rows: &[(&str, f64, f64, f64)]) -> Project {
    let p = Project::new(name, yaml);
    p.job_workbook("lab", JOB, rows);
    p
}

fn metric_rows(p: &Project, run: &str) -> i64 {
    p.store()
        .query_row(
            "SELECT COUNT(*) FROM metrics WHERE run_uid = ?1",
            [run],
            |r| r.get(0),
        )
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// SLURM behind sshd, the README's five lines: 50 rows go out over SSH as one job array
/// (`start` says so once SLURM took them), each finishes once; a run is aborted in SLURM and
/// restarted as a new job.
#[test]
fn slurm_over_ssh_an_array_abort_and_restart() {
    common::services::slurm();
    let lab = Lab::new("slurm");
    let yaml = format!(
        "clusters:\n  lab:\n    ssh: {ALIAS}\n    ssh_config: {}\n    workdir: {}\n    warden: slurm\n    poll_interval: 1s\n    grace: 2s\n    slurm:\n      partition: debug\n      time: '0:05:00'\n",
        lab.cfg.display(),
        lab.workdir
    );
    let ids: Vec<String> = (1..=50).map(|i| i.to_string()).collect();
    let mut rows: Vec<(&str, f64, f64, f64)> =
        ids.iter().map(|id| (id.as_str(), 2.0, 0.05, 0.0)).collect();
    rows.push(("slow", 1000.0, 0.2, 0.0));
    let p = project_with("ssh-slurm", &yaml, &rows);
    let out = p.ok(&["start", "1-50"]);
    assert!(
        out.contains("lab: 50 runs accepted by slurm in ") && out.contains("(50 tasks)"),
        "{out}"
    );
    wait_until("50 runs finished", Duration::from_secs(180), || {
        p.status()
            .iter()
            .filter(|e| e["state"] == "finished")
            .count()
            == 50
    });
    let st = p.status();
    let arrays: std::collections::BTreeSet<&str> = st[..50]
        .iter()
        .map(|e| e["job_id"].as_str().unwrap().split('_').next().unwrap())
        .collect();
    assert_eq!(arrays.len(), 1, "one job array: {arrays:?}");
    for id in ["1", "25", "50"] {
        assert_eq!(
            metric_rows(&p, &format!("{id}.1")),
            5,
            "2 × (step, loss) + uid"
        );
    }
    // Each task starts in its own run directory, not in the array's shared batch directory
    // (trial regression: relative output files of two tasks collided there).
    for id in ["1", "2"] {
        let show: serde_json::Value = serde_json::from_str(&p.ok(&["show", id, "--json"])).unwrap();
        let cwd = show["runs"][0]["environment"]["cwd"]
            .as_str()
            .unwrap_or_default();
        assert!(
            cwd.contains("/runs/") && cwd.ends_with(&format!("-{id}.1")),
            "run {id} started in {cwd:?}: {show}"
        );
    }
    p.ok(&["start", "slow"]);
    p.wait_for_state("slow", "running");
    let job = p.status()[50]["job_id"].as_str().unwrap().to_string();
    let out = p.neroman(&["abort", "slow", "--wait"]);
    assert!(text(&out).contains("slow: aborted"), "{}", text(&out));
    wait_until(
        "SLURM to be done with the aborted job",
        Duration::from_secs(30),
        || {
            let q = Command::new("squeue")
                .args(["-h", "-j", &job, "-o", "%T"])
                .output()
                .unwrap();
            let state = String::from_utf8_lossy(&q.stdout).trim().to_string();
            !matches!(state.as_str(), "RUNNING" | "PENDING" | "COMPLETING")
        },
    );
    p.ok(&["restart", "slow"]);
    p.wait_for_state("slow", "running");
    let again = p.status()[50]["job_id"].as_str().unwrap().to_string();
    assert_ne!(again, job, "the restart is a new SLURM job");
    p.ok(&["abort", "slow", "--wait"]);
}

/// Trial regression: with one cluster unreachable, `start` still starts the rows of the
/// others and says so (it printed only the error, and exited 1 as if nothing had started).
#[test]
fn a_cluster_not_reached_leaves_the_others_started_and_said() {
    let lab = Lab::new("partial");
    let yaml = lab.yaml().replace(
        "clusters:\n",
        "clusters:\n  wrong:\n    ssh: nosuchalias.invalid\n    ssh_config: /dev/null\n",
    );
    let p = Project::new("ssh-partial", &yaml);
    p.workbook(
        &["id", "status", "cluster", "command"],
        &[
            vec![V::S("a"), V::E, V::S("lab"), V::S("echo step=1")],
            vec![V::S("b"), V::E, V::S("wrong"), V::S("echo step=1")],
        ],
    );
    let out = p.neroman(&["start", "all"]);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{so}{se}");
    assert!(so.contains("a: submitted (run 1)"), "{so}{se}");
    assert!(
        se.contains("cluster wrong: ssh nosuchalias.invalid: ") && se.contains("; not started: b"),
        "{se}"
    );
    p.wait_for_state("a", "finished");
    assert_eq!(p.state_of("b"), "defined");
}

#[test]
fn start_abort_restart_over_ssh() {
    let lab = Lab::new("basic");
    let p = lab_project(
        "ssh-basic",
        &lab,
        &[("fast", 3.0, 0.05, 0.0), ("slow", 1000.0, 0.2, 0.0)],
    );
    let out = p.neroman(&["start", "fast", "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("fast: finished"), "{}", text(&out));
    let st = p.status();
    assert_eq!(st[0]["state"], "finished");
    assert_eq!(st[0]["metrics"]["step"], 2.0);
    // It ran on the far side of ssh, as nerolab.
    let nerolab_uid = lab.ssh_ok("id -u").trim().parse::<f64>().unwrap();
    assert_eq!(st[0]["metrics"]["uid"], nerolab_uid);
    assert_eq!(
        metric_rows(&p, "fast.1"),
        7,
        "3 × (step, loss) + uid, once each"
    );
    assert!(lab.mum_pid().is_some(), "the agent runs on the login node");

    p.ok(&["start", "slow"]);
    p.wait_for_state("slow", "running");
    let out = p.neroman(&["abort", "slow", "--wait"]);
    assert!(text(&out).contains("slow: aborted"), "{}", text(&out));

    let out = p.neroman(&["restart", "fast", "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(metric_rows(&p, "fast.2"), 7);
    let agents = p.ok(&["agents"]);
    assert!(agents.contains("lab: neromum"), "{agents}");
    let clusters: serde_json::Value = serde_json::from_str(&p.ok(&["clusters", "--json"])).unwrap();
    let lab_report = clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == "lab")
        .unwrap();
    assert_eq!(lab_report["ok"], true, "{lab_report}");
    assert_eq!(lab_report["arch"], "x86_64", "{lab_report}");
    assert_eq!(lab_report["reached_by"], "ssh nerolab", "{lab_report}");
    assert!(lab_report["connect_secs"].is_number(), "{lab_report}");
    assert_eq!(
        lab_report["agent"]["pid"],
        lab.mum_pid().unwrap(),
        "{lab_report}"
    );
    p.ok(&["agents", "--stop"]);
    wait_until("the agent to stop", Duration::from_secs(20), || {
        lab.mum_pid()
            .is_none_or(|pid| unsafe { libc::kill(pid, 0) } != 0)
    });
    let agents = p.ok(&["agents"]);
    assert!(agents.contains("lab: no agent running"), "{agents}");
}

/// A copy of the lab's ssh config at a path of its own: neroman keys its master by the config
/// file, so a test that kills the master kills only its own. Dropped, it stops that master and
/// removes its control directory and the copy.
struct PrivateConfig {
    path: PathBuf,
}

impl PrivateConfig {
    fn new(name: &str) -> PrivateConfig {
        let path =
            std::env::temp_dir().join(format!("neronet-test-sshcfg-{name}-{}", std::process::id()));
        std::fs::copy(lab_config(), &path).unwrap();
        PrivateConfig { path }
    }
}

impl Drop for PrivateConfig {
    fn drop(&mut self) {
        if let Some((pid, ctl)) = master(&self.path) {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if let Some(dir) = ctl.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// neroman's control master for `cfg` (an `ssh -M ... -F cfg` process): its pid and its
/// control socket (`-S`).
fn master(cfg: &Path) -> Option<(i32, PathBuf)> {
    let cfg = cfg.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_master = args.first().is_some_and(|a| a == "ssh")
            && args.iter().any(|a| a == "-M")
            && args.contains(&cfg);
        let ctl = args.iter().skip_while(|a| *a != "-S").nth(1)?;
        is_master.then(|| (pid, PathBuf::from(ctl)))
    })
}

fn master_pid(cfg: &Path) -> Option<i32> {
    master(cfg).map(|(pid, _)| pid)
}

/// The pids of `neromum bridge` processes serving `workdir` on the login node.
fn bridges(workdir: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("neromum bridge") && cmdline.contains(workdir)).then_some(pid)
        })
        .collect()
}

/// The lab's sshd listener, stopped; started again by [`SshdStopped::start`] or, whatever
/// happens to the test, on drop.
struct SshdStopped {
    started: bool,
}

const SSHD_PID: &str = "/tmp/neronet-sshlab/sshd.pid";

fn sshd_listening() -> bool {
    std::net::TcpStream::connect("127.0.0.1:2222").is_ok()
}

impl SshdStopped {
    fn stop() -> SshdStopped {
        let pid: i32 = std::fs::read_to_string(SSHD_PID)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let guard = SshdStopped { started: false };
        wait_until("sshd to stop listening", Duration::from_secs(10), || {
            !sshd_listening()
        });
        guard
    }

    fn start(&mut self) {
        self.started = true;
        let out = Command::new("/usr/sbin/sshd")
            .args([
                "-f",
                "/tmp/neronet-sshlab/sshd_config",
                "-E",
                "/tmp/neronet-sshlab/sshd.log",
            ])
            .output()
            .expect("run sshd");
        assert!(
            out.status.success(),
            "sshd did not start again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(
            "sshd to listen again",
            Duration::from_secs(10),
            sshd_listening,
        );
    }
}

impl Drop for SshdStopped {
    fn drop(&mut self) {
        if !self.started && !sshd_listening() {
            self.start();
        }
    }
}

/// Regression guard for the SSH link: a control master killed mid-run, with sshd down while
/// neroman reconnects, must cost nothing — the watcher resumes quietly and every metric the runs
/// printed is stored exactly once.
#[test]
fn a_cut_connection_is_resumed_with_nothing_lost() {
    let cfg = PrivateConfig::new("cut");
    let lab = Lab::alone("cut", cfg.path.clone());
    let p = lab_project(
        "ssh-cut",
        &lab,
        &[("a", 40.0, 0.1, 0.0), ("b", 60.0, 0.1, 0.0)],
    );
    let watch = common::lo::Watch::start(&p);
    p.ok(&["start", "a,b"]);
    p.wait_all_in(&["a", "b"], "running");
    // The watcher holds its long-poll through a bridge on the login node (no CLI runs now).
    wait_until("the watcher's bridge", Duration::from_secs(30), || {
        !bridges(&lab.workdir).is_empty()
    });
    let master = master_pid(&cfg.path).expect("neroman's master for this test's config");

    // sshd goes away, then the master: the watcher has to connect anew and is refused.
    let mut sshd = SshdStopped::stop();
    unsafe { libc::kill(master, libc::SIGKILL) };
    wait_until(
        "the watcher to try connecting again",
        Duration::from_secs(30),
        || watch.log().contains("trying again"),
    );
    sshd.start();
    p.wait_all_in(&["a", "b"], "finished");
    assert_eq!(
        metric_rows(&p, "a.1"),
        81,
        "40 × (step, loss) + uid, once each"
    );
    assert_eq!(metric_rows(&p, "b.1"), 121);
    let log = watch.log();
    assert!(
        !log.contains("lost the connection") && !log.contains("not reached"),
        "a resumed connection is not reported:\n{log}"
    );
    // The watcher stored it: the workbook's results show both runs' last step.
    let st = p.status();
    assert_eq!(st[0]["metrics"]["step"], 39.0);
    assert_eq!(st[1]["metrics"]["step"], 59.0);
    drop(watch);
}

/// Regression guard for the upload: the static binaries go up once, stay while unchanged, and
/// go up again (only the one that differs) when the remote copy's checksum differs, as after a
/// rebuild of the same version. They need no shared library: they run in an empty chroot.
#[test]
fn binaries_are_uploaded_once_and_again_when_they_differ() {
    let lab = Lab::new("upload");
    let p = lab_project("ssh-upload", &lab, &[("x", 1.0, 0.0, 0.0)]);
    let bin = lab.bin_dir();
    let local = common::services::static_binaries();
    let out = p.neroman(&["-v", "agents"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("uploaded neromum, nerokid"),
        "{}",
        text(&out)
    );
    for b in ["neromum", "nerokid"] {
        assert!(
            std::fs::read(bin.join(b)).unwrap() == std::fs::read(local.join(b)).unwrap(),
            "{b} arrived intact"
        );
        let meta = std::fs::metadata(bin.join(b)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o755, "{b} is executable");
        assert_eq!(meta.uid(), 1001, "{b} belongs to nerolab");
    }
    let inode = |b: &str| std::fs::metadata(bin.join(b)).unwrap().ino();
    let (mum, kid) = (inode("neromum"), inode("nerokid"));

    let out = p.neroman(&["-v", "agents"]);
    assert!(!text(&out).contains("uploaded"), "{}", text(&out));
    assert_eq!((inode("neromum"), inode("nerokid")), (mum, kid));

    // A nerokid that differs (a rebuild of the same version): it alone goes up again.
    lab.ssh_ok(&format!("printf x >> {}/bin/*/nerokid", lab.workdir));
    let out = p.neroman(&["-v", "agents"]);
    assert!(text(&out).contains("uploaded nerokid ("), "{}", text(&out));
    assert_eq!(inode("neromum"), mum);
    assert_ne!(inode("nerokid"), kid);
    assert!(
        std::fs::read(bin.join("nerokid")).unwrap()
            == std::fs::read(local.join("nerokid")).unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&bin)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // Static: an empty root with nothing but the two binaries (and /proc) runs them.
    let root = p.path("chroot");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    for b in ["neromum", "nerokid"] {
        std::fs::copy(bin.join(b), root.join("bin").join(b)).unwrap();
        let out = Command::new("chroot")
            .arg(&root)
            .arg(format!("/bin/{b}"))
            .arg("--version")
            .output()
            .expect("run chroot");
        // A binary that needs a loader or a libc cannot even start there (chroot says 127).
        assert!(
            out.status.success()
                && text(&out).contains(&format!("{b} {}", env!("CARGO_PKG_VERSION"))),
            "{b} in an empty chroot ({}): {}",
            out.status,
            text(&out)
        );
    }
}

/// Whether the run directories under the remote workdir hold `n` ended runs (the kid's own
/// log, written on the login node whatever neroman does).
fn ended_remotely(lab: &Lab, n: usize) -> bool {
    let Ok(runs) = std::fs::read_dir(lab.remote_path("runs")) else {
        return false;
    };
    runs.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("events.jsonl"))
                .is_ok_and(|t| t.contains("\"event\":\"exited\""))
        })
        .count()
        >= n
}

/// The row of `id` on results.xlsx's `results` sheet, as text.
fn results_row(p: &Project, id: &str) -> Vec<String> {
    use calamine::Reader;
    let mut wb = calamine::open_workbook_auto(p.path("results.xlsx")).unwrap();
    let range = wb.worksheet_range("results").unwrap();
    range
        .rows()
        .find(|r| r.first().is_some_and(|c| *c == id))
        .unwrap_or_else(|| panic!("no row {id} in results.xlsx"))
        .iter()
        .map(|c| c.to_string())
        .collect()
}

/// Runs go on with no neroman anywhere (the CLI exited after submitting them): the next
/// command catches up with every state and metric, into the store and results.xlsx.
#[test]
fn neroman_away_while_runs_end_catches_up() {
    let lab = Lab::new("away");
    let p = lab_project(
        "ssh-away",
        &lab,
        &[("a", 10.0, 0.05, 0.0), ("b", 10.0, 0.05, 4.0)],
    );
    p.ok(&["start", "a,b"]);
    wait_until(
        "both runs to end on the login node",
        Duration::from_secs(60),
        || ended_remotely(&lab, 2),
    );
    let st = p.status();
    assert_eq!(st[0]["state"], "finished");
    assert_eq!(st[1]["state"], "crashed");
    assert_eq!(st[1]["exit_code"], 4);
    assert_eq!(
        metric_rows(&p, "a.1"),
        21,
        "10 × (step, loss) + uid, once each"
    );
    assert_eq!(metric_rows(&p, "b.1"), 21);
    let a = results_row(&p, "a");
    assert!(a.iter().any(|c| c == "finished"), "{a:?}");
    assert!(a.iter().any(|c| c == "9"), "the last step: {a:?}");
    let b = results_row(&p, "b");
    assert!(b.iter().any(|c| c == "crashed"), "{b:?}");
}

/// nerolab's .bashrc, replaced for a test and put back whatever happens.
struct ChattyBashrc {
    before: Option<Vec<u8>>,
}

const BASHRC: &str = "/home/nerolab/.bashrc";

impl ChattyBashrc {
    fn install(text: &str) -> ChattyBashrc {
        let before = std::fs::read(BASHRC).ok();
        std::fs::write(BASHRC, text).unwrap();
        ChattyBashrc { before }
    }
}

impl Drop for ChattyBashrc {
    fn drop(&mut self) {
        match &self.before {
            Some(b) => std::fs::write(BASHRC, b).unwrap(),
            None => std::fs::remove_file(BASHRC).unwrap(),
        }
    }
}

/// A login shell that prints a banner on stdout and stderr for every command (as some cluster
/// .bashrc files do) must not get in the way: uploads, the bridge, the probe all still work.
/// Regression: the jobs of an agent started over ssh inherited SSH_CLIENT, so bash read the
/// .bashrc into every job, and its `quota: 93% used` became a metric of the run.
#[test]
fn a_chatty_bashrc_is_no_obstacle() {
    let lab = Lab::alone("chatty", lab_config());
    let p = lab_project("ssh-chatty", &lab, &[("a", 3.0, 0.0, 0.0)]);
    let _bashrc = ChattyBashrc::install(
        "echo 'Welcome to the lab cluster!'\necho '{\"motd\": \"looks like JSON\"}'\necho 'quota: 93% used' >&2\n",
    );
    let banner = lab.ssh_ok("true");
    assert!(
        banner.contains("Welcome"),
        "the shell is chatty: {banner:?}"
    );
    let out = p.neroman(&["start", "a", "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    let names: Vec<String> = p
        .store()
        .prepare("SELECT name FROM metrics WHERE run_uid = 'a.1'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(metric_rows(&p, "a.1"), 7, "{names:?}");
    let out = p.neroman(&["clusters"]);
    assert!(out.status.success(), "{}", text(&out));
    let clusters = String::from_utf8_lossy(&out.stdout);
    assert!(clusters.contains("lab: ssh nerolab ok"), "{clusters}");
    assert!(clusters.contains("x86_64"), "{clusters}");
    assert!(clusters.contains("agent: neromum"), "{clusters}");
}

/// A login node that is not x86_64 is refused before anything is uploaded or started, with a
/// message that says why. nerolab's `.bashrc` puts a fake `uname` first on PATH that answers
/// `aarch64` to this test's commands only (it looks for the test's workdir in its parent's
/// command line), so tests beside it are undisturbed.
#[test]
fn a_login_node_of_another_arch_is_refused() {
    let lab = Lab::alone("arch", lab_config());
    let p = lab_project("ssh-arch", &lab, &[("a", 1.0, 0.0, 0.0)]);
    let fake = Path::new(REMOTE_HOME).join(format!(".{}-bin", lab.workdir));
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("uname"),
        format!(
            "#!/bin/sh\nif grep -q {} /proc/$PPID/cmdline 2>/dev/null; then echo aarch64; else exec /usr/bin/uname \"$@\"; fi\n",
            lab.workdir
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        fake.join("uname"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let _bashrc = ChattyBashrc::install(&format!("export PATH={}:$PATH\n", fake.display()));
    let out = p.neroman(&["start", "a"]);
    let _ = std::fs::remove_dir_all(&fake);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "cluster lab: login node is aarch64; neronet ships x86_64 static binaries only"
        ),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("nothing to start"),
        "the row is said undone with the cluster's error: {}",
        text(&out)
    );
    assert!(!lab.bin_dir().exists(), "nothing was uploaded");
}

/// `start --wait` holds its connection for the whole wait: its control master killed midway
/// costs nothing — the next round connects again and the command ends as if nothing happened.
#[test]
fn a_waiting_cli_goes_on_through_a_killed_master() {
    let cfg = PrivateConfig::new("wait");
    let lab = Lab::with_config("wait", cfg.path.clone(), false);
    let p = lab_project("ssh-wait", &lab, &[("a", 30.0, 0.1, 0.0)]);
    let waiting = p
        .command(&["start", "a", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the run to start", Duration::from_secs(30), || {
        std::fs::read_dir(lab.remote_path("runs")).is_ok_and(|mut d| d.next().is_some())
            && !bridges(&lab.workdir).is_empty()
    });
    let master = master_pid(&cfg.path).expect("neroman's master for this test's config");
    unsafe { libc::kill(master, libc::SIGKILL) };
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("a: finished"), "{}", text(&out));
    assert!(!text(&out).contains("warning"), "{}", text(&out));
    assert_eq!(
        metric_rows(&p, "a.1"),
        61,
        "30 × (step, loss) + uid, once each"
    );
    assert!(
        master_pid(&cfg.path).is_some_and(|m| m != master),
        "a new master carried the rest"
    );
}

/// `neroman clusters` on a SLURM cluster reached over ssh: the warden's own version and the
/// user's queue by state, from one probe beside the agent check. Needs the test SLURM.
#[test]
fn clusters_reports_a_slurm_warden_and_its_queue() {
    let ping = Command::new("scontrol").arg("ping").output();
    assert!(
        ping.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("is UP")),
        "the test SLURM is not up (`scontrol ping`): start it with scripts/services.sh — these tests never skip"
    );
    let lab = Lab::new("slurm");
    let p = Project::new(
        "ssh-slurm",
        &format!(
            "clusters:\n  hpc:\n    ssh: {ALIAS}\n    ssh_config: {}\n    warden: slurm\n    workdir: {}\n",
            lab.cfg.display(),
            lab.workdir
        ),
    );
    p.workbook(&["id", "status"], &[vec![V::S("1"), V::E]]);
    let job =
        // Named as neronet's jobs are: the queue line counts only those.
        lab.ssh_ok("sbatch --parsable -p debug -J neronet -o /dev/null --wrap 'sleep 60'");
    let job = job.trim().to_string();
    let out = p.neroman(&["clusters", "--json"]);
    lab.ssh(&format!("scancel {job}"));
    let reports: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let hpc = reports
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster"] == "hpc")
        .unwrap();
    assert_eq!(hpc["warden"]["kind"], "slurm", "{hpc}");
    assert_eq!(hpc["warden"]["found"], true, "{hpc}");
    assert!(
        hpc["warden"]["version"]
            .as_str()
            .unwrap()
            .starts_with("slurm"),
        "{hpc}"
    );
    let queued: u64 = hpc["queue"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(queued >= 1, "the job just submitted is in the queue: {hpc}");
    assert_eq!(
        hpc["agent"]["running"], false,
        "clusters starts no agent: {hpc}"
    );
    // Nor on this machine, for the `local` cluster.
    assert!(
        !p.path(".neronet/mum-local").exists(),
        "clusters started a local agent"
    );
}

/// Grid Engine behind the same sshd: the remote agent (user nerolab) submits with qsub, its
/// kids report over TCP to the login node, an abort reaches the kid, and every metric line is
/// stored once.
#[test]
fn grid_engine_over_ssh_runs_reports_and_aborts() {
    common::services::sge();
    let lab = Lab::new("sge");
    let yaml = format!(
        "clusters:\n  lab:\n    ssh: {ALIAS}\n    ssh_config: {}\n    workdir: {}\n    warden: sge\n    poll_interval: 1s\n    grace: 2s\n",
        lab.cfg.display(),
        lab.workdir
    );
    let p = project_with(
        "ssh-sge",
        &yaml,
        &[
            ("a", 4.0, 0.1, 0.0),
            ("b", 4.0, 0.1, 0.0),
            ("slow", 1000.0, 0.2, 0.0),
        ],
    );
    let out = p.ok(&["start", "a,b"]);
    assert!(out.contains("accepted by sge"), "{out}");
    wait_until("a and b finished", Duration::from_secs(90), || {
        p.status()
            .iter()
            .filter(|e| e["state"] == "finished")
            .count()
            == 2
    });
    let st = p.status();
    for e in &st[..2] {
        let job = e["job_id"].as_str().unwrap_or_default();
        assert!(
            job.split_once('.')
                .is_some_and(|(j, t)| j.parse::<u64>().is_ok() && t.parse::<u64>().is_ok()),
            "a Grid Engine task id: {e}"
        );
        assert!(!e["node"].as_str().unwrap_or_default().is_empty(), "{e}");
    }
    for run in ["a.1", "b.1"] {
        assert_eq!(metric_rows(&p, run), 9, "{run}: 4 × (step, loss) + uid");
    }
    // The agent listens for its kids on the login node.
    let addr = lab.ssh_ok(&format!("cat {}/kids.addr", lab.workdir));
    assert!(addr.trim().contains(':'), "{addr}");
    p.ok(&["start", "slow"]);
    p.wait_for_state("slow", "running");
    let out = p.neroman(&["abort", "slow", "--wait"]);
    assert!(text(&out).contains("slow: aborted"), "{}", text(&out));
    let kid_log = lab.ssh_ok(&format!("cat {}/runs/*-slow.1/kid.log", lab.workdir));
    assert!(
        kid_log.contains("mum asked to stop the job"),
        "the abort came over TCP: {kid_log}"
    );
}
