//! `neroman agents [--stop]`: what each cluster's agent (neromum) is doing, without starting
//! one; `--stop` stops them (runs in flight keep going and are adopted by the next agent).

use super::exit;
use super::output::outln;
use crate::project::Project;
use std::path::Path;

pub fn run(dir: &Path, stop: bool) -> anyhow::Result<i32> {
    let project = Project::open(dir)?;
    let lines = if stop {
        project.stop_agents()
    } else {
        project.agents()
    };
    for (cluster, what) in lines {
        outln!("{cluster}: {what}")?;
    }
    Ok(exit::OK)
}
