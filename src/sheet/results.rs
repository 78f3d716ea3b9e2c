//! The results workbook (SPEC §3), written whole by rust_xlsxwriter and put in place atomically:
//! `results` (one row per experiment), `history` (metric series, long form) and `problems`.
//! Times are written as real date cells in UTC.

use rust_xlsxwriter::{ExcelDateTime, Format, FormatBorder, Workbook, Worksheet, XlsxError};
use std::path::Path;

/// Excel's row limit, less the header.
const MAX_HISTORY_ROWS: usize = 1_048_575;

#[derive(Debug, Clone)]
pub enum Value {
    Num(f64),
    Text(String),
}

#[derive(Debug, Clone, Default)]
pub struct ResultRow {
    pub id: String,
    pub state: String,
    pub cluster: String,
    pub run: Option<i64>,
    pub job_id: Option<String>,
    pub node: Option<String>,
    pub submitted: Option<f64>,
    pub started: Option<f64>,
    pub finished: Option<f64>,
    pub runtime: Option<f64>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    /// One per `Results::params`, in order.
    pub params: Vec<Option<Value>>,
    /// One per `Results::metrics`, in order.
    pub metrics: Vec<Option<f64>>,
    pub updated: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub id: String,
    pub run: i64,
    pub t: f64,
    pub step: Option<f64>,
    pub metric: String,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct ProblemRow {
    pub place: String,
    pub id: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Results {
    pub params: Vec<String>,
    pub metrics: Vec<String>,
    pub rows: Vec<ResultRow>,
    pub history: Vec<HistoryRow>,
    pub problems: Vec<ProblemRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("build the results workbook")]
    Build(#[from] XlsxError),
    #[error("write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        err: std::io::Error,
    },
}

struct Formats {
    header: Format,
    time: Format,
}

fn write_header(
    ws: &mut Worksheet,
    f: &Formats,
    names: &[String],
    widths: &[f64],
) -> Result<(), XlsxError> {
    for (c, name) in names.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, name, &f.header)?;
        ws.set_column_width(c as u16, widths.get(c).copied().unwrap_or(12.0))?;
    }
    ws.set_freeze_panes(1, 0)?;
    if !names.is_empty() {
        ws.autofilter(0, 0, 0, names.len() as u16 - 1)?;
    }
    Ok(())
}

fn put_time(
    ws: &mut Worksheet,
    f: &Formats,
    r: u32,
    c: u16,
    t: Option<f64>,
) -> Result<(), XlsxError> {
    if let Some(t) = t.filter(|t| *t > 0.0) {
        let dt = ExcelDateTime::from_timestamp(t.round() as i64)?;
        ws.write_datetime_with_format(r, c, &dt, &f.time)?;
    }
    Ok(())
}

fn put_num(ws: &mut Worksheet, r: u32, c: u16, v: Option<f64>) -> Result<(), XlsxError> {
    match v {
        Some(n) if n.is_finite() => {
            ws.write_number(r, c, n)?;
        }
        // Excel has no NaN or infinity: show them as text rather than corrupt the file.
        Some(n) => {
            ws.write_string(r, c, n.to_string().to_ascii_lowercase())?;
        }
        None => {}
    }
    Ok(())
}

/// Whole-number ids as numbers, on every sheet, so lookups between sheets match.
fn put_id(ws: &mut Worksheet, r: u32, c: u16, id: &str) -> Result<(), XlsxError> {
    match id.parse::<f64>() {
        Ok(n) if id.trim() == nerokid::expr::format_number(n) => ws.write_number(r, c, n)?,
        _ => ws.write_string(r, c, id)?,
    };
    Ok(())
}

fn put_text(ws: &mut Worksheet, r: u32, c: u16, v: Option<&str>) -> Result<(), XlsxError> {
    if let Some(s) = v.filter(|s| !s.is_empty()) {
        ws.write_string(r, c, s)?;
    }
    Ok(())
}

