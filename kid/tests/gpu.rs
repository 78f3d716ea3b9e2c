//! GPU sampling in the real kid with the fake `nvidia-smi` of tests/fixtures/gpu (real H100
//! captures): the job's own pid on the GPU gives the GPU fields; another's, or none, or no
//! nvidia-smi, gives none; a failing nvidia-smi never hurts the job; the helpers die with the kid.

use nerokid::report::{KidEvent, Outcome};
use nerokid::run::read_events;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn run_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nerokid-gpu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fake_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gpu")
}

/// A job that says `started`, optionally puts its pid on the fake GPU, and waits for the test
/// to create `release` (at most 30 s, so a broken kid fails the test instead of hanging it).
fn job(on_gpu: bool) -> String {
    let claim = if on_gpu {
        "echo $$ >> \"$NERONET_FAKE_GPU_PIDS\"; "
    } else {
        ""
    };
    format!("{claim}echo started; i=0; while [ ! -e release ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done")
}

/// The kid over `job` in `dir` with `path` as PATH; the fake's knobs point into `dir`.
fn start(dir: &Path, path: &str, job: &str, env: &[(&str, &str)]) -> Child {
    start_with(dir, r#"{"sample_secs": 0.3}"#, path, job, env)
}

fn start_with(dir: &Path, spec: &str, path: &str, job: &str, env: &[(&str, &str)]) -> Child {
    std::fs::write(dir.join("kid.json"), spec).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_nerokid"));
    c.arg("run")
        .arg("--dir")
        .arg(dir)
        .args(["--", "sh", "-c", job])
        .current_dir(dir)
        .env("PATH", path)
        .env("NERONET_FAKE_GPU_PIDS", dir.join("gpu-pids"))
        .env("NERONET_FAKE_GPU_LOG", dir.join("smi.log"))
        .env_remove("NERONET_FAKE_GPU_FAIL")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn with_fake() -> String {
    format!(
        "{}:{}",
        fake_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// (gpu_percent, gpu_mem_bytes, gpus, output_bytes) of every resources event so far.
type Sample = (Option<f64>, Option<u64>, Vec<String>, Option<u64>);

fn samples(dir: &Path) -> Vec<Sample> {
    read_events(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| match e {
            KidEvent::Resources {
                gpu_percent,
                gpu_mem_bytes,
                gpus,
                output_bytes,
                ..
            } => Some((gpu_percent, gpu_mem_bytes, gpus, output_bytes)),
            _ => None,
        })
        .collect()
}

/// Poll the event log until `done` holds for the samples; then let the job end and wait for
/// the kid. Returns the samples and the kid's stderr.
fn until(
    dir: &Path,
    mut kid: Child,
    what: &str,
    done: impl Fn(&[Sample]) -> bool,
) -> (Vec<Sample>, String) {
    let start = Instant::now();
    loop {
        let s = samples(dir);
        if done(&s) {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) || kid.try_wait().unwrap().is_some() {
            let _ = kid.kill();
            panic!("no {what}: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.join("release"), "").unwrap();
    let out = kid.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "the job is unaffected");
    let events = read_events(dir).unwrap();
    assert!(
        matches!(
            events.last(),
            Some(KidEvent::Exited {
                outcome: Outcome::Exit { code: 0 },
                ..
            })
        ),
        "{events:?}"
    );
    (
        samples(dir),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The pids of every fake nvidia-smi the kid started, and with which arguments.
fn helpers(dir: &Path) -> Vec<(i32, String)> {
    std::fs::read_to_string(dir.join("smi.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (pid, args) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), args.to_string())
        })
        .collect()
}

/// Each helper is gone once the kid has exited (no orphan loops on the node).
fn assert_helpers_gone(dir: &Path) {
    let hs = helpers(dir);
    assert!(
        hs.iter().any(|(_, a)| a.contains("-lms")),
        "loop mode started: {hs:?}"
    );
    for (pid, args) in hs {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !cmdline.contains("nvidia-smi"),
            "helper {pid} ({args}) outlived the kid"
        );
    }
}

fn gpu_names(dir: &Path) -> Vec<String> {
    read_events(dir)
        .unwrap()
        .into_iter()
        .find_map(|e| match e {
            KidEvent::Environment { report, .. } => Some(report.gpus),
            _ => None,
        })
        .expect("an environment report")
}

/// The job's pid on the GPU (the busy H100 capture): 14 %, the process's 1388 MiB, the GPU's
/// name; the output so far is counted (`started\n`).
#[test]
fn the_jobs_gpu_use_is_sampled() {
    let d = run_dir("busy");
    let kid = start(&d, &with_fake(), &job(true), &[]);
    let (s, stderr) = until(&d, kid, "GPU sample", |s| {
        s.iter().any(|x| x.1.is_some() && x.3 == Some(8))
    });
    let busy = s.iter().find(|x| x.1.is_some()).unwrap();
    assert_eq!(busy.0, Some(14.0));
    assert_eq!(busy.1, Some(1388 * MIB));
    assert_eq!(busy.2, ["0: NVIDIA H100 80GB HBM3"]);
    assert!(!stderr.contains("GPU"), "{stderr}");
    assert_eq!(gpu_names(&d), ["NVIDIA H100 80GB HBM3, 81559 MiB"]);
    assert_helpers_gone(&d);
}

/// The GPU busy with somebody else's process, or idle: no GPU fields, though sampling runs.
#[test]
fn no_gpu_fields_without_the_jobs_pid() {
    let d = run_dir("other");
    // A process of this machine that is not the job's: the test itself.
    std::fs::write(d.join("gpu-pids"), format!("{}\n", std::process::id())).unwrap();
    let kid = start(&d, &with_fake(), &job(false), &[]);
    let (s, _) = until(&d, kid, "5 samples", |s| s.len() >= 5);
    assert!(
        s.iter()
            .all(|x| x.0.is_none() && x.1.is_none() && x.2.is_empty()),
        "{s:?}"
    );
    assert!(
        s.iter().all(|x| x.3.is_some()),
        "output_bytes is always set"
    );
    assert_helpers_gone(&d);

    let d = run_dir("idle");
    let kid = start(&d, &with_fake(), &job(false), &[]);
    let (s, _) = until(&d, kid, "5 samples", |s| s.len() >= 5);
    assert!(s.iter().all(|x| x.1.is_none() && x.2.is_empty()), "{s:?}");
    assert_helpers_gone(&d);
}

/// No nvidia-smi on PATH: no GPU fields, no helpers, no GPUs in the environment report.
#[test]
fn no_nvidia_smi_no_gpu_fields() {
    let d = run_dir("none");
    let kid = start(&d, "/usr/bin:/bin", &job(true), &[]);
    let (s, stderr) = until(&d, kid, "3 samples", |s| s.len() >= 3);
    assert!(s.iter().all(|x| x.1.is_none() && x.2.is_empty()), "{s:?}");
    assert!(helpers(&d).is_empty());
    assert!(gpu_names(&d).is_empty());
    assert!(!stderr.contains("GPU"), "quietly: {stderr}");
}

/// An nvidia-smi that fails (no driver): the job runs on, the GPU fields are absent, and the
/// kid says why once on its stderr.
#[test]
fn a_failing_nvidia_smi_is_said_once_and_harmless() {
    let d = run_dir("fail");
    let kid = start(
        &d,
        &with_fake(),
        &job(true),
        &[("NERONET_FAKE_GPU_FAIL", "1")],
    );
    let (s, stderr) = until(&d, kid, "5 samples", |s| s.len() >= 5);
    assert!(s.iter().all(|x| x.1.is_none()), "{s:?}");
    assert_eq!(
        stderr.matches("GPU use is no longer sampled").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("NVIDIA-SMI has failed"), "{stderr}");
}

/// `gpu: false` in kid.json: no helpers at all.
#[test]
fn gpu_off_starts_no_helper() {
    let d = run_dir("off");
    let spec = r#"{"sample_secs": 0.3, "gpu": false}"#;
    let kid = start_with(&d, spec, &with_fake(), &job(true), &[]);
    let (s, _) = until(&d, kid, "3 samples", |s| s.len() >= 3);
    assert!(s.iter().all(|x| x.1.is_none()), "{s:?}");
    assert!(
        helpers(&d).iter().all(|(_, a)| !a.contains("-lms")),
        "{:?}",
        helpers(&d)
    );
}

/// Inside a container nvidia-smi names pids of another namespace: with CUDA_VISIBLE_DEVICES
/// set, that GPU counts as the job's, with the device's whole memory.used (1397 MiB).
#[test]
fn a_container_falls_back_to_cuda_visible_devices() {
    let d = run_dir("container");
    // No such pid here (pid_max is at most 2^22).
    std::fs::write(d.join("gpu-pids"), "99999999\n").unwrap();
    let kid = start(
        &d,
        &with_fake(),
        &job(false),
        &[("CUDA_VISIBLE_DEVICES", "0")],
    );
    let (s, _) = until(&d, kid, "GPU sample", |s| s.iter().any(|x| x.1.is_some()));
    let busy = s.iter().find(|x| x.1.is_some()).unwrap();
    assert_eq!((busy.0, busy.1), (Some(14.0), Some(1397 * MIB)));
    assert_eq!(busy.2, ["0: NVIDIA H100 80GB HBM3"]);
    assert_helpers_gone(&d);
}

/// A kid killed with SIGKILL cannot clean up: its nvidia-smi helpers die with it anyway
/// (PR_SET_PDEATHSIG), instead of looping on the node for ever.
#[test]
fn the_helpers_die_with_a_killed_kid() {
    let d = run_dir("kid-killed");
    // A long period: a helper would only notice its closed pipe (SIGPIPE) at its next print.
    let spec = r#"{"sample_secs": 10}"#;
    let mut kid = start_with(&d, spec, &with_fake(), &job(true), &[]);
    let start_t = Instant::now();
    while !samples(&d).iter().any(|x| x.1.is_some()) {
        assert!(start_t.elapsed() < Duration::from_secs(20), "no GPU sample");
        std::thread::sleep(Duration::from_millis(50));
    }
    let job_pid = read_events(&d)
        .unwrap()
        .into_iter()
        .find_map(|e| match e {
            KidEvent::Started { job_pid, .. } => Some(job_pid as i32),
            _ => None,
        })
        .unwrap();
    kid.kill().unwrap();
    kid.wait().unwrap();
    // The job, orphaned the same way, is the test's to end.
    std::fs::write(d.join("release"), "").unwrap();
    unsafe {
        libc::kill(-job_pid, libc::SIGKILL);
    }
    let alive = |d: &Path| {
        helpers(d)
            .into_iter()
            .filter(|(pid, _)| {
                let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&c).contains("nvidia-smi")
            })
            .count()
    };
    let t = Instant::now();
    while alive(&d) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "helpers outlived the kid"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Loop mode that prints nothing (its output held in a buffer, say): after its patience the
/// kid says so once and queries nvidia-smi once per sample instead; the GPU fields come.
#[test]
fn a_silent_loop_mode_falls_back_to_one_shot_queries() {
    let d = run_dir("silent");
    let kid = start(
        &d,
        &with_fake(),
        &job(true),
        &[("NERONET_FAKE_GPU_LOOP_SILENT", "1")],
    );
    let (s, stderr) = until(&d, kid, "GPU sample", |s| s.iter().any(|x| x.1.is_some()));
    let busy = s.iter().find(|x| x.1.is_some()).unwrap();
    assert_eq!((busy.0, busy.1), (Some(14.0), Some(1388 * MIB)));
    assert_eq!(
        stderr
            .matches("querying it once per sample instead")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("no longer sampled"), "{stderr}");
    let one_shots = helpers(&d)
        .iter()
        .filter(|(_, a)| a.contains("--query-compute-apps") && !a.contains("-lms"))
        .count();
    assert!(one_shots >= 1, "{:?}", helpers(&d));
    assert_helpers_gone(&d);
}
