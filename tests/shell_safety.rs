//! Workbook values never reach a shell unquoted: hostile parameter values arrive in the job
//! literally, in its arguments and in NERO_PARAM_* variables, and execute nothing.

mod common;
use common::{Project, V};

const SHOW: &str = r#"
import json, os, sys
json.dump({"argv": sys.argv[1:], "env": os.environ.get("NERO_PARAM_VALUE")}, open(os.environ["NERO_RUN_DIR"] + "/seen.json", "w"))
"#;

#[test]
fn hostile_values_reach_the_job_literally() {
    let p = Project::new("shell", "command: python3 show.py {value} --id {id}\n");
    p.write("show.py", SHOW);
    let values = [
        "$(touch PWNED)",
        "`touch PWNED2`",
        "a; rm -rf x; touch PWNED3",
        "it's \"quoted\" \\ back",
        "line one\nline two && touch PWNED4",
        "*",
        "--flag=$HOME",
        "${IFS}|touch PWNED5",
    ];
    std::fs::create_dir(p.path("x")).unwrap();
    let rows: Vec<Vec<V>> = values
        .iter()
        .enumerate()
        .map(|(i, v)| vec![V::N(i as f64 + 1.0), V::E, V::S(v)])
        .collect();
    p.workbook(&["id", "status", "value"], &rows);
    p.ok(&["start", "all", "--wait"]);
    for (i, v) in values.iter().enumerate() {
        let seen =
            std::fs::read_to_string(p.run_dir(&format!("{}.1", i + 1)).join("seen.json")).unwrap();
        let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
        assert_eq!(
            seen["argv"],
            serde_json::json!([v, "--id", (i + 1).to_string()]),
            "value {v:?}"
        );
        assert_eq!(seen["env"], *v, "NERO_PARAM_VALUE for {v:?}");
    }
    for f in ["PWNED", "PWNED2", "PWNED3", "PWNED4", "PWNED5"] {
        assert!(!p.path(f).exists(), "{f} was created: a value was executed");
    }
    assert!(p.path("x").is_dir(), "x was removed: a value was executed");
}
