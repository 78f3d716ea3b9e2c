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
