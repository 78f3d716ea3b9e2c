//! Kid benchmarks (run with `cargo bench -p nerokid`, or scripts/bench.sh). Prints figures:
//! 1. metric extraction throughput on a 1,000,000-line log (goal ≥ 1M lines/s);
//! 2. nerokid's own CPU share and RSS while its job prints 10,000 lines/s (goal ≤ 1% of a core,
//!    ≤ 8 MB), measured beside the job's own CPU in the same run;
//! 3. abort-rule evaluation (goal < 1 µs per rule), beside metric-line parsing in the same run;
//! 4. the kid's sampling cost with GPU queries (the fake nvidia-smi of tests/fixtures/gpu on
//!    PATH), the kid's own CPU and its nvidia-smi helpers', and what the real H100's
//!    `cost.txt` implies for one-shot queries against loop mode.

use nerokid::expr::{self, Expr};
use nerokid::metrics::{Extractor, StreamScanner};
use nerokid::report::KidSpec;
use nerokid::run::RuleFields;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn log_lines(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 60);
    for i in 0..n {
        match i % 4 {
            0 => writeln!(
                out,
                "epoch={} step={} loss={:.6} errorrate={:.4}",
                i / 1000,
                i,
                1.0 / (i + 1) as f64,
                0.5 / (1.0 + i as f64)
            ),
            1 => writeln!(
                out,
                "INFO [trainer] processed batch {i} of the current epoch without incident"
            ),
            2 => writeln!(out, "val/acc: {:.4}, lr = 3e-4.", (i % 100) as f64 / 100.0),
            _ => writeln!(
                out,
                "2026-11-26 12:30:45 worker-3 heartbeat ok, queue depth fine"
            ),
        }
        .unwrap();
    }
    out
}

fn extraction() {
    let n = 1_000_000;
    let log = log_lines(n);
    let ex = Extractor::new(true, &[]).unwrap();
    let mut best = f64::MAX;
    let mut found = 0usize;
    for _ in 0..5 {
        let start = Instant::now();
        // What each of the kid's stream readers runs: segments at `\n` and `\r`, echoes
        // skipped, bars thinned.
        let mut scanner = StreamScanner::new();
        let mut count = 0usize;
        let mut out = Vec::new();
        for chunk in log.chunks(64 * 1024) {
            scanner.feed(&ex, chunk, Instant::now(), &mut out);
            count += out.iter().map(|f| f.values.len()).sum::<usize>();
            out.clear();
        }
        best = best.min(start.elapsed().as_secs_f64());
        found = count;
    }
    println!(
        "metric extraction: {n} lines ({:.1} MB) in {:.3} s best of 5 = {:.2} M lines/s ({} values found)",
        log.len() as f64 / 1e6,
        best,
        n as f64 / best / 1e6,
        found
    );
}

/// (utime+stime ticks, rss kB) of a pid.
fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks, rss))
}

