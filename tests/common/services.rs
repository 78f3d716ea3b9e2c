//! The real services the integration tests use, as `scripts/test.sh` starts them (functions in
//! `scripts/services.sh`): a one-node SLURM, a one-node Grid Engine, two sshd "login nodes" for the user `nerolab` that
//! share its home, and the static (musl) cluster binaries. Each accessor checks its service and
//! panics saying what to run when it is missing: a test that needs a service fails, never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Keys, configs and logs of the sshd login nodes (root-only).
pub const LAB_DIR: &str = "/tmp/neronet-sshlab";
/// The second login node's hostname (its own UTS namespace).
pub const LOGIN2_HOSTNAME: &str = "lab2";

/// Panics unless SLURM's controller answers `scontrol ping` with UP.
pub fn slurm() {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        let out = Command::new("scontrol")
            .arg("ping")
            .output()
            .map_err(|e| format!("scontrol: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("is UP") {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    });
    if let Err(why) = up {
        panic!("SLURM is not running: run scripts/test.sh (need_slurm) ({why})");
    }
}

/// Panics unless Grid Engine answers: `qstat -f` lists a usable `all.q` queue instance.
pub fn sge() {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let up = UP.get_or_init(|| {
        let out = Command::new("qstat")
            .args(["-f", "-q", "all.q"])
            .output()
            .map_err(|e| format!("qstat: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `all.q@vm  BI  0/0/2  0.5  lx-amd64` and no state letters (`u`nknown, `d`isabled).
        let usable = text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first().is_some_and(|q| q.starts_with("all.q@")) && f.len() == 5
        });
        if out.status.success() && usable {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    });
    if let Err(why) = up {
        panic!("Grid Engine is not running: run scripts/test.sh (need_sge) ({why})");
    }
}

/// One login node reached with `ssh -F config alias`, as the user `user` whose home is `home`.
#[derive(Debug, Clone)]
pub struct SshLab {
    pub config: PathBuf,
    pub alias: String,
    pub user: String,
    pub home: PathBuf,
}

impl SshLab {
    /// `ssh -F config alias`, ready for the remote command as further arguments.
    pub fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(&self.config).arg(&self.alias);
        c
    }

    /// Run a shell command line there; its output whatever the status.
    pub fn run(&self, command: &str) -> Output {
        self.ssh()
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ssh {}: {e}", self.alias))
    }

    /// Run a shell command line there and return its stdout; panics when it fails.
    pub fn ok(&self, command: &str) -> String {
        let out = self.run(command);
        assert!(
            out.status.success(),
            "ssh {} {command:?}: {}; stderr: {}",
            self.alias,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The first login node: this machine's sshd on 127.0.0.1:2222, alias `nerolab`.
pub fn ssh_lab() -> SshLab {
    static LAB: OnceLock<Result<SshLab, String>> = OnceLock::new();
    match LAB.get_or_init(|| lab("nerolab")) {
        Ok(lab) => lab.clone(),
        Err(why) => panic!(
            "the sshd for nerolab is not running: run scripts/test.sh (need_sshd_lab) ({why})"
        ),
    }
}

/// The second login node: sshd on 10.77.0.2:22 in the network namespace `neronet-lab2`, with
/// hostname `lab2` and the same /home/nerolab; alias `nerolab2`.
pub fn login2() -> SshLab {
    static LAB: OnceLock<Result<SshLab, String>> = OnceLock::new();
    match LAB.get_or_init(|| lab("nerolab2")) {
        Ok(lab) => lab.clone(),
        Err(why) => panic!(
            "the second login node (nerolab2) is not running: run scripts/test.sh (need_login2) ({why})"
        ),
    }
}

fn lab(alias: &str) -> Result<SshLab, String> {
    let user = "nerolab".to_string();
    let passwd = Command::new("getent")
        .args(["passwd", &user])
        .output()
        .map_err(|e| format!("getent: {e}"))?;
    let home = String::from_utf8_lossy(&passwd.stdout)
        .trim()
        .split(':')
        .nth(5)
        .map(PathBuf::from)
        .ok_or_else(|| format!("no user {user}"))?;
    let lab = SshLab {
        config: Path::new(LAB_DIR).join("ssh_config"),
        alias: alias.to_string(),
        user,
        home,
    };
    if !lab.config.is_file() {
        return Err(format!("{} is missing", lab.config.display()));
    }
    let out = lab.run("true");
    if !out.status.success() {
        return Err(format!(
            "`ssh -F {} {alias} true`: {}, {}",
            lab.config.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(lab)
}

/// The build command of the static cluster binaries (what `scripts/test.sh` runs).
pub const STATIC_BUILD: &str =
    "cargo build --release --target x86_64-unknown-linux-musl --bin neromum --bin nerokid";

/// Where the static neromum and nerokid are: target/x86_64-unknown-linux-musl/release. Panics
/// naming the build command when they are missing or older than the sources.
pub fn static_binaries() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join("x86_64-unknown-linux-musl/release");
    // neromum is built from both crates, nerokid from the kid crate alone (cargo relinks a
    // binary only when its own sources changed).
    let kid_sources = super::walk_newest(&root.join("kid/src"));
    let all_sources = super::walk_newest(&root.join("src")).max(kid_sources);
    for (name, sources) in [("neromum", all_sources), ("nerokid", kid_sources)] {
        let p = dir.join(name);
        let built = std::fs::metadata(&p).and_then(|m| m.modified());
        match built {
            Err(_) => panic!("{} is missing: run `{STATIC_BUILD}`", p.display()),
            Ok(t) if t < sources => panic!(
                "{} is older than the sources: run `{STATIC_BUILD}`",
                p.display()
            ),
            Ok(_) => {}
        }
    }
    dir
}
