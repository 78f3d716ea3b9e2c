//! The neroman core: a project directory (config, workbook, state store) joined with its clusters.
//! Reads and validates the workbook rows against the config (the checks that need both), renders
//! each row's command with shell-quoted values, and syncs the store from each cluster's mum.

use crate::cluster::client::{ClientError, LocalMum, MumClient, Transport};
use crate::cluster::mum::warden::WardenSettings;
use crate::cluster::protocol::RunSpec;
use crate::cluster::sibling_binary;
use crate::config::{Config, ConfigError};
use crate::sheet::read::{read_experiments, ExperimentSheet, Problem, SheetError, SheetRow};
use crate::state::RunState;
use crate::store::{tx, Store, StoreError};
use nerokid::report::{now, KidEvent, KidSpec};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const STATE_DIR: &str = ".neronet";

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sheet(#[from] SheetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cluster {cluster}")]
    Cluster {
        cluster: String,
        #[source]
        err: ClientError,
    },
    #[error("{0}")]
    Selection(String),
    #[error(transparent)]
    Results(#[from] crate::sheet::results::ResultsError),
    #[error("{dir} is not a Neronet project (no {what}); run `neroman init` there first")]
    NotAProject { dir: PathBuf, what: String },
    #[error("{dir}: cannot make the project's id")]
    ProjectId {
        dir: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

pub struct Project {
    pub dir: PathBuf,
    pub config: Config,
    pub store: Store,
    /// Stable id sent to agents (see [`project_id`]).
    id: String,
}

/// A workbook row with everything the core decided about it.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub row: SheetRow,
    pub cluster: String,
    /// The rendered shell command, when the row is valid.
    pub command: Option<String>,
    pub abort_when: Option<String>,
    /// Reasons this row must not be acted on (sheet problems and config checks).
    pub problems: Vec<Problem>,
    pub origin: Origin,
}

/// Where an experiment of the list comes from, and so whether its id's runs show with it.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The one workbook row with its id.
    Row,
    /// A workbook row whose id other rows share: invalid (either could be the one meant), and
    /// no run shows with it.
    SharedId,
    /// No row of its own: the latest run of an id whose row left the workbook, or whose id is
    /// now on several rows (`why` says which). Listed while the run is in flight and for
    /// [`DETACHED_LISTED_FOR`] after it ended; it can be aborted, not started.
    Detached { why: String },
}

/// How long a detached experiment stays listed after its run ended, so its end is seen.
pub const DETACHED_LISTED_FOR: f64 = 86_400.0;

impl Experiment {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// Why this experiment has no row of its own, if so.
    pub fn detached(&self) -> Option<&str> {
        match &self.origin {
            Origin::Detached { why } => Some(why),
            _ => None,
        }
    }

    /// Whether the runs of its id show with it (not on a row whose id other rows share).
    pub fn shows_runs(&self) -> bool {
        self.origin != Origin::SharedId
    }
}

pub struct Experiments {
    pub sheet: ExperimentSheet,
    pub list: Vec<Experiment>,
    /// Things about the sheet as a whole worth a warning (nothing is refused for them).
    pub warnings: Vec<String>,
    /// Every metric name the project's runs have printed (rules resolve against them).
    pub known_metrics: Vec<String>,
}

impl Experiments {
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.list.iter().flat_map(|e| e.problems.iter())
    }
    pub fn get(&self, id: &str) -> Option<&Experiment> {
        let key = crate::sheet::read::canonical_id(id);
        self.list
            .iter()
            .find(|e| crate::sheet::read::canonical_id(&e.row.id) == key)
    }
}

/// What one sync learned: state changes in order (run uid, experiment id, new state).
/// One line of `neroman agents`: what the agent said, and whether all is well.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    pub ok: bool,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct SyncReport {
    pub changes: Vec<(String, String, RunState)>,
    pub metric_values: usize,
    pub restarted_mum: Vec<String>,
    /// Clusters that could not be reached: (cluster, why). What the store knew still stands.
    pub unreachable: Vec<(String, String)>,
    /// Agents that answered but cannot do their work (a full disk): (cluster, why).
    pub agent_problems: Vec<(String, String)>,
}

