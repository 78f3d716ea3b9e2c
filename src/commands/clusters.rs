//! `neroman clusters [--json]`: for each configured cluster, whether it is reached (SSH and how
//! long that took), the login node's architecture, the agent (version, pid, runs) without
//! starting one, the warden's commands, and what is queued. Probing a remote cluster costs one
//! remote command beside the agent's bridge, both on the host's one SSH master, in parallel.

use super::exit;
use super::output::outln;
use crate::cluster::client::{ClientError, LocalMum, MumClient, Transport};
use crate::cluster::ssh;
use crate::config::Warden;
use crate::project::Project;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct ClusterReport {
    pub cluster: String,
    /// `ssh HOST`, or `this machine`.
    pub reached_by: String,
    /// Whether this cluster was reached and answered as expected.
    pub ok: bool,
    /// Seconds the SSH connection took (none for this machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_secs: Option<f64>,
    /// A master another neroman started was reused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_reused: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    pub agent: AgentReport,
    pub warden: WardenReport,
    /// Jobs by state: neronet's jobs in the warden's queue (job name `neronet`) for a batch
    /// warden, the agent's counts for `local`.
    pub queue: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct AgentReport {
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct WardenReport {
    pub kind: String,
    pub found: bool,
    /// What the warden's own command says about itself (`slurm 22.05.8`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

pub fn run(dir: &Path, json: bool) -> anyhow::Result<i32> {
    let project = Project::open(dir)?;
    // Each cluster in a thread of its own: a slow or unreachable one does not hold the others.
    let clusters: Vec<(String, Warden, LocalMum)> = project
        .config
        .clusters
        .iter()
        .map(|(name, c)| (name.clone(), c.warden(), project.mum_for(name, false)))
        .collect();
    let reports: Vec<ClusterReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = clusters
            .iter()
            .map(|(name, warden, m)| scope.spawn(move || probe(name, *warden, m)))
            .collect();
        handles
            .into_iter()
            .zip(clusters.iter().map(|c| &c.0))
            .map(|(h, name)| {
                h.join().unwrap_or_else(|_| ClusterReport {
                    cluster: name.clone(),
                    error: Some("the probe failed".into()),
                    ..Default::default()
                })
            })
            .collect()
    });
    let trouble = reports.iter().any(|r| !r.ok);
    if json {
        outln!("{}", serde_json::to_string_pretty(&reports)?)?;
    } else {
        for r in &reports {
            print_report(r)?;
        }
    }
    Ok(if trouble { exit::ERROR } else { exit::OK })
}

fn print_report(r: &ClusterReport) -> anyhow::Result<()> {
    let mut head = format!("{}: {}", r.cluster, r.reached_by);
    if let Some(secs) = r.connect_secs {
        let how = if r.connection_reused == Some(true) {
            "connection reused"
        } else {
            "connected"
        };
        head.push_str(&format!(" ok ({how} in {secs:.2} s)"));
    }
    if let Some(arch) = &r.arch {
        head.push_str(&format!(", {arch}"));
    }
    if let Some(e) = &r.error {
        head.push_str(&format!(" FAILED: {e}"));
        outln!("{head}")?;
        return Ok(());
    }
    outln!("{head}")?;
    let a = &r.agent;
    let agent = match (a.running, &a.problem) {
        (true, None) => format!(
            "neromum {} pid {}",
            a.version.as_deref().unwrap_or("?"),
            a.pid.unwrap_or(0)
        ),
        (true, Some(p)) => format!(
            "neromum {} pid {}; PROBLEM: {p}",
            a.version.as_deref().unwrap_or("?"),
            a.pid.unwrap_or(0)
        ),
        (false, Some(p)) => format!("PROBLEM: {p}"),
        (false, None) => "no agent running".into(),
    };
    outln!("  agent: {agent}")?;
    let w = &r.warden;
    let warden = match (&w.version, w.found) {
        (Some(v), _) => format!("{} ({v})", w.kind),
        (None, true) => w.kind.clone(),
        (None, false) => format!("{} NOT FOUND", w.kind),
    };
    outln!("  warden: {warden}")?;
    let queue: Vec<String> = r.queue.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let whose = if w.kind == "local" {
        "the agent's runs"
    } else {
        "neronet's jobs"
    };
    outln!(
        "  queue ({whose}): {}",
        if queue.is_empty() {
            "empty".into()
        } else {
            queue.join(", ")
        }
    )?;
    Ok(())
}

/// What one cluster says: its connection, a probe command and its agent, the last two at once.
fn probe(name: &str, warden: Warden, m: &LocalMum) -> ClusterReport {
    let mut r = ClusterReport {
        cluster: name.to_string(),
        ok: true,
        warden: WardenReport {
            kind: warden.as_str().into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let script = probe_script(warden);
    let link = match &m.transport {
        Transport::Ssh { target, .. } => {
            r.reached_by = format!("ssh {}", target.host);
            let link = ssh::link(target);
            match link.connect() {
                Ok(info) => {
                    r.connect_secs = Some(info.took.as_secs_f64());
                    r.connection_reused = Some(info.reused);
                }
                Err(e) => {
                    r.ok = false;
                    r.error = Some(crate::util::error_chain(&e));
                    return r;
                }
            }
            Some(link)
        }
        _ => {
            r.reached_by = "this machine".into();
            None
        }
    };
    let (probed, agent) = std::thread::scope(|scope| {
        // Asking starts nothing: a local agent is asked only when its socket answers (a
        // bridge is told --no-start by mum_for).
        let agent = scope.spawn(|| {
            let none_here = m.transport == Transport::Socket
                && std::os::unix::net::UnixStream::connect(crate::cluster::socket_path(&m.workdir))
                    .is_err();
            (!none_here).then(|| MumClient::connect_or_start(m).map(|c| c.hello))
        });
        let probed = match &link {
            Some(link) => link
                .run("probe the login node", &script, &[])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(|e| crate::util::error_chain(&e)),
            None => std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(|e| format!("sh: {e}")),
        };
        (probed, agent.join())
    });
    match probed {
        Ok(text) => read_probe(&text, &mut r),
        Err(e) => {
            r.ok = false;
            r.error = Some(e);
            return r;
        }
    }
    if warden == Warden::Local {
        r.warden.found = true;
    } else if !r.warden.found {
        r.ok = false;
    }
    match agent {
        Ok(None) => {}
        Ok(Some(Ok(h))) => {
            r.agent = AgentReport {
                running: true,
                version: Some(h.mum_version.clone()),
                pid: Some(h.pid),
                problem: h.health.clone(),
            };
            r.ok &= h.health.is_none();
            if warden == Warden::Local {
                r.queue.insert("running".into(), u64::from(h.running));
                r.queue.insert("queued".into(), u64::from(h.queued));
            }
        }
        Ok(Some(Err(e))) if no_agent(m, &e) => {}
        Ok(Some(Err(e))) => {
            r.ok = false;
            r.agent.problem = Some(crate::util::error_chain(&e));
        }
        Err(_) => {
            r.ok = false;
            r.agent.problem = Some("the agent check failed".into());
        }
    }
    r
}

/// Whether the agent check found none (which is no problem).
fn no_agent(m: &LocalMum, e: &ClientError) -> bool {
    if m.transport == Transport::Socket
        && std::os::unix::net::UnixStream::connect(crate::cluster::socket_path(&m.workdir)).is_err()
    {
        return true;
    }
    crate::util::error_chain(e).contains(crate::cluster::bridge::NO_AGENT)
}

/// One shell script that says what the probe needs, each answer on a line of its own that
/// starts with `@` (anything else is shell noise, such as a chatty .bashrc).
fn probe_script(warden: Warden) -> String {
    let mut s = String::from("echo \"@arch $(uname -m)\"; ");
    match warden {
        Warden::Local => {}
        Warden::Slurm => s.push_str(
            "if command -v sbatch >/dev/null 2>&1; then echo \"@warden $(sbatch --version 2>&1 | head -n 1)\"; \
             squeue -h -r -u \"$(id -un)\" --name neronet -o %T 2>/dev/null | sort | uniq -c | sed 's/^/@queue /'; fi",
        ),
        Warden::Sge => s.push_str(
            "if command -v qsub >/dev/null 2>&1; then echo \"@warden qsub at $(command -v qsub)\"; \
             qstat 2>/dev/null | awk 'NR>2 && $3 ~ /^neronet-/ {print $5}' | sort | uniq -c | sed 's/^/@queue /'; fi",
        ),
    }
    s
}

fn read_probe(text: &str, r: &mut ClusterReport) {
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix('@') else {
            continue;
        };
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        let value = value.trim();
        match key {
            "arch" => r.arch = Some(value.to_string()),
            "warden" => {
                r.warden.found = true;
                r.warden.version = Some(value.to_string());
            }
            "queue" => {
                if let Some((n, state)) = value.split_once(' ') {
                    if let Ok(n) = n.trim().parse::<u64>() {
                        *r.queue.entry(state.trim().to_string()).or_default() += n;
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(arch) = &r.arch {
        if r.reached_by.starts_with("ssh") {
            if let Err(e) = ssh::check_arch(arch) {
                r.ok = false;
                r.error = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_probe_through_shell_noise() {
        let mut r = ClusterReport {
            reached_by: "ssh hpc".into(),
            ok: true,
            ..Default::default()
        };
        read_probe(
            "Welcome to hpc!\n@arch x86_64\n@warden slurm 22.05.8\n@queue       3 RUNNING\n@queue 1 PENDING\n",
            &mut r,
        );
        assert_eq!(r.arch.as_deref(), Some("x86_64"));
        assert_eq!(r.warden.version.as_deref(), Some("slurm 22.05.8"));
        assert_eq!(r.queue["RUNNING"], 3);
        assert_eq!(r.queue["PENDING"], 1);
        assert!(r.ok);
        read_probe("@arch aarch64\n", &mut r);
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("aarch64"));
    }
}
