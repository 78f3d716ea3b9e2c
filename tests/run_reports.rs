//! What a run tells the researcher, end to end with the real binaries on this machine: crash
//! reasons in plain words (a Python exception, a signal) in `status`, `show` and results.xlsx;
//! a rule's grace (`min_runtime`) and the values that fired it; GPU use sampled through a fake
//! `nvidia-smi` built from real H100 captures (tests/fixtures/gpu/); `show` in full.

mod common;
use common::{wait_until, Project, V};
use std::path::PathBuf;
use std::time::Duration;

/// A PyTorch-like CUDA out-of-memory crash: a progress bar with carriage returns on stderr,
/// then the traceback Python prints for `torch.OutOfMemoryError`.
const OOM_JOB: &str = r#"
import sys, time
class OutOfMemoryError(RuntimeError):
    pass
OutOfMemoryError.__module__ = "torch"
for i in range(5):
    sys.stderr.write(f"\rEpoch 0: {i*20:3d}%|{'#'*i:<5}| {i}/5 [00:0{i}<00:05]")
    sys.stderr.flush()
    print(f"step={i} loss={2.0/(i+1):.4f}", flush=True)
    time.sleep(0.05)
sys.stderr.write("\n")
def forward():
    raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.25 GiB is free.")
forward()
"#;

fn entry(p: &Project, id: &str) -> serde_json::Value {
    p.status()
        .into_iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no experiment {id} in status"))
}

fn show(p: &Project, id: &str) -> serde_json::Value {
    serde_json::from_str(&p.ok(&["show", id, "--json"])).expect("show --json is JSON")
}

