//! Kid benchmarks (run with `cargo bench -p nerokid`, or scripts/bench.sh). Prints figures:
//! 1. metric extraction throughput on a 1,000,000-line log (goal ≥ 1M lines/s);
//! 2. nerokid's own CPU share and RSS while its job prints 10,000 lines/s (goal ≤ 1% of a core,
//!    ≤ 8 MB), measured beside the job's own CPU in the same run.

use nerokid::metrics::{Extractor, StreamScanner};
use std::io::Write;
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    extraction();
    overhead(100);
    overhead(1);
}
