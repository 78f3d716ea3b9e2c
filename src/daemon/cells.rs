//! The rule that makes a command typed into a status cell fire exactly once per user edit
//! (SPEC §2; docs/WORKBOOK.md, "Commands in the status column").
//!
//! Every workbook the tool writes back carries a revision stamp (the custom document property
//! `NeronetRevision`, which Excel and LibreOffice keep on save). For each experiment the store
//! keeps what its status cell held as of each revision ([`StatusSeen`], written only when it
//! differs). A save carrying stamp `R` is compared, cell by cell, with the record of the
//! greatest revision not after `R`: what the user's copy held when she opened it, as far as the
//! tool knows. A command fires when the cell differs from that record, or equals it but was not
//! acted on yet (a command on an invalid row waits for the row to be fixed). So: saving again
//! changes nothing (the record is that same command, consumed); an old copy saved after a
//! write-back is compared with its own, older, revision, where the command is already recorded
//! as consumed; the tool's own write-back is recorded under the revision it writes before the
//! file is replaced.

use crate::sheet::read::{StatusCell, StatusCommand};
use crate::store::StatusSeen;

/// The status cell's content as compared: a command or state word lowercased (`Start` and
/// `start` are one edit), anything else trimmed.
pub fn cell_value(cell: &StatusCell) -> String {
    match cell {
        StatusCell::Empty => String::new(),
        StatusCell::Command(c) => command_word(*c).to_string(),
        StatusCell::State(s) => s.as_str().to_string(),
        StatusCell::Other(t) => t.clone(),
    }
}

fn command_word(c: StatusCommand) -> &'static str {
    match c {
        StatusCommand::Start => "start",
        StatusCommand::Restart => "restart",
        StatusCommand::Abort => "abort",
        StatusCommand::Hold => "hold",
    }
}

/// What to do about one status cell of a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A new command: act on it now.
    Fire(StatusCommand),
    /// A command not acted on yet, on a row that cannot be acted on (invalid): it stays in the
    /// cell and fires once the row is saved valid.
    Wait(StatusCommand),
    /// Nothing to do: no command, or one already acted on.
    Nothing,
}

/// Decide about `cell` of a save whose revision's record for this row is `baseline`.
pub fn decide(cell: &StatusCell, baseline: Option<&StatusSeen>, valid: bool) -> Decision {
    let StatusCell::Command(command) = cell else {
        return Decision::Nothing;
    };
    if *command == StatusCommand::Hold {
        return Decision::Nothing;
    }
    let same = baseline.is_some_and(|b| b.value == cell_value(cell));
    if same && baseline.is_some_and(|b| b.consumed) {
        return Decision::Nothing;
    }
    if valid {
        Decision::Fire(*command)
    } else {
        Decision::Wait(*command)
    }
}

/// Whether a save's cell needs a new record: it differs from what is recorded for its
/// revision (value, whether acted on, or the reason shown).
pub fn needs_record(baseline: Option<&StatusSeen>, new: &StatusSeen) -> bool {
    baseline.is_none_or(|b| b.value != new.value || b.consumed != new.consumed || b.why != new.why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The store's records for one row, by revision.
    #[derive(Default)]
    struct Records(BTreeMap<u64, StatusSeen>);

    impl Records {
        fn baseline(&self, rev: u64) -> Option<&StatusSeen> {
            self.0.range(..=rev).next_back().map(|(_, s)| s)
        }
        /// A save of `text` stamped `rev`, on a valid row: returns whether a command fired.
        fn save(&mut self, text: &str, rev: u64, valid: bool) -> bool {
            let cell = StatusCell::parse(text);
            let d = decide(&cell, self.baseline(rev), valid);
            let consumed = matches!(d, Decision::Fire(_))
                || (d == Decision::Nothing && self.baseline(rev).is_some_and(|b| b.consumed));
            let rec = StatusSeen {
                value: cell_value(&cell),
                consumed,
                why: None,
                rev,
                at: 0.0,
            };
            if needs_record(self.baseline(rev), &rec) {
                self.0.insert(rev, rec);
            }
            matches!(d, Decision::Fire(_))
        }
        /// The tool writes `state` into the cell as revision `rev`.
        fn write_back(&mut self, state: &str, rev: u64) {
            self.0.insert(
                rev,
                StatusSeen {
                    value: state.into(),
                    consumed: false,
                    why: None,
                    rev,
                    at: 0.0,
                },
            );
        }
    }

    #[test]
    fn a_command_fires_once_however_often_the_file_is_saved() {
        let mut r = Records::default();
        assert!(r.save("start", 0, true));
        assert!(!r.save("start", 0, true));
        assert!(
            !r.save(" START ", 0, true),
            "case and spaces are the same edit"
        );
    }

    #[test]
    fn an_old_copy_saved_after_a_write_back_fires_nothing() {
        let mut r = Records::default();
        assert!(r.save("restart", 3, true));
        r.write_back("running", 4);
        assert!(!r.save("running", 4, true), "the tool's own write-back");
        assert!(!r.save("restart", 3, true), "the old copy, stamped 3");
        // A new edit in the current copy fires.
        r.write_back("crashed", 5);
        assert!(r.save("restart", 5, true));
    }

    #[test]
    fn a_new_edit_in_an_old_copy_fires() {
        let mut r = Records::default();
        r.write_back("finished", 2);
        r.write_back("crashed", 3);
        // Her copy is from revision 2 (the cell said finished): typing restart is an edit.
        assert!(r.save("restart", 2, true));
    }

    #[test]
    fn a_command_on_an_invalid_row_waits_and_fires_once_fixed() {
        let mut r = Records::default();
        assert!(!r.save("start", 0, false));
        assert!(!r.save("start", 0, false));
        assert!(r.save("start", 0, true), "fixed: it fires");
        assert!(!r.save("start", 0, true));
    }

    #[test]
    fn clearing_and_retyping_fires_again() {
        let mut r = Records::default();
        assert!(r.save("restart", 0, true));
        assert!(!r.save("", 0, true));
        assert!(r.save("restart", 0, true));
    }

    #[test]
    fn hold_and_state_words_are_not_commands() {
        let mut r = Records::default();
        assert!(!r.save("hold", 0, true));
        assert!(!r.save("finished", 0, true));
        assert!(!r.save("some note", 0, true));
    }
}
