//! `neroman demo`: the whole loop on this machine with the embedded quickstart sample — a fresh
//! project, six small MLP trainings two at a time, one stopped by the sample's abort rule, a live
//! status table, results.xlsx, and where everything is.

use super::act::wait_for;
use super::exit;
use super::output::{out, outln};
use crate::cluster::protocol::Request;
use crate::project::Project;
use crate::sheet::writeback::{CellRef, CellValue};
use crate::state::StateName;
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

/// The runs the watcher started for `ids` (it acts on the save within a second or so).
fn wait_for_runs(project: &Project, ids: &[String]) -> anyhow::Result<Vec<String>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let latest = project.store.latest_runs()?;
        let runs: Vec<String> = ids
            .iter()
            .filter_map(|id| latest.get(id).map(|r| r.uid.clone()))
            .collect();
        if runs.len() == ids.len() {
            return Ok(runs);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the watcher started {} of {} runs within 30 s",
                runs.len(),
                ids.len()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
    let mut project = Project::open(&dir)?;
    outln!("six experiments of a small neural network (plain Python), run two at a time on this machine;")?;
    if let Some(rule) = &project.config.abort_when {
        outln!("the sample's rule `abort_when: {rule}` stops the one that diverges.")?;
    }
    outln!()?;

    let exps = project.read_experiments()?;
    // The workbook loop, as she would use it: a watcher runs (here inside the demo; yours is
    // `neroman watch`), and `start` typed into the status cells and saved starts the rows.
    let watcher = crate::daemon::InProcess::start(&dir)?;
    let workbook = project.workbook_path();
    let rows: Vec<&crate::project::Experiment> =
        exps.list.iter().filter(|e| e.is_valid()).collect();
    let status_cells: Vec<(CellRef, CellValue)> = rows
        .iter()
        .map(|e| {
            (
                CellRef::new(e.row.row - 1, exps.sheet.status_col),
                CellValue::Text("start".into()),
            )
        })
        .collect();
    let first = rows.first().map_or(2, |e| e.row.row);
    let last = rows.last().map_or(2, |e| e.row.row);
    outln!(
        "a watcher runs (`neroman watch`); typing `start` into the status cells of rows {first}-{last} of {} and saving, as you would in Excel or LibreOffice:",
        workbook.display()
    )?;
    crate::sheet::writeback::patch_cells(&workbook, &exps.sheet.sheet, &status_cells)?;
    let ids: Vec<String> = rows.iter().map(|e| e.row.id.clone()).collect();
    let runs = wait_for_runs(&project, &ids)?;
    outln!("the watcher started {} runs.\n", runs.len())?;
    wait_for(&mut project, &exps, &runs, true)?;
    // The states are written back into the workbook within a second or two.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let written = loop {
        let sheet = crate::sheet::read::read_experiments(&workbook).ok();
        let latest = project.store.latest_runs()?;
        let done = sheet.as_ref().is_some_and(|s| {
            s.rows.iter().filter(|r| ids.contains(&r.id)).all(|r| {
                latest.get(&r.id).is_some_and(|run| {
                    r.status == crate::sheet::read::StatusCell::State(run.state.name())
                })
            })
        });
        if done || std::time::Instant::now() > deadline {
            break sheet;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    watcher.stop()?;
    let report = crate::actions::ActionReport {
        started: runs
            .iter()
            .filter_map(|u| project.store.run(u).ok().flatten())
            .map(|r| (r.exp_id, r.uid))
            .collect(),
        ..Default::default()
    };
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
    if let Some(sheet) = written {
        outln!("\nthe status column of experiments.xlsx, as the watcher wrote it back:")?;
        for r in sheet.rows.iter().filter(|r| ids.contains(&r.id)) {
            let text = match &r.status {
                crate::sheet::read::StatusCell::State(s) => s.as_str().to_string(),
                crate::sheet::read::StatusCell::Command(_) => "start (not written back yet)".into(),
                other => format!("{other:?}"),
            };
            outln!("  {:<4} {text}", r.id)?;
        }
    }
    let results = crate::view::write_results(&project, &exps)?;
    let runs: Vec<_> = report
        .touched_runs()
        .iter()
        .filter_map(|u| project.store.run(u).ok().flatten())
        .collect();
    let count = |n: StateName| runs.iter().filter(|r| r.state.name() == n).count();
    let (finished, aborted) = (count(StateName::Finished), count(StateName::Aborted));
    // The reasons, which a narrow terminal may have cut from the live table. Elsewhere the
    // change lines and the full table above already said them (printing them again doubled them).
    for r in runs
        .iter()
        .filter(|r| r.state.name() != StateName::Finished)
        .filter(|_| std::io::stdout().is_terminal())
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
    outln!("     {me} --dir {} show 6", dir.display())?;
    outln!("     {me} --dir {} restart aborted", dir.display())?;
    Ok(if finished + aborted == runs.len() {
        exit::OK
    } else {
        exit::ERROR
    })
}
