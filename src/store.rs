//! The state store `.neronet/state.db` (SQLite, WAL): experiments as last seen in the workbook
//! (with the time each row last changed, for `tmod`), runs (every restart is a new run), every
//! state change with its time, metric time series, and how far each cluster's journal was synced.
//! The schema is versioned (`PRAGMA user_version`) and migrated forward on open.

use crate::state::RunState;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}")]
    Open {
        path: PathBuf,
        #[source]
        err: rusqlite::Error,
    },
    #[error("state store {path} has schema version {found}, newer than this neroman ({supported}); upgrade neroman")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("state store query")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot create {dir}, where the project keeps its state (is the project directory writable?)")]
    Dir {
        dir: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

/// Each entry upgrades the schema by one version.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE experiments (
        id TEXT PRIMARY KEY,
        sheet_row INTEGER NOT NULL,
        row_hash TEXT NOT NULL,
        row_changed_at REAL NOT NULL,
        first_seen REAL NOT NULL,
        in_workbook INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE runs (
        uid TEXT PRIMARY KEY,
        exp_id TEXT NOT NULL,
        run_no INTEGER NOT NULL,
        cluster TEXT NOT NULL,
        state_json TEXT NOT NULL,
        state TEXT NOT NULL,
        job_id TEXT,
        node TEXT,
        run_dir TEXT,
        submitted_at REAL,
        started_at REAL,
        finished_at REAL,
        exit_code INTEGER,
        command TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        params_json TEXT NOT NULL,
        env_json TEXT,
        cpu_percent REAL,
        rss_bytes INTEGER,
        abort_sent INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        UNIQUE (exp_id, run_no)
    );
    CREATE INDEX runs_by_exp ON runs (exp_id, run_no);
    CREATE TABLE state_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_uid TEXT NOT NULL,
        state TEXT NOT NULL,
        at REAL NOT NULL,
        detail TEXT
    );
    CREATE TABLE metrics (
        run_uid TEXT NOT NULL,
        t REAL NOT NULL,
        step REAL,
        name TEXT NOT NULL,
        value REAL
    );
    CREATE INDEX metrics_by_run ON metrics (run_uid, t);
    CREATE TABLE last_metrics (
        run_uid TEXT NOT NULL,
        name TEXT NOT NULL,
        value REAL,
        t REAL NOT NULL,
        PRIMARY KEY (run_uid, name)
    );
    CREATE TABLE cluster_sync (
        cluster TEXT PRIMARY KEY,
        epoch TEXT NOT NULL,
        last_seq INTEGER NOT NULL
    );
    "#,
    // 2: the watcher daemon. What each status cell held, per workbook revision, so a command
    // fires once per edit (docs/WORKBOOK.md, "Commands in the status column"); a few values of
    // its own (the workbook revision it last wrote); each row's content as last seen (to say
    // what changed under a run in flight).
    r#"
    CREATE TABLE status_seen (
        id TEXT NOT NULL,
        rev INTEGER NOT NULL,
        value TEXT NOT NULL,
        consumed INTEGER NOT NULL,
        why TEXT,
        at REAL NOT NULL,
        PRIMARY KEY (id, rev)
    );
    CREATE TABLE daemon_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE experiments ADD COLUMN snapshot TEXT;
    "#,
    // 3: what a run tells (issue 9). Resource peaks and averages over the kid's samples (CPU,
    // RSS, GPU utilisation and memory, which GPUs), when its output last grew (the `silent`
    // field of alert rules), the last lines of stderr of a run that did not finish, and the
    // rule with the values that fired it.
    r#"
    ALTER TABLE runs ADD COLUMN cpu_peak REAL;
    ALTER TABLE runs ADD COLUMN cpu_sum REAL;
    ALTER TABLE runs ADD COLUMN rss_peak INTEGER;
    ALTER TABLE runs ADD COLUMN samples INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN gpu_percent REAL;
    ALTER TABLE runs ADD COLUMN gpu_peak REAL;
    ALTER TABLE runs ADD COLUMN gpu_sum REAL;
    ALTER TABLE runs ADD COLUMN gpu_samples INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN gpu_mem_bytes INTEGER;
    ALTER TABLE runs ADD COLUMN gpu_mem_peak INTEGER;
    ALTER TABLE runs ADD COLUMN gpus TEXT;
    ALTER TABLE runs ADD COLUMN output_bytes INTEGER;
    ALTER TABLE runs ADD COLUMN output_at REAL;
    ALTER TABLE runs ADD COLUMN stderr_tail TEXT;
    ALTER TABLE runs ADD COLUMN fired_json TEXT;
    "#,
    // 4: alerts (src/notify/, docs/NOTIFY.md). Each alert per channel, made in the transaction
    // that moves the notifier's mark over the state changes (`daemon_meta` key `notify_mark`);
    // a daemon rule (`rule`: stalled, queued, when[N]) fires once per run. Messages composed
    // from alerts wait in `outbox` until sent (exactly once: `sent_at` is set right after the
    // server took it) or given up (`undeliverable`, the server's answer); `notify_windows`
    // keeps when each kind last went out per channel (one message per digest window).
    r#"
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        kind TEXT NOT NULL,
        run_uid TEXT NOT NULL,
        exp_id TEXT NOT NULL,
        rule TEXT,
        detail TEXT,
        at REAL NOT NULL,
        message INTEGER
    );
    CREATE UNIQUE INDEX alerts_once ON alerts (channel, run_uid, rule);
    CREATE INDEX alerts_pending ON alerts (channel, message);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        kinds TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        html TEXT,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try REAL NOT NULL,
        sent_at REAL,
        undeliverable TEXT,
        last_error TEXT
    );
    CREATE TABLE notify_windows (
        channel TEXT NOT NULL,
        kind TEXT NOT NULL,
        last_at REAL NOT NULL,
        PRIMARY KEY (channel, kind)
    );
    "#,
];

