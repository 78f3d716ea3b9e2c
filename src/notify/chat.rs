//! Chat webhooks: one blocking HTTPS POST (ureq over rustls). Slack and Mattermost take
//! `{"text": ...}`, Discord `{"content": ...}` (at most 2000 characters), ntfy a plain-text body
//! with a `Title` header. The address may be a secret (`url_env`): it is never printed.

use super::channel::{Chat, ChatKind, Url};
use super::SendError;
use std::time::Duration;

const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// Discord refuses longer content (characters).
const DISCORD_MAX: usize = 2000;
/// Mattermost's default longest post (characters).
const MATTERMOST_MAX: usize = 16383;
/// Slack cuts a message's text beyond this (characters).
const SLACK_MAX: usize = 40000;
/// ntfy turns a longer body into an attachment (bytes).
const NTFY_MAX: usize = 4096;

/// The webhook's address and service, read now (`url_env` is read when sending).
pub fn resolve(key: &str, c: &Chat) -> Result<(String, ChatKind), SendError> {
    let url = match &c.url {
        Url::Literal(u) => u.clone(),
        Url::Env(var) => std::env::var(var).map_err(|_| SendError {
            permanent: true,
            answer: format!(
                "{key}.url_env: the environment variable {var} is not set (in the environment of the process that sends: the watcher)"
            ),
        })?,
    };
    let kind = match c.kind.or_else(|| ChatKind::guess(&url)) {
        Some(k) => k,
        None => {
            return Err(SendError {
                permanent: true,
                answer: format!(
                    "{key}.kind: missing, and the address does not say (slack, mattermost, discord or ntfy)"
                ),
            })
        }
    };
    Ok((url, kind))
}

/// `chat[0] (slack)`, or with the address when it is not a secret: `chat[0] (ntfy, https://ntfy.sh/x)`.
pub fn describe(key: &str, c: &Chat) -> String {
    let kind = c.kind.map(ChatKind::as_str);
    match (&c.url, kind) {
        (Url::Literal(u), Some(k)) => format!("{key} ({k}) {}", redact(u)),
        (Url::Literal(u), None) => format!("{key} {}", redact(u)),
        (Url::Env(var), Some(k)) => format!("{key} ({k}) via ${var}"),
        (Url::Env(var), None) => format!("{key} via ${var}"),
    }
}

/// Scheme and host only: a webhook's path is its password.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?']).next().unwrap_or("");
            format!("{scheme}://{host}/…")
        }
        None => "…".into(),
    }
}

/// Slack's control characters (`&`, `<`, `>`) as its entities; Mattermost reads them the same.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `head` and as many whole lines of `text` as fit in `max` (measured by `len`), the rest said
/// in one last line: `… and 5 more (ids 38-42)`, the ids read from the lines' `#id` marks.
fn fit(head: &str, text: &str, max: usize, len: fn(&str) -> usize) -> String {
    let whole = format!("{head}{text}");
    if len(&whole) <= max {
        return whole;
    }
    let lines: Vec<&str> = text.lines().collect();
    for keep in (0..=lines.len()).rev() {
        let mut out = head.to_string();
        for l in &lines[..keep] {
            out.push_str(l);
            out.push('\n');
        }
        if keep < lines.len() {
            out.push_str(&more(&lines[keep..]));
            out.push('\n');
        }
        if len(&out) <= max {
            return out;
        }
    }
    // Not even the head and the count fit: cut by characters.
    let mut cut = String::new();
    for c in head.chars() {
        if len(&cut) + len(c.encode_utf8(&mut [0; 4])) + len("…") > max {
            break;
        }
        cut.push(c);
    }
    cut.push('…');
    cut
}

