//! The `local` warden: a job is a process on mum's own machine, in its own session. A reaper
//! thread per job wakes mum the moment a kid exits, so a freed slot is refilled at once. Also
//! the run-directory layout every warden shares: `job.sh` (what the warden runs), `command.sh`
//! (the user's command and setup lines) and `kid.json`. Every value that reaches a script is
//! shell-quoted here.

use super::warden::{Found, JobRequest, JobState, Warden};
use crate::cluster::protocol::RunSpec;
use nerokid::report::SPEC_FILE;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// Wakes mum's main loop (a kid exited, a run was submitted).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// Plain processes on this machine.
pub struct LocalWarden {
    wake: Wake,
    /// Jobs this mum started, and whether each has exited (set by its reaper thread). For its
    /// own children mum knows exactly; /proc is only asked about jobs adopted after a restart.
    children: Arc<std::sync::Mutex<HashMap<u32, bool>>>,
}

impl LocalWarden {
    pub fn new(wake: Wake) -> LocalWarden {
        LocalWarden {
            wake,
            children: Arc::default(),
        }
    }
}

impl Warden for LocalWarden {
    fn submit(&mut self, jobs: &[JobRequest]) -> Vec<Result<String, String>> {
        jobs.iter()
            .map(|j| match launch(&j.run_dir) {
                Ok(mut child) => {
                    let pid = child.id();
                    let wake = Arc::clone(&self.wake);
                    let children = Arc::clone(&self.children);
                    children
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(pid, false);
                    // Reap it and wake mum the moment it exits: the slot is refilled at once.
                    std::thread::spawn(move || {
                        let _ = child.wait();
                        children
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(pid, true);
                        wake();
                    });
                    Ok(pid.to_string())
                }
                Err(e) => Err(format!("could not start the job script: {e}")),
            })
            .collect()
    }

    fn poll(&mut self, jobs: &[(String, JobRequest)]) -> HashMap<String, JobState> {
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        jobs.iter()
            .map(|(job, req)| {
                let pid: Option<u32> = job.parse().ok();
                let alive = match pid.and_then(|p| children.get(&p)) {
                    Some(exited) => !exited,
                    // Adopted after a restart: ask /proc (the pid must still be this run's).
                    None => pid.is_some_and(|p| kid_of(p as i32, &req.run_dir, true)),
                };
                let state = if alive {
                    JobState::Alive
                } else {
                    JobState::Gone
                };
                (job.clone(), state)
            })
            .collect()
    }

    fn cancel(&mut self, job: &str, req: &JobRequest) -> bool {
        let Ok(pid) = job.parse::<i32>() else {
            return false;
        };
        let ours_and_running = self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(pid as u32))
            .map(|exited| !exited);
        let target = match ours_and_running {
            Some(running) => running,
            None => kid_of(pid, &req.run_dir, false),
        };
        // SAFETY: kill(2) on our own unreaped child or a pid just verified to be this run's
        // kid; no memory is involved.
        target && unsafe { libc::kill(pid, libc::SIGTERM) == 0 }
    }

    fn find(&mut self, req: &JobRequest) -> Found {
        if let Some(pid) = find_kid(&req.run_dir) {
            return Found::Running(pid.to_string());
        }
        if req.run_dir.join(nerokid::report::EVENTS_FILE).exists() {
            Found::Ended
        } else {
            Found::Never
        }
    }

    fn clean_up(&mut self, req: &JobRequest, job_pgid: Option<i32>) {
        if let Some(pgid) = job_pgid {
            kill_group(pgid, &req.run_dir);
        }
    }
}

/// The pid of the process running this run's `job.sh` or its nerokid, found in /proc.
fn find_kid(run_dir: &Path) -> Option<i32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| kid_of(*pid, run_dir, false))
}

/// Is `pid` a live (not zombie) job script or nerokid of the run in `run_dir`? Guards against
/// pid reuse: the command line must name this run's directory.
fn kid_of(pid: i32, run_dir: &Path, mid_exec_counts: bool) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rfind(')')
        .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
    if zombie {
        return false;
    }
    if cmdline.is_empty() {
        // Mid-exec (job.sh becoming nerokid) the command line reads empty for a moment; a
        // poll counts that as alive (a kernel thread has none either: never for find/cancel).
        return mid_exec_counts && !stat.is_empty();
    }
    let dir = run_dir.as_os_str().as_encoded_bytes();
    let job = run_dir.join("job.sh");
    let job = job.as_os_str().as_encoded_bytes();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_job_script = args.iter().take(3).any(|a| *a == job);
    let is_kid = args.windows(2).any(|w| w[0] == b"--dir" && w[1] == dir)
        && args.first().is_some_and(|a| a.ends_with(b"nerokid"));
    is_job_script || is_kid
}

/// Hold an exclusive lock on the workdir for this process's lifetime; `None` if another mum has it.
pub fn lock_workdir(workdir: &Path) -> io::Result<Option<File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(workdir.join(crate::cluster::workdir_lock::LOCK_FILE))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        };
    }
    crate::cluster::workdir_lock::record(&f)?;
    Ok(Some(f))
}

/// [`lock_workdir`], retried for up to `wait` while another mum (one handing over) holds it.
pub fn lock_workdir_wait(workdir: &Path, wait: std::time::Duration) -> io::Result<Option<File>> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(f) = lock_workdir(workdir)? {
            return Ok(Some(f));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn quote(s: &str) -> io::Result<String> {
    shlex::try_quote(s).map(|c| c.into_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot quote {s:?} (NUL byte)"),
        )
    })
}

