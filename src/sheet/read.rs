//! Reading the experiments workbook (SPEC §2) with calamine, xlsx or ods. Row 1 holds headers
//! (matched case-insensitively); reserved columns are picked out, every other column is a
//! parameter. A problem with the whole file is an error (nothing may be acted on); a problem with
//! one row marks that row invalid and names its cell, and the other rows proceed.

use crate::state::StateName;
use calamine::{Data, Dimensions, Range, Reader};
use std::collections::{BTreeMap, HashMap};
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
    /// `slurm.time` → "2:00:00", `sge.P` → "proj", ...: `slurm.` keys in lower case, `sge.`
    /// ones with the option's case as typed (see `warden_key`).
    pub warden_options: BTreeMap<String, String>,
    /// `slurm.time` → the address of its cell in this row (`experiments!F7`), for messages.
    pub warden_option_cells: BTreeMap<String, String>,
    /// Parameter columns (header as written) → value; empty cells are absent.
    pub params: BTreeMap<String, Param>,
    /// Why this row must not be acted on.
    pub invalid: Vec<Problem>,
    /// What the tool-owned columns (`neronet.why`, ...) hold in this row, by lowercase header.
    pub tool_values: BTreeMap<String, String>,
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
    /// 0-based sheet column of the `status` column.
    pub status_col: u32,
    /// Tool-owned columns (`neronet.why` → 0-based sheet column), by lowercase header.
    pub tool_columns: BTreeMap<String, u32>,
    /// 0-based sheet column just right of the last header cell (where a new column goes).
    pub next_col: u32,
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

/// Headers that start with this belong to the tool: `neronet.why`, `neronet.runtime`, ...
pub const TOOL_COLUMN_PREFIX: &str = "neronet.";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Id,
    Status,
    Command,
    Cluster,
    AbortWhen,
    Warden,
    Ignored,
    /// `neronet.<field>`: a column the tool writes (docs/WORKBOOK.md); never a parameter.
    ToolOwned,
    Param,
}

impl Role {
    /// Whether the column's cells are read and checked (the tool's own columns are not: they
    /// only say what the tool wrote).
    fn is_read(self) -> bool {
        !matches!(self, Role::Ignored | Role::ToolOwned)
    }
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
        _ if h.starts_with(TOOL_COLUMN_PREFIX) => Role::ToolOwned,
        _ => Role::Param,
    }
}

/// A warden column's key: `slurm.<key>` in lower case (sbatch's long options are), `sge.`
/// followed by the rest as typed: qsub's options are case-sensitive (`-P` project, `-p`
/// priority; `-N` is neronet's, `-n` no option).
fn warden_key(header: &str) -> String {
    let h = header.trim();
    let lower = h.to_ascii_lowercase();
    match lower.strip_prefix("sge.") {
        Some(_) => format!("sge.{}", &h["sge.".len()..]),
        None => lower,
    }
}

