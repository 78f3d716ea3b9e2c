//! Looking at the machine and the job's processes through `/proc`: the environment report taken
//! once at start, and the CPU / RSS samples of the job's process group taken while it runs.

use crate::report::{now, EnvReport};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// Scheduler variables worth keeping in the environment report.
const SCHEDULER_VARS: &[&str] = &[
    "SLURM_JOB_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_PARTITION",
    "SLURM_ARRAY_TASK_ID",
    "JOB_ID",
    "SGE_TASK_ID",
    "QUEUE",
    "CUDA_VISIBLE_DEVICES",
];

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn mem_total_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Run a probe command with a short output; `None` if it is missing or fails.
fn probe(cmd: &str, args: &[&str], cwd: &Path) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn env_report(cwd: &Path) -> EnvReport {
    let gpus = probe(
        "nvidia-smi",
        &["--query-gpu=name,memory.total", "--format=csv,noheader"],
        cwd,
    )
    .map(|s| {
        s.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    })
    .unwrap_or_default();
    let git_commit = probe("git", &["rev-parse", "HEAD"], cwd).filter(|s| s.len() >= 7);
    let scheduler: BTreeMap<String, String> = SCHEDULER_VARS
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    EnvReport {
        host: hostname(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_bytes: mem_total_bytes(),
        gpus,
        git_commit,
        cwd: cwd.display().to_string(),
        user: std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| unsafe_uid_name()),
        kid_version: env!("CARGO_PKG_VERSION").into(),
        started_at: now(),
        scheduler,
    }
}

fn unsafe_uid_name() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    format!("uid {uid}")
}

/// One reading of a process group.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupSample {
    pub cpu_ticks: u64,
    pub rss_pages: u64,
    pub processes: u32,
}

/// What `/proc/<pid>/stat` says of one live process (zombies are left out).
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub pid: i32,
    pub cpu_ticks: u64,
    pub rss_pages: u64,
}

/// The live processes whose process group is `pgid`.
pub fn group_processes(pgid: i32) -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        // f[0] is field 3 (state): pgrp = field 5, utime 14, stime 15, rss 24.
        let field = |n: usize| {
            f.get(n - 3)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        if field(5) as i32 != pgid || f.first() == Some(&"Z") {
            continue;
        }
        out.push(ProcStat {
            pid,
            cpu_ticks: (field(14) + field(15)).max(0) as u64,
            rss_pages: field(24).max(0) as u64,
        });
    }
    out
}

/// Sum CPU time and RSS over every process whose process group is `pgid`.
pub fn sample_group(pgid: i32) -> GroupSample {
    let procs = group_processes(pgid);
    GroupSample {
        cpu_ticks: procs.iter().map(|p| p.cpu_ticks).sum(),
        rss_pages: procs.iter().map(|p| p.rss_pages).sum(),
        processes: procs.len() as u32,
    }
}

pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf is always safe to call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf is always safe to call.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}
