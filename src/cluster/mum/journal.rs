//! mum's durable journal (`journal.jsonl` in its workdir): every fact mum learned, numbered. A
//! restarted mum replays it to know its runs; neroman syncs by asking for entries past a number.
//! A torn last line (crash mid-write) is cut off on open.

use crate::cluster::protocol::{JournalEntry, MumEvent};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Keep one index point per this many entries: memory stays small, a sync scans at most this many.
const INDEX_EVERY: u64 = 256;

pub struct Journal {
    path: PathBuf,
    file: File,
    next_seq: u64,
    len: u64,
    /// (seq, byte offset of the line holding it), every INDEX_EVERY entries.
    index: Vec<(u64, u64)>,
    pub epoch: String,
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
}

impl Journal {
    /// Open (or create) the journal, calling `replay` for every entry already in it.
    pub fn open(
        dir: &Path,
        mut replay: impl FnMut(&JournalEntry),
    ) -> Result<Journal, JournalError> {
        let path = dir.join("journal.jsonl");
        let io = |about, err| JournalError::Io {
            about,
            path: path.clone(),
            err,
        };
        let epoch_path = dir.join("epoch");
        let epoch = match std::fs::read_to_string(&epoch_path) {
            Ok(e) if !e.trim().is_empty() => e.trim().to_string(),
            _ => {
                let e = new_epoch();
                crate::util::write_atomic(&epoch_path, e.as_bytes())
                    .map_err(|err| io("write epoch", err))?;
                // A new epoch with an old journal would confuse readers: start the journal afresh.
                let _ = std::fs::remove_file(&path);
                e
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|err| io("open", err))?;
        let mut reader = BufReader::new(file.try_clone().map_err(|err| io("open", err))?);
        let (mut offset, mut good_len, mut next_seq) = (0u64, 0u64, 1u64);
        let mut index = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|err| io("read", err))?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                break; // torn tail
            }
            match serde_json::from_slice::<JournalEntry>(&line) {
                Ok(entry) => {
                    if (entry.seq - 1).is_multiple_of(INDEX_EVERY) {
                        index.push((entry.seq, offset));
                    }
                    next_seq = entry.seq + 1;
                    replay(&entry);
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
        Ok(Journal {
            path,
            file,
            next_seq,
            len: good_len,
            index,
            epoch,
        })
    }

    /// Append entries for the given events; returns them with their numbers.
    pub fn append(
        &mut self,
        items: Vec<(String, MumEvent, Option<u64>)>,
    ) -> Result<Vec<JournalEntry>, JournalError> {
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(items.len());
        let t = nerokid::report::now();
        let mut offset = self.len;
        for (run, event, kid_offset) in items {
            let entry = JournalEntry {
                seq: self.next_seq,
                run,
                t,
                event,
                kid_offset,
            };
            let before = buf.len();
            serde_json::to_writer(&mut buf, &entry).expect("journal entries serialize");
            buf.push(b'\n');
            if (entry.seq - 1).is_multiple_of(INDEX_EVERY) {
                self.index.push((entry.seq, offset));
            }
            offset += (buf.len() - before) as u64;
            self.next_seq += 1;
            out.push(entry);
        }
        self.file.write_all(&buf).map_err(|err| JournalError::Io {
            about: "append to",
            path: self.path.clone(),
            err,
        })?;
        self.len = offset;
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
        let start = match self.index.partition_point(|(seq, _)| *seq <= since + 1) {
            0 => 0,
            i => self.index[i - 1].1,
        };
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut reader = BufReader::new(f).take(self.len - start);
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
}

fn new_epoch() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_torn_tail_and_reads_since() {
        let dir = tempdir();
        {
            let mut j = Journal::open(&dir, |_| {}).unwrap();
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
        let mut j = Journal::open(&dir, |_| seen += 1).unwrap();
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

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nero-journal-{}-{}",
            std::process::id(),
            new_epoch()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
