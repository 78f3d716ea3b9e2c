//! mum's durable journal (`journal.jsonl` in its workdir): every fact mum learned, numbered. A
//! restarted mum loads the last snapshot (`journal.snap`) and replays the entries after it;
//! neroman syncs by asking for entries past a number. Each append is one write and one fsync; a
//! failed write (disk full) is cut back off, so the file never holds a torn line followed by
//! more entries, and the caller learns that nothing was journaled. A torn last line (crash
//! mid-write) is cut off on open.
//!
//! Compaction: when every project has acknowledged storing the entries up to some number, mum
//! writes a snapshot of its runs (as of its newest entry) and rewrites the journal without the
//! acknowledged entries. The snapshot is written first; a crash between the two steps leaves a
//! longer journal whose entries up to the snapshot's base are skipped on replay.

use crate::cluster::protocol::{JournalEntry, MumEvent};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Keep one index point per this many lines: memory stays small, a sync scans at most this many.
const INDEX_EVERY: u64 = 256;

/// The journal's on-disk format. 1: neromum 0.1.0 (protocol 1; no `launching`, no snapshot).
/// 2: adds `launching` entries and `journal.snap`. 3: adds `ended` and `requeued` entries (the
/// SLURM warden). Entries of an older format are valid in a newer one, so a newer mum adopts
/// the runs of an older one; an older mum refuses a newer journal.
pub const JOURNAL_FORMAT: u32 = 3;

pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    next_seq: u64,
    /// Bytes of whole entries in the file (anything past this is a failed write, cut off).
    len: u64,
    /// (seq, byte offset of the line holding it), every INDEX_EVERY lines.
    index: Vec<(u64, u64)>,
    lines: u64,
    pub epoch: String,
}

/// What a snapshot keeps of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapRun {
    pub run: String,
    pub run_dir: String,
    /// `queued`, `launching`, `launched`, `ended`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub kid_offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_pgid: Option<i32>,
    #[serde(default)]
    pub abort_requested: bool,
}

/// mum's runs as of `base_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub epoch: String,
    pub base_seq: u64,
    pub runs: Vec<SnapRun>,
    pub queue: Vec<String>,
}