impl Project {
    /// Open the project in `dir` (config and state store).
    pub fn open(dir: &Path) -> Result<Project, CoreError> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let config = Config::load(&dir)?;
        let workbook = config.workbook_path(&dir);
        // A project that has run things keeps its state even while its workbook is away
        // (moved, being replaced): reading it is what fails then, with a message that says so.
        if !workbook.exists() && !dir.join(STATE_DIR).join("state.db").exists() {
            return Err(CoreError::NotAProject {
                dir: dir.clone(),
                what: workbook.display().to_string(),
            });
        }
        let store = Store::open(&dir.join(STATE_DIR).join("state.db"))?;
        let (id, copied_from) = project_id(&dir).map_err(|err| CoreError::ProjectId {
            dir: dir.clone(),
            err,
        })?;
        let mut project = Project {
            dir,
            config,
            store,
            id,
        };
        if let Some(original) = copied_from {
            // Runs in flight were copied as records only: their agent follows them for the
            // original. Say so, so they can be restarted here.
            let why = format!(
                "this project was copied from {} while the run was in flight; it goes on there (restart it to run it here)",
                original.display()
            );
            let tx = project.store.transaction()?;
            tx::lose_runs_in_flight(&tx, &why, now())?;
            tx.commit().map_err(StoreError::from)?;
        }
        Ok(project)
    }

    pub fn workbook_path(&self) -> PathBuf {
        self.config.workbook_path(&self.dir)
    }

    pub fn results_path(&self) -> PathBuf {
        let wb = self.workbook_path();
        wb.parent().unwrap_or(&self.dir).join("results.xlsx")
    }

    /// What the state store alone knows, for when the workbook cannot be read (`why`): the
    /// latest run of every experiment that is in flight or ended within
    /// [`DETACHED_LISTED_FOR`], each listed apart (detached), so it can be seen, followed and
    /// aborted — never started.
    pub fn experiments_from_store(&self, why: &str) -> Result<Experiments, CoreError> {
        let t = now();
        let mut list: Vec<Experiment> = self
            .store
            .latest_runs()?
            .into_values()
            .filter(|r| !r.state.is_terminal() || r.state.at() >= t - DETACHED_LISTED_FOR)
            .map(|r| detached_experiment(r, format!("the workbook cannot be read: {why}")))
            .collect();
        list.sort_by(|a, b| id_order(&a.row.id, &b.row.id));
        Ok(Experiments {
            sheet: ExperimentSheet {
                path: self.workbook_path(),
                sheet: String::new(),
                params: Vec::new(),
                has_command_column: false,
                rows: Vec::new(),
                status_col: 0,
                tool_columns: BTreeMap::new(),
                next_col: 0,
            },
            list,
            warnings: Vec::new(),
            known_metrics: self.store.metric_names()?,
        })
    }

    /// Read the workbook, check every row, and note row changes in the store (for `tmod`).
    pub fn read_experiments(&mut self) -> Result<Experiments, CoreError> {
        let sheet = read_experiments(&self.workbook_path())?;
        self.check_experiments(sheet, now())
    }

    /// [`Project::read_experiments`] of workbook content the watcher read at `at` (unix
    /// seconds): rows that changed get `at` as their change time (`tmod`).
    pub fn read_experiments_bytes(
        &mut self,
        bytes: &[u8],
        at: f64,
    ) -> Result<Experiments, CoreError> {
        let sheet = crate::sheet::read::read_experiments_bytes(&self.workbook_path(), bytes)?;
        self.check_experiments(sheet, at)
    }

    fn check_experiments(
        &mut self,
        mut sheet: ExperimentSheet,
        at: f64,
    ) -> Result<Experiments, CoreError> {
        let rows = std::mem::take(&mut sheet.rows);
        let mut rules = HashMap::new();
        let list: Vec<Experiment> = rows
            .into_iter()
            .map(|row| self.check_row(&sheet, row, &mut rules))
            .collect();
        let noted: Vec<(String, u32, u64)> = list
            .iter()
            .filter(|e| !e.row.id.is_empty())
            .map(|e| (e.row.id.clone(), e.row.row, row_fingerprint(&e.row)))
            .collect();
        self.store.note_rows(&noted, at)?;
        let mut warnings = column_warnings(&sheet);
        let known_metrics = self.store.metric_names()?;
        let mut list = list;
        warnings.extend(check_rule_fields(&mut list, &sheet.params, &known_metrics));
        self.detach_runs(&mut list, now())?;
        Ok(Experiments {
            sheet,
            list,
            warnings,
            known_metrics,
        })
    }

    /// Mark rows whose id other rows share, and list apart (at the end, in id order) the latest
    /// runs that no single row owns: a row deleted, or its id now on several rows. Without this
    /// a run in flight would vanish from every list and could not be aborted, or show on each
    /// row of a duplicated id as if each had run.
    fn detach_runs(&self, list: &mut Vec<Experiment>, t: f64) -> Result<(), CoreError> {
        let mut cells: HashMap<String, Vec<String>> = HashMap::new();
        for e in list.iter().filter(|e| !e.row.id.is_empty()) {
            let cell = e.row.id_cell.rsplit('!').next().unwrap_or_default();
            cells
                .entry(crate::sheet::read::canonical_id(&e.row.id))
                .or_default()
                .push(cell.to_string());
        }
        for e in list.iter_mut() {
            let key = crate::sheet::read::canonical_id(&e.row.id);
            if cells.get(&key).is_some_and(|c| c.len() > 1) {
                e.origin = Origin::SharedId;
            }
        }
        let mut detached: Vec<Experiment> = Vec::new();
        for run in self.store.latest_runs()?.into_values() {
            let why = match cells.get(&crate::sheet::read::canonical_id(&run.exp_id)) {
                Some(c) if c.len() == 1 => continue,
                Some(c) => format!("its id is now on {} rows ({})", c.len(), c.join(", ")),
                None => "its row is no longer in the workbook".to_string(),
            };
            if run.state.is_terminal() && run.state.at() < t - DETACHED_LISTED_FOR {
                continue;
            }
            detached.push(detached_experiment(run, why));
        }
        detached.sort_by(|a, b| id_order(&a.row.id, &b.row.id));
        list.extend(detached);
        Ok(())
    }

    /// `rules` caches parse results: a sweep repeats the same rule on thousands of rows.
    fn check_row(
        &self,
        sheet: &ExperimentSheet,
        row: SheetRow,
        rules: &mut HashMap<String, Option<String>>,
    ) -> Experiment {
        let mut problems = row.invalid.clone();
        let id = (!row.id.is_empty()).then(|| row.id.clone());
        let problem = |cell: &str, message: String| Problem {
            cell: if cell.is_empty() {
                row.id_cell.clone()
            } else {
                cell.to_string()
            },
            id: id.clone(),
            message,
        };
        let cluster = row.cluster.clone().unwrap_or_else(|| "local".into());
        // A remote cluster in the user's defaults must not stop projects that never use it.
        if self
            .config
            .clusters
            .get(&cluster)
            .is_some_and(|c| !c.is_supported())
        {
            problems.push(problem(
                &row.cluster_cell,
                format!("cluster {cluster:?}: this version cannot run jobs there"),
            ));
        }
        if let Some(c) = self.config.clusters.get(&cluster) {
            let check: Option<(&str, OptionCheck)> = match c.warden() {
                crate::config::Warden::Slurm => {
                    Some(("slurm.", crate::cluster::mum::slurm::check_option))
                }
                crate::config::Warden::Sge => Some(("sge.", sge_cell_check)),
                crate::config::Warden::Local => None,
            };
            if let Some((prefix, check)) = check {
                for (column, value) in &row.warden_options {
                    let Some(key) = column.strip_prefix(prefix) else {
                        continue;
                    };
                    if let Err(m) = check(key, value) {
                        let cell = row
                            .warden_option_cells
                            .get(column)
                            .map_or("", String::as_str);
                        problems.push(problem(cell, m));
                    }
                }
            }
        }
        if !self.config.clusters.contains_key(&cluster) {
            let known: Vec<&str> = self.config.clusters.keys().map(String::as_str).collect();
            problems.push(problem(
                &row.cluster_cell,
                format!("unknown cluster {cluster:?} (known: {})", known.join(", ")),
            ));
        }
        let abort_when = row
            .abort_when
            .clone()
            .or_else(|| self.config.abort_when.clone());
        if let Some(rule) = &row.abort_when {
            let error = rules
                .entry(rule.clone())
                .or_insert_with(|| nerokid::expr::parse_rule(rule).err().map(|e| e.to_string()));
            if let Some(e) = error {
                problems.push(problem(
                    &row.abort_when_cell,
                    format!("bad abort_when {rule:?}: {e}"),
                ));
            }
        }
        let template = row.command.clone().or_else(|| self.config.command.clone());
        let command = match &template {
            None => {
                problems.push(problem(
                    &row.command_cell,
                    "no command: the command cell is empty and neronet.yaml has no `command:`"
                        .into(),
                ));
                None
            }
            Some(t) => match render_command(t, &row, &sheet.params) {
                Ok(c) => Some(c),
                Err(m) => {
                    let cell = if row.command.is_some() {
                        row.command_cell.clone()
                    } else {
                        String::new()
                    };
                    let m = if row.command.is_some() {
                        m
                    } else {
                        format!("{m} (in neronet.yaml `command:`)")
                    };
                    problems.push(problem(&cell, m));
                    None
                }
            },
        };
        Experiment {
            row,
            cluster,
            command,
            abort_when,
            problems,
            origin: Origin::Row,
        }
    }

    fn local_mum(&self, cluster: &str) -> LocalMum {
        self.mum_for(cluster, true)
    }

    /// How to reach the cluster's agent; with `start: false` a bridge does not start one.
    pub fn mum_for(&self, cluster: &str, start: bool) -> LocalMum {
        let c = self
            .config
            .clusters
            .get(cluster)
            .cloned()
            .unwrap_or_default();
        let poll_interval = std::time::Duration::from_secs_f64(c.poll_interval_secs());
        let array_max = c.array_max.unwrap_or(1000);
        let warden = match c.warden() {
            crate::config::Warden::Local => WardenSettings::Local,
            crate::config::Warden::Slurm => WardenSettings::Slurm {
                poll_interval,
                array_max,
            },
            crate::config::Warden::Sge => WardenSettings::Sge {
                poll_interval,
                array_max,
            },
        };
        // SLURM and Grid Engine queue runs themselves: mum hands them every run (max_parallel,
        // if set, throttles each job array).
        let queues_itself = warden != WardenSettings::Local;
        let max_parallel = c.max_parallel.unwrap_or_else(|| {
            if queues_itself {
                u32::MAX
            } else {
                default_parallel()
            }
        });
        let listen = c.listen.clone().unwrap_or_else(|| "auto".into());
        let idle_exit_secs = std::env::var("NERONET_MUM_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(900);
        if let Some(host) = &c.ssh {
            // The agent lives on the login node: its workdir and the binaries uploaded there
            // are paths relative to the remote home (the bridge runs there).
            let layout =
                crate::cluster::ssh::RemoteLayout::new(c.workdir.as_deref().unwrap_or("neronet"));
            return LocalMum {
                workdir: PathBuf::from(&layout.workdir),
                mum_binary: PathBuf::from(layout.binary("neromum")),
                kid_binary: PathBuf::from(layout.binary("nerokid")),
                max_parallel,
                idle_exit_secs,
                project: Some(self.project_id()),
                listen,
                transport: Transport::Ssh {
                    target: crate::cluster::ssh::SshTarget {
                        host: host.clone(),
                        config_file: c.ssh_config.as_deref().map(|p| self.local_path(p)),
                    },
                    start,
                },
                warden,
            };
        }
        let workdir = match &c.workdir {
            Some(w) => self.dir.join(w),
            None => self.dir.join(STATE_DIR).join(format!("mum-{cluster}")),
        };
        let mum_binary = sibling_binary("neromum");
        let kid_binary = sibling_binary("nerokid");
        let mut m = LocalMum {
            workdir,
            mum_binary,
            kid_binary,
            max_parallel,
            idle_exit_secs,
            project: Some(self.project_id()),
            transport: Transport::Socket,
            warden,
            listen,
        };
        // The remote transport, exercised on this machine: a bridge process whose stdin/stdout
        // carry the protocol, started through `sh -c` exactly as `ssh host ...` would run it.
        if std::env::var("NERONET_TRANSPORT").as_deref() == Ok("bridge") {
            let mut args = vec![
                "-c".into(),
                "exec \"$0\" bridge \"$@\"".into(),
                m.mum_binary.display().to_string(),
            ];
            args.extend(m.agent_args());
            if !start {
                args.push("--no-start".into());
            }
            m.transport = Transport::Bridge {
                program: PathBuf::from("sh"),
                args,
            };
        }
        m
    }

    /// A path from neronet.yaml on this machine: `~/` is the home directory, a relative path is
    /// relative to the project directory.
    fn local_path(&self, p: &Path) -> PathBuf {
        if let Ok(rest) = p.strip_prefix("~") {
            if let Some(home) = std::env::var_os("HOME") {
                return PathBuf::from(home).join(rest);
            }
        }
        self.dir.join(p)
    }

    /// The project's stable id (see [`project_id`]).
    pub fn project_id(&self) -> String {
        self.id.clone()
    }

    /// Stop the agents of this project's clusters (runs in flight keep going; the next command
    /// starts an agent again, which adopts them).
    pub fn stop_agents(&self) -> Vec<(String, AgentStatus)> {
        self.each_agent(|c| {
            let pid = c.hello.pid;
            let (q, r) = (c.hello.queued, c.hello.running);
            c.shutdown()?;
            let going = if r == 1 {
                "run in flight keeps"
            } else {
                "runs in flight keep"
            };
            Ok(format!(
                "stopped neromum pid {pid} ({r} {going} going, {q} queued)"
            ))
        })
    }

    /// Say what each cluster's agent is doing, without starting one.
    pub fn agents(&self) -> Vec<(String, AgentStatus)> {
        self.each_agent(|c| {
            let h = &c.hello;
            let mut line = format!(
                "neromum {} pid {}, {} running, {} queued, journal at {} ({})",
                h.mum_version, h.pid, h.running, h.queued, h.last_seq, h.workdir
            );
            if let Some(why) = &h.health {
                line.push_str(&format!("; PROBLEM: {why}"));
                return Err(ClientError::Refused(line));
            }
            Ok(line)
        })
    }

    fn each_agent(
        &self,
        what: impl Fn(MumClient) -> Result<String, ClientError>,
    ) -> Vec<(String, AgentStatus)> {
        let mut out = Vec::new();
        for cluster in self.config.clusters.keys() {
            let m = self.mum_for(cluster, false);
            let sock = crate::cluster::socket_path(&m.workdir);
            let status = if m.transport == Transport::Socket
                && std::os::unix::net::UnixStream::connect(&sock).is_err()
            {
                AgentStatus {
                    ok: true,
                    text: format!("no agent running ({})", m.workdir.display()),
                }
            } else {
                match MumClient::connect_or_start(&m).and_then(&what) {
                    Ok(text) => AgentStatus { ok: true, text },
                    // A bridge told not to start one found none.
                    Err(e)
                        if crate::util::error_chain(&e)
                            .contains(crate::cluster::bridge::NO_AGENT) =>
                    {
                        AgentStatus {
                            ok: true,
                            text: format!("no agent running ({})", m.workdir.display()),
                        }
                    }
                    Err(ClientError::Refused(text)) => AgentStatus { ok: false, text },
                    Err(e) => AgentStatus {
                        ok: false,
                        text: crate::util::error_chain(&e),
                    },
                }
            };
            out.push((cluster.clone(), status));
        }
        out
    }

    pub fn connect(&self, cluster: &str) -> Result<MumClient, CoreError> {
        MumClient::connect_or_start(&self.local_mum(cluster)).map_err(|err| CoreError::Cluster {
            cluster: cluster.into(),
            err,
        })
    }

    /// The clusters with runs in flight, each once.
    pub fn active_clusters(&self) -> Result<Vec<String>, CoreError> {
        let mut clusters: Vec<String> = self
            .store
            .active_runs()?
            .into_iter()
            .map(|r| r.cluster)
            .collect();
        clusters.sort();
        clusters.dedup();
        Ok(clusters)
    }

    /// Bring the store up to date from every cluster that has runs in flight.
    pub fn sync(&mut self) -> Result<SyncReport, CoreError> {
        self.sync_held(&mut BTreeMap::new(), std::time::Duration::ZERO)
    }

    /// Like [`Project::sync`], keeping one connection per cluster in `clients` across calls and
    /// long-polling: with one cluster, waits up to `wait` for news (no polling loop).
    pub fn sync_held(
        &mut self,
        clients: &mut BTreeMap<String, MumClient>,
        wait: std::time::Duration,
    ) -> Result<SyncReport, CoreError> {
        let clusters = self.active_clusters()?;
        let wait = if clusters.len() == 1 {
            wait
        } else {
            std::time::Duration::ZERO
        };
        let mut report = SyncReport::default();
        for cluster in clusters {
            if !clients.contains_key(&cluster) {
                match self.connect(&cluster) {
                    Ok(c) => {
                        if c.started {
                            report.restarted_mum.push(cluster.clone());
                        }
                        clients.insert(cluster.clone(), c);
                    }
                    Err(e) => {
                        report
                            .unreachable
                            .push((cluster.clone(), crate::util::error_chain(&e)));
                        continue;
                    }
                }
            }
            let client = clients.get_mut(&cluster).expect("inserted above");
            if let Err(e) = self.sync_with(&cluster, client, &mut report, wait) {
                // A dropped connection: the next round reconnects (starting mum if needed).
                clients.remove(&cluster);
                match e {
                    CoreError::Cluster { err, .. } => report
                        .unreachable
                        .push((cluster.clone(), crate::util::error_chain(&err))),
                    other => return Err(other),
                }
            }
        }
        Ok(report)
    }

    /// Apply everything mum journaled since our last sync point, batch by batch.
    pub fn sync_with(
        &mut self,
        cluster: &str,
        client: &mut MumClient,
        report: &mut SyncReport,
        wait: std::time::Duration,
    ) -> Result<(), CoreError> {
        let cerr = |err| CoreError::Cluster {
            cluster: cluster.into(),
            err,
        };
        let epoch = client.hello.epoch.clone();
        let mut since = match self.store.sync_point(cluster)? {
            Some((e, seq)) if e == epoch => seq,
            _ => 0,
        };
        let mut wait = wait;
        loop {
            let batch = client.sync(since, Some(since), wait).map_err(cerr)?;
            wait = std::time::Duration::ZERO;
            if let Some(why) = &batch.health {
                if !report.agent_problems.iter().any(|(c, _)| c == cluster) {
                    report
                        .agent_problems
                        .push((cluster.to_string(), why.clone()));
                }
            }
            // The agent's journal is shorter than what we stored from it (restored from a
            // backup, cut by hand): what it writes next reuses numbers we have seen. Take those
            // from now on instead of skipping them. (Compared with the reply's own newest
            // number: another neroman may have stored more since our hello.)
            if since > batch.last_seq {
                tracing::warn!(
                    "cluster {cluster}: the agent's journal ends at {} but {since} entries were stored from it; syncing from {}",
                    batch.last_seq,
                    batch.last_seq
                );
                since = apply_entries(
                    &mut self.store,
                    cluster,
                    &epoch,
                    &[],
                    report,
                    Some(batch.last_seq),
                    0,
                    None,
                )?;
                continue;
            }
            // Another neroman may have applied part of this already: the store says how far.
            let project = self.project_id();
            since = apply_entries(
                &mut self.store,
                cluster,
                &epoch,
                &batch.entries,
                report,
                None,
                batch.through,
                Some(&project),
            )?;
            if !batch.more {
                break;
            }
        }
        // Each request acknowledges what was stored before it (mum may compact up to there).
        // Runs we recorded but mum never confirmed (we died between the two): send them again.
        let stale = self.store.unconfirmed_specs(cluster, now() - 5.0)?;
        if !stale.is_empty() {
            let specs: Vec<RunSpec> = stale
                .iter()
                .filter_map(|s| serde_json::from_str(s).ok())
                .collect();
            match client.submit(specs) {
                // Taken now: whatever kept them back (a full disk) is over.
                Ok(a) if a.runs.len() == stale.len() => {
                    report.agent_problems.retain(|(c, _)| c != cluster)
                }
                Ok(_) => {}
                // The agent cannot take them yet (its disk is full): they stay submitted and are
                // sent again next time; the command goes on with what the store knows.
                Err(ClientError::Refused(why)) => {
                    if !report.agent_problems.iter().any(|(c, _)| c == cluster) {
                        report.agent_problems.push((cluster.to_string(), why));
                    }
                }
                Err(e) => return Err(cerr(e)),
            }
        }
        Ok(())
    }

    /// Build the run spec mum needs for one experiment's next run.
    /// What mum needs to start a run of `exp`; `known_metrics` are the metric names the
    /// project's runs printed (the kid resolves the rule's names against them too).
    pub fn run_spec(
        &self,
        exp: &Experiment,
        uid: &str,
        known_metrics: &[String],
    ) -> Option<RunSpec> {
        let command = exp.command.clone()?;
        let cluster = self.config.clusters.get(&exp.cluster)?;
        let params: BTreeMap<String, String> = exp
            .row
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.text.clone()))
            .collect();
        let mut env: Vec<(String, String)> = vec![("NERO_ID".into(), exp.row.id.clone())];
        for (k, v) in &params {
            let var = format!("NERO_PARAM_{}", env_name(k));
            // Columns that collide keep one value (a warning names both when the sheet is read).
            if !env.iter().any(|(name, _)| *name == var) {
                env.push((var, v.clone()));
            }
        }
        Some(RunSpec {
            run: uid.to_string(),
            command,
            // On this machine jobs start in the project directory; on a login node reached by
            // ssh that directory does not exist: they start in their run directory there
            // (a `setup:` line can `cd` to the code).
            cwd: cluster
                .ssh
                .is_none()
                .then(|| self.dir.display().to_string()),
            env,
            setup: cluster.setup.clone().unwrap_or_default(),
            warden_opts: warden_options(cluster, &exp.row),
            kid: KidSpec {
                id: exp.row.id.clone(),
                params,
                abort_when: exp.abort_when.clone(),
                known_metrics: rule_metrics(exp.abort_when.as_deref(), known_metrics),
                metrics: self.config.metrics_spec(),
                grace_secs: cluster.grace_secs(),
                sample_secs: 5.0,
                min_runtime_secs: self.config.min_runtime_secs(),
                gpu: true,
            },
        })
    }
}

