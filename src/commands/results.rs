//! `neroman results`: write results.xlsx now.

use super::output::outln;
use super::{exit, open_synced};
use std::path::Path;

pub fn run(dir: &Path) -> anyhow::Result<i32> {
    let (project, exps, _) = open_synced(dir)?;
    let path = crate::view::write_results(&project, &exps)?;
    outln!("wrote {}", path.display())?;
    Ok(exit::OK)
}
