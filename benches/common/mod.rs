//! What the benches that drive the real binaries share: reading figures back out of
//! results.xlsx and printing latencies. Included with `#[path = "common/mod.rs"] mod common;`.
#![allow(dead_code)]

use calamine::{Data, Reader};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Follow results.xlsx while experiment `id`'s job prints `sent=<time>` lines: stat it every
/// 50 ms and, each time it was replaced, read its `history` sheet; for each `sent` value first
/// seen, (time of the stat that saw the new file) − sent. Until `want` values or `limit`.
pub fn results_latency(results: &Path, id: u32, want: usize, limit: Duration) -> Vec<f64> {
    let mut seen: HashMap<i64, f64> = HashMap::new();
    let mut last_stamp = None;
    let t = Instant::now();
    while seen.len() < want && t.elapsed() < limit {
        let stamp = std::fs::metadata(results)
            .ok()
            .map(|m| (std::os::unix::fs::MetadataExt::ino(&m), m.modified().ok()));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        if stamp.is_some() && stamp != last_stamp {
            last_stamp = stamp;
            for sent in sent_values(results, id) {
                seen.entry((sent * 1e6).round() as i64)
                    .or_insert(now - sent);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen.into_values().collect()
}

/// The `sent` values of experiment `id` in the `history` sheet of results.xlsx.
pub fn sent_values(results: &Path, id: u32) -> Vec<f64> {
    let Ok(mut wb) = calamine::open_workbook::<calamine::Xlsx<_>, _>(results) else {
        return Vec::new();
    };
    let Ok(range) = wb.worksheet_range("history") else {
        return Vec::new();
    };
    let mut rows = range.rows();
    let Some(header) = rows.next() else {
        return Vec::new();
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| matches!(h, Data::String(s) if s == name))
    };
    let (Some(c_id), Some(c_metric), Some(c_value)) = (col("id"), col("metric"), col("value"))
    else {
        return Vec::new();
    };
    rows.filter(|r| {
        matches!(&r[c_metric], Data::String(s) if s == "sent")
            && match &r[c_id] {
                Data::Float(f) => *f == f64::from(id),
                Data::Int(n) => *n == i64::from(id),
                other => other.to_string() == id.to_string(),
            }
    })
    .filter_map(|r| match r[c_value] {
        Data::Float(f) => Some(f),
        Data::Int(n) => Some(n as f64),
        _ => None,
    })
    .collect()
}

/// `what, N values: p50 .. ms, p95 .. ms, min .. ms, max .. ms` (latencies in seconds).
pub fn print_latency(what: &str, lat: &[f64], goal: &str) {
    if lat.is_empty() {
        println!("{what}: nothing measured");
        return;
    }
    let mut lat = lat.to_vec();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize] * 1e3;
    println!(
        "{what}, {} values: p50 {:.0} ms, p95 {:.0} ms, min {:.0} ms, max {:.0} ms{goal}",
        lat.len(),
        pct(0.5),
        pct(0.95),
        lat[0] * 1e3,
        lat[lat.len() - 1] * 1e3,
    );
}
