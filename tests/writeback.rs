//! Status write-back into a workbook LibreOffice saved (tests/fixtures/workbooks/
//! libreoffice-validations.xlsx, made by make-writeback.py): a status drop-down, a decimal
//! validation, a comment, formulas, conditional formatting and a second sheet. Only the patched
//! cells may change; LibreOffice and calamine must read the rest as before. Needs soffice.

mod common;

use calamine::{Data, Reader};
use neronet::sheet::writeback::{
    lock_holder, patch_cells, patch_cells_with_revision, read_revision, CellRef, CellValue,
    WritebackError,
};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const FIXTURE: &str = "tests/fixtures/workbooks/libreoffice-validations.xlsx";
const SHEET_PART: &str = "xl/worksheets/sheet1.xml";

fn copy_fixture(dir: &Path) -> PathBuf {
    let book = dir.join("experiments.xlsx");
    std::fs::copy(FIXTURE, &book).unwrap();
    book
}

/// Every entry's name and unpacked bytes, in archive order.
fn entries(book: &Path) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(book).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut e = zip.by_index(i).unwrap();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (e.name().unwrap().into_owned(), bytes)
        })
        .collect()
}

fn part(entries: &[(String, Vec<u8>)], name: &str) -> String {
    let (_, bytes) = entries.iter().find(|(n, _)| n == name).unwrap();
    String::from_utf8(bytes.clone()).unwrap()
}

/// The sheet XML without the `<c>` element of each of `cells`, and without `<dimension>`.
fn without(xml: &str, cells: &[&str]) -> String {
    let mut xml = xml.to_owned();
    for cell in cells {
        let Some(start) = xml.find(&format!("<c r=\"{cell}\"")) else {
            continue;
        };
        let tag_end = start + xml[start..].find('>').unwrap() + 1;
        let end = if xml[..tag_end].ends_with("/>") {
            tag_end
        } else {
            tag_end + xml[tag_end..].find("</c>").unwrap() + "</c>".len()
        };
        xml.replace_range(start..end, "");
    }
    let start = xml.find("<dimension ").unwrap();
    let end = start + xml[start..].find("/>").unwrap() + 2;
    xml.replace_range(start..end, "");
    xml
}

fn sheet_values(book: &Path, sheet: &str) -> BTreeMap<(u32, u32), String> {
    let mut wb = calamine::open_workbook_auto(book).unwrap();
    let range = wb.worksheet_range(sheet).unwrap();
    range
        .cells()
        .filter(|(_, _, v)| !matches!(v, Data::Empty))
        .map(|(r, c, v)| {
            let (r0, c0) = range.start().unwrap();
            ((r as u32 + r0, c as u32 + c0), v.to_string())
        })
        .collect()
}

/// A CSV file as a grid of its non-empty fields.
fn csv_grid(text: &str) -> BTreeMap<(u32, u32), String> {
    let mut grid = BTreeMap::new();
    for (r, fields) in common::lo::csv_rows(text).into_iter().enumerate() {
        for (c, f) in fields.into_iter().enumerate() {
            if !f.is_empty() {
                grid.insert((r as u32, c as u32), f);
            }
        }
    }
    grid
}

fn at(a1: &str) -> (u32, u32) {
    let c = CellRef::parse(a1).unwrap();
    (c.row, c.col)
}

fn state(s: &str) -> CellValue {
    CellValue::Text(s.to_owned())
}

