//! Runs on a cluster reached over SSH, against the real sshd the test script starts (user
//! `nerolab` on 127.0.0.1:2222, alias `nerolab` in /tmp/neronet-sshlab/ssh_config): neroman
//! uploads the static neromum/nerokid, starts the agent through `neromum bridge`, and keeps
//! going through a killed control master and a restarted sshd. Each test has a workdir of its
//! own in nerolab's home; the one that cuts connections has a master of its own.

mod common;
use common::{wait_until, Project, V};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LAB_DIR: &str = "/tmp/neronet-sshlab";
const ALIAS: &str = "nerolab";
const REMOTE_HOME: &str = "/home/nerolab";

/// Tests that restart sshd or change nerolab's .bashrc take this, so they do not overlap.
static LAB_WIDE: Mutex<()> = Mutex::new(());

fn lab_config() -> PathBuf {
    let cfg = Path::new(LAB_DIR).join("ssh_config");
    let ok = cfg.is_file()
        && Command::new("ssh")
            .arg("-F")
            .arg(&cfg)
            .args([ALIAS, "true"])
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the test sshd is not reachable (`ssh -F {} {ALIAS} true` failed): start it with \
         scripts/services.sh (or /work/shared/notes/recipes/sshd-up.sh with \
         DIR={LAB_DIR} ALIAS={ALIAS} SSH_USER={ALIAS}) — these tests never skip",
        cfg.display()
    );
    cfg
}

/// The static binaries neroman uploads; the test script builds them.
fn static_dir() -> PathBuf {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-unknown-linux-musl/release");
    for b in ["neromum", "nerokid"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build the static binaries first: \
             cargo build --release --target x86_64-unknown-linux-musl --bin neromum --bin nerokid",
            dir.join(b).display()
        );
    }
    dir
}

/// One test's cluster on nerolab: its own remote workdir, removed (agent stopped) at the end.
struct Lab {
    cfg: PathBuf,
    workdir: String,
}

impl Lab {
    fn new(name: &str) -> Lab {
        Lab::with_config(name, lab_config())
    }

    fn with_config(name: &str, cfg: PathBuf) -> Lab {
        static_dir();
        let workdir = format!(
            "neronet-test-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().subsec_nanos() % 1000
        );
        let lab = Lab { cfg, workdir };
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

    fn bin_dir(&self) -> PathBuf {
        self.remote_path(&format!("bin/{}", env!("CARGO_PKG_VERSION")))
    }

    fn mum_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.remote_path("mum.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(pid) = self.mum_pid() {
            if std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("neromum"))
            {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(Path::new(REMOTE_HOME).join(&self.workdir));
        }
    }
}

/// A shell job for the remote side: `n` lines of `step=i loss=...` with `pause` between them,
/// the uid it ran as, then exit `code`.
const JOB: &str = "i=0; while [ $i -lt {n} ]; do echo step=$i loss=0.$i; i=$((i+1)); sleep {pause}; done; echo uid=$(id -u); exit {code}";

fn lab_project(name: &str, lab: &Lab, rows: &[(&str, f64, f64, f64)]) -> Project {
    let p = Project::new(name, &lab.yaml());
    p.workbook(
        &["id", "status", "cluster", "command", "n", "pause", "code"],
        &rows
            .iter()
            .map(|(id, n, pause, code)| {
                vec![
                    V::S(id),
                    V::E,
                    V::S("lab"),
                    V::S(JOB),
                    V::N(*n),
                    V::N(*pause),
                    V::N(*code),
                ]
            })
            .collect::<Vec<_>>(),
    );
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
    p.ok(&["agents", "--stop"]);
    wait_until("the agent to stop", Duration::from_secs(20), || {
        lab.mum_pid()
            .is_none_or(|pid| unsafe { libc::kill(pid, 0) } != 0)
    });
    let agents = p.ok(&["agents"]);
    assert!(agents.contains("lab: no agent running"), "{agents}");
}