/// Run the kid around a Python job printing 10,000 lines/s for `secs`; `per_write` lines per
/// write+flush (1 = a job that flushes every line, the worst case for the kid).
fn overhead(per_write: usize) {
    let dir =
        std::env::temp_dir().join(format!("nerokid-bench-{}-{per_write}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secs = 20.0;
    // A quarter of the lines carry metrics.
    let job = format!(
        "import sys, time\nt0 = time.time(); i = 0\nwhile time.time() - t0 < {secs}:\n    \
         for _ in range({per_write}):\n        i += 1\n        \
         sys.stdout.write(f'epoch={{i//1000}} step={{i}} loss={{1/i:.6f}}\\n' if i % 4 == 0 else f'processing batch {{i}} of this epoch\\n')\n    \
         sys.stdout.flush()\n    \
         d = t0 + i / 10000 - time.time()\n    \
         if d > 0: time.sleep(d)\n"
    );
    std::fs::write(dir.join("job.py"), job).unwrap();
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut kid = Command::new(env!("CARGO_BIN_EXE_nerokid"))
        .arg("run")
        .arg("--dir")
        .arg(&dir)
        .args(["--", "python3"])
        .arg(dir.join("job.py"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = kid.id();
    let start = Instant::now();
    let mut max_rss = 0;
    let mut kid_ticks = 0;
    let mut job_ticks = 0;
    let mut job_pid = None;
    while kid.try_wait().unwrap().is_none() {
        if let Some((t, rss)) = proc_sample(pid) {
            kid_ticks = t;
            max_rss = max_rss.max(rss);
        }
        if job_pid.is_none() {
            job_pid = std::fs::read_to_string(dir.join("events.jsonl"))
                .ok()
                .and_then(|s| s.lines().next().map(String::from))
                .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
                .and_then(|v| v["job_pid"].as_u64());
        }
        if let Some(jp) = job_pid {
            if let Some((t, _)) = proc_sample(jp as u32) {
                job_ticks = t;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = start.elapsed().as_secs_f64();
    let lines = std::fs::read_to_string(dir.join("stdout.log"))
        .unwrap()
        .lines()
        .count();
    let events = std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .count();
    println!(
        "kid overhead, {per_write:>3} line(s) per flush: {lines} lines in {wall:.1} s ({:.0} lines/s); nerokid CPU {:.2}% of a core, \
         peak RSS {:.1} MB; beside it the job used {:.1}% of a core; {events} events logged",
        lines as f64 / wall,
        kid_ticks as f64 / ticks_per_s / wall * 100.0,
        max_rss as f64 / 1024.0,
        job_ticks as f64 / ticks_per_s / wall * 100.0,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// ns per evaluation of `rule` against the kid's rule fields (8 metrics, 2 parameters).
fn rule_ns(rule: &Expr, spec: &KidSpec, last: &HashMap<String, f64>) -> f64 {
    let rounds = 2_000_000u32;
    let mut best = f64::MAX;
    let mut fired = 0u32;
    for _ in 0..5 {
        let start = Instant::now();
        for i in 0..rounds {
            let fields = RuleFields::new(spec, last, f64::from(i % 1000));
            if rule.evaluate_rule(std::hint::black_box(&fields), &mut |_| {}) == Some(true) {
                fired += 1;
            }
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(fired);
    best / f64::from(rounds) * 1e9
}

fn rules() {
    let spec = KidSpec {
        params: [("lr", "0.001"), ("batch", "64")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..KidSpec::default()
    };
    let last: HashMap<String, f64> = [
        "epoch",
        "step",
        "loss",
        "val_loss",
        "acc",
        "val_acc",
        "lr_now",
        "grad_norm",
    ]
    .iter()
    .enumerate()
    .map(|(i, n)| (n.to_string(), 0.1 * i as f64))
    .collect();
    // Metric-line parsing in the same run: what one line costs the kid before any rule.
    let n = 200_000;
    let log = log_lines(n);
    let ex = Extractor::new(true, &[]).unwrap();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut scanner = StreamScanner::new();
        let mut out = Vec::new();
        for chunk in log.chunks(64 * 1024) {
            scanner.feed(&ex, chunk, Instant::now(), &mut out);
            out.clear();
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    let parse_ns = best / n as f64 * 1e9;
    for text in [
        "loss>5 || loss==nan",
        "(loss>5 || loss==nan) && runtime>10m && val_acc<0.2",
    ] {
        let rule = expr::parse_rule(text).unwrap();
        let comparisons = rule.comparisons().len();
        let ns = rule_ns(&rule, &spec, &last);
        println!(
            "rule evaluation: {comparisons} comparisons ({text}): {ns:.0} ns/rule (goal < 1000 ns); \
             metric-line parsing in the same run: {parse_ns:.0} ns/line; the rule is {:.0}% of a line's parse",
            ns / parse_ns * 100.0
        );
    }
    println!(
        "rule evaluation: the kid evaluates the rule once per round (every 250 ms) over the last values, \
         not once per line, so per line it costs at most the figure above"
    );
}

/// utime+stime ticks of a pid (0 once it is gone).
fn ticks(pid: u32) -> u64 {
    proc_sample(pid).map_or(0, |(t, _)| t)
}

/// Run the kid over a sleeping job for `secs` with resource samples every `sample` s;
/// returns (kid CPU %, helpers' CPU %, helpers started, samples with GPU fields).
fn sampling_run(gpu: bool, sample: f64, secs: f64) -> (f64, f64, usize, usize) {
    let dir = std::env::temp_dir().join(format!("nerokid-bench-gpu-{}-{gpu}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("kid.json"),
        format!(r#"{{"sample_secs": {sample}, "gpu": {gpu}}}"#),
    )
    .unwrap();
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gpu");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut kid = Command::new(env!("CARGO_BIN_EXE_nerokid"))
        .arg("run")
        .arg("--dir")
        .arg(&dir)
        .args(["--", "sh", "-c"])
        .arg(format!(
            "echo $$ >> \"$NERONET_FAKE_GPU_PIDS\"; exec sleep {secs}"
        ))
        .env("PATH", path)
        .env("NERONET_FAKE_GPU_PIDS", dir.join("gpu-pids"))
        .env("NERONET_FAKE_GPU_LOG", dir.join("smi.log"))
        .env_remove("CUDA_VISIBLE_DEVICES")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = kid.id();
    let start = Instant::now();
    let (mut kid_ticks, mut helper_ticks) = (0u64, HashMap::<u32, u64>::new());
    while kid.try_wait().unwrap().is_none() {
        kid_ticks = kid_ticks.max(ticks(pid));
        let log = std::fs::read_to_string(dir.join("smi.log")).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("-lms")) {
            let hp: u32 = line.split(' ').next().unwrap().parse().unwrap();
            let t = ticks(hp);
            let e = helper_ticks.entry(hp).or_default();
            *e = (*e).max(t);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = start.elapsed().as_secs_f64();
    let gpu_samples = std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("gpu_mem_bytes"))
        .count();
    let _ = std::fs::remove_dir_all(&dir);
    let pct = |t: u64| t as f64 / ticks_per_s / wall * 100.0;
    (
        pct(kid_ticks),
        pct(helper_ticks.values().sum()),
        helper_ticks.len(),
        gpu_samples,
    )
}

fn gpu_sampling() {
    let (sample, secs) = (1.0, 20.0);
    let (kid_gpu, helpers, started, with_gpu) = sampling_run(true, sample, secs);
    let (kid_plain, _, _, _) = sampling_run(false, sample, secs);
    println!(
        "gpu sampling, sample every {sample} s for {secs} s: nerokid CPU {kid_gpu:.3}% of a core with GPU queries \
         ({with_gpu} samples with GPU fields), {kid_plain:.3}% without; its {started} nvidia-smi helpers \
         (the fake, a python3 script: not representative of the real binary) {helpers:.3}%"
    );
    // The kid's own GPU work is per sample: scale it to one sample per 5 s. The helpers run in
    // loop mode at the same period, so theirs scales the same way.
    let per5 = kid_plain + (kid_gpu - kid_plain).max(0.0) * sample / 5.0;
    println!(
        "gpu sampling, per-5 s equivalent: nerokid {per5:.3}% of a core (goal ≤ 1%), helpers ≈ {:.3}% (fake)",
        helpers * sample / 5.0
    );
    let cost = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gpu/cost.txt"),
    )
    .unwrap_or_default();
    let ms: Vec<f64> = cost
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .filter_map(|v| v.trim().trim_end_matches("ms").trim().parse().ok())
        .collect();
    if !ms.is_empty() {
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        println!(
            "gpu sampling, real H100 (cost.txt): one-shot --query-gpu + --query-compute-apps = {mean:.0} ms per sample \
             = {:.2}% of a core at one sample per 5 s (NVML initialised each time); loop mode pays that once at start, \
             then only the queries each period (not measurable without the GPU)",
            mean / 5000.0 * 100.0
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wants = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    if wants("extraction") {
        extraction();
    }
    if wants("rules") {
        rules();
    }
    if wants("gpu") {
        gpu_sampling();
    }
    if wants("overhead") {
        overhead(100);
        overhead(1);
    }
}
