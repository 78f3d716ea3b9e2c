//! Watching the experiments workbook: tells the caller when its *content* changed.
//!
//! Spreadsheet programs save by replacing the file (write a temp file, rename it in: a new inode),
//! so the workbook's directory is watched, non-recursively, and only events about the workbook's own
//! name are kept. Raw events go through notify-debouncer-full (which also pairs rename halves);
//! each debounced batch is filtered ([`is_ignored_name`], and Access events other than
//! `Close(Write)` are dropped, so reading the workbook — ours or the caller's — never re-triggers);
//! then the file is read, checked to open as a workbook, and hashed. A [`WatchEvent::Changed`] goes
//! out only when the hash differs from the last content accepted. A file that does not open (a
//! half-written zip, a file renamed away mid-save) is read again with backoff and never emitted as a
//! change; if it stays broken, one [`WatchEvent::Broken`] says so.
//!
//! On file systems that deliver no inotify events for changes made elsewhere (NFS, SMB/CIFS, FUSE
//! sync folders, 9p) the directory is polled instead, with content comparison. That is chosen from
//! the directory's `statfs` type, when the inotify watcher cannot be created, or by setting
//! [`WatchOptions::poll`].

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, PollWatcher, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{
    new_debouncer_opt, DebounceEventResult, DebouncedEvent, Debouncer, FileIdMap, NoCache,
};

/// How the workbook is watched.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Debounce window: an event is handled once it is this old (notify-debouncer-full), so a
    /// save's burst of events is read once, after the burst.
    pub debounce: Duration,
    /// `Some(interval)` forces polling the directory every `interval` (content compared), for a
    /// file system whose changes inotify does not see and that [`start`](WorkbookWatcher::start)
    /// did not recognise. `None`: inotify, unless the file system is known to need polling
    /// (then [`DEFAULT_POLL`]).
    pub poll: Option<Duration>,
    /// How long a workbook that does not open is read again (100 ms, 200 ms, 400 ms, ... apart)
    /// before one [`WatchEvent::Broken`] is sent.
    pub retry_for: Duration,
}

/// The polling interval used when the file system is recognised as needing polling.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(300),
            poll: None,
            retry_for: Duration::from_secs(3),
        }
    }
}

/// What the watcher tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The workbook's content changed and it opens as a workbook. `bytes` is exactly the content
    /// that was checked and hashed: parse these, not the file, which may have moved on.
    Changed {
        bytes: Vec<u8>,
        hash: u64,
        at: SystemTime,
    },
    /// The workbook stayed unreadable (missing, or not a workbook) for
    /// [`WatchOptions::retry_for`]. To report, never to act on; sent once per broken content.
    Broken { why: String, at: SystemTime },
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {why}")]
    Path { path: PathBuf, why: String },
    #[error("cannot watch {dir}: {source}")]
    Notify {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the watcher thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// How the directory is being watched, for logs and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMode {
    Inotify,
    /// Polling every `interval`; `why` says what chose it.
    Poll {
        interval: Duration,
        why: String,
    },
}

enum AnyDebouncer {
    Inotify(Debouncer<RecommendedWatcher, FileIdMap>),
    Poll(Debouncer<PollWatcher, NoCache>),
}

impl AnyDebouncer {
    /// Joins the debouncer's thread; its event handler (our channel's sender) goes with it.
    fn stop(self) {
        match self {
            AnyDebouncer::Inotify(d) => d.stop(),
            AnyDebouncer::Poll(d) => d.stop(),
        }
    }
}

/// Watches one workbook until dropped; dropping it stops and joins its threads.
pub struct WorkbookWatcher {
    debouncer: Option<AnyDebouncer>,
    worker: Option<JoinHandle<()>>,
    mode: WatchMode,
    reads: Arc<AtomicU64>,
    baseline: Arc<std::sync::Mutex<Option<u64>>>,
}

impl WorkbookWatcher {
    /// The caller wrote the workbook itself, content hash `hash` (a write-back): that content is
    /// not reported, and what comes next is measured against it. So a save that puts back the
    /// content from before the write-back (an old copy) is a change, even when it lands before
    /// the watcher looked at the write-back.
    pub fn wrote(&self, hash: u64) {
        *self.baseline.lock().unwrap_or_else(|e| e.into_inner()) = Some(hash);
    }

