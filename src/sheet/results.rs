//! The results workbook (SPEC §3), written whole by rust_xlsxwriter and put in place atomically:
//! `results` (one row per experiment), `history` (metric series, long form), `problems`, and
//! `charts` (one chart per metric, see [`charts`]) with its hidden `chart data`.
//! Times are written as real date cells in UTC. A text longer than a cell holds is cut with a
//! mark and named on `problems`: one long value never costs the whole workbook.

use crate::sheet::read::cell_ref;
use rust_xlsxwriter::{ExcelDateTime, Format, FormatBorder, Workbook, Worksheet, XlsxError};
use std::borrow::Cow;
use std::path::Path;

mod charts;

/// Excel's row limit, less the header.
const MAX_HISTORY_ROWS: usize = 1_048_575;

/// Excel's limit on the text of one cell, in UTF-16 units (rust_xlsxwriter refuses more).
const MAX_CELL_TEXT: usize = 32_767;

/// `text` cut to `MAX_CELL_TEXT` with `mark(characters in all)` at its end; `None` if it fits.
fn cut_to_fit(text: &str, mark: impl FnOnce(usize) -> String) -> Option<String> {
    if text.len() <= MAX_CELL_TEXT || text.encode_utf16().count() <= MAX_CELL_TEXT {
        return None;
    }
    let mark = mark(text.chars().count());
    let room = MAX_CELL_TEXT - mark.encode_utf16().count();
    let mut out = String::with_capacity(MAX_CELL_TEXT + mark.len());
    let mut used = 0;
    for c in text.chars() {
        used += c.len_utf16();
        if used > room {
            break;
        }
        out.push(c);
    }
    out.push_str(&mark);
    Some(out)
}

/// Where a text goes, for naming a cut: sheet, 0-based row and column, the column's header and
/// the experiment's id.
struct At<'a> {
    sheet: &'static str,
    r: u32,
    c: u16,
    column: &'a str,
    id: Option<&'a str>,
}

/// The texts cut to fit their cells, as rows of the problems sheet.
#[derive(Default)]
struct Cuts(Vec<ProblemRow>);

