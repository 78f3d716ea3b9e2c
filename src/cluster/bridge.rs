//! `neromum bridge`: joins its stdin/stdout to the local mum's unix socket, starting the mum
//! when none answers. `ssh host neromum bridge --workdir W` is how neroman reaches a remote mum:
//! no port is opened, the protocol is the same bytes as over the socket. The bridge ends when
//! either side closes (neroman gone: stdin ends; mum gone: the socket ends).

use crate::cluster::client::{mum_log_tail, spawn_mum, ClientError, LocalMum};
use crate::cluster::socket_path;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// What a bridge with `start: false` prints (and exits 3) when no agent answers.
pub const NO_AGENT: &str = "neromum: no agent running";

/// Connect (starting mum if needed and `start`), then pump bytes both ways until one side
/// closes.
pub fn run(m: &LocalMum, start: bool) -> Result<(), ClientError> {
    if !start && UnixStream::connect(socket_path(&m.workdir)).is_err() {
        eprintln!("{NO_AGENT} for {}", m.workdir.display());
        std::process::exit(3);
    }
    let stream = connect_or_start(m)?;
    let mut to_mum = stream.try_clone().map_err(|e| io_err(m, e))?;
    let mut from_mum = stream;
    std::thread::spawn(move || {
        pump(&mut std::io::stdin().lock(), &mut to_mum);
        // neroman is gone (or closed its end): let mum see the end of the stream.
        let _ = to_mum.shutdown(std::net::Shutdown::Write);
    });
    // A closed stdout (ssh gone) is an error here, not a SIGPIPE death. The stdin side ends
    // with stdin; the process exits now either way.
    pump(&mut from_mum, &mut std::io::stdout().lock());
    let _ = from_mum.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Copy bytes until either side ends or fails, flushing each chunk as it comes.
fn pump(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = [0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

fn connect_or_start(m: &LocalMum) -> Result<UnixStream, ClientError> {
    let sock = socket_path(&m.workdir);
    if let Ok(s) = UnixStream::connect(&sock) {
        return Ok(s);
    }
    let mut child = spawn_mum(m)?;
    let started = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            std::thread::spawn(move || child.wait());
            return Ok(s);
        }
        // A mum that lost a start race exits at once; the winner's socket appears shortly.
        let _ = child.try_wait();
        if started.elapsed() > Duration::from_secs(15) {
            return Err(ClientError::NoAnswer {
                workdir: m.workdir.clone(),
                secs: started.elapsed().as_secs(),
                log_tail: mum_log_tail(&m.workdir),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn io_err(m: &LocalMum, err: std::io::Error) -> ClientError {
    ClientError::Wire {
        workdir: m.workdir.clone(),
        err: err.into(),
    }
}
