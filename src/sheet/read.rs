//! Reading the experiments workbook (SPEC §2) with calamine, xlsx or ods. Row 1 holds headers
//! (matched case-insensitively); reserved columns are picked out, every other column is a
//! parameter. A problem with the whole file is an error (nothing may be acted on); a problem with
//! one row marks that row invalid and names its cell, and the other rows proceed.

use crate::state::StateName;
use calamine::{Data, Reader};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The sheet used when present; otherwise the first sheet.
pub const SHEET_NAME: &str = "experiments";
const MAX_ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SheetError {
    #[error("{path}: not a readable spreadsheet ({message})")]
    Open { path: PathBuf, message: String },
    #[error("{path}: the workbook has no sheets")]
    NoSheet { path: PathBuf },
    #[error("{path}: sheet {sheet:?} is empty (row 1 must hold the column headers)")]
    Empty { path: PathBuf, sheet: String },
    #[error("{path}: {sheet}!1:1 is empty; the column headers must be in row 1 (the sheet's content starts in row {first})")]
    HeaderNotInRow1 {
        path: PathBuf,
        sheet: String,
        first: u32,
    },
    #[error("{path}: {sheet}!1:1 has no {column:?} column (headers found: {found})")]
    MissingColumn {
        path: PathBuf,
        sheet: String,
        column: &'static str,
        found: String,
    },
    #[error("{path}: {sheet}!{first} and {sheet}!{second} are both headed {name:?}")]
    DuplicateColumn {
        path: PathBuf,
        sheet: String,
        name: String,
        first: String,
        second: String,
    },
}

/// A parameter value as the cell holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub text: String,
    pub number: Option<f64>,
}

/// A command typed into the status cell (SPEC §2, docs/WORKBOOK.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCommand {
    Start,
    Restart,
    /// Also typed as `stop`.
    Abort,
    /// Never start this row, even when selected.
    Hold,
}

impl StatusCommand {
    /// Every word the status cell accepts, in the order the template's drop-down lists them.
    pub const WORDS: [(&'static str, StatusCommand); 5] = [
        ("start", StatusCommand::Start),
        ("restart", StatusCommand::Restart),
        ("abort", StatusCommand::Abort),
        ("stop", StatusCommand::Abort),
        ("hold", StatusCommand::Hold),
    ];
}

/// The status cell, parsed once: case and surrounding spaces do not matter.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusCell {
    Empty,
    Command(StatusCommand),
    /// A state name (`running`, `finished`, ...), as neronet will write back into the cell.
    State(StateName),
    /// Anything else, trimmed, as typed.
    Other(String),
}

impl StatusCell {
    pub fn parse(text: &str) -> StatusCell {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return StatusCell::Empty;
        }
        let lower = trimmed.to_lowercase();
        if let Some((_, c)) = StatusCommand::WORDS.iter().find(|(w, _)| *w == lower) {
            return StatusCell::Command(*c);
        }
        match StateName::parse(&lower) {
            Some(s) => StatusCell::State(s),
            None => StatusCell::Other(trimmed.to_string()),
        }
    }

    pub fn is(&self, command: StatusCommand) -> bool {
        *self == StatusCell::Command(command)
    }
}

#[derive(Debug, Clone)]
pub struct SheetRow {
    /// 1-based row number in the sheet.
    pub row: u32,
    pub id: String,
    pub id_cell: String,
    pub status: StatusCell,
    pub status_cell: String,
    pub command: Option<String>,
    pub cluster: Option<String>,
    pub abort_when: Option<String>,
    /// Addresses of the command, cluster and abort_when cells (empty when there is no such column).
    pub command_cell: String,
    pub cluster_cell: String,
    pub abort_when_cell: String,
    /// `slurm.time` → "2:00:00", ...
    pub warden_options: BTreeMap<String, String>,
    /// Parameter columns (header as written) → value; empty cells are absent.
    pub params: BTreeMap<String, Param>,
    /// Why this row must not be acted on.
    pub invalid: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `experiments!A7`
    pub cell: String,
    pub id: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.cell, self.message)
    }
}

