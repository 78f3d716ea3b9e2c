//! Workbook benchmarks (`cargo bench --bench workbooks`, or scripts/bench.sh). Prints figures:
//! read + validate a 10,000-row experiments workbook (goal ≤ 300 ms) — the sheet read alone and
//! the whole project read (config checks, command rendering, state-store row tracking) side by
//! side — writing results.xlsx for 10,000 rows × 30 columns (goal ≤ 1 s), and its charts
//! sheet for 5 and for 500 experiments × 3 metrics × 200 points.

use neronet::sheet::results::{HistoryRow, ResultRow, Results, Value};
use rust_xlsxwriter::Workbook;
use std::time::Instant;

const ROWS: u32 = 10_000;

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (f64, f64) {
    let mut times = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        std::hint::black_box(f());
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[0], times[times.len() / 2])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("neronet-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("neronet.yaml"),
        "command: python3 train.py --lr {lr} --width {width} --seed {seed} --opt {opt}\n",
    )
    .unwrap();

    // A realistic 10,000-row workbook: reserved columns, 10 parameters, notes.
    let mut book = Workbook::new();
    let ws = book.add_worksheet();
    ws.set_name("experiments").unwrap();
    let header = [
        "id",
        "status",
        "cluster",
        "abort_when",
        "lr",
        "width",
        "seed",
        "opt",
        "depth",
        "dropout",
        "batch",
        "wd",
        "warmup",
        "tag",
        "notes",
    ];
    for (c, h) in header.iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    for r in 1..=ROWS {
        ws.write_number(r, 0, r as f64).unwrap();
        if r % 10 == 0 {
            ws.write_string(r, 1, "start").unwrap();
        }
        ws.write_string(r, 2, "local").unwrap();
        if r % 7 == 0 {
            ws.write_string(r, 3, "runtime>2h&&loss>1").unwrap();
        }
        ws.write_number(r, 4, 0.001 * (r % 50) as f64).unwrap();
        ws.write_number(r, 5, (16 << (r % 4)) as f64).unwrap();
        ws.write_number(r, 6, r as f64).unwrap();
        ws.write_string(r, 7, ["adam", "sgd", "adamw"][r as usize % 3])
            .unwrap();
        for c in 8..13 {
            ws.write_number(r, c, (r % 13) as f64 / 10.0).unwrap();
        }
        ws.write_string(r, 13, format!("sweep-{}", r / 100))
            .unwrap();
        ws.write_string(r, 14, "a short note about this run")
            .unwrap();
    }
    let wb = dir.join("experiments.xlsx");
    book.save(&wb).unwrap();
    println!(
        "experiments workbook: {ROWS} rows x {} columns, {:.1} MB",
        header.len(),
        std::fs::metadata(&wb).unwrap().len() as f64 / 1e6
    );

    let (best, median) = best_of(7, || neronet::sheet::read::read_experiments(&wb).unwrap());
    println!(
        "read sheet (calamine + row checks):          best {:.0} ms, median {:.0} ms",
        best * 1e3,
        median * 1e3
    );
    let mut project = neronet::project::Project::open(&dir).unwrap();
    let (best, median) = best_of(7, || {
        let e = project.read_experiments().unwrap();
        assert_eq!(
            e.list.iter().filter(|x| x.is_valid()).count(),
            ROWS as usize
        );
    });
    println!("read + validate (+ config checks, commands, store): best {:.0} ms, median {:.0} ms  (goal <= 300 ms)", best * 1e3, median * 1e3);

    // results.xlsx: 10,000 rows x 36 columns (18 fixed + 10 parameters + 7 metrics + last update).
    let params: Vec<String> = (0..10).map(|i| format!("param{i}")).collect();
    let metrics: Vec<String> = (0..7).map(|i| format!("metric{i}")).collect();
    let results = Results {
        params: params.clone(),
        metrics: metrics.clone(),
        rows: (0..ROWS)
            .map(|r| ResultRow {
                id: (r + 1).to_string(),
                state: "finished".into(),
                cluster: "local".into(),
                run: Some(1),
                job_id: Some(format!("{}", 100000 + r)),
                node: Some("node-7".into()),
                submitted: Some(1.79e9 + r as f64),
                started: Some(1.79e9 + r as f64 + 5.0),
                finished: Some(1.79e9 + r as f64 + 900.0),
                runtime: Some(895.0),
                exit_code: Some(0),
                reason: None,
                usage: neronet::store::Usage {
                    cpu_peak: Some(398.5),
                    cpu_avg: Some(97.2),
                    rss_peak: Some(3 << 30),
                    samples: 180,
                    gpu_percent: Some(88.0),
                    gpu_peak: Some(99.0),
                    gpu_avg: Some(87.1),
                    gpu_mem_bytes: Some(61 << 30),
                    gpu_mem_peak: Some(62 << 30),
                    gpus: vec!["0: NVIDIA H100 80GB HBM3".into()],
                },
                params: (0..10)
                    .map(|i| {
                        Some(if i == 3 {
                            Value::Text("adam".into())
                        } else {
                            Value::Num(i as f64 * 0.1)
                        })
                    })
                    .collect(),
                metrics: (0..7).map(|i| Some(1.0 / (i + r + 1) as f64)).collect(),
                updated: Some(1.79e9 + r as f64 + 900.0),
            })
            .collect(),
        history: Vec::new(),
        problems: Vec::new(),
    };
    let columns = 12 + params.len() + metrics.len() + 1;
    let out = dir.join("results.xlsx");
    let (best, median) = best_of(5, || {
        neronet::sheet::results::write(&out, &results).unwrap()
    });
    println!(
        "write results.xlsx ({ROWS} rows x {columns} columns, {:.1} MB): best {:.0} ms, median {:.0} ms  (goal <= 1000 ms)",
        std::fs::metadata(&out).unwrap().len() as f64 / 1e6,
        best * 1e3,
        median * 1e3
    );

    // The charts sheet: N experiments × 3 metrics × 200 points each, on history and charted.
    for n in [5, 500] {
        let results = Results {
            metrics: vec!["acc".into(), "loss".into(), "val_loss".into()],
            history: (0..n)
                .flat_map(|e| {
                    (0..200).flat_map(move |s| {
                        let x = f64::from(s);
                        let k = 1.0 + f64::from(e) / 100.0;
                        [
                            ("acc", 1.0 - k / (x + 2.0)),
                            ("loss", k / (x + 1.0)),
                            ("val_loss", k / (x + 1.0) + 0.1),
                        ]
                        .map(|(m, v)| HistoryRow {
                            id: (e + 1).to_string(),
                            run: 1,
                            t: 1.79e9 + x * 3.0,
                            step: Some(x * 10.0),
                            metric: m.into(),
                            value: v,
                        })
                    })
                })
                .collect(),
            ..Results::default()
        };
        let out = dir.join(format!("charts-{n}.xlsx"));
        let (best, median) = best_of(3, || {
            neronet::sheet::results::write(&out, &results).unwrap()
        });
        println!(
            "write results.xlsx with charts, {n} experiments x 3 metrics x 200 points ({} history rows, {:.2} MB): best {:.0} ms, median {:.0} ms",
            results.history.len(),
            std::fs::metadata(&out).unwrap().len() as f64 / 1e6,
            best * 1e3,
            median * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
