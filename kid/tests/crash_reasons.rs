//! Why a run died, as the kid writes it in the exit record: real python3 raising through a
//! progress bar, signal deaths with and without a shell to report them.

use nerokid::report::{KidEvent, Outcome};
use nerokid::run::read_events;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nerokid-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run `cmd` under the kid in `dir`; the exit record's outcome, reason and stderr tail.
fn run(dir: &Path, cmd: &[&str]) -> (Outcome, Option<String>, Vec<String>) {
    Command::new(env!("CARGO_BIN_EXE_nerokid"))
        .arg("run")
        .arg("--dir")
        .arg(dir)
        .arg("--")
        .args(cmd)
        .current_dir(dir)
        .env("PYTHONPATH", dir)
        .status()
        .unwrap();
    match read_events(dir).unwrap().pop() {
        Some(KidEvent::Exited {
            outcome,
            reason,
            stderr_tail,
            ..
        }) => (outcome, reason, stderr_tail),
        other => panic!("last event is not an exit: {other:?}"),
    }
}

const OOM: &str = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 18.56 GiB is free. Including non-PyTorch memory, this process has 60.62 GiB memory in use.";

/// The run that started issue 9: a CUDA out-of-memory crash showed only "exit code 1". Real
/// python3 raises an exception of module `torch` while a tqdm-like bar redraws its line with
/// `\r` on stderr (the traceback starts on the bar's line).
#[test]
fn a_python_exception_through_a_progress_bar_is_the_reason() {
    let d = run_dir("oom");
    std::fs::create_dir_all(d.join("torch")).unwrap();
    std::fs::write(
        d.join("torch/__init__.py"),
        "class OutOfMemoryError(RuntimeError):\n    pass\n",
    )
    .unwrap();
    let message = OOM.strip_prefix("torch.OutOfMemoryError: ").unwrap();
    std::fs::write(
        d.join("train.py"),
        format!(
            r##"import sys, torch
def allocate():
    raise torch.OutOfMemoryError({message:?})
print("epoch=1 loss=0.9", flush=True)
for i in range(1, 31):
    sys.stderr.write("\r\x1b[32m%3d%%\x1b[0m|%s| %d/30 [00:0%d<00:01, 25.0it/s, loss=%.3f]" % (i * 100 // 30, "#" * (i // 3), i, i // 10, 1 / i))
    sys.stderr.flush()
allocate()
"##
        ),
    )
    .unwrap();
    let (outcome, reason, tail) = run(&d, &["python3", "train.py"]);
    assert_eq!(outcome, Outcome::Exit { code: 1 });
    assert_eq!(reason.as_deref(), Some(OOM));
    assert_eq!(tail.last().map(String::as_str), Some(OOM), "{tail:#?}");
    assert!(
        tail.iter()
            .any(|l| l.ends_with("Traceback (most recent call last):")
                && l.starts_with("100%|##########| 30/30")),
        "the bar's last drawing, then the traceback: {tail:#?}"
    );
    assert!(
        tail.iter()
            .any(|l| l.contains("raise torch.OutOfMemoryError(")),
        "{tail:#?}"
    );
    assert!(
        tail.iter()
            .all(|l| !l.contains('\r') && !l.contains('\x1b')),
        "{tail:#?}"
    );
    assert!(tail.len() <= 20);
}

/// `kill -9 $$` inside the job: a signal, no words (nobody was left to say any); what the job
/// printed on stderr is kept.
#[test]
fn a_sigkill_of_the_job() {
    let d = run_dir("sigkill");
    let (outcome, reason, tail) = run(
        &d,
        &[
            "sh",
            "-c",
            "echo 'step=1 loss=0.4'; echo 'allocating' >&2; kill -9 $$",
        ],
    );
    assert_eq!(outcome, Outcome::Signal { signal: 9 });
    assert_eq!(reason, None);
    assert_eq!(tail, ["allocating"]);
}

/// A segfault-like death: alone it is the signal; behind bash (which forks the commands of a
/// script and reports the death) the report is the reason.
#[test]
fn a_segv_of_the_job_alone_and_behind_bash() {
    let d = run_dir("segv");
    let (outcome, reason, _) = run(&d, &["sh", "-c", "kill -SEGV $$"]);
    assert_eq!(outcome, Outcome::Signal { signal: 11 });
    assert_eq!(reason, None);

    let d = run_dir("segv-bash");
    std::fs::write(
        d.join("command.sh"),
        "echo 'loading data' >&2\nsh -c 'kill -SEGV $$'\nexit $?\n",
    )
    .unwrap();
    let (outcome, reason, tail) = run(&d, &["bash", "command.sh"]);
    assert_eq!(outcome, Outcome::Signal { signal: 11 });
    let reason = reason.expect("bash's report is the reason");
    assert!(reason.starts_with("Segmentation fault"), "{reason}");
    assert_eq!(tail[0], "loading data");
    assert!(tail[1].contains("Segmentation fault"), "{tail:?}");

    let d = run_dir("kill-bash");
    std::fs::write(
        d.join("command.sh"),
        "python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'\nexit $?\n",
    )
    .unwrap();
    let (outcome, reason, _) = run(&d, &["bash", "command.sh"]);
    assert_eq!(outcome, Outcome::Signal { signal: 9 });
    assert_eq!(reason.as_deref(), Some("Killed"));
}

/// A clean exit keeps no tail and no reason, whatever stderr said; a plain non-zero exit
/// with nothing recognisable keeps the tail and no reason.
#[test]
fn clean_exits_keep_nothing() {
    let d = run_dir("clean");
    let (outcome, reason, tail) = run(
        &d,
        &[
            "sh",
            "-c",
            "echo 'Traceback (most recent call last):' >&2; echo 'ValueError: x' >&2",
        ],
    );
    assert_eq!(outcome, Outcome::Exit { code: 0 });
    assert_eq!((reason, tail.len()), (None, 0));
    let d = run_dir("exit3");
    let (outcome, reason, tail) = run(&d, &["sh", "-c", "echo 'no more data' >&2; exit 3"]);
    assert_eq!(outcome, Outcome::Exit { code: 3 });
    assert_eq!(reason, None);
    assert_eq!(tail, ["no more data"]);
}
