//! `neromum serve --workdir DIR`: the cluster agent (see `neronet::cluster::mum`), usually started
//! by neroman, detached; runs until idle or SIGTERM. `neromum bridge --workdir DIR`: stdin/stdout
//! joined to that agent's socket (starting it when none answers), for `ssh host neromum bridge`.

use clap::{Parser, Subcommand};
use neronet::cluster::client::{LocalMum, Transport};
use neronet::cluster::mum::warden::WardenSettings;
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
    /// Serve one workdir until idle (or SIGTERM).
    Serve(AgentArgs),
    /// Join stdin/stdout to the workdir's agent, starting it when none answers.
    Bridge {
        #[command(flatten)]
        agent: AgentArgs,
        /// When no agent answers, say so on stderr and exit 3 instead of starting one.
        #[arg(long)]
        no_start: bool,
        /// Set by a bridge that hopped here from another login node (it names that node).
        #[arg(long, hide = true)]
        hopped_from: Option<String>,
    },
}

/// The agent's settings (a bridge passes them on when it has to start one).
#[derive(clap::Args)]
struct AgentArgs {
    /// The agent's directory (journal, run directories, socket).
    #[arg(long)]
    workdir: PathBuf,
    /// The nerokid binary job scripts run.
    #[arg(long)]
    kid: Option<PathBuf>,
    /// Jobs at once (neroman sends the cluster's setting with every connection).
    #[arg(long, default_value_t = 2)]
    max_parallel: u32,
    /// Exit after this many seconds with no runs and no client.
    #[arg(long, default_value_t = 900)]
    idle_exit: u64,
    /// What runs the jobs: `local` (processes here), `slurm` (job arrays via sbatch) or `sge`
    /// (Grid Engine array jobs via qsub).
    #[arg(long, value_enum, default_value_t = WardenKind::Local)]
    warden: WardenKind,
    /// SLURM, Grid Engine: seconds between squeue/qstat calls (backs off to 60 while nothing
    /// changes).
    #[arg(long, default_value_t = 5.0)]
    poll_interval: f64,
    /// SLURM, Grid Engine: the most runs in one job array.
    #[arg(long, default_value_t = 1000)]
    array_max: u32,
    /// Where kids report over TCP: `auto` (this host's address; 127.0.0.1 for the local
    /// warden), `off` (kids' event logs are tailed only), an IP address or an interface name.
    #[arg(long, default_value = "auto")]
    listen: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WardenKind {
    Local,
    Slurm,
    Sge,
}

impl AgentArgs {
    fn warden(&self) -> WardenSettings {
        let poll_interval = Duration::from_secs_f64(
            if self.poll_interval.is_finite() && self.poll_interval > 0.0 {
                self.poll_interval
            } else {
                5.0
            },
        );
        let array_max = self.array_max.max(1);
        match self.warden {
            WardenKind::Local => WardenSettings::Local,
            WardenKind::Slurm => WardenSettings::Slurm {
                poll_interval,
                array_max,
            },
            WardenKind::Sge => WardenSettings::Sge {
                poll_interval,
                array_max,
            },
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let bridging = matches!(cli.command, Cmd::Bridge { .. });
    tracing_subscriber::fmt()
        // A log that cannot be written (a full disk under mum.log, a closed stderr) must not
        // turn into a panic: tracing's fallback report would print to that same stderr.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // stderr of a bridge reaches the user through ssh: only what matters.
                if bridging { "warn" } else { "info" }.into()
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // A relative kid path (a remote cluster's `neronet/bin/V/nerokid`, from the home where ssh
    // starts the bridge) is made absolute: job scripts run it from their run directories.
    let kid_or_sibling = |kid: Option<PathBuf>| {
        kid.map(|k| std::path::absolute(&k).unwrap_or(k))
            .unwrap_or_else(|| neronet::cluster::sibling_binary("nerokid"))
    };
    let result = match cli.command {
        Cmd::Serve(agent) => serve(MumOptions {
            warden: agent.warden(),
            workdir: std::path::absolute(&agent.workdir).unwrap_or(agent.workdir),
            kid_binary: kid_or_sibling(agent.kid),
            idle_exit: Duration::from_secs(agent.idle_exit),
            tick: Duration::from_millis(100),
            max_parallel: agent.max_parallel.max(1),
            listen: agent.listen,
        })
        .map_err(|e| neronet::util::error_chain(&e)),
        Cmd::Bridge {
            agent,
            no_start,
            hopped_from,
        } => neronet::cluster::bridge::run(
            &LocalMum {
                warden: agent.warden(),
                workdir: std::path::absolute(&agent.workdir).unwrap_or(agent.workdir),
                mum_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("neromum")),
                kid_binary: kid_or_sibling(agent.kid),
                max_parallel: agent.max_parallel.max(1),
                idle_exit_secs: agent.idle_exit,
                listen: agent.listen,
                project: None,
                transport: Transport::Socket,
            },
            !no_start,
            &neronet::cluster::bridge::Hop {
                argv: std::env::args_os().collect(),
                from: hopped_from,
            },
        )
        .map_err(|e| neronet::util::error_chain(&e)),
    };
    if let Err(e) = result {
        eprintln!("neromum: {e}");
        std::process::exit(1);
    }
}