/// What [`Journal::open`] replays: the snapshot first, then each newer entry.
pub enum Replay<'a> {
    Snapshot(Snapshot),
    Entry(&'a JournalEntry),
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{about} {path}")]
    Io {
        about: &'static str,
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    #[error("{path} is in journal format {found}, newer than this neromum's {JOURNAL_FORMAT}: run the newer neromum")]
    Newer { path: PathBuf, found: u32 },
}

impl Journal {
    /// Open (or create) the journal: calls `replay` with the snapshot (if any), then with every
    /// entry newer than it, and returns the journal with the snapshot's base.
    pub fn open(
        dir: &Path,
        mut replay: impl FnMut(Replay<'_>),
    ) -> Result<(Journal, Option<u64>), JournalError> {
        let path = dir.join("journal.jsonl");
        let io = |about, err| JournalError::Io {
            about,
            path: path.clone(),
            err,
        };
        let format_path = dir.join("journal.format");
        match std::fs::read_to_string(&format_path) {
            Ok(s) => {
                let found = s.trim().parse().unwrap_or(u32::MAX);
                if found > JOURNAL_FORMAT {
                    return Err(JournalError::Newer {
                        path: format_path,
                        found,
                    });
                }
            }
            Err(_) => {
                crate::util::write_atomic(&format_path, format!("{JOURNAL_FORMAT}\n").as_bytes())
                    .map_err(|err| io("write format of", err))?;
            }
        }
        let epoch_path = dir.join("epoch");
        let epoch = match std::fs::read_to_string(&epoch_path) {
            Ok(e) if !e.trim().is_empty() => e.trim().to_string(),
            _ => {
                let e = crate::util::random_hex(8).map_err(|err| io("make an epoch for", err))?;
                crate::util::write_atomic(&epoch_path, e.as_bytes())
                    .map_err(|err| io("write epoch", err))?;
                // A new epoch with an old journal would confuse readers: start the journal afresh.
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(dir.join("journal.snap"));
                e
            }
        };
        let snapshot: Option<Snapshot> = match std::fs::read(dir.join("journal.snap")) {
            Ok(bytes) => match serde_json::from_slice::<Snapshot>(&bytes) {
                Ok(s) if s.epoch == epoch => Some(s),
                Ok(_) => None,
                Err(e) => {
                    return Err(io(
                        "read snapshot beside",
                        io::Error::new(io::ErrorKind::InvalidData, e),
                    ))
                }
            },
            Err(_) => None,
        };
        let base = snapshot.as_ref().map_or(0, |s| s.base_seq);
        if let Some(s) = snapshot {
            replay(Replay::Snapshot(s));
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|err| io("open", err))?;
        let mut reader = BufReader::new(file.try_clone().map_err(|err| io("open", err))?);
        let (mut offset, mut good_len, mut next_seq) = (0u64, 0u64, base.saturating_add(1));
        let mut index = Vec::new();
        let mut lines = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|err| io("read", err))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break; // the end, or a torn tail
            }
            match serde_json::from_slice::<JournalEntry>(&line) {
                Ok(entry) => {
                    if lines.is_multiple_of(INDEX_EVERY) {
                        index.push((entry.seq, offset));
                    }
                    lines += 1;
                    next_seq = next_seq.max(entry.seq.saturating_add(1));
                    if entry.seq > base {
                        replay(Replay::Entry(&entry));
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "journal {}: skipping unreadable entry at byte {offset}: {e}",
                        path.display()
                    );
                }
            }
            offset += n as u64;
            good_len = offset;
        }
        if good_len < file.metadata().map_err(|err| io("stat", err))?.len() {
            file.set_len(good_len)
                .map_err(|err| io("truncate torn tail of", err))?;
        }
        let journal = Journal {
            dir: dir.to_path_buf(),
            path,
            file,
            next_seq,
            len: good_len,
            index,
            lines,
            epoch,
        };
        Ok((journal, (base > 0).then_some(base)))
    }

    /// Append entries for the given events with one write and one fsync; returns them with
    /// their numbers. On failure nothing was journaled (a partial write is cut off again) and
    /// the same events can be appended later.
    pub fn append(
        &mut self,
        items: Vec<(String, MumEvent, Option<u64>)>,
    ) -> Result<Vec<JournalEntry>, JournalError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(items.len());
        let mut starts = Vec::with_capacity(items.len());
        let t = nerokid::report::now();
        for (i, (key, event, kid_offset)) in items.into_iter().enumerate() {
            // mum keys a project's runs `project/run` (see `run_key`); the entry keeps both.
            let (project, run) = match key.split_once('/') {
                Some((p, r)) => (Some(p.to_string()), r.to_string()),
                None => (None, key),
            };
            let entry = JournalEntry {
                seq: self.next_seq + i as u64,
                run,
                t,
                event,
                kid_offset,
                project,
            };
            starts.push(buf.len() as u64);
            serde_json::to_writer(&mut buf, &entry).expect("journal entries serialize");
            buf.push(b'\n');
            out.push(entry);
        }
        let result = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(err) = result {
            // Whatever part reached the file is cut off, so later entries never glue onto it.
            if let Err(cut) = self.file.set_len(self.len) {
                tracing::error!(
                    "journal {}: cannot cut a failed write: {cut}",
                    self.path.display()
                );
            }
            return Err(JournalError::Io {
                about: "append to",
                path: self.path.clone(),
                err,
            });
        }
        for (entry, start) in out.iter().zip(starts) {
            self.note_line(entry.seq, self.len + start);
        }
        self.next_seq += out.len() as u64;
        self.len += buf.len() as u64;
        Ok(out)
    }

    /// Entries with seq > `since`, at most `max`; the flag says whether more remain.
    pub fn read_since(
        &self,
        since: u64,
        max: usize,
    ) -> Result<(Vec<JournalEntry>, bool), JournalError> {
        let io = |err| JournalError::Io {
            about: "read",
            path: self.path.clone(),
            err,
        };
        if since >= self.last_seq() {
            return Ok((Vec::new(), false));
        }
        let start = match self
            .index
            .partition_point(|(seq, _)| *seq <= since.saturating_add(1))
        {
            0 => 0,
            i => self.index[i - 1].1,
        };
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut reader = BufReader::new(f).take(self.len.saturating_sub(start));
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io)? == 0 || line.last() != Some(&b'\n')
            {
                return Ok((out, false));
            }
            let Ok(entry) = serde_json::from_slice::<JournalEntry>(&line) else {
                continue;
            };
            if entry.seq <= since {
                continue;
            }
            if out.len() == max {
                return Ok((out, true));
            }
            out.push(entry);
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Entries in the file now.
    pub fn entries(&self) -> u64 {
        self.lines
    }

    /// The newest entry no longer in the file (compacted away), 0 if none was.
    pub fn compacted_through(&self) -> u64 {
        self.last_seq().saturating_sub(self.lines)
    }

    /// Write `snapshot` (the state as of [`last_seq`]) and drop the entries up to `keep_after`
    /// from the file. Entries after `keep_after` stay for neroman to sync.
    pub fn compact(&mut self, snapshot: &Snapshot, keep_after: u64) -> Result<(), JournalError> {
        let io = |about, path: &Path, err| JournalError::Io {
            about,
            path: path.to_path_buf(),
            err,
        };
        let snap_path = self.dir.join("journal.snap");
        let bytes = serde_json::to_vec(snapshot).expect("snapshots serialize");
        crate::util::write_atomic(&snap_path, &bytes).map_err(|e| io("write", &snap_path, e))?;
        crate::util::failpoint("compact.after_snapshot");

        let (kept, _) = self.read_since(keep_after, usize::MAX)?;
        let mut buf = Vec::new();
        let mut starts = Vec::with_capacity(kept.len());
        for e in &kept {
            starts.push((e.seq, buf.len() as u64));
            serde_json::to_writer(&mut buf, e).expect("journal entries serialize");
            buf.push(b'\n');
        }
        crate::util::write_atomic(&self.path, &buf).map_err(|e| io("rewrite", &self.path, e))?;
        crate::util::failpoint("compact.after_rewrite");
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| io("open", &self.path, e))?;
        self.len = buf.len() as u64;
        self.index.clear();
        self.lines = 0;
        for (seq, offset) in starts {
            self.note_line(seq, offset);
        }
        Ok(())
    }

    /// Count one more line in the file (entry `seq` at byte `offset`), indexing every
    /// INDEX_EVERY-th.
    fn note_line(&mut self, seq: u64, offset: u64) {
        if self.lines.is_multiple_of(INDEX_EVERY) {
            self.index.push((seq, offset));
        }
        self.lines += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn survives_a_torn_tail_and_reads_since() {
        let dir = tempdir();
        {
            let (mut j, _) = Journal::open(&dir, |_| {}).unwrap();
            let items = (0..600)
                .map(|i| (format!("r{i}"), MumEvent::Cancelled, None))
                .collect();
            j.append(items).unwrap();
        }
        // Simulate a crash in the middle of writing an entry.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))
            .unwrap();
        f.write_all(b"{\"seq\":601,\"run\":\"x").unwrap();
        let mut seen = 0;
        let (mut j, _) = Journal::open(&dir, |_| seen += 1).unwrap();
        assert_eq!(seen, 600);
        assert_eq!(j.last_seq(), 600);
        let (got, more) = j.read_since(300, 100).unwrap();
        assert_eq!(got.first().unwrap().seq, 301);
        assert_eq!(got.len(), 100);
        assert!(more);
        j.append(vec![("y".into(), MumEvent::AbortSent, None)])
            .unwrap();
        let (got, more) = j.read_since(598, 100).unwrap();
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [599, 600, 601]
        );
        assert!(!more);
        assert_eq!(got[2].run, "y");
    }

    /// Regression: `since + 1` overflowed on a sync from u64::MAX, and a hand-edited entry with
    /// seq 0 made `seq - 1` overflow on open.
    #[test]
    fn extreme_sequence_numbers_do_not_overflow() {
        let dir = tempdir();
        std::fs::write(
            dir.join("journal.jsonl"),
            "{\"seq\":0,\"run\":\"a\",\"t\":1.0,\"event\":{\"what\":\"cancelled\"}}\n",
        )
        .unwrap();
        std::fs::write(dir.join("epoch"), "e").unwrap();
        let (j, _) = Journal::open(&dir, |_| {}).unwrap();
        assert_eq!(j.read_since(u64::MAX, 10).unwrap().0.len(), 0);
    }

    /// Regression: a failed append (disk full) left its torn line in the file and the next
    /// entries were glued to it. Now the failed part is cut off and nothing is numbered.
    #[test]
    fn a_failed_append_leaves_no_torn_line() {
        let dir = tempdir();
        let (mut j, _) = Journal::open(&dir, |_| {}).unwrap();
        j.append(vec![("a".into(), MumEvent::Cancelled, None)])
            .unwrap();
        // Stand-in for ENOSPC: a file handle that cannot be written.
        let good = std::mem::replace(
            &mut j.file,
            OpenOptions::new()
                .read(true)
                .open(dir.join("journal.jsonl"))
                .unwrap(),
        );
        assert!(j
            .append(vec![("b".into(), MumEvent::Cancelled, None)])
            .is_err());
        j.file = good;
        j.append(vec![("c".into(), MumEvent::Cancelled, None)])
            .unwrap();
        let (got, _) = j.read_since(0, 10).unwrap();
        assert_eq!(
            got.iter()
                .map(|e| (e.seq, e.run.as_str()))
                .collect::<Vec<_>>(),
            [(1, "a"), (2, "c")]
        );
    }

    #[test]
    fn compaction_keeps_unacknowledged_entries_and_the_snapshot() {
        let dir = tempdir();
        let (mut j, _) = Journal::open(&dir, |_| {}).unwrap();
        let items = (0..1000)
            .map(|i| (format!("r{i}"), MumEvent::Cancelled, None))
            .collect();
        j.append(items).unwrap();
        let snap = Snapshot {
            format: JOURNAL_FORMAT,
            epoch: j.epoch.clone(),
            base_seq: j.last_seq(),
            runs: vec![],
            queue: vec![],
        };
        j.compact(&snap, 900).unwrap();
        assert_eq!(j.entries(), 100);
        let (got, _) = j.read_since(950, 10).unwrap();
        assert_eq!(got[0].seq, 951);
        j.append(vec![("z".into(), MumEvent::Cancelled, None)])
            .unwrap();
        drop(j);
        let mut replayed = 0;
        let (j, s) = Journal::open(&dir, |r| {
            if let Replay::Entry(_) = r {
                replayed += 1
            }
        })
        .unwrap();
        assert_eq!(s, Some(1000));
        assert_eq!(replayed, 1, "only the entry after the snapshot is replayed");
        assert_eq!(j.last_seq(), 1001);
        assert_eq!(j.read_since(0, 1000).unwrap().0.len(), 101);
    }

    pub(crate) fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nero-journal-{}-{}",
            std::process::id(),
            crate::util::random_hex(8).unwrap()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