#[derive(Debug, Clone)]
pub struct ExperimentSheet {
    pub path: PathBuf,
    pub sheet: String,
    /// Parameter column names, in sheet order.
    pub params: Vec<String>,
    /// Whether a `command` column exists.
    pub has_command_column: bool,
    /// The data rows (the core moves them out when it checks them).
    pub rows: Vec<SheetRow>,
}

/// `A1`-style address of a 0-based (row, col).
pub fn cell_ref(row: u32, col: u32) -> String {
    let mut c = col + 1;
    let mut letters = Vec::new();
    while c > 0 {
        let rem = (c - 1) % 26;
        letters.push(b'A' + rem as u8);
        c = (c - 1) / 26;
    }
    letters.reverse();
    format!("{}{}", String::from_utf8(letters).expect("ascii"), row + 1)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Id,
    Status,
    Command,
    Cluster,
    AbortWhen,
    Warden,
    Ignored,
    Param,
}

fn role(header: &str) -> Role {
    let h = header.trim().to_ascii_lowercase();
    match h.as_str() {
        "id" => Role::Id,
        "status" => Role::Status,
        "command" => Role::Command,
        "cluster" => Role::Cluster,
        "abort_when" => Role::AbortWhen,
        "notes" => Role::Ignored,
        _ if h.starts_with('#') || h.is_empty() => Role::Ignored,
        _ if h.starts_with("slurm.") || h.starts_with("sge.") => Role::Warden,
        _ => Role::Param,
    }
}

