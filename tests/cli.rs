//! The CLI surface: init, the seed's flag forms, tmod selections, rules from the workbook,
//! the status table, and the agent's version handshake.

mod common;
use common::{wait_until, Project, V};
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

#[test]
fn init_writes_the_template_and_refuses_to_overwrite() {
    let p = Project::new("init", "");
    let target = p.path("fresh");
    let out = p.ok(&["init", target.to_str().unwrap()]);
    assert!(out.contains("created"), "{out}");
    let sheet = neronet::sheet::read::read_experiments(&target.join("experiments.xlsx")).unwrap();
    assert_eq!(sheet.rows.len(), 2);
    let yaml = std::fs::read_to_string(target.join("neronet.yaml")).unwrap();
    neronet::config::Config::parse(&yaml, &target.join("neronet.yaml")).unwrap();
    let again = p.neroman(&["init", target.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    // The template opens in LibreOffice with its header and rows.
    let csv = common::soffice_csv(&target.join("experiments.xlsx"), 0);
    assert!(
        csv.starts_with("id,status,command,cluster,abort_when,lr,width,notes\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 3);
}

#[test]
fn flag_forms_tmod_and_the_status_table() {
    let p = Project::new("flags", "command: echo loss={x}\n");
    p.workbook(
        &["id", "status", "x", "notes"],
        &[
            vec![V::N(1.0), V::E, V::N(0.5), V::E],
            vec![V::N(2.0), V::S("hold"), V::N(0.7), V::E],
        ],
    );
    let out = p.ok(&["--start", "tmod<1h", "--wait"]);
    assert!(out.contains("1: finished"), "{out}");
    assert!(out.contains("2: not started: on hold"), "{out}");
    let table = p.ok(&["status"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["id", "state", "cluster", "runtime", "x", "loss", "note"]
    );
    let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
    assert_eq!(words(1)[..3], ["1", "finished", "local"], "{table}");
    assert_eq!(
        words(2)[..5],
        ["2", "defined", "(hold)", "local", "0.7"],
        "{table}"
    );
    // A selection on a metric now knows the metric; one on a typo suggests it.
    assert!(p.ok(&["status", "loss>0.4"]).contains("finished"));
    let bad = p.neroman(&["status", "los>0.4"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("did you mean loss?"));
    // Nothing to abort is not an error, and the finished rows are not listed one by one.
    let out = p.ok(&["abort", "all"]);
    assert!(
        out.contains("nothing to abort: none of the 2 selected"),
        "{out}"
    );
}

#[test]
fn a_rule_in_the_workbook_stops_the_run() {
    let p = Project::new("rule", "clusters:\n  local:\n    grace: 1s\n");
    p.write("diverge.py", "import time\nfor i in range(600):\n    print(f'epoch={i} loss={10*i}', flush=True)\n    time.sleep(0.05)\n");
    p.workbook(
        &["id", "status", "command", "abort_when"],
        &[vec![
            V::N(1.0),
            V::E,
            V::S("python3 diverge.py"),
            V::S("epoch>=3 && loss>20"),
        ]],
    );
    let out = p.neroman(&["start", "1", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "--wait reports a run that did not finish"
    );
    let st = &p.status()[0];
    assert_eq!(st["state"], "aborted");
    // The rule and the values that fired it.
    let reason = st["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("rule epoch>=3&&loss>20 fired: epoch=") && reason.contains(", loss="),
        "{reason}"
    );
    assert!(
        st["metrics"]["epoch"].as_f64().unwrap() < 20.0,
        "stopped soon after the rule held: {st}"
    );
}

#[test]
fn logs_follow_until_the_run_ends() {
    let p = Project::new("follow", "");
    p.write("slow.py", "import time\nfor i in range(8):\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)\n");
    p.workbook(
        &["id", "status", "command"],
        &[vec![V::S("s"), V::E, V::S("python3 slow.py")]],
    );
    p.ok(&["start", "s"]);
    p.wait_for_state("s", "running");
    let out = p.ok(&["logs", "s", "-f"]);
    assert_eq!(out.lines().count(), 8, "{out}");
    assert_eq!(p.state_of("s"), "finished");
}

#[test]
fn mum_refuses_another_protocol_version() {
    let p = Project::new("handshake", "");
    let workdir = p.path("mum");
    let mum = common::neroman_bin().with_file_name("neromum");
    let mut child = std::process::Command::new(mum)
        .args(["serve", "--workdir"])
        .arg(&workdir)
        .args(["--idle-exit", "30"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = workdir.join("mum.sock");
    wait_until("mum socket", Duration::from_secs(10), || sock.exists());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the socket is the user's alone");
    let talk = |line: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        reply
    };
    // Another version gets mum's own version in a hello reply (so a newer neroman can ask it to
    // hand over), and nothing but `shutdown` is served on that connection.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"{\"type\":\"hello\",\"version\":99,\"client\":\"neroman 9\",\"max_parallel\":null}\n{\"type\":\"submit\",\"runs\":[]}\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut reply = String::new();
    r.read_line(&mut reply).unwrap();
    assert!(
        reply.contains("\"type\":\"hello\"")
            && reply.contains(&format!(
                "\"version\":{}",
                neronet::cluster::protocol::PROTOCOL_VERSION
            )),
        "{reply}"
    );
    reply.clear();
    r.read_line(&mut reply).unwrap();
    assert!(reply.contains("only shutdown is understood"), "{reply}");
    let reply = talk("{\"type\":\"submit\",\"runs\":[]}\n");
    assert!(reply.contains("expected hello first"), "{reply}");
    let reply = talk("not json\n");
    assert!(reply.contains("version mismatch?"), "{reply}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Regression: `abort` of a run neroman had recorded but mum had not been given yet did nothing,
/// and the run started later when neroman resubmitted it.
#[test]
fn mum_remembers_an_abort_that_came_before_the_run() {
    use neronet::cluster::client::{LocalMum, MumClient, Transport};
    use neronet::cluster::protocol::{MumEvent, RunSpec};
    let p = Project::new("early-abort", "");
    let bin = common::neroman_bin();
    let mum = LocalMum {
        workdir: p.path("mum"),
        mum_binary: bin.with_file_name("neromum"),
        kid_binary: common::nerokid_bin(),
        max_parallel: 2,
        idle_exit_secs: 30,
        project: None,
        transport: Transport::Socket,
        warden: Default::default(),
        listen: "auto".into(),
    };
    let mut client = MumClient::connect_or_start(&mum).unwrap();
    client.abort(vec!["x.1".into()]).unwrap();
    let spec = |run: &str, command: &str| RunSpec {
        run: run.into(),
        command: command.into(),
        cwd: Some(p.dir.display().to_string()),
        env: vec![],
        setup: vec![],
        kid: Default::default(),
        warden_opts: vec![],
    };
    // y.1, submitted after x.1, shows when x.1 would have run: the queue is first come first served.
    client
        .submit(vec![
            spec("x.1", "touch x-started"),
            spec("y.1", "touch y-started"),
        ])
        .unwrap();
    wait_until("y.1 to run", Duration::from_secs(20), || {
        p.path("y-started").exists()
    });
    let x_events: Vec<MumEvent> = client
        .sync(0, None, Duration::ZERO)
        .unwrap()
        .entries
        .into_iter()
        .filter(|e| e.run == "x.1")
        .map(|e| e.event)
        .collect();
    assert_eq!(
        x_events,
        [MumEvent::Cancelled],
        "x.1 must not be queued or launched"
    );
    assert!(!p.path("x-started").exists());
    client
        .request(neronet::cluster::protocol::Request::Shutdown)
        .unwrap();
}

/// Regression: a run whose output ended inside a UTF-8 character made `logs -f` wait forever.
#[test]
fn logs_end_even_after_a_torn_character() {
    let p = Project::new("torn-utf8", "");
    p.workbook(
        &["id", "status", "command"],
        &[vec![V::N(5.0), V::E, V::S(r"printf 'abc\342'")]],
    );
    p.ok(&["start", "5", "--wait"]);
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(common::neroman_bin())
        .arg("--dir")
        .arg(&p.dir)
        .args(["logs", "5", "-f"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "logs -f did not end: {:?}",
        out.status
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "abc\u{fffd}");
}

/// Regression: `logs -f` died with "Broken pipe" when mum was killed and restarted.
#[test]
fn logs_follow_survives_a_mum_restart() {
    let p = Project::new("follow-restart", "");
    p.write("slow.py", "import time\nfor i in range(20):\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)\n");
    p.workbook(
        &["id", "status", "command"],
        &[vec![V::S("s"), V::E, V::S("python3 slow.py")]],
    );
    p.ok(&["start", "s"]);
    p.wait_for_state("s", "running");
    let follower = std::process::Command::new(common::neroman_bin())
        .arg("--dir")
        .arg(&p.dir)
        .args(["logs", "s", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("some output", Duration::from_secs(10), || {
        std::fs::read_to_string(p.run_dir("s.1").join("stdout.log"))
            .is_ok_and(|t| t.lines().count() >= 3)
    });
    common::kill(p.mum_pid().unwrap(), libc::SIGKILL);
    let out = follower.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 20, "{text}");
}

/// Regression: a typo in a rule (`los>3`) never fired and nothing said so.
#[test]
fn a_rule_field_nothing_knows_is_warned_about() {
    let p = Project::new("rule-typo", "command: echo loss=5\n");
    p.workbook(
        &["id", "status", "abort_when"],
        &[vec![V::N(1.0), V::E, V::S("los>3")]],
    );
    p.ok(&["start", "1", "--wait"]); // now `loss` is a known metric
    let out = p.neroman(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("experiments!C2: the rule \"los>3\" uses \"los\""),
        "{err}"
    );
    assert!(err.contains("did you mean loss?"), "{err}");
}

/// Regression: `neroman` set SIGPIPE to SIG_DFL for `neroman status | head`, which would let a
/// dead ssh child kill the coming daemon. With SIGPIPE ignored, a closed stdout must still end a
/// command quietly with exit 0 (println! would panic).
#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    let p = Project::new("closed-pipe", "command: echo loss={x}\n");
    p.workbook(
        &["id", "status", "x"],
        &[
            vec![V::N(1.0), V::E, V::N(0.1)],
            vec![V::N(2.0), V::E, V::N(0.2)],
            vec![V::N(3.0), V::S("hold"), V::N(0.3)],
        ],
    );
    for args in [&["status"][..], &["status", "--json"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(common::neroman_bin())
            .arg("--dir")
            .arg(&p.dir)
            .args(args)
            .env("XDG_CONFIG_HOME", p.path(".no-user-config"))
            .env_remove("RUST_LOG")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {:?} {err}",
            out.status
        );
        assert!(
            !err.contains("panicked") && !err.to_lowercase().contains("broken pipe"),
            "{args:?}: {err}"
        );
    }
}

/// Regression: `status --json` reported `invalid` and `defined (hold)` as states. `state` keeps
/// to SPEC §4's names; a hold and a row's problems have fields of their own. The table, for
/// people, still says `invalid` and `(hold)`.
#[test]
fn status_json_states_are_spec_states_with_hold_and_problems_apart() {
    let p = Project::new("json-states", "command: echo loss={x}\n");
    p.workbook(
        &["id", "status", "cluster", "x"],
        &[
            vec![V::N(1.0), V::S("hold"), V::E, V::N(0.5)],
            vec![V::N(2.0), V::E, V::S("gpu-farm"), V::N(0.7)],
            vec![V::N(3.0), V::E, V::E, V::N(0.9)],
        ],
    );
    let st = p.status();
    assert_eq!(st.len(), 3, "{st:?}");
    for e in &st {
        assert_eq!(e["state"], "defined", "{e}");
    }
    assert_eq!(st[0]["hold"], true, "{}", st[0]);
    assert_eq!(st[0]["problems"], serde_json::json!([]));
    assert_eq!(st[1]["hold"], false);
    let problems = st[1]["problems"].as_array().unwrap();
    assert!(
        problems.len() == 1 && problems[0].as_str().unwrap().contains("unknown cluster"),
        "{problems:?}"
    );
    assert_eq!(st[2]["hold"], false);
    let table = p.ok(&["status"]);
    let words = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(words("1")[1..3], ["defined", "(hold)"], "{table}");
    assert_eq!(words("2")[1], "invalid", "{table}");
}

/// A job that prints nine metrics, `loss` among them (named after no rule or selection).
const NINE_METRICS: &str =
    "command: echo aa=1 ab=2 ac=3 ad=4 ae=5 af=6 ag=7 loss={x} zz=1\nabort_when: zz>100\n";

/// The metric columns of `status`'s header (what follows the parameter `x`, before `note`).
fn metric_columns(table: &str) -> Vec<String> {
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let x = header.iter().position(|h| *h == "x").unwrap();
    header[x + 1..header.len() - 1]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Regression: the status table showed the first six metrics in alphabetical order, so `loss`
/// (and the metric a rule or the selection is about) was hidden behind `aa` ... `af`. Now the
/// metrics the selection and the rules name come first, then the most common ones (`loss`
/// before other names as common), and `--metrics` or `status_metrics:` chooses them outright.
#[test]
fn status_metric_columns_prefer_rules_and_selection_and_can_be_chosen() {
    let p = Project::new("metric-columns", NINE_METRICS);
    p.workbook(
        &["id", "status", "x"],
        &[
            vec![V::N(1.0), V::E, V::N(0.5)],
            vec![V::N(2.0), V::E, V::N(0.4)],
        ],
    );
    p.ok(&["start", "all", "--wait"]);
    let table = p.ok(&["status"]);
    assert_eq!(
        metric_columns(&table),
        ["zz", "loss", "aa", "ab", "ac", "ad"],
        "the rule's metric, then loss, then the rest\n{table}"
    );
    assert!(table.contains("(3 more metrics not shown"), "{table}");
    let table = p.ok(&["status", "ag>0"]);
    assert_eq!(
        metric_columns(&table),
        ["ag", "zz", "loss", "aa", "ab", "ac"],
        "{table}"
    );
    let table = p.ok(&["status", "--metrics", "LOSS,ae"]);
    assert_eq!(metric_columns(&table), ["loss", "ae"], "{table}");
    assert!(!table.contains("more metric"), "{table}");
    let table = p.ok(&["status", "--metrics", "all"]);
    assert_eq!(metric_columns(&table).len(), 9, "{table}");
    let bad = p.neroman(&["status", "--metrics", "los"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("\"los\"") && err.contains("did you mean loss?"),
        "{err}"
    );
    p.write(
        "neronet.yaml",
        &format!("{NINE_METRICS}status_metrics: [ag, loss]\n"),
    );
    let table = p.ok(&["status"]);
    assert_eq!(metric_columns(&table), ["ag", "loss"], "{table}");
    // A configured name no run reported keeps its column, but a likely typo is said, as
    // `--metrics` says it (it was silent).
    p.write(
        "neronet.yaml",
        &format!("{NINE_METRICS}status_metrics: [los, loss]\n"),
    );
    let out = p.neroman(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("status_metrics in neronet.yaml: no run has reported a metric \"los\" yet; did you mean loss?"),
        "{err}"
    );
}

/// Regression: an unwritable results.xlsx made `start` exit 1 after it had submitted the runs
/// (a script would retry a start that had worked), while `status` only warned and exited 0.
/// Now every command that did its work exits 0 and says the work was done; only `results`,
/// whose work is that file, fails.
#[test]
fn an_unwritable_results_workbook_does_not_fail_work_that_was_done() {
    let p = Project::new("results-unwritable", "command: echo loss=1\n");
    p.workbook(&["id", "status"], &[vec![V::N(1.0), V::E]]);
    // A directory in its place: no rename can replace it, whoever runs the test (root too).
    std::fs::create_dir(p.path("results.xlsx")).unwrap();
    let out = p.neroman(&["start", "1", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1: submitted"),
        "{out:?}"
    );
    assert!(
        err.contains("1 run submitted; only ") && err.contains("results.xlsx could not be written"),
        "{err}"
    );
    assert_eq!(p.state_of("1"), "finished");
    let out = p.neroman(&["restart", "1"]);
    assert_eq!(out.status.code(), Some(0));
    // `status` syncs the news of run 2 and tries to write the workbook: the same warning, 0.
    wait_until("run 2 to end", Duration::from_secs(20), || {
        let out = p.neroman(&["status", "--json"]);
        assert_eq!(out.status.code(), Some(0));
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        st[0]["run"] == 2 && st[0]["state"] == "finished"
    });
    let out = p.neroman(&["results"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "writing it is all `results` does"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("results.xlsx"),
        "{out:?}"
    );
}

/// Regression: one cell over Excel's 32,767 characters (a long parameter from a workbook that
/// openpyxl or pandas wrote, which do not check) stopped results.xlsx for the whole project
/// with an error that named no cell. The value is cut with a visible mark, the cell is named on
/// the `problems` sheet, and LibreOffice opens the file.
#[test]
fn a_cell_over_excels_limit_is_cut_marked_and_named() {
    let p = Project::new("long-cell", "command: echo loss=1\n");
    p.workbook(
        &["id", "status", "config"],
        &[
            vec![V::N(1.0), V::E, V::S("LONG-VALUE")],
            vec![V::N(2.0), V::E, V::S("short")],
        ],
    );
    // What such writers produce: the same workbook with a 40,000-character shared string.
    let patch = r#"
import os, sys, zipfile
src = sys.argv[1]
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zo:
    for item in zi.infolist():
        data = zi.read(item.filename)
        if item.filename.endswith(".xml"):
            data = data.replace(b"LONG-VALUE", b"0123456789" * 4000)
        zo.writestr(item, data)
os.replace(tmp, src)
"#;
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(patch)
        .arg(p.path("experiments.xlsx"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = p.neroman(&["results"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = common::soffice_csv(&p.path("results.xlsx"), 0);
    let row1 = results.lines().nth(1).unwrap();
    assert!(row1.starts_with("1,defined,local,"), "{row1:.200}");
    assert!(
        row1.contains("01234567890123456789")
            && row1.contains("[cut: 40000 characters in all; see the problems sheet]"),
        "{row1:.200}"
    );
    assert!(row1.len() < 33_000, "{}", row1.len());
    assert!(
        results.lines().nth(2).unwrap().contains(",short,"),
        "{results:.300}"
    );
    let problems = common::soffice_csv(&p.path("results.xlsx"), 2);
    let line = problems
        .lines()
        .find(|l| l.starts_with("results!S2,"))
        .unwrap_or_else(|| panic!("the cut cell is not named:\n{problems}"));
    assert!(
        line.starts_with("results!S2,1,")
            && line.contains("column \"\"config\"\"")
            && line.contains("40000 characters"),
        "{line}"
    );
}
