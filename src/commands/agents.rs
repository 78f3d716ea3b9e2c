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
    let mut trouble = false;
    for (cluster, status) in lines {
        trouble |= !status.ok;
        outln!("{cluster}: {}", status.text)?;
    }
    // Scripts can tell a wedged or failing agent from a healthy one.
    Ok(if trouble { exit::ERROR } else { exit::OK })
}
