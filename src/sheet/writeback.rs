//! Write-back into the user's experiments workbook: patch a few cells of one worksheet of an
//! .xlsx in place, and tell whether a spreadsheet program holds the file open (its lock file).
//!
//! Theory of operation: the sheet part is found through `_rels/.rels`, `xl/workbook.xml` and its
//! relationships; quick-xml only *locates* the `<dimension>`, `<row>` and `<c>` elements (byte
//! offsets); the new sheet XML is the old one with just those byte ranges spliced, so every
//! untouched byte stays as it was. Every other zip entry is copied raw (no recompression). The
//! result is written to a temp file beside the workbook, given the original's mode, fsynced and
//! renamed over it. `.ods` write-back is not supported (an error says so). With a revision stamp
//! ([`patch_cells_with_revision`]) `docProps/custom.xml`, and when they lack it
//! `[Content_Types].xml` and `_rels/.rels`, are spliced the same way in the same write.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// Excel's last column (XFD) and row.
const MAX_COL: u32 = 16_384;
const MAX_ROW: u32 = 1_048_576;

/// A cell of a sheet, 0-based like calamine's absolute positions: `B5` is `{ row: 4, col: 1 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellRef {
    pub row: u32,
    pub col: u32,
}

impl CellRef {
    pub fn new(row: u32, col: u32) -> CellRef {
        CellRef { row, col }
    }

    /// `B5`, `AA7` (also `$B$5`); None for anything else or beyond XFD1048576.
    pub fn parse(a1: &str) -> Option<CellRef> {
        let a1 = a1.trim().replace('$', "");
        let split = a1.find(|c: char| !c.is_ascii_alphabetic())?;
        let (letters, digits) = a1.split_at(split);
        if letters.is_empty() || letters.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let col = letters.bytes().fold(0u32, |n, b| {
            n * 26 + u32::from(b.to_ascii_uppercase() - b'A' + 1)
        });
        let row: u32 = digits.parse().ok()?;
        ((1..=MAX_COL).contains(&col) && (1..=MAX_ROW).contains(&row))
            .then(|| CellRef::new(row - 1, col - 1))
    }
}

impl fmt::Display for CellRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", column_letters(self.col), self.row + 1)
    }
}

/// `0` → `A`, `26` → `AA`.
fn column_letters(col: u32) -> String {
    let mut n = col + 1;
    let mut letters = Vec::new();
    while n > 0 {
        let rem = (n - 1) % 26;
        letters.push(b'A' + rem as u8);
        n = (n - 1) / 26;
    }
    letters.reverse();
    String::from_utf8(letters).expect("ascii")
}

/// What a patched cell holds afterwards.
#[derive(Debug, Clone, PartialEq)]
pub enum CellValue {
    /// An inline string (`t="inlineStr"`): sharedStrings.xml is not touched.
    Text(String),
    Number(f64),
    /// No value (the cell keeps its style); a cell that does not exist stays absent.
    Empty,
}

/// What a patch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchReport {
    /// The zip entry of the sheet, e.g. `xl/worksheets/sheet1.xml`.
    pub part: String,
    /// Existing `<c>` elements replaced.
    pub replaced: usize,
    /// `<c>` elements added (to existing or new rows).
    pub inserted_cells: usize,
    /// `<row>` elements added.
    pub inserted_rows: usize,
    /// The used range before and after, when `<dimension>` grew.
    pub dimension: Option<(String, String)>,
    /// [`crate::store::fnv`] of the workbook as written: the caller can tell its own write
    /// from a save made after it.
    pub written_hash: u64,
}

/// Which program holds a workbook open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockProgram {
    LibreOffice,
    Excel,
}

/// Who holds the workbook open, and since when (the lock file's modification time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub program: LockProgram,
    pub lock_file: PathBuf,
    pub user: Option<String>,
    pub host: Option<String>,
    pub since: Option<SystemTime>,
}

impl LockInfo {
    /// Who holds it, without the time: `open in LibreOffice by ada on lab1 (lock file ...)`.
    pub fn who(&self) -> String {
        let mut w = LockInfo {
            since: None,
            ..self.clone()
        }
        .to_string();
        w.shrink_to_fit();
        w
    }
}

impl fmt::Display for LockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = match self.program {
            LockProgram::LibreOffice => "LibreOffice",
            LockProgram::Excel => "Excel",
        };
        write!(f, "open in {program}")?;
        match (&self.user, &self.host) {
            (Some(u), Some(h)) => write!(f, " by {u} on {h}")?,
            (Some(u), None) => write!(f, " by {u}")?,
            (None, Some(h)) => write!(f, " on {h}")?,
            (None, None) => {}
        }
        if let Some(ago) = self.since.and_then(|s| s.elapsed().ok()) {
            write!(f, " for {}s", ago.as_secs())?;
        }
        write!(f, " (lock file {})", self.lock_file.display())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WritebackError {
    #[error("{path}: write-back into .{ext} workbooks is not supported (only .xlsx); the state shows in results.xlsx")]
    Unsupported { path: PathBuf, ext: String },
    #[error("{path}: {about}")]
    Io {
        about: &'static str,
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("{path}: not an .xlsx workbook (not a zip archive)")]
    NotZip {
        path: PathBuf,
        #[source]
        err: zip::result::ZipError,
    },
    #[error("{path}: part {part} is missing")]
    MissingPart { path: PathBuf, part: String },
    #[error("{path}: no sheet {sheet:?} (sheets: {found})")]
    NoSheet {
        path: PathBuf,
        sheet: String,
        found: String,
    },
    #[error("{path}: part {part}: {message}")]
    Xml {
        path: PathBuf,
        part: String,
        message: String,
    },
    #[error("{path}: {part}: cell {cell}: {reason}")]
    Cell {
        path: PathBuf,
        part: String,
        cell: CellRef,
        reason: String,
    },
    #[error("{path}: not written: {holder}")]
    Locked { path: PathBuf, holder: LockInfo },
    #[error("{path}: changed while it was being patched; not written")]
    Changed { path: PathBuf },
    #[error("{path}: cannot write the patched workbook")]
    Zip {
        path: PathBuf,
        #[source]
        err: zip::result::ZipError,
    },
}

/// Patch `cells` of worksheet `sheet` of the .xlsx at `path` in place (see the module doc).
/// Refuses while a spreadsheet program holds the file open ([`lock_holder`]) and when the file
/// changes under it; on any error the file is left as it was. Of two values for one cell the
/// last wins.
pub fn patch_cells(
    path: &Path,
    sheet: &str,
    cells: &[(CellRef, CellValue)],
) -> Result<PatchReport, WritebackError> {
    patch(path, sheet, cells, None)
}

/// [`patch_cells`], and in the same atomic write set the workbook's revision stamp, the custom
/// document property [`REVISION_PROPERTY`] (`docProps/custom.xml`), to `revision`: the property
/// is updated in place (other properties kept) or the part is created, with its content type
/// and package relationship. Read it back with [`read_revision`].
pub fn patch_cells_with_revision(
    path: &Path,
    sheet: &str,
    cells: &[(CellRef, CellValue)],
    revision: u64,
) -> Result<PatchReport, WritebackError> {
    patch(path, sheet, cells, Some(revision))
}

/// [`patch_cells_with_revision`], only if the workbook still holds the content whose
/// [`crate::store::fnv`] hash is `content_hash` (what the caller read and decided on): else
/// [`WritebackError::Changed`] and nothing is written.
pub fn patch_cells_over(
    path: &Path,
    sheet: &str,
    cells: &[(CellRef, CellValue)],
    revision: u64,
    content_hash: u64,
) -> Result<PatchReport, WritebackError> {
    patch_checked(path, sheet, cells, Some(revision), Some(content_hash))
}

/// Whether write-back can patch this workbook (an .xlsx; an .ods is read, never written).
pub fn supports(path: &Path) -> bool {
    xlsx_only(path).is_ok()
}

/// Write-back and the stamp work on .xlsx / .xlsm only (an .ods is another format).
fn xlsx_only(path: &Path) -> Result<(), WritebackError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "xlsx" && ext != "xlsm" {
        return Err(WritebackError::Unsupported {
            path: path.to_owned(),
            ext,
        });
    }
    Ok(())
}

fn patch(
    path: &Path,
    sheet: &str,
    cells: &[(CellRef, CellValue)],
    revision: Option<u64>,
) -> Result<PatchReport, WritebackError> {
    patch_checked(path, sheet, cells, revision, None)
}

