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

/// The first event's time and the rule_fired event's time and values.
fn fired_at(events: &[serde_json::Value]) -> Option<(f64, Vec<(String, f64)>)> {
    let t0 = events[0]["t"].as_f64().unwrap();
    let e = events.iter().find(|e| e["event"] == "rule_fired")?;
    let values = e["values"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| (v[0].as_str().unwrap().to_string(), v[1].as_f64().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    Some((e["t"].as_f64().unwrap() - t0, values))
}

fn exit_reason(events: &[serde_json::Value]) -> Option<String> {
    events.last().unwrap()["reason"].as_str().map(String::from)
}

/// `runtime>2s`: a rule with a unit fires on the run's age alone, not before it.
#[test]
fn a_rule_with_units_fires_on_runtime() {
    let d = run_dir("units");
    let spec = serde_json::json!({"id": "8", "abort_when": "runtime>2s", "grace_secs": 0.5});
    let (events, took) = run_kid(&d, &spec, "echo 'step=1 loss=0.5'; sleep 30");
    let (at, values) = fired_at(&events).expect("the rule fired");
    assert!((2.0..6.0).contains(&at), "fired at {at} s");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(values.len(), 1, "{values:?}");
    assert_eq!(values[0].0, "runtime");
    assert!(values[0].1 >= 2.0, "{values:?}");
    assert_eq!(outcome(&events)["how"], "aborted");
    let reason = exit_reason(&events).unwrap();
    assert!(
        reason.starts_with("rule runtime>2s fired: runtime=") && reason.ends_with('s'),
        "{reason}"
    );
}

/// A rule over a metric the job never prints stays unknown: it never fires, the run finishes
/// with its own exit code and no reason.
#[test]
fn a_rule_over_a_metric_that_never_appears_never_fires() {
    let d = run_dir("never");
    let spec =
        serde_json::json!({"id": "9", "abort_when": "acc<0.1 || !(acc>0.2)", "grace_secs": 0.5});
    let script = "for i in 1 2 3 4 5; do echo \"step=$i loss=0.$i\"; sleep 0.3; done";
    let (events, _) = run_kid(&d, &spec, script);
    assert_eq!(fired(&events), None, "{events:?}");
    assert_eq!(
        outcome(&events),
        &serde_json::json!({"how": "exit", "code": 0})
    );
    assert_eq!(exit_reason(&events), None);
    assert!(events.last().unwrap().get("stderr_tail").is_none());
}

/// `min_runtime`: a rule true from the first line fires only once the run is that old, and
/// the exit record says which values fired it. Without the grace it fires at once.
#[test]
fn min_runtime_holds_the_rule_back() {
    let script = "echo 'step=1 loss=3.1'; sleep 30";
    let d = run_dir("grace");
    let spec = serde_json::json!({
        "id": "10", "abort_when": "loss>2", "grace_secs": 0.5, "min_runtime_secs": 2.0
    });
    let (events, took) = run_kid(&d, &spec, script);
    let (at, values) = fired_at(&events).expect("the rule fired");
    assert!(at >= 2.0, "fired at {at} s, before min_runtime");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(values[0], ("loss".to_string(), 3.1));
    assert_eq!(values[1].0, "runtime");
    assert!((2.0..6.0).contains(&values[1].1), "{values:?}");
    let reason = exit_reason(&events).unwrap();
    assert!(
        reason.starts_with("rule loss>2 fired: loss=3.1, runtime=") && reason.ends_with('s'),
        "{reason}"
    );

    let d = run_dir("no-grace");
    let spec = serde_json::json!({"id": "10", "abort_when": "loss>2", "grace_secs": 0.5});
    let (events, _) = run_kid(&d, &spec, script);
    let (at, _) = fired_at(&events).expect("the rule fired");
    assert!(
        at < 1.5,
        "without a grace the rule fires at once, not at {at} s"
    );
}