/// Checks a warden option cell (`slurm.<key>`, `sge.<key>`): key, value.
type OptionCheck = fn(&str, &str) -> Result<(), String>;

/// A `sge.<key>` cell as it becomes a qsub option (`true`/`false` are `y`/`n`).
fn sge_cell_check(key: &str, value: &str) -> Result<(), String> {
    crate::cluster::mum::sge::check_option(key, &sge_cell_value(value))
}

fn sge_cell_value(value: &str) -> String {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => "y".into(),
        "false" => "n".into(),
        _ => value.to_string(),
    }
}

/// A Grid Engine cluster's options for a row: the cluster's `sge:` map, overlaid (key by key,
/// in place) by the row's `sge.<key>` cells (an empty cell is no cell; the row's `l` and
/// `l.<resource>` cells go last, so their resources win in the one `-l`); `true`/`false` are
/// qsub's `y`/`n`; `requeue: true` adds `-r y` (rerunnable) unless `r` is given.
fn sge_options(
    cluster: &crate::config::ClusterConfig,
    row: &crate::sheet::read::SheetRow,
) -> Vec<(String, String)> {
    let mut opts: Vec<(String, String)> = cluster
        .sge
        .iter()
        .map(|(k, v)| (k.clone(), v.option_text()))
        .collect();
    for (column, value) in &row.warden_options {
        let Some(key) = column.strip_prefix("sge.") else {
            continue;
        };
        let value = sge_cell_value(value);
        match opts.iter_mut().find(|(k, _)| k == key) {
            // Resources go after the cluster's: the warden joins them into one `-l`, a later
            // resource replacing an earlier one of the same name, so the row's win.
            Some(_) if key == "l" || key.starts_with("l.") => {
                opts.retain(|(k, _)| k != key);
                opts.push((key.to_string(), value));
            }
            Some(slot) => slot.1 = value,
            None => opts.push((key.to_string(), value)),
        }
    }
    if cluster.requeue == Some(true) && !opts.iter().any(|(k, _)| k == "r") {
        opts.push(("r".into(), "y".into()));
    }
    opts
}

