//! Rules and selections through the real neroman: a rule that is not a condition, a negative
//! id, and a field name that matches two metrics (PyTorch's `Loss:` and `Average loss:`).

mod common;
use common::{Project, V};

/// The ids `status SEL` selects.
fn selected(p: &Project, sel: &str) -> Vec<String> {
    let text = p.ok(&["status", sel, "--json"]);
    serde_json::from_str::<Vec<serde_json::Value>>(&text)
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

const YAML: &str = "command: python3 -c 'print(1)' {x}\nclusters:\n  local:\n    max_parallel: 4\n";

/// Regression: `16` (an id) typed into an `abort_when` cell was accepted and never fired; `all`
/// or a state would have fired at once or never. Each is now an error for its row, naming the
/// cell; the other rows run.
#[test]
fn a_rule_that_is_not_a_condition_is_an_error_for_its_row() {
    let p = Project::new("rule-not-condition", YAML);
    p.workbook(
        &["id", "status", "abort_when", "x"],
        &[
            vec![V::N(1.0), V::E, V::S("16"), V::N(1.0)],
            vec![V::N(2.0), V::E, V::S("all"), V::N(2.0)],
            vec![V::N(3.0), V::E, V::S("crashed"), V::N(3.0)],
            vec![V::N(4.0), V::E, V::S("3-5"), V::N(4.0)],
            vec![V::N(5.0), V::E, V::S("loss>5 || loss==nan"), V::N(5.0)],
        ],
    );
    let out = p.neroman(&["start", "all", "--wait"]);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{so}\n{se}");
    for (cell, rule) in [
        ("C2", "16"),
        ("C3", "all"),
        ("C4", "crashed"),
        ("C5", "3-5"),
    ] {
        let needle = format!(
            "experiments!{cell}: bad abort_when \"{rule}\": column 1: '{rule}' is not a condition: a rule needs a comparison"
        );
        assert!(se.contains(&needle), "missing {needle:?} in:\n{se}");
    }
    assert_eq!(p.state_of("5"), "finished");
    for bad in ["1", "2", "3", "4"] {
        assert_ne!(p.state_of(bad), "finished", "{bad} must not run");
    }
}

/// The same for the config's default rule: an error naming the key.
#[test]
fn a_default_rule_that_is_not_a_condition_is_a_config_error() {
    let p = Project::new(
        "default-rule-not-condition",
        &format!("{YAML}abort_when: running\n"),
    );
    p.workbook(&["id", "status", "x"], &[vec![V::N(1.0), V::E, V::N(1.0)]]);
    let out = p.neroman(&["status"]);
    let se = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(
        se.contains("abort_when: line ")
            && se.contains(": \"running\": column 1: 'running' is not a condition"),
        "{se}"
    );
}

/// Regression: a negative id could only be selected as `id==-3`; `-3` was a parse error (and
/// the CLI took it for an option).
#[test]
fn a_negative_id_selects_its_row() {
    let p = Project::new("negative-id", YAML);
    p.workbook(
        &["id", "status", "x"],
        &[
            vec![V::N(-7.0), V::E, V::N(1.0)],
            vec![V::N(-3.0), V::E, V::N(2.0)],
            vec![V::N(0.0), V::E, V::N(3.0)],
            vec![V::N(3.0), V::E, V::N(4.0)],
        ],
    );
    let ids = |sel: &str| selected(&p, sel);
    assert_eq!(ids("-3"), ["-3"]);
    assert_eq!(ids("-7--3"), ["-7", "-3"]);
    assert_eq!(ids("-3-0,3"), ["-3", "0", "3"]);
    assert_eq!(ids("id==-3"), ["-3"]);
    p.ok(&["start", "-3", "--wait"]);
    assert_eq!(p.state_of("-3"), "finished");
    assert_eq!(p.state_of("3"), "defined");
}

/// Regression: PyTorch's MNIST example prints `Loss:` on training lines and `Average loss:`
/// on test lines, and the selection `LOSS>1` silently resolved to one of the two metrics. It
/// is an error naming both; the exact spelling selects.
#[test]
fn an_ambiguous_field_in_a_selection_is_an_error_naming_both() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kid/tests/fixtures/pytorch_mnist_epoch.log");
    let p = Project::new(
        "ambiguous-selection",
        &format!(
            "command: \"cat '{}' && true {{x}}\"\nclusters:\n  local:\n    max_parallel: 4\n",
            fixture.display()
        ),
    );
    p.workbook(
        &["id", "status", "abort_when", "x"],
        &[vec![V::N(1.0), V::E, V::S("LOSS>5"), V::N(1.0)]],
    );
    p.ok(&["start", "all", "--wait"]);
    // The row's rule names it too: neroman says so once the metrics are known.
    let out = p.neroman(&["status"]);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(
        se.contains("experiments!C2: the rule \"LOSS>5\": field \"LOSS\" is ambiguous: it matches \"Loss\" and \"loss\""),
        "{se}"
    );
    let out = p.neroman(&["status", "LOSS>0.3"]);
    let se = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(
        se.contains("selection \"LOSS>0.3\": column 1: field \"LOSS\" is ambiguous: it matches \"Loss\" and \"loss\""),
        "{se}"
    );
    let one = |sel: &str| {
        let text = p.ok(&["status", sel, "--json"]);
        serde_json::from_str::<Vec<serde_json::Value>>(&text)
            .unwrap()
            .len()
    };
    // Training loss 0.32 at the end, test loss 0.048.
    assert_eq!(one("Loss>0.3"), 1);
    assert_eq!(one("loss>0.3"), 0);
}

