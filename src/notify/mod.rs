//! Alerts by e-mail and chat (SPEC §7, docs/NOTIFY.md).
//!
//! Theory of operation. The watcher's loop calls [`Notifier::tick`] every second. In one store
//! transaction a tick (1) turns the state changes after the notifier's mark into alerts, one per
//! channel that takes them, and moves the mark; (2) every [`RULES_EVERY`] evaluates the daemon
//! rules over the runs in flight (`stalled`, `queued`, each `when:`), each firing once per run;
//! (3) composes the alerts that are due into one outbox message per channel: kinds in
//! `immediate:` at once, the others at the end of their digest window, and never a kind twice
//! within one window. So an alert is neither lost nor doubled by a crash at any line.
//!
//! A sender thread with its own store connection sends what the outbox holds, marks each
//! message sent right after the server took it (its Message-ID is derived from the outbox id),
//! and retries failures with backoff (5 s doubling to 10 min); a permanent refusal or
//! [`MAX_ATTEMPTS`] failures make it undeliverable, logged with the server's answer. The loop
//! never waits for a server. Only the watcher sends alerts: CLI commands store state changes,
//! and the next watcher turns them into alerts.

pub mod channel;
pub mod chat;
pub mod compose;
pub mod email;
pub mod outbox;

use crate::project::{Experiments, Project};
use crate::store::{Store, StoreError};
use channel::{Channel, Kind, Target};
use compose::{Item, Origin};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the daemon rules look at the runs in flight.
pub const RULES_EVERY: Duration = Duration::from_secs(2);
/// Failures before a message is given up.
pub const MAX_ATTEMPTS: i64 = 8;
/// The first retry waits this long, doubling up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: f64 = 5.0;
pub const MAX_BACKOFF: f64 = 600.0;
/// Key metrics shown per run.
const METRICS_SHOWN: usize = 4;

/// A send that did not work: `permanent` when trying again cannot help (a 5xx answer, a
/// setting that is wrong); `answer` says why in the server's words.
#[derive(Debug, Clone)]
pub struct SendError {
    pub permanent: bool,
    pub answer: String,
}

/// What one channel says it is, for logs and `notify --test`.
pub fn describe(ch: &Channel) -> String {
    match &ch.target {
        Target::Email(e) => email::describe(e),
        Target::Chat(c) => chat::describe(&ch.key, c),
    }
}

/// The Message-ID of an outbox entry: the same on every try, unique per project and host.
pub fn message_id(origin: &Origin, outbox_id: i64) -> String {
    let project = crate::store::fnv(origin.project_dir.as_bytes());
    format!("<neronet.{outbox_id}.{project:016x}@{}>", origin.host)
}

/// Send one message through one channel now.
pub fn send(
    ch: &Channel,
    subject: &str,
    body: &str,
    html: Option<&str>,
    message_id: &str,
) -> Result<(), SendError> {
    match &ch.target {
        Target::Email(e) => {
            let msg = email::message(e, subject, body, html, message_id)?;
            email::send(e, &msg)
        }
        Target::Chat(c) => chat::send(&ch.key, c, subject, body),
    }
}

pub fn origin(project_dir: &Path) -> Origin {
    let dir = std::fs::canonicalize(project_dir).unwrap_or_else(|_| project_dir.to_path_buf());
    Origin {
        project: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string()),
        project_dir: dir.display().to_string(),
        host: channel::hostname(),
    }
}

/// The watcher's alerting: configured channels, the rules' clock, the sender thread.
pub struct Notifier {
    channels: Arc<Vec<Channel>>,
    origin: Origin,
    rules_at: Option<Instant>,
    sender: Option<SenderThread>,
}

