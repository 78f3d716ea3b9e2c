//! Chat webhooks: one blocking HTTPS POST (ureq over rustls). Slack and Mattermost take
//! `{"text": ...}`, Discord `{"content": ...}` (at most 2000 characters), ntfy a plain-text body
//! with a `Title` header. The address may be a secret (`url_env`): it is never printed.

use super::channel::{Chat, ChatKind, Url};
use super::SendError;
use std::time::Duration;

const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// Discord refuses longer content.
const DISCORD_MAX: usize = 2000;

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

/// What goes over the wire: (content type, body, extra headers).
pub fn payload(
    kind: ChatKind,
    title: &str,
    text: &str,
) -> (&'static str, String, Vec<(String, String)>) {
    match kind {
        ChatKind::Slack | ChatKind::Mattermost => (
            "application/json",
            serde_json::json!({ "text": format!("*{title}*\n{text}") }).to_string(),
            vec![],
        ),
        ChatKind::Discord => {
            let full = format!("**{title}**\n{text}");
            let content = if full.chars().count() > DISCORD_MAX {
                let mut cut: String = full.chars().take(DISCORD_MAX - 1).collect();
                cut.push('…');
                cut
            } else {
                full
            };
            (
                "application/json",
                serde_json::json!({ "content": content }).to_string(),
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
                text.to_string(),
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
        assert_eq!(v["content"].as_str().unwrap().chars().count(), 2000);
        let (t, b, h) = payload(ChatKind::Ntfy, "[neronet] 1 crashed — p", "body");
        assert!(t.starts_with("text/plain"));
        assert_eq!(b, "body");
        assert_eq!(
            h,
            [("Title".to_string(), "[neronet] 1 crashed - p".to_string())]
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