/// The schema version this neroman writes (`PRAGMA user_version` after migrating).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub struct Store {
    conn: Connection,
}

/// How long a statement waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Switch to WAL. The switch needs an exclusive lock and SQLite may answer SQLITE_BUSY at once,
/// without calling the busy handler, while another process opens the same fresh file: retry with
/// backoff for as long as the busy timeout.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A run as the store knows it.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub uid: String,
    pub exp_id: String,
    pub run_no: i64,
    pub cluster: String,
    pub state: RunState,
    pub job_id: Option<String>,
    pub node: Option<String>,
    pub run_dir: Option<String>,
    pub submitted_at: Option<f64>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub exit_code: Option<i64>,
    pub params: BTreeMap<String, String>,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<i64>,
    pub abort_sent: bool,
    pub updated_at: f64,
    /// Peaks and averages over the kid's resource samples.
    pub usage: Usage,
    /// When the run's output last grew (or a metric came): the `silent` field of alerts.
    pub output_at: Option<f64>,
    /// The last lines of stderr of a run that did not finish cleanly (the kid's exit record).
    pub stderr_tail: Vec<String>,
    /// The rule that ended the run and the values that fired it.
    pub fired: Option<Fired>,
}

/// A run's resource use over its samples. GPU figures are for the GPUs its processes used.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    pub cpu_peak: Option<f64>,
    pub cpu_avg: Option<f64>,
    pub rss_peak: Option<i64>,
    pub samples: i64,
    pub gpu_percent: Option<f64>,
    pub gpu_peak: Option<f64>,
    pub gpu_avg: Option<f64>,
    pub gpu_mem_bytes: Option<i64>,
    pub gpu_mem_peak: Option<i64>,
    /// The GPUs used (`0: NVIDIA H100 80GB HBM3`), as the samples named them.
    pub gpus: Vec<String>,
}

/// The rule that ended a run, with its fields' values when it fired.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fired {
    pub rule: String,
    pub t: f64,
    #[serde(with = "nerokid::report::metric_values")]
    pub values: Vec<(String, f64)>,
}

/// What a new run is made from.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub exp_id: &'a str,
    pub cluster: &'a str,
    pub command: &'a str,
    pub params: &'a BTreeMap<String, String>,
}

/// One metric value of one run.
#[derive(Debug, Clone)]
pub struct MetricPoint {
    pub run: String,
    pub t: f64,
    pub step: Option<f64>,
    pub name: String,
    pub value: f64,
}

/// A stored state change: (sequence number, experiment id, state, its reason).
pub type StoredChange = (i64, String, String, Option<String>);

/// What a status cell held as of some workbook revision: `value` is the cell's text as
/// compared (a command or state word lowercased, other text trimmed); `consumed` whether a
/// command in it was acted on (a command on an invalid row waits, not consumed); `why` the
/// reason the tool shows beside it, if any; `rev` the revision the record was made for.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSeen {
    pub value: String,
    pub consumed: bool,
    pub why: Option<String>,
    pub rev: u64,
    /// When what it says was seen (unix seconds): a reason is about the row as it was then.
    pub at: f64,
}

#[derive(Debug, Clone)]
pub struct ExperimentRow {
    pub id: String,
    pub row_changed_at: f64,
    pub first_seen: f64,
}

