//! What the watcher writes into the experiments workbook: each row's state word in its status
//! cell, the reason a row was not acted on in the tool-owned column `neronet.why`, and the
//! fields the config names in `workbook_columns` in columns `neronet.<field>`. This file only
//! plans the cells from the last read of the workbook and the store; `sheet::writeback` patches
//! them in.

use crate::project::{Experiments, Origin};
use crate::select::Candidate;
use crate::sheet::read::{StatusCell, StatusCommand, TOOL_COLUMN_PREFIX};
use crate::sheet::writeback::{CellRef, CellValue};
use crate::store::StatusSeen;
use nerokid::expr::{FieldValue, Fields};
use std::collections::{BTreeMap, HashMap};

pub const WHY_COLUMN: &str = "neronet.why";

/// The cells to patch and, for each status cell patched, the record of what it holds from the
/// new revision on.
#[derive(Debug, Default)]
pub struct Plan {
    pub cells: Vec<(CellRef, CellValue)>,
    pub records: Vec<(String, StatusSeen)>,
    /// Whether a status cell or a reason changes (else only configured values do).
    pub states_change: bool,
}

/// Plan the write-back. `baselines` are the records for the revision the workbook holds now;
/// `notes` are reasons the daemon adds (a row changed under its run in flight); `columns` the
/// configured fields.
pub fn plan(
    exps: &Experiments,
    cands: &[Candidate<'_>],
    baselines: &HashMap<String, StatusSeen>,
    notes: &HashMap<String, String>,
    columns: &[String],
    rev: u64,
) -> Plan {
    let sheet = &exps.sheet;
    let mut plan = Plan::default();
    // Where each tool-owned column is, or will be once created.
    let mut next_col = sheet.next_col;
    let mut col_of: BTreeMap<String, u32> = sheet.tool_columns.clone();
    let mut create = |name: &str, plan: &mut Plan, col_of: &mut BTreeMap<String, u32>| -> u32 {
        if let Some(c) = col_of.get(name) {
            return *c;
        }
        let c = next_col;
        next_col += 1;
        col_of.insert(name.to_string(), c);
        plan.cells
            .push((CellRef::new(0, c), CellValue::Text(name.to_string())));
        c
    };
    let wanted: Vec<String> = columns
        .iter()
        .map(|f| format!("{TOOL_COLUMN_PREFIX}{}", f.trim().to_ascii_lowercase()))
        .collect();
    // The configured columns are made together, in the config's order, once there are rows.
    if !exps.list.is_empty() {
        for header in &wanted {
            create(header, &mut plan, &mut col_of);
        }
    }
    for c in cands {
        let e = c.exp;
        if e.row.row == 0 || !matches!(e.origin, Origin::Row | Origin::SharedId) {
            continue;
        }
        let row0 = e.row.row - 1;
        let id = &e.row.id;
        let baseline = baselines.get(id);

        // The status cell.
        if e.origin == Origin::Row && !id.is_empty() {
            let run_state = c.run.map(|r| r.state.name().as_str());
            let current = crate::daemon::cells::cell_value(&e.row.status);
            let consumed = baseline.is_some_and(|b| b.consumed && b.value == current);
            let desired: Option<String> = match &e.row.status {
                StatusCell::Command(StatusCommand::Hold) | StatusCell::Other(_) => None,
                StatusCell::Command(_) if !consumed => None,
                // Acted on: the command gives way to the state (or to nothing, when the row
                // never ran: an abort of a row that was never started).
                StatusCell::Command(_) => Some(run_state.unwrap_or("").to_string()),
                StatusCell::State(_) | StatusCell::Empty => run_state.map(str::to_string),
            };
            if let Some(word) = desired.filter(|w| *w != current) {
                plan.states_change = true;
                let value = if word.is_empty() {
                    CellValue::Empty
                } else {
                    CellValue::Text(word.clone())
                };
                plan.cells
                    .push((CellRef::new(row0, sheet.status_col), value));
                plan.records.push((
                    id.clone(),
                    StatusSeen {
                        value: word,
                        consumed: false,
                        why: baseline.and_then(|b| b.why.clone()),
                        rev,
                        at: baseline.map_or(0.0, |b| b.at),
                    },
                ));
            }
        }

        // The reason column.
        let mut why: Vec<String> = Vec::new();
        if !e.is_valid() {
            let pending =
                matches!(e.row.status, StatusCell::Command(c) if c != StatusCommand::Hold);
            let problems: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
            why.push(if pending {
                format!("waits for a valid row: {}", problems.join("; "))
            } else {
                problems.join("; ")
            });
        } else if let Some(b) = baseline.filter(|b| b.why.is_some()) {
            // A reason is about the row as it was when the command was refused: once its run
            // moved on (ended, or a new one started), it is stale.
            if c.run.is_none_or(|r| r.state.at() <= b.at + 0.2) {
                why.extend(b.why.clone());
            }
        }
        if let Some(n) = notes.get(id) {
            why.push(n.clone());
        }
        if let StatusCell::Other(text) = &e.row.status {
            // A typo of a command does nothing: say so where it was typed.
            let words = StatusCommand::WORDS.iter().map(|(w, _)| *w);
            if let Some(word) = crate::select::nearest(text, words) {
                why.push(format!(
                    "{text:?} is not a command; did you mean {word}? (start, restart, abort, stop, hold)"
                ));
            }
        }
        let why = why.join("; ");
        let have = e
            .row
            .tool_values
            .get(WHY_COLUMN)
            .cloned()
            .unwrap_or_default();
        // An empty reason needs no column made for it.
        if why != have && (!why.is_empty() || col_of.contains_key(WHY_COLUMN)) {
            plan.states_change = true;
            let col = create(WHY_COLUMN, &mut plan, &mut col_of);
            plan.cells.push((
                CellRef::new(row0, col),
                if why.is_empty() {
                    CellValue::Empty
                } else {
                    CellValue::Text(crate::util::cut_chars(&why, 32_000))
                },
            ));
        }

        // Configured fields.
        for (field, header) in columns.iter().zip(&wanted) {
            let value = field_value(c, field);
            let have = e.row.tool_values.get(header);
            let same = match (&value, have) {
                (None, None) => true,
                (Some(CellValue::Text(t)), Some(h)) => t == h,
                (Some(CellValue::Number(n)), Some(h)) => h
                    .parse::<f64>()
                    .is_ok_and(|x| (x - n).abs() <= 1e-9 * n.abs().max(1.0)),
                _ => false,
            };
            if !same {
                let col = create(header, &mut plan, &mut col_of);
                plan.cells
                    .push((CellRef::new(row0, col), value.unwrap_or(CellValue::Empty)));
            }
        }
    }
    plan
}

/// A configured field's value for one experiment: numbers as numbers (runtime to the second),
/// the rest as text.
fn field_value(c: &Candidate<'_>, field: &str) -> Option<CellValue> {
    let v = match field.trim().to_ascii_lowercase().as_str() {
        "state" | "status" => Some(FieldValue::Text(c.state_name().to_string())),
        "runtime" => c.runtime().map(|s| FieldValue::Num(s.round())),
        _ => c.field(field.trim()).ok().flatten(),
    }?;
    Some(match v {
        FieldValue::Num(n) if n.is_finite() => CellValue::Number(n),
        FieldValue::Num(n) => CellValue::Text(nerokid::expr::format_number(n)),
        FieldValue::Text(t) => CellValue::Text(t),
    })
}
