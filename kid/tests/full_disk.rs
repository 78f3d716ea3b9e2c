//! nerokid on a full disk: a real, small tmpfs (mounted by the test; needs root, else skipped).

use nerokid::report::{KidEvent, Outcome};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(name: &str, size: &str) -> Option<SmallDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("nerokid-disk-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(SmallDisk { dir })
    }

    /// Write zeros until the disk is full.
    fn fill(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Smaller writes too: not a byte is left.
        while let Ok(n) = f.write(&block[..1]) {
            if n == 0 {
                break;
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression: a failed write of the event log (ENOSPC) made the kid give up, so its exit record
/// was never written and the run became `lost`; a partial write also tore a line.
#[test]
fn a_full_disk_loses_no_event_and_tears_no_line() {
    let Some(disk) = SmallDisk::mount("full", "400k") else {
        return;
    };
    let run = disk.dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    // The job's switches live off the small disk.
    let ctl = std::env::temp_dir().join(format!("nerokid-disk-ctl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ctl);
    std::fs::create_dir_all(&ctl).unwrap();
    let (go, printed, release) = (ctl.join("go"), ctl.join("printed"), ctl.join("release"));
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.02; done
         i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo \"loss=0.5 step=$i\"; done
         touch {printed}
         while [ ! -e {release} ]; do sleep 0.02; done
         while [ $i -lt 400 ]; do i=$((i+1)); echo \"loss=0.5 step=$i\"; done",
        go = go.display(),
        printed = printed.display(),
        release = release.display()
    );
    let mut kid = Command::new(env!("CARGO_BIN_EXE_nerokid"))
        .arg("run")
        .arg("--dir")
        .arg(&run)
        .args(["--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (pipe, stderr) = (kid.stderr.take().unwrap(), Arc::clone(&stderr));
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = stderr.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    let events_file = run.join("events.jsonl");
    wait_until("the start events", Duration::from_secs(10), || {
        std::fs::metadata(&events_file).is_ok_and(|m| m.len() > 0)
    });
    // Full now: the log's last page still has room, so the next write is cut short, then fails.
    let filler = disk.fill("filler");
    std::fs::write(&go, "").unwrap();
    wait_until("the job's first lines", Duration::from_secs(20), || {
        printed.exists()
    });
    wait_until("the kid to notice", Duration::from_secs(20), || {
        stderr.lock().unwrap().contains("event log")
    });
    assert!(
        kid.try_wait().unwrap().is_none(),
        "the kid gave up: {}",
        stderr.lock().unwrap()
    );
    std::fs::remove_file(&filler).unwrap();
    std::fs::write(&release, "").unwrap();
    let status = {
        let start = Instant::now();
        loop {
            if let Some(s) = kid.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the kid hangs");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    reader.join().unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert_eq!(status.code(), Some(0), "{stderr}");

    let text = std::fs::read_to_string(&events_file).unwrap();
    assert!(text.ends_with('\n'));
    let events: Vec<KidEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .collect();
    let steps: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            KidEvent::Metrics { step, .. } => *step,
            _ => None,
        })
        .collect();
    let expected: Vec<f64> = (1..=400).map(f64::from).collect();
    assert_eq!(steps, expected, "every metric line once, in order");
    assert!(matches!(events[0], KidEvent::Started { .. }));
    assert!(
        matches!(
            events.last(),
            Some(KidEvent::Exited {
                outcome: Outcome::Exit { code: 0 },
                ..
            })
        ),
        "{:?}",
        events.last()
    );
    drop(disk);
    let _ = std::fs::remove_dir_all(&ctl);
}