fn patch_checked(
    path: &Path,
    sheet: &str,
    cells: &[(CellRef, CellValue)],
    revision: Option<u64>,
    content_hash: Option<u64>,
) -> Result<PatchReport, WritebackError> {
    xlsx_only(path)?;
    // Write beside the real file, so a symbolic link stays a link to the patched workbook.
    let real = std::fs::canonicalize(path).map_err(|err| WritebackError::Io {
        about: "cannot open the workbook",
        path: path.to_owned(),
        err,
    })?;
    let io = |about: &'static str| {
        let path = path.to_owned();
        move |err| WritebackError::Io { about, path, err }
    };
    if let Some(holder) = lock_holder(path) {
        return Err(WritebackError::Locked {
            path: path.to_owned(),
            holder,
        });
    }
    let before = std::fs::metadata(&real).map_err(io("cannot open the workbook"))?;
    let bytes = std::fs::read(&real).map_err(io("cannot read the workbook"))?;
    if content_hash.is_some_and(|h| h != crate::store::fnv(&bytes)) {
        return Err(WritebackError::Changed {
            path: path.to_owned(),
        });
    }
    let (patched, mut report) = patch_xlsx_bytes(path, &bytes, sheet, cells, revision)?;
    report.written_hash = crate::store::fnv(&patched);

    let dir = real.parent().unwrap_or(Path::new("."));
    let name = real.file_name().and_then(|n| n.to_str()).unwrap_or("book");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io("cannot create a temp file beside the workbook"))?;
    tmp.write_all(&patched)
        .map_err(io("cannot write the temp file"))?;
    // fchmod, not the umask-filtered mode of a new file: the workbook keeps exactly its mode.
    tmp.as_file()
        .set_permissions(before.permissions())
        .map_err(io("cannot give the temp file the workbook's mode"))?;
    tmp.as_file()
        .sync_all()
        .map_err(io("cannot sync the temp file"))?;
    // The user may have saved meanwhile, or opened the file: never replace her save.
    if let Some(holder) = lock_holder(path) {
        return Err(WritebackError::Locked {
            path: path.to_owned(),
            holder,
        });
    }
    let now = std::fs::metadata(&real).map_err(io("cannot open the workbook"))?;
    if !same_file_state(&before, &now) {
        return Err(WritebackError::Changed {
            path: path.to_owned(),
        });
    }
    tmp.persist(&real)
        .map_err(|e| e.error)
        .map_err(io("cannot rename the temp file over the workbook"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync the workbook's directory"))?;
    Ok(report)
}

fn same_file_state(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.ino() == b.ino()
        && a.dev() == b.dev()
        && a.len() == b.len()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
}

/// The patched workbook's bytes; `path` only names the file in errors.
fn patch_xlsx_bytes(
    path: &Path,
    bytes: &[u8],
    sheet: &str,
    cells: &[(CellRef, CellValue)],
    revision: Option<u64>,
) -> Result<(Vec<u8>, PatchReport), WritebackError> {
    let not_zip = |err| WritebackError::NotZip {
        path: path.to_owned(),
        err,
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(not_zip)?;
    let part = sheet_part(path, &mut zip, sheet)?;
    let xml = read_part(path, &mut zip, &part)?;
    let (new_xml, mut report) = patch_sheet_xml(&xml, cells).map_err(|e| match e {
        XmlPatchError::Xml(message) => WritebackError::Xml {
            path: path.to_owned(),
            part: part.clone(),
            message,
        },
        XmlPatchError::Cell(cell, reason) => WritebackError::Cell {
            path: path.to_owned(),
            part: part.clone(),
            cell,
            reason,
        },
    })?;
    report.part = part.clone();
    // Parts rewritten (name → new bytes), and parts added at the end.
    let mut rewritten: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    rewritten.insert(part.clone(), new_xml);
    let mut added: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(revision) = revision {
        for (name, bytes, exists) in revision_parts(path, &mut zip, revision)? {
            match exists {
                true => rewritten.insert(name, bytes),
                false => {
                    added.push((name, bytes));
                    None
                }
            };
        }
    }

    let zip_err = |err| WritebackError::Zip {
        path: path.to_owned(),
        err,
    };
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::with_capacity(bytes.len() + 4096)));
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(not_zip)?;
        let new = entry
            .name()
            .ok()
            .and_then(|n| rewritten.get_key_value(n.as_ref()));
        if let Some((name, new_bytes)) = new {
            let method = match entry.compression() {
                zip::CompressionMethod::Stored => zip::CompressionMethod::Stored,
                _ => zip::CompressionMethod::Deflated,
            };
            let mut options = zip::write::SimpleFileOptions::default()
                .compression_method(method)
                .large_file(new_bytes.len() as u64 >= u32::MAX as u64);
            if let Some(t) = entry.last_modified() {
                options = options.last_modified_time(t);
            }
            drop(entry);
            out.start_file(name.as_str(), options).map_err(zip_err)?;
            out.write_all(new_bytes)
                .map_err(|e| zip_err(zip::result::ZipError::Io(e)))?;
        } else {
            out.raw_copy_file(entry).map_err(zip_err)?;
        }
    }
    for (name, bytes) in &added {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        out.start_file(name.as_str(), options).map_err(zip_err)?;
        out.write_all(bytes)
            .map_err(|e| zip_err(zip::result::ZipError::Io(e)))?;
    }
    if !zip.comment().is_empty() {
        out.set_raw_comment(zip.comment().into()).map_err(zip_err)?;
    }
    let out = out.finish().map_err(zip_err)?.into_inner();
    Ok((out, report))
}

// ---------------------------------------------------------------------------------------------
// The revision stamp: a custom document property (docProps/custom.xml).

/// The custom document property that holds the workbook's revision stamp.
pub const REVISION_PROPERTY: &str = "NeronetRevision";

const CUSTOM_PART: &str = "docProps/custom.xml";
const CUSTOM_REL_TYPE: &str =
    "http://schemas.openxmlformats.org/officeDocument/2006/relationships/custom-properties";
const CUSTOM_CONTENT_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.custom-properties+xml";
const CUSTOM_NS: &str = "http://schemas.openxmlformats.org/officeDocument/2006/custom-properties";
const VT_NS: &str = "http://schemas.openxmlformats.org/officeDocument/2006/docPropsVTypes";
/// The format id every user-defined custom property carries.
const CUSTOM_FMTID: &str = "{D5CDD505-2E9C-101B-9397-08002B2CF9AE}";

/// The workbook's revision stamp (the custom document property [`REVISION_PROPERTY`]); None when
/// the workbook has none. The value may be typed `vt:lpwstr` (as written), `vt:i4`, `vt:i8`,
/// `vt:r8` (or another integer type): a spreadsheet program may retype it on save. A value that
/// is not a whole number ≥ 0 is an error.
pub fn read_revision(path: &Path) -> Result<Option<u64>, WritebackError> {
    xlsx_only(path)?;
    let bytes = std::fs::read(path).map_err(|err| WritebackError::Io {
        about: "cannot read the workbook",
        path: path.to_owned(),
        err,
    })?;
    read_revision_bytes(path, &bytes)
}

/// [`read_revision`] of content `path` held (the watcher's read).
pub fn read_revision_bytes(path: &Path, bytes: &[u8]) -> Result<Option<u64>, WritebackError> {
    xlsx_only(path)?;
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|err| WritebackError::NotZip {
            path: path.to_owned(),
            err,
        })?;
    let (part, _) = custom_part(path, &mut zip)?;
    if zip.index_for_name(&part).is_none() {
        return Ok(None);
    }
    let xml = read_part(path, &mut zip, &part)?;
    revision_in(&xml).map_err(|message| WritebackError::Xml {
        path: path.to_owned(),
        part,
        message,
    })
}

/// The custom properties part (from the package relationships, else `docProps/custom.xml`), and
/// whether a relationship names it.
fn custom_part(
    path: &Path,
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
) -> Result<(String, bool), WritebackError> {
    if zip.index_for_name("_rels/.rels").is_none() {
        return Ok((CUSTOM_PART.to_owned(), false));
    }
    let rels = read_part(path, zip, "_rels/.rels")?;
    let rel = relationships(&rels)
        .map_err(|message| WritebackError::Xml {
            path: path.to_owned(),
            part: "_rels/.rels".to_owned(),
            message,
        })?
        .into_iter()
        .find(|r| r.kind == CUSTOM_REL_TYPE);
    Ok(match rel {
        Some(r) => (resolve_target("", &r.target), true),
        None => (CUSTOM_PART.to_owned(), false),
    })
}

/// One `<property>` child of the root: its span, pid, name and value (type, raw text).
struct PropertySpan {
    start: usize,
    end: usize,
    pid: Option<u32>,
    name: String,
    value: Option<(String, String)>,
}

/// The custom properties part mapped: the root's element prefix (`op:` or ``), the prefix bound
/// to the docPropsVTypes namespace on the root, and the properties.
struct CustomMap {
    prefix: String,
    vt_prefix: Option<String>,
    properties: Vec<PropertySpan>,
}