impl Store {
    /// Open (creating and migrating when needed). Safe when several processes open a fresh
    /// store at once: the busy timeout is set before anything else, the switch to WAL is retried,
    /// and the schema version is re-read inside the write transaction that migrates.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|err| StoreError::Dir {
                dir: dir.to_path_buf(),
                err,
            })?;
        }
        let open_err = |err| StoreError::Open {
            path: path.to_path_buf(),
            err,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        enable_wal(&conn).map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        let mut store = Store { conn };
        store.migrate(path)?;
        Ok(store)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        let too_new = |found| StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        };
        let version = user_version(&self.conn)?;
        if version > SCHEMA_VERSION {
            return Err(too_new(version));
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        // Another process may have migrated since we looked: decide again under the write lock.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = user_version(&tx)?;
        if version > SCHEMA_VERSION {
            return Err(too_new(version));
        }
        for sql in MIGRATIONS.iter().skip(version as usize) {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// A write transaction. IMMEDIATE takes the write lock at the start (waiting up to the busy
    /// timeout), so read-then-write sequences of concurrent neromans cannot interleave.
    pub fn transaction(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Record the workbook rows as read now: a row whose content changed gets a new change time.
    /// `rows` is (id, sheet row, content fingerprint). Rows that did not change are not written.
    pub fn note_rows(&mut self, rows: &[(String, u32, u64)], now: f64) -> Result<(), StoreError> {
        // Read inside the write transaction: another neroman may be noting the same rows.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: HashMap<String, (u32, String, bool)> = {
            let mut stmt =
                tx.prepare("SELECT id, sheet_row, row_hash, in_workbook FROM experiments")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0),
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        {
            let mut update = tx.prepare_cached(
                "UPDATE experiments SET sheet_row = ?2, in_workbook = 1,
                     row_changed_at = CASE WHEN row_hash = ?3 THEN row_changed_at ELSE ?4 END, row_hash = ?3
                 WHERE id = ?1",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO experiments (id, sheet_row, row_hash, row_changed_at, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
            )?;
            let mut present = std::collections::HashSet::with_capacity(rows.len());
            for (id, sheet_row, fingerprint) in rows {
                let hash = format!("{fingerprint:016x}");
                // A duplicated id (an invalid row) is tracked by its first row only.
                if !present.insert(id.as_str()) {
                    continue;
                }
                match known.get(id) {
                    Some((r, h, inside)) if r == sheet_row && *h == hash && *inside => {}
                    Some(_) => {
                        update.execute(params![id, sheet_row, hash, now])?;
                    }
                    None => {
                        insert.execute(params![id, sheet_row, hash, now])?;
                    }
                }
            }
            let mut gone =
                tx.prepare_cached("UPDATE experiments SET in_workbook = 0 WHERE id = ?1")?;
            for (id, (_, _, inside)) in &known {
                if *inside && !present.contains(id.as_str()) {
                    gone.execute([id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn experiments(&self) -> Result<BTreeMap<String, ExperimentRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, row_changed_at, first_seen FROM experiments")?;
        let rows = stmt.query_map([], |r| {
            Ok(ExperimentRow {
                id: r.get(0)?,
                row_changed_at: r.get(1)?,
                first_seen: r.get(2)?,
            })
        })?;
        let mut out = BTreeMap::new();
        for r in rows {
            let r = r?;
            out.insert(r.id.clone(), r);
        }
        Ok(out)
    }

    /// Record the next run of an experiment in state `submitted`, atomically with the check that
    /// no run of it is in flight (and, unless `again`, that it never ran). `None` when the check
    /// fails: another neroman got there first. `spec_json` makes the run spec for the new uid.
    pub fn new_run(
        &mut self,
        run: &NewRun<'_>,
        again: bool,
        spec_json: impl FnOnce(&str) -> String,
        now: f64,
    ) -> Result<Option<RunRow>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let latest: Option<(i64, String)> = tx
            .query_row(
                "SELECT run_no, state FROM runs WHERE exp_id = ?1 ORDER BY run_no DESC LIMIT 1",
                [run.exp_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let run_no = match &latest {
            None => 1,
            Some((_, state)) if matches!(state.as_str(), "submitted" | "queued" | "running") => {
                return Ok(None)
            }
            Some(_) if !again => return Ok(None),
            Some((n, _)) => n + 1,
        };
        let uid = run_uid(run.exp_id, run_no);
        let state = RunState::Submitted { at: now };
        tx.execute(
            "INSERT INTO runs (uid, exp_id, run_no, cluster, state_json, state, submitted_at, command, params_json, spec_json, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?7)",
            params![
                uid,
                run.exp_id,
                run_no,
                run.cluster,
                serde_json::to_string(&state).expect("state serializes"),
                state.name().as_str(),
                now,
                run.command,
                serde_json::to_string(run.params).expect("params serialize"),
                spec_json(&uid),
            ],
        )?;
        tx.execute(
            "INSERT INTO state_changes (run_uid, state, at, detail) VALUES (?1, ?2, ?3, NULL)",
            params![uid, state.name().as_str(), now],
        )?;
        tx.commit()?;
        self.run(&uid)
    }

    pub fn run(&self, uid: &str) -> Result<Option<RunRow>, StoreError> {
        run_in(&self.conn, uid)
    }

    /// The newest run of each experiment.
    pub fn latest_runs(&self) -> Result<BTreeMap<String, RunRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "{RUN_SELECT} WHERE run_no = (SELECT MAX(run_no) FROM runs r2 WHERE r2.exp_id = runs.exp_id)"
        ))?;
        let rows = stmt.query_map([], run_from_row)?;
        let mut out = BTreeMap::new();
        for r in rows {
            let r = r?;
            out.insert(r.exp_id.clone(), r);
        }
        Ok(out)
    }

    /// Every run of one experiment, the first first.
    pub fn runs_of(&self, exp_id: &str) -> Result<Vec<RunRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{RUN_SELECT} WHERE exp_id = ?1 ORDER BY run_no"))?;
        let rows = stmt.query_map([exp_id], run_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What a run was started with and where it ran: its command and the kid's environment
    /// report (JSON), for `neroman show`.
    pub fn run_command_and_env(
        &self,
        uid: &str,
    ) -> Result<(String, Option<nerokid::report::EnvReport>), StoreError> {
        let (command, env): (String, Option<String>) = self.conn.query_row(
            "SELECT command, env_json FROM runs WHERE uid = ?1",
            [uid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((command, env.and_then(|j| serde_json::from_str(&j).ok())))
    }

    /// The last value (and its time and step) of every metric of one run.
    pub fn run_last_metrics(&self, uid: &str) -> Result<Vec<(String, f64, f64)>, StoreError> {
        run_last_metrics_in(&self.conn, uid)
    }

    /// (uid, experiment id, run number) of every run.
    pub fn all_runs(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT uid, exp_id, run_no FROM runs ORDER BY exp_id, run_no")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn active_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        active_runs_in(&self.conn)
    }

    /// Last value of every metric, per run.
    pub fn last_metrics(&self) -> Result<BTreeMap<String, BTreeMap<String, f64>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT run_uid, name, value FROM last_metrics")?;
        let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<f64>>(2)?,
            ))
        })?;
        for r in rows {
            let (run, name, value) = r?;
            out.entry(run)
                .or_default()
                .insert(name, value.unwrap_or(f64::NAN));
        }
        Ok(out)
    }

    /// Metric series of the given runs, oldest first.
    pub fn history(&self, runs: &[&str], limit: usize) -> Result<Vec<MetricPoint>, StoreError> {
        let mut out = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT run_uid, t, step, name, value FROM metrics WHERE run_uid = ?1 ORDER BY rowid LIMIT ?2",
        )?;
        for run in runs {
            let rows = stmt.query_map(params![run, limit as i64], |r| {
                Ok(MetricPoint {
                    run: r.get(0)?,
                    t: r.get(1)?,
                    step: r.get(2)?,
                    name: r.get(3)?,
                    value: r.get::<_, Option<f64>>(4)?.unwrap_or(f64::NAN),
                })
            })?;
            for r in rows {
                out.push(r?);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    pub fn metric_count(&self, run: &str) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM metrics WHERE run_uid = ?1",
            [run],
            |r| r.get(0),
        )?)
    }

    pub fn metric_names(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT name FROM last_metrics ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every state change of a run, oldest first.
    pub fn state_changes(
        &self,
        run: &str,
    ) -> Result<Vec<(String, f64, Option<String>)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT state, at, detail FROM state_changes WHERE run_uid = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// For each experiment id, what its status cell held as of workbook revision `rev`: the
    /// record of the greatest revision not after `rev` (see [`StatusSeen`]).
    pub fn status_baselines(&self, rev: u64) -> Result<HashMap<String, StatusSeen>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT s.id, s.value, s.consumed, s.why, s.rev, s.at FROM status_seen s
             WHERE s.rev = (SELECT MAX(rev) FROM status_seen t WHERE t.id = s.id AND t.rev <= ?1)",
        )?;
        let rows = stmt.query_map([rev as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                StatusSeen {
                    value: r.get(1)?,
                    consumed: r.get::<_, i64>(2)? != 0,
                    why: r.get(3)?,
                    rev: r.get::<_, i64>(4)? as u64,
                    at: r.get(5)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Record what status cells hold as of revision `rev` (replacing a record of the same
    /// revision), all in one transaction.
    pub fn note_status(
        &mut self,
        rev: u64,
        seen: &[(String, StatusSeen)],
    ) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO status_seen (id, rev, value, consumed, why, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (id, s) in seen {
                put.execute(params![
                    id,
                    rev as i64,
                    s.value,
                    s.consumed as i64,
                    s.why,
                    s.at
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn daemon_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        daemon_value_in(&self.conn, key)
    }

    pub fn set_daemon_value(&self, key: &str, value: &str) -> Result<(), StoreError> {
        set_daemon_value_in(&self.conn, key, value)
    }

    /// Ids no longer in the workbook, by the sheet row they were last seen on (1-based): a row
    /// whose id was changed in place had its old id there.
    pub fn ids_gone_from_rows(&self) -> Result<HashMap<u32, Vec<String>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT sheet_row, id FROM experiments WHERE in_workbook = 0")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)))?;
        let mut out: HashMap<u32, Vec<String>> = HashMap::new();
        for r in rows {
            let (row, id) = r?;
            out.entry(row).or_default().push(id);
        }
        Ok(out)
    }

    /// Each experiment's row content as the daemon last saw it (id → snapshot text).
    pub fn row_snapshots(&self) -> Result<HashMap<String, String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, snapshot FROM experiments WHERE snapshot IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_row_snapshots(&mut self, snaps: &[(&str, String)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut put =
                tx.prepare_cached("UPDATE experiments SET snapshot = ?2 WHERE id = ?1")?;
            for (id, text) in snaps {
                put.execute(params![id, text])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The newest state change, metric value and run: when one moves, something (this
    /// process or another neroman) stored news.
    pub fn news_mark(&self) -> Result<(i64, i64, i64), StoreError> {
        Ok(self.conn.query_row(
            // Each a lookup at the end of a b-tree, not a scan: the idle daemon asks every second.
            "SELECT (SELECT IFNULL(MAX(seq), 0) FROM state_changes),
                    (SELECT IFNULL(MAX(rowid), 0) FROM metrics),
                    (SELECT IFNULL(MAX(rowid), 0) FROM runs)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// State changes after sequence number `seq`, oldest first: (seq, experiment id, state,
    /// its reason).
    pub fn state_changes_after(&self, seq: i64) -> Result<Vec<StoredChange>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.seq, r.exp_id, c.state, c.detail FROM state_changes c
             JOIN runs r ON r.uid = c.run_uid WHERE c.seq > ?1 ORDER BY c.seq LIMIT 10000",
        )?;
        let rows = stmt.query_map([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Specs of runs mum has not confirmed yet (to resubmit).
    pub fn unconfirmed_specs(
        &self,
        cluster: &str,
        older_than: f64,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT spec_json FROM runs WHERE cluster = ?1 AND state = 'submitted' AND submitted_at < ?2",
        )?;
        let rows = stmt.query_map(params![cluster, older_than], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn sync_point(&self, cluster: &str) -> Result<Option<(String, u64)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT epoch, last_seq FROM cluster_sync WHERE cluster = ?1",
                [cluster],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }
}

pub const RUN_SELECT: &str = "SELECT uid, exp_id, run_no, cluster, state_json, job_id, node, run_dir, submitted_at, \
     started_at, finished_at, exit_code, params_json, cpu_percent, rss_bytes, abort_sent, updated_at, \
     cpu_peak, cpu_sum, rss_peak, samples, gpu_percent, gpu_peak, gpu_sum, gpu_samples, gpu_mem_bytes, \
     gpu_mem_peak, gpus, output_at, stderr_tail, fired_json FROM runs";

// Reads on any connection — a transaction too (it derefs to one) — so that code working inside
// a transaction (a sync, the notifier) reads what it is about to change with the same queries.

/// A run by uid.
pub fn run_in(conn: &Connection, uid: &str) -> Result<Option<RunRow>, StoreError> {
    Ok(conn
        .query_row(&format!("{RUN_SELECT} WHERE uid = ?1"), [uid], run_from_row)
        .optional()?)
}

/// Every run in flight (submitted, queued or running).
pub fn active_runs_in(conn: &Connection) -> Result<Vec<RunRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{RUN_SELECT} WHERE state IN ('submitted','queued','running')"
    ))?;
    let rows = stmt.query_map([], run_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The last value (NaN where it was not a number), its time, of every metric of one run, by name.
pub fn run_last_metrics_in(
    conn: &Connection,
    uid: &str,
) -> Result<Vec<(String, f64, f64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, value, t FROM last_metrics WHERE run_uid = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map([uid], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<f64>>(1)?.unwrap_or(f64::NAN),
            r.get::<_, f64>(2)?,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One of the watcher's own values (`daemon_meta`).
pub fn daemon_value_in(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM daemon_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

pub fn set_daemon_value_in(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO daemon_meta (key, value) VALUES (?1, ?2)",
        params![key, value],
    )?;
    Ok(())
}

pub fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let state_json: String = r.get(4)?;
    let params_json: String = r.get(12)?;
    Ok(RunRow {
        uid: r.get(0)?,
        exp_id: r.get(1)?,
        run_no: r.get(2)?,
        cluster: r.get(3)?,
        state: serde_json::from_str(&state_json).unwrap_or(RunState::Lost {
            at: 0.0,
            reason: format!("unreadable state in store: {state_json}"),
        }),
        job_id: r.get(5)?,
        node: r.get(6)?,
        run_dir: r.get(7)?,
        submitted_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
        exit_code: r.get(11)?,
        params: serde_json::from_str(&params_json).unwrap_or_default(),
        cpu_percent: r.get(13)?,
        rss_bytes: r.get(14)?,
        abort_sent: r.get::<_, i64>(15)? != 0,
        updated_at: r.get(16)?,
        usage: {
            let samples: i64 = r.get(20)?;
            let gpu_samples: i64 = r.get(24)?;
            let avg = |sum: Option<f64>, n: i64| sum.filter(|_| n > 0).map(|s| s / n as f64);
            Usage {
                cpu_peak: r.get(17)?,
                cpu_avg: avg(r.get(18)?, samples),
                rss_peak: r.get(19)?,
                samples,
                gpu_percent: r.get(21)?,
                gpu_peak: r.get(22)?,
                gpu_avg: avg(r.get(23)?, gpu_samples),
                gpu_mem_bytes: r.get(25)?,
                gpu_mem_peak: r.get(26)?,
                gpus: r
                    .get::<_, Option<String>>(27)?
                    .and_then(|j| serde_json::from_str(&j).ok())
                    .unwrap_or_default(),
            }
        },
        output_at: r.get(28)?,
        stderr_tail: r
            .get::<_, Option<String>>(29)?
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default(),
        fired: r
            .get::<_, Option<String>>(30)?
            .and_then(|j| serde_json::from_str(&j).ok()),
    })
}

/// Run uid: the experiment id made safe for a directory name, then the run number.
pub fn run_uid(exp_id: &str, run_no: i64) -> String {
    let safe: String = exp_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if safe == exp_id {
        format!("{safe}.{run_no}")
    } else {
        // Two ids that sanitize alike must not share a directory.
        format!("{safe}-{:08x}.{run_no}", fnv(exp_id.as_bytes()) as u32)
    }
}

pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Update helpers used inside a sync transaction.
pub mod tx {
    use super::*;

    pub fn set_state(
        tx: &Transaction<'_>,
        run: &RunRow,
        state: &RunState,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let (started, finished, exit_code) = state.times_and_code();
        tx.execute(
            "UPDATE runs SET state_json = ?2, state = ?3, updated_at = ?4,
                 started_at = COALESCE(?5, started_at), finished_at = COALESCE(?6, finished_at),
                 exit_code = COALESCE(?7, exit_code)
             WHERE uid = ?1",
            params![
                run.uid,
                serde_json::to_string(state).expect("state serializes"),
                state.name().as_str(),
                state.at(),
                started,
                finished,
                exit_code,
            ],
        )?;
        tx.execute(
            "INSERT INTO state_changes (run_uid, state, at, detail) VALUES (?1, ?2, ?3, ?4)",
            params![run.uid, state.name().as_str(), state.at(), detail],
        )?;
        Ok(())
    }

    /// Fold one resource sample of the kid into the run's last values, peaks and sums.
    pub fn add_sample(
        tx: &Transaction<'_>,
        uid: &str,
        t: f64,
        sample: &nerokid::report::KidEvent,
    ) -> Result<(), StoreError> {
        let nerokid::report::KidEvent::Resources {
            cpu_percent,
            rss_bytes,
            gpu_percent,
            gpu_mem_bytes,
            gpus,
            output_bytes,
            ..
        } = sample
        else {
            return Ok(());
        };
        let rss = *rss_bytes as i64;
        let gpu_mem = gpu_mem_bytes.map(|b| b as i64);
        let gpus_json = (!gpus.is_empty()).then(|| serde_json::to_string(gpus).unwrap_or_default());
        tx.execute(
            "UPDATE runs SET cpu_percent = ?2, rss_bytes = ?3,
                 cpu_peak = MAX(COALESCE(cpu_peak, ?2), ?2), cpu_sum = COALESCE(cpu_sum, 0) + ?2,
                 rss_peak = MAX(COALESCE(rss_peak, ?3), ?3), samples = samples + 1,
                 gpu_percent = COALESCE(?4, gpu_percent),
                 gpu_peak = CASE WHEN ?4 IS NULL THEN gpu_peak ELSE MAX(COALESCE(gpu_peak, ?4), ?4) END,
                 gpu_sum = CASE WHEN ?4 IS NULL THEN gpu_sum ELSE COALESCE(gpu_sum, 0) + ?4 END,
                 gpu_samples = gpu_samples + (?4 IS NOT NULL),
                 gpu_mem_bytes = COALESCE(?5, gpu_mem_bytes),
                 gpu_mem_peak = CASE WHEN ?5 IS NULL THEN gpu_mem_peak ELSE MAX(COALESCE(gpu_mem_peak, ?5), ?5) END,
                 gpus = COALESCE(?6, gpus),
                 output_at = CASE WHEN ?7 IS NOT NULL AND ?7 > COALESCE(output_bytes, 0) THEN ?8 ELSE output_at END,
                 output_bytes = COALESCE(?7, output_bytes)
             WHERE uid = ?1",
            params![
                uid,
                cpu_percent,
                rss,
                gpu_percent,
                gpu_mem,
                gpus_json,
                output_bytes.map(|b| b as i64),
                t
            ],
        )?;
        Ok(())
    }

    /// A metric or other sign of life from the job at `t`: its output grew.
    pub fn note_output(tx: &Transaction<'_>, uid: &str, t: f64) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE runs SET output_at = MAX(COALESCE(output_at, ?2), ?2) WHERE uid = ?1",
            params![uid, t],
        )?;
        Ok(())
    }

    pub fn set_field(
        tx: &Transaction<'_>,
        uid: &str,
        column: RunColumn,
        value: &dyn rusqlite::ToSql,
    ) -> Result<(), StoreError> {
        tx.execute(
            &format!("UPDATE runs SET {} = ?2 WHERE uid = ?1", column.name()),
            params![uid, value],
        )?;
        Ok(())
    }

    pub fn add_metrics(
        tx: &Transaction<'_>,
        uid: &str,
        t: f64,
        step: Option<f64>,
        values: &[(String, f64)],
    ) -> Result<(), StoreError> {
        let mut ins = tx.prepare_cached(
            "INSERT INTO metrics (run_uid, t, step, name, value) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut last = tx.prepare_cached(
            "INSERT INTO last_metrics (run_uid, name, value, t) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (run_uid, name) DO UPDATE SET value = excluded.value, t = excluded.t",
        )?;
        for (name, value) in values {
            // SQLite has no NaN: it is stored as NULL and read back as NaN (infinities are kept).
            let v = (!value.is_nan()).then_some(*value);
            ins.execute(params![uid, t, step, name, v])?;
            last.execute(params![uid, name, v, t])?;
        }
        tx.execute(
            "UPDATE runs SET updated_at = MAX(updated_at, ?2) WHERE uid = ?1",
            params![uid, t],
        )?;
        Ok(())
    }

    pub fn sync_point(
        tx: &Transaction<'_>,
        cluster: &str,
    ) -> Result<Option<(String, u64)>, StoreError> {
        Ok(tx
            .query_row(
                "SELECT epoch, last_seq FROM cluster_sync WHERE cluster = ?1",
                [cluster],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    /// Mark every queued or running run of a cluster lost; returns what changed.
    pub fn lose_confirmed_runs(
        tx: &Transaction<'_>,
        cluster: &str,
        now: f64,
    ) -> Result<Vec<(String, String, RunState)>, StoreError> {
        let runs: Vec<RunRow> = {
            let mut stmt = tx.prepare(&format!(
                "{RUN_SELECT} WHERE cluster = ?1 AND state IN ('queued','running')"
            ))?;
            let rows = stmt.query_map([cluster], run_from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for run in runs {
            let state = RunState::Lost {
                at: now,
                reason: "the agent's journal was reset (its workdir was removed?); this run can no longer be followed"
                    .into(),
            };
            set_state(tx, &run, &state, state.reason().as_deref())?;
            out.push((run.uid, run.exp_id, state));
        }
        Ok(out)
    }

    /// Every queued or running run (of any cluster) becomes lost with `reason`.
    pub fn lose_runs_in_flight(
        tx: &Transaction<'_>,
        reason: &str,
        now: f64,
    ) -> Result<Vec<(String, String, RunState)>, StoreError> {
        let runs: Vec<RunRow> = {
            let mut stmt =
                tx.prepare(&format!("{RUN_SELECT} WHERE state IN ('queued','running')"))?;
            let rows = stmt.query_map([], run_from_row)?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for run in runs {
            let state = RunState::Lost {
                at: now,
                reason: reason.to_string(),
            };
            set_state(tx, &run, &state, state.reason().as_deref())?;
            out.push((run.uid, run.exp_id, state));
        }
        Ok(out)
    }

    pub fn set_sync_point(
        tx: &Transaction<'_>,
        cluster: &str,
        epoch: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO cluster_sync (cluster, epoch, last_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (cluster) DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq",
            params![cluster, epoch, seq as i64],
        )?;
        Ok(())
    }

    #[derive(Debug, Clone, Copy)]
    pub enum RunColumn {
        JobId,
        Node,
        RunDir,
        EnvJson,
        CpuPercent,
        RssBytes,
        AbortSent,
        StderrTail,
        FiredJson,
    }

    impl RunColumn {
        fn name(self) -> &'static str {
            match self {
                RunColumn::JobId => "job_id",
                RunColumn::Node => "node",
                RunColumn::RunDir => "run_dir",
                RunColumn::EnvJson => "env_json",
                RunColumn::CpuPercent => "cpu_percent",
                RunColumn::RssBytes => "rss_bytes",
                RunColumn::AbortSent => "abort_sent",
                RunColumn::StderrTail => "stderr_tail",
                RunColumn::FiredJson => "fired_json",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("neronet-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Store::open(&dir.join("state.db")).unwrap()
    }

    /// Regression: a workbook with a duplicated id (an invalid row, reported as such) made
    /// `note_rows` insert the id twice and fail the whole command with a UNIQUE error.
    #[test]
    fn note_rows_survives_a_duplicated_id() {
        let mut s = temp_store("dup");
        let rows = vec![("12".to_string(), 3, 1u64), ("12".to_string(), 7, 2u64)];
        s.note_rows(&rows, 10.0).unwrap();
        assert_eq!(s.experiments().unwrap().len(), 1);
    }

    /// Regression: two commands on a fresh project (`neroman start 1-15 & neroman start 5-20`)
    /// failed with `database is locked` or `table experiments already exists`: the switch to WAL
    /// gave up on SQLITE_BUSY and both connections ran the first migration.
    #[test]
    fn concurrent_first_opens_of_a_fresh_store_all_succeed() {
        const THREADS: usize = 8;
        for round in 0..20 {
            let dir = std::env::temp_dir()
                .join(format!("neronet-store-race-{}-{round}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let path = dir.join("state.db");
            let barrier = std::sync::Barrier::new(THREADS);
            let results: Vec<Result<(), String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|i| {
                        let (path, barrier) = (&path, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            let mut store =
                                Store::open(path).map_err(|e| crate::util::error_chain(&e))?;
                            store
                                .note_rows(&[(format!("{i}"), i as u32 + 2, 1)], 1.0)
                                .map_err(|e| crate::util::error_chain(&e))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for r in &results {
                assert!(r.is_ok(), "round {round}: {r:?}");
            }
            let store = Store::open(&path).unwrap();
            let version: i64 = store
                .conn()
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, MIGRATIONS.len() as i64);
            let mode: String = store
                .conn()
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            assert_eq!(store.experiments().unwrap().len(), THREADS);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn row_change_time_moves_only_when_the_row_changes() {
        let mut s = temp_store("tmod");
        s.note_rows(&[("1".into(), 2, 111)], 10.0).unwrap();
        s.note_rows(&[("1".into(), 2, 111)], 20.0).unwrap();
        assert_eq!(s.experiments().unwrap()["1"].row_changed_at, 10.0);
        // Moving the row (sorting the sheet) is not a change of its content.
        s.note_rows(&[("1".into(), 5, 111)], 30.0).unwrap();
        assert_eq!(s.experiments().unwrap()["1"].row_changed_at, 10.0);
        s.note_rows(&[("1".into(), 5, 222)], 40.0).unwrap();
        let e = &s.experiments().unwrap()["1"];
        assert_eq!((e.row_changed_at, e.first_seen), (40.0, 10.0));
    }
}