/// Build the workbook bytes.
pub fn build(results: &Results) -> Result<Vec<u8>, XlsxError> {
    let mut book = Workbook::new();
    let f = Formats {
        header: Format::new()
            .set_bold()
            .set_background_color("DDEBF7")
            .set_border_bottom(FormatBorder::Thin),
        time: Format::new().set_num_format("yyyy-mm-dd hh:mm:ss"),
    };

    let ws = book.add_worksheet();
    ws.set_name("results")?;
    let fixed = [
        "id",
        "state",
        "cluster",
        "run",
        "job id",
        "node",
        "submitted (UTC)",
        "started (UTC)",
        "finished (UTC)",
        "runtime (s)",
        "exit code",
        "reason",
    ];
    let mut names: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    names.extend(results.params.iter().cloned());
    names.extend(results.metrics.iter().cloned());
    names.push("last update (UTC)".into());
    let mut widths = vec![
        8.0, 10.0, 9.0, 5.0, 9.0, 12.0, 19.0, 19.0, 19.0, 11.0, 9.0, 30.0,
    ];
    widths.extend(std::iter::repeat_n(
        11.0,
        results.params.len() + results.metrics.len(),
    ));
    widths.push(19.0);
    write_header(ws, &f, &names, &widths)?;
    for (i, row) in results.rows.iter().enumerate() {
        let r = i as u32 + 1;
        put_id(ws, r, 0, &row.id)?;
        put_text(ws, r, 1, Some(&row.state))?;
        put_text(ws, r, 2, Some(&row.cluster))?;
        put_num(ws, r, 3, row.run.map(|n| n as f64))?;
        put_text(ws, r, 4, row.job_id.as_deref())?;
        put_text(ws, r, 5, row.node.as_deref())?;
        put_time(ws, &f, r, 6, row.submitted)?;
        put_time(ws, &f, r, 7, row.started)?;
        put_time(ws, &f, r, 8, row.finished)?;
        put_num(ws, r, 9, row.runtime.map(|s| (s * 10.0).round() / 10.0))?;
        put_num(ws, r, 10, row.exit_code.map(|c| c as f64))?;
        put_text(ws, r, 11, row.reason.as_deref())?;
        let mut c = fixed.len() as u16;
        for p in &row.params {
            match p {
                Some(Value::Num(n)) => put_num(ws, r, c, Some(*n))?,
                Some(Value::Text(t)) => put_text(ws, r, c, Some(t))?,
                None => {}
            }
            c += 1;
        }
        for m in &row.metrics {
            put_num(ws, r, c, *m)?;
            c += 1;
        }
        put_time(ws, &f, r, c, row.updated)?;
    }

    let ws = book.add_worksheet();
    ws.set_name("history")?;
    let names: Vec<String> = ["id", "run", "time (UTC)", "step", "metric", "value"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    write_header(ws, &f, &names, &[8.0, 5.0, 19.0, 8.0, 14.0, 12.0])?;
    for (i, h) in results.history.iter().take(MAX_HISTORY_ROWS).enumerate() {
        let r = i as u32 + 1;
        put_id(ws, r, 0, &h.id)?;
        ws.write_number(r, 1, h.run as f64)?;
        put_time(ws, &f, r, 2, Some(h.t))?;
        put_num(ws, r, 3, h.step)?;
        ws.write_string(r, 4, &h.metric)?;
        put_num(ws, r, 5, Some(h.value))?;
    }

    let ws = book.add_worksheet();
    ws.set_name("problems")?;
    let names: Vec<String> = ["where", "id", "problem"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    write_header(ws, &f, &names, &[18.0, 8.0, 80.0])?;
    let mut problems = results.problems.clone();
    if results.history.len() > MAX_HISTORY_ROWS {
        problems.push(ProblemRow {
            place: "history".into(),
            id: None,
            message: format!(
                "{} metric values do not fit one sheet; the first {MAX_HISTORY_ROWS} are shown (all are in .neronet/state.db)",
                results.history.len()
            ),
        });
    }
    for (i, p) in problems.iter().enumerate() {
        let r = i as u32 + 1;
        ws.write_string(r, 0, &p.place)?;
        put_text(ws, r, 1, p.id.as_deref())?;
        ws.write_string(r, 2, &p.message)?;
    }
    book.save_to_buffer()
}

/// Build and atomically replace the results workbook.
pub fn write(path: &Path, results: &Results) -> Result<(), ResultsError> {
    let bytes = build(results)?;
    crate::util::write_atomic(path, &bytes).map_err(|err| ResultsError::Write {
        path: path.to_path_buf(),
        err,
    })
}
