//! Cell types as the researcher types them: whole numbers, decimals, text, booleans, dates,
//! and headers in any case; ignored columns; blank rows.

use neronet::sheet::read::{read_experiments, StatusCell, StatusCommand};
use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};

#[test]
fn numbers_text_dates_and_reserved_columns() {
    let dir = std::env::temp_dir().join(format!("neronet-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("types.xlsx");
    let mut book = Workbook::new();
    // A first sheet that is not the experiments sheet: the one named `experiments` is used.
    book.add_worksheet()
        .set_name("notes")
        .unwrap()
        .write_string(0, 0, "scratch")
        .unwrap();
    let ws = book.add_worksheet();
    ws.set_name("Experiments").unwrap();
    for (c, h) in [
        "ID",
        " Status ",
        "Command",
        "LR",
        "opt",
        "augment",
        "since",
        "#private",
        "notes",
        "slurm.time",
    ]
    .iter()
    .enumerate()
    {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    let date = Format::new().set_num_format("yyyy-mm-dd");
    ws.write_number(1, 0, 7.0).unwrap();
    ws.write_string(1, 1, "  START ").unwrap();
    ws.write_string(1, 2, "train --lr {lr}").unwrap();
    ws.write_number(1, 3, 0.1).unwrap();
    ws.write_string(1, 4, "adam").unwrap();
    ws.write_boolean(1, 5, true).unwrap();
    ws.write_datetime_with_format(1, 6, ExcelDateTime::from_ymd(2026, 3, 14).unwrap(), &date)
        .unwrap();
    ws.write_string(1, 7, "hidden").unwrap();
    ws.write_string(1, 9, "2:00:00").unwrap();
    // Row 3 left blank; row 4 has a text id and a number typed as text.
    ws.write_string(3, 0, "baseline").unwrap();
    ws.write_string(3, 3, "3e-4").unwrap();
    // Row 5: a whole-number id typed as text.
    ws.write_string(4, 0, "007").unwrap();
    book.save(&path).unwrap();

    let sheet = read_experiments(&path).unwrap();
    assert_eq!(sheet.sheet, "Experiments");
    assert_eq!(sheet.params, ["LR", "opt", "augment", "since"]);
    assert_eq!(sheet.rows.len(), 3, "the blank row is passed over");
    assert_eq!(sheet.rows[2].id, "7", "`007` typed as text is the id 7");
    let r = &sheet.rows[0];
    assert_eq!((r.row, r.id.as_str()), (2, "7"));
    assert_eq!(r.status, StatusCell::Command(StatusCommand::Start));
    assert_eq!(r.id_cell, "Experiments!A2");
    assert_eq!(r.status_cell, "Experiments!B2");
    assert_eq!(r.params["LR"].text, "0.1");
    assert_eq!(r.params["LR"].number, Some(0.1));
    assert_eq!(r.params["opt"].number, None);
    assert_eq!(r.params["augment"].text, "true");
    assert_eq!(r.params["since"].text, "2026-03-14");
    assert_eq!(r.warden_options["slurm.time"], "2:00:00");
    assert!(!r.params.contains_key("#private") && !r.params.contains_key("notes"));
    let b = &sheet.rows[1];
    assert_eq!((b.row, b.id.as_str()), (4, "baseline"));
    assert_eq!(
        b.params["LR"].number,
        Some(3e-4),
        "numbers typed as text still compare as numbers"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/workbooks")
        .join(name)
}

fn problems(row: &neronet::sheet::read::SheetRow) -> Vec<String> {
    row.invalid.iter().map(|p| p.to_string()).collect()
}

/// Regression: openpyxl (and pandas, which writes through it) saves a formula with no computed
/// value; the cell read as empty and the row was reported "missing id" or "cell is empty",
/// which sent the user looking for a value she could see in her spreadsheet program.
#[test]
fn formulas_without_a_computed_value_say_so() {
    let sheet = read_experiments(&fixture("openpyxl-formulas.xlsx")).unwrap();
    assert_eq!(sheet.rows.len(), 4);
    assert!(
        sheet.rows[0].invalid.is_empty(),
        "{:?}",
        sheet.rows[0].invalid
    );
    let hint = "has no computed value (the file was written by a program that does not calculate formulas, such as openpyxl or pandas): open and save it in LibreOffice or Excel, or type the value";
    assert_eq!(
        problems(&sheet.rows[1]),
        [format!("experiments!E3: formula `=E2*2` {hint}")]
    );
    assert!(!sheet.rows[1].params.contains_key("width"));
    assert_eq!(
        problems(&sheet.rows[2]),
        [format!("experiments!A4: formula `=A3+1` {hint}")]
    );
    // A formula in an ignored column (`notes`) does not matter.
    assert!(
        sheet.rows[3].invalid.is_empty(),
        "{:?}",
        sheet.rows[3].invalid
    );
}

/// Regression: in a merged range only the top-left cell holds the value; the other rows read as
/// empty and were reported as "cell is empty" although the user sees the value on them.
#[test]
fn merged_cells_name_their_range() {
    let sheet = read_experiments(&fixture("merged.xlsx")).unwrap();
    assert_eq!(sheet.rows.len(), 5);
    assert!(
        sheet.rows[0].invalid.is_empty(),
        "{:?}",
        sheet.rows[0].invalid
    );
    assert_eq!(sheet.rows[0].params["lr"].text, "0.1");
    for (row, cell) in [(1, "D3"), (2, "D4")] {
        assert_eq!(
            problems(&sheet.rows[row]),
            [format!("experiments!{cell}: part of the merged range D2:D4, whose value is in D2 only: unmerge the cells and fill the value into each row")]
        );
    }
    // Merged `notes` cells are ignored like any notes.
    assert!(sheet.rows[3].invalid.is_empty() && sheet.rows[4].invalid.is_empty());
}

/// Regressions: a workbook in the 1904 date system (Mac Excel) had every date 4 years and a day
/// early; a duration cell (`[h]:mm:ss`, 36:00:00) became the date `1899-12-31 12:00:00`; a time
/// a hair before midnight was written `24:00:00` of the same day; a time of day became a date
/// in 1899.
#[test]
fn dates_durations_and_times_in_both_date_systems() {
    for book in ["dates-1900.xlsx", "dates-1904.xlsx"] {
        let sheet = read_experiments(&fixture(book)).unwrap();
        let r = &sheet.rows[0];
        assert!(r.invalid.is_empty(), "{book}: {:?}", r.invalid);
        let text = |k: &str| r.params[k].text.as_str();
        assert_eq!(text("since"), "2026-03-14", "{book}");
        assert_eq!(r.params["since"].number, None, "{book}");
        assert_eq!(text("at"), "2026-03-14 14:30:00", "{book}");
        assert_eq!(
            text("late"),
            "2026-03-15",
            "{book}: rounds to the next midnight"
        );
        assert_eq!(text("clock"), "09:15:00", "{book}: a time of day");
        // Durations are written as the cell shows them, and compare as seconds.
        assert_eq!(text("time_limit"), "36:00:00", "{book}");
        assert_eq!(r.params["time_limit"].number, Some(129_600.0), "{book}");
        assert_eq!(text("short"), "1:30:05", "{book}");
        assert_eq!(r.params["short"].number, Some(5405.0), "{book}");
    }
}

/// The same workbook saved by LibreOffice as .ods, where dates and durations are ISO 8601 texts:
/// they read as in the .xlsx. (An .ods cannot tell a time of day from a duration: `clock` is
/// the duration 9:15:00 there.)
#[test]
fn ods_dates_and_durations_read_like_xlsx() {
    let sheet = read_experiments(&fixture("dates-1904.ods")).unwrap();
    let r = &sheet.rows[0];
    assert!(r.invalid.is_empty(), "{:?}", r.invalid);
    let text = |k: &str| r.params[k].text.as_str();
    assert_eq!(text("since"), "2026-03-14");
    assert_eq!(text("at"), "2026-03-14 14:30:00");
    assert_eq!(text("time_limit"), "36:00:00");
    assert_eq!(r.params["time_limit"].number, Some(129_600.0));
    assert_eq!(text("short"), "1:30:05");
    assert_eq!(text("clock"), "9:15:00");
    // LibreOffice stores this one to the hundredth of a second.
    assert_eq!(text("late"), "2026-03-14 23:59:59.990");
}

/// A formula whose computed value is the empty string (`=IF(...,"",...)`, as LibreOffice saves
/// it) is an empty cell, not a formula without a value; a formula with a value reads as its
/// value. The openpyxl workbook, once opened and saved by LibreOffice, reads without a problem.
#[test]
fn formulas_with_a_computed_value_read_as_their_value() {
    let sheet = read_experiments(&fixture("libreoffice-formulas.xlsx")).unwrap();
    let r = &sheet.rows[0];
    assert!(r.invalid.is_empty(), "{:?}", r.invalid);
    assert_eq!(r.params["lr"].text, "0.2");
    assert!(!r.params.contains_key("tag"));

    let sheet = read_experiments(&fixture("openpyxl-formulas-resaved.xlsx")).unwrap();
    assert!(sheet.rows.iter().all(|r| r.invalid.is_empty()));
    assert_eq!(sheet.rows[1].params["width"].text, "32");
    assert_eq!(sheet.rows[2].id, "3");
}

/// Regression from a user trial: a duration a hair under a day (23:59:59.9999, as float
/// arithmetic leaves one) was shown `24:00:00` but compared as 86399.9999 s, so `d>=1d` missed
/// it. It is read to the millisecond it is shown with.
#[test]
fn a_duration_is_read_to_the_millisecond_it_is_shown_with() {
    let dir = std::env::temp_dir().join(format!("neronet-duration-ms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("d.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    let ws = book.add_worksheet();
    let fmt = rust_xlsxwriter::Format::new().set_num_format("[h]:mm:ss");
    for (c, h) in ["id", "status", "command", "d"].iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    ws.write_number(1, 0, 1.0).unwrap();
    ws.write_string(1, 2, "echo {d}").unwrap();
    ws.write_number_with_format(1, 3, (86_400.0 - 0.0001) / 86_400.0, &fmt)
        .unwrap();
    book.save(&path).unwrap();
    let sheet = read_experiments(&path).unwrap();
    let d = &sheet.rows[0].params["d"];
    assert_eq!(d.text, "24:00:00");
    assert_eq!(d.number, Some(86_400.0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: `sge.<KEY>` headers were lower-cased, which changed the qsub option (Grid Engine
/// options are case-sensitive): `sge.P` (project) became `-p` (priority), the reserved `sge.N`
/// got through as `-n`, and `sge.P` beside `sge.p` was refused as a duplicate column. The
/// part after `sge.` keeps its case; `slurm.` keys are lower case (sbatch's long options are).
#[test]
fn sge_option_headers_keep_their_case() {
    let dir = std::env::temp_dir().join(format!("neronet-read-sge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("case.xlsx");
    let mut book = Workbook::new();
    let ws = book.add_worksheet();
    ws.set_name("experiments").unwrap();
    let header = [
        "id",
        "status",
        "sge.P",
        "sge.p",
        "SGE.R",
        "sge.l.H_RT",
        "Slurm.Time",
    ];
    for (c, h) in header.iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
        ws.write_string(1, c as u16, format!("v{c}")).unwrap();
    }
    ws.write_number(1, 0, 1.0).unwrap();
    ws.write_string(1, 1, "").unwrap();
    book.save(&path).unwrap();
    let sheet = read_experiments(&path).unwrap();
    let r = &sheet.rows[0];
    let keys: Vec<&str> = r.warden_options.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["sge.P", "sge.R", "sge.l.H_RT", "sge.p", "slurm.time"],
        "{r:?}"
    );
    assert_eq!(r.warden_options["sge.P"], "v2");
    assert_eq!(r.warden_options["sge.p"], "v3");
    assert_eq!(r.warden_option_cells["sge.R"], "experiments!E2");
    // The same option twice is still a duplicate column, whatever the prefix's case.
    let mut book = Workbook::new();
    let ws = book.add_worksheet();
    ws.set_name("experiments").unwrap();
    for (c, h) in ["id", "status", "sge.q", "SGE.q"].iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    book.save(&path).unwrap();
    let e = read_experiments(&path).unwrap_err().to_string();
    assert!(e.contains("SGE.q"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
