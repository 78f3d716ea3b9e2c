//! Kids report to mum over TCP as well as in their event log.
//!
//! On a cluster the run directory sits on a shared file system (NFS), where a compute node's
//! appends can take seconds to become visible on the login node: tailing `events.jsonl` alone
//! breaks the near-real-time promise. So right after each batch of events reaches the log, the
//! kid also sends those very lines to mum. The log stays the source of truth: each message
//! names the byte offset of its line in `events.jsonl`, so mum takes a line once whichever way
//! it came, and reads the file when a message is missing (a dropped connection, firewalled
//! nodes, a mum started with `listen: off`).
//!
//! mum writes two files into its workdir, both mode 0600 (readable by the user only, like the
//! workdir): `kids.secret`, 32 random bytes in hex, new for every mum; and `kids.addr`, the
//! address and port it listens on. A kid reads both whenever it (re)connects.
//!
//! One message per line, both ways; nothing but these lines and the typed events is decoded:
//! - kid → mum: `NK1 <run> <start> <mac> <event>`: `run` is the run directory's name, `start`
//!   the offset of the event's line in that directory's `events.jsonl`, `event` that line
//!   (JSON, without its line break), `mac` the HMAC-SHA256 of `<run> <start> <event>` under the
//!   secret, in hex. The secret itself never travels.
//! - mum → kid: `NK1 abort <run> <nonce> <mac>`, `mac` over `abort <run> <nonce>`: stop the job
//!   as a SIGTERM would (the warden's cancel stays the backstop).

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// In mum's workdir: the shared secret (hex) and the listening address (`ip:port`).
pub const SECRET_FILE: &str = "kids.secret";
pub const ADDR_FILE: &str = "kids.addr";
/// Every line starts with this (the wire format's version).
pub const TAG: &str = "NK1";
/// The longest line either side accepts; a longer event is left to the file.
pub const MAX_LINE: usize = 1 << 20;

/// A secret: the bytes of `kids.secret` (read as written: hex text).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(text: &str) -> Option<Secret> {
        let t = text.trim();
        (t.len() >= 32 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Secret(t.into()))
    }

    pub fn read(dir: &Path) -> Option<Secret> {
        Secret::new(&std::fs::read_to_string(dir.join(SECRET_FILE)).ok()?)
    }

    /// HMAC-SHA256 (RFC 2104) of the parts, joined by single spaces, in hex.
    pub fn mac(&self, parts: &[&[u8]]) -> String {
        const BLOCK: usize = 64;
        let mut key = [0u8; BLOCK];
        if self.0.len() > BLOCK {
            key[..32].copy_from_slice(&Sha256::digest(&self.0));
        } else {
            key[..self.0.len()].copy_from_slice(&self.0);
        }
        let mut inner = Sha256::new();
        inner.update(key.map(|b| b ^ 0x36));
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                inner.update(b" ");
            }
            inner.update(p);
        }
        let mut outer = Sha256::new();
        outer.update(key.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        hex(&outer.finalize())
    }

    /// Whether `mac` is the MAC of the parts (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        let want = self.mac(parts);
        want.len() == mac.len() && want.bytes().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a run directory's name can travel in a message (what mum names them: hex digits,
/// dots, dashes, digits).
pub fn valid_run_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// One event line as a message (with its line break).
pub fn event_message(secret: &Secret, run: &str, start: u64, event: &[u8]) -> Vec<u8> {
    let start = start.to_string();
    let mac = secret.mac(&[run.as_bytes(), start.as_bytes(), event]);
    let mut line = Vec::with_capacity(event.len() + run.len() + 96);
    for part in [
        TAG.as_bytes(),
        run.as_bytes(),
        start.as_bytes(),
        mac.as_bytes(),
    ] {
        line.extend_from_slice(part);
        line.push(b' ');
    }
    line.extend_from_slice(event);
    line.push(b'\n');
    line
}

/// A kid's message as mum reads it; the event line is still to be decoded (as a typed event).
#[derive(Debug, PartialEq)]
pub struct EventMessage<'a> {
    pub run: &'a str,
    pub start: u64,
    pub event: &'a [u8],
}

/// Why a line was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a message of this format at all.
    Malformed,
    /// Well-formed, but its MAC is not the secret's.
    Unauthenticated,
}

