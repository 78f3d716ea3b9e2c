//! The notifier's tables in the state store (migration 4): alerts, the outbox of composed
//! messages, the last message time per kind and channel, the mark over the state changes.
//! Every write that must not be lost or doubled happens inside the caller's transaction.

use crate::store::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// `daemon_meta` key: the last state change turned into alerts.
pub const MARK_KEY: &str = "notify_mark";

/// A state change after the mark.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: i64,
    pub run_uid: String,
    pub exp_id: String,
    pub state: String,
    pub detail: Option<String>,
    pub at: f64,
}

pub fn mark(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(crate::store::daemon_value_in(conn, MARK_KEY)?.and_then(|v| v.parse().ok()))
}

pub fn set_mark(tx: &Transaction<'_>, seq: i64) -> Result<(), StoreError> {
    crate::store::set_daemon_value_in(tx, MARK_KEY, &seq.to_string())
}

pub fn last_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT IFNULL(MAX(seq), 0) FROM state_changes", [], |r| {
            r.get(0)
        })?,
    )
}

/// State changes after `seq`, oldest first (at most 1000: the rest next time).
pub fn changes_after(conn: &Connection, seq: i64) -> Result<Vec<Change>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.seq, c.run_uid, r.exp_id, c.state, c.detail, c.at FROM state_changes c
         JOIN runs r ON r.uid = c.run_uid WHERE c.seq > ?1 ORDER BY c.seq LIMIT 1000",
    )?;
    let rows = stmt.query_map([seq], |r| {
        Ok(Change {
            seq: r.get(0)?,
            run_uid: r.get(1)?,
            exp_id: r.get(2)?,
            state: r.get(3)?,
            detail: r.get(4)?,
            at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When an experiment's row last changed and was first seen (the `tmod` and `age` fields).
pub fn experiment(
    conn: &Connection,
    id: &str,
) -> Result<Option<crate::store::ExperimentRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, row_changed_at, first_seen FROM experiments WHERE id = ?1",
            [id],
            |r| {
                Ok(crate::store::ExperimentRow {
                    id: r.get(0)?,
                    row_changed_at: r.get(1)?,
                    first_seen: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// The last values of up to `n` metrics of a run that are numbers, by name.
pub fn last_metrics(
    conn: &Connection,
    uid: &str,
    n: usize,
) -> Result<Vec<(String, f64)>, StoreError> {
    Ok(crate::store::run_last_metrics_in(conn, uid)?
        .into_iter()
        .filter(|(_, v, _)| !v.is_nan())
        .take(n)
        .map(|(name, v, _)| (name, v))
        .collect())
}

/// Record an alert; a daemon rule's (`rule` set) only once per channel and run. True when new.
#[allow(clippy::too_many_arguments)]
pub fn add_alert(
    tx: &Transaction<'_>,
    channel: &str,
    kind: &str,
    run_uid: &str,
    exp_id: &str,
    rule: Option<&str>,
    detail: Option<&str>,
    at: f64,
) -> Result<bool, StoreError> {
    let n = tx.execute(
        "INSERT OR IGNORE INTO alerts (channel, kind, run_uid, exp_id, rule, detail, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![channel, kind, run_uid, exp_id, rule, detail, at],
    )?;
    Ok(n > 0)
}

/// Whether this daemon rule already fired for this run on this channel.
pub fn fired(
    conn: &Connection,
    channel: &str,
    run_uid: &str,
    rule: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM alerts WHERE channel = ?1 AND run_uid = ?2 AND rule = ?3",
            params![channel, run_uid, rule],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// An alert not yet in a message.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub kind: String,
    pub run_uid: String,
    pub exp_id: String,
    pub detail: Option<String>,
    pub at: f64,
}

pub fn pending(conn: &Connection, channel: &str) -> Result<Vec<Pending>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, run_uid, exp_id, detail, at FROM alerts
         WHERE channel = ?1 AND message IS NULL ORDER BY id",
    )?;
    let rows = stmt.query_map([channel], |r| {
        Ok(Pending {
            id: r.get(0)?,
            kind: r.get(1)?,
            run_uid: r.get(2)?,
            exp_id: r.get(3)?,
            detail: r.get(4)?,
            at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether any run is in flight (the daemon rules have something to look at).
pub fn any_in_flight(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM runs WHERE state IN ('submitted','queued','running') LIMIT 1",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Whether any alert waits to be put into a message.
pub fn any_pending(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM alerts WHERE message IS NULL LIMIT 1",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// When a message with this kind last went out on this channel.
pub fn last_sent(conn: &Connection, channel: &str, kind: &str) -> Result<Option<f64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT last_at FROM notify_windows WHERE channel = ?1 AND kind = ?2",
            params![channel, kind],
            |r| r.get(0),
        )
        .optional()?)
}

/// A composed message.
pub struct NewMessage<'a> {
    pub channel: &'a str,
    pub kinds: &'a [String],
    pub subject: &'a str,
    pub body: &'a str,
    pub html: Option<&'a str>,
    pub alerts: &'a [i64],
    pub now: f64,
}

/// Put a message into the outbox, tie its alerts to it and start its kinds' windows.
pub fn enqueue(tx: &Transaction<'_>, m: &NewMessage<'_>) -> Result<i64, StoreError> {
    tx.execute(
        "INSERT INTO outbox (channel, kinds, subject, body, html, created_at, next_try)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![
            m.channel,
            m.kinds.join(","),
            m.subject,
            m.body,
            m.html,
            m.now
        ],
    )?;
    let id = tx.last_insert_rowid();
    {
        let mut tie = tx.prepare_cached("UPDATE alerts SET message = ?1 WHERE id = ?2")?;
        for a in m.alerts {
            tie.execute(params![id, a])?;
        }
        let mut window = tx.prepare_cached(
            "INSERT OR REPLACE INTO notify_windows (channel, kind, last_at) VALUES (?1, ?2, ?3)",
        )?;
        for k in m.kinds {
            window.execute(params![m.channel, k, m.now])?;
        }
    }
    Ok(id)
}

/// A message waiting to be sent.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub channel: String,
    pub subject: String,
    pub body: String,
    pub html: Option<String>,
    pub attempts: i64,
}

/// Messages due now (not sent, not given up, their next try reached), oldest first.
pub fn due(conn: &Connection, now: f64) -> Result<Vec<Queued>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, channel, subject, body, html, attempts FROM outbox
         WHERE sent_at IS NULL AND undeliverable IS NULL AND next_try <= ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([now], |r| {
        Ok(Queued {
            id: r.get(0)?,
            channel: r.get(1)?,
            subject: r.get(2)?,
            body: r.get(3)?,
            html: r.get(4)?,
            attempts: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When the next message waiting is due.
pub fn next_try(conn: &Connection) -> Result<Option<f64>, StoreError> {
    Ok(conn.query_row(
        "SELECT MIN(next_try) FROM outbox WHERE sent_at IS NULL AND undeliverable IS NULL",
        [],
        |r| r.get(0),
    )?)
}

pub fn mark_sent(conn: &Connection, id: i64, now: f64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE outbox SET sent_at = ?2, attempts = attempts + 1 WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

pub fn mark_failed(
    conn: &Connection,
    id: i64,
    error: &str,
    next_try: f64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_try = ?3 WHERE id = ?1",
        params![id, error, next_try],
    )?;
    Ok(())
}

pub fn mark_undeliverable(conn: &Connection, id: i64, answer: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, undeliverable = ?2 WHERE id = ?1",
        params![id, answer],
    )?;
    Ok(())
}

/// How many messages were given up, and the last server answer: for `neroman status`
/// (`alerts: 2 undeliverable (last: 550 ...)`). None when none was.
pub fn undeliverable(conn: &Connection) -> Result<Option<(i64, String)>, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE undeliverable IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    if n == 0 {
        return Ok(None);
    }
    let last: String = conn.query_row(
        "SELECT undeliverable FROM outbox WHERE undeliverable IS NOT NULL ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    Ok(Some((n, last)))
}

/// Messages not sent yet whose last try failed: how many, the last failure's words, and the
/// soonest next try (unix seconds).
pub fn retrying(conn: &Connection) -> Result<Option<(i64, String, f64)>, StoreError> {
    let (n, next): (i64, Option<f64>) = conn.query_row(
        "SELECT COUNT(*), MIN(next_try) FROM outbox
         WHERE sent_at IS NULL AND undeliverable IS NULL AND attempts > 0",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if n == 0 {
        return Ok(None);
    }
    let last: Option<String> = conn.query_row(
        "SELECT last_error FROM outbox
         WHERE sent_at IS NULL AND undeliverable IS NULL AND attempts > 0
         ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    Ok(Some((n, last.unwrap_or_default(), next.unwrap_or(0.0))))
}
