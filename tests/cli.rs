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
    assert_eq!(st["reason"], "rule epoch>=3&&loss>20");
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
        reply.contains("\"type\":\"hello\"") && reply.contains("\"version\":2"),
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
