//! One mum per workdir across login nodes that share a home directory: a bridge reached on one
//! login node, finding the workdir served by a mum on another, hops there with ssh instead of
//! starting a second mum. Two real sshd login nodes (scripts/services.sh): `nerolab` is this
//! machine, `nerolab2` is host `lab2` (own network and UTS namespace, same /home/nerolab).
//!
//! Both nodes share this machine's kernel, so lab2 could connect to the mum's unix socket
//! directly (on a cluster the socket on NFS is only reachable on the node that made it): the test
//! proves the hop by the processes it sees — the far bridge runs with `--hopped-from lab2` in the
//! mum's UTS namespace — and by what the hopping bridge logs.

mod common;

use common::services::{self, SshLab, LOGIN2_HOSTNAME};
use neronet::cluster::protocol::{self, Hello, HelloReply, Request, Response, PROTOCOL_VERSION};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A test directory in nerolab's home: the static binaries in `bin/`, the workdir `wd/`.
struct LabDir {
    dir: PathBuf,
}

impl LabDir {
    fn new(home: &Path, user: &str) -> LabDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = home.join(format!("neronet-test-login-{}-{nanos}", std::process::id()));
        let built = services::static_binaries();
        let bin = dir.join("bin");
        run(Command::new("install")
            .args(["-d", "-o", user, "-g", user, "-m", "0755"])
            .arg(&dir)
            .arg(&bin));
        run(Command::new("install")
            .args(["-o", user, "-g", user, "-m", "0755"])
            .arg(built.join("neromum"))
            .arg(built.join("nerokid"))
            .arg(&bin));
        LabDir { dir }
    }

    fn workdir(&self) -> PathBuf {
        self.dir.join("wd")
    }

    /// The bridge command a login node runs (as neroman would send it through ssh).
    fn bridge(&self, log: bool) -> String {
        format!(
            "{}{}/bin/neromum bridge --workdir {} --kid {}/bin/nerokid --idle-exit 120",
            if log { "RUST_LOG=info " } else { "" },
            self.dir.display(),
            self.workdir().display(),
            self.dir.display()
        )
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        // Stop this test's mums (found by their exact workdir), then remove the directory.
        for p in procs() {
            if p.serves(&self.workdir()) {
                unsafe { libc::kill(p.pid, libc::SIGTERM) };
                common::wait_until("the test's mum to exit", Duration::from_secs(10), || {
                    !alive(p.pid)
                });
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One protocol connection through `ssh <login node> neromum bridge ...`.
struct Conn {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    node: String,
}

impl Conn {
    fn open(lab: &SshLab, command: &str) -> Conn {
        let mut child = lab
            .ssh()
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Conn {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            node: lab.alias.clone(),
        }
    }

    fn hello(&mut self) -> HelloReply {
        let hello = Request::from(Hello {
            version: PROTOCOL_VERSION,
            client: "login_nodes test".into(),
            max_parallel: Some(2),
            project: None,
        });
        protocol::send(self.stdin.as_mut().unwrap(), &hello).unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no hello reply through {} ({e})", self.node));
        match protocol::decode::<Response>(line.as_bytes()) {
            Ok(Response::Hello(h)) => h,
            other => panic!("through {}: {other:?}", self.node),
        }
    }

    /// End the connection (stdin closes: the bridges end); what the bridge said on stderr.
    fn close(mut self) -> String {
        drop(self.stdin.take());
        let node = self.node.clone();
        common::wait_until(
            &format!("the bridge through {node} to end"),
            Duration::from_secs(20),
            || self.child.try_wait().unwrap().is_some(),
        );
        self.stderr.join().unwrap()
    }
}

/// A process as /proc shows it: its arguments and UTS namespace (its "host").
struct Proc {
    pid: i32,
    args: Vec<String>,
    uts: String,
}

impl Proc {
    fn serves(&self, workdir: &Path) -> bool {
        self.args.get(1).is_some_and(|a| a == "serve") && self.names(workdir)
    }

    fn bridges(&self, workdir: &Path) -> bool {
        self.args.get(1).is_some_and(|a| a == "bridge") && self.names(workdir)
    }

    fn names(&self, workdir: &Path) -> bool {
        self.args
            .windows(2)
            .any(|w| w[0] == "--workdir" && Path::new(&w[1]) == workdir)
            && self.args[0].ends_with("neromum")
    }

    fn hopped_from(&self) -> Option<&str> {
        self.args
            .windows(2)
            .find(|w| w[0] == "--hopped-from")
            .map(|w| w[1].as_str())
    }
}

fn procs() -> Vec<Proc> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Ok(uts) = std::fs::read_link(format!("/proc/{pid}/ns/uts")) else {
            continue;
        };
        if !alive(pid) {
            continue;
        }
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push(Proc {
            pid,
            args,
            uts: uts.to_string_lossy().into_owned(),
        });
    }
    found
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

fn own_uts() -> String {
    std::fs::read_link("/proc/self/ns/uts")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn this_host() -> String {
    neronet::cluster::workdir_lock::this_host()
}

#[test]
fn one_mum_per_workdir_across_login_nodes() {
    let lab1 = services::ssh_lab();
    let lab2 = services::login2();
    assert_eq!(lab1.ok("hostname").trim(), this_host());
    assert_eq!(lab2.ok("hostname").trim(), LOGIN2_HOSTNAME);
    let lab = LabDir::new(&lab1.home, &lab1.user);
    let wd = lab.workdir();

    // Reached first on this machine: the bridge starts the mum here.
    let mut first = Conn::open(&lab1, &lab.bridge(false));
    let here = first.hello();
    let lock = std::fs::read_to_string(wd.join("mum.lock")).unwrap();
    assert_eq!(lock.trim(), format!("{} on {}", here.pid, this_host()));

    // Then on lab2, the same home: its bridge hops to this machine's mum.
    let mut second = Conn::open(&lab2, &lab.bridge(true));
    let there = second.hello();
    assert_eq!(there.pid, here.pid, "both login nodes reach the same mum");
    assert_eq!(there.epoch, here.epoch);

    let ps = procs();
    let mums: Vec<&Proc> = ps.iter().filter(|p| p.serves(&wd)).collect();
    assert_eq!(mums.len(), 1, "exactly one mum for the workdir");
    assert_eq!(mums[0].pid as u32, here.pid);
    assert_eq!(mums[0].uts, own_uts(), "the mum runs on this machine");
    let bridges: Vec<&Proc> = ps.iter().filter(|p| p.bridges(&wd)).collect();
    // lab2's bridge (in lab2's UTS namespace), and the one it started here through ssh.
    let on_lab2: Vec<&&Proc> = bridges.iter().filter(|p| p.uts != own_uts()).collect();
    assert_eq!(on_lab2.len(), 1, "one bridge on lab2: {:?}", args(&bridges));
    assert_eq!(on_lab2[0].hopped_from(), None);
    let hopped: Vec<&&Proc> = bridges
        .iter()
        .filter(|p| p.hopped_from() == Some(LOGIN2_HOSTNAME))
        .collect();
    assert_eq!(hopped.len(), 1, "one hopped bridge: {:?}", args(&bridges));
    assert_eq!(hopped[0].uts, own_uts(), "the hop lands where the mum runs");

    let said = second.close();
    assert!(
        said.contains(&format!("bridging through `ssh {}`", this_host())),
        "lab2's bridge log: {said}"
    );
    assert!(
        said.contains(&format!("pid {} on {}", here.pid, this_host())),
        "{said}"
    );
    first.close();

    // The mum dies (its lock goes with it): the next bridge, on lab2, starts one there, and a
    // bridge here now hops to lab2.
    unsafe { libc::kill(here.pid as i32, libc::SIGKILL) };
    common::wait_until("the killed mum to be gone", Duration::from_secs(10), || {
        !alive(here.pid as i32)
    });
    let mut third = Conn::open(&lab2, &lab.bridge(false));
    let on2 = third.hello();
    assert_ne!(on2.pid, here.pid);
    let lock = std::fs::read_to_string(wd.join("mum.lock")).unwrap();
    assert_eq!(lock.trim(), format!("{} on {LOGIN2_HOSTNAME}", on2.pid));
    let mut fourth = Conn::open(&lab1, &lab.bridge(true));
    assert_eq!(fourth.hello().pid, on2.pid);
    let ps = procs();
    let mums: Vec<&Proc> = ps.iter().filter(|p| p.serves(&wd)).collect();
    assert_eq!(mums.len(), 1, "exactly one mum for the workdir");
    assert_ne!(mums[0].uts, own_uts(), "the mum runs on lab2");
    let hopped: Vec<&Proc> = ps
        .iter()
        .filter(|p| p.bridges(&wd) && p.hopped_from() == Some(&this_host()))
        .collect();
    assert_eq!(hopped.len(), 1);
    assert_eq!(hopped[0].uts, mums[0].uts, "the hop lands on lab2");
    let said = fourth.close();
    assert!(
        said.contains(&format!("bridging through `ssh {LOGIN2_HOSTNAME}`")),
        "this machine's bridge log: {said}"
    );
    third.close();
}

fn args(ps: &[&Proc]) -> Vec<String> {
    ps.iter()
        .map(|p| format!("{} [{}] {}", p.pid, p.uts, p.args.join(" ")))
        .collect()
}

/// A lock held by a mum on a host this one cannot reach: the bridge says which host and what
/// ssh said, and starts no mum of its own.
#[test]
fn a_bridge_that_cannot_reach_the_agents_host_says_so_and_starts_none() {
    use std::os::unix::io::AsRawFd;
    let wd = tempfile::tempdir().unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(wd.path().join("mum.lock"))
        .unwrap();
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    (&lock).write_all(b"4242 on nosuchhost.invalid\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_neromum"))
        .arg("bridge")
        .arg("--workdir")
        .arg(wd.path())
        .arg("--kid")
        .arg(common::nerokid_bin())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("runs on nosuchhost.invalid (pid 4242 on nosuchhost.invalid)")
            && stderr.contains("`ssh nosuchhost.invalid`, which failed")
            && stderr.contains("Could not resolve hostname"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    // No mum was started: it would have made its log and socket.
    assert!(!wd.path().join("mum.log").exists());
    assert!(!wd.path().join("mum.sock").exists());
    assert!(!procs().iter().any(|p| p.serves(wd.path())));
}