/// A SLURM cluster's options for a row: the cluster's `slurm:` map, overlaid (key by key, in
/// place) by the row's `slurm.<key>` cells, then `--requeue` and a USR1 warning `grace`
/// seconds before the end when the cluster says `requeue: true`. `true` is a bare flag
/// (`exclusive: true` → `--exclusive`), `false` leaves the option out. A Grid Engine
/// cluster's come from [`sge_options`]; none for the local warden.
fn warden_options(
    cluster: &crate::config::ClusterConfig,
    row: &crate::sheet::read::SheetRow,
) -> Vec<(String, String)> {
    use crate::config::Scalar;
    match cluster.warden() {
        crate::config::Warden::Slurm => {}
        crate::config::Warden::Sge => return sge_options(cluster, row),
        crate::config::Warden::Local => return Vec::new(),
    }
    let mut opts: Vec<(String, Option<String>)> = cluster
        .slurm
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::Int(n) => Some(n.to_string()),
                Scalar::Float(f) => Some(f.to_string()),
                Scalar::Bool(true) => Some(String::new()),
                Scalar::Bool(false) => None,
                Scalar::Text(t) => Some(t.clone()),
            };
            (k.clone(), v)
        })
        .collect();
    fn set(opts: &mut Vec<(String, Option<String>)>, key: &str, value: Option<String>) {
        match opts.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => opts.push((key.to_string(), value)),
        }
    }
    for (column, value) in &row.warden_options {
        if let Some(key) = column.strip_prefix("slurm.") {
            let value = match value.trim().to_ascii_lowercase().as_str() {
                "true" => Some(String::new()),
                "false" => None,
                _ => Some(value.clone()),
            };
            set(&mut opts, key, value);
        }
    }
    if cluster.requeue == Some(true) {
        set(&mut opts, "requeue", Some(String::new()));
        if !opts.iter().any(|(k, _)| k == "signal") {
            let grace = cluster.grace_secs().ceil().max(1.0) as u64;
            set(&mut opts, "signal", Some(format!("B:USR1@{grace}")));
        }
    }
    opts.into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// The known metric names that a field of `rule` matches ignoring case (few: kid.json stays
