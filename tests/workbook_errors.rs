//! Bad workbooks and bad rows: a clear error naming the file, sheet or cell; nothing started for
//! a broken file; the other rows of a file with bad rows proceed.

mod common;
use common::{Project, V};

const YAML: &str = "command: python3 -c 'print(1)' {x}\nclusters:\n  local:\n    max_parallel: 4\n";

fn fails_naming(p: &Project, args: &[&str], needles: &[&str]) -> String {
    let out = p.neroman(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "neroman {args:?} should fail; stderr: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}: {err}");
    }
    assert!(
        !p.path(".neronet/mum-local/runs").exists(),
        "nothing may be started"
    );
    err
}

#[test]
fn bad_rows_are_reported_with_their_cell_and_the_rest_run() {
    let p = Project::new("bad-rows", YAML);
    p.workbook(
        &["id", "status", "cluster", "abort_when", "command", "x"],
        &[
            vec![V::N(1.0), V::E, V::E, V::E, V::E, V::N(1.0)], // row 2: fine
            vec![V::N(12.0), V::E, V::E, V::E, V::E, V::N(2.0)], // row 3: dup of row 7
            vec![V::E, V::S("start"), V::E, V::E, V::E, V::N(3.0)], // row 4: no id
            vec![V::N(4.0), V::E, V::S("gpu-farm"), V::E, V::E, V::N(4.0)], // row 5: unknown cluster
            vec![V::N(5.0), V::E, V::E, V::E, V::S("echo {lr}"), V::N(5.0)], // row 6: no column lr
            vec![V::N(12.0), V::E, V::E, V::E, V::E, V::N(6.0)],            // row 7: duplicate id
            vec![V::N(8.0), V::E, V::E, V::S("loss>>1"), V::E, V::N(8.0)],  // row 8: bad rule
            vec![V::E, V::E, V::E, V::E, V::E, V::E],                       // row 9: blank, ignored
            vec![V::S("x-9"), V::E, V::E, V::E, V::E, V::N(9.0)],           // row 10: fine, text id
        ],
    );
    let out = p.neroman(&["start", "all", "--wait"]);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{so}\n{se}");
    for needle in [
        "experiments!A7: duplicate id 12 (first in A3)",
        "experiments!A3: duplicate id 12 (again in A7)",
        "experiments!A4: missing id",
        "experiments!C5: unknown cluster \"gpu-farm\" (known: local)",
        "experiments!E6: placeholder {lr} has no column",
        "experiments!D8: bad abort_when \"loss>>1\": column 6",
    ] {
        assert!(se.contains(needle), "missing {needle:?} in:\n{se}");
    }
    let st = p.status();
    let state = |id: &str| {
        st.iter()
            .find(|e| e["id"] == id)
            .map(|e| e["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(state("1"), "finished");
    assert_eq!(state("x-9"), "finished");
    let no_id = st
        .iter()
        .find(|e| e["row"] == 4)
        .expect("the row without an id shows in status");
    // `status --json` keeps SPEC states: an invalid row is `defined`, with its problems.
    let invalid = |e: &serde_json::Value| {
        e["state"] == "defined" && !e["problems"].as_array().unwrap().is_empty()
    };
    assert!(invalid(no_id), "{no_id}");
    for bad in ["12", "4", "5", "8"] {
        let e = st.iter().find(|e| e["id"] == bad).unwrap();
        assert!(invalid(e), "{bad}: {e}");
    }
    // The problems sheet lists them too.
    let csv = common::soffice_csv(&p.path("results.xlsx"), 2);
    assert!(
        csv.contains("experiments!C5,4,\"unknown cluster \"\"gpu-farm\"\" (known: local)\""),
        "{csv}"
    );
}

#[test]
fn missing_columns_empty_sheets_and_broken_files_are_errors() {
    let p = Project::new("bad-files", YAML);
    p.workbook(
        &["ID", "command", "x"],
        &[vec![V::N(1.0), V::S("true"), V::N(1.0)]],
    );
    fails_naming(
        &p,
        &["start", "all"],
        &["experiments!1:1 has no \"status\" column", "ID, command, x"],
    );

    p.workbook(&["name", "Status"], &[vec![V::N(1.0), V::S("start")]]);
    fails_naming(&p, &["status"], &["has no \"id\" column"]);

    let mut book = rust_xlsxwriter::Workbook::new();
    let ws = book.add_worksheet().set_name("experiments").unwrap();
    ws.write_string(1, 0, "id").unwrap();
    ws.write_string(1, 1, "status").unwrap();
    book.save(p.path("experiments.xlsx")).unwrap();
    fails_naming(
        &p,
        &["status"],
        &["experiments!1:1 is empty", "starts in row 2"],
    );

    p.workbook(&[], &[]);
    fails_naming(&p, &["start", "all"], &["sheet \"experiments\" is empty"]);

    std::fs::write(p.path("experiments.xlsx"), "id,status\n1,start\n").unwrap();
    fails_naming(
        &p,
        &["start", "all"],
        &["experiments.xlsx: not a readable spreadsheet"],
    );

    // A workbook cut off in the middle (as a half-finished copy would be).
    p.workbook(&["id", "status", "x"], &[vec![V::N(1.0), V::E, V::N(1.0)]]);
    let bytes = std::fs::read(p.path("experiments.xlsx")).unwrap();
    std::fs::write(p.path("experiments.xlsx"), &bytes[..bytes.len() / 2]).unwrap();
    fails_naming(&p, &["start", "all"], &["not a readable spreadsheet"]);

    p.workbook(
        &["id", "status", "x", "X"],
        &[vec![V::N(1.0), V::E, V::N(1.0), V::N(2.0)]],
    );
    fails_naming(
        &p,
        &["start", "all"],
        &["experiments!C1 and experiments!D1 are both headed \"X\""],
    );
}

#[test]
fn selection_errors_name_the_field_and_column() {
    let p = Project::new("bad-selection", YAML);
    p.workbook(&["id", "status", "x"], &[vec![V::N(1.0), V::E, V::N(1.0)]]);
    let err = fails_naming(&p, &["start", "runtime>7200&&erorrate>0.4"], &[]);
    assert!(
        err.contains("column 15") && err.contains("\"erorrate\""),
        "{err}"
    );
    let err = fails_naming(&p, &["start", "x>"], &["column 3"]);
    assert!(err.contains("expected a value"), "{err}");
    let err = fails_naming(
        &p,
        &["start", "crashd"],
        &["did you mean the state crashed?"],
    );
    assert!(err.contains("no experiment has the id \"crashd\""), "{err}");
    let err = fails_naming(&p, &["start", "runtim>3"], &["did you mean runtime?"]);
    let _ = err;
}

#[test]
fn ods_workbooks_read_too() {
    let p = Project::new("ods", "command: echo {x}\n");
    common::write_workbook(
        &p.path("book.xlsx"),
        "experiments",
        &["id", "status", "x"],
        &[vec![V::N(1.0), V::E, V::S("hello world")]],
    );
    // A real LibreOffice makes the .ods.
    common::soffice_convert(&p.path("book.xlsx"), "ods", &p.dir, &p.path("lo-profile"));
    p.write("neronet.yaml", "workbook: book.ods\ncommand: echo {x}\n");
    // (A formula error in an .ods is caught too: see ods_formula_errors_make_the_row_invalid.)
    // init's template is not needed: the config names the workbook.
    p.ok(&["start", "all", "--wait"]);
    assert_eq!(p.ok(&["logs", "1"]), "hello world\n");
}

#[test]
fn config_errors_name_the_key() {
    let p = Project::new("bad-config", "clusters:\n  local:\n    max_paralel: 3\n");
    p.workbook(&["id", "status", "x"], &[vec![V::N(1.0), V::E, V::N(1.0)]]);
    fails_naming(&p, &["status"], &["neronet.yaml", "max_paralel"]);
}

#[test]
fn colliding_and_shadowed_columns_are_warned_about() {
    let p = Project::new(
        "warn-columns",
        "command: echo {learning rate} {learning_rate}\n",
    );
    p.workbook(
        &["id", "status", "learning rate", "learning_rate", "runtime"],
        &[vec![V::N(1.0), V::E, V::N(0.1), V::N(0.2), V::N(5.0)]],
    );
    let out = p.neroman(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("both map to $NERO_PARAM_LEARNING_RATE"),
        "{err}"
    );
    assert!(
        err.contains("column \"runtime\" is named like the built-in field runtime"),
        "{err}"
    );
}

/// Regressions: the user's cluster defaults were dropped whenever the project named the same
/// cluster, and a bad value in the user's file was reported against the project's file.
#[test]
fn user_defaults_merge_key_by_key_and_errors_name_their_file() {
    let p = Project::new(
        "user-defaults",
        "command: echo from_user=$FROM_USER\nclusters:\n  local:\n    max_parallel: 3\n",
    );
    p.workbook(&["id", "status"], &[vec![V::N(1.0), V::E]]);
    let user =
        p.user_config("clusters:\n  local:\n    setup: ['export FROM_USER=yes']\n    grace: 3s\n");
    p.ok(&["start", "1", "--wait"]);
    assert_eq!(p.ok(&["logs", "1"]), "from_user=yes\n");
    // `setup: []` in the project clears the user's lines; a remote cluster in the user's file
    // only matters to rows that use it.
    p.write(
        "neronet.yaml",
        "command: echo from_user=$FROM_USER\nclusters:\n  local:\n    setup: []\n",
    );
    p.user_config(
        "clusters:\n  local:\n    setup: ['export FROM_USER=yes']\n  hpc:\n    ssh: me@hpc\n    warden: sge\n",
    );
    p.ok(&["restart", "1", "--wait"]);
    assert_eq!(p.ok(&["logs", "1"]), "from_user=\n");
    p.workbook(
        &["id", "status", "cluster"],
        &[
            vec![V::N(1.0), V::E, V::E],
            vec![V::N(2.0), V::E, V::S("hpc")],
        ],
    );
    let st = p.status();
    assert_eq!(st[1]["state"], "defined");
    // The user's Grid Engine cluster is a valid place for row 2 (not started here).
    assert!(
        st[1]["problems"].as_array().is_none_or(|a| a.is_empty()),
        "{st:?}"
    );
    p.user_config("clusters:\n  local:\n    grace: soon\n");
    let out = p.neroman(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}: clusters.local.grace", user.display())),
        "{err}"
    );
}

/// Regression: in an .ods, a formula error (`=1/0`) reached the job as the text `#DIV/0!`.
#[test]
fn ods_formula_errors_make_the_row_invalid() {
    let p = Project::new("ods-error", "workbook: book.ods\ncommand: echo {x}\n");
    let csv = p.path("book.csv");
    std::fs::write(&csv, "id,status,x\n1,,=1/0\n2,,fine\n").unwrap();
    common::soffice_convert(&csv, "ods", &p.dir, &p.path("lo-profile"));
    let out = p.neroman(&["start", "all", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("book!C2: cell error #DIV/0! in column \"x\""),
        "{err}"
    );
    let st = p.status();
    assert_eq!(st[0]["state"], "defined");
    assert!(
        !st[0]["problems"].as_array().unwrap().is_empty(),
        "{}",
        st[0]
    );
    assert_eq!(st[1]["state"], "finished");
}

/// Regression: a user default `clusters.local.warden: slurm` could not be overridden: the
/// project's `warden: local` read as "not written", the cluster stayed a SLURM one and every
/// row was refused (its warden a batch one).
#[test]
fn a_project_warden_local_overrides_the_users_slurm() {
    let p = Project::new(
        "warden-override",
        "command: echo ran\nclusters:\n  local:\n    warden: local\n",
    );
    p.workbook(&["id", "status"], &[vec![V::N(1.0), V::E]]);
    p.user_config("clusters:\n  local:\n    warden: slurm\n");
    p.ok(&["start", "1", "--wait"]);
    assert_eq!(p.ok(&["logs", "1"]), "ran\n");
    // It ran as a process here, not as a SLURM job (`<array>_<task>`).
    assert!(!p.status()[0]["job_id"].as_str().unwrap().contains('_'));
    // Without the project's word the user's warden stands: `neroman clusters` checks Grid
    // Engine's commands for the `local` cluster.
    p.user_config("clusters:\n  local:\n    warden: sge\n");
    p.write("neronet.yaml", "command: echo ran\n");
    // (Its check may fail where Grid Engine is not installed: only the warden matters here.)
    let out = p.neroman(&["clusters", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let local = report
        .as_array()
        .and_then(|a| a.iter().find(|c| c["cluster"] == "local"))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(local["warden"]["kind"], "sge", "{report}");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/workbooks")
        .join(name)
}

/// Regression: a formula openpyxl wrote without its value, and a covered cell of a merged
/// range, were reported as an empty cell; the CLI now says what they are and how to fix them.
#[test]
fn formulas_without_values_and_merged_cells_are_named_in_the_cli() {
    let p = Project::new("formulas", "workbook: book.xlsx\n");
    std::fs::copy(fixture("openpyxl-formulas.xlsx"), p.path("book.xlsx")).unwrap();
    let out = p.neroman(&["start", "all", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("experiments!E3: formula `=E2*2` has no computed value")
            && err.contains("open and save it in LibreOffice or Excel"),
        "{err}"
    );
    assert_eq!(p.ok(&["logs", "1"]), "0.1 16\n");
    std::fs::copy(fixture("merged.xlsx"), p.path("book.xlsx")).unwrap();
    let out = p.neroman(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("experiments!D3: part of the merged range D2:D4, whose value is in D2 only"),
        "{err}"
    );
}

/// Regression: in a 1904-date-system workbook (Mac Excel) dates came out four years early, and
/// a duration cell reached the command as a date in 1899. `{time_limit}` is `36:00:00` as the
/// cell shows it, and compares as seconds in selections.
#[test]
fn dates_and_durations_reach_the_command_as_the_sheet_shows_them() {
    let p = Project::new("dates", "workbook: book.xlsx\n");
    std::fs::copy(fixture("dates-1904.xlsx"), p.path("book.xlsx")).unwrap();
    p.ok(&["start", "time_limit>1d&&time_limit<2d", "--wait"]);
    assert_eq!(
        p.ok(&["logs", "1"]),
        "2026-03-14 2026-03-14 14:30:00 36:00:00 1:30:05 2026-03-15 09:15:00\n"
    );
    // results.xlsx keeps a duration a duration (it was the raw 129600 seconds).
    let results = common::soffice_csv(&p.path("results.xlsx"), 0);
    assert!(results.contains(",36:00:00,"), "{results}");
}
