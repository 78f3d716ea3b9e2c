//! Alerts (docs/NOTIFY.md) end to end: the real `neroman watch` on the local cluster, real jobs,
//! and real servers started per test from tests/fixtures/notify/ — an aiosmtpd sink (plain,
//! STARTTLS or implicit TLS with a CA made by openssl) and a webhook recorder. Needs Debian's
//! python3-aiosmtpd under /usr/bin/python3 (scripts/services.sh `need_smtp`): fails, never
//! skips, when it is missing.

mod common;

use common::lo::Watch;
use common::{wait_until, Project, V};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PYTHON: &str = "/usr/bin/python3";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/notify")
        .join(name)
}

fn need_aiosmtpd() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{PYTHON} cannot import aiosmtpd: the alert tests need Debian's python3-aiosmtpd (scripts/test.sh installs it: `. scripts/services.sh; need_smtp`)"
    );
}

/// A server from tests/fixtures/notify/ in a directory of its own; stopped on drop.
struct Server {
    child: Child,
    dir: PathBuf,
}

impl Server {
    fn start(script: &str, dir: PathBuf, args: &[&str]) -> Server {
        need_aiosmtpd();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = Command::new(PYTHON)
            .arg(fixture(script))
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a test server");
        let mut s = Server { child, dir };
        let port = s.dir.join("port");
        wait_until(
            &format!("{script} to listen"),
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = s.child.try_wait() {
                    panic!(
                        "{script} exited ({status}): {}",
                        std::fs::read_to_string(s.dir.with_extension("log")).unwrap_or_default()
                    );
                }
                port.exists()
            },
        );
        s
    }

    /// An SMTP sink: `tls` is none, starttls or implicit; `port` 0 for any.
    fn smtp(p: &Project, name: &str, tls: &str, port: u16) -> Server {
        let dir = p.dir.with_file_name(name);
        Server::start(
            "smtp_sink.py",
            dir,
            &["--tls", tls, "--port", &port.to_string()],
        )
    }

    fn webhooks(p: &Project) -> Server {
        Server::start("webhook_recorder.py", p.dir.with_file_name("hooks"), &[])
    }

    fn port(&self) -> u16 {
        std::fs::read_to_string(self.dir.join("port"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The files it stored, oldest first (mails in new/, POSTs as NNNN.json).
    fn stored(&self) -> Vec<String> {
        let dir = if self.dir.join("new").is_dir() {
            self.dir.join("new")
        } else {
            self.dir.clone()
        };
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.ends_with(".eml") || (n.ends_with(".json") && !n.starts_with('.'))
            })
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// neronet.yaml with e-mail to a plain SMTP server on `port`, and `extra` lines under `email:`.
fn yaml(port: u16, extra: &str) -> String {
    format!(
        "clusters:\n  local:\n    max_parallel: 24\nemail:\n  to: researcher@example.org\n  smtp: {{host: 127.0.0.1, port: {port}, tls: none}}\n  stalled: 'off'\n{extra}"
    )
}

fn jobs(p: &Project, rows: &[(&str, &str)]) {
    p.workbook(
        &["id", "status", "command"],
        &rows
            .iter()
            .map(|(id, cmd)| vec![V::S(id), V::E, V::S(cmd)])
            .collect::<Vec<_>>(),
    );
}

/// A mail's header value, with `=?utf-8?b?...?=` words decoded.
fn header(mail: &str, name: &str) -> String {
    let mut value = String::new();
    let mut inside = false;
    for line in mail.lines() {
        if line.is_empty() {
            break;
        }
        if inside && line.starts_with([' ', '\t']) {
            value.push_str(line.trim_start());
            continue;
        }
        inside = false;
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case(name) {
                value = v.trim().to_string();
                inside = true;
            }
        }
    }
    decode_words(&value)
}

fn decode_words(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("=?") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let parts: Vec<&str> = after.splitn(3, '?').collect();
        let Some(end) = parts.get(2).and_then(|p| p.find("?=")) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let payload = &parts[2][..end];
        let bytes = if parts[1].eq_ignore_ascii_case("b") {
            base64(payload)
        } else {
            payload.replace('_', " ").into_bytes()
        };
        out.push_str(&String::from_utf8_lossy(&bytes));
        rest = &parts[2][end + 2..];
        // Whitespace between two encoded words is not part of the text.
        if rest.trim_start().starts_with("=?") {
            rest = rest.trim_start();
        }
    }
    out.push_str(rest);
    out
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The plain-text part of a mail (7bit or quoted-printable as lettre writes it).
fn text_part(mail: &str) -> String {
    let mail = mail.replace("\r\n", "\n");
    let body = mail.split_once("\n\n").map_or("", |(_, b)| b);
    let plain = match body.find("Content-Type: text/plain") {
        Some(i) => {
            let part = &body[i..];
            let part = part.split_once("\n\n").map_or("", |(_, b)| b);
            part.split("\n--").next().unwrap_or("").to_string()
        }
        None => body.to_string(),
    };
    // Quoted-printable soft breaks and escapes, if any.
    let joined = plain.replace("=\n", "");
    let mut out = Vec::new();
    let b = joined.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One number from the state store.
fn count(p: &Project, sql: &str) -> i64 {
    p.store().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Every alert is in a message and every message has gone out.
fn all_sent(p: &Project) -> bool {
    count(p, "SELECT COUNT(*) FROM alerts WHERE message IS NULL") == 0
        && count(
            p,
            "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND undeliverable IS NULL",
        ) == 0
}

#[test]
fn a_crash_sends_exactly_one_message_with_its_reason_and_stderr() {
    let p = Project::new("notify-crash", "");
    let smtp = Server::smtp(&p, "smtp", "none", 0);
    p.write("neronet.yaml", &yaml(smtp.port(), "  digest: 3s\n"));
    jobs(&p, &[("1", "sh -c 'echo boom >&2; exit 3'")]);
    let w = Watch::start(&p);
    p.ok(&["start", "1"]);
    wait_until("the crash mail", Duration::from_secs(30), || {
        !smtp.stored().is_empty()
    });
    wait_until("the outbox to be empty", Duration::from_secs(30), || {
        all_sent(&p)
    });
    w.stop();
    let mails = smtp.stored();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let mail = &mails[0];
    assert_eq!(header(mail, "Subject"), "[neronet] 1 crashed — project");
    assert!(header(mail, "From").starts_with("neronet@"), "{mail}");
    assert_eq!(header(mail, "To"), "researcher@example.org");
    assert!(
        header(mail, "Message-ID").starts_with("<neronet.1."),
        "{mail}"
    );
    assert!(
        mail.contains("multipart/alternative") && mail.contains("text/html"),
        "{mail}"
    );
    let text = text_part(mail);
    let row = text
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_else(|| panic!("no row for run 1:\n{text}"));
    assert!(row.contains("crashed"), "{row}");
    assert!(row.contains("exit code 3"), "the reason: {row}");
    // Needs the kid branch (i9-kid): the kid's exit record carries the stderr tail.
    assert!(
        text.contains("last lines of stderr:\n    boom"),
        "the stderr line of the crash:\n{text}"
    );
}

#[test]
fn twenty_finishes_in_one_window_make_one_digest() {
    let p = Project::new("notify-digest", "");
    let smtp = Server::smtp(&p, "smtp", "none", 0);
    p.write("neronet.yaml", &yaml(smtp.port(), "  digest: 10s\n"));
    let ids: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let rows: Vec<(&str, &str)> = ids.iter().map(|i| (i.as_str(), "echo loss=0.5")).collect();
    jobs(&p, &rows);
    let w = Watch::start(&p);
    p.ok(&["start", "1-20"]);
    p.wait_all("finished", Duration::from_secs(60));
    wait_until("the digest", Duration::from_secs(40), || {
        count(&p, "SELECT COUNT(*) FROM alerts") == 20 && all_sent(&p)
    });
    w.stop();
    let mails = smtp.stored();
    assert_eq!(mails.len(), 1, "one digest for the window: {mails:#?}");
    assert_eq!(
        header(&mails[0], "Subject"),
        "[neronet] 20 finished — project"
    );
    let text = text_part(&mails[0]);
    let rows = text
        .lines()
        .filter(|l| l.contains(" finished ") && l.contains("loss=0.5"))
        .count();
    assert_eq!(rows, 20, "{text}");
}

#[test]
fn a_server_down_is_retried_while_the_daemon_keeps_working() {
    let p = Project::new("notify-down", "");
    let port = free_port();
    p.write("neronet.yaml", &yaml(port, "  digest: 3s\n"));
    jobs(&p, &[("1", "sh -c 'exit 3'"), ("2", "true")]);
    let w = Watch::start(&p);
    p.ok(&["start", "1"]);
    wait_until("a failed try", Duration::from_secs(30), || {
        count(
            &p,
            "SELECT COUNT(*) FROM outbox WHERE attempts >= 1 AND sent_at IS NULL",
        ) == 1
    });
    let error: String = p
        .store()
        .query_row("SELECT last_error FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert!(error.to_lowercase().contains("connect"), "{error}");
    // `status` says so while it retries, not only once it gives up.
    let st = p.ok(&["status"]);
    assert!(
        st.contains("alerts: 1 waiting to be sent, the last try failed: ")
            && st.contains("(next try in "),
        "{st}"
    );
    // The daemon goes on: a run started now is followed and written back.
    p.ok(&["start", "2"]);
    wait_until(
        "the watcher to see run 2 finish",
        Duration::from_secs(30),
        || w.log().contains("2: finished"),
    );
    let smtp = Server::smtp(&p, "smtp", "none", port);
    wait_until("the retried mail", Duration::from_secs(60), || {
        !smtp.stored().is_empty()
    });
    wait_until("the outbox to be empty", Duration::from_secs(30), || {
        all_sent(&p)
    });
    let log = w.log();
    assert!(log.contains("failed (try 1)"), "{log}");
    let st = p.ok(&["status"]);
    assert!(!st.contains("alerts:"), "all sent: nothing to say\n{st}");
    w.stop();
    let mut subjects: Vec<String> = smtp.stored().iter().map(|m| header(m, "Subject")).collect();
    subjects.sort();
    // The finish's digest may overtake the crash's retry: each is sent once.
    assert_eq!(
        subjects,
        [
            "[neronet] 1 crashed — project",
            "[neronet] 1 finished — project"
        ]
    );
}

#[test]
fn a_daemon_killed_between_queueing_and_sending_sends_once() {
    let p = Project::new("notify-kill9", "");
    let port = free_port();
    p.write("neronet.yaml", &yaml(port, "  digest: 3s\n"));
    jobs(&p, &[("1", "sh -c 'exit 3'")]);
    let w = Watch::start(&p);
    p.ok(&["start", "1"]);
    wait_until(
        "the message queued and tried",
        Duration::from_secs(30),
        || {
            count(
                &p,
                "SELECT COUNT(*) FROM outbox WHERE attempts >= 1 AND sent_at IS NULL",
            ) == 1
        },
    );
    w.kill9();
    let smtp = Server::smtp(&p, "smtp", "none", port);
    let w = Watch::start(&p);
    wait_until(
        "the mail after the restart",
        Duration::from_secs(60),
        || !smtp.stored().is_empty(),
    );
    wait_until("the outbox to be empty", Duration::from_secs(30), || {
        all_sent(&p)
    });
    w.stop();
    assert_eq!(smtp.stored().len(), 1, "{:#?}", smtp.stored());
    assert_eq!(count(&p, "SELECT COUNT(*) FROM alerts"), 1);
    assert_eq!(count(&p, "SELECT COUNT(*) FROM outbox"), 1);
}

#[test]
fn starttls_and_implicit_tls_with_a_private_ca_and_refusal_when_not_offered() {
    let p = Project::new("notify-tls", "");
    let starttls = Server::smtp(&p, "starttls", "starttls", 0);
    let implicit = Server::smtp(&p, "implicit", "implicit", 0);
    let plain = Server::smtp(&p, "plain", "none", 0);
    let conf = |port: u16, tls: &str, ca: Option<&Path>| {
        let ca = ca
            .map(|c| format!(", ca_file: '{}'", c.display()))
            .unwrap_or_default();
        format!(
            "email:\n  to: researcher@example.org\n  smtp: {{host: 127.0.0.1, port: {port}, tls: {tls}{ca}}}\n"
        )
    };
    p.write(
        "neronet.yaml",
        &conf(starttls.port(), "starttls", Some(&starttls.ca())),
    );
    let out = p.neroman(&["notify", "--test"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{so}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        so.trim(),
        format!(
            "email to researcher@example.org via smtp 127.0.0.1:{} (starttls): sent",
            starttls.port()
        )
    );
    let mails = starttls.stored();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("X-Sink-Encrypted: yes"), "{}", mails[0]);
    assert_eq!(
        header(&mails[0], "Subject"),
        "[neronet] test message — project"
    );

    p.write(
        "neronet.yaml",
        &conf(implicit.port(), "tls", Some(&implicit.ca())),
    );
    let out = p.neroman(&["notify", "--test"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(implicit.stored()[0].contains("X-Sink-Encrypted: yes"));

    // Without the CA the server's certificate is not trusted.
    p.write("neronet.yaml", &conf(starttls.port(), "starttls", None));
    let out = p.neroman(&["notify", "--test"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(
        so.contains(": failed: ") && so.to_lowercase().contains("certificate"),
        "{so}"
    );
    assert_eq!(starttls.stored().len(), 1);

    // STARTTLS required, not offered: refused, nothing sent in clear.
    p.write("neronet.yaml", &conf(plain.port(), "starttls", None));
    let out = p.neroman(&["notify", "--test"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(
        so.contains(&format!(
            "127.0.0.1:{} does not offer STARTTLS and `tls: starttls` requires it; nothing was sent",
            plain.port()
        )),
        "{so}"
    );
    assert!(plain.stored().is_empty(), "{:?}", plain.stored());
}

#[test]
fn the_watcher_sends_by_starttls_and_gives_up_on_a_server_without_it() {
    let p = Project::new("notify-tls-daemon", "");
    let plain = Server::smtp(&p, "plain", "none", 0);
    p.write(
        "neronet.yaml",
        &format!(
            "email:\n  to: researcher@example.org\n  smtp: {{host: 127.0.0.1, port: {}, tls: starttls}}\n  digest: 3s\n",
            plain.port()
        ),
    );
    jobs(&p, &[("1", "sh -c 'exit 3'")]);
    let w = Watch::start(&p);
    p.ok(&["start", "1"]);
    wait_until("the message given up", Duration::from_secs(30), || {
        count(
            &p,
            "SELECT COUNT(*) FROM outbox WHERE undeliverable IS NOT NULL",
        ) == 1
    });
    let log = w.log();
    assert!(
        log.contains("undeliverable after 1 try:") && log.contains("does not offer STARTTLS"),
        "{log}"
    );
    w.stop();
    assert!(plain.stored().is_empty());
}

#[test]
fn webhooks_get_the_json_of_their_service() {
    let p = Project::new("notify-hooks", "");
    let hooks = Server::webhooks(&p);
    let base = format!("http://127.0.0.1:{}", hooks.port());
    p.write(
        "neronet.yaml",
        &format!(
            "chat:\n  - {{url: '{base}/slack', kind: slack, digest: 3s, stalled: 'off'}}\n  - {{url: '{base}/discord', kind: discord, digest: 3s, stalled: 'off'}}\n  - {{url_env: NTFY_URL, kind: ntfy, digest: 3s, stalled: 'off'}}\n"
        ),
    );
    // notify --test: the variable is read when sending.
    let out = p.neroman(&["notify", "--test"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(
        so.contains("chat[2] (ntfy) via $NTFY_URL: failed: chat[2].url_env: the environment variable NTFY_URL is not set"),
        "{so}"
    );
    let out = p.neroman_env(
        &["notify", "--test"],
        &[("NTFY_URL", &format!("{base}/ntfy"))],
    );
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{so}");
    assert!(!so.contains("/slack"), "a webhook's path is a secret: {so}");
    // Slack and Discord twice (the first try too), ntfy once.
    assert_eq!(hooks.stored().len(), 5, "{:#?}", hooks.stored());
    std::fs::write(hooks.dir.join("status"), "403").unwrap();
    let out = p.neroman_env(
        &["notify", "--test"],
        &[("NTFY_URL", &format!("{base}/ntfy"))],
    );
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(
        so.contains("failed: http://127.0.0.1:") && so.contains("HTTP 403 invalid_token"),
        "{so}"
    );
    std::fs::remove_file(hooks.dir.join("status")).unwrap();

    // A crash seen by the watcher: one POST per webhook.
    jobs(&p, &[("1", "sh -c 'exit 3'")]);
    // Watch::start runs `neroman watch` with the test's environment: the variable goes there.
    std::env::set_var("NTFY_URL", format!("{base}/ntfy"));
    let w = Watch::start(&p);
    p.ok(&["start", "1"]);
    wait_until("three POSTs", Duration::from_secs(30), || {
        hooks.stored().len() == 8 && all_sent(&p)
    });
    w.stop();
    let posts: Vec<serde_json::Value> = hooks.stored()[5..]
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    let by_path = |path: &str| {
        posts
            .iter()
            .find(|v| v["path"] == path)
            .unwrap_or_else(|| panic!("no POST to {path}: {posts:#?}"))
    };
    let slack = by_path("/slack");
    assert_eq!(slack["headers"]["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(slack["body"].as_str().unwrap()).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with("*[neronet] 1 crashed — project*\n#1 (run 1): crashed")
            && text.contains("exit code 3"),
        "{text}"
    );
    let discord = by_path("/discord");
    let body: serde_json::Value = serde_json::from_str(discord["body"].as_str().unwrap()).unwrap();
    assert!(
        body["content"]
            .as_str()
            .unwrap()
            .starts_with("**[neronet] 1 crashed"),
        "{body}"
    );
    let ntfy = by_path("/ntfy");
    assert_eq!(ntfy["headers"]["title"], "[neronet] 1 crashed - project");
    assert!(
        ntfy["body"]
            .as_str()
            .unwrap()
            .starts_with("#1 (run 1): crashed"),
        "{ntfy}"
    );
}

#[test]
fn notify_test_without_channels_says_so() {
    let p = Project::new("notify-none", "");
    let out = p.neroman(&["notify", "--test"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no alerts are configured"),
        "{out:?}"
    );
}

#[test]
fn a_bad_alert_setting_is_refused_naming_its_key() {
    let p = Project::new(
        "notify-bad",
        "chat:\n  - {url: 'https://hooks.slack.com/x'}\n  - {url: 'https://example.org/hook'}\n",
    );
    let out = p.neroman(&["notify", "--test"]);
    let se = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("chat[1].kind: missing"), "{se}");
    p.write(
        "neronet.yaml",
        "email:\n  to: a@b.c\n  when: ['loss >> 2']\n",
    );
    let se = String::from_utf8_lossy(&p.neroman(&["status"]).stderr).into_owned();
    assert!(
        se.contains("email.when[0]: line 3: \"loss >> 2\": column 7"),
        "{se}"
    );
}

#[test]
fn stalled_and_when_rules_alert_once_per_run() {
    let p = Project::new("notify-rules", "");
    let smtp = Server::smtp(&p, "smtp", "none", 0);
    p.write(
        "neronet.yaml",
        &format!(
            "clusters:\n  local:\n    max_parallel: 4\nemail:\n  to: researcher@example.org\n  smtp: {{host: 127.0.0.1, port: {}, tls: none}}\n  digest: 2s\n  stalled: 2s\n  when: ['loss>5 && silent<1h']\n  immediate: [crashed, rule, stalled, when]\n",
            smtp.port()
        ),
    );
    jobs(&p, &[("1", "sh -c 'echo loss=7; sleep 60'")]);
    let w = Watch::start(&p);
    p.ok(&["start", "1"]);
    wait_until("both alerts sent", Duration::from_secs(40), || {
        count(
            &p,
            "SELECT COUNT(*) FROM alerts WHERE kind IN ('stalled', 'when')",
        ) == 2
            && all_sent(&p)
    });
    // Each fires once per run, however long the run stays silent.
    let before = count(&p, "SELECT COUNT(*) FROM alerts");
    wait_until("a few more rule rounds", Duration::from_secs(20), || {
        nerokid::report::now()
            > p.store()
                .query_row("SELECT MAX(at) FROM alerts", [], |r| r.get::<_, f64>(0))
                .unwrap()
                + 5.0
    });
    assert_eq!(count(&p, "SELECT COUNT(*) FROM alerts"), before);
    p.ok(&["abort", "1"]);
    wait_until("the abort's alert sent", Duration::from_secs(30), || {
        count(&p, "SELECT COUNT(*) FROM alerts WHERE kind = 'aborted'") == 1 && all_sent(&p)
    });
    w.stop();
    let all: String = smtp.stored().iter().map(|m| text_part(m)).collect();
    assert!(all.contains("stalled no output for"), "{all}");
    assert!(all.contains("when loss>5 && silent<1h"), "{all}");
    assert!(all.contains("loss=7"), "{all}");
}

#[test]
fn a_run_waiting_for_a_slot_raises_a_queued_alert() {
    let p = Project::new("notify-queued", "");
    let smtp = Server::smtp(&p, "smtp", "none", 0);
    p.write(
        "neronet.yaml",
        &format!(
            "clusters:\n  local:\n    max_parallel: 1\nemail:\n  to: researcher@example.org\n  smtp: {{host: 127.0.0.1, port: {}, tls: none}}\n  digest: 2s\n  stalled: 'off'\n  queued_over: 1s\n  immediate: [queued]\n  on: [crashed]\n",
            smtp.port()
        ),
    );
    jobs(&p, &[("1", "sleep 60"), ("2", "true")]);
    let w = Watch::start(&p);
    p.ok(&["start", "1"]);
    p.wait_for_state("1", "running");
    p.ok(&["start", "2"]);
    wait_until("the queued alert sent", Duration::from_secs(30), || {
        count(&p, "SELECT COUNT(*) FROM alerts WHERE kind = 'queued'") == 1 && all_sent(&p)
    });
    p.ok(&["abort", "1"]);
    p.wait_for_state("2", "finished");
    wait_until("nothing waiting", Duration::from_secs(30), || all_sent(&p));
    w.stop();
    // `on: [crashed]`: the abort and the finish raise nothing; the queued alert once.
    let mails = smtp.stored();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(
        header(&mails[0], "Subject"),
        "[neronet] 1 queued too long — project"
    );
    let text = text_part(&mails[0]);
    assert!(text.contains("queued waiting for"), "{text}");
}

#[test]
fn sendmail_gets_the_message_and_its_failure_words_are_shown() {
    let p = Project::new("notify-sendmail", "");
    let fake = p.dir.with_file_name("sendmail");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" > {dir}/args\ncat > {dir}/mail\n[ -e {dir}/refuse ] && {{ echo 'sendmail: no route to relay' >&2; exit 75; }}\nexit 0\n",
            dir = p.dir.with_file_name("").display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&fake)
        .status()
        .unwrap();
    p.write(
        "neronet.yaml",
        &format!(
            "email:\n  to: researcher@example.org\n  from: lab@example.org\n  sendmail: {}\n",
            fake.display()
        ),
    );
    let out = p.neroman(&["notify", "--test"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{so}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        so.trim(),
        format!(
            "email to researcher@example.org via sendmail {}: sent",
            fake.display()
        )
    );
    let base = p.dir.with_file_name("");
    let args = std::fs::read_to_string(base.join("args")).unwrap();
    assert_eq!(
        args.trim(),
        "-i -f lab@example.org -- researcher@example.org"
    );
    let mail = std::fs::read_to_string(base.join("mail")).unwrap();
    assert_eq!(header(&mail, "Subject"), "[neronet] test message — project");
    std::fs::write(base.join("refuse"), "").unwrap();
    let out = p.neroman(&["notify", "--test"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(
        so.contains(": failed: ") && so.contains("no route to relay"),
        "{so}"
    );
}

#[test]
fn a_login_takes_its_password_from_the_environment() {
    let p = Project::new("notify-auth", "");
    let dir = p.dir.with_file_name("auth");
    let smtp = Server::start(
        "smtp_sink.py",
        dir,
        &["--tls", "starttls", "--auth", "lab:s3cret"],
    );
    p.write(
        "neronet.yaml",
        &format!(
            "email:\n  to: researcher@example.org\n  smtp: {{host: 127.0.0.1, port: {}, tls: starttls, ca_file: '{}', user: lab, password_env: LAB_SMTP_PASSWORD}}\n",
            smtp.port(),
            smtp.ca().display()
        ),
    );
    // Not set: said when sending, not at load (status works).
    jobs(&p, &[("1", "true")]);
    p.ok(&["status"]);
    let out = p.neroman(&["notify", "--test"]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(
        so.contains("failed: email.smtp.password_env: the environment variable LAB_SMTP_PASSWORD is not set"),
        "{so}"
    );
    let out = p.neroman_env(&["notify", "--test"], &[("LAB_SMTP_PASSWORD", "wrong")]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(
        so.contains("permanent error (535)"),
        "the server's answer: {so}"
    );
    assert!(!so.contains("wrong"), "the password is never printed: {so}");
    let out = p.neroman_env(&["notify", "--test"], &[("LAB_SMTP_PASSWORD", "s3cret")]);
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{so}");
    assert_eq!(smtp.stored().len(), 1);
}