    /// Starts watching `path`. Its content now is the baseline: not sent, only changes from it
    /// are. Events arrive on the returned receiver; it disconnects when the watcher is dropped.
    pub fn start(
        path: &Path,
        opts: WatchOptions,
    ) -> Result<(WorkbookWatcher, Receiver<WatchEvent>), WatchError> {
        let path_err = |why: &str| WatchError::Path {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| path_err("no file name"))?
            .to_string();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(path_err("its directory does not exist"));
        }
        let path = dir.join(&name);
        let (raw_tx, raw_rx) = mpsc::channel::<DebounceEventResult>();
        let (out_tx, out_rx) = mpsc::channel();

        let forced = opts
            .poll
            .map(|interval| (interval, "forced by the options".to_string()));
        let auto = || {
            fs_type(&dir)
                .and_then(polling_fs_name)
                .map(|fs| (DEFAULT_POLL, format!("{fs} delivers no inotify events")))
        };
        let (debouncer, mode) = match forced.or_else(auto) {
            Some((interval, why)) => (
                start_poll(&dir, opts.debounce, interval, raw_tx)?,
                WatchMode::Poll { interval, why },
            ),
            None => match start_inotify(&dir, opts.debounce, raw_tx.clone()) {
                Ok(d) => (d, WatchMode::Inotify),
                Err(e) => {
                    tracing::warn!("inotify watcher failed ({e}); polling {}", dir.display());
                    (
                        start_poll(&dir, opts.debounce, DEFAULT_POLL, raw_tx)?,
                        WatchMode::Poll {
                            interval: DEFAULT_POLL,
                            why: format!("inotify failed: {e}"),
                        },
                    )
                }
            },
        };

        let reads = Arc::new(AtomicU64::new(0));
        let baseline = Arc::new(std::sync::Mutex::new(None));
        let worker = Worker {
            baseline: baseline.clone(),
            last_broken: None,
            path,
            name,
            retry_for: opts.retry_for,
            raw_rx,
            out_tx,
            reads: reads.clone(),
        };
        // The baseline is read here, before start returns, so a change made right after start is
        // measured against the content at start.
        if let Ok(bytes) = worker.read() {
            if opens_as_workbook(&bytes).is_ok() {
                worker.set_baseline(Some(crate::store::fnv(&bytes)));
            }
        }
        let handle = std::thread::Builder::new()
            .name("workbook watcher".into())
            .spawn(move || worker.run())?;
        Ok((
            WorkbookWatcher {
                debouncer: Some(debouncer),
                worker: Some(handle),
                mode,
                reads,
                baseline,
            },
            out_rx,
        ))
    }

    pub fn mode(&self) -> &WatchMode {
        &self.mode
    }

    /// How many times the watcher has read the workbook (baseline included): each debounced batch
    /// that passed the filter, and each retry, reads it once. Lets a test see that an event was
    /// filtered out rather than deduplicated by hash.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