/// Read one line (without its line break) sent by a kid.
pub fn parse_event<'a>(secret: &Secret, line: &'a [u8]) -> Result<EventMessage<'a>, Refused> {
    let mut parts = line.splitn(5, |b| *b == b' ');
    let (Some(tag), Some(run), Some(start), Some(mac), Some(event)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Refused::Malformed);
    };
    if tag != TAG.as_bytes() || mac.len() != 64 || event.is_empty() {
        return Err(Refused::Malformed);
    }
    let run = std::str::from_utf8(run).map_err(|_| Refused::Malformed)?;
    let start_text = std::str::from_utf8(start).map_err(|_| Refused::Malformed)?;
    if !valid_run_name(run)
        || start_text.is_empty()
        || !start_text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Refused::Malformed);
    }
    let start: u64 = start_text.parse().map_err(|_| Refused::Malformed)?;
    if !secret.verify(&[run.as_bytes(), start_text.as_bytes(), event], mac) {
        return Err(Refused::Unauthenticated);
    }
    Ok(EventMessage { run, start, event })
}

/// mum's request that the kid of `run` stop its job.
pub fn abort_message(secret: &Secret, run: &str, nonce: &str) -> Vec<u8> {
    let mac = secret.mac(&[b"abort", run.as_bytes(), nonce.as_bytes()]);
    format!("{TAG} abort {run} {nonce} {mac}\n").into_bytes()
}

/// Whether `line` is an authentic abort for `run`.
pub fn is_abort_for(secret: &Secret, run: &str, line: &[u8]) -> bool {
    let w: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    w.len() == 5
        && w[0] == TAG.as_bytes()
        && w[1] == b"abort"
        && w[2] == run.as_bytes()
        && secret.verify(&[b"abort", w[2], w[3]], w[4])
}

/// Written event lines handed to the sender: the offset of the first, and the bytes.
type Chunk = (u64, Vec<u8>);