/// Read and check the experiments workbook.
pub fn read_experiments(path: &Path) -> Result<ExperimentSheet, SheetError> {
    let open_err = |message: String| SheetError::Open {
        path: path.to_path_buf(),
        message,
    };
    let mut book = calamine::open_workbook_auto(path).map_err(|e| open_err(e.to_string()))?;
    let names = book.sheet_names();
    let sheet = names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(SHEET_NAME))
        .or_else(|| names.first())
        .cloned()
        .ok_or_else(|| SheetError::NoSheet {
            path: path.to_path_buf(),
        })?;
    let range = book
        .worksheet_range(&sheet)
        .map_err(|e| open_err(e.to_string()))?;
    let empty = || SheetError::Empty {
        path: path.to_path_buf(),
        sheet: sheet.clone(),
    };
    let (r0, c0) = range.start().ok_or_else(empty)?;
    let mut rows = range.rows();
    // Row 1 must be the header row: a sheet whose first used row is lower has no headers.
    if r0 != 0 {
        return Err(SheetError::HeaderNotInRow1 {
            path: path.to_path_buf(),
            sheet: sheet.clone(),
            first: r0 + 1,
        });
    }
    let header_cells = rows.next().ok_or_else(empty)?;
    let addr = |r: u32, c: usize| format!("{sheet}!{}", cell_ref(r, c0 + c as u32));

    let mut roles = Vec::new();
    let mut headers: Vec<String> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, cell) in header_cells.iter().enumerate() {
        let h = display(cell).trim().to_string();
        let r = role(&h);
        if r != Role::Ignored {
            if let Some(first) = seen.insert(h.to_ascii_lowercase(), i) {
                return Err(SheetError::DuplicateColumn {
                    path: path.to_path_buf(),
                    sheet: sheet.clone(),
                    name: h,
                    first: cell_ref(0, c0 + first as u32),
                    second: cell_ref(0, c0 + i as u32),
                });
            }
        }
        roles.push(r);
        headers.push(h);
    }
    for (needed, column) in [(Role::Id, "id"), (Role::Status, "status")] {
        if !roles.contains(&needed) {
            let found: Vec<&str> = headers
                .iter()
                .filter(|h| !h.is_empty())
                .map(String::as_str)
                .collect();
            return Err(SheetError::MissingColumn {
                path: path.to_path_buf(),
                sheet: sheet.clone(),
                column,
                found: if found.is_empty() {
                    "none".into()
                } else {
                    found.join(", ")
                },
            });
        }
    }
    let params: Vec<String> = headers
        .iter()
        .zip(&roles)
        .filter(|(_, r)| **r == Role::Param)
        .map(|(h, _)| h.clone())
        .collect();

    let mut out = Vec::new();
    for (offset, cells) in rows.enumerate() {
        let row0 = r0 + 1 + offset as u32;
        if cells.iter().all(|c| display(c).trim().is_empty()) {
            continue;
        }
        let mut row = SheetRow {
            row: row0 + 1,
            id: String::new(),
            id_cell: String::new(),
            status: StatusCell::Empty,
            status_cell: String::new(),
            command: None,
            cluster: None,
            abort_when: None,
            command_cell: String::new(),
            cluster_cell: String::new(),
            abort_when_cell: String::new(),
            warden_options: BTreeMap::new(),
            params: BTreeMap::new(),
            invalid: Vec::new(),
        };
        let mut problems = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let cell = cells.get(i).unwrap_or(&Data::Empty);
            let at = addr(row0, i);
            let error = match cell {
                Data::Error(e) => Some(e.to_string()),
                // calamine reads an .ods formula error as its text.
                Data::String(t) if is_error_text(t) => Some(t.trim().to_string()),
                _ => None,
            };
            if let Some(e) = error {
                if *role != Role::Ignored {
                    problems.push((
                        at.clone(),
                        format!("cell error {e} in column {:?}", headers[i]),
                    ));
                }
                continue;
            }
            let text = display(cell);
            let trimmed = text.trim();
            let opt = || (!trimmed.is_empty()).then(|| trimmed.to_string());
            match role {
                Role::Id => {
                    row.id_cell = at.clone();
                    match id_of(cell) {
                        Ok(id) => row.id = id,
                        Err(m) => problems.push((at, m)),
                    }
                }
                Role::Status => {
                    row.status_cell = at;
                    row.status = StatusCell::parse(trimmed);
                }
                Role::Command => {
                    row.command = opt();
                    row.command_cell = at;
                }
                Role::Cluster => {
                    row.cluster = opt();
                    row.cluster_cell = at;
                }
                Role::AbortWhen => {
                    row.abort_when = opt();
                    row.abort_when_cell = at;
                }
                Role::Warden => {
                    if let Some(v) = opt() {
                        row.warden_options
                            .insert(headers[i].to_ascii_lowercase(), v);
                    }
                }
                Role::Param => {
                    if !trimmed.is_empty() {
                        let number = match cell {
                            Data::Int(n) => Some(*n as f64),
                            Data::Float(f) => Some(*f),
                            Data::Bool(_) => None,
                            _ => trimmed.parse::<f64>().ok().filter(|f| f.is_finite()),
                        };
                        row.params.insert(
                            headers[i].clone(),
                            Param {
                                text: text.to_string(),
                                number,
                            },
                        );
                    }
                }
                Role::Ignored => {}
            }
        }
        let id = (!row.id.is_empty()).then(|| row.id.clone());
        row.invalid = problems
            .into_iter()
            .map(|(cell, message)| Problem {
                cell,
                id: id.clone(),
                message,
            })
            .collect();
        out.push(row);
    }
    mark_duplicates(&mut out);
    Ok(ExperimentSheet {
        path: path.to_path_buf(),
        sheet,
        params,
        has_command_column: roles.contains(&Role::Command),
        rows: out,
    })
}

fn mark_duplicates(rows: &mut [SheetRow]) {
    let mut first: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut dups: Vec<(usize, String)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if r.id.is_empty() {
            continue;
        }
        let key = canonical_id(&r.id);
        match first.get(&key) {
            Some((j, cell)) => {
                dups.push((
                    i,
                    format!("duplicate id {} (first in {})", r.id, bare_cell(cell)),
                ));
                dups.push((
                    *j,
                    format!("duplicate id {} (again in {})", r.id, bare_cell(&r.id_cell)),
                ));
            }
            None => {
                first.insert(key, (i, r.id_cell.clone()));
            }
        }
    }
    for (i, message) in dups {
        let r = &mut rows[i];
        if !r.invalid.iter().any(|p| p.message == message) {
            r.invalid.push(Problem {
                cell: r.id_cell.clone(),
                id: Some(r.id.clone()),
                message,
            });
        }
    }
}

fn bare_cell(addr: &str) -> &str {
    addr.rsplit('!').next().unwrap_or(addr)
}