impl Drop for WorkbookWatcher {
    fn drop(&mut self) {
        if let Some(d) = self.debouncer.take() {
            d.stop();
        }
        // The worker sees its input disconnect (also while it waits between retries) and ends.
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn start_inotify(
    dir: &Path,
    debounce: Duration,
    tx: Sender<DebounceEventResult>,
) -> Result<AnyDebouncer, WatchError> {
    let err = |source| WatchError::Notify {
        dir: dir.to_path_buf(),
        source,
    };
    let mut d = new_debouncer_opt::<_, RecommendedWatcher, FileIdMap>(
        debounce,
        None,
        tx,
        FileIdMap::new(),
        notify::Config::default(),
    )
    .map_err(err)?;
    d.watch(dir, RecursiveMode::NonRecursive).map_err(err)?;
    Ok(AnyDebouncer::Inotify(d))
}

fn start_poll(
    dir: &Path,
    debounce: Duration,
    interval: Duration,
    tx: Sender<DebounceEventResult>,
) -> Result<AnyDebouncer, WatchError> {
    let err = |source| WatchError::Notify {
        dir: dir.to_path_buf(),
        source,
    };
    // Content comparison: a save within the same mtime second, same size, is still seen.
    let config = notify::Config::default()
        .with_poll_interval(interval)
        .with_compare_contents(true);
    let mut d = new_debouncer_opt::<_, PollWatcher, NoCache>(debounce, None, tx, NoCache, config)
        .map_err(err)?;
    d.watch(dir, RecursiveMode::NonRecursive).map_err(err)?;
    Ok(AnyDebouncer::Poll(d))
}

struct Worker {
    /// Hash of the last content accepted (sent, the baseline, or what the caller said it wrote
    /// itself: [`WorkbookWatcher::wrote`]).
    baseline: Arc<std::sync::Mutex<Option<u64>>>,
    /// Hash (or `None` for "missing") of the broken content last reported, so it is reported once.
    last_broken: Option<Option<u64>>,
    path: PathBuf,
    name: String,
    retry_for: Duration,
    raw_rx: Receiver<DebounceEventResult>,
    out_tx: Sender<WatchEvent>,
    reads: Arc<AtomicU64>,
}

/// What one look at the workbook found.
enum Look {
    Good(Vec<u8>, u64),
    Bad(Option<u64>, String),
}

impl Worker {
    fn baseline(&self) -> Option<u64> {
        *self.baseline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_baseline(&self, hash: Option<u64>) {
        *self.baseline.lock().unwrap_or_else(|e| e.into_inner()) = hash;
    }

    fn run(mut self) {
        while let Ok(batch) = self.raw_rx.recv() {
            match batch {
                Ok(events) => {
                    if events.iter().any(|e| self.accepts(e)) && !self.check() {
                        return;
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!("watching {}: {e}", self.path.display());
                    }
                }
            }
        }
    }

    fn accepts(&self, event: &DebouncedEvent) -> bool {
        let about_workbook = event.paths.iter().any(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !is_ignored_name(n, &self.name))
        });
        (about_workbook && is_relevant_kind(&event.kind)) || event.need_rescan()
    }

    fn read(&self) -> std::io::Result<Vec<u8>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        std::fs::read(&self.path)
    }