/// Create the run directory with its scripts and kid spec.
pub fn write_run_dir(run_dir: &Path, spec: &RunSpec, kid_binary: &Path) -> io::Result<()> {
    std::fs::create_dir_all(run_dir)?;
    let kid_json = serde_json::to_vec_pretty(&spec.kid).map_err(io::Error::other)?;
    std::fs::write(run_dir.join(SPEC_FILE), kid_json)?;
    if !spec.warden_opts.is_empty() {
        // For a warden that reads them (SLURM's `#SBATCH` lines); checked there.
        let opts = serde_json::to_vec(&spec.warden_opts).map_err(io::Error::other)?;
        std::fs::write(run_dir.join(super::slurm::OPTIONS_FILE), opts)?;
    }

    // bash when the machine has it: setup lines like `source venv/bin/activate` are bash.
    let bash = Path::new("/bin/bash").exists();
    let mut command = String::from("# The experiment's command, generated by neromum.\n");
    // A failing setup line (a missing venv, a module that does not load) stops the run with a
    // message instead of running the command in the wrong environment.
    if bash && !spec.setup.is_empty() {
        // The lines stay as written (continuations, if/fi across lines work); bash's ERR trap
        // catches a failing command as `set -e` would, and both are undone for the command.
        command.push_str(
            "trap 'neronet_rc=$?; echo \"neronet: a setup line failed (exit $neronet_rc): $BASH_COMMAND\" >&2; exit 125' ERR\n",
        );
        for line in &spec.setup {
            command.push_str(line);
            command.push('\n');
        }
        command.push_str("trap - ERR\nset +e\n");
    } else {
        for (n, line) in spec.setup.iter().enumerate() {
            command.push_str(&format!(
                "{line}\n{{ s=$?; [ $s -eq 0 ] || {{ echo {} >&2; exit 125; }}; }}\n",
                quote(&format!("neronet: setup line {} failed: {line}", n + 1))?
            ));
        }
    }
    command.push_str(&spec.command);
    command.push('\n');
    std::fs::write(run_dir.join("command.sh"), &command)?;

    let mut job = format!(
        "#!/bin/sh\n# Generated by neromum for run {}: runs the command under nerokid.\n",
        spec.run
    );
    // The run's number (1, 2, ... as `logs --run N` and results say); the run's uid ends with it.
    let run_no = spec.run.rsplit('.').next().unwrap_or(&spec.run);
    job.push_str(&format!("export NERO_RUN={}\n", quote(run_no)?));
    for (k, v) in &spec.env {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad environment variable name {k:?}"),
            ));
        }
        job.push_str(&format!("export {k}={}\n", quote(v)?));
    }
    // Where the command starts: the project directory on this machine (neroman sends it), else
    // the run's own directory — not wherever the scheduler starts the array's script, which
    // every task of the array shares (relative output files would collide there).
    let cwd = spec
        .cwd
        .clone()
        .unwrap_or_else(|| run_dir.display().to_string());
    job.push_str(&format!("cd {} || exit 125\n", quote(&cwd)?));
    let shell = if bash { "/bin/bash" } else { "/bin/sh" };
    let script = quote(&run_dir.join("command.sh").display().to_string())?;
    // `bash -c TEXT` runs the last command of TEXT in its own process (exec), where `bash FILE`
    // forks it: then a job killed by a signal is seen by the kid as that signal, not as the
    // shell's exit 128+N. An argument is limited to 128 KiB: a longer script runs as a file.
    let run_script = if command.len() < 100 << 10 {
        // An unreadable script must fail the run, not run as an empty one (exit 0).
        job.push_str(&format!("neronet_script=$(cat {script}) || exit 125\n"));
        format!("-c \"$neronet_script\" {script}")
    } else {
        script
    };
    // The kid reports to the mum of this workdir over TCP too (runs/<name> → the workdir).
    let report = match run_dir.parent().and_then(Path::parent) {
        Some(workdir) => format!(" --report-to {}", quote(&workdir.display().to_string())?),
        None => String::new(),
    };
    job.push_str(&format!(
        "exec {} run --dir {}{report} -- {shell} {run_script}\n",
        quote(&kid_binary.display().to_string())?,
        quote(&run_dir.display().to_string())?,
    ));
    std::fs::write(run_dir.join("job.sh"), job)
}

/// Start `job.sh` as a process of its own session, so it outlives mum.
pub fn launch(run_dir: &Path) -> io::Result<Child> {
    let kid_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("kid.log"))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg(run_dir.join("job.sh"))
        .current_dir(run_dir)
        .stdin(Stdio::null())
        .stdout(kid_log.try_clone()?)
        .stderr(kid_log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Can `path` be run: an executable file, or a bare name found on PATH?
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if path.components().count() > 1 {
        return ok(path);
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| ok(&d.join(path))))
}

/// `: <last lines of kid.log>` when the job script or kid left words there, else nothing.
pub fn kid_log_tail(run_dir: &Path) -> String {
    let text = std::fs::read_to_string(run_dir.join("kid.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.len() {
        0 => String::new(),
        n => format!(": {}", lines[n.saturating_sub(3)..].join(" / ")),
    }
}

/// SIGKILL what is left of a lost job: the processes of its process group that carry this run's
/// `NERO_RUN_DIR` (so a recycled pid or group is never touched).
pub fn kill_group(pgid: i32, run_dir: &Path) {
    let marker = format!("NERO_RUN_DIR={}", run_dir.display());
    for p in nerokid::probe::group_processes(pgid) {
        let environ = std::fs::read(format!("/proc/{}/environ", p.pid)).unwrap_or_default();
        if environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_bytes())
        {
            // SAFETY: kill(2) on a pid just verified to belong to this run; no memory is involved.
            unsafe {
                libc::kill(p.pid, libc::SIGKILL);
            }
        }
    }
}