impl Notifier {
    /// None when neither `email:` nor `chat:` is configured.
    pub fn start(project: &Project) -> Option<Notifier> {
        let channels = match channel::channels(&project.config) {
            Ok(c) if c.is_empty() => return None,
            Ok(c) => c,
            // Checked when the config was loaded: cannot happen, but never a crash.
            Err(e) => {
                tracing::error!("alerts: neronet.yaml: {e}; no alerts are sent");
                return None;
            }
        };
        let channels = Arc::new(channels);
        let origin = origin(&project.dir);
        for ch in channels.iter() {
            tracing::info!("alerts: {}", describe(ch));
        }
        let db = project.dir.join(crate::project::STATE_DIR).join("state.db");
        let sender = match SenderThread::start(db, channels.clone(), origin.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("alerts: cannot start the sender thread: {e}");
                None
            }
        };
        Some(Notifier {
            channels,
            origin,
            rules_at: None,
            sender,
        })
    }

    /// Alerts from what happened since the last tick, and messages from the alerts that are due.
    pub fn tick(&mut self, store: &mut Store, exps: Option<&Experiments>) {
        let rules_due = self.rules_at.is_none_or(|t| t.elapsed() >= RULES_EVERY);
        if rules_due {
            self.rules_at = Some(Instant::now());
        }
        match self.step(store, exps, rules_due, nerokid::report::now()) {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!("alerts: {n} message(s) queued");
                if let Some(s) = &self.sender {
                    s.nudge();
                }
            }
            Err(e) => tracing::error!("alerts: state store: {}", crate::util::error_chain(&e)),
        }
    }

    /// One transaction: alerts from changes (mark moved), daemon rules, messages composed.
    /// Returns how many messages were queued.
    pub fn step(
        &self,
        store: &mut Store,
        exps: Option<&Experiments>,
        rules_due: bool,
        now: f64,
    ) -> Result<usize, StoreError> {
        // Most ticks have nothing to do: look before taking the write lock.
        let conn = store.conn();
        let rules_due = rules_due && outbox::any_in_flight(conn)?;
        if !rules_due
            && outbox::mark(conn)?.is_some_and(|m| outbox::last_seq(conn).is_ok_and(|s| s <= m))
            && !outbox::any_pending(conn)?
        {
            return Ok(0);
        }
        let tx = store.transaction()?;
        let mark = match outbox::mark(&tx)? {
            Some(m) => m,
            None => {
                // The first watcher with alerts: what happened before is history.
                let m = outbox::last_seq(&tx)?;
                outbox::set_mark(&tx, m)?;
                m
            }
        };
        let changes = outbox::changes_after(&tx, mark)?;
        for c in &changes {
            let run = crate::store::run_in(&tx, &c.run_uid)?;
            let Some(kind) = kind_of_change(&c.state, c.detail.as_deref(), run.as_ref()) else {
                continue;
            };
            for ch in self.channels.iter().filter(|ch| ch.rules.takes(kind)) {
                outbox::add_alert(
                    &tx,
                    &ch.key,
                    kind.as_str(),
                    &c.run_uid,
                    &c.exp_id,
                    None,
                    c.detail.as_deref(),
                    c.at,
                )?;
            }
        }
        if let Some(last) = changes.last() {
            outbox::set_mark(&tx, last.seq)?;
        }
        if rules_due {
            self.daemon_rules(&tx, exps, now)?;
        }
        let mut queued = 0;
        for ch in self.channels.iter() {
            if self.compose(&tx, ch, now)?.is_some() {
                queued += 1;
            }
        }
        tx.commit()?;
        Ok(queued)
    }

    fn daemon_rules(
        &self,
        tx: &rusqlite::Transaction<'_>,
        exps: Option<&Experiments>,
        now: f64,
    ) -> Result<(), StoreError> {
        let runs = crate::store::active_runs_in(tx)?;
        for run in &runs {
            let silent = crate::select::silent_secs(run, now);
            let waiting = crate::select::waiting_secs(run, now);
            let mut metrics: Option<BTreeMap<String, f64>> = None;
            let mut seen: Option<Option<crate::store::ExperimentRow>> = None;
            for ch in self.channels.iter() {
                let r = &ch.rules;
                if let (Some(limit), Some(s)) = (r.stalled, silent) {
                    if s > limit {
                        let detail = format!("no output for {}", crate::util::human_duration(s));
                        outbox::add_alert(
                            tx,
                            &ch.key,
                            Kind::Stalled.as_str(),
                            &run.uid,
                            &run.exp_id,
                            Some("stalled"),
                            Some(&detail),
                            now,
                        )?;
                    }
                }
                if let (Some(limit), Some(w)) = (r.queued_over, waiting) {
                    if w > limit {
                        let detail =
                            format!("waiting for {} to start", crate::util::human_duration(w));
                        outbox::add_alert(
                            tx,
                            &ch.key,
                            Kind::Queued.as_str(),
                            &run.uid,
                            &run.exp_id,
                            Some("queued"),
                            Some(&detail),
                            now,
                        )?;
                    }
                }
                if r.when.is_empty() {
                    continue;
                }
                let Some(exp) = exps.and_then(|e| e.get(&run.exp_id)) else {
                    continue;
                };
                let m = match &metrics {
                    Some(m) => m,
                    None => {
                        let all = outbox::last_metrics(tx, &run.uid, usize::MAX >> 1)?;
                        metrics.insert(all.into_iter().collect())
                    }
                };
                if seen.is_none() {
                    seen = Some(outbox::experiment(tx, &run.exp_id)?);
                }
                let cand = crate::select::Candidate {
                    exp,
                    run: Some(run),
                    metrics: Some(m),
                    seen: seen.as_ref().and_then(Option::as_ref),
                    now,
                };
                for (i, (text, expr)) in r.when.iter().enumerate() {
                    let key = format!("when[{i}]");
                    if outbox::fired(tx, &ch.key, &run.uid, &key)? {
                        continue;
                    }
                    if expr.evaluate_rule(&cand, &mut |_| {}) == Some(true) {
                        outbox::add_alert(
                            tx,
                            &ch.key,
                            Kind::When.as_str(),
                            &run.uid,
                            &run.exp_id,
                            Some(&key),
                            Some(&format!("when {text}")),
                            now,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One message of the channel's alerts that are due, if any: returns its outbox id.
    fn compose(
        &self,
        tx: &rusqlite::Transaction<'_>,
        ch: &Channel,
        now: f64,
    ) -> Result<Option<i64>, StoreError> {
        let pending = outbox::pending(tx, &ch.key)?;
        if pending.is_empty() {
            return Ok(None);
        }
        let digest = ch.rules.digest;
        // Per kind: the first alert waiting, and whether its window is open.
        let mut first: BTreeMap<String, f64> = BTreeMap::new();
        for p in &pending {
            let f = first.entry(p.kind.clone()).or_insert(p.at);
            *f = f.min(p.at);
        }
        let mut open: BTreeSet<String> = BTreeSet::new();
        let mut any_due = false;
        for (kind, at) in &first {
            let window_open = match outbox::last_sent(tx, &ch.key, kind)? {
                Some(last) => now >= last + digest,
                None => true,
            };
            if !window_open {
                continue;
            }
            open.insert(kind.clone());
            let immediate = Kind::parse(kind).is_some_and(|k| ch.rules.immediate.contains(&k));
            if immediate || now >= at + digest {
                any_due = true;
            }
        }
        if !any_due {
            return Ok(None);
        }
        // Everything whose window is open goes along: one message, not one per kind.
        let chosen: Vec<&outbox::Pending> =
            pending.iter().filter(|p| open.contains(&p.kind)).collect();
        let mut items = Vec::with_capacity(chosen.len());
        for p in &chosen {
            let Some(kind) = Kind::parse(&p.kind) else {
                continue;
            };
            items.push(Item {
                kind,
                exp_id: p.exp_id.clone(),
                detail: p.detail.clone(),
                run: crate::store::run_in(tx, &p.run_uid)?,
                metrics: outbox::last_metrics(tx, &p.run_uid, METRICS_SHOWN)?,
            });
        }
        let subject = compose::subject(&items, &self.origin);
        let (body, html) = match &ch.target {
            Target::Email(_) => (
                compose::text(&items, &self.origin, now),
                Some(compose::html(&items, &self.origin, now)),
            ),
            Target::Chat(_) => (compose::short(&items, now), None),
        };
        let kinds: Vec<String> = open.into_iter().collect();
        let ids: Vec<i64> = chosen.iter().map(|p| p.id).collect();
        let id = outbox::enqueue(
            tx,
            &outbox::NewMessage {
                channel: &ch.key,
                kinds: &kinds,
                subject: &subject,
                body: &body,
                html: html.as_deref(),
                alerts: &ids,
                now,
            },
        )?;
        tracing::info!("alerts: {}: queued message {id}: {subject}", ch.key);
        Ok(Some(id))
    }

    /// Stop the sender thread (a send in progress ends first, within its timeout).
    pub fn stop(mut self) {
        if let Some(s) = self.sender.take() {
            s.stop();
        }
    }
}

/// The alert a state change raises, if any (only ending states do).
pub fn kind_of_change(
    state: &str,
    detail: Option<&str>,
    run: Option<&crate::store::RunRow>,
) -> Option<Kind> {
    Some(match state {
        "crashed" => Kind::Crashed,
        "aborted" => {
            let by_rule = run.is_some_and(|r| r.fired.is_some())
                || detail.is_some_and(|d| d.starts_with("rule "));
            if by_rule {
                Kind::Rule
            } else {
                Kind::Aborted
            }
        }
        "timeout" => Kind::Timeout,
        "lost" => Kind::Lost,
        "finished" => Kind::Finished,
        _ => return None,
    })
}

enum Wake {
    Nudge,
    Stop,
}

/// The thread that empties the outbox.
struct SenderThread {
    tx: mpsc::Sender<Wake>,
    join: std::thread::JoinHandle<()>,
}

impl SenderThread {
    fn start(
        db: PathBuf,
        channels: Arc<Vec<Channel>>,
        origin: Origin,
    ) -> std::io::Result<SenderThread> {
        let (tx, rx) = mpsc::channel();
        let join = std::thread::Builder::new()
            .name("alerts".into())
            .spawn(move || sender_loop(&db, &channels, &origin, &rx))?;
        Ok(SenderThread { tx, join })
    }

    fn nudge(&self) {
        let _ = self.tx.send(Wake::Nudge);
    }

    fn stop(self) {
        let _ = self.tx.send(Wake::Stop);
        let _ = self.join.join();
    }
}

/// The wait before try `attempts + 1` (after `attempts` failures).
pub fn backoff(attempts: i64) -> f64 {
    let n = attempts.clamp(1, 30) - 1;
    (FIRST_BACKOFF * 2f64.powi(n as i32)).min(MAX_BACKOFF)
}

fn sender_loop(db: &Path, channels: &[Channel], origin: &Origin, rx: &mpsc::Receiver<Wake>) {
    let store = match Store::open(db) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                "alerts: cannot open the state store: {}; no alerts are sent",
                crate::util::error_chain(&e)
            );
            return;
        }
    };
    loop {
        let now = nerokid::report::now();
        match outbox::due(store.conn(), now) {
            Ok(list) => {
                for m in list {
                    if matches!(rx.try_recv(), Ok(Wake::Stop)) {
                        return;
                    }
                    deliver(&store, channels, origin, &m);
                }
            }
            Err(e) => tracing::error!("alerts: state store: {}", crate::util::error_chain(&e)),
        }
        // Until the next retry is due, a nudge (new messages), or a look every 5 s.
        let now = nerokid::report::now();
        let wait = match outbox::next_try(store.conn()) {
            Ok(Some(t)) => (t - now).clamp(0.05, 5.0),
            _ => 5.0,
        };
        match rx.recv_timeout(Duration::from_secs_f64(wait)) {
            Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(Wake::Nudge) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

fn deliver(store: &Store, channels: &[Channel], origin: &Origin, m: &outbox::Queued) {
    let conn = store.conn();
    let Some(ch) = channels.iter().find(|c| c.key == m.channel) else {
        let why = format!("{} is no longer configured", m.channel);
        tracing::error!("alerts: message {} undeliverable: {why}", m.id);
        note(outbox::mark_undeliverable(conn, m.id, &why));
        return;
    };
    let mid = message_id(origin, m.id);
    match send(ch, &m.subject, &m.body, m.html.as_deref(), &mid) {
        Ok(()) => {
            // Right after the server's yes: a crash here, before the note, is the one way a
            // message goes twice (with the same Message-ID).
            let mut tries = 0;
            loop {
                match outbox::mark_sent(conn, m.id, nerokid::report::now()) {
                    Ok(()) => break,
                    Err(e) if tries < 5 => {
                        tries += 1;
                        tracing::warn!("alerts: noting message {} as sent: {e}; again", m.id);
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => {
                        tracing::error!(
                            "alerts: message {} was sent but cannot be noted as sent: {}",
                            m.id,
                            crate::util::error_chain(&e)
                        );
                        break;
                    }
                }
            }
            tracing::info!(
                "alerts: sent message {} by {}: {}",
                m.id,
                describe(ch),
                m.subject
            );
        }
        Err(e) if e.permanent || m.attempts + 1 >= MAX_ATTEMPTS => {
            let tries = match m.attempts + 1 {
                1 => "1 try".to_string(),
                n => format!("{n} tries"),
            };
            tracing::error!(
                "alerts: message {} by {} undeliverable after {tries}: {}",
                m.id,
                describe(ch),
                e.answer
            );
            note(outbox::mark_undeliverable(conn, m.id, &e.answer));
        }
        Err(e) => {
            let wait = backoff(m.attempts + 1);
            tracing::warn!(
                "alerts: message {} by {} failed (try {}): {}; trying again in {}",
                m.id,
                describe(ch),
                m.attempts + 1,
                e.answer,
                crate::util::human_duration(wait)
            );
            note(outbox::mark_failed(
                conn,
                m.id,
                &e.answer,
                nerokid::report::now() + wait,
            ));
        }
    }
}

fn note(r: Result<(), StoreError>) {
    if let Err(e) = r {
        tracing::error!("alerts: state store: {}", crate::util::error_chain(&e));
    }
}

/// `alerts: 2 undeliverable (last: <the server's answer>)`, for `neroman status`; None when
/// every message went out.
/// `alerts: 2 waiting to be sent, the last try failed: <answer> (next try in 40s)`: said by
/// `neroman status` while the watcher retries, long before a message is given up.
pub fn retrying_line(store: &Store, now: f64) -> Option<String> {
    match outbox::retrying(store.conn()) {
        Ok(Some((n, last, next))) => Some(format!(
            "alerts: {n} waiting to be sent, the last try failed: {last} (next try in {})",
            crate::util::human_duration(next - now)
        )),
        _ => None,
    }
}

pub fn undeliverable_line(store: &Store) -> Option<String> {
    match outbox::undeliverable(store.conn()) {
        Ok(Some((n, last))) => Some(format!("alerts: {n} undeliverable (last: {last})")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RunState;
    use crate::store::NewRun;

    fn notifier(yaml: &str) -> Notifier {
        let cfg = crate::config::Config::parse(yaml, Path::new("n.yaml")).unwrap();
        Notifier {
            channels: Arc::new(channel::channels(&cfg).unwrap()),
            origin: Origin {
                project: "p".into(),
                project_dir: "/x/p".into(),
                host: "h".into(),
            },
            rules_at: None,
            sender: None,
        }
    }

    fn end(store: &mut Store, id: &str, state: RunState) {
        let params = BTreeMap::new();
        let run = store
            .new_run(
                &NewRun {
                    exp_id: id,
                    cluster: "local",
                    command: "true",
                    params: &params,
                },
                true,
                |_| "{}".into(),
                state.at() - 1.0,
            )
            .unwrap()
            .unwrap();
        let tx = store.transaction().unwrap();
        crate::store::tx::set_state(&tx, &run, &state, state.reason().as_deref()).unwrap();
        tx.commit().unwrap();
    }

    fn crashed(at: f64) -> RunState {
        RunState::Crashed {
            at,
            started_at: Some(at - 1.0),
            exit_code: Some(1),
            signal: None,
            reason: "exit code 1".into(),
        }
    }

    fn subjects(store: &Store) -> Vec<String> {
        let mut stmt = store
            .conn()
            .prepare("SELECT subject FROM outbox ORDER BY id")
            .unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// A second crash inside the window waits for the window's end and goes out with the
    /// finishes waiting for their digest, in one message.
    #[test]
    fn one_message_per_kind_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        end(&mut store, "0", crashed(50.0));
        let n = notifier("email: {to: a@b.c, digest: 10s}");
        // What happened before the first notifier is history.
        assert_eq!(n.step(&mut store, None, false, 60.0).unwrap(), 0);
        end(&mut store, "1", crashed(100.0));
        assert_eq!(
            n.step(&mut store, None, false, 100.0).unwrap(),
            1,
            "at once"
        );
        end(
            &mut store,
            "2",
            RunState::Finished {
                at: 101.0,
                started_at: Some(100.0),
            },
        );
        assert_eq!(n.step(&mut store, None, false, 101.0).unwrap(), 0, "digest");
        end(&mut store, "3", crashed(105.0));
        for t in [105.0, 107.0, 109.9] {
            assert_eq!(n.step(&mut store, None, false, t).unwrap(), 0, "{t}");
        }
        assert_eq!(n.step(&mut store, None, false, 110.0).unwrap(), 1);
        assert_eq!(
            subjects(&store),
            [
                "[neronet] 1 crashed — p",
                "[neronet] 1 crashed, 1 finished — p"
            ]
        );
        assert_eq!(n.step(&mut store, None, false, 200.0).unwrap(), 0);
    }

    #[test]
    fn on_filters_ending_states_and_rule_aborts_are_their_own_kind() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let n = notifier("email: {to: a@b.c, on: [aborted], immediate: [rule, aborted]}");
        n.step(&mut store, None, false, 1.0).unwrap();
        end(&mut store, "1", crashed(10.0));
        end(
            &mut store,
            "2",
            RunState::Aborted {
                at: 10.0,
                started_at: Some(9.0),
                reason: "rule loss>2 fired: loss=3.1, runtime=45s".into(),
            },
        );
        assert_eq!(n.step(&mut store, None, false, 10.0).unwrap(), 1);
        assert_eq!(subjects(&store), ["[neronet] 1 stopped by a rule — p"]);
    }

    /// The sender gives a message up after MAX_ATTEMPTS failures, keeping the answer.
    #[test]
    fn the_last_failure_makes_a_message_undeliverable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let n = notifier(&format!(
            "email: {{to: a@b.c, smtp: {{host: 127.0.0.1, port: {port}, tls: none}}}}"
        ));
        store
            .conn()
            .execute(
                "INSERT INTO outbox (channel, kinds, subject, body, created_at, next_try, attempts)
                 VALUES ('email', 'crashed', 's', 'b', 0, 0, ?1)",
                [MAX_ATTEMPTS - 2],
            )
            .unwrap();
        for round in 0..2 {
            let due = outbox::due(store.conn(), 1e12).unwrap();
            assert_eq!(due.len(), 1, "round {round}");
            deliver(&store, &n.channels, &n.origin, &due[0]);
        }
        assert!(outbox::due(store.conn(), 1e12).unwrap().is_empty());
        let line = undeliverable_line(&store).unwrap();
        assert!(
            line.starts_with("alerts: 1 undeliverable (last: ") && line.contains("refused"),
            "{line}"
        );
    }

    #[test]
    fn backoff_doubles_to_ten_minutes() {
        let waits: Vec<f64> = (1..=9).map(backoff).collect();
        assert_eq!(
            waits,
            [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0]
        );
    }
}
