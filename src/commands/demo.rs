//! `neroman demo`: the whole loop on this machine with the embedded quickstart sample — a fresh
//! project, six small MLP trainings two at a time, one stopped by the sample's abort rule, a live
//! status table, results.xlsx, and where everything is.

use super::act::{print_report, wait_for};
use super::exit;
use super::output::{out, outln};
use crate::actions::{act, Verb};
use crate::cluster::protocol::Request;
use crate::project::Project;
use crate::state::StateName;
use nerokid::expr::Expr;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const SAMPLE_XLSX: &[u8] = include_bytes!("../../samples/quickstart/experiments.xlsx");
pub const SAMPLE_YAML: &str = include_str!("../../samples/quickstart/neronet.yaml");
pub const SAMPLE_TRAIN: &str = include_str!("../../samples/quickstart/train.py");

fn default_dir() -> PathBuf {
    let secs = nerokid::report::now() as u64;
    std::env::temp_dir().join(format!("neronet-demo-{secs}-{}", std::process::id()))
}

pub fn run(dir: Option<&Path>) -> anyhow::Result<i32> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_dir);
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} is not empty; the demo makes a fresh project (give another --dir)",
            dir.display()
        );
    }
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !python.is_ok_and(|s| s.success()) {
        anyhow::bail!("the demo's jobs are Python scripts, and python3 was not found on PATH");
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("experiments.xlsx"), SAMPLE_XLSX)?;
    std::fs::write(dir.join("neronet.yaml"), SAMPLE_YAML)?;
    std::fs::write(dir.join("train.py"), SAMPLE_TRAIN)?;
    outln!("Neronet demo: a fresh project in {}", dir.display())?;
    outln!("six experiments of a small neural network (plain Python), run two at a time on this machine;")?;
    outln!("the sample's rule `abort_when: epoch>=3 && (loss>3 || loss==nan)` stops the one that diverges.\n")?;

    let mut project = Project::open(&dir)?;
    let exps = project.read_experiments()?;
    let (report, _) = act(&mut project, &exps, Verb::Start, &Expr::All)?;
    print_report(Verb::Start, &report)?;
    outln!()?;
    wait_for(&mut project, &exps, &report.touched_runs(), true)?;
    // Leave nothing running: the demo's agent is not needed any more. Before printing more, so
    // that a reader who went away (a closed stdout ends the command) leaves no agent behind.
    if let Ok(mut client) = project.connect("local") {
        let _ = client.request(Request::Shutdown);
    }
    if !std::io::stdout().is_terminal() {
        // On a terminal the live table already shows the final state.
        outln!("\nfinal state:")?;
        out!("{}", crate::view::status_table(&project, &exps, None, 4)?)?;
    }
    let results = crate::view::write_results(&project, &exps)?;
    let runs: Vec<_> = report
        .touched_runs()
        .iter()
        .filter_map(|u| project.store.run(u).ok().flatten())
        .collect();
    let count = |n: StateName| runs.iter().filter(|r| r.state.name() == n).count();
    let (finished, aborted) = (count(StateName::Finished), count(StateName::Aborted));
    // The reasons, which a narrow terminal may have cut from the table.
    for r in runs
        .iter()
        .filter(|r| r.state.name() != StateName::Finished)
    {
        let reason = r
            .state
            .reason()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default();
        outln!("{}: {}{reason}", r.exp_id, r.state.name().as_str())?;
    }
    outln!(
        "\n{finished} finished, {aborted} aborted by the rule, {} other",
        runs.len() - finished - aborted
    )?;
    outln!("\nwhere everything is:")?;
    outln!("  project         {}", dir.display())?;
    outln!("  experiments     {}", project.workbook_path().display())?;
    outln!("  results         {}", results.display())?;
    outln!(
        "  run directories {}",
        dir.join(".neronet/mum-local/runs").display()
    )?;
    outln!(
        "  state store     {}",
        dir.join(".neronet/state.db").display()
    )?;
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "neroman".into());
    outln!("\ntry: {me} --dir {} status", dir.display())?;
    outln!("     {me} --dir {} logs 6", dir.display())?;
    outln!("     {me} --dir {} restart aborted", dir.display())?;
    Ok(if finished + aborted == runs.len() {
        exit::OK
    } else {
        exit::ERROR
    })
}
