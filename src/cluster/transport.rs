//! A connection to a mum over any byte stream: the unix socket of a mum on this machine, the
//! stdin/stdout of a bridge process (`sh -c` standing in for ssh), or a bridge's channel on an
//! SSH master (`cluster::ssh`).
//! A reader thread turns the incoming bytes into capped lines, so every wait has a timeout even
//! on pipes, which have none of their own.

use crate::cluster::protocol::*;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// At most this much of a bridge's stderr is kept for error messages.
const STDERR_KEPT: usize = 16 << 10;

/// A bridge's stderr, read by a thread into a capped buffer.
struct KeptStderr {
    text: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

pub struct Connection {
    lines: mpsc::Receiver<Result<Vec<u8>, WireError>>,
    writer: Box<dyn Write + Send>,
    close: Option<Box<dyn FnOnce() + Send>>,
    stderr: Option<KeptStderr>,
    /// What this transport is, for messages ("unix socket /x/mum.sock", "bridge `sh -c ...`").
    pub describe: String,
}

impl Connection {
    fn new(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        close: Box<dyn FnOnce() + Send>,
        describe: String,
    ) -> Connection {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let line = recv_line(&mut reader);
                let end = line.is_err();
                if tx.send(line).is_err() || end {
                    return;
                }
            }
        });
        Connection {
            lines: rx,
            writer: Box::new(writer),
            close: Some(close),
            stderr: None,
            describe,
        }
    }

    pub fn unix(stream: UnixStream, describe: String) -> std::io::Result<Connection> {
        let reader = stream.try_clone()?;
        let closer = stream.try_clone()?;
        Ok(Connection::new(
            reader,
            stream,
            Box::new(move || {
                let _ = closer.shutdown(std::net::Shutdown::Both);
            }),
            describe,
        ))
    }

    /// Talk over a child's stdin/stdout; its stderr is kept for error messages. Dropping the
    /// connection closes its stdin (the bridge then ends) and reaps it.
    pub fn child(mut child: Child, describe: String) -> std::io::Result<Connection> {
        let missing = || std::io::Error::other("bridge without piped stdio");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().map(keep_stderr);
        let mut conn = Connection::new(
            stdout,
            stdin,
            Box::new(move || {
                // The bridge ends by itself once its stdin closes; do not wait on a wedged one.
                for _ in 0..20 {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
                let _ = child.wait();
            }),
            describe,
        );
        conn.stderr = stderr;
        Ok(conn)
    }

    /// Talk over any pair of blocking streams (an SSH channel's, bridged from its runtime);
    /// `stderr` is kept for error messages and `close` runs when the connection is dropped,
    /// after the writer is closed.
    pub fn streams(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        stderr: Option<Box<dyn Read + Send>>,
        close: Box<dyn FnOnce() + Send>,
        describe: String,
    ) -> Connection {
        let mut conn = Connection::new(reader, writer, close, describe);
        conn.stderr = stderr.map(keep_stderr);
        conn
    }

    pub fn send(&mut self, msg: &Request) -> Result<(), WireError> {
        send(&mut self.writer, msg)
    }

    /// The next line, waiting at most `timeout`.
    pub fn recv_line(&mut self, timeout: Duration) -> Result<Vec<u8>, WireError> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(WireError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(WireError::Closed),
        }
    }

    pub fn recv(&mut self, timeout: Duration) -> Result<Response, WireError> {
        decode(&self.recv_line(timeout)?)
    }

    /// What the bridge printed on stderr so far (ssh's own errors land here).
    pub fn stderr_text(&self) -> String {
        let Some(KeptStderr { text: kept, reader }) = &self.stderr else {
            return String::new();
        };
        // Called on a failure: give a bridge that is ending a moment to finish saying why.
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while !reader.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let kept = kept.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&kept).trim().to_string()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Closing our end first lets the far side see the end of the stream.
        let _ = self.writer.flush();
        self.writer = Box::new(std::io::sink());
        if let Some(close) = self.close.take() {
            close();
        }
    }
}

fn keep_stderr(mut stderr: impl Read + Send + 'static) -> KeptStderr {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let k = Arc::clone(&kept);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                return;
            }
            let mut k = k.lock().unwrap_or_else(|p| p.into_inner());
            let room = STDERR_KEPT.saturating_sub(k.len());
            k.extend_from_slice(&buf[..n.min(room)]);
        }
    });
    KeptStderr { text: kept, reader }
}