#[test]
fn crash_reasons_are_plain_words_in_status_show_and_results() {
    let p = Project::new("reasons", "clusters:\n  local:\n    max_parallel: 3\n");
    p.write("oom.py", OOM_JOB);
    p.workbook(
        &["id", "status", "command"],
        &[
            vec![V::S("1"), V::E, V::S("python3 oom.py")],
            vec![V::S("2"), V::E, V::S("sh -c 'echo going; kill -9 $$'")],
            vec![V::S("3"), V::E, V::S("sh -c 'echo fine >&2; exit 0'")],
        ],
    );
    let out = p.neroman(&["start", "all", "--wait"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let one = entry(&p, "1");
    assert_eq!(one["state"], "crashed", "{one}");
    let reason = one["reason"].as_str().unwrap();
    assert!(
        reason
            .starts_with("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB")
            && reason.ends_with("(exit code 1)"),
        "{reason}"
    );
    let two = entry(&p, "2");
    assert_eq!(two["state"], "crashed", "{two}");
    assert!(two["reason"].as_str().unwrap().contains("SIGKILL"), "{two}");
    assert_eq!(entry(&p, "3")["reason"], serde_json::Value::Null);

    // A selection by reason: restart what ran out of GPU memory, say.
    let oom: Vec<serde_json::Value> =
        serde_json::from_str(&p.ok(&["status", "reason=~'CUDA out of memory'", "--json"])).unwrap();
    let ids: Vec<&str> = oom.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1"]);
    // The table says it too.
    let table = p.ok(&["status"]);
    assert!(table.contains("torch.OutOfMemoryError"), "{table}");

    // `show` has the end of stderr: the traceback's last lines, the progress bar cleaned.
    let s = show(&p, "1");
    let run = &s["runs"][0];
    assert_eq!(run["state"], "crashed", "{s}");
    let tail: Vec<&str> = run["stderr_tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        tail.iter()
            .any(|l| l.starts_with("Traceback (most recent call last)")),
        "{tail:?}"
    );
    assert!(
        tail.last().unwrap().starts_with("torch.OutOfMemoryError"),
        "{tail:?}"
    );
    assert!(tail.iter().all(|l| !l.contains('\r')), "{tail:?}");
    assert_eq!(run["metrics"]["loss"], 0.4, "{s}");
    assert_eq!(run["exit_code"], 1, "{s}");
    assert!(run["environment"]["host"].is_string(), "{s}");
    let states: Vec<&str> = run["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["submitted", "queued", "running", "crashed"], "{s}");
    let text = p.ok(&["show", "1"]);
    assert!(
        text.contains("reason       torch.OutOfMemoryError")
            && text.contains("stderr (last lines)")
            && text.contains("    | torch.OutOfMemoryError"),
        "{text}"
    );

    // results.xlsx, read by LibreOffice: the reason column has the exception.
    p.ok(&["results"]);
    let csv = common::soffice_csv(&p.path("results.xlsx"), 0);
    let rows = common::lo::csv_rows(&csv);
    let col = rows[0].iter().position(|h| h == "reason").unwrap();
    let row1 = rows.iter().find(|r| r[0] == "1").unwrap();
    assert!(row1[col].starts_with("torch.OutOfMemoryError"), "{row1:?}");
    let row2 = rows.iter().find(|r| r[0] == "2").unwrap();
    assert!(row2[col].contains("SIGKILL"), "{row2:?}");
}

#[test]
fn a_rule_waits_for_min_runtime_and_says_what_fired_it() {
    // The rule would fire on the first line; the grace keeps the run going 3 s.
    let p = Project::new(
        "grace",
        "abort_when: loss>0.5\nmin_runtime: 3s\nclusters:\n  local:\n    grace: 2s\n",
    );
    p.write(
        "job.py",
        "import time\nfor i in range(200):\n    print(f'step={i} loss=0.9', flush=True)\n    time.sleep(0.05)\n",
    );
    p.workbook(
        &["id", "status", "command"],
        &[vec![V::S("1"), V::E, V::S("python3 job.py")]],
    );
    p.neroman(&["start", "1", "--wait"]);
    let one = entry(&p, "1");
    assert_eq!(one["state"], "aborted", "{one}");
    let runtime = one["runtime"].as_f64().unwrap();
    assert!((3.0..9.0).contains(&runtime), "{one}");
    let reason = one["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("rule loss>0.5 fired: ") && reason.contains("loss=0.9"),
        "{reason}"
    );
    let s = show(&p, "1");
    let rule = &s["runs"][0]["rule"];
    assert_eq!(rule["rule"], "loss>0.5", "{s}");
    assert_eq!(rule["values"]["loss"], 0.9, "{s}");
    assert!(rule["values"]["runtime"].as_f64().unwrap() >= 3.0, "{s}");
    let text = p.ok(&["show", "1"]);
    assert!(
        text.contains("abort_when   loss>0.5 (not before 3s of runtime)")
            && text.contains("reason       rule loss>0.5 fired: loss=0.9")
            && text.contains("rule fired   at "),
        "{text}"
    );
}

#[test]
fn a_bad_rule_is_refused_at_load_with_its_position() {
    let p = Project::new("badrule", "abort_when: 'loss>0.5 && && acc<1'\n");
    p.workbook(
        &["id", "status", "command"],
        &[vec![V::S("1"), V::E, V::S("true")]],
    );
    let out = p.neroman(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("abort_when: line 1: ")
            && err.contains("loss>0.5 && && acc<1")
            && err.contains("column 13"),
        "the key, the rule and the position (column 13, the second `&&`): {err}"
    );
}

fn fake_gpu_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu")
}

#[test]
fn gpu_use_is_sampled_and_reaches_show_and_results() {
    let p = Project::new("gpu", "clusters:\n  local:\n    max_parallel: 2\n");
    // The job says it is on the GPU (the fake reads the pids from this file), runs long
    // enough for the loop-mode sampler to see it, then finishes.
    let pids = p.path("gpu-pids");
    std::fs::write(&pids, "").unwrap();
    p.workbook(
        &["id", "status", "command"],
        &[
            vec![
                V::S("1"),
                V::E,
                V::S(
                    "sh -c 'echo $$ >> \"$NERONET_FAKE_GPU_PIDS\"; sleep 8; echo step=1 loss=0.5'",
                ),
            ],
            vec![V::S("2"), V::E, V::S("sh -c 'sleep 8'")],
        ],
    );
    let path = format!(
        "{}:{}",
        fake_gpu_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = p.neroman_env(
        &["start", "all", "--wait"],
        &[
            ("PATH", &path),
            ("NERONET_FAKE_GPU_PIDS", pids.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s = show(&p, "1");
    let res = &s["runs"][0]["resources"];
    assert_eq!(res["gpus"][0], "0: NVIDIA H100 80GB HBM3", "{s}");
    assert_eq!(res["gpu_peak"], 14.0, "{s}");
    assert_eq!(res["gpu_mem_peak"], 1388_i64 * 1024 * 1024, "{s}");
    // The row that used no GPU has none.
    let s2 = show(&p, "2");
    let res2 = &s2["runs"][0]["resources"];
    assert!(res2["gpus"].as_array().unwrap().is_empty(), "{s2}");
    assert_eq!(res2["gpu_peak"], serde_json::Value::Null, "{s2}");
    let text = p.ok(&["show", "1"]);
    assert!(
        text.contains("gpu          0: NVIDIA H100 80GB HBM3: utilisation peak 14 %"),
        "{text}"
    );

    p.ok(&["results"]);
    let csv = common::soffice_csv(&p.path("results.xlsx"), 0);
    let rows = common::lo::csv_rows(&csv);
    let col = |h: &str| rows[0].iter().position(|c| c == h).unwrap();
    let row1 = rows.iter().find(|r| r[0] == "1").unwrap();
    assert_eq!(row1[col("gpus")], "0: NVIDIA H100 80GB HBM3", "{row1:?}");
    assert_eq!(row1[col("gpu util peak (%)")], "14", "{row1:?}");
    assert_eq!(row1[col("gpu mem peak (MiB)")], "1388", "{row1:?}");
    assert!(!row1[col("rss peak (MiB)")].is_empty(), "{row1:?}");
    let row2 = rows.iter().find(|r| r[0] == "2").unwrap();
    assert_eq!(row2[col("gpus")], "", "{row2:?}");
    wait_until("nothing left of the fake", Duration::from_secs(10), || {
        !std::process::Command::new("pgrep")
            .args(["-f", &format!("{}/nvidia-smi", fake_gpu_dir().display())])
            .status()
            .unwrap()
            .success()
    });
}

#[test]
fn show_names_an_unknown_id_and_a_row_not_run_yet() {
    let p = Project::new("show", "");
    p.workbook(
        &["id", "status", "command", "lr"],
        &[vec![V::S("a1"), V::E, V::S("echo {lr}"), V::N(0.1)]],
    );
    let text = p.ok(&["show", "a1"]);
    assert!(
        text.contains("experiment a1") && text.contains("defined (it has not run yet)"),
        "{text}"
    );
    let s = show(&p, "a1");
    assert_eq!(s["state"], "defined");
    assert_eq!(s["params"]["lr"], 0.1, "{s}");
    let out = p.neroman(&["show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no experiment has the id \"nope\""));
}
