//! nerokid as a program on what real jobs do: progress bars that redraw one line with `\r`,
//! metric files rewritten in place.

use nerokid::report::{KidEvent, Outcome};
use nerokid::run::read_events;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn run_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nerokid-reports-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn kid(dir: &Path, cmd: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nerokid"));
    c.arg("run").arg("--dir").arg(dir).arg("--").args(cmd);
    c
}

fn outcome(dir: &Path) -> Outcome {
    match read_events(dir).unwrap().pop() {
        Some(KidEvent::Exited { outcome, .. }) => outcome,
        other => panic!("last event is not an exit: {other:?}"),
    }
}

fn metric_values(dir: &Path, name: &str) -> Vec<f64> {
    read_events(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| match e {
            KidEvent::Metrics { values, .. } => Some(values),
            _ => None,
        })
        .flatten()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

/// Poll until `done` holds (the job still running), or fail after `limit`.
fn wait_for(child: &mut Child, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before {what}"
        );
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("no {what} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tqdm-style bar on stderr that never ends its line until `release` exists (or 30 s pass,
/// so that a kid that misses the bar fails the test instead of hanging it).
const BAR_JOB: &str = r#"
import os, sys, time
release = sys.argv[1]
deadline = time.time() + 30
i = 0
while not os.path.exists(release) and time.time() < deadline:
    i += 1
    sys.stderr.write("\rEpoch 0:  %2d%%|##   | %d/1000 [00:0%d<01:00, 80.0it/s, v_num=0, loss=%.3f]" % (i % 100, i, i % 10, 9.0 - i / 1000))
    sys.stderr.flush()
    time.sleep(0.02)
sys.stderr.write("\n")
"#;

/// Regression: a progress bar redraws one line with `\r`, so no metric appeared until its final
/// newline (an hour-long epoch showed nothing). The bar's loss must reach the event log while
/// the job still runs, within SPEC §3's 2 s, and `v_num` must not.
#[test]
fn a_progress_bar_gives_metrics_mid_epoch() {
    let d = run_dir("bar");
    let release = d.join("release");
    let mut child = kid(&d, &["python3", "-c", BAR_JOB, release.to_str().unwrap()])
        .spawn()
        .unwrap();
    let start = Instant::now();
    wait_for(
        &mut child,
        Duration::from_secs(20),
        "metric from the bar",
        || !metric_values(&d, "loss").is_empty(),
    );
    let first = start.elapsed();
    std::fs::write(&release, "").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        first < Duration::from_secs(5),
        "first bar metric after {first:?}"
    );
    let losses = metric_values(&d, "loss");
    assert!(losses.iter().all(|l| *l > 8.0 && *l <= 9.0), "{losses:?}");
    assert!(metric_values(&d, "v_num").is_empty());
    // The log keeps the bytes as printed.
    let log = std::fs::read(d.join("stderr.log")).unwrap();
    assert!(log.starts_with(b"\rEpoch 0:") && log.ends_with(b"]\n"));
}

/// Regression: `abort_when` could not fire mid-epoch on a bar's numbers.
#[test]
fn a_rule_fires_on_a_progress_bar() {
    let d = run_dir("bar-rule");
    std::fs::write(
        d.join("kid.json"),
        r#"{"id":"7","abort_when":"loss>5","grace_secs":1}"#,
    )
    .unwrap();
    let release = d.join("release-never");
    let start = Instant::now();
    let status = kid(&d, &["python3", "-c", BAR_JOB, release.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        matches!(outcome(&d), Outcome::Aborted { .. }),
        "{:?}",
        outcome(&d)
    );
}

/// Regression: the CSV metric file reader split quoted commas; and Lightning's `CSVLogger`
/// rewrites its file with a wider header when a new metric appears: the rows read before must
/// not come twice, the new ones must come.
#[test]
fn a_csv_metric_file_rewritten_with_a_wider_header() {
    let d = run_dir("csv-rewrite");
    std::fs::write(
        d.join("kid.json"),
        r#"{"metrics":{"tokens":false,"files":[{"path":"metrics.csv","format":"csv"}]}}"#,
    )
    .unwrap();
    let job = r#"
import os, time
run = os.environ["NERO_RUN_DIR"]
path = os.path.join(run, "metrics.csv")
def wait_for(text):
    for _ in range(400):
        with open(os.path.join(run, "events.jsonl")) as f:
            if text in f.read():
                return
        time.sleep(0.05)
    raise SystemExit("the kid never read " + text)
with open(path, "w") as f:
    f.write('epoch,note,step,train_loss\n0,"warm, up",49,0.5123\n0,,99,0.3311\n')
wait_for("0.3311")
rows = 'epoch,note,step,train_loss,val_loss\n0,"warm, up",49,0.5123,\n0,,99,0.3311,\n0,,937,,0.0712\n1,,987,0.0804,\n'
with open(path + ".tmp", "w") as f:
    f.write(rows)
os.replace(path + ".tmp", path)
wait_for("0.0804")
"#;
    let status = kid(&d, &["python3", "-c", job]).status().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(d.join("stderr.log")).unwrap()
    );
    assert_eq!(metric_values(&d, "train_loss"), [0.5123, 0.3311, 0.0804]);
    assert_eq!(metric_values(&d, "val_loss"), [0.0712]);
    assert_eq!(metric_values(&d, "step"), [49.0, 99.0, 937.0, 987.0]);
}
