//! Write-back benchmark (`cargo bench --bench writeback`): 1,000 status cells patched into a
//! 10,000-row experiments workbook (goal ≤ 300 ms), the whole call — read, patch the sheet XML,
//! copy the other entries raw, temp file, fsync, rename. Prints figures; asserts nothing.

use neronet::sheet::writeback::{patch_cells, CellRef, CellValue};
use rust_xlsxwriter::Workbook;
use std::time::Instant;

const ROWS: u32 = 10_000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("experiments.xlsx");
    let mut book = Workbook::new();
    let ws = book.add_worksheet();
    ws.set_name("experiments").unwrap();
    let header = [
        "id", "status", "command", "lr", "width", "seed", "opt", "notes",
    ];
    for (c, h) in header.iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    for r in 1..=ROWS {
        ws.write_number(r, 0, r as f64).unwrap();
        if r % 3 == 0 {
            ws.write_string(r, 1, "start").unwrap();
        }
        ws.write_string(r, 2, "python3 train.py --lr {lr}").unwrap();
        ws.write_number(r, 3, 0.001 * (r % 10) as f64).unwrap();
        ws.write_number(r, 4, (16 << (r % 4)) as f64).unwrap();
        ws.write_number(r, 5, (r % 7) as f64).unwrap();
        ws.write_string(r, 6, "adam").unwrap();
        ws.write_string(r, 7, format!("row {r}")).unwrap();
    }
    book.save(&path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();

    // Every 10th row's status: a third of them replace a cell, the rest insert one.
    let states = ["running", "finished", "crashed", "queued"];
    let mut times = Vec::new();
    for round in 0..7 {
        let cells: Vec<_> = (0..1_000u32)
            .map(|i| {
                let state = states[(i as usize + round) % states.len()];
                (
                    CellRef::new(1 + i * 10, 1),
                    CellValue::Text(state.to_owned()),
                )
            })
            .collect();
        let start = Instant::now();
        patch_cells(&path, "experiments", &cells).unwrap();
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "write-back of 1,000 status cells into a {ROWS}-row workbook ({:.1} MB): best {:.0} ms, median {:.0} ms (goal ≤ 300 ms)",
        size as f64 / 1e6,
        times[0] * 1e3,
        times[times.len() / 2] * 1e3
    );
}