/// small whatever the project printed).
fn rule_metrics(rule: Option<&str>, known: &[String]) -> Vec<String> {
    let Some(expr) = rule.and_then(|r| nerokid::expr::parse(r).ok()) else {
        return Vec::new();
    };
    let fields: Vec<String> = expr
        .comparisons()
        .iter()
        .map(|c| c.field.to_ascii_lowercase())
        .collect();
    known
        .iter()
        .filter(|k| fields.contains(&k.to_ascii_lowercase()))
        .cloned()
        .collect()
}

/// The project's stable id, created on first use: `.neronet/project-id` holds it with the
/// directory it was made for. A moved project keeps its id (its agents still know its runs by
/// it); a copied one (the original still there with the same id) gets a new one — returned with
/// the original's directory — so two copies sharing an agent workdir never take each other's
/// runs.
fn project_id(dir: &Path) -> std::io::Result<(String, Option<PathBuf>)> {
    let path = dir.join(STATE_DIR).join("project-id");
    // Commands started at once in a fresh copy must agree on its new id: one at a time here.
    let _ = std::fs::create_dir_all(dir.join(STATE_DIR));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(STATE_DIR).join("project-id.lock"));
    if let Ok(f) = &lock {
        // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
        unsafe {
            libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(f), libc::LOCK_EX);
        }
    }
    let here = dir.display().to_string();
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (id, made_for) = match text.trim().split_once(' ') {
        Some((id, dir)) => (id.to_string(), Some(dir.to_string())),
        None => (text.trim().to_string(), None),
    };
    // A new id that cannot be written would be a different id for the next command, which
    // then no longer knows the runs started under this one: that is an error. Re-noting where
    // a kept id lives is not (it is noted again next time).
    let remember = |id: &str| crate::util::write_atomic(&path, format!("{id} {here}\n").as_bytes());
    if !id.is_empty() {
        match made_for {
            Some(d) if d == here => return Ok((id, None)),
            Some(d) => {
                let original = Path::new(&d).join(STATE_DIR).join("project-id");
                let copied = std::fs::read_to_string(original)
                    .is_ok_and(|t| t.split_whitespace().next() == Some(id.as_str()));
                if !copied {
                    // Moved: keep the id, remember the new place.
                    let _ = remember(&id);
                    return Ok((id, None));
                }
                tracing::info!("{here} is a copy of {d}: it gets a project id of its own");
                let fresh = crate::util::random_hex(16)?;
                remember(&fresh)?;
                return Ok((fresh, Some(PathBuf::from(d))));
            }
            None => {
                // Written by an earlier version: remember where it belongs from now on.
                let _ = remember(&id);
                return Ok((id, None));
            }
        }
    }
    let id = crate::util::random_hex(16)?;
    remember(&id)?;
    Ok((id, None))
}

