//! The experiments workbook that `neroman init` copies (`templates/experiments.xlsx`) and the demo's
//! workbook (`samples/quickstart/experiments.xlsx`), both generated here with rust_xlsxwriter:
//! reserved columns, a status drop-down, a frozen header, sensible widths. Output is byte-stable
//! (fixed document dates) so a test can tell when a checked-in copy is stale.

use super::read::StatusCommand;
use rust_xlsxwriter::{
    DataValidation, DataValidationErrorStyle, DocProperties, ExcelDateTime, Format, FormatBorder,
    Workbook, XlsxError,
};

/// The commands a user may type in the status column (SPEC §2), for the drop-down: the words
/// the reader knows, in its order.
pub const STATUS_COMMANDS: [&str; StatusCommand::WORDS.len()] = {
    let mut words = [""; StatusCommand::WORDS.len()];
    let mut i = 0;
    while i < words.len() {
        words[i] = StatusCommand::WORDS[i].0;
        i += 1;
    }
    words
};

/// A cell value in a generated workbook.
#[derive(Debug, Clone)]
pub enum Cell {
    Num(f64),
    Text(&'static str),
    Empty,
}

pub struct BookSpec {
    /// (header, width in characters)
    pub columns: Vec<(&'static str, f64)>,
    pub rows: Vec<Vec<Cell>>,
}

/// The template: two sample rows of a training script with two parameters.
pub fn template_spec() -> BookSpec {
    use Cell::*;
    BookSpec {
        columns: vec![
            ("id", 8.0),
            ("status", 11.0),
            ("command", 52.0),
            ("cluster", 10.0),
            ("abort_when", 22.0),
            ("lr", 8.0),
            ("width", 8.0),
            ("notes", 30.0),
        ],
        rows: vec![
            vec![
                Num(1.0),
                Empty,
                Text("python3 train.py --lr {lr} --width {width}"),
                Text("local"),
                Empty,
                Num(0.1),
                Num(16.0),
                Text(
                    "type start into status and save (neroman watch running), or: neroman start 1",
                ),
            ],
            vec![
                Num(2.0),
                Empty,
                Text("python3 train.py --lr {lr} --width {width}"),
                Text("local"),
                Text("runtime>1h&&loss>2"),
                Num(0.5),
                Num(32.0),
                Text("its own abort rule"),
            ],
        ],
    }
}

/// The demo's six experiments (SPEC §6 `neroman demo`); the sample's `abort_when` stops number 6.
pub fn quickstart_spec() -> BookSpec {
    use Cell::*;
    let cmd = Text("python3 train.py --lr {lr} --width {width} --epochs {epochs}");
    let row = |id: f64, lr: f64, width: f64, note: &'static str| {
        vec![
            Num(id),
            Empty,
            cmd.clone(),
            Empty,
            Num(lr),
            Num(width),
            Num(30.0),
            Text(note),
        ]
    };
    BookSpec {
        columns: vec![
            ("id", 8.0),
            ("status", 11.0),
            ("command", 60.0),
            ("cluster", 10.0),
            ("lr", 8.0),
            ("width", 8.0),
            ("epochs", 8.0),
            ("notes", 34.0),
        ],
        rows: vec![
            row(1.0, 0.1, 8.0, "small and slow"),
            row(2.0, 0.3, 16.0, ""),
            row(3.0, 1.0, 16.0, ""),
            row(4.0, 1.0, 32.0, "widest"),
            row(5.0, 0.3, 32.0, ""),
            row(6.0, 3000.0, 16.0, "learning rate far too high: diverges"),
        ],
    }
}

/// Build the workbook bytes for a spec.
pub fn build(spec: &BookSpec) -> Result<Vec<u8>, XlsxError> {
    let mut book = Workbook::new();
    // Fixed dates keep the output byte-identical from one build to the next.
    let fixed = ExcelDateTime::from_ymd(2026, 1, 1)?;
    book.set_properties(
        &DocProperties::new()
            .set_title("Neronet experiments")
            .set_comment(
                "One row per experiment. Type start, restart, abort or hold in status and save.",
            )
            .set_creation_datetime(&fixed),
    );
    let header = Format::new()
        .set_bold()
        .set_background_color("DDEBF7")
        .set_border_bottom(FormatBorder::Thin);
    let ws = book.add_worksheet();
    ws.set_name(super::read::SHEET_NAME)?;
    let mut status_col = None;
    for (c, (name, width)) in spec.columns.iter().enumerate() {
        let c = c as u16;
        ws.write_string_with_format(0, c, *name, &header)?;
        ws.set_column_width(c, *width)?;
        if *name == "status" {
            status_col = Some(c);
        }
    }
    for (r, row) in spec.rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u16;
            match cell {
                Cell::Num(n) => {
                    ws.write_number(r, c, *n)?;
                }
                Cell::Text(t) if !t.is_empty() => {
                    ws.write_string(r, c, *t)?;
                }
                _ => {}
            }
        }
    }
    ws.set_freeze_panes(1, 0)?;
    if let Some(c) = status_col {
        // Warning style: the tool writes states (running, finished, ...) into the same cells.
        let dv = DataValidation::new()
            .allow_list_strings(&STATUS_COMMANDS)?
            .set_input_title("Status")?
            .set_input_message("Type start, restart, abort (or stop) or hold, then save. Neronet writes the state here.")?
            .set_error_style(DataValidationErrorStyle::Warning)
            .set_error_title("Not a command")?
            .set_error_message("Commands are start, restart, abort, stop and hold.")?;
        ws.add_data_validation(1, c, 10_000, c, &dv)?;
    }
    book.save_to_buffer()
}