impl Cuts {
    fn fit<'t>(&mut self, text: &'t str, at: &At<'_>) -> Cow<'t, str> {
        let mut total = 0;
        let cut = cut_to_fit(text, |n| {
            total = n;
            format!(" … [cut: {n} characters in all; see the problems sheet]")
        });
        match cut {
            None => Cow::Borrowed(text),
            Some(cut) => {
                self.0.push(ProblemRow {
                    place: format!("{}!{}", at.sheet, cell_ref(at.r, u32::from(at.c))),
                    id: at.id.map(String::from),
                    message: format!(
                        "column {:?}: the text has {total} characters, more than a cell holds (32,767); it is cut, with a mark at its end",
                        at.column
                    ),
                });
                Cow::Owned(cut)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Value {
    Num(f64),
    Text(String),
    /// Seconds, written as a spreadsheet duration (`[h]:mm:ss`), as the experiments sheet had it.
    Duration(f64),
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
    /// Resource peaks and averages of the run (GPU ones for the GPUs its processes used).
    pub usage: crate::store::Usage,
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
    duration: Format,
}

fn write_header(
    ws: &mut Worksheet,
    f: &Formats,
    cuts: &mut Cuts,
    sheet: &'static str,
    names: &[String],
    widths: &[f64],
) -> Result<(), XlsxError> {
    for (c, name) in names.iter().enumerate() {
        let at = At {
            sheet,
            r: 0,
            c: c as u16,
            column: name,
            id: None,
        };
        ws.write_string_with_format(0, c as u16, cuts.fit(name, &at), &f.header)?;
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
        // Ids are short (the workbook reader refuses long ones); a row without one shows its
        // place, `(row 12)`.
        _ => ws.write_string(r, c, id)?,
    };
    Ok(())
}

/// A text cell of a data sheet: cut to fit (and named in `cuts`) when too long.
fn put_text(
    ws: &mut Worksheet,
    cuts: &mut Cuts,
    at: &At<'_>,
    v: Option<&str>,
) -> Result<(), XlsxError> {
    if let Some(s) = v.filter(|s| !s.is_empty()) {
        ws.write_string(at.r, at.c, cuts.fit(s, at))?;
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
        duration: Format::new().set_num_format("[h]:mm:ss"),
    };

    let mut cuts = Cuts::default();
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
        "gpus",
        "gpu util avg (%)",
        "gpu util peak (%)",
        "gpu mem peak (MiB)",
        "cpu peak (%)",
        "rss peak (MiB)",
    ];
    let mut names: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    names.extend(results.params.iter().cloned());
    names.extend(results.metrics.iter().cloned());
    names.push("last update (UTC)".into());
    let mut widths = vec![
        8.0, 10.0, 9.0, 5.0, 9.0, 12.0, 19.0, 19.0, 19.0, 11.0, 9.0, 30.0, 24.0, 9.0, 9.0, 10.0,
        9.0, 10.0,
    ];
    widths.extend(std::iter::repeat_n(
        11.0,
        results.params.len() + results.metrics.len(),
    ));
    widths.push(19.0);
    write_header(ws, &f, &mut cuts, "results", &names, &widths)?;
    for (i, row) in results.rows.iter().enumerate() {
        let r = i as u32 + 1;
        let at = |c: u16| At {
            sheet: "results",
            r,
            c,
            column: &names[usize::from(c)],
            id: Some(&row.id),
        };
        put_id(ws, r, 0, &row.id)?;
        put_text(ws, &mut cuts, &at(1), Some(&row.state))?;
        put_text(ws, &mut cuts, &at(2), Some(&row.cluster))?;
        put_num(ws, r, 3, row.run.map(|n| n as f64))?;
        put_text(ws, &mut cuts, &at(4), row.job_id.as_deref())?;
        put_text(ws, &mut cuts, &at(5), row.node.as_deref())?;
        put_time(ws, &f, r, 6, row.submitted)?;
        put_time(ws, &f, r, 7, row.started)?;
        put_time(ws, &f, r, 8, row.finished)?;
        put_num(ws, r, 9, row.runtime.map(|s| (s * 10.0).round() / 10.0))?;
        put_num(ws, r, 10, row.exit_code.map(|c| c as f64))?;
        put_text(ws, &mut cuts, &at(11), row.reason.as_deref())?;
        let u = &row.usage;
        let gpus = (!u.gpus.is_empty()).then(|| u.gpus.join("; "));
        put_text(ws, &mut cuts, &at(12), gpus.as_deref())?;
        let one = |v: Option<f64>| v.map(|v| (v * 10.0).round() / 10.0);
        let mib = |b: Option<i64>| b.map(|b| (b as f64 / 1048576.0 * 10.0).round() / 10.0);
        put_num(ws, r, 13, one(u.gpu_avg))?;
        put_num(ws, r, 14, one(u.gpu_peak))?;
        put_num(ws, r, 15, mib(u.gpu_mem_peak))?;
        put_num(ws, r, 16, one(u.cpu_peak))?;
        put_num(ws, r, 17, mib(u.rss_peak))?;
        let mut c = fixed.len() as u16;
        for p in &row.params {
            match p {
                Some(Value::Num(n)) => put_num(ws, r, c, Some(*n))?,
                Some(Value::Text(t)) => put_text(ws, &mut cuts, &at(c), Some(t))?,
                Some(Value::Duration(secs)) if secs.is_finite() => {
                    ws.write_number_with_format(r, c, secs / 86400.0, &f.duration)?;
                }
                Some(Value::Duration(secs)) => put_num(ws, r, c, Some(*secs))?,
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
    write_header(
        ws,
        &f,
        &mut cuts,
        "history",
        &names,
        &[8.0, 5.0, 19.0, 8.0, 14.0, 12.0],
    )?;
    for (i, h) in results.history.iter().take(MAX_HISTORY_ROWS).enumerate() {
        let r = i as u32 + 1;
        put_id(ws, r, 0, &h.id)?;
        ws.write_number(r, 1, h.run as f64)?;
        put_time(ws, &f, r, 2, Some(h.t))?;
        put_num(ws, r, 3, h.step)?;
        let at = At {
            sheet: "history",
            r,
            c: 4,
            column: "metric",
            id: Some(&h.id),
        };
        put_text(ws, &mut cuts, &at, Some(&h.metric))?;
        put_num(ws, r, 5, Some(h.value))?;
    }

    // The charts draw what the history sheet shows.
    let shown = &results.history[..results.history.len().min(MAX_HISTORY_ROWS)];
    let (plans, not_charted) = charts::plan(shown, &results.rows);

    let ws = book.add_worksheet();
    ws.set_name("problems")?;
    let names: Vec<String> = ["where", "id", "problem"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    write_header(ws, &f, &mut cuts, "problems", &names, &[18.0, 8.0, 80.0])?;
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
    problems.extend(charts::problems(&plans, not_charted));
    problems.extend(cuts.0);
    // A problem's own text (a message quoting a huge cell) is cut with a mark only.
    let fit = |s: &str| {
        cut_to_fit(s, |n| format!(" … [cut: {n} characters in all]"))
            .unwrap_or_else(|| s.to_string())
    };
    for (i, p) in problems.iter().enumerate() {
        let r = i as u32 + 1;
        ws.write_string(r, 0, fit(&p.place))?;
        if let Some(id) = p.id.as_deref().filter(|id| !id.is_empty()) {
            ws.write_string(r, 1, fit(id))?;
        }
        ws.write_string(r, 2, fit(&p.message))?;
    }

    charts::write(&mut book, &plans, &f.header)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: one text over Excel's 32,767-character cell limit failed the whole results
    /// workbook ("build the results workbook", no cell named). It is cut with a mark, and the
    /// cell is named on the problems sheet. The limit counts UTF-16 units: `😀` is two.
    #[test]
    fn a_text_over_the_cell_limit_is_cut_and_named() {
        let long: String = "😀".repeat(20_000);
        let results = Results {
            params: vec!["config".into()],
            rows: vec![ResultRow {
                id: "7".into(),
                state: "defined".into(),
                cluster: "local".into(),
                params: vec![Some(Value::Text(long.clone()))],
                ..ResultRow::default()
            }],
            problems: vec![ProblemRow {
                place: "experiments!C2".into(),
                id: Some("7".into()),
                message: format!("bad value {long}"),
            }],
            ..Results::default()
        };
        let bytes = build(&results).expect("the workbook is written");
        let mut book: calamine::Xlsx<_> =
            calamine::open_workbook_from_rs(std::io::Cursor::new(bytes)).unwrap();
        use calamine::Reader;
        let sheet = book.worksheet_range("results").unwrap();
        let cell = sheet.get_value((1, 18)).unwrap().to_string();
        assert!(cell.encode_utf16().count() <= 32_767, "{}", cell.len());
        assert!(cell.starts_with("😀😀"));
        assert!(
            cell.ends_with(" … [cut: 20000 characters in all; see the problems sheet]"),
            "{}",
            &cell[cell.len() - 80..]
        );
        let problems = book.worksheet_range("problems").unwrap();
        let rows: Vec<Vec<String>> = problems
            .rows()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect();
        assert_eq!(rows.len(), 3, "header, the row's own problem, the cut cell");
        assert!(rows[1][2].encode_utf16().count() <= 32_767);
        assert_eq!(rows[2][0], "results!S2");
        assert_eq!(rows[2][1], "7");
        assert!(
            rows[2][2].contains("column \"config\"") && rows[2][2].contains("20000 characters"),
            "{:?}",
            rows[2]
        );
    }
}
