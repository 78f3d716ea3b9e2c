//! `nerokid run --dir RUN_DIR [--spec FILE] -- CMD...`: supervise one job (see the crate docs).
//! Exit status: the job's own code, 128+signal when it died from a signal, 125 for kid errors.

use nerokid::report::{KidSpec, SPEC_FILE};
use std::path::PathBuf;

/// The kid itself failed (bad arguments, unreadable spec, unwritable run dir).
const EXIT_KID_ERROR: i32 = 125;

const USAGE: &str =
    "usage: nerokid run --dir RUN_DIR [--spec FILE] [--abort-when RULE] [--report-to MUM_WORKDIR] -- CMD [ARGS...]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match real_main(args) {
        Ok(code) => std::process::exit(code),
        Err(msg) => {
            eprintln!("nerokid: {msg}");
            std::process::exit(EXIT_KID_ERROR);
        }
    }
}

fn real_main(args: Vec<String>) -> Result<i32, String> {
    let mut it = args.into_iter();
    match it.next().as_deref() {
        Some("run") => {}
        Some("--version") => {
            println!("nerokid {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        _ => return Err(USAGE.into()),
    }
    let (mut dir, mut spec_path, mut rule, mut report_to) = (None, None, None, None);
    let mut command = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from),
            "--spec" => spec_path = it.next().map(PathBuf::from),
            "--abort-when" => rule = it.next(),
            // mum's workdir: its kids.addr and kids.secret say where and how to report.
            "--report-to" => report_to = it.next().map(PathBuf::from),
            "--" => {
                command.extend(it.by_ref());
                break;
            }
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    let dir = dir.ok_or_else(|| format!("--dir is required\n{USAGE}"))?;
    if command.is_empty() {
        return Err(format!("no command after --\n{USAGE}"));
    }
    let spec_path = spec_path.unwrap_or_else(|| dir.join(SPEC_FILE));
    let mut spec: KidSpec = match std::fs::read(&spec_path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", spec_path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KidSpec::default(),
        Err(e) => return Err(format!("{}: {e}", spec_path.display())),
    };
    if rule.is_some() {
        spec.abort_when = rule;
    }
    nerokid::run::run_reporting(&dir, &spec, &command, report_to.as_deref())
        .map_err(|e| e.to_string())
}
