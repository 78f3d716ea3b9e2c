//! `neroman init [DIR]`: a new project from the template workbook and a commented neronet.yaml.

use super::output::outln;
use crate::config::CONFIG_FILE;
use std::path::Path;

pub const TEMPLATE_XLSX: &[u8] = include_bytes!("../../templates/experiments.xlsx");
pub const TEMPLATE_YAML: &str = include_str!("../../templates/neronet.yaml");

pub fn run(dir: &Path, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let wb = dir.join("experiments.xlsx");
    let cfg = dir.join(CONFIG_FILE);
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
    outln!("created {} and {}", wb.display(), cfg.display())?;
    outln!("next: add rows to the workbook (one per experiment), then `neroman start all`")?;
    Ok(())
}
