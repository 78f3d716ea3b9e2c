//! mum's `ReadLog` handler: a chunk of a run's stdout or stderr from an offset, cut at a
//! character boundary, and whether the run has ended and everything was read.

use super::{Phase, Shared, State};
use crate::cluster::protocol::*;
use nerokid::report::{STDERR_FILE, STDOUT_FILE};
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

/// With `wait_ms`, hold the request until output arrives, the run ends or the time is up: a
/// follower (`logs -f`) keeps one connection and asks again at once.
pub(super) fn read_log(shared: &Shared, r: ReadLog, project: Option<&str>) -> Response {
    let deadline = Instant::now() + Duration::from_millis(u64::from(r.wait_ms.min(MAX_WAIT_MS)));
    loop {
        let reply = shared.lock().read_log(&r, project);
        let waiting = matches!(&reply, Response::Log(l) if l.next == r.offset && !l.complete);
        if !waiting || Instant::now() >= deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl State {
    fn read_log(&self, r: &ReadLog, project: Option<&str>) -> Response {
        let Some(rec) = self
            .find_run(project, &r.run)
            .and_then(|k| self.runs.get(&k))
        else {
            return Response::Error(ErrorReply {
                message: format!("unknown run {}", r.run),
            });
        };
        let path = rec.run_dir.join(match r.stream {
            LogStream::Stdout => STDOUT_FILE,
            LogStream::Stderr => STDERR_FILE,
        });
        let ended = matches!(rec.phase, Phase::Ended);
        let mut buf = Vec::new();
        let len = match std::fs::File::open(&path) {
            Ok(mut f) => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if f.seek(SeekFrom::Start(r.offset)).is_ok() {
                    let _ = f
                        .take(u64::from(r.max_bytes.clamp(1, 4 << 20)))
                        .read_to_end(&mut buf);
                }
                len
            }
            Err(_) => 0,
        };
        // Cut at a character boundary; the rest comes with the next request. At the end of a
        // finished run's log nothing more will come: an unfinished character is sent as U+FFFD.
        let at_end = r.offset + buf.len() as u64 >= len;
        let valid = match std::str::from_utf8(&buf) {
            Err(e) if e.error_len().is_none() && !(ended && at_end) => e.valid_up_to(),
            _ => buf.len(),
        };
        let text = String::from_utf8_lossy(&buf[..valid]).into_owned();
        let next = r.offset + valid as u64;
        Response::Log(LogChunk {
            text,
            next,
            complete: ended && next >= len,
        })
    }
}
