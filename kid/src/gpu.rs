//! GPU use of one job through `nvidia-smi` (a static kid cannot dlopen NVML). Two long-lived
//! `nvidia-smi ... -lms N` helpers (loop mode: NVML is initialised once, not ≈25 ms per call)
//! print one group of CSV lines per period; a reader thread per helper keeps the latest group.
//! Each resources sample matches the job's pids against the compute apps' pids.
//!
//! - `--query-gpu=timestamp,index,uuid,name,utilization.gpu,memory.used`: every GPU, each period.
//! - `--query-compute-apps=timestamp,pid,gpu_uuid,used_memory`: one line per process on a GPU;
//!   nothing at all when no process uses one. So an apps group older than a period (plus slack)
//!   means "no process now", not "the last processes still run".
//!
//! PIDs are those of nvidia-smi's PID namespace. Inside a container the job's pids can differ
//! from what nvidia-smi prints (or it prints none): when no app matches the job, and the apps on
//! the GPUs named in `CUDA_VISIBLE_DEVICES` are all outside the kid's `/proc` (or there are none
//! while those GPUs hold memory), those GPUs are taken as the job's, with their whole
//! `memory.used` (a container's GPUs are its own, so this is the job's use there).
//!
//! Loop mode is what the H100 capture notes recommend and what monitoring scripts commonly run
//! (`-lms` with `--query-compute-apps` included). Should a helper print nothing at all for
//! [`loop_patience`] (its output held in a buffer, a loop mode that does not work there), the
//! kid says so once and falls back to one-shot queries each period (≈50 ms of NVML start-up
//! each, ≈1 % of a core at 5 s on the H100).
//!
//! The helpers die with the kid (`PR_SET_PDEATHSIG`, and killed and reaped by [`Sampler::stop`]
//! or on drop). When one fails or ends, the GPU fields are absent from then on and the kid says
//! so once on its stderr; the job is never affected.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The query of every GPU (also what the fake nvidia-smi in tests/fixtures/gpu answers).
pub const GPU_QUERY: &str = "--query-gpu=timestamp,index,uuid,name,utilization.gpu,memory.used";
/// The query of the processes using a GPU.
pub const APPS_QUERY: &str = "--query-compute-apps=timestamp,pid,gpu_uuid,used_memory";
pub const FORMAT: &str = "--format=csv,noheader,nounits";

const MIB: u64 = 1 << 20;

/// One GPU as the GPU query reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuRow {
    pub index: String,
    pub uuid: String,
    pub name: String,
    /// `None` where nvidia-smi says `[N/A]` (a MIG instance, some virtual GPUs).
    pub util: Option<f64>,
    pub mem_used_mib: Option<f64>,
}

/// One process on a GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct AppRow {
    pub pid: u32,
    pub uuid: String,
    pub used_mib: Option<f64>,
}

/// What a resources event says of the job's GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub percent: f64,
    pub mem_bytes: u64,
    /// `"<index>: <name>"`, in nvidia-smi's order.
    pub gpus: Vec<String>,
}

/// `timestamp, index, uuid, name, utilization.gpu, memory.used`. A name holding `, ` keeps it.
pub fn parse_gpu_line(line: &str) -> Option<(String, GpuRow)> {
    let f: Vec<&str> = line.split(", ").map(str::trim).collect();
    if f.len() < 6 {
        return None;
    }
    let n = f.len();
    let index = f[1];
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        f[0].to_string(),
        GpuRow {
            index: index.to_string(),
            uuid: f[2].to_string(),
            name: f[3..n - 2].join(", "),
            util: number(f[n - 2]),
            mem_used_mib: number(f[n - 1]),
        },
    ))
}

/// `timestamp, pid, gpu_uuid, used_memory`.
pub fn parse_app_line(line: &str) -> Option<(String, AppRow)> {
    let f: Vec<&str> = line.split(", ").map(str::trim).collect();
    if f.len() != 4 {
        return None;
    }
    Some((
        f[0].to_string(),
        AppRow {
            pid: f[1].parse().ok()?,
            uuid: f[2].to_string(),
            used_mib: number(f[3]),
        },
    ))
}

/// A number, or `None` for `[N/A]`, `[Not Supported]` and the like.
fn number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The latest group of lines one helper printed: lines with one timestamp are one period.
#[derive(Debug)]
struct Group<T> {
    stamp: String,
    /// When its first line arrived.
    at: Option<Instant>,
    rows: Vec<T>,
}

impl<T> Default for Group<T> {
    fn default() -> Self {
        Group {
            stamp: String::new(),
            at: None,
            rows: Vec::new(),
        }
    }
}

impl<T> Group<T> {
    fn add(&mut self, stamp: String, row: T) {
        if stamp != self.stamp || self.at.is_none() {
            self.stamp = stamp;
            self.at = Some(Instant::now());
            self.rows.clear();
        }
        self.rows.push(row);
    }
}