/// Read and check the experiments workbook.
pub fn read_experiments(path: &Path) -> Result<ExperimentSheet, SheetError> {
    let book = calamine::open_workbook_auto(path).map_err(|e| SheetError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    read_book(path, book, || xlsx_mentions_merges(path))
}

/// [`read_experiments`] of the content `bytes` that `path` held (the watcher's read: the very
/// content it hashed, not whatever the file holds by now). The format is chosen by `path`'s
/// extension, as for a file.
pub fn read_experiments_bytes(path: &Path, bytes: &[u8]) -> Result<ExperimentSheet, SheetError> {
    use calamine::Reader as _;
    let open_err = |message: String| SheetError::Open {
        path: path.to_path_buf(),
        message,
    };
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let cursor = || std::io::Cursor::new(bytes);
    let book = match ext.as_str() {
        "xlsx" | "xlsm" | "xlam" => calamine::Xlsx::new(cursor())
            .map(calamine::Sheets::Xlsx)
            .map_err(|e| open_err(e.to_string()))?,
        "ods" => calamine::Ods::new(cursor())
            .map(calamine::Sheets::Ods)
            .map_err(|e| open_err(e.to_string()))?,
        "xls" | "xla" => calamine::Xls::new(cursor())
            .map(calamine::Sheets::Xls)
            .map_err(|e| open_err(e.to_string()))?,
        _ => calamine::open_workbook_auto_from_rs(cursor()).map_err(|e| open_err(e.to_string()))?,
    };
    read_book(path, book, || zip_mentions_merges(cursor()))
}

fn read_book<RS: std::io::Read + std::io::Seek>(
    path: &Path,
    mut book: calamine::Sheets<RS>,
    mentions_merges: impl Fn() -> bool,
) -> Result<ExperimentSheet, SheetError> {
    let open_err = |message: String| SheetError::Open {
        path: path.to_path_buf(),
        message,
    };
    let names = book.sheet_names();
    let sheet = names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(SHEET_NAME))
        .or_else(|| names.first())
        .cloned()
        .ok_or_else(|| SheetError::NoSheet {
            path: path.to_path_buf(),
        })?;
    let (range, uncached) = read_cells(&mut book, &sheet).map_err(open_err)?;
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
        if r.is_read() || r == Role::ToolOwned {
            let key = match r {
                Role::Warden => warden_key(&h),
                _ => h.to_ascii_lowercase(),
            };
            if let Some(first) = seen.insert(key, i) {
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

    // Why a cell that reads as empty is not. Merged ranges cost another pass over the sheet:
    // read the first time a used cell is empty.
    let mut merges: Option<Vec<Dimensions>> = None;
    let mut explain = |row: u32, col: u32| {
        if let Some(f) = uncached.get(&(row, col)) {
            return Some(format!(
                "formula `={f}` has no computed value (the file was written by a program that does not calculate formulas, such as openpyxl or pandas): open and save it in LibreOffice or Excel, or type the value"
            ));
        }
        let merges =
            merges.get_or_insert_with(|| merged_ranges(&mut book, &sheet, &mentions_merges));
        merged_cell(merges, &range, row, col)
    };
    let mut out = Vec::new();
    for (offset, cells) in rows.enumerate() {
        let row0 = r0 + 1 + offset as u32;
        let used = |i: usize| roles.get(i).is_some_and(|r| r.is_read());
        // A row of formulas without values is not blank; one only covered by merged ranges
        // above it (a command merged down over rows still to come) is.
        // What the tool wrote into its own columns does not make a row (a reason left beside
        // a row the user deleted the contents of).
        if cells
            .iter()
            .enumerate()
            .all(|(i, c)| roles.get(i) == Some(&Role::ToolOwned) || display(c).trim().is_empty())
            && !(0..cells.len()).any(|i| used(i) && uncached.contains_key(&(row0, c0 + i as u32)))
        {
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
            warden_option_cells: BTreeMap::new(),
            params: BTreeMap::new(),
            invalid: Vec::new(),
            tool_values: BTreeMap::new(),
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
                if role.is_read() {
                    problems.push((
                        at.clone(),
                        format!("cell error {e} in column {:?}", headers[i]),
                    ));
                }
                continue;
            }
            let text = display(cell);
            let trimmed = text.trim();
            if trimmed.is_empty() && role.is_read() {
                if let Some(why) = explain(row0, c0 + i as u32) {
                    match role {
                        Role::Id => row.id_cell = at.clone(),
                        Role::Status => row.status_cell = at.clone(),
                        Role::Command => row.command_cell = at.clone(),
                        Role::Cluster => row.cluster_cell = at.clone(),
                        Role::AbortWhen => row.abort_when_cell = at.clone(),
                        _ => {}
                    }
                    problems.push((at, why));
                    continue;
                }
            }
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
                        let key = warden_key(&headers[i]);
                        row.warden_option_cells.insert(key.clone(), at);
                        row.warden_options.insert(key, v);
                    }
                }
                Role::Param => {
                    if !trimmed.is_empty() {
                        let number = match cell {
                            Data::Int(n) => Some(*n as f64),
                            Data::Float(f) => Some(*f),
                            Data::Bool(_) | Data::DateTimeIso(_) => None,
                            // A duration compares as seconds (`time_limit>1d`); a date does not.
                            // To the millisecond, as it is shown: 23:59:59.9999 shows as
                            // 24:00:00 and must compare as 1d.
                            Data::DateTime(dt) if dt.is_duration() => {
                                Some(to_ms(dt.as_f64() * 86400.0))
                            }
                            Data::DateTime(_) => None,
                            Data::DurationIso(iso) => iso_duration_secs(iso).map(to_ms),
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
                Role::ToolOwned => {
                    if !trimmed.is_empty() {
                        row.tool_values
                            .insert(headers[i].to_ascii_lowercase(), trimmed.to_string());
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
        status_col: c0 + roles.iter().position(|r| *r == Role::Status).unwrap_or(0) as u32,
        tool_columns: headers
            .iter()
            .zip(&roles)
            .enumerate()
            .filter(|(_, (_, r))| **r == Role::ToolOwned)
            .map(|(i, (h, _))| (h.to_ascii_lowercase(), c0 + i as u32))
            .collect(),
        next_col: c0
            + headers
                .iter()
                .rposition(|h| !h.is_empty())
                .map_or(0, |i| i + 1) as u32,
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

/// A cell as text: whole floats without `.0`, dates as ISO 8601 (`2026-03-14`,
/// `2026-03-14 14:30:00`), a time of day as `09:15:00`, a duration as the spreadsheet shows it
/// with `[h]:mm:ss` (`36:00:00`).
pub fn display(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(s) => s.clone(),
        Data::Int(n) => n.to_string(),
        Data::Float(f) => nerokid::expr::format_number(*f),
        Data::Bool(b) => b.to_string(),
        Data::DateTime(dt) => date_time_text(dt),
        Data::DateTimeIso(s) => iso_date_time_text(s),
        Data::DurationIso(s) => iso_duration_secs(s).map_or_else(|| s.clone(), duration_text),
        Data::Error(e) => format!("#{e:?}"),
    }
}

/// An xlsx date, time or duration, through calamine's conversion: it knows the workbook's date
/// system (1900, or Mac Excel's 1904) and carries a time that rounds to midnight into the next
/// day.
fn date_time_text(dt: &calamine::ExcelDateTime) -> String {
    if dt.is_duration() {
        return duration_text(dt.as_f64() * 86400.0);
    }
    let (y, mo, d, h, mi, s, ms) = dt.to_ymd_hms_milli();
    let time = if ms == 0 {
        format!("{h:02}:{mi:02}:{s:02}")
    } else {
        format!("{h:02}:{mi:02}:{s:02}.{ms:03}")
    };
    // A serial below one day is a time with no date (typed `9:15`): its "date" is the epoch.
    if (0.0..1.0).contains(&dt.as_f64()) {
        return time;
    }
    if (h, mi, s, ms) == (0, 0, 0, 0) {
        format!("{y:04}-{mo:02}-{d:02}")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {time}")
    }
}

/// An .ods date as LibreOffice writes it (`2026-03-14`, `2026-03-14T14:30:00`,
/// `2026-03-14T23:59:59.99`) in the form xlsx dates take: a space before the time, fractions of
/// a second to the millisecond.
fn iso_date_time_text(iso: &str) -> String {
    let Some((date, time)) = iso.trim().split_once('T') else {
        return iso.trim().to_string();
    };
    match time.split_once('.') {
        _ if time == "00:00:00" => date.to_string(),
        Some((hms, frac)) if frac.bytes().all(|b| b.is_ascii_digit()) => {
            let ms: String = frac.chars().chain("000".chars()).take(3).collect();
            format!("{date} {hms}.{ms}")
        }
        _ => format!("{date} {time}"),
    }
}

/// Seconds rounded to the millisecond, the precision a duration is shown with.
fn to_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// Seconds as `[h]:mm:ss`: `36:00:00`, `1:30:05`, `-0:05:00`, `0:00:01.500`.
fn duration_text(secs: f64) -> String {
    let ms = (secs * 1000.0).round() as i64;
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if frac == 0 {
        format!("{sign}{h}:{m:02}:{s:02}")
    } else {
        format!("{sign}{h}:{m:02}:{s:02}.{frac:03}")
    }
}

/// An ISO 8601 duration as LibreOffice writes one into an .ods (`PT36H00M00S`,
/// `-PT00H05M00S`, `P1DT2H`, `PT1.5S`) → seconds.
fn iso_duration_secs(iso: &str) -> Option<f64> {
    let (sign, rest) = match iso.trim().strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, iso.trim()),
    };
    let rest = rest.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut secs = 0.0;
    for (part, units) in [
        (days, &[('D', 86400.0)][..]),
        (time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)][..]),
    ] {
        let mut rest = part;
        for (unit, mult) in units {
            if let Some((n, after)) = rest.split_once(*unit) {
                secs += n.parse::<f64>().ok()? * mult;
                rest = after;
            }
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(sign * secs).filter(|s| s.is_finite())
}

/// (row, col) → formula of each cell that has a formula and no value.
type Uncached = HashMap<(u32, u32), String>;

/// The sheet's cells, and the formulas without a computed value found in the same pass over
/// the sheet (a second pass would cost most of a read). Only an xlsx can hold those: .ods, .xls
/// and .xlsb writers store the result (an empty one is a formula that computed "").
fn read_cells<RS: std::io::Read + std::io::Seek>(
    book: &mut calamine::Sheets<RS>,
    sheet: &str,
) -> Result<(Range<Data>, Uncached), String> {
    let calamine::Sheets::Xlsx(x) = book else {
        let range = book.worksheet_range(sheet).map_err(|e| e.to_string())?;
        return Ok((range, HashMap::new()));
    };
    let mut reader = x.worksheet_cells_reader(sheet).map_err(|e| e.to_string())?;
    let mut cells = Vec::new();
    let mut uncached = HashMap::new();
    // Shared formulas (Excel writes one for a filled-down column): index → (anchor, text).
    let mut shared: HashMap<usize, ((u32, u32), String)> = HashMap::new();
    while let Some(c) = reader
        .next_cell_with_formula_metadata()
        .map_err(|e| e.to_string())?
    {
        use calamine::{DataRef, XlsxFormulaMetadata as F};
        // `<v/>` or no `<v>` at all; a formula that computed "" has `t="str"` and an empty
        // string, a value like any other.
        let empty = matches!(c.value, DataRef::Empty);
        let formula = match c.formula {
            Some(F::Normal { formula }) => Some(formula),
            Some(F::Shared {
                shared_index,
                formula,
                ..
            }) => {
                shared.insert(shared_index, (c.pos, formula.clone()));
                Some(formula)
            }
            Some(F::SharedDerived { shared_index }) if empty => shared
                .get(&shared_index)
                .and_then(|(anchor, f)| calamine::expand_shared_formula(f, *anchor, c.pos).ok()),
            _ => None,
        };
        if empty {
            if let Some(f) = formula.filter(|f| !f.trim().is_empty()) {
                uncached.insert(c.pos, f);
            }
        } else {
            cells.push(calamine::Cell::new(c.pos, Data::from(c.value)));
        }
    }
    Ok((Range::from_sparse(cells), uncached))
}

/// The sheet's merged ranges; none where calamine reads none (.ods, .xlsb) or cannot read
/// them (that costs only the explanation, never the workbook).
fn merged_ranges<RS: std::io::Read + std::io::Seek>(
    book: &mut calamine::Sheets<RS>,
    sheet: &str,
    mentions_merges: &dyn Fn() -> bool,
) -> Vec<Dimensions> {
    let merges = match book {
        calamine::Sheets::Xlsx(_) if !mentions_merges() => Ok(Vec::new()),
        calamine::Sheets::Xlsx(x) => x
            .merge_cells_by_sheet_name(sheet)
            .map_err(|e| e.to_string()),
        calamine::Sheets::Xls(x) => x
            .merge_cells_by_sheet_name(sheet)
            .map_err(|e| e.to_string()),
        _ => Ok(Vec::new()),
    };
    merges.unwrap_or_else(|e| {
        tracing::debug!("cannot read the merged cells of sheet {sheet:?}: {e}");
        Vec::new()
    })
}

/// Whether any worksheet of the xlsx may have merged ranges: a byte search of the unpacked
/// sheets, a fraction of what calamine's parse of the whole sheet for its `<mergeCells>` costs
/// (most workbooks have none). When unsure, yes.
fn xlsx_mentions_merges(path: &Path) -> bool {
    match std::fs::File::open(path) {
        Ok(f) => zip_mentions_merges(f),
        Err(_) => true,
    }
}

fn zip_mentions_merges(reader: impl std::io::Read + std::io::Seek) -> bool {
    use std::io::Read;
    let Ok(mut zip) = zip::ZipArchive::new(reader) else {
        return true;
    };
    let mut bytes = Vec::new();
    for i in 0..zip.len() {
        let Ok(mut entry) = zip.by_index(i) else {
            return true;
        };
        if !entry.name().is_ok_and(|n| n.starts_with("xl/worksheets/")) {
            continue;
        }
        bytes.clear();
        if entry.read_to_end(&mut bytes).is_err()
            || memchr::memmem::find(&bytes, b"mergeCell").is_some()
        {
            return true;
        }
    }
    false
}

/// Why the empty cell at the 0-based absolute (row, col) is empty, when it is covered by a
/// merged range whose top-left cell holds the value the user sees there.
fn merged_cell(merges: &[Dimensions], range: &Range<Data>, row: u32, col: u32) -> Option<String> {
    let m = merges.iter().find(|m| {
        (m.start.0..=m.end.0).contains(&row)
            && (m.start.1..=m.end.1).contains(&col)
            && (row, col) != m.start
    })?;
    let top_left = range.get_value(m.start)?;
    if display(top_left).trim().is_empty() {
        return None;
    }
    let first = cell_ref(m.start.0, m.start.1);
    Some(format!(
        "part of the merged range {first}:{}, whose value is in {first} only: unmerge the cells and fill the value into each row",
        cell_ref(m.end.0, m.end.1)
    ))
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
    fn durations() {
        assert_eq!(duration_text(129_600.0), "36:00:00");
        assert_eq!(duration_text(-300.0), "-0:05:00");
        assert_eq!(duration_text(1.5), "0:00:01.500");
        assert_eq!(iso_duration_secs("PT36H00M00S"), Some(129_600.0));
        assert_eq!(iso_duration_secs("-PT00H05M00S"), Some(-300.0));
        assert_eq!(iso_duration_secs("P1DT2H"), Some(93_600.0));
        assert_eq!(iso_duration_secs("PT1.5S"), Some(1.5));
        assert_eq!(iso_duration_secs("PT1X"), None);
        assert_eq!(iso_duration_secs("36:00"), None);
        assert_eq!(iso_date_time_text("2026-03-14"), "2026-03-14");
        assert_eq!(iso_date_time_text("2026-03-14T00:00:00"), "2026-03-14");
        assert_eq!(
            iso_date_time_text("2026-03-14T14:30:00"),
            "2026-03-14 14:30:00"
        );
        assert_eq!(
            iso_date_time_text("2026-03-14T23:59:59.99"),
            "2026-03-14 23:59:59.990"
        );
    }
}
