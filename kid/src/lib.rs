//! nerokid — wraps exactly one training job on a compute node.
//!
//! Theory of operation: mum writes a run directory holding `kid.json` (the rule, the metric
//! sources, the row's parameters) and a job script that ends in `nerokid run --dir RUN_DIR -- CMD`.
//! The kid starts CMD in its own process group, copies stdout/stderr to `stdout.log`/`stderr.log`,
//! scans every line for metrics, samples CPU and RSS of the group (and the GPUs its processes
//! use, through long-lived `nvidia-smi` helpers: [`gpu`]), evaluates the abort rule once the run
//! is `min_runtime` old, and appends every finding to `events.jsonl` *before* anybody else
//! learns of it. When the job ends badly, the exit record carries the reason found in the tail
//! of its output (a Python traceback's last line, a shell's signal report: [`reason`]) and the
//! last lines of stderr. mum tails that log, so a kid never depends on mum being reachable, and
//! anything can be replayed from the run dir.
//!
//! This crate is also the shared vocabulary of the project: neroman and neromum depend on it for
//! the event types ([`report`]), metric parsing ([`metrics`]) and the expression language
//! ([`expr`]) that selections and rules share. It depends on neither of them.

pub mod expr;
pub mod gpu;
pub mod metrics;
pub mod probe;
pub mod reason;
pub mod report;
pub mod run;
pub mod wire;