#[derive(Debug, Default)]
struct Shared {
    gpus: Group<GpuRow>,
    apps: Group<AppRow>,
    /// Why sampling stopped: a helper's words or its end.
    failed: Option<String>,
    /// The loop helpers are being ended on purpose: their end is no failure.
    retired: bool,
}

impl Shared {
    /// One line of a helper's output; false when it is not a row (nvidia-smi's own words).
    fn feed(&mut self, is_gpu: bool, line: &str) -> bool {
        if is_gpu {
            parse_gpu_line(line).map(|(t, r)| self.gpus.add(t, r))
        } else {
            parse_app_line(line).map(|(t, r)| self.apps.add(t, r))
        }
        .is_some()
    }
}

/// How long loop mode may print nothing before the kid falls back to one-shot queries: NVML's
/// start-up on a node of 8 GPUs without persistence mode can take seconds.
pub fn loop_patience(period: Duration) -> Duration {
    (period * 3).max(Duration::from_secs(10))
}

/// Make the kernel kill this child when the kid dies, even by SIGKILL.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The two nvidia-smi helpers and what they last said.
pub struct Sampler {
    program: PathBuf,
    started: Instant,
    /// The one-shot fallback's thread and the sender whose drop stops it.
    one_shot: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    helpers: Vec<Child>,
    readers: Vec<JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
    period: Duration,
    visible: Option<Vec<String>>,
    /// Said once on stderr that sampling stopped.
    noted: bool,
}

/// `nvidia-smi` on PATH, if any.
pub fn find_nvidia_smi() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvidia-smi"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `CUDA_VISIBLE_DEVICES` as a list of indices or UUIDs; `None` when unset or naming none.
fn visible_devices() -> Option<Vec<String>> {
    let v = std::env::var("CUDA_VISIBLE_DEVICES").ok()?;
    let list: Vec<String> = v
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!list.is_empty() && !list.iter().any(|s| s == "-1" || s == "NoDevFiles")).then_some(list)
}

impl Sampler {
    /// Start sampling every `period` when nvidia-smi is on PATH; `None` without one (quietly)
    /// or when it cannot be started (said once on stderr).
    pub fn start(period: Duration) -> Option<Sampler> {
        let program = find_nvidia_smi()?;
        let ms = period.as_millis().max(100).to_string();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut sampler = Sampler {
            program: program.clone(),
            started: Instant::now(),
            one_shot: None,
            helpers: Vec::new(),
            readers: Vec::new(),
            shared: Arc::clone(&shared),
            period,
            visible: visible_devices(),
            noted: false,
        };
        for (query, is_gpu) in [(GPU_QUERY, true), (APPS_QUERY, false)] {
            let mut cmd = Command::new(&program);
            cmd.args([query, FORMAT, "-lms", &ms])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Its own group: the job's signals never reach it, and stop() ends all of it.
                .process_group(0);
            die_with_parent(&mut cmd);
            match cmd.spawn() {
                Ok(mut child) => {
                    let out = child.stdout.take().expect("piped stdout");
                    let err = child.stderr.take().expect("piped stderr");
                    sampler.helpers.push(child);
                    sampler
                        .readers
                        .push(spawn_reader(out, err, is_gpu, Arc::clone(&shared)));
                }
                Err(e) => {
                    eprintln!(
                        "nerokid: GPU use is not sampled: cannot start {}: {e}",
                        program.display()
                    );
                    return None;
                }
            }
        }
        Some(sampler)
    }

    /// The job's GPU use now, given the pids of its processes; `None` when it uses none, or
    /// sampling has stopped (said once on stderr).
    pub fn usage(&mut self, pids: &[u32]) -> Option<Usage> {
        let shared = self.shared.lock().ok()?;
        if let Some(why) = &shared.failed {
            if !self.noted {
                eprintln!("nerokid: GPU use is no longer sampled: {why}");
                self.noted = true;
            }
            return None;
        }
        if shared.gpus.at.is_none()
            && self.one_shot.is_none()
            && self.started.elapsed() >= loop_patience(self.period)
        {
            drop(shared);
            self.fall_back_to_one_shot();
            return None;
        }
        let slack = (self.period / 2).max(Duration::from_millis(500));
        let apps: &[AppRow] = match shared.apps.at {
            Some(at) if at.elapsed() <= self.period + slack => &shared.apps.rows,
            _ => &[],
        };
        usage_of(
            &shared.gpus.rows,
            apps,
            pids,
            self.visible.as_deref(),
            &|pid| Path::new(&format!("/proc/{pid}")).exists(),
        )
    }

