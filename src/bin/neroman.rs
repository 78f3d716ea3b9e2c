//! `neroman`: the researcher's CLI (and, later, the watcher daemon). Parses arguments and calls
//! `neronet::commands`; exit codes are in `neronet::commands::exit`.

use clap::{CommandFactory, Parser, Subcommand};
use neronet::actions::Verb;
use neronet::commands::{self, exit, output};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "neroman",
    version,
    about = "Run and watch training experiments from a spreadsheet"
)]
struct Cli {
    /// Project directory (holds experiments.xlsx and neronet.yaml).
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Start the selected experiments (same as `neroman start SEL`).
    #[arg(long, value_name = "SEL")]
    start: Option<String>,
    /// Start a new run of the selected experiments.
    #[arg(long, value_name = "SEL")]
    restart: Option<String>,
    /// Stop the selected experiments' runs.
    #[arg(long, value_name = "SEL")]
    abort: Option<String>,
    /// With --start/--restart/--abort: wait for the runs to end.
    #[arg(long)]
    wait: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a project: experiments.xlsx from the template and a commented neronet.yaml.
    Init {
        /// Where (default: the --dir directory, else here).
        dir: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Start the selected experiments (e.g. `all`, `3-7,12`, `lr<0.1`).
    Start {
        /// Which experiments (see docs/SELECTIONS.md).
        #[arg(allow_hyphen_values = true)]
        selection: String,
        /// Wait for the runs to end (exit 3 if one did not finish).
        #[arg(long)]
        wait: bool,
    },
    /// Start a new run of the selected experiments (e.g. `crashed,144-149`).
    Restart {
        /// Which experiments (see docs/SELECTIONS.md).
        #[arg(allow_hyphen_values = true)]
        selection: String,
        /// Wait for the runs to end (exit 3 if one did not finish).
        #[arg(long)]
        wait: bool,
    },
    /// Stop runs of the selected experiments (e.g. `runtime>7200&&errorrate>0.40`).
    #[command(alias = "stop")]
    Abort {
        /// Which experiments (see docs/SELECTIONS.md).
        #[arg(allow_hyphen_values = true)]
        selection: String,
        /// Wait until the runs have ended.
        #[arg(long)]
        wait: bool,
    },
    /// Show experiments, states, parameters and last metrics.
    Status {
        /// Only these experiments (see docs/SELECTIONS.md).
        #[arg(allow_hyphen_values = true)]
        selection: Option<String>,
        /// One JSON object per experiment instead of a table.
        #[arg(long)]
        json: bool,
        /// The table's metric columns, in order (`loss,acc`), or `all`; default: those the
        /// selection and rules name, then the most common (config: `status_metrics`).
        #[arg(long, value_name = "NAMES", conflicts_with = "json")]
        metrics: Option<String>,
    },
    /// Print the output of an experiment's latest run.
    Logs {
        /// The experiment's id.
        id: String,
        /// An earlier run (1 is the first; default: the latest).
        #[arg(long = "run", value_name = "N")]
        run: Option<i64>,
        /// Keep printing until the run ends.
        #[arg(short, long)]
        follow: bool,
        /// Standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
    },
    /// One experiment in full: every run with its states and times, command, parameters,
    /// reason, run directory, environment, resource peaks (GPU too) and last metrics.
    Show {
        /// The experiment's id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write results.xlsx now.
    Results,
    /// Show each cluster's agent (neromum): pid, runs, journal, problems. Starts none.
    Agents {
        /// Stop the agents (runs in flight keep going; the next command adopts them).
        #[arg(long)]
        stop: bool,
    },
    /// Check each cluster: SSH (and how long it took), the login node's architecture, the agent,
    /// the warden's commands, what is queued. Starts no agent.
    Clusters {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole loop on this machine with the embedded sample project (in --dir, or a new
    /// temporary directory).
    Demo,
    /// Watch the workbook and act on it: commands typed into status cells, states written back,
    /// results.xlsx kept current (the daemon; see docs/WORKBOOK.md).
    Watch {
        /// Run in the background (log in .neronet/watch.log).
        #[arg(long, conflicts_with = "stop")]
        detach: bool,
        /// Stop the watcher running for this project.
        #[arg(long)]
        stop: bool,
    },
    /// Check the alert settings (`email:`, `chat:`): send a test message through each now.
    Notify {
        /// Send one test message per channel (exit 1 if one failed, 2 if none is configured).
        #[arg(long, required = true)]
        test: bool,
    },
    /// Print a shell completion script (e.g. `neroman completions bash > ~/.local/share/bash-completion/completions/neroman`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Say something on stderr; a closed stderr is no reason to panic.
fn complain(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "neroman: {msg}");
}

fn main() {
    // SIGPIPE stays ignored (Rust's default), so that a dead child (ssh, an agent) is an error
    // where it is written to, never the death of neroman. A closed stdout (`neroman status |
    // head`) ends a command quietly: the commands write through `commands::output`.
    let cli = Cli::parse();
    // The daemon says what it does (info); other commands only what went wrong (warn).
    let daemon = matches!(
        cli.command,
        Some(Cmd::Watch {
            detach: false,
            stop: false
        })
    );
    let level = match (cli.verbose, daemon) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let builder = tracing_subscriber::fmt()
        // A log that cannot be written (a full disk under mum.log, a closed stderr) must not
        // turn into a panic: tracing's fallback report would print to that same stderr.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if daemon {
        // A daemon's log needs its times.
        builder.init();
    } else {
        builder.without_time().init();
    }
    let dir = cli.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let flag_action = [
        (Verb::Start, &cli.start),
        (Verb::Restart, &cli.restart),
        (Verb::Abort, &cli.abort),
    ]
    .into_iter()
    .filter_map(|(v, s)| s.as_ref().map(|s| (v, s.clone())))
    .collect::<Vec<_>>();
    let result = match (cli.command, flag_action.as_slice()) {
        (None, [(verb, sel)]) => commands::act::run(&dir, *verb, sel, cli.wait),
        (None, []) => {
            complain(format_args!(
                "nothing to do; try `neroman demo` or `neroman --help`"
            ));
            std::process::exit(exit::USAGE);
        }
        (
            Some(
                Cmd::Init { .. }
                | Cmd::Status { .. }
                | Cmd::Logs { .. }
                | Cmd::Show { .. }
                | Cmd::Results
                | Cmd::Agents { .. }
                | Cmd::Clusters { .. }
                | Cmd::Demo
                | Cmd::Watch { .. }
                | Cmd::Notify { .. }
                | Cmd::Completions { .. },
            ),
            _,
        ) if cli.wait => {
            complain(format_args!("--wait goes with start, restart and abort"));
            std::process::exit(exit::USAGE);
        }
        (None, _) | (Some(_), [_, ..]) => {
            complain(format_args!(
                "give one action at a time (--start, --restart, --abort, or a subcommand)"
            ));
            std::process::exit(exit::USAGE);
        }
        (Some(cmd), _) => match cmd {
            Cmd::Init { dir: d, force } => {
                commands::init::run(&d.unwrap_or(dir), force).map(|_| exit::OK)
            }
            Cmd::Start { selection, wait } => {
                commands::act::run(&dir, Verb::Start, &selection, wait || cli.wait)
            }
            Cmd::Restart { selection, wait } => {
                commands::act::run(&dir, Verb::Restart, &selection, wait || cli.wait)
            }
            Cmd::Abort { selection, wait } => {
                commands::act::run(&dir, Verb::Abort, &selection, wait || cli.wait)
            }
            Cmd::Status {
                selection,
                json,
                metrics,
            } => commands::status::run(&dir, selection.as_deref(), json, metrics.as_deref()),
            Cmd::Logs {
                id,
                run,
                follow,
                stderr,
            } => commands::logs::run(&dir, &id, run, follow, stderr),
            Cmd::Completions { shell } => {
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "neroman", &mut script);
                output::write_bytes(&mut std::io::stdout().lock(), &script)
                    .map(|_| exit::OK)
                    .map_err(anyhow::Error::from)
            }
            Cmd::Show { id, json } => commands::show::run(&dir, &id, json),
            Cmd::Results => commands::results::run(&dir),
            Cmd::Watch { detach: true, .. } => commands::watch::detach(&dir, cli.verbose),
            Cmd::Watch { stop: true, .. } => commands::watch::stop(&dir),
            Cmd::Watch { .. } => commands::watch::run(&dir),
            Cmd::Agents { stop } => commands::agents::run(&dir, stop),
            Cmd::Clusters { json } => commands::clusters::run(&dir, json),
            Cmd::Notify { test: _ } => commands::notify::test(&dir),
            // The demo makes a fresh project: in --dir when given, else in a new temporary directory.
            Cmd::Demo => commands::demo::run(cli.dir.as_deref()),
        },
    };
    // Whatever is still buffered must reach stdout now: a reader gone meanwhile is no failure.
    let flushed = std::io::stdout().flush();
    match result {
        Ok(code) => {
            match flushed {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    complain(format_args!("write to standard output: {e}"));
                    std::process::exit(exit::ERROR);
                }
                _ => {}
            }
            std::process::exit(code)
        }
        Err(e) if output::is_closed_stdout(&e) => std::process::exit(exit::OK),
        Err(e) => {
            complain(format_args!("{e:#}"));
            std::process::exit(exit::ERROR);
        }
    }
}
