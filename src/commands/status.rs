//! `neroman status [SEL] [--json]`: the experiments, their states, parameters and last metrics.

use super::output::{out, outln};
use super::{exit, open_synced};
use std::path::Path;

pub fn run(dir: &Path, selection: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let (project, exps, sync) = open_synced(dir)?;
    super::refresh_results(&project, &exps, &sync);
    let sel = match selection {
        Some(s) => Some(super::act::parse(&project, &exps, s)?),
        None => None,
    };
    if json {
        let v = crate::view::status_json(&project, &exps, sel.as_ref())?;
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        out!(
            "{}",
            crate::view::status_table(&project, &exps, sel.as_ref(), 6)?
        )?;
    }
    Ok(exit::OK)
}