/// `… and 5 more (ids 38-42)` for the lines left out.
fn more(dropped: &[&str]) -> String {
    let mut ids: Vec<&str> = dropped
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix('#')?;
            let end = rest.find([' ', ':']).unwrap_or(rest.len());
            Some(&rest[..end]).filter(|id| !id.is_empty())
        })
        .collect();
    ids.sort_by_key(|id| super::compose::natural(id));
    ids.dedup();
    let n = dropped.len();
    match ids.len() {
        0 => format!("… and {n} more"),
        1 => format!("… and {n} more (id {})", ids[0]),
        _ => format!(
            "… and {n} more (ids {})",
            crate::commands::act::id_list(ids.into_iter())
        ),
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// What goes over the wire: (content type, body, extra headers).
pub fn payload(
    kind: ChatKind,
    title: &str,
    text: &str,
) -> (&'static str, String, Vec<(String, String)>) {
    match kind {
        ChatKind::Slack | ChatKind::Mattermost => {
            let max = if kind == ChatKind::Slack {
                SLACK_MAX
            } else {
                MATTERMOST_MAX
            };
            let head = format!("*{}*\n", slack_escape(title));
            let text = fit(&head, &slack_escape(text), max, chars);
            (
                "application/json",
                serde_json::json!({ "text": text }).to_string(),
                vec![],
            )
        }
        ChatKind::Discord => {
            let head = format!("**{title}**\n");
            (
                "application/json",
                serde_json::json!({ "content": fit(&head, text, DISCORD_MAX, chars) }).to_string(),
                vec![],
            )
        }
        ChatKind::Ntfy => {
            // A header is ASCII: the title loses what is not.
            let ascii: String = title
                .replace('—', "-")
                .chars()
                .map(|c| {
                    if c.is_ascii() && !c.is_ascii_control() {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            (
                "text/plain; charset=utf-8",
                fit("", text, NTFY_MAX, str::len),
                vec![("Title".into(), ascii)],
            )
        }
    }
}

pub fn send(key: &str, c: &Chat, title: &str, text: &str) -> Result<(), SendError> {
    let (url, kind) = resolve(key, c)?;
    let (ctype, body, headers) = payload(kind, title, text);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HTTP_TIMEOUT))
        .build()
        .into();
    let mut req = agent.post(&url).header("Content-Type", ctype);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp = req.send(body.as_bytes()).map_err(|err| SendError {
        permanent: false,
        answer: format!("{}: {err}", redact(&url)),
    })?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let said = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    let said: String = said.trim().chars().take(300).collect();
    Err(SendError {
        // The server refuses this request as it is (a wrong address, a bad payload); a busy or
        // broken one (5xx, 408, 429) may take it later.
        permanent: (400..500).contains(&status) && status != 408 && status != 429,
        answer: format!("{}: HTTP {status} {said}", redact(&url)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_per_service() {
        let (t, b, h) = payload(
            ChatKind::Slack,
            "[neronet] 1 crashed — p",
            "7 crashed: boom\n",
        );
        assert_eq!(t, "application/json");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["text"], "*[neronet] 1 crashed — p*\n7 crashed: boom\n");
        assert!(h.is_empty());
        let long = "x".repeat(5000);
        let (_, b, _) = payload(ChatKind::Discord, "t", &long);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["content"], "**t**\n… and 1 more\n");
        let (t, b, h) = payload(ChatKind::Ntfy, "[neronet] 1 crashed — p", "body");
        assert!(t.starts_with("text/plain"));
        assert_eq!(b, "body");
        assert_eq!(
            h,
            [("Title".to_string(), "[neronet] 1 crashed - p".to_string())]
        );
    }

    #[test]
    fn slack_and_mattermost_escape_control_characters() {
        let text = "#3 (run 1): matched a rule: when loss>5 && acc<0.5\n";
        for kind in [ChatKind::Slack, ChatKind::Mattermost] {
            let (_, b, _) = payload(kind, "[neronet] a<b — p", text);
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            assert_eq!(
                v["text"],
                "*[neronet] a&lt;b — p*\n#3 (run 1): matched a rule: when loss&gt;5 &amp;&amp; acc&lt;0.5\n"
            );
        }
        let (_, b, _) = payload(ChatKind::Discord, "t", text);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["content"], format!("**t**\n{text}"));
        let (_, b, _) = payload(ChatKind::Ntfy, "t", text);
        assert_eq!(b, text);
    }

    #[test]
    fn a_long_message_is_cut_at_whole_lines_and_names_the_rest() {
        let text: String = (1..=42)
            .map(|i| format!("#{i} (run 1): crashed after 3s: {}\n", "x".repeat(40)))
            .collect();
        let (_, b, _) = payload(ChatKind::Discord, "[neronet] 42 crashed — p", &text);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        let c = v["content"].as_str().unwrap();
        assert!(c.chars().count() <= 2000, "{c}");
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines[0], "**[neronet] 42 crashed — p**");
        let shown = lines.len() - 2;
        for (n, l) in lines[1..=shown].iter().enumerate() {
            assert_eq!(*l, text.lines().nth(n).unwrap(), "whole lines only");
        }
        assert_eq!(
            *lines.last().unwrap(),
            format!("… and {} more (ids {}-42)", 42 - shown, shown + 1)
        );
        // ntfy counts bytes.
        let (_, b, _) = payload(ChatKind::Ntfy, "t", &text.repeat(3));
        assert!(b.len() <= 4096 && b.ends_with("more (ids 1-42)\n"), "{b}");
        assert_eq!(
            more(&["#x7: a", "#3 (run 2): b", "no id"]),
            "… and 3 more (ids 3, x7)"
        );
    }

    #[test]
    fn addresses_are_not_printed() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
    }
}