#[test]
fn write_back_changes_only_the_patched_cells_of_a_libreoffice_workbook() {
    let dir = tempfile::tempdir().unwrap();
    let book = copy_fixture(dir.path());
    std::fs::set_permissions(&book, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = entries(&book);
    let values_before = sheet_values(&book, "experiments");
    let notes_before = sheet_values(&book, "notes");
    let csv_before = csv_grid(&common::soffice_csv(&book, 0));
    let notes_csv_before = common::soffice_csv(&book, 1);

    // B2 held the shared string "start", B3 is an empty cell with the drop-down's style, H4 is a
    // new cell at the end of its row (a tool-owned column), B102 a new row after the last one.
    let patch = [
        ("B2", state("running")),
        ("B3", state("crashed")),
        ("B6", state("finished")),
        ("H4", state("not started: <row> & \"3\" already ran ")),
        ("B102", state("queued")),
    ];
    let cells: Vec<_> = patch
        .iter()
        .map(|(a1, v)| (CellRef::parse(a1).unwrap(), v.clone()))
        .collect();
    let report = patch_cells(&book, "experiments", &cells).unwrap();
    assert_eq!(report.part, SHEET_PART);
    assert_eq!(
        (report.replaced, report.inserted_cells, report.inserted_rows),
        (3, 2, 1)
    );
    assert_eq!(
        report.dimension,
        Some(("A1:G100".to_owned(), "A1:H102".to_owned()))
    );

    // (e) the file keeps its mode, and no temp file is left beside it.
    let mode = std::fs::metadata(&book).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "mode {mode:o}");
    let temps: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "temp files left: {temps:?}");

    // (a) every other entry byte for byte, in the same order.
    let after = entries(&book);
    let names = |e: &[(String, Vec<u8>)]| e.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after));
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        if name != SHEET_PART {
            assert!(old == new, "{name} changed");
        }
    }

    // (b) in the sheet XML only the patched <c> elements, the new row and <dimension> differ.
    let old_xml = part(&before, SHEET_PART);
    let new_xml = part(&after, SHEET_PART);
    let new_row = r#"<row r="102"><c r="B102" t="inlineStr"><is><t>queued</t></is></c></row>"#;
    assert!(new_xml.contains(new_row), "{new_xml}");
    let refs: Vec<&str> = patch.iter().map(|(a1, _)| *a1).collect();
    assert_eq!(
        without(&old_xml, &refs),
        without(&new_xml.replacen(new_row, "", 1), &refs)
    );
    assert!(new_xml.contains(r#"<dimension ref="A1:H102"/>"#));
    // The styles are kept: the drop-down column's style 2, on a replaced and an empty cell.
    assert!(
        new_xml.contains(r#"<c r="B2" s="2" t="inlineStr"><is><t>running</t></is></c><c r="C2" "#)
    );
    assert!(new_xml.contains(r#"<c r="B3" s="2" t="inlineStr"><is><t>crashed</t></is></c>"#));
    assert!(new_xml.contains(
        r#"<c r="H4" t="inlineStr"><is><t xml:space="preserve">not started: &lt;row&gt; &amp; "3" already ran </t></is></c></row>"#
    ));

    // (c) calamine reads the new values and every other value as before.
    let mut expected = values_before.clone();
    for (a1, v) in &patch {
        let CellValue::Text(t) = v else {
            unreachable!()
        };
        expected.insert(at(a1), t.clone());
    }
    assert_eq!(sheet_values(&book, "experiments"), expected);
    assert_eq!(sheet_values(&book, "notes"), notes_before);
    let read = neronet::sheet::read::read_experiments(&book).unwrap();
    assert_eq!(
        read.rows.len(),
        6,
        "5 experiments and the status-only row 102"
    );

    // (d) LibreOffice shows the user's values intact and the new states.
    let mut expected = csv_before.clone();
    for (a1, v) in &patch {
        let CellValue::Text(t) = v else {
            unreachable!()
        };
        expected.insert(at(a1), t.clone());
    }
    assert_eq!(csv_grid(&common::soffice_csv(&book, 0)), expected);
    assert_eq!(common::soffice_csv(&book, 1), notes_csv_before);

    // (f) LibreOffice still sees both validations, the conditional format and the comment:
    // saved again by LibreOffice, the workbook holds them as before.
    let out = dir.path().join("resaved");
    std::fs::create_dir_all(&out).unwrap();
    common::soffice_convert(&book, "xlsx", &out, &dir.path().join("profile"));
    let resaved = entries(&out.join("experiments.xlsx"));
    let sheet = part(&resaved, SHEET_PART);
    let tail = |xml: &str| xml[xml.find("</sheetData>").unwrap()..].to_owned();
    let old_tail = tail(&old_xml);
    for piece in [
        r#"sqref="B2:B100" type="list"><formula1>&quot;start,restart,abort,stop,hold&quot;</formula1>"#,
        r#"error="lr is between 0 and 1""#,
        r#"<conditionalFormatting sqref="B2:B100">"#,
    ] {
        assert!(old_tail.contains(piece), "the fixture lacks {piece}");
        assert!(sheet.contains(piece), "LibreOffice lost {piece}: {sheet}");
    }
    assert!(part(&resaved, "xl/comments1.xml").contains("placeholders are replaced"));
}

#[test]
fn a_workbook_that_cannot_be_patched_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let book = copy_fixture(dir.path());
    let original = std::fs::read(&book).unwrap();
    let cells = [(CellRef::parse("B2").unwrap(), state("running"))];
    let untouched = |what: &str| {
        assert_eq!(std::fs::read(&book).unwrap(), original, "{what}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".~lock.") && !n.starts_with("~$"))
            .collect();
        assert_eq!(names, ["experiments.xlsx"], "{what}: temp file left");
    };

    let err = patch_cells(&book, "results", &cells).unwrap_err();
    assert!(matches!(err, WritebackError::NoSheet { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(r#"sheets: "experiments", "notes""#),
        "{err}"
    );
    untouched("no such sheet");

    // A cell no sheet can hold: the error names the file, the part and the cell.
    let err = patch_cells(
        &book,
        "experiments",
        &[(CellRef::new(0, 20_000), state("x"))],
    )
    .unwrap_err();
    assert!(err.to_string().contains(SHEET_PART), "{err}");
    untouched("a cell beyond the last column");

    // LibreOffice's lock file: who holds it, and no write.
    let lock = dir.path().join(".~lock.experiments.xlsx#");
    std::fs::write(
        &lock,
        ",alice,lab-pc,27.11.2026 14:03,file:///home/alice/.config/libreoffice/4;",
    )
    .unwrap();
    let holder = lock_holder(&book).unwrap();
    assert_eq!(holder.user.as_deref(), Some("alice"));
    let err = patch_cells(&book, "experiments", &cells).unwrap_err();
    assert!(matches!(err, WritebackError::Locked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("open in LibreOffice by alice on lab-pc"),
        "{err}"
    );
    untouched("locked");
    std::fs::remove_file(&lock).unwrap();

    // Not a zip at all.
    std::fs::write(&book, b"not a workbook").unwrap();
    let err = patch_cells(&book, "experiments", &cells).unwrap_err();
    assert!(matches!(err, WritebackError::NotZip { .. }), "{err}");
    assert_eq!(std::fs::read(&book).unwrap(), b"not a workbook");

    // .ods is not supported, and says so.
    let ods = dir.path().join("experiments.ods");
    std::fs::write(&ods, b"whatever").unwrap();
    let err = patch_cells(&ods, "experiments", &cells).unwrap_err();
    assert!(matches!(err, WritebackError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("not supported"), "{err}");
}

/// A workbook reached through a symbolic link is patched where it lies; the link stays a link.
#[test]
fn a_linked_workbook_stays_linked() {
    let dir = tempfile::tempdir().unwrap();
    let real = copy_fixture(dir.path());
    let link = dir.path().join("link.xlsx");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    patch_cells(
        &link,
        "experiments",
        &[(CellRef::parse("B2").unwrap(), state("running"))],
    )
    .unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(sheet_values(&real, "experiments")[&at("B2")], "running");
}

/// The revision stamp (custom document property NeronetRevision) survives a real LibreOffice
/// loading the stamped workbook, editing a cell and saving it as .xlsx (scripts/lo-edit.py,
/// python3-uno); calamine reads the stamped workbook as before.
#[test]
fn the_revision_stamp_survives_a_libreoffice_edit_and_save() {
    let dir = tempfile::tempdir().unwrap();
    let book = copy_fixture(dir.path());
    assert_eq!(read_revision(&book).unwrap(), None);
    let values_before = sheet_values(&book, "experiments");
    patch_cells_with_revision(&book, "experiments", &[], 7).unwrap();
    assert_eq!(read_revision(&book).unwrap(), Some(7));
    assert_eq!(sheet_values(&book, "experiments"), values_before);
    let stamped = entries(&book);
    let custom = part(&stamped, "docProps/custom.xml");
    assert!(
        custom.contains("name=\"NeronetRevision\"><vt:lpwstr>7</vt:lpwstr>"),
        "{custom}"
    );

    common::lo::edit(&book, &[("B2", "start")]);
    // LibreOffice wrote the package anew (its own serialisation of the relationships) ...
    let saved = entries(&book);
    assert_ne!(part(&saved, "_rels/.rels"), part(&stamped, "_rels/.rels"));
    // ... and kept the property, as a string.
    assert_eq!(read_revision(&book).unwrap(), Some(7));
    let mut values = values_before.clone();
    values.insert(at("B2"), "start".to_owned());
    assert_eq!(sheet_values(&book, "experiments"), values);
    // The next stamp updates LibreOffice's part in place.
    patch_cells_with_revision(&book, "experiments", &[], 8).unwrap();
    assert_eq!(read_revision(&book).unwrap(), Some(8));
    assert_eq!(sheet_values(&book, "experiments"), values);
}