/// The kid's side: sends what reached the event log, listens for an abort. Never blocks the
/// kid: a chunk that finds the queue full, or no connection, is left to the file.
pub struct Reporter {
    tx: Option<SyncSender<Chunk>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    /// Report the run in `run_dir` to the mum of `mum_dir`; an abort from it sets `abort`.
    pub fn start(mum_dir: PathBuf, run_dir: &Path, abort: Arc<AtomicBool>) -> Option<Reporter> {
        let run = run_dir.file_name()?.to_str()?.to_string();
        if !valid_run_name(&run) {
            return None;
        }
        let (tx, rx) = mpsc::sync_channel(256);
        let thread = std::thread::Builder::new()
            .name("report".into())
            .spawn(move || send_loop(&mum_dir, &run, &rx, &abort))
            .ok()?;
        Some(Reporter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Lines `bytes` (each ending in a line break) now in the log from offset `start`.
    pub fn send(&self, start: u64, bytes: &[u8]) {
        if let Some(tx) = &self.tx {
            match tx.try_send((start, bytes.to_vec())) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                // Behind: mum reads these from the file.
                Err(TrySendError::Full(_)) => {}
            }
        }
    }

    /// Send what is queued (the exit record), for at most `patience`.
    pub fn finish(mut self, patience: Duration) {
        drop(self.tx.take());
        let Some(t) = self.thread.take() else { return };
        let deadline = Instant::now() + patience;
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

struct Link {
    stream: TcpStream,
    secret: Secret,
}

/// Connect to the mum the workdir's files name (they change when a new mum starts).
fn connect(mum_dir: &Path, run: &str, abort: &Arc<AtomicBool>) -> Option<Link> {
    let secret = Secret::read(mum_dir)?;
    let addr: SocketAddr = std::fs::read_to_string(mum_dir.join(ADDR_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    // mum's words (an abort) arrive on the same connection.
    if let Ok(reader) = stream.try_clone() {
        let (secret, run, abort) = (secret.clone(), run.to_string(), Arc::clone(abort));
        let _ = std::thread::Builder::new()
            .name("report-read".into())
            .spawn(move || {
                let mut reader = BufReader::new(reader.take(64 << 20));
                let mut line = Vec::new();
                while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                    if line.len() <= 4096 {
                        let text = line.strip_suffix(b"\n").unwrap_or(&line);
                        if is_abort_for(&secret, &run, text) {
                            eprintln!("nerokid: mum asked to stop the job");
                            abort.store(true, Ordering::SeqCst);
                        }
                    }
                    line.clear();
                }
            });
    }
    Some(Link { stream, secret })
}

fn send_loop(mum_dir: &Path, run: &str, rx: &Receiver<Chunk>, abort: &Arc<AtomicBool>) {
    let mut link: Option<Link> = None;
    let mut retry_at = Instant::now();
    let mut pause = Duration::from_millis(500);
    let mut said = false;
    // The kid's first events (started, environment) come at once: so does the connection,
    // over which an abort can reach the kid. A closed channel: the kid is done.
    while let Ok((start, bytes)) = rx.recv() {
        if link.is_none() && Instant::now() >= retry_at {
            link = connect(mum_dir, run, abort);
            match &link {
                Some(_) => {
                    pause = Duration::from_millis(500);
                    if said {
                        eprintln!("nerokid: reporting to neromum over TCP again");
                        said = false;
                    }
                }
                None => {
                    retry_at = Instant::now() + pause;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
        let Some(l) = &mut link else { continue };
        let mut out = Vec::with_capacity(bytes.len() * 2);
        let mut offset = start;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let event = line.strip_suffix(b"\n").unwrap_or(line);
            if !event.is_empty() && event.len() < MAX_LINE - 256 {
                out.extend(event_message(&l.secret, run, offset, event));
            }
            offset += line.len() as u64;
        }
        if let Err(e) = l.stream.write_all(&out) {
            if !said {
                eprintln!("nerokid: lost the connection to neromum ({e}); mum reads the event log meanwhile");
                said = true;
            }
            let _ = l.stream.shutdown(std::net::Shutdown::Both);
            link = None;
            retry_at = Instant::now() + pause;
        }
    }
    if let Some(l) = link {
        let _ = l.stream.shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new(&"ab".repeat(32)).unwrap()
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        // Key "Jefe", data "what do ya want for nothing?" (RFC 4231, 4.3). Our keys are hex
        // text; the MAC is over the bytes as given.
        let s = Secret(b"Jefe".to_vec());
        assert_eq!(
            s.mac(&[b"what do ya want for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_message_reads_back_and_a_changed_one_does_not() {
        let s = secret();
        let event = br#"{"event":"metrics","t":1.0,"step":null,"values":{"loss":1}}"#;
        let line = event_message(&s, "abc-1.1", 420, event);
        let text = line.strip_suffix(b"\n").unwrap();
        let m = parse_event(&s, text).unwrap();
        assert_eq!((m.run, m.start, m.event), ("abc-1.1", 420, &event[..]));
        // Another secret, another offset, another event: refused as unauthenticated.
        let other = Secret::new(&"cd".repeat(32)).unwrap();
        assert_eq!(parse_event(&other, text), Err(Refused::Unauthenticated));
        let moved = String::from_utf8(text.to_vec())
            .unwrap()
            .replace(" 420 ", " 421 ");
        assert_eq!(
            parse_event(&s, moved.as_bytes()),
            Err(Refused::Unauthenticated)
        );
        // Truncated, garbage, a bad run name: malformed.
        assert_eq!(parse_event(&s, &text[..40]), Err(Refused::Malformed));
        assert_eq!(
            parse_event(&s, b"\x00\xff garbage"),
            Err(Refused::Malformed)
        );
        let bad_run = event_message(&s, "../x", 1, event);
        assert_eq!(
            parse_event(&s, bad_run.strip_suffix(b"\n").unwrap()),
            Err(Refused::Malformed)
        );
    }

    #[test]
    fn an_abort_is_for_one_run_and_one_secret() {
        let s = secret();
        let m = abort_message(&s, "r-1.1", "n1");
        let text = m.strip_suffix(b"\n").unwrap();
        assert!(is_abort_for(&s, "r-1.1", text));
        assert!(!is_abort_for(&s, "r-1.2", text));
        assert!(!is_abort_for(
            &Secret::new(&"cd".repeat(32)).unwrap(),
            "r-1.1",
            text
        ));
    }
}