/// A spreadsheet error value shown as text (`#DIV/0!`, LibreOffice's `Err:502`).
fn is_error_text(t: &str) -> bool {
    const CODES: &[&str] = &[
        "#DIV/0!", "#N/A", "#NAME?", "#NULL!", "#NUM!", "#REF!", "#VALUE!",
    ];
    let t = t.trim();
    CODES.contains(&t)
        || t.strip_prefix("Err:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `007` and `7` are the same id when both are whole numbers.
pub fn canonical_id(id: &str) -> String {
    match id.trim().parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => id.trim().to_string(),
    }
}

fn id_of(cell: &Data) -> Result<String, String> {
    match cell {
        Data::Empty => Err("missing id".into()),
        Data::Int(n) => Ok(n.to_string()),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => Ok(format!("{}", *f as i64)),
        Data::Float(f) => Err(format!("id {f} is not a whole number or a short text")),
        Data::Bool(_) => Err("id is a boolean; use a number or a short text".into()),
        other => {
            let t = display(other).trim().to_string();
            if t.is_empty() {
                Err("missing id".into())
            } else if let Ok(n) = t.parse::<i64>() {
                // `007` typed as text is the id 7, as the number 7 is: one experiment, one history.
                Ok(n.to_string())
            } else if t.chars().count() > MAX_ID_LEN || t.contains(['\n', '\r', ',']) {
                Err(format!(
                    "id {t:?} is too long or holds a comma or newline (ids are short texts)"
                ))
            } else {
                Ok(t)
            }
        }
    }
}

/// A cell as text: whole floats without `.0`, dates as ISO 8601.
pub fn display(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(s) => s.clone(),
        Data::Int(n) => n.to_string(),
        Data::Float(f) => nerokid::expr::format_number(*f),
        Data::Bool(b) => b.to_string(),
        Data::DateTime(dt) => excel_serial_to_iso(dt.as_f64()),
        Data::DateTimeIso(s) | Data::DurationIso(s) => s.clone(),
        Data::Error(e) => format!("#{e:?}"),
    }
}

/// Excel's day count (1900 system) → `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`.
pub fn excel_serial_to_iso(serial: f64) -> String {
    let days = serial.floor() as i64;
    let secs = ((serial - serial.floor()) * 86400.0).round() as i64;
    // Day 0 = 1899-12-30 (this absorbs Excel's fictional 1900-02-29).
    let (y, m, d) = civil_from_days(days - 25569);
    if secs == 0 {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            secs / 3600,
            (secs % 3600) / 60,
            secs % 60
        )
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(cell_ref(0, 0), "A1");
        assert_eq!(cell_ref(6, 25), "Z7");
        assert_eq!(cell_ref(2, 26), "AA3");
        assert_eq!(cell_ref(0, 701), "ZZ1");
    }

    #[test]
    fn status_cell_ignores_case_and_surrounding_space() {
        use StatusCommand::*;
        for (text, want) in [
            ("", StatusCell::Empty),
            ("  \t", StatusCell::Empty),
            ("start", StatusCell::Command(Start)),
            (" Start ", StatusCell::Command(Start)),
            ("RESTART", StatusCell::Command(Restart)),
            ("abort", StatusCell::Command(Abort)),
            ("\tStop\n", StatusCell::Command(Abort)),
            ("hold", StatusCell::Command(Hold)),
            (" HoLd", StatusCell::Command(Hold)),
            ("Running", StatusCell::State(StateName::Running)),
            ("finished ", StatusCell::State(StateName::Finished)),
            ("on hold", StatusCell::Other("on hold".into())),
            (" Maybe later ", StatusCell::Other("Maybe later".into())),
        ] {
            assert_eq!(StatusCell::parse(text), want, "{text:?}");
        }
        assert!(StatusCell::parse(" HOLD ").is(Hold));
        assert!(!StatusCell::parse("hold it").is(Hold));
    }

    #[test]
    fn every_status_word_is_in_the_template_drop_down() {
        assert_eq!(
            crate::sheet::template::STATUS_COMMANDS,
            ["start", "restart", "abort", "stop", "hold"]
        );
        for word in crate::sheet::template::STATUS_COMMANDS {
            assert!(matches!(StatusCell::parse(word), StatusCell::Command(_)));
        }
    }

    #[test]
    fn dates() {
        assert_eq!(excel_serial_to_iso(45292.0), "2024-01-01");
        assert_eq!(excel_serial_to_iso(45292.5), "2024-01-01 12:00:00");
    }
}
