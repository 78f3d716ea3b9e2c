//! Neronet — run and watch training experiments from a spreadsheet.
//!
//! Theory of operation. The researcher's project directory holds `experiments.xlsx` (one row per
//! experiment), `neronet.yaml`, `results.xlsx` and the state store `.neronet/state.db`.
//! `neroman` reads the workbook ([`sheet`]), checks each row against the config ([`project`]),
//! and hands runs to the cluster's agent, `neromum` ([`cluster`]), over a typed, versioned
//! protocol. mum writes a run directory per run and starts `nerokid` (the `kid/` crate) around
//! the job; the kid appends every finding to the run's event log, mum tails and journals those
//! logs, and neroman syncs the journal into the store ([`store`], transitions in [`state`]) and
//! renders the results workbook and the status table ([`view`]). Each hop can be replayed from
//! the one before it, so a crash anywhere loses nothing.
//!
//! `sheet` and `cluster` never use each other; the core modules (`project`, `actions`,
//! `select`, `view`) join them.

pub mod actions;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod notify;
pub mod project;
pub mod select;
pub mod sheet;
pub mod state;
pub mod store;
pub mod util;
pub mod view;