fn map_custom(xml: &[u8]) -> Result<CustomMap, String> {
    let mut reader = Reader::from_reader(xml);
    let mut map = CustomMap {
        prefix: String::new(),
        vt_prefix: None,
        properties: Vec::new(),
    };
    let mut depth = 0usize;
    let mut property: Option<PropertySpan> = None;
    // The value element's type and where its content starts.
    let mut value: Option<(String, usize)> = None;
    loop {
        let start = reader.buffer_position() as usize;
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        let end = reader.buffer_position() as usize;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                match depth {
                    0 => {
                        if e.local_name().as_ref() != "Properties" {
                            return Err("the root is not <Properties>".to_owned());
                        }
                        map.prefix = prefix_of(e);
                        for a in e.attributes().with_checks(false) {
                            let a = a.map_err(|e| e.to_string())?;
                            if a.key.prefix().is_some_and(|p| p.as_ref() == "xmlns")
                                && a.value.as_ref() == VT_NS
                            {
                                let p = a.key.local_name().as_ref().to_owned();
                                map.vt_prefix = Some(format!("{p}:"));
                            }
                        }
                    }
                    1 if e.local_name().as_ref() == "property" => {
                        let p = PropertySpan {
                            start,
                            end,
                            pid: attr_value(e, "pid", false)?.and_then(|v| v.trim().parse().ok()),
                            name: attr_value(e, "name", false)?.unwrap_or_default(),
                            value: None,
                        };
                        match empty {
                            true => map.properties.push(p),
                            false => property = Some(p),
                        }
                    }
                    2 if property.is_some() && value.is_none() => {
                        let kind = e.local_name().as_ref().to_owned();
                        match empty {
                            true => {
                                if let Some(p) = property.as_mut() {
                                    p.value = Some((kind, String::new()));
                                }
                            }
                            false => value = Some((kind, end)),
                        }
                    }
                    _ => {}
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                match depth {
                    1 => {
                        if let Some(mut p) = property.take() {
                            p.end = end;
                            map.properties.push(p);
                        }
                    }
                    2 => {
                        if let (Some((kind, from)), Some(p)) = (value.take(), property.as_mut()) {
                            let text = String::from_utf8_lossy(&xml[from..start]).into_owned();
                            p.value = Some((kind, text));
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err("the XML ends early".to_owned());
    }
    Ok(map)
}

fn is_revision(p: &PropertySpan) -> bool {
    p.name.eq_ignore_ascii_case(REVISION_PROPERTY)
}

/// The revision in a custom properties part.
fn revision_in(xml: &[u8]) -> Result<Option<u64>, String> {
    let map = map_custom(xml)?;
    let Some(p) = map.properties.iter().find(|p| is_revision(p)) else {
        return Ok(None);
    };
    let bad = |what: &str| format!("property {REVISION_PROPERTY} is not a revision number: {what}");
    let Some((kind, text)) = &p.value else {
        return Err(bad("it has no value"));
    };
    let text = text.trim();
    let n = match kind.as_str() {
        "lpwstr" | "lpstr" | "bstr" | "i1" | "i2" | "i4" | "i8" | "int" | "ui1" | "ui2" | "ui4"
        | "ui8" | "uint" | "decimal" => text.parse::<u64>().ok().or_else(|| {
            // "7.0" from a program that wrote the number as text.
            text.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 2f64.powi(53))
                .map(|f| f as u64)
        }),
        "r4" | "r8" => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 2f64.powi(53))
            .map(|f| f as u64),
        _ => return Err(bad(&format!("a vt:{kind}"))),
    };
    n.map(Some)
        .ok_or_else(|| bad(&format!("vt:{kind} {text:?}")))
}

/// The `<property>` element of the stamp.
fn revision_property(prefix: &str, vt_prefix: Option<&str>, pid: u32, revision: u64) -> String {
    let value = match vt_prefix {
        Some(vt) => format!("<{vt}lpwstr>{revision}</{vt}lpwstr>"),
        None => format!("<vt:lpwstr xmlns:vt=\"{VT_NS}\">{revision}</vt:lpwstr>"),
    };
    format!(
        "<{prefix}property fmtid=\"{CUSTOM_FMTID}\" pid=\"{pid}\" name=\"{REVISION_PROPERTY}\">{value}</{prefix}property>"
    )
}

/// The custom properties part with the stamp set to `revision`: the stamp's element replaced
/// (its pid kept), else one added with the next free pid (≥ 2); every other byte kept.
fn set_revision_xml(xml: &[u8], revision: u64) -> Result<Vec<u8>, String> {
    let map = map_custom(xml)?;
    let vt = map.vt_prefix.as_deref();
    if let Some(p) = map.properties.iter().find(|p| is_revision(p)) {
        let pid = p.pid.unwrap_or(2);
        let mut out = xml[..p.start].to_vec();
        out.extend_from_slice(revision_property(&map.prefix, vt, pid, revision).as_bytes());
        out.extend_from_slice(&xml[p.end..]);
        return Ok(out);
    }
    let pid = map
        .properties
        .iter()
        .filter_map(|p| p.pid)
        .max()
        .map_or(2, |m| (m + 1).max(2));
    append_to_root(xml, &revision_property(&map.prefix, vt, pid, revision))
}

/// A new custom properties part holding only the stamp.
fn new_custom_xml(revision: u64) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Properties xmlns=\"{CUSTOM_NS}\" xmlns:vt=\"{VT_NS}\">{}</Properties>",
        revision_property("", Some("vt:"), 2, revision)
    )
    .into_bytes()
}

/// `xml` with `fragment` added as the root's last child (an empty root element is opened).
fn append_to_root(xml: &[u8], fragment: &str) -> Result<Vec<u8>, String> {
    let mut reader = Reader::from_reader(xml);
    let mut depth = 0usize;
    loop {
        let start = reader.buffer_position() as usize;
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        let end = reader.buffer_position() as usize;
        match event {
            Event::Start(_) => depth += 1,
            Event::End(_) => {
                depth -= 1;
                if depth == 0 {
                    let mut out = xml[..start].to_vec();
                    out.extend_from_slice(fragment.as_bytes());
                    out.extend_from_slice(&xml[start..]);
                    return Ok(out);
                }
            }
            Event::Empty(e) if depth == 0 => {
                let name = e.name().as_ref().to_owned();
                let tag = &xml[start..end];
                let slash = tag.iter().rposition(|&b| b == b'/').unwrap_or(tag.len());
                let mut out = xml[..start].to_vec();
                out.extend_from_slice(&tag[..slash]);
                out.extend_from_slice(format!(">{fragment}</{name}>").as_bytes());
                out.extend_from_slice(&xml[end..]);
                return Ok(out);
            }
            Event::Eof => return Err("no root element".to_owned()),
            _ => {}
        }
    }
}

/// `[Content_Types].xml` with an override for `part` (None when it has one already).
fn add_content_type(xml: &[u8], part: &str) -> Result<Option<Vec<u8>>, String> {
    let part_name = format!("/{part}");
    let mut reader = Reader::from_reader(xml);
    let mut prefix = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) | Event::Empty(e) => {
                if prefix.is_none() {
                    prefix = Some(prefix_of(&e));
                }
                if e.local_name().as_ref() == "Override"
                    && attr_value(&e, "PartName", false)?
                        .is_some_and(|n| n.eq_ignore_ascii_case(&part_name))
                {
                    return Ok(None);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let prefix = prefix.unwrap_or_default();
    let fragment = format!(
        "<{prefix}Override PartName=\"{part_name}\" ContentType=\"{CUSTOM_CONTENT_TYPE}\"/>"
    );
    append_to_root(xml, &fragment).map(Some)
}

/// `_rels/.rels` with a custom-properties relationship to `part` (the next free `rIdN`).
fn add_relationship(xml: &[u8], part: &str) -> Result<Vec<u8>, String> {
    let ids: Vec<String> = relationships(xml)?.into_iter().map(|r| r.id).collect();
    let mut n = ids
        .iter()
        .filter_map(|id| id.strip_prefix("rId")?.parse::<u32>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    while ids.contains(&format!("rId{n}")) {
        n += 1;
    }
    let mut reader = Reader::from_reader(xml);
    let prefix = loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) | Event::Empty(e) => break prefix_of(&e),
            Event::Eof => break String::new(),
            _ => {}
        }
    };
    let fragment = format!(
        "<{prefix}Relationship Id=\"rId{n}\" Type=\"{CUSTOM_REL_TYPE}\" Target=\"{part}\"/>"
    );
    append_to_root(xml, &fragment)
}

/// The parts a stamp of `revision` writes: (name, bytes, whether the archive has it already).
fn revision_parts(
    path: &Path,
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    revision: u64,
) -> Result<Vec<(String, Vec<u8>, bool)>, WritebackError> {
    let xml_err = |part: &str, message: String| WritebackError::Xml {
        path: path.to_owned(),
        part: part.to_owned(),
        message,
    };
    let (part, has_rel) = custom_part(path, zip)?;
    let mut parts = Vec::new();
    if zip.index_for_name(&part).is_some() {
        let xml = read_part(path, zip, &part)?;
        let new = set_revision_xml(&xml, revision).map_err(|m| xml_err(&part, m))?;
        parts.push((part.clone(), new, true));
    } else {
        parts.push((part.clone(), new_custom_xml(revision), false));
    }
    let types = "[Content_Types].xml";
    let xml = read_part(path, zip, types)?;
    if let Some(new) = add_content_type(&xml, &part).map_err(|m| xml_err(types, m))? {
        parts.push((types.to_owned(), new, true));
    }
    if !has_rel {
        let rels = "_rels/.rels";
        let xml = read_part(path, zip, rels)?;
        let new = add_relationship(&xml, &part).map_err(|m| xml_err(rels, m))?;
        parts.push((rels.to_owned(), new, true));
    }
    Ok(parts)
}

fn read_part(
    path: &Path,
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    part: &str,
) -> Result<Vec<u8>, WritebackError> {
    let mut entry = zip.by_name(part).map_err(|_| WritebackError::MissingPart {
        path: path.to_owned(),
        part: part.to_owned(),
    })?;
    let mut xml = Vec::new();
    entry
        .read_to_end(&mut xml)
        .map_err(|err| WritebackError::Io {
            about: "cannot unpack a part of the workbook",
            path: path.to_owned(),
            err,
        })?;
    Ok(xml)
}