    fn look(&self) -> Look {
        match self.read() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Look::Bad(None, "the workbook is missing".into())
            }
            Err(e) => Look::Bad(None, format!("cannot read the workbook: {e}")),
            Ok(bytes) => {
                let hash = crate::store::fnv(&bytes);
                match opens_as_workbook(&bytes) {
                    Ok(()) => Look::Good(bytes, hash),
                    Err(why) => Look::Bad(Some(hash), why),
                }
            }
        }
    }

    /// Reads the workbook until it opens (or `retry_for` has passed) and sends what that means.
    /// Returns false when the watcher is being dropped.
    fn check(&mut self) -> bool {
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            match self.look() {
                Look::Good(bytes, hash) => {
                    self.last_broken = None;
                    if self.baseline() != Some(hash) {
                        self.set_baseline(Some(hash));
                        let at = SystemTime::now();
                        return self
                            .out_tx
                            .send(WatchEvent::Changed { bytes, hash, at })
                            .is_ok();
                    }
                    return true;
                }
                Look::Bad(hash, why) => {
                    if started.elapsed() >= self.retry_for {
                        if self.last_broken != Some(hash) {
                            self.last_broken = Some(hash);
                            // The good content put back as it was is news after this.
                            self.set_baseline(None);
                            let at = SystemTime::now();
                            return self.out_tx.send(WatchEvent::Broken { why, at }).is_ok();
                        }
                        return true;
                    }
                    tracing::debug!("{}: {why}; reading it again", self.path.display());
                    // Waiting on the channel, not sleeping: a drop disconnects it and ends the
                    // wait. Batches that arrive meanwhile are covered by the next read.
                    let left = self.retry_for.saturating_sub(started.elapsed());
                    match self.raw_rx.recv_timeout(wait.min(left)) {
                        Err(RecvTimeoutError::Disconnected) => return false,
                        Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Reading a file raises Access events (open, close without write): they must not count, or the
/// watcher's own read would trigger the next. A close after writing is a save finishing.
fn is_relevant_kind(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    }
}

/// Whether `bytes` open as a workbook (xlsx/xlsm/xlsb/ods through their zip, or xls): a file a
/// spreadsheet program is still writing does not.
fn opens_as_workbook(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the workbook is empty".into());
    }
    if bytes.starts_with(b"PK") {
        // The central directory is written last: a half-written zip fails here.
        zip::ZipArchive::new(Cursor::new(bytes))
            .map(|_| ())
            .map_err(|e| format!("not a complete workbook: {e}"))
    } else {
        calamine::open_workbook_auto_from_rs(Cursor::new(bytes))
            .map(|_| ())
            .map_err(|e| format!("not a workbook: {e}"))
    }
}

/// Whether an event about file `name` is ignored when watching `workbook` (both bare file names).
/// Only the workbook's own name counts. That drops, beside unrelated files, everything spreadsheet
/// programs make next to a workbook: the lock files (LibreOffice `.~lock.<name>#`, Excel
/// `~$<name>`; [`writeback::lock_holder`](super::writeback::lock_holder) reads them) and a save's
/// temp files (LibreOffice `lu*.tmp`, Excel `~WRL*.tmp` and 8-hex-digit names). A rename of a temp
/// file onto the workbook still counts: one of its paths is the workbook.
pub fn is_ignored_name(name: &str, workbook: &str) -> bool {
    name != workbook
}

/// The `statfs` type of the file system holding `dir`.
#[cfg(target_os = "linux")]
fn fs_type(dir: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid C string and `st` a buffer of the right type for statfs to fill.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The magic numbers are 32-bit; f_type's width and sign differ between libcs.
    Some(st.f_type as u32)
}

#[cfg(not(target_os = "linux"))]
fn fs_type(_dir: &Path) -> Option<u32> {
    None
}

/// The name of a file system (by its `statfs` magic) whose changes made by other machines raise
/// no inotify events, so it must be polled.
pub fn polling_fs_name(f_type: u32) -> Option<&'static str> {
    match f_type {
        0x6969 => Some("NFS"),
        0xFF53_4D42 => Some("CIFS"),
        0xFE53_4D42 => Some("SMB2"),
        0x517B => Some("SMB"),
        0x6573_5546 => Some("FUSE"),
        0x0102_1997 => Some("9p"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WB: &str = "experiments.xlsx";

    #[test]
    fn only_the_workbook_itself_is_watched() {
        assert!(!is_ignored_name(WB, WB));
        for other in [
            ".~lock.experiments.xlsx#",
            "~$experiments.xlsx",
            "~WRL1234.tmp",
            "lu12345abc.tmp",
            "A1B2C3D4",
            "other.xlsx",
            "experiments.xlsx.bak",
            "Experiments.xlsx",
        ] {
            assert!(is_ignored_name(other, WB), "{other}");
        }
    }

    #[test]
    fn network_and_fuse_file_systems_are_polled() {
        assert_eq!(polling_fs_name(0x6969), Some("NFS"));
        assert_eq!(polling_fs_name(0xFF53_4D42), Some("CIFS"));
        assert_eq!(polling_fs_name(0xFE53_4D42), Some("SMB2"));
        assert_eq!(polling_fs_name(0x6573_5546), Some("FUSE"));
        // ext4, tmpfs, btrfs, xfs, overlayfs: inotify works.
        for local in [0xEF53, 0x0102_1994, 0x9123_683E, 0x5846_5342, 0x794C_7630] {
            assert_eq!(polling_fs_name(local), None, "{local:#x}");
        }
    }

    #[test]
    fn reading_is_not_a_change_but_closing_after_a_write_is() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind};
        assert!(!is_relevant_kind(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_relevant_kind(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_relevant_kind(&EventKind::Access(AccessKind::Read)));
        assert!(is_relevant_kind(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_relevant_kind(&EventKind::Create(CreateKind::File)));
        assert!(is_relevant_kind(&EventKind::Modify(ModifyKind::Any)));
        assert!(is_relevant_kind(&EventKind::Remove(RemoveKind::File)));
    }

    #[test]
    fn a_half_written_zip_does_not_open() {
        let good = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/templates/experiments.xlsx"
        ))
        .unwrap();
        assert_eq!(opens_as_workbook(&good), Ok(()));
        assert!(opens_as_workbook(&good[..good.len() * 2 / 3]).is_err());
        assert!(opens_as_workbook(&good[..good.len() - 1]).is_err());
        assert!(opens_as_workbook(b"").is_err());
        assert!(opens_as_workbook(b"garbage, not a workbook").is_err());
    }
}