/// Check the field names of each row's rule against the parameters and the metrics the
/// project's runs printed. A name that matches several of them only ignoring case (`LOSS` with
/// metrics `Loss` and `loss`) makes the row invalid: the rule would have to guess, so write one
/// spelling exactly. A name nothing has shown yet is a warning (its comparison stays unknown,
/// firing nothing, until the job prints it). Returns the warnings.
fn check_rule_fields(
    list: &mut [Experiment],
    params: &[String],
    metrics: &[String],
) -> Vec<String> {
    use crate::select::FieldCheck;
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let metric_names: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let mut warnings = Vec::new();
    // Each distinct rule once (a sweep repeats one rule on thousands of rows).
    let mut verdicts: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
    for e in list.iter_mut() {
        let Some(rule) = e.abort_when.clone() else {
            continue;
        };
        let from_row = e.row.abort_when.is_some();
        let (errors, unknown) = verdicts.entry(rule.clone()).or_insert_with(|| {
            let (mut errors, mut unknown) = (Vec::new(), Vec::new());
            if let Ok(expr) = nerokid::expr::parse(&rule) {
                for c in expr.comparisons() {
                    if crate::select::RULE_FIELDS
                        .iter()
                        .any(|b| b.eq_ignore_ascii_case(&c.field))
                    {
                        continue;
                    }
                    match crate::select::check_field(&c.field, &metric_names, &params) {
                        FieldCheck::Known => {}
                        FieldCheck::Ambiguous(a) => errors.push(format!(
                            "the rule {rule:?}: {a}"
                        )),
                        FieldCheck::Unknown { .. } => {
                            let known = metric_names.iter().chain(&params).copied();
                            let hint = crate::select::nearest(&c.field, known)
                                .map(|n| format!("; did you mean {n}?"))
                                .unwrap_or_default();
                            unknown.push(format!(
                                "the rule {rule:?} uses {:?}, which no parameter has and no run has printed so far: that comparison fires nothing until the job prints it{hint}",
                                c.field
                            ));
                        }
                    }
                }
            }
            (errors, unknown)
        });
        let place = if from_row {
            e.row.abort_when_cell.clone()
        } else {
            "the default abort_when (neronet.yaml)".into()
        };
        for m in errors.iter() {
            let cell = if from_row {
                e.row.abort_when_cell.clone()
            } else {
                e.row.id_cell.clone()
            };
            let message = if from_row {
                m.clone()
            } else {
                format!("{m} (in the default abort_when of neronet.yaml)")
            };
            e.problems.push(Problem {
                cell,
                id: (!e.row.id.is_empty()).then(|| e.row.id.clone()),
                message,
            });
        }
        for w in unknown.iter() {
            let line = format!("{place}: {w}");
            if !warnings.contains(&line) {
                warnings.push(line);
            }
        }
    }
    warnings
}

/// An experiment made from a run no single workbook row owns: its id, cluster and the
/// parameters it ran with, and no command (it cannot be started).
fn detached_experiment(run: crate::store::RunRow, why: String) -> Experiment {
    use crate::sheet::read::{Param, StatusCell};
    let params = run
        .params
        .iter()
        .map(|(k, v)| {
            let number = v.parse::<f64>().ok().filter(|n| n.is_finite());
            let param = Param {
                text: v.clone(),
                number,
            };
            (k.clone(), param)
        })
        .collect();
    Experiment {
        row: SheetRow {
            row: 0,
            id: run.exp_id.clone(),
            id_cell: String::new(),
            status: StatusCell::Empty,
            status_cell: String::new(),
            command: None,
            cluster: Some(run.cluster.clone()),
            abort_when: None,
            command_cell: String::new(),
            cluster_cell: String::new(),
            abort_when_cell: String::new(),
            warden_options: BTreeMap::new(),
            warden_option_cells: BTreeMap::new(),
            params,
            invalid: Vec::new(),
            tool_values: BTreeMap::new(),
        },
        cluster: run.cluster,
        command: None,
        abort_when: None,
        problems: Vec::new(),
        origin: Origin::Detached { why },
    }
}

/// Whole-number ids by value, before text ids in text order.
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

fn default_parallel() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Parameter columns that collide in the environment or hide behind a built-in field.
fn column_warnings(sheet: &ExperimentSheet) -> Vec<String> {
    let mut out = Vec::new();
    let mut env: BTreeMap<String, &str> = BTreeMap::new();
    for p in &sheet.params {
        let var = format!("NERO_PARAM_{}", env_name(p));
        match env.get(&var) {
            Some(first) => out.push(format!(
                "{}: columns {first:?} and {p:?} both map to ${var}, which holds only one of them (both work as {{placeholders}})",
                sheet.path.display()
            )),
            None => {
                env.insert(var, p);
            }
        }
        if crate::select::BUILTIN_FIELDS
            .iter()
            .any(|b| b.eq_ignore_ascii_case(p))
        {
            out.push(format!(
                "{}: column {p:?} is named like the built-in field {}; selections and rules see the built-in one",
                sheet.path.display(),
                p.to_ascii_lowercase()
            ));
        }
    }
    out
}