    /// Loop mode said nothing: end its helpers and query once per period from a thread.
    fn fall_back_to_one_shot(&mut self) {
        eprintln!(
            "nerokid: nvidia-smi printed nothing in loop mode for {} s; querying it once per sample instead",
            loop_patience(self.period).as_secs()
        );
        self.end();
        let (tx, rx) = mpsc::channel::<()>();
        let (program, shared, period) =
            (self.program.clone(), Arc::clone(&self.shared), self.period);
        let thread = std::thread::spawn(move || loop {
            for (query, is_gpu) in [(GPU_QUERY, true), (APPS_QUERY, false)] {
                let mut cmd = Command::new(&program);
                cmd.args([query, FORMAT]).stdin(Stdio::null());
                die_with_parent(&mut cmd);
                let why = match cmd.output() {
                    Ok(out) if out.status.success() => {
                        let text = String::from_utf8_lossy(&out.stdout);
                        let Ok(mut s) = shared.lock() else { return };
                        for line in text.lines().filter(|l| !l.trim().is_empty()) {
                            s.feed(is_gpu, line);
                        }
                        continue;
                    }
                    Ok(out) => {
                        let text = String::from_utf8_lossy(&out.stdout).into_owned()
                            + &String::from_utf8_lossy(&out.stderr);
                        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                        format!("nvidia-smi {} said {:?}", out.status, first.trim())
                    }
                    Err(e) => format!("nvidia-smi: {e}"),
                };
                if let Ok(mut s) = shared.lock() {
                    s.failed.get_or_insert(why);
                }
                return;
            }
            if !matches!(
                rx.recv_timeout(period),
                Err(mpsc::RecvTimeoutError::Timeout)
            ) {
                return;
            }
        });
        self.one_shot = Some((tx, thread));
    }

    /// Kill the helpers and reap them (also done on drop).
    pub fn stop(mut self) {
        self.end();
        if let Some((tx, thread)) = self.one_shot.take() {
            drop(tx);
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }

    fn end(&mut self) {
        if let Ok(mut s) = self.shared.lock() {
            s.retired = true;
        }
        for child in &mut self.helpers {
            // SAFETY: kill(2) on the helper's own process group; no memory is involved.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
        }
        self.helpers.clear();
        // The readers end at the pipes' EOF, now; one still blocked is left to finish alone.
        for r in self.readers.drain(..) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.end();
    }
}

fn spawn_reader(
    out: impl Read + Send + 'static,
    err: impl Read + Send + 'static,
    is_gpu: bool,
    shared: Arc<Mutex<Shared>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        // Unparsable output is how nvidia-smi fails (`NVIDIA-SMI has failed because ...` on
        // stdout, `Field "x" is not a valid field to query.`): the first such line says why.
        let mut trouble: Option<String> = None;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let Ok(mut s) = shared.lock() else { return };
            if !s.feed(is_gpu, &line) && trouble.is_none() {
                trouble = Some(line.trim().to_string());
            }
        }
        let mut words = String::new();
        let _ = err.take(4096).read_to_string(&mut words);
        let why = trouble
            .or_else(|| {
                words
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .map(String::from)
            })
            .map_or_else(
                || "nvidia-smi ended".to_string(),
                |w| format!("nvidia-smi said {:?}", w.trim()),
            );
        if let Ok(mut s) = shared.lock() {
            if !s.retired {
                s.failed.get_or_insert(why);
            }
        }
    })
}

/// The job's use of the GPUs: the apps whose pid is the job's; else, where pids are not
/// comparable (a container), the GPUs in `CUDA_VISIBLE_DEVICES` (see the module docs).
/// `exists` says whether a pid is in the kid's own `/proc`.
pub fn usage_of(
    gpus: &[GpuRow],
    apps: &[AppRow],
    pids: &[u32],
    visible: Option<&[String]>,
    exists: &dyn Fn(u32) -> bool,
) -> Option<Usage> {
    let mine: Vec<&AppRow> = apps.iter().filter(|a| pids.contains(&a.pid)).collect();
    if !mine.is_empty() {
        let used: Vec<&GpuRow> = gpus
            .iter()
            .filter(|g| mine.iter().any(|a| a.uuid == g.uuid))
            .collect();
        let mem_mib: f64 = mine.iter().filter_map(|a| a.used_mib).sum();
        return Some(summary(&used, mem_mib));
    }
    let visible = visible?;
    let named: Vec<&GpuRow> = gpus
        .iter()
        .filter(|g| {
            visible
                .iter()
                .any(|v| *v == g.index || (v.starts_with("GPU-") && g.uuid.starts_with(v.as_str())))
        })
        .collect();
    if named.is_empty() {
        return None;
    }
    let on_named: Vec<&AppRow> = apps
        .iter()
        .filter(|a| named.iter().any(|g| g.uuid == a.uuid))
        .collect();
    let foreign = !on_named.is_empty() && on_named.iter().all(|a| !exists(a.pid));
    let hidden = on_named.is_empty() && named.iter().any(|g| g.mem_used_mib.unwrap_or(0.0) > 0.0);
    if !(foreign || hidden) {
        return None;
    }
    let mem_mib: f64 = named.iter().filter_map(|g| g.mem_used_mib).sum();
    Some(summary(&named, mem_mib))
}