/// A selection finds the runs whose loss went to NaN (kept as NaN through the store), which no
/// bound catches.
#[test]
fn a_selection_finds_nan_losses() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kid/tests/fixtures");
    let p = Project::new("nan-selection", YAML);
    let cmd = |f: &str| format!("cat '{}'", fixtures.join(f).display());
    let (healthy, diverged) = (cmd("pytorch_mnist_epoch.log"), cmd("pytorch_mnist_nan.log"));
    p.workbook(
        &["id", "status", "command", "x"],
        &[
            vec![V::N(1.0), V::E, V::S(&healthy), V::N(1.0)],
            vec![V::N(2.0), V::E, V::S(&diverged), V::N(2.0)],
        ],
    );
    p.ok(&["start", "all", "--wait"]);
    let ids = |sel: &str| selected(&p, sel);
    assert_eq!(ids("Loss==nan"), ["2"]);
    assert_eq!(ids("Loss!=nan"), ["1"]);
    assert_eq!(ids("Loss>0.3"), ["1"]);
    assert!(ids("Loss>5").is_empty());
}

/// Regressions from a user trial: a selection fell back row by row to whichever spelling a row
/// had (`Loss!=nan` picked rows that print only `loss`); the kid took this run's `Loss` for a
/// rule's `loss` before the run printed its own `loss`; and `!(acc>0.1)` fired at once, before
/// the job printed any `acc`.
#[test]
fn names_resolve_once_for_the_project_and_unprinted_metrics_fire_nothing() {
    let p = Project::new(
        "names-project-wide",
        "clusters:\n  local:\n    max_parallel: 4\n",
    );
    // Row 3 prints the training `Loss` first, its own `loss` only after a second.
    let late = "python3 -c \"import time; print('Loss=5', flush=True); time.sleep(1.5); print('loss=0.5')\"";
    p.workbook(
        &["id", "status", "command", "abort_when"],
        &[
            vec![V::N(1.0), V::E, V::S("echo Loss=2"), V::E],
            vec![V::N(2.0), V::E, V::S("echo loss=3"), V::E],
            vec![V::N(3.0), V::E, V::S(late), V::S("loss>1")],
            vec![V::N(4.0), V::E, V::S("echo hi"), V::S("LOSS>1")],
            vec![
                V::N(5.0),
                V::E,
                V::S("sleep 1; echo acc=0.5"),
                V::S("!(acc>0.1)"),
            ],
        ],
    );
    p.ok(&["start", "1,2", "--wait"]);
    let ids = |sel: &str| selected(&p, sel);
    assert_eq!(ids("Loss>1"), ["1"]);
    assert_eq!(ids("loss>1"), ["2"]);
    assert_eq!(ids("Loss!=nan"), ["1"]);
    // Row 4's rule now names two metrics ignoring case: the row is invalid, not guessed at.
    let out = p.neroman(&["start", "3-5", "--wait"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        so.contains("4: not started: invalid row")
            && so.contains("field \"LOSS\" is ambiguous: it matches \"Loss\" and \"loss\""),
        "{so}"
    );
    let state = |id: &str| p.state_of(id);
    assert_eq!(
        state("3"),
        "finished",
        "row 3's rule waited for its own loss"
    );
    assert_eq!(state("5"), "finished", "!(acc>0.1) waited for acc");
}
