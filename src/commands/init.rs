//! `neroman init [DIR]`: a new project from the template workbook, a commented neronet.yaml and
//! the sample training script its two sample rows run, so that `neroman start all` works at once.

use super::output::outln;
use crate::config::CONFIG_FILE;
use std::path::Path;

pub const TEMPLATE_XLSX: &[u8] = include_bytes!("../../templates/experiments.xlsx");
pub const TEMPLATE_YAML: &str = include_str!("../../templates/neronet.yaml");
/// What the template's sample rows run (`python3 train.py --lr {lr} --width {width}`): the
/// demo's small MLP, standard library only.
pub const TEMPLATE_TRAIN: &str = include_str!("../../samples/quickstart/train.py");
pub const TRAIN_FILE: &str = "train.py";

pub fn run(dir: &Path, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let wb = dir.join("experiments.xlsx");
    let cfg = dir.join(CONFIG_FILE);
    let train = dir.join(TRAIN_FILE);
    for f in [&wb, &cfg] {
        if f.exists() && !force {
            anyhow::bail!(
                "{} exists already; nothing written (use --force to overwrite)",
                f.display()
            );
        }
    }
    crate::util::write_atomic(&wb, TEMPLATE_XLSX)?;
    crate::util::write_atomic(&cfg, TEMPLATE_YAML.as_bytes())?;
    // The user's own script is never replaced, not even with --force.
    let kept = train.exists();
    if !kept {
        crate::util::write_atomic(&train, TEMPLATE_TRAIN.as_bytes())?;
    }
    outln!("created {} and {}", wb.display(), cfg.display())?;
    if kept {
        outln!(
            "kept your {}: the two sample rows run it as `python3 train.py --lr {{lr}} --width {{width}}`",
            train.display()
        )?;
    } else {
        outln!(
            "created {}: a small sample training script the two sample rows run",
            train.display()
        )?;
    }
    outln!("next: `neroman start all` runs the sample rows; then add your own rows (one per experiment)")?;
    Ok(())
}
