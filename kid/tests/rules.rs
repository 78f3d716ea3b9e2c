//! `abort_when` in the real nerokid: NaN and infinity, field names in any case, and a name that
//! matches two metrics. The jobs print captured real-format training lines (`fixtures/`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn run_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nerokid-rules-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Run `script` under the kid with this `kid.json`; returns the event log's lines and how long
/// the kid took. The jobs sleep after printing: only an abort ends them early.
fn run_kid(
    dir: &Path,
    spec: &serde_json::Value,
    script: &str,
) -> (Vec<serde_json::Value>, Duration) {
    std::fs::write(dir.join("kid.json"), spec.to_string()).unwrap();
    let start = Instant::now();
    Command::new(env!("CARGO_BIN_EXE_nerokid"))
        .arg("run")
        .arg("--dir")
        .arg(dir)
        .args(["--", "sh", "-c", script])
        .status()
        .unwrap();
    let took = start.elapsed();
    // Raw JSON, so the test reads any event the kid writes.
    let events = std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (events, took)
}

fn outcome(events: &[serde_json::Value]) -> &serde_json::Value {
    let last = events.last().expect("events");
    assert_eq!(last["event"], "exited", "{last}");
    &last["outcome"]
}

fn fired(events: &[serde_json::Value]) -> Option<String> {
    events
        .iter()
        .find(|e| e["event"] == "rule_fired")
        .map(|e| e["rule"].as_str().unwrap().to_string())
}

/// Regression: a PyTorch run whose loss went to NaN printed `Loss: nan`; `Loss>5 || Loss==nan`
/// never fired (every comparison with NaN was false) and the run ended `finished`.
#[test]
fn a_nan_loss_is_caught_by_the_documented_rule() {
    let d = run_dir("nan");
    let spec =
        serde_json::json!({"id": "7", "abort_when": "Loss>5 || Loss==nan", "grace_secs": 0.5});
    let script = format!("cat '{}'; sleep 20", fixture("pytorch_mnist_nan.log"));
    let (events, took) = run_kid(&d, &spec, &script);
    assert_eq!(fired(&events).as_deref(), Some("Loss>5||Loss==nan"));
    assert_eq!(outcome(&events)["how"], "aborted", "{events:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// Regression: the demo's divergence rule (samples/quickstart/neronet.yaml) let a run whose loss
/// printed as `nan` go on to the end.
#[test]
fn the_demo_rule_catches_a_nan_loss() {
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/quickstart/neronet.yaml"),
    )
    .unwrap();
    let rule = yaml
        .lines()
        .find_map(|l| l.strip_prefix("abort_when:"))
        .expect("the demo has a rule")
        .trim()
        .to_string();
    let d = run_dir("demo-nan");
    let spec = serde_json::json!({"id": "6", "abort_when": rule, "grace_secs": 0.5});
    // The demo's train.py prints `epoch=%d loss=%.6f errorrate=%.4f`.
    let script = "for e in 1 2 3 4; do echo \"epoch=$e loss=nan errorrate=0.5000\"; done; sleep 20";
    let (events, took) = run_kid(&d, &spec, script);
    assert!(
        fired(&events).is_some(),
        "{rule:?} did not fire: {events:?}"
    );
    assert_eq!(outcome(&events)["how"], "aborted");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// Regression: the kid looked up rule fields by exact name, so `LOSS>2` never fired on
/// `loss=2.21` (the docs and selections match names case-insensitively); parameters too.
#[test]
fn rule_field_names_match_in_any_case() {
    let d = run_dir("case");
    let spec = serde_json::json!({
        "id": "3",
        "params": {"LR": "0.5"},
        "abort_when": "LOSS>2 && lr>0.1",
        "grace_secs": 0.5
    });
    let (events, took) = run_kid(&d, &spec, "echo 'epoch=1 loss=2.21'; sleep 20");
    assert_eq!(fired(&events).as_deref(), Some("LOSS>2&&lr>0.1"));
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// Regression: PyTorch's MNIST example prints `Loss:` (training) and `Average loss:` (test), so
/// `LOSS>1` silently meant one of two metrics. Now the exact spelling wins, and a name that
/// matches both only by case is reported once (an event naming both) and cannot fire.
#[test]
fn an_ambiguous_rule_field_is_reported_and_never_fires() {
    let d = run_dir("ambiguous");
    let spec = serde_json::json!({"id": "4", "abort_when": "LOSS>1", "grace_secs": 0.5});
    let script = format!(
        "cat '{f}'; sleep 0.6; cat '{f}'; sleep 0.6",
        f = fixture("pytorch_mnist_epoch.log")
    );
    let (events, _) = run_kid(&d, &spec, &script);
    assert_eq!(fired(&events), None, "{events:?}");
    assert_eq!(
        outcome(&events),
        &serde_json::json!({"how": "exit", "code": 0})
    );
    let problems: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "rule_problem")
        .collect();
    assert_eq!(problems.len(), 1, "once, not every round: {events:?}");
    let message = problems[0]["message"].as_str().unwrap();
    assert!(
        message.contains("LOSS") && message.contains("Loss") && message.contains("loss"),
        "{message}"
    );
    assert!(
        std::fs::read_to_string(d.join("stdout.log"))
            .unwrap()
            .starts_with("Train Epoch: 1 [0/60000 (0%)]\tLoss: 2.305936\n"),
        "the job's own log is untouched"
    );

    // The exact spelling picks the training loss (last 0.32, where the test loss is 0.048).
    let d = run_dir("exact");
    let spec = serde_json::json!({"id": "4", "abort_when": "Loss>0.3", "grace_secs": 0.5});
    let script = format!("cat '{}'; sleep 20", fixture("pytorch_mnist_epoch.log"));
    let (events, took) = run_kid(&d, &spec, &script);
    assert_eq!(fired(&events).as_deref(), Some("Loss>0.3"));
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(!events.iter().any(|e| e["event"] == "rule_problem"));
}
