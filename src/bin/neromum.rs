//! `neromum serve --workdir DIR`: the cluster agent (see `neronet::cluster::mum`).
//! Usually started by neroman, detached; runs until idle.

use clap::{Parser, Subcommand};
use neronet::cluster::mum::{serve, MumOptions};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "neromum",
    version,
    about = "Neronet cluster agent: runs jobs under nerokid and journals what they report"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve one workdir until idle.
    Serve {
        #[arg(long)]
        workdir: PathBuf,
        /// The nerokid binary job scripts run.
        #[arg(long)]
        kid: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        max_parallel: u32,
        /// Exit after this many seconds with no runs and no client.
        #[arg(long, default_value_t = 900)]
        idle_exit: u64,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let Cli {
        command:
            Cmd::Serve {
                workdir,
                kid,
                max_parallel,
                idle_exit,
            },
    } = Cli::parse();
    let workdir = std::path::absolute(&workdir).unwrap_or(workdir);
    let opts = MumOptions {
        workdir,
        kid_binary: kid.unwrap_or_else(|| neronet::cluster::sibling_binary("nerokid")),
        idle_exit: Duration::from_secs(idle_exit),
        tick: Duration::from_millis(200),
        max_parallel: max_parallel.max(1),
    };
    if let Err(e) = serve(opts) {
        eprintln!("neromum: {}", neronet::util::error_chain(&e));
        std::process::exit(1);
    }
}