/// The zip entry of worksheet `sheet` (its name, else compared case-insensitively as Excel does).
fn sheet_part(
    path: &Path,
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    sheet: &str,
) -> Result<String, WritebackError> {
    let xml_err = |part: &str, message: String| WritebackError::Xml {
        path: path.to_owned(),
        part: part.to_owned(),
        message,
    };
    // The workbook part is the package's officeDocument; xl/workbook.xml when no rels say so.
    let has_rels = zip.index_for_name("_rels/.rels").is_some();
    let workbook = match has_rels {
        true => {
            let rels = read_part(path, zip, "_rels/.rels")?;
            relationships(&rels)
                .map_err(|m| xml_err("_rels/.rels", m))?
                .into_iter()
                .find(|r| r.kind.ends_with("/officeDocument"))
                .map(|r| resolve_target("", &r.target))
                .unwrap_or_else(|| "xl/workbook.xml".to_owned())
        }
        false => "xl/workbook.xml".to_owned(),
    };
    let (dir, file) = workbook.rsplit_once('/').unwrap_or(("", workbook.as_str()));
    let rels_part = match dir {
        "" => format!("_rels/{file}.rels"),
        dir => format!("{dir}/_rels/{file}.rels"),
    };
    let book_xml = read_part(path, zip, &workbook)?;
    let sheets = workbook_sheets(&book_xml).map_err(|m| xml_err(&workbook, m))?;
    let (_, rid) = sheets
        .iter()
        .find(|(name, _)| name == sheet)
        .or_else(|| {
            sheets
                .iter()
                .find(|(name, _)| name.to_lowercase() == sheet.to_lowercase())
        })
        .ok_or_else(|| WritebackError::NoSheet {
            path: path.to_owned(),
            sheet: sheet.to_owned(),
            found: sheets
                .iter()
                .map(|(n, _)| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let rels_xml = read_part(path, zip, &rels_part)?;
    let rel = relationships(&rels_xml)
        .map_err(|m| xml_err(&rels_part, m))?
        .into_iter()
        .find(|r| &r.id == rid)
        .ok_or_else(|| {
            xml_err(
                &rels_part,
                format!("no relationship {rid} for sheet {sheet:?}"),
            )
        })?;
    Ok(resolve_target(dir, &rel.target))
}

/// A relationship target, relative to the source part's folder or absolute from the root.
fn resolve_target(dir: &str, target: &str) -> String {
    let joined = match target.strip_prefix('/') {
        Some(abs) => abs.to_owned(),
        None if dir.is_empty() => target.to_owned(),
        None => format!("{dir}/{target}"),
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

struct Relationship {
    id: String,
    kind: String,
    target: String,
}

fn attr_value(e: &BytesStart<'_>, local: &str, prefixed: bool) -> Result<Option<String>, String> {
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|e| e.to_string())?;
        if a.key.local_name().as_ref() == local && a.key.prefix().is_some() == prefixed {
            let v = a
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| e.to_string())?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

fn relationships(xml: &[u8]) -> Result<Vec<Relationship>, String> {
    let mut reader = Reader::from_reader(xml);
    let mut out = Vec::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "Relationship" => {
                out.push(Relationship {
                    id: attr_value(&e, "Id", false)?.unwrap_or_default(),
                    kind: attr_value(&e, "Type", false)?.unwrap_or_default(),
                    target: attr_value(&e, "Target", false)?.unwrap_or_default(),
                });
            }
            Event::Eof => return Ok(out),
            _ => {}
        }
    }
}

/// (sheet name, relationship id) in workbook order.
fn workbook_sheets(xml: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut reader = Reader::from_reader(xml);
    let mut out = Vec::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "sheet" => {
                let name = attr_value(&e, "name", false)?.unwrap_or_default();
                // r:id: the only prefixed `id` of a <sheet>, whatever the prefix is bound to.
                let rid = attr_value(&e, "id", true)?.unwrap_or_default();
                out.push((name, rid));
            }
            Event::Eof => return Ok(out),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sheet XML: locate, then splice.

#[derive(Debug)]
enum XmlPatchError {
    Xml(String),
    Cell(CellRef, String),
}

struct CellSpan {
    col: u32,
    start: usize,
    end: usize,
    style: Option<String>,
    /// The cell anchors a shared or array formula (`<f ref=...>`) other cells depend on.
    formula_anchor: Option<String>,
}

struct RowSpan {
    /// 0-based.
    row: u32,
    start: usize,
    /// End of the start tag (of the whole element when empty).
    tag_end: usize,
    /// Start of `</row>`; None for `<row/>`.
    content_end: Option<usize>,
    /// The row's own style, when it applies to its cells (`customFormat="1"`).
    style: Option<String>,
    cells: Vec<CellSpan>,
}

struct ColStyle {
    first: u32,
    last: u32,
    style: String,
}

#[derive(Default)]
struct SheetMap {
    /// `x:` when the sheet writes its elements with a prefix.
    prefix: String,
    dimension: Option<(usize, usize, String)>,
    cols: Vec<ColStyle>,
    /// `<sheetData>`'s content range, or the span of `<sheetData/>`.
    data_start: usize,
    data_end: usize,
    data_empty: bool,
    rows: Vec<RowSpan>,
}

fn prefix_of(e: &BytesStart<'_>) -> String {
    e.name()
        .prefix()
        .map(|p| format!("{}:", p.as_ref()))
        .unwrap_or_default()
}

fn map_sheet(
    xml: &[u8],
    wanted_rows: &BTreeMap<u32, BTreeMap<u32, &CellValue>>,
) -> Result<SheetMap, String> {
    let mut reader = Reader::from_reader(xml);
    let mut map = SheetMap::default();
    let mut depth = 0usize;
    let mut in_cols = false;
    let mut in_data = false;
    let mut found_data = false;
    let mut row: Option<RowSpan> = None;
    let mut cell: Option<CellSpan> = None;
    let mut last_row: Option<u32> = None;
    let mut last_col: Option<u32> = None;
    loop {
        let start = reader.buffer_position() as usize;
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        let end = reader.buffer_position() as usize;
        let (e, empty) = match &event {
            Event::Start(e) => (Some(e), false),
            Event::Empty(e) => (Some(e), true),
            Event::End(_) => (None, false),
            Event::Eof => break,
            _ => continue,
        };
        let Some(e) = e else {
            // An end tag.
            depth -= 1;
            match depth {
                1 if in_cols => in_cols = false,
                1 if in_data => {
                    map.data_end = start;
                    // Nothing after </sheetData> is touched.
                    break;
                }
                2 if in_data => {
                    if let Some(mut r) = row.take() {
                        r.content_end = Some(start);
                        map.rows.push(r);
                    }
                }
                3 if in_data => {
                    if let (Some(mut c), Some(r)) = (cell.take(), row.as_mut()) {
                        c.end = end;
                        r.cells.push(c);
                    }
                }
                _ => {}
            }
            continue;
        };
        let local = e.local_name();
        let local = local.as_ref();
        match (depth, local) {
            (1, "dimension") => {
                let r = attr_value(e, "ref", false)?.unwrap_or_default();
                map.dimension = Some((start, end, r));
            }
            (1, "cols") => in_cols = !empty,
            (2, "col") if in_cols => {
                let num = |n: &str| -> Result<Option<u32>, String> {
                    Ok(attr_value(e, n, false)?.and_then(|v| v.trim().parse().ok()))
                };
                if let (Some(first), Some(last), Some(style)) =
                    (num("min")?, num("max")?, attr_value(e, "style", false)?)
                {
                    map.cols.push(ColStyle {
                        first: first.saturating_sub(1),
                        last: last.saturating_sub(1),
                        style,
                    });
                }
            }
            (1, "sheetData") => {
                found_data = true;
                map.prefix = prefix_of(e);
                if empty {
                    map.data_start = start;
                    map.data_end = end;
                    map.data_empty = true;
                    break;
                }
                in_data = true;
                map.data_start = end;
            }
            (2, "row") if in_data => {
                let n = match attr_value(e, "r", false)? {
                    Some(v) => {
                        v.trim()
                            .parse::<u32>()
                            .ok()
                            .filter(|n| (1..=MAX_ROW).contains(n))
                            .ok_or_else(|| format!("row with a bad number r={v:?}"))?
                            - 1
                    }
                    None => last_row.map_or(0, |r| r + 1),
                };
                last_row = Some(n);
                last_col = None;
                let style = match attr_value(e, "customFormat", false)?.as_deref() {
                    Some("1" | "true") => attr_value(e, "s", false)?,
                    _ => None,
                };
                let r = RowSpan {
                    row: n,
                    start,
                    tag_end: end,
                    content_end: None,
                    style,
                    cells: Vec::new(),
                };
                if empty {
                    map.rows.push(r);
                } else {
                    row = Some(r);
                }
            }
            (3, "c") if row.is_some() => {
                let col = match attr_value(e, "r", false)? {
                    Some(v) => {
                        CellRef::parse(&v)
                            .ok_or_else(|| format!("cell with a bad reference r={v:?}"))?
                            .col
                    }
                    None => last_col.map_or(0, |c| c + 1),
                };
                last_col = Some(col);
                // Only the targeted rows' cells are needed.
                let wanted = row
                    .as_ref()
                    .is_some_and(|r| wanted_rows.contains_key(&r.row));
                let c = CellSpan {
                    col,
                    start,
                    end,
                    style: attr_value(e, "s", false)?,
                    formula_anchor: None,
                };
                match (empty, wanted) {
                    (true, true) => row.as_mut().expect("checked").cells.push(c),
                    (false, true) => cell = Some(c),
                    _ => {}
                }
            }
            (4, "f") if cell.is_some() => {
                if let Some(r) = attr_value(e, "ref", false)? {
                    cell.as_mut().expect("checked").formula_anchor = Some(r);
                }
            }
            _ => {}
        }
        if !empty {
            depth += 1;
        }
    }
    if !found_data {
        return Err("no <sheetData> element: not a worksheet".to_owned());
    }
    Ok(map)
}

/// One `<c>` element for `value`, or None when nothing is to be written.
fn cell_xml(
    p: &str,
    cell: CellRef,
    style: Option<&str>,
    value: &CellValue,
) -> Result<String, XmlPatchError> {
    let s = style.map(|s| format!(" s=\"{s}\"")).unwrap_or_default();
    Ok(match value {
        CellValue::Empty => format!("<{p}c r=\"{cell}\"{s}/>"),
        CellValue::Number(n) if !n.is_finite() => {
            return Err(XmlPatchError::Cell(
                cell,
                format!("{n} is not a number a cell can hold"),
            ));
        }
        CellValue::Number(n) => format!("<{p}c r=\"{cell}\"{s}><{p}v>{n}</{p}v></{p}c>"),
        CellValue::Text(t) => {
            if let Some(bad) = t.chars().find(|&c| !is_xml_char(c)) {
                return Err(XmlPatchError::Cell(
                    cell,
                    format!(
                        "the text holds the character U+{:04X}, which an .xlsx cannot hold",
                        bad as u32
                    ),
                ));
            }
            if t.chars().count() > 32_767 {
                return Err(XmlPatchError::Cell(
                    cell,
                    "the text is longer than a cell holds (32,767 characters)".to_owned(),
                ));
            }
            let space = if t.starts_with(char::is_whitespace) || t.ends_with(char::is_whitespace) {
                " xml:space=\"preserve\""
            } else {
                ""
            };
            // A bare CR would be read back as LF (XML end-of-line handling).
            let escaped = quick_xml::escape::partial_escape(t.as_str()).replace('\r', "&#13;");
            format!(
                "<{p}c r=\"{cell}\"{s} t=\"inlineStr\"><{p}is><{p}t{space}>{escaped}</{p}t></{p}is></{p}c>"
            )
        }
    })
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `A1:F20` or `A1` → (top-left, bottom-right).
fn parse_range(r: &str) -> Option<(CellRef, CellRef)> {
    let (a, b) = r.split_once(':').unwrap_or((r, r));
    Some((CellRef::parse(a)?, CellRef::parse(b)?))
}

/// The sheet XML with `cells` written (see the module doc). Untouched bytes are copied as they are.
fn patch_sheet_xml(
    xml: &[u8],
    cells: &[(CellRef, CellValue)],
) -> Result<(Vec<u8>, PatchReport), XmlPatchError> {
    // row → col → value; the last value for a cell wins.
    let mut wanted: BTreeMap<u32, BTreeMap<u32, &CellValue>> = BTreeMap::new();
    for (cell, value) in cells {
        if cell.row >= MAX_ROW || cell.col >= MAX_COL {
            return Err(XmlPatchError::Cell(
                *cell,
                "beyond the last cell of a sheet (XFD1048576)".to_owned(),
            ));
        }
        wanted.entry(cell.row).or_default().insert(cell.col, value);
    }
    let map = map_sheet(xml, &wanted).map_err(XmlPatchError::Xml)?;
    let p = map.prefix.as_str();
    let col_style = |col: u32| {
        map.cols
            .iter()
            .find(|c| (c.first..=c.last).contains(&col))
            .map(|c| c.style.as_str())
    };
    let mut report = PatchReport::default();
    // (start, end, replacement), applied in order of position.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut new_rows: Vec<(usize, String)> = Vec::new();
    let mut written: Vec<CellRef> = Vec::new();
    let rows_by_number: BTreeMap<u32, usize> = map
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.row, i))
        .collect();
    for (&r, targets) in &wanted {
        match rows_by_number.get(&r).map(|&i| &map.rows[i]) {
            Some(row) => {
                let mut inserted = String::new();
                for (&c, &value) in targets {
                    let at = CellRef::new(r, c);
                    match row.cells.iter().find(|cell| cell.col == c) {
                        Some(old) => {
                            if let Some(range) = &old.formula_anchor {
                                return Err(XmlPatchError::Cell(
                                    at,
                                    format!("holds the formula that the cells {range} share; not overwritten"),
                                ));
                            }
                            edits.push((
                                old.start,
                                old.end,
                                cell_xml(p, at, old.style.as_deref(), value)?,
                            ));
                            report.replaced += 1;
                            written.push(at);
                        }
                        None if *value == CellValue::Empty => {}
                        None => {
                            let style = row.style.as_deref().or_else(|| col_style(c));
                            let xml = cell_xml(p, at, style, value)?;
                            report.inserted_cells += 1;
                            written.push(at);
                            match (row.content_end, row.cells.iter().find(|cell| cell.col > c)) {
                                (_, Some(next)) => edits.push((next.start, next.start, xml)),
                                (Some(end), None) => edits.push((end, end, xml)),
                                // <row/>: collected and written into it below.
                                (None, None) => inserted.push_str(&xml),
                            }
                        }
                    }
                }
                if !inserted.is_empty() {
                    // `<row r="5" .../>` becomes `<row r="5" ...>cells</row>`: the tag kept, but for its end.
                    let tag = std::str::from_utf8(&xml[row.start..row.tag_end])
                        .map_err(|e| XmlPatchError::Xml(e.to_string()))?;
                    let open = tag.trim_end_matches("/>").trim_end();
                    edits.push((
                        row.start,
                        row.tag_end,
                        format!("{open}>{inserted}</{p}row>"),
                    ));
                }
            }
            None => {
                let mut cells_xml = String::new();
                for (&c, &value) in targets {
                    if *value == CellValue::Empty {
                        continue;
                    }
                    let at = CellRef::new(r, c);
                    cells_xml.push_str(&cell_xml(p, at, col_style(c), value)?);
                    report.inserted_cells += 1;
                    written.push(at);
                }
                if cells_xml.is_empty() {
                    continue;
                }
                let at = match map.rows.iter().find(|row| row.row > r) {
                    Some(next) => next.start,
                    None => map.data_end,
                };
                new_rows.push((at, format!("<{p}row r=\"{}\">{cells_xml}</{p}row>", r + 1)));
                report.inserted_rows += 1;
            }
        }
    }
    if map.data_empty {
        if !new_rows.is_empty() {
            let rows: String = new_rows.drain(..).map(|(_, x)| x).collect();
            edits.push((
                map.data_start,
                map.data_end,
                format!("<{p}sheetData>{rows}</{p}sheetData>"),
            ));
        }
    } else {
        edits.extend(new_rows.into_iter().map(|(at, x)| (at, at, x)));
    }
    if let Some((start, end, old)) = &map.dimension {
        if let Some(grown) = grown_range(old, &written) {
            edits.push((*start, *end, format!("<{p}dimension ref=\"{grown}\"/>")));
            report.dimension = Some((old.clone(), grown));
        }
    }
    // Stable: insertions at one position keep the order in which they were made (rows and
    // columns ascending), and come before a replacement starting there.
    edits.sort_by_key(|(start, end, _)| (*start, *end));
    let mut out = Vec::with_capacity(xml.len() + edits.iter().map(|e| e.2.len()).sum::<usize>());
    let mut at = 0;
    for (start, end, text) in &edits {
        debug_assert!(*start >= at, "overlapping edits");
        out.extend_from_slice(&xml[at..*start]);
        out.extend_from_slice(text.as_bytes());
        at = *end;
    }
    out.extend_from_slice(&xml[at..]);
    Ok((out, report))
}

/// The used range grown to hold `written`, when it must grow.
fn grown_range(old: &str, written: &[CellRef]) -> Option<String> {
    let (mut lo, mut hi) = match parse_range(old) {
        Some(r) => r,
        // No range yet (an empty sheet writes `A1`, some writers nothing usable).
        None => (*written.first()?, *written.first()?),
    };
    let (old_lo, old_hi) = (lo, hi);
    for c in written {
        lo = CellRef::new(lo.row.min(c.row), lo.col.min(c.col));
        hi = CellRef::new(hi.row.max(c.row), hi.col.max(c.col));
    }
    if (lo, hi) == (old_lo, old_hi) && parse_range(old).is_some() {
        return None;
    }
    Some(if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}:{hi}")
    })
}

// ---------------------------------------------------------------------------------------------
// Lock files.

/// Who holds the workbook open in a spreadsheet program: LibreOffice's `.~lock.<name>#` or
/// Excel's `~$<name>` beside it. None when neither exists. A stale lock (left by a crash) reads
/// as held too: only the user can tell, and she sees who and since when.
pub fn lock_holder(path: &Path) -> Option<LockInfo> {
    // Through a symbolic link the program opens the file it points to and locks it there.
    if let Ok(real) = std::fs::canonicalize(path) {
        if real != path {
            if let Some(held) = lock_beside(&real) {
                return Some(held);
            }
        }
    }
    lock_beside(path)
}

fn lock_beside(path: &Path) -> Option<LockInfo> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name()?.to_string_lossy();
    let since = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();

    let lo = dir.join(format!(".~lock.{name}#"));
    if let Ok(bytes) = std::fs::read(&lo) {
        let (user, host) = libreoffice_owner(&String::from_utf8_lossy(&bytes));
        return Some(LockInfo {
            program: LockProgram::LibreOffice,
            since: since(&lo),
            lock_file: lo,
            user,
            host,
        });
    }
    let excel = dir.join(format!("~${name}"));
    if let Ok(bytes) = std::fs::read(&excel) {
        return Some(LockInfo {
            program: LockProgram::Excel,
            since: since(&excel),
            lock_file: excel,
            user: excel_owner(&bytes),
            host: None,
        });
    }
    // A lock file that exists but cannot be read (permissions) still means "open".
    for (file, program) in [(lo, LockProgram::LibreOffice), (excel, LockProgram::Excel)] {
        if file.symlink_metadata().is_ok() {
            return Some(LockInfo {
                program,
                since: since(&file),
                lock_file: file,
                user: None,
                host: None,
            });
        }
    }
    None
}

