//! Small shared helpers: atomic whole-file writes and time formatting.

use std::io::{self, Write};
use std::path::Path;

/// Write a whole file so any reader sees either the old or the new content, and a crash leaves
/// one of them: a temp file of its own in the same directory (a fresh random name per call, so
/// threads and processes writing the same file never share one), fsync, rename over the target,
/// fsync the directory so the rename itself survives a power cut. Every file neronet writes
/// whole goes through here.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A new file's usual mode (0666 less the umask), not the temp file's private 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // On failure the temp file is dropped, which removes it.
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Columns of the terminal on standard output, if it is one.
pub fn terminal_width() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills a winsize we own; failure leaves it zeroed and is reported.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(size.ws_col as usize)
}

/// `bytes` random bytes from the kernel (the getrandom system call, which needs no file
/// descriptor), in hex: ids and epochs, not secrets. A failure is an error, never zeros: two
/// agents or projects with the same "random" id would take each other's runs.
pub fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| io::Error::other(format!("no random bytes: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// An error with its chain of causes, `outer: inner: root`, for messages that cross the wire.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `3.2 GiB`, `512 MiB`: memory sizes for people.
pub fn human_bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.0} MiB", n / (1024.0 * 1024.0))
    }
}

/// `1h 02m`, `3m 07s`, `12s`.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Die here, like `kill -9`, when `NERONET_FAILPOINT` names this step (`step`, or `step@N` for
/// its N-th time). Turns "a crash at any line" into deterministic tests; costs one atomic load
/// when unset.
pub fn failpoint(step: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("NERONET_FAILPOINT").ok()?;
        let (name, n) = match v.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((name, n))
    });
    if let Some((name, n)) = spec {
        if name == step && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            tracing::error!("failpoint {step}: dying as if killed");
            // SAFETY: sending SIGKILL to ourselves; nothing after it runs.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

/// `text` cut to at most `max` characters (a cell holds at most 32,767), marked with `…`.
pub fn cut_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Regression: the temp name was unique per process only. Two threads writing one file
    /// shared a temp file: one's rename failed ("No such file") or moved the other's
    /// half-written bytes into place.
    #[test]
    fn threads_writing_one_file_each_write_it_whole() {
        let dir = std::env::temp_dir().join(format!("neronet-atomic-{}", random_hex(8).unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = Arc::new(dir.join("results.xlsx"));
        let writers: Vec<_> = (0..8u8)
            .map(|t| {
                let path = Arc::clone(&path);
                std::thread::spawn(move || {
                    let content = vec![b'a' + t; 4096 * (t as usize + 1)];
                    for _ in 0..100 {
                        write_atomic(&path, &content).expect("write_atomic");
                    }
                })
            })
            .collect();
        let reader = {
            let path = Arc::clone(&path);
            std::thread::spawn(move || {
                for _ in 0..500 {
                    if let Ok(bytes) = std::fs::read(&*path) {
                        let first = bytes[0];
                        assert!(
                            bytes.iter().all(|b| *b == first)
                                && bytes.len() == 4096 * (first - b'a' + 1) as usize,
                            "a reader saw a torn file of {} bytes",
                            bytes.len()
                        );
                    }
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        reader.join().unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "temp files left behind: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The file keeps the permissions a new file gets (not the temp file's private 0600), so a
    /// results.xlsx stays readable by whoever could read it before.
    #[test]
    fn written_files_get_the_usual_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("neronet-perm-{}", random_hex(8).unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let atomic = dir.join("atomic");
        write_atomic(&atomic, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Regression: when /dev/urandom could not be opened (here: no file descriptor left), the
    /// "random" bytes were zeros, and every agent journal got the epoch 0000000000000000.
    /// Runs itself again as a child process whose descriptors are used up.
    #[test]
    fn random_bytes_need_no_file_descriptor() {
        const CHILD: &str = "NERONET_TEST_RANDOM_CHILD";
        if std::env::var_os(CHILD).is_some() {
            // SAFETY: plain libc calls on values we own.
            unsafe {
                let limit = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            let mut held = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                held.push(f);
            }
            let got = random_hex(8);
            println!("random: {got:?}");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "util::tests::random_bytes_need_no_file_descriptor",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("random: "))
            .unwrap_or_else(|| panic!("child printed no result: {stdout}"));
        assert!(
            line.split(|c: char| !c.is_ascii_hexdigit())
                .any(|w| w.len() == 16 && w != "0000000000000000"),
            "{line}"
        );
    }
}
