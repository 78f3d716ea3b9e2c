//! `neroman results`: write results.xlsx now. Other commands write it after their work through
//! [`write_after`]: the file is a view, so a failure to write it is a warning that says the
//! work itself was done (exit 0), while `neroman results`, whose work it is, fails (exit 1).

use super::output::outln;
use super::{exit, open_synced};
use crate::project::{Experiments, Project};
use std::path::{Path, PathBuf};

pub fn run(dir: &Path) -> anyhow::Result<i32> {
    let (project, exps, _) = open_synced(dir)?;
    let path = crate::view::write_results(&project, &exps)?;
    outln!("wrote {}", path.display())?;
    Ok(exit::OK)
}

/// Write results.xlsx after a command's work (`done` says what was done, for the warning);
/// `None` when it could not be written, after a warning on stderr.
pub fn write_after(project: &Project, exps: &Experiments, done: &str) -> Option<PathBuf> {
    match crate::view::write_results(project, exps) {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!(
                "neroman: warning: {done}; only {} could not be written: {}",
                project.results_path().display(),
                crate::util::error_chain(&e)
            );
            None
        }
    }
}