/// `<full name>,<user>,<host>,<date>,<profile url>;` — commas and semicolons inside a field are
/// escaped with a backslash. The user is the full name when one is set, else the login name.
fn libreoffice_owner(text: &str) -> (Option<String>, Option<String>) {
    let mut fields = vec![String::new()];
    let mut chars = text.trim_end_matches(['\n', '\r']).chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("one").extend(chars.next()),
            ',' => fields.push(String::new()),
            ';' => break,
            c => fields.last_mut().expect("one").push(c),
        }
    }
    let field = |i: usize| {
        fields
            .get(i)
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
    };
    let user = match (field(0), field(1)) {
        (Some(full), Some(login)) if full != login => Some(format!("{full} ({login})")),
        (full, login) => login.or(full),
    };
    (user, field(2))
}

/// Excel's owner file: a length byte and the user name in the ANSI code page (54 bytes with
/// padding), then a 16-bit length and the name in UTF-16LE. The UTF-16 name is preferred.
fn excel_owner(bytes: &[u8]) -> Option<String> {
    let utf16 = (|| {
        let len = u16::from_le_bytes([*bytes.get(54)?, *bytes.get(55)?]) as usize;
        let raw = bytes.get(56..56 + 2 * len)?;
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).ok()
    })();
    let ansi = (|| {
        let len = *bytes.first()? as usize;
        let raw = bytes.get(1..1 + len)?;
        // Latin-1 is close enough for a name shown in a log.
        Some(raw.iter().map(|&b| b as char).collect::<String>())
    })();
    utf16
        .into_iter()
        .chain(ansi)
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty() && s.chars().all(|c| !c.is_control()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sheet(rows: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><dimension ref="A1:C3"/><sheetViews><sheetView workbookViewId="0"/></sheetViews><cols><col min="2" max="2" width="12" style="7" customWidth="1"/></cols><sheetData>{rows}</sheetData><dataValidations count="1"><dataValidation type="list" sqref="B2:B100"><formula1>"start,restart,abort,hold"</formula1><formula2>0</formula2></dataValidation></dataValidations></worksheet>"#
        )
    }

    const ROWS: &str = r#"<row r="1" spans="1:3"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c></row><row r="2" spans="1:3"><c r="A2"><v>1</v></c><c r="B2" s="5" t="s"><v>3</v></c><c r="C2"><f>A2*2</f><v>2</v></c></row><row r="3" spans="1:3"><c r="A3"><v>2</v></c><c r="C3"><v>9</v></c></row>"#;

    fn patch(xml: &str, cells: &[(&str, CellValue)]) -> (String, PatchReport) {
        let cells: Vec<_> = cells
            .iter()
            .map(|(a1, v)| (CellRef::parse(a1).unwrap(), v.clone()))
            .collect();
        let (out, report) = patch_sheet_xml(xml.as_bytes(), &cells).unwrap();
        (String::from_utf8(out).unwrap(), report)
    }

    fn text(t: &str) -> CellValue {
        CellValue::Text(t.to_owned())
    }

    #[test]
    fn cell_refs_parse_and_print() {
        for (a1, row, col) in [
            ("A1", 0, 0),
            ("B5", 4, 1),
            ("Z1", 0, 25),
            ("AA7", 6, 26),
            ("XFD1048576", 1_048_575, 16_383),
            ("$c$3", 2, 2),
        ] {
            let c = CellRef::parse(a1).unwrap();
            assert_eq!(c, CellRef::new(row, col), "{a1}");
            assert_eq!(c.to_string(), a1.replace('$', "").to_uppercase());
        }
        for bad in ["", "A", "1", "A0", "XFE1", "A1048577", "1A", "A1B"] {
            assert_eq!(CellRef::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn replacing_a_cell_keeps_its_style_and_nothing_else_changes() {
        let xml = sheet(ROWS);
        let (out, report) = patch(&xml, &[("B2", text("running"))]);
        let old = r#"<c r="B2" s="5" t="s"><v>3</v></c>"#;
        let new = r#"<c r="B2" s="5" t="inlineStr"><is><t>running</t></is></c>"#;
        assert_eq!(out, xml.replace(old, new));
        assert_eq!(
            (report.replaced, report.inserted_cells, report.inserted_rows),
            (1, 0, 0)
        );
        assert_eq!(report.dimension, None);
    }

    /// A status cell never holds a formula in practice; if it does, the state replaces the
    /// formula (a formula kept beside a value it did not compute would be recomputed over it).
    #[test]
    fn a_formula_cell_is_replaced_by_the_value() {
        let xml = sheet(ROWS);
        let (out, _) = patch(&xml, &[("C2", CellValue::Number(4.5))]);
        assert_eq!(
            out,
            xml.replace(
                r#"<c r="C2"><f>A2*2</f><v>2</v></c>"#,
                r#"<c r="C2"><v>4.5</v></c>"#
            )
        );
    }

    /// The anchor of a shared formula holds the formula text the other cells use: removing it
    /// would break them, so the patch refuses and names the range.
    #[test]
    fn the_anchor_of_a_shared_formula_is_not_overwritten() {
        let xml = sheet(
            r#"<row r="2"><c r="B2"><f t="shared" ref="B2:B9" si="0">A2*2</f><v>2</v></c></row>"#,
        );
        let cells = [(CellRef::parse("B2").unwrap(), text("running"))];
        match patch_sheet_xml(xml.as_bytes(), &cells) {
            Err(XmlPatchError::Cell(c, reason)) => {
                assert_eq!(c.to_string(), "B2");
                assert!(reason.contains("B2:B9"), "{reason}");
            }
            other => panic!("expected a cell error, got {:?}", other.map(|o| o.1)),
        }
    }

    #[test]
    fn a_missing_cell_is_inserted_between_its_neighbours() {
        let xml = sheet(ROWS);
        let (out, report) = patch(&xml, &[("B3", text("queued"))]);
        // B's column style (7) is what a new cell in that column shows.
        let new = r#"<c r="B3" s="7" t="inlineStr"><is><t>queued</t></is></c>"#;
        assert_eq!(
            out,
            xml.replace(r#"<c r="C3">"#, &format!(r#"{new}<c r="C3">"#))
        );
        assert_eq!((report.replaced, report.inserted_cells), (0, 1));
    }

    /// An insertion and a replacement at one position: the new cell goes first.
    #[test]
    fn a_cell_inserted_before_a_replaced_cell() {
        let xml = sheet(ROWS);
        let (out, _) = patch(&xml, &[("C3", text("b")), ("B3", text("a"))]);
        let cells = r#"<c r="B3" s="7" t="inlineStr"><is><t>a</t></is></c><c r="C3" t="inlineStr"><is><t>b</t></is></c>"#;
        assert_eq!(out, xml.replace(r#"<c r="C3"><v>9</v></c>"#, cells));
    }

    #[test]
    fn a_missing_row_is_inserted_between_rows_and_the_dimension_grows() {
        let xml = sheet(
            r#"<row r="1"><c r="A1"><v>1</v></c></row><row r="5"><c r="A5"><v>5</v></c></row>"#,
        );
        let (out, report) = patch(
            &xml,
            &[("AA3", text("finished")), ("A3", CellValue::Number(3.0))],
        );
        let new_row = r#"<row r="3"><c r="A3"><v>3</v></c><c r="AA3" t="inlineStr"><is><t>finished</t></is></c></row>"#;
        let expected = xml
            .replace(r#"<row r="5">"#, &format!(r#"{new_row}<row r="5">"#))
            .replace(
                r#"<dimension ref="A1:C3"/>"#,
                r#"<dimension ref="A1:AA3"/>"#,
            );
        assert_eq!(out, expected);
        assert_eq!(report.inserted_rows, 1);
        assert_eq!(report.dimension, Some(("A1:C3".into(), "A1:AA3".into())));
    }

    #[test]
    fn rows_and_cells_beyond_the_last_ones_go_at_the_end() {
        let xml = sheet(ROWS);
        let (out, report) = patch(&xml, &[("AA7", text("crashed")), ("D2", text("x"))]);
        let expected = xml
            .replace(
                r#"<v>2</v></c></row><row r="3""#,
                r#"<v>2</v></c><c r="D2" t="inlineStr"><is><t>x</t></is></c></row><row r="3""#,
            )
            .replace(
                "</row></sheetData>",
                r#"</row><row r="7"><c r="AA7" t="inlineStr"><is><t>crashed</t></is></c></row></sheetData>"#,
            )
            .replace(r#"ref="A1:C3""#, r#"ref="A1:AA7""#);
        assert_eq!(out, expected);
        assert_eq!((report.inserted_cells, report.inserted_rows), (2, 1));
    }

    #[test]
    fn an_empty_row_element_and_an_empty_sheet_data_are_opened() {
        let xml = sheet(r#"<row r="2" ht="20" customHeight="1"/>"#);
        let (out, _) = patch(&xml, &[("B2", text("held"))]);
        assert!(out.contains(r#"<row r="2" ht="20" customHeight="1"><c r="B2" s="7" t="inlineStr"><is><t>held</t></is></c></row>"#), "{out}");
        let xml = sheet("").replace("<sheetData></sheetData>", "<sheetData/>");
        let (out, _) = patch(&xml, &[("A1", CellValue::Number(1.0))]);
        assert!(
            out.contains(r#"<sheetData><row r="1"><c r="A1"><v>1</v></c></row></sheetData>"#),
            "{out}"
        );
    }

    #[test]
    fn text_is_escaped_and_outer_spaces_are_preserved() {
        let xml = sheet(ROWS);
        let (out, _) = patch(
            &xml,
            &[("B2", text(r#" a<b & c>"d" "#)), ("A2", text("x\r\ny"))],
        );
        assert!(out.contains(r#"<c r="B2" s="5" t="inlineStr"><is><t xml:space="preserve"> a&lt;b &amp; c&gt;"d" </t></is></c>"#), "{out}");
        assert!(out.contains("<t>x&#13;\ny</t>"), "{out}");
        // And an XML reader gets the text back exactly.
        let mut reader = Reader::from_str(&out);
        let mut texts = Vec::new();
        let mut in_t = false;
        loop {
            match reader.read_event().unwrap() {
                Event::Start(e) if e.local_name().as_ref() == "t" => {
                    in_t = true;
                    texts.push(String::new());
                }
                Event::End(e) if e.local_name().as_ref() == "t" => in_t = false,
                Event::Text(t) if in_t => texts.last_mut().unwrap().push_str(&t.xml10_content()),
                Event::GeneralRef(r) if in_t => {
                    let s = texts.last_mut().unwrap();
                    match r.resolve_char_ref().unwrap() {
                        Some(c) => s.push(c),
                        None => s.push_str(
                            quick_xml::escape::resolve_predefined_entity(&r.xml10_content())
                                .unwrap(),
                        ),
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(texts, ["x\r\ny", r#" a<b & c>"d" "#]);
    }

    #[test]
    fn text_an_xlsx_cannot_hold_is_refused() {
        let xml = sheet(ROWS);
        let cells = [(CellRef::parse("B2").unwrap(), text("bell\u{7}"))];
        assert!(matches!(
            patch_sheet_xml(xml.as_bytes(), &cells),
            Err(XmlPatchError::Cell(..))
        ));
        let cells = [(CellRef::parse("B2").unwrap(), CellValue::Number(f64::NAN))];
        assert!(matches!(
            patch_sheet_xml(xml.as_bytes(), &cells),
            Err(XmlPatchError::Cell(..))
        ));
    }

    #[test]
    fn clearing_keeps_the_style_and_adds_no_cell() {
        let xml = sheet(ROWS);
        let (out, report) = patch(&xml, &[("B2", CellValue::Empty), ("B3", CellValue::Empty)]);
        assert_eq!(
            out,
            xml.replace(
                r#"<c r="B2" s="5" t="s"><v>3</v></c>"#,
                r#"<c r="B2" s="5"/>"#
            )
        );
        assert_eq!((report.replaced, report.inserted_cells), (1, 0));
    }

    #[test]
    fn a_sheet_with_a_namespace_prefix_gets_prefixed_elements() {
        let xml = r#"<x:worksheet xmlns:x="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><x:dimension ref="A1:B2"/><x:sheetData><x:row r="1"><x:c r="A1"><x:v>1</x:v></x:c></x:row><x:row r="2"><x:c r="A2"><x:v>2</x:v></x:c><x:c r="B2" s="3"><x:v>0</x:v></x:c></x:row></x:sheetData></x:worksheet>"#;
        let (out, _) = patch(xml, &[("B2", text("running")), ("B1", text("status"))]);
        let expected = xml
            .replace(r#"<x:c r="B2" s="3"><x:v>0</x:v></x:c>"#, r#"<x:c r="B2" s="3" t="inlineStr"><x:is><x:t>running</x:t></x:is></x:c>"#)
            .replace(r#"<x:v>1</x:v></x:c></x:row>"#, r#"<x:v>1</x:v></x:c><x:c r="B1" t="inlineStr"><x:is><x:t>status</x:t></x:is></x:c></x:row>"#);
        assert_eq!(out, expected);
    }

    #[test]
    fn rows_and_cells_without_numbers_are_counted() {
        // r is optional in the format: a row follows the previous one, a cell the previous cell.
        let xml = sheet(r#"<row><c><v>1</v></c><c><v>2</v></c></row><row><c><v>3</v></c></row>"#);
        let (out, _) = patch(&xml, &[("B2", text("x")), ("B1", CellValue::Number(7.0))]);
        assert!(out.contains(r#"<row><c><v>1</v></c><c r="B1"><v>7</v></c></row><row><c><v>3</v></c><c r="B2" s="7" t="inlineStr"><is><t>x</t></is></c></row>"#), "{out}");
    }

    #[test]
    fn a_part_that_is_not_a_worksheet_is_an_error() {
        let cells = [(CellRef::new(0, 0), text("x"))];
        assert!(matches!(
            patch_sheet_xml(b"<chartsheet/>", &cells),
            Err(XmlPatchError::Xml(_))
        ));
        assert!(matches!(
            patch_sheet_xml(b"<worksheet><sheetData><row></sheetData>", &cells),
            Err(XmlPatchError::Xml(_))
        ));
    }

    #[test]
    fn lock_files_name_who_holds_the_workbook() {
        let dir = tempfile::tempdir().unwrap();
        let book = dir.path().join("experiments.xlsx");
        assert_eq!(lock_holder(&book), None);
        let lo = dir.path().join(".~lock.experiments.xlsx#");
        std::fs::write(
            &lo,
            ",alice,lab-pc,27.11.2026 14:03,file:///home/alice/.config/libreoffice/4;",
        )
        .unwrap();
        let held = lock_holder(&book).unwrap();
        assert_eq!(held.program, LockProgram::LibreOffice);
        assert_eq!(
            (held.user.as_deref(), held.host.as_deref()),
            (Some("alice"), Some("lab-pc"))
        );
        assert!(held.since.is_some());
        assert!(held.to_string().contains("by alice on lab-pc"), "{held}");
        std::fs::write(
            &lo,
            "Alice Smith\\, PhD,alice,lab-pc,27.11.2026 14:03,file:///x;",
        )
        .unwrap();
        assert_eq!(
            lock_holder(&book).unwrap().user.as_deref(),
            Some("Alice Smith, PhD (alice)")
        );
        std::fs::remove_file(&lo).unwrap();

        // Excel's owner file: length byte + ANSI name padded to 54 bytes, then UTF-16LE.
        let mut owner = vec![5u8];
        owner.extend_from_slice(b"Bj\xf6rn");
        owner.resize(54, b' ');
        owner.extend_from_slice(&5u16.to_le_bytes());
        for u in "Björn".encode_utf16() {
            owner.extend_from_slice(&u.to_le_bytes());
        }
        owner.resize(165, 0);
        std::fs::write(dir.path().join("~$experiments.xlsx"), &owner).unwrap();
        let held = lock_holder(&book).unwrap();
        assert_eq!(held.program, LockProgram::Excel);
        assert_eq!(held.user.as_deref(), Some("Björn"));
        assert_eq!(
            excel_owner(&owner[..54]).as_deref(),
            Some("Björn"),
            "the ANSI name alone"
        );
    }

    /// A minimal .xlsx in memory: one sheet "Runs", plus `extra` parts (and their content-type
    /// overrides and package relationships when `custom` says so).
    fn book(custom: Option<&str>) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        let custom_override = match custom {
            Some(_) => format!(
                "<Override PartName=\"/{CUSTOM_PART}\" ContentType=\"{CUSTOM_CONTENT_TYPE}\"/>"
            ),
            None => String::new(),
        };
        let custom_rel = match custom {
            Some(_) => format!("<Relationship Id=\"rId5\" Type=\"{CUSTOM_REL_TYPE}\" Target=\"docProps/custom.xml\"/>"),
            None => String::new(),
        };
        let mut parts = vec![
            ("[Content_Types].xml".to_owned(), format!(r#"<?xml version="1.0" encoding="UTF-8"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>{custom_override}</Types>"#)),
            ("_rels/.rels".to_owned(), format!(r#"<?xml version="1.0" encoding="UTF-8"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/><Relationship Id="rId3" Type="x" Target="docProps/app.xml"/>{custom_rel}</Relationships>"#)),
            ("xl/workbook.xml".to_owned(), r#"<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Runs" sheetId="1" r:id="rId1"/></sheets></workbook>"#.to_owned()),
            ("xl/_rels/workbook.xml.rels".to_owned(), r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>"#.to_owned()),
            ("xl/worksheets/sheet1.xml".to_owned(), sheet(ROWS)),
        ];
        if let Some(c) = custom {
            parts.push((CUSTOM_PART.to_owned(), c.to_owned()));
        }
        for (name, text) in parts {
            zip.start_file(name, opts).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn unpack(bytes: &[u8]) -> BTreeMap<String, String> {
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        (0..zip.len())
            .map(|i| {
                let mut e = zip.by_index(i).unwrap();
                let mut text = String::new();
                e.read_to_string(&mut text).unwrap();
                (e.name().unwrap().into_owned(), text)
            })
            .collect()
    }

    fn stamp(bytes: &[u8], revision: u64) -> Vec<u8> {
        let cell = [(CellRef::parse("B2").unwrap(), text("running"))];
        patch_xlsx_bytes(Path::new("t.xlsx"), bytes, "Runs", &cell, Some(revision))
            .unwrap()
            .0
    }

    fn revision_of(bytes: &[u8]) -> Option<u64> {
        let parts = unpack(bytes);
        parts
            .get(CUSTOM_PART)
            .and_then(|xml| revision_in(xml.as_bytes()).unwrap())
    }

    #[test]
    fn a_stamp_creates_the_custom_part_its_content_type_and_relationship() {
        let before = book(None);
        let after = stamp(&before, 17);
        let (old, new) = (unpack(&before), unpack(&after));
        assert_eq!(
            new[CUSTOM_PART],
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Properties xmlns=\"{CUSTOM_NS}\" xmlns:vt=\"{VT_NS}\"><property fmtid=\"{{D5CDD505-2E9C-101B-9397-08002B2CF9AE}}\" pid=\"2\" name=\"NeronetRevision\"><vt:lpwstr>17</vt:lpwstr></property></Properties>")
        );
        assert_eq!(revision_of(&after), Some(17));
        assert_eq!(
            new["[Content_Types].xml"],
            old["[Content_Types].xml"].replace(
                "</Types>",
                "<Override PartName=\"/docProps/custom.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.custom-properties+xml\"/></Types>"
            )
        );
        assert_eq!(
            new["_rels/.rels"],
            old["_rels/.rels"].replace(
                "</Relationships>",
                "<Relationship Id=\"rId4\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/custom-properties\" Target=\"docProps/custom.xml\"/></Relationships>"
            )
        );
        assert!(new["xl/worksheets/sheet1.xml"].contains("running"));
        assert_eq!(new["xl/workbook.xml"], old["xl/workbook.xml"]);
        assert_eq!(new.len(), old.len() + 1);
        // A second stamp updates the part and adds nothing more.
        let again = unpack(&stamp(&after, 18));
        assert_eq!(again[CUSTOM_PART], new[CUSTOM_PART].replace(">17<", ">18<"));
        assert_eq!(again["[Content_Types].xml"], new["[Content_Types].xml"]);
        assert_eq!(again["_rels/.rels"], new["_rels/.rels"]);
        // Without a revision nothing but the sheet changes.
        let cell = [(CellRef::parse("B2").unwrap(), text("running"))];
        let plain = patch_xlsx_bytes(Path::new("t.xlsx"), &before, "Runs", &cell, None)
            .unwrap()
            .0;
        assert_eq!(revision_of(&plain), None);
        assert_eq!(unpack(&plain)["_rels/.rels"], old["_rels/.rels"]);
    }

    #[test]
    fn a_stamp_updates_an_existing_custom_part_and_keeps_the_other_properties() {
        let other = r#"<property fmtid="{D5CDD505-2E9C-101B-9397-08002B2CF9AE}" pid="2" name="Owner"><vt:lpwstr>Ada &amp; co</vt:lpwstr></property><property fmtid="{D5CDD505-2E9C-101B-9397-08002B2CF9AE}" pid="4" name="Checked"><vt:bool>true</vt:bool></property>"#;
        let head = format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Properties xmlns="{CUSTOM_NS}" xmlns:vt="{VT_NS}">"#
        );
        // No stamp yet: one is added with the next free pid.
        let custom = format!("{head}{other}</Properties>");
        let new = unpack(&stamp(&book(Some(&custom)), 7));
        assert_eq!(
            new[CUSTOM_PART],
            format!("{head}{other}<property fmtid=\"{CUSTOM_FMTID}\" pid=\"5\" name=\"NeronetRevision\"><vt:lpwstr>7</vt:lpwstr></property></Properties>")
        );
        // The content type and relationship were there: untouched.
        let old = unpack(&book(Some(&custom)));
        assert_eq!(new["[Content_Types].xml"], old["[Content_Types].xml"]);
        assert_eq!(new["_rels/.rels"], old["_rels/.rels"]);
        // A stamp retyped by a spreadsheet program is replaced in place, its pid kept.
        let custom = format!("{head}<property fmtid=\"{CUSTOM_FMTID}\" pid=\"3\" name=\"NeronetRevision\"><vt:r8>6</vt:r8></property>{other}</Properties>");
        let new = unpack(&stamp(&book(Some(&custom)), 8));
        assert_eq!(
            new[CUSTOM_PART],
            format!("{head}<property fmtid=\"{CUSTOM_FMTID}\" pid=\"3\" name=\"NeronetRevision\"><vt:lpwstr>8</vt:lpwstr></property>{other}</Properties>")
        );
        // A part with another vt prefix, or none, and an empty root.
        let custom = format!("<Properties xmlns=\"{CUSTOM_NS}\"/>");
        let new = unpack(&stamp(&book(Some(&custom)), 9));
        assert_eq!(
            new[CUSTOM_PART],
            format!("<Properties xmlns=\"{CUSTOM_NS}\"><property fmtid=\"{CUSTOM_FMTID}\" pid=\"2\" name=\"NeronetRevision\"><vt:lpwstr xmlns:vt=\"{VT_NS}\">9</vt:lpwstr></property></Properties>")
        );
        assert_eq!(revision_in(new[CUSTOM_PART].as_bytes()).unwrap(), Some(9));
        let custom =
            format!("<op:Properties xmlns:op=\"{CUSTOM_NS}\" xmlns:t=\"{VT_NS}\"></op:Properties>");
        let new = unpack(&stamp(&book(Some(&custom)), 10));
        assert_eq!(
            new[CUSTOM_PART],
            format!("<op:Properties xmlns:op=\"{CUSTOM_NS}\" xmlns:t=\"{VT_NS}\"><op:property fmtid=\"{CUSTOM_FMTID}\" pid=\"2\" name=\"NeronetRevision\"><t:lpwstr>10</t:lpwstr></op:property></op:Properties>")
        );
        assert_eq!(revision_in(new[CUSTOM_PART].as_bytes()).unwrap(), Some(10));
    }

    #[test]
    fn a_stamp_is_read_in_the_forms_a_spreadsheet_program_may_retype_it_to() {
        let part = |value: &str| {
            format!("<Properties xmlns=\"{CUSTOM_NS}\" xmlns:vt=\"{VT_NS}\"><property fmtid=\"{CUSTOM_FMTID}\" pid=\"2\" name=\"Other\"><vt:i4>3</vt:i4></property><property fmtid=\"{CUSTOM_FMTID}\" pid=\"3\" name=\"NeronetRevision\">{value}</property></Properties>")
        };
        let read = |value: &str| revision_in(part(value).as_bytes());
        assert_eq!(read("<vt:lpwstr>17</vt:lpwstr>").unwrap(), Some(17));
        assert_eq!(read("<vt:lpwstr> 17 </vt:lpwstr>").unwrap(), Some(17));
        assert_eq!(read("<vt:i4>17</vt:i4>").unwrap(), Some(17));
        assert_eq!(
            read("<vt:i8>9000000000</vt:i8>").unwrap(),
            Some(9_000_000_000)
        );
        assert_eq!(read("<vt:r8>17</vt:r8>").unwrap(), Some(17));
        assert_eq!(read("<vt:r8>17.0</vt:r8>").unwrap(), Some(17));
        assert_eq!(read("<vt:r8>1.7E1</vt:r8>").unwrap(), Some(17));
        assert!(read("<vt:r8>17.5</vt:r8>").is_err());
        assert!(read("<vt:i4>-1</vt:i4>").is_err());
        assert!(read("<vt:lpwstr>seventeen</vt:lpwstr>").is_err());
        assert!(read("<vt:bool>true</vt:bool>").is_err());
        assert!(read("").is_err());
        // The name is compared as Office does, ignoring case; other properties are no stamp.
        let lower = part("<vt:i4>5</vt:i4>").replace("NeronetRevision", "neronetrevision");
        assert_eq!(revision_in(lower.as_bytes()).unwrap(), Some(5));
        let none = format!("<Properties xmlns=\"{CUSTOM_NS}\" xmlns:vt=\"{VT_NS}\"><property fmtid=\"{CUSTOM_FMTID}\" pid=\"2\" name=\"Other\"><vt:i4>3</vt:i4></property></Properties>");
        assert_eq!(revision_in(none.as_bytes()).unwrap(), None);
    }

    #[test]
    fn read_revision_reads_a_stamped_workbook_and_none_without_a_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.xlsx");
        std::fs::write(&path, book(None)).unwrap();
        assert_eq!(read_revision(&path).unwrap(), None);
        let cell = [(CellRef::parse("B2").unwrap(), text("running"))];
        patch_cells_with_revision(&path, "Runs", &cell, 42).unwrap();
        assert_eq!(read_revision(&path).unwrap(), Some(42));
        patch_cells(&path, "Runs", &cell).unwrap();
        assert_eq!(read_revision(&path).unwrap(), Some(42));
        assert!(matches!(
            read_revision(&dir.path().join("b.ods")),
            Err(WritebackError::Unsupported { .. })
        ));
    }
}