/// `learning-rate` → `LEARNING_RATE`.
pub fn env_name(param: &str) -> String {
    param
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// What makes a row "changed" for `tmod`: everything but the status cell the tool itself writes.
fn row_fingerprint(row: &SheetRow) -> u64 {
    let mut bytes = Vec::with_capacity(256);
    let mut put = |s: &str| {
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
    };
    for v in [&row.command, &row.cluster, &row.abort_when] {
        put(v.as_deref().unwrap_or("\u{1}"));
    }
    for (k, v) in &row.warden_options {
        put(k);
        put(v);
    }
    for (k, v) in &row.params {
        put(k);
        put(&v.text);
    }
    crate::store::fnv(&bytes)
}

/// Substitute `{name}` placeholders with shell-quoted cell values; `{{` and `}}` are literal braces.
pub fn render_command(
    template: &str,
    row: &SheetRow,
    columns: &[String],
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let rest = &template[i + 1..];
                let Some(end) = rest.find('}') else {
                    return Err(format!(
                        "unclosed '{{' at character {} of the command",
                        i + 1
                    ));
                };
                let name = rest[..end].trim();
                for _ in 0..rest[..end].chars().count() + 1 {
                    chars.next();
                }
                let value = if name.eq_ignore_ascii_case("id") {
                    row.id.clone()
                } else {
                    let column = columns.iter().find(|c| c.eq_ignore_ascii_case(name));
                    match column {
                        None => {
                            let hint =
                                crate::select::nearest(name, columns.iter().map(String::as_str))
                                    .map(|n| format!("; did you mean {{{n}}}?"))
                                    .unwrap_or_default();
                            return Err(format!("placeholder {{{name}}} has no column{hint}"));
                        }
                        Some(col) => match row.params.get(col) {
                            Some(v) => v.text.clone(),
                            None => {
                                return Err(format!(
                                    "placeholder {{{name}}}: this row's {col} cell is empty"
                                ))
                            }
                        },
                    }
                };
                let quoted = shlex::try_quote(&value)
                    .map_err(|_| format!("{{{name}}}: value holds a NUL byte"))?;
                out.push_str(&quoted);
            }
            '}' => {
                return Err(format!(
                    "stray '}}' at character {} of the command (write '}}}}' for a brace)",
                    i + 1
                ))
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Apply journal entries to the store in one transaction, with the new sync point.
/// Apply journal entries to the store in one transaction, with the new sync point, and return
/// the sequence number applied up to. The transaction takes the write lock first and then reads
/// the sync point, so two neromans syncing at once apply each entry exactly once between them.
#[expect(clippy::too_many_arguments)]
fn apply_entries(
    store: &mut Store,
    cluster: &str,
    epoch: &str,
    entries: &[crate::cluster::protocol::JournalEntry],
    report: &mut SyncReport,
    floor: Option<u64>,
    through: u64,
    project: Option<&str>,
) -> Result<u64, CoreError> {
    use crate::cluster::protocol::MumEvent;
    use tx::RunColumn;
    let mut cache: HashMap<String, Option<crate::store::RunRow>> = HashMap::new();
    // Per run, the time of its last metric line in these entries: its output grew then.
    let mut output_at: HashMap<String, f64> = HashMap::new();
    let tx = store.transaction()?;
    let applied = match tx::sync_point(&tx, cluster)? {
        Some((e, seq)) if e == epoch => floor.map_or(seq, |f| seq.min(f)),
        Some(_) => {
            // The agent's journal is not the one we synced from (its workdir was wiped): runs it
            // held cannot be followed any more. Runs it never confirmed are resubmitted later.
            for (uid, exp_id, state) in
                tx::lose_confirmed_runs(&tx, cluster, nerokid::report::now())?
            {
                report.changes.push((uid, exp_id, state));
            }
            0
        }
        None => 0,
    };
    let mut last_seq = applied;
    for e in entries.iter().filter(|e| e.seq > applied) {
        last_seq = e.seq;
        // Another project sharing the agent's workdir: its runs have names like ours.
        if e.project.is_some() && e.project.as_deref() != project {
            continue;
        }
        let run = match cache.get(&e.run) {
            Some(r) => r.clone(),
            None => {
                let full = load_run(&tx, &e.run)?;
                cache.insert(e.run.clone(), full.clone());
                full
            }
        };
        // A run this project does not know (another project sharing the workdir): not ours.
        let Some(mut run) = run else { continue };
        // An entry without a project was written for a neroman of protocol 1, before the
        // upgrade: it can only be about a run this project had already recorded then. (Another
        // project's old run of the same name in a shared workdir is older than ours.) Protocol
        // 1 served only the local cluster, so both times come from one clock.
        if e.project.is_none() && run.submitted_at.is_some_and(|at| e.t + 1.0 < at) {
            continue;
        }
        match &e.event {
            MumEvent::Queued { run_dir } => {
                tx::set_field(&tx, &run.uid, RunColumn::RunDir, run_dir)?
            }
            MumEvent::Launched { job } => tx::set_field(&tx, &run.uid, RunColumn::JobId, job)?,
            MumEvent::AbortSent => {
                tx::set_field(&tx, &run.uid, RunColumn::AbortSent, &1)?;
                run.abort_sent = true;
            }
            MumEvent::Kid { event } => match event {
                KidEvent::Metrics { t, step, values } => {
                    tx::add_metrics(&tx, &run.uid, *t, *step, values)?;
                    // Noted once per run after the loop: metric lines are the hot path.
                    let last = output_at.entry(run.uid.clone()).or_insert(*t);
                    *last = last.max(*t);
                    report.metric_values += values.len();
                }
                KidEvent::Resources { t, .. } => tx::add_sample(&tx, &run.uid, *t, event)?,
                KidEvent::RuleFired { t, rule, values } => {
                    let fired = crate::store::Fired {
                        rule: rule.clone(),
                        t: *t,
                        values: values.clone(),
                    };
                    let json = serde_json::to_string(&fired).unwrap_or_default();
                    tx::set_field(&tx, &run.uid, RunColumn::FiredJson, &json)?;
                }
                KidEvent::Exited { stderr_tail, .. } if !stderr_tail.is_empty() => {
                    let json = serde_json::to_string(stderr_tail).unwrap_or_default();
                    tx::set_field(&tx, &run.uid, RunColumn::StderrTail, &json)?;
                }
                KidEvent::Environment { report: env, .. } => {
                    let json = serde_json::to_string(env).unwrap_or_default();
                    tx::set_field(&tx, &run.uid, RunColumn::EnvJson, &json)?;
                }
                KidEvent::Started { t, host, .. } => {
                    tx::set_field(&tx, &run.uid, RunColumn::Node, host)?;
                    tx::note_output(&tx, &run.uid, *t)?;
                }
                _ => {}
            },
            _ => {}
        }
        if let Some(next) = run.state.next(&e.event, e.t, run.abort_sent) {
            tx::set_state(&tx, &run, &next, next.reason().as_deref())?;
            report
                .changes
                .push((run.uid.clone(), run.exp_id.clone(), next.clone()));
            run.state = next;
        }
        cache.insert(e.run.clone(), Some(run));
    }
    for (uid, t) in &output_at {
        tx::note_output(&tx, uid, *t)?;
    }
    // Entries the agent looked at and left out (another project's) count as seen.
    if through > last_seq && floor.is_none() {
        last_seq = through;
    }
    tx::set_sync_point(&tx, cluster, epoch, last_seq)?;
    tx.commit().map_err(StoreError::from)?;
    Ok(last_seq)
}

fn load_run(
    tx: &rusqlite::Transaction<'_>,
    uid: &str,
) -> Result<Option<crate::store::RunRow>, CoreError> {
    Ok(crate::store::run_in(tx, uid)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sheet::read::{SheetRow, StatusCell};

    fn row(options: &[(&str, &str)]) -> SheetRow {
        SheetRow {
            row: 2,
            id: "1".into(),
            id_cell: "experiments!A2".into(),
            status: StatusCell::Empty,
            status_cell: String::new(),
            command: None,
            cluster: Some("hpc".into()),
            abort_when: None,
            command_cell: String::new(),
            cluster_cell: String::new(),
            abort_when_cell: String::new(),
            warden_options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            warden_option_cells: BTreeMap::new(),
            params: BTreeMap::new(),
            invalid: Vec::new(),
            tool_values: BTreeMap::new(),
        }
    }

    /// The cluster's `slurm:` map, overlaid key by key (in place) by the row's `slurm.*`
    /// cells; `true` a bare flag, `false` no option; `requeue: true` adds the requeue and the
    /// USR1 warning `grace` seconds ahead, unless a `signal` is given.
    #[test]
    fn slurm_options_come_from_the_cluster_and_the_row() {
        let cfg = Config::parse(
            "clusters:\n  hpc:\n    warden: slurm\n    grace: 90s\n    requeue: true\n    slurm: {partition: debug, time: '0:10:00', mem: 4G, exclusive: true, nodes: 1}\n  local: {}\n",
            Path::new("n.yaml"),
        )
        .unwrap();
        let hpc = &cfg.clusters["hpc"];
        let opts = warden_options(
            hpc,
            &row(&[
                ("slurm.time", "2:00:00"),
                ("slurm.exclusive", "FALSE"),
                ("slurm.gres", "gpu:1"),
                ("sge.h_rt", "1:00:00"),
            ]),
        );
        let shown: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            shown,
            [
                "mem=4G",
                "nodes=1",
                "partition=debug",
                "time=2:00:00",
                "gres=gpu:1",
                "requeue=",
                "signal=B:USR1@90"
            ]
        );
        let given = warden_options(hpc, &row(&[("slurm.signal", "B:USR1@300")]));
        assert!(given.contains(&("signal".into(), "B:USR1@300".into())));
        assert!(warden_options(&cfg.clusters["local"], &row(&[("slurm.time", "1")])).is_empty());
    }

    /// The cluster's `sge:` map, overlaid key by key by the row's `sge.*` cells (resources
    /// last); `true` is `y`; `requeue: true` adds `-r y`; `slurm.*` cells are not Grid Engine's.
    #[test]
    fn sge_options_come_from_the_cluster_and_the_row() {
        let cfg = Config::parse(
            "clusters:\n  ge:\n    warden: sge\n    requeue: true\n    sge: {q: all.q, l.h_rt: '0:10:00', R: true}\n",
            Path::new("n.yaml"),
        )
        .unwrap();
        let opts = warden_options(
            &cfg.clusters["ge"],
            &row(&[
                ("sge.l.h_rt", "0:00:05"),
                ("sge.P", "proj"),
                ("slurm.time", "1"),
            ]),
        );
        let shown: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(shown, ["R=y", "q=all.q", "P=proj", "l.h_rt=0:00:05", "r=y"]);
        let e = sge_cell_check("t", "1-3").unwrap_err();
        assert!(e.contains("sge.t: neronet sets -t itself"), "{e}");
        // Case is the option's (the sheet keeps it): `-V` and `-N` are neronet's, `-P` and
        // `-p` are two options.
        let e = sge_cell_check("V", "y").unwrap_err();
        assert!(e.contains("sge.V: neronet sets -V itself"), "{e}");
        assert!(sge_cell_check("N", "x").is_err());
        let opts = warden_options(
            &cfg.clusters["ge"],
            &row(&[("sge.P", "proj"), ("sge.p", "-100")]),
        );
        assert!(
            opts.contains(&("P".into(), "proj".into()))
                && opts.contains(&("p".into(), "-100".into())),
            "{opts:?}"
        );
    }

    /// A row's `sge.l` list and `sge.l.<r>` cells come after the cluster's resources, so the
    /// one `-l` line the warden writes holds the row's values.
    #[test]
    fn a_rows_resources_win_over_the_clusters() {
        let cfg = Config::parse(
            "clusters:\n  ge:\n    warden: sge\n    sge: {l: 'h_rt=1:00:00,mem_free=1G', l.h_rt: '0:10:00', l.h_vmem: 2G}\n",
            Path::new("n.yaml"),
        )
        .unwrap();
        let ge = &cfg.clusters["ge"];
        let l_line = |cells: &[(&str, &str)]| {
            let opts = warden_options(ge, &row(cells));
            let dir = Path::new("/w/r/1");
            let script =
                crate::cluster::mum::sge::render("b", Path::new("/w/b"), &[dir], &opts, None)
                    .unwrap();
            let lines: Vec<String> = script
                .lines()
                .filter(|l| l.starts_with("#$ -l"))
                .map(str::to_string)
                .collect();
            lines
        };
        assert_eq!(l_line(&[]), ["#$ -l h_rt=0:10:00,mem_free=1G,h_vmem=2G"]);
        assert_eq!(
            l_line(&[("sge.l.h_rt", "0:02:00")]),
            ["#$ -l h_rt=0:02:00,mem_free=1G,h_vmem=2G"]
        );
        // A row's `sge.l` replaces the cluster's `l` (key by key), and its resources win over
        // the cluster's `l.<r>` keys.
        assert_eq!(
            l_line(&[("sge.l", "h_rt=0:05:00,h_vmem=8G")]),
            ["#$ -l h_rt=0:05:00,h_vmem=8G"]
        );
    }
}