fn summary(used: &[&GpuRow], mem_mib: f64) -> Usage {
    let utils: Vec<f64> = used.iter().filter_map(|g| g.util).collect();
    let percent = if utils.is_empty() {
        0.0
    } else {
        let mean = utils.iter().sum::<f64>() / utils.len() as f64;
        (mean * 10.0).round() / 10.0
    };
    Usage {
        percent,
        mem_bytes: (mem_mib * MIB as f64).round() as u64,
        gpus: used
            .iter()
            .map(|g| format!("{}: {}", g.index, g.name))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "GPU-6e7b1193-03f8-c976-36bb-652f5d17ce53";

    fn h100(util: f64, mem: f64) -> GpuRow {
        parse_gpu_line(&format!(
            "2026/11/27 01:02:24.123, 0, {UUID}, NVIDIA H100 80GB HBM3, {util}, {mem}"
        ))
        .unwrap()
        .1
    }

    fn app(pid: u32, mib: f64) -> AppRow {
        parse_app_line(&format!("2026/11/27 01:02:24.125, {pid}, {UUID}, {mib}"))
            .unwrap()
            .1
    }

    #[test]
    fn lines_as_the_h100_prints_them() {
        let (t, g) = parse_gpu_line(
            "2026/11/27 01:02:24.123, 0, GPU-6e7b1193-03f8-c976-36bb-652f5d17ce53, NVIDIA H100 80GB HBM3, 14, 1397",
        )
        .unwrap();
        assert_eq!(t, "2026/11/27 01:02:24.123");
        assert_eq!(g.index, "0");
        assert_eq!(g.name, "NVIDIA H100 80GB HBM3");
        assert_eq!((g.util, g.mem_used_mib), (Some(14.0), Some(1397.0)));
        let mig = parse_gpu_line("t, 1, MIG-x, A100, [N/A], 20").unwrap().1;
        assert_eq!(mig.util, None);
        let (_, a) = parse_app_line("t, 447, GPU-6e7b, 1388").unwrap();
        assert_eq!((a.pid, a.used_mib), (447, Some(1388.0)));
        for bad in [
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
            "Field \"x\" is not a valid field to query.",
            "",
        ] {
            assert_eq!(parse_gpu_line(bad), None, "{bad}");
            assert_eq!(parse_app_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_jobs_processes_are_matched_by_pid() {
        let gpus = [h100(14.0, 1397.0)];
        let apps = [app(447, 1388.0), app(448, 12.0), app(900, 500.0)];
        let u = usage_of(&gpus, &apps, &[446, 447, 448], None, &|_| true).unwrap();
        assert_eq!(u.percent, 14.0);
        assert_eq!(u.mem_bytes, 1400 * MIB);
        assert_eq!(u.gpus, ["0: NVIDIA H100 80GB HBM3"]);
        assert_eq!(usage_of(&gpus, &apps, &[1, 2], None, &|_| true), None);
        assert_eq!(usage_of(&gpus, &[], &[447], None, &|_| true), None);
    }

    /// Inside a container nvidia-smi prints pids of another namespace (or none): the GPUs of
    /// CUDA_VISIBLE_DEVICES stand in, with their whole memory.used.
    #[test]
    fn a_container_falls_back_to_the_visible_devices() {
        let gpus = [h100(14.0, 1397.0)];
        let visible = ["0".to_string()];
        let by_uuid = ["GPU-6e7b1193".to_string()];
        let foreign = [app(447, 1388.0)];
        for v in [&visible[..], &by_uuid[..]] {
            let u = usage_of(&gpus, &foreign, &[12], Some(v), &|_| false).unwrap();
            assert_eq!((u.percent, u.mem_bytes), (14.0, 1397 * MIB));
        }
        // A process we can see is somebody else's: not ours.
        assert_eq!(
            usage_of(&gpus, &foreign, &[12], Some(&visible), &|_| true),
            None
        );
        // No process listed, yet memory in use: hidden from us.
        assert!(usage_of(&gpus, &[], &[12], Some(&visible), &|_| false).is_some());
        // An idle GPU is not the job's.
        let idle = [h100(0.0, 0.0)];
        assert_eq!(
            usage_of(&idle, &[], &[12], Some(&visible), &|_| false),
            None
        );
        let other = ["1".to_string()];
        assert_eq!(
            usage_of(&gpus, &foreign, &[12], Some(&other), &|_| false),
            None
        );
    }
}
