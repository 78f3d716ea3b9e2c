//! Where alerts go and which: the `email:` and `chat:` sections of neronet.yaml read into
//! [`Channel`]s (checked once, at load: a bad value names its key), with the alert kinds and
//! the per-channel rules (`on`, `when`, `digest`, `immediate`, `stalled`, `queued_over`).

use crate::config::{parse_duration, ChatConfig, Config, EmailConfig, SmtpConfig, SmtpTls};
use nerokid::expr::Expr;
use std::path::PathBuf;

/// What an alert says happened to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Crashed,
    /// Aborted by the abort rule (`abort_when`).
    Rule,
    /// Aborted by the user.
    Aborted,
    Timeout,
    Lost,
    /// Running with no output for `stalled:`.
    Stalled,
    /// Queued for longer than `queued_over:`.
    Queued,
    /// A `when:` rule matched.
    When,
    Finished,
}

impl Kind {
    /// In the order a message lists them.
    pub const ALL: [Kind; 9] = [
        Kind::Crashed,
        Kind::Rule,
        Kind::Aborted,
        Kind::Timeout,
        Kind::Lost,
        Kind::Stalled,
        Kind::Queued,
        Kind::When,
        Kind::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Crashed => "crashed",
            Kind::Rule => "rule",
            Kind::Aborted => "aborted",
            Kind::Timeout => "timeout",
            Kind::Lost => "lost",
            Kind::Stalled => "stalled",
            Kind::Queued => "queued",
            Kind::When => "when",
            Kind::Finished => "finished",
        }
    }

    pub fn parse(word: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(word.trim()))
    }

    /// How a subject line counts them: `3 crashed`, `1 stopped by a rule`.
    pub fn phrase(self) -> &'static str {
        match self {
            Kind::Crashed => "crashed",
            Kind::Rule => "stopped by a rule",
            Kind::Aborted => "aborted",
            Kind::Timeout => "timed out",
            Kind::Lost => "lost",
            Kind::Stalled => "stalled",
            Kind::Queued => "queued too long",
            Kind::When => "matched a rule",
            Kind::Finished => "finished",
        }
    }

    /// The ending state an alert of this kind is about (what `on:` filters), if any.
    pub fn ending_state(self) -> Option<&'static str> {
        match self {
            Kind::Crashed => Some("crashed"),
            Kind::Rule | Kind::Aborted => Some("aborted"),
            Kind::Timeout => Some("timeout"),
            Kind::Lost => Some("lost"),
            Kind::Finished => Some("finished"),
            Kind::Stalled | Kind::Queued | Kind::When => None,
        }
    }
}

/// The states a run ends in: what `on:` may name.
pub const ENDING_STATES: &[&str] = &["finished", "crashed", "aborted", "timeout", "lost"];

/// Default digest window.
pub const DEFAULT_DIGEST: f64 = 600.0;
/// Default `stalled:`.
pub const DEFAULT_STALLED: f64 = 3600.0;

/// Which alerts a channel takes and how often it speaks.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Ending states that raise an alert (all by default).
    pub on: Vec<String>,
    /// `when:` rules: (source text, parsed).
    pub when: Vec<(String, Expr)>,
    /// Seconds: at most one message per kind per window.
    pub digest: f64,
    /// Kinds sent at once (the others wait for the digest).
    pub immediate: Vec<Kind>,
    pub stalled: Option<f64>,
    pub queued_over: Option<f64>,
}

impl Rules {
    /// Does this channel take an alert of this kind (for an ending state)?
    pub fn takes(&self, kind: Kind) -> bool {
        match kind.ending_state() {
            Some(state) => self.on.is_empty() || self.on.iter().any(|s| s == state),
            None => true,
        }
    }
}

/// The part of `email:` and each `chat:` entry that says which alerts and how often. The
/// error starts with the key (`stalled: "banana": ...`); the caller puts the section before it.
#[allow(clippy::too_many_arguments)]
fn rules(
    on: &[String],
    when: &[String],
    digest: &Option<String>,
    immediate: &Option<Vec<String>>,
    stalled: &Option<String>,
    queued_over: &Option<String>,
) -> Result<Rules, String> {
    let mut on_states = Vec::new();
    for state in on {
        let lower = state.trim().to_ascii_lowercase();
        if !ENDING_STATES.contains(&lower.as_str()) {
            return Err(format!(
                "on: {state:?} is not a state a run ends in ({})",
                ENDING_STATES.join(", ")
            ));
        }
        on_states.push(lower);
    }
    let mut rules = Vec::new();
    for (i, rule) in when.iter().enumerate() {
        let expr = nerokid::expr::parse(rule).map_err(|e| format!("when[{i}]: {rule:?}: {e}"))?;
        rules.push((rule.clone(), expr));
    }
    let duration = |key: &str, v: &str| -> Result<f64, String> {
        parse_duration(v).map_err(|e| format!("{key}: {v:?}: {e}"))
    };
    let digest = match digest {
        Some(d) => duration("digest", d)?,
        None => DEFAULT_DIGEST,
    };
    let immediate = match immediate {
        None => vec![Kind::Crashed, Kind::Rule],
        Some(list) => list
            .iter()
            .map(|k| {
                Kind::parse(k).ok_or_else(|| {
                    format!(
                        "immediate: {k:?} is not an alert kind ({})",
                        Kind::ALL.map(Kind::as_str).join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let off_or = |key: &str, v: &Option<String>, default: Option<f64>| match v.as_deref() {
        None => Ok(default),
        Some(t) if t.trim().eq_ignore_ascii_case("off") => Ok(None),
        Some(t) => duration(key, t).map(Some),
    };
    Ok(Rules {
        on: on_states,
        when: rules,
        digest,
        immediate,
        stalled: off_or("stalled", stalled, Some(DEFAULT_STALLED))?,
        queued_over: off_or("queued_over", queued_over, None)?,
    })
}

/// How an e-mail leaves this machine.
#[derive(Debug, Clone)]
pub enum Mailer {
    Smtp(SmtpConfig),
    Sendmail(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Email {
    pub to: Vec<String>,
    /// `neronet@<hostname>` when not given.
    pub from: String,
    pub mailer: Mailer,
}

/// The chat services a webhook can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatKind {
    Slack,
    Mattermost,
    Discord,
    Ntfy,
}

impl ChatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Slack => "slack",
            ChatKind::Mattermost => "mattermost",
            ChatKind::Discord => "discord",
            ChatKind::Ntfy => "ntfy",
        }
    }

    fn parse(word: &str) -> Option<ChatKind> {
        [
            ChatKind::Slack,
            ChatKind::Mattermost,
            ChatKind::Discord,
            ChatKind::Ntfy,
        ]
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(word.trim()))
    }

    /// Guessed from the webhook's address.
    pub fn guess(url: &str) -> Option<ChatKind> {
        let lower = url.to_ascii_lowercase();
        let host = lower
            .split("://")
            .nth(1)
            .unwrap_or(&lower)
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        if host == "hooks.slack.com" {
            Some(ChatKind::Slack)
        } else if (host == "discord.com" || host == "discordapp.com")
            && lower.contains("/api/webhooks/")
        {
            Some(ChatKind::Discord)
        } else if host.starts_with("ntfy.") || host.contains(".ntfy.") {
            Some(ChatKind::Ntfy)
        } else if lower.contains("/hooks/") && host.contains("mattermost") {
            Some(ChatKind::Mattermost)
        } else {
            None
        }
    }
}

/// Where a webhook's address comes from.
#[derive(Clone)]
pub enum Url {
    Literal(String),
    /// The environment variable that holds it (a secret: never printed).
    Env(String),
}

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Url::Literal(_) => f.write_str("Url::Literal(..)"),
            Url::Env(var) => write!(f, "Url::Env({var})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Chat {
    pub url: Url,
    /// None: guessed from the address when it is read (`url_env`).
    pub kind: Option<ChatKind>,
}

#[derive(Debug, Clone)]
pub enum Target {
    Email(Email),
    Chat(Chat),
}

/// One place alerts go: `email` or `chat[N]` (its key in neronet.yaml and in the store).
#[derive(Debug, Clone)]
pub struct Channel {
    pub key: String,
    pub target: Target,
    pub rules: Rules,
}

impl Email {
    fn from_config(e: &EmailConfig) -> Result<(Email, Rules), String> {
        let to: Vec<String> = match &e.to {
            None => return Err("to: missing (who gets the mail)".into()),
            Some(to) => to
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect(),
        };
        if to.is_empty() {
            return Err("to: missing (who gets the mail)".into());
        }
        for a in &to {
            a.parse::<lettre::Address>()
                .map_err(|err| format!("to: {a:?} is not an e-mail address ({err})"))?;
        }
        let from = match &e.from {
            Some(f) => {
                f.parse::<lettre::message::Mailbox>()
                    .map_err(|err| format!("from: {f:?} is not an e-mail address ({err})"))?;
                f.clone()
            }
            None => format!("neronet@{}", hostname()),
        };
        let mailer = match (&e.smtp, &e.sendmail) {
            (Some(_), Some(_)) => {
                return Err("smtp, sendmail: give one way of sending, not both".into())
            }
            (Some(s), None) => {
                if s.host.trim().is_empty() {
                    return Err("smtp.host: empty".into());
                }
                if s.port == Some(0) {
                    return Err("smtp.port: 0 is no port".into());
                }
                if s.password_env.is_some() && s.user.is_none() {
                    return Err("smtp.user: missing (password_env is given)".into());
                }
                if let Some(v) = &s.password_env {
                    if v.trim().is_empty() || v.contains('=') {
                        return Err(format!(
                            "smtp.password_env: {v:?} is not an environment variable's name"
                        ));
                    }
                }
                Mailer::Smtp(s.clone())
            }
            (None, Some(path)) => {
                if path.trim().is_empty() {
                    return Err("sendmail: empty (the path of a sendmail program)".into());
                }
                Mailer::Sendmail(PathBuf::from(path))
            }
            // A relay on this machine, as `sendmail` programs use.
            (None, None) => Mailer::Smtp(SmtpConfig {
                host: "localhost".into(),
                port: Some(25),
                tls: Some(SmtpTls::None),
                user: None,
                password_env: None,
                ca_file: None,
            }),
        };
        let rules = rules(
            &e.on,
            &e.when,
            &e.digest,
            &e.immediate,
            &e.stalled,
            &e.queued_over,
        )?;
        Ok((Email { to, from, mailer }, rules))
    }
}

impl Chat {
    fn from_config(c: &ChatConfig) -> Result<(Chat, Rules), String> {
        let url = match (&c.url, &c.url_env) {
            (Some(_), Some(_)) => return Err("url, url_env: give one, not both".into()),
            (None, None) => {
                return Err(
                    "url: missing (the webhook's address, or url_env: a variable holding it)"
                        .into(),
                )
            }
            (Some(u), None) => {
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    return Err(format!("url: {u:?} is not an http(s) address"));
                }
                Url::Literal(u.clone())
            }
            (None, Some(v)) => {
                if v.trim().is_empty() || v.contains('=') {
                    return Err(format!(
                        "url_env: {v:?} is not an environment variable's name"
                    ));
                }
                Url::Env(v.clone())
            }
        };
        let kind = match &c.kind {
            Some(k) => Some(ChatKind::parse(k).ok_or_else(|| {
                format!("kind: {k:?} is not one of slack, mattermost, discord, ntfy")
            })?),
            None => match &url {
                Url::Literal(u) => Some(ChatKind::guess(u).ok_or_else(|| {
                    "kind: missing, and the address does not say (slack, mattermost, discord or ntfy)"
                        .to_string()
                })?),
                Url::Env(_) => None,
            },
        };
        let rules = rules(
            &c.on,
            &c.when,
            &c.digest,
            &c.immediate,
            &c.stalled,
            &c.queued_over,
        )?;
        Ok((Chat { url, kind }, rules))
    }
}

/// Every channel the configuration names, in order: `email`, then `chat[0]`, `chat[1]`, ...
/// The error names the key (`email.stalled: ...`, `chat[1].kind: ...`).
pub fn channels(config: &Config) -> Result<Vec<Channel>, String> {
    let mut out = Vec::new();
    if let Some(e) = &config.email {
        let (email, rules) = Email::from_config(e).map_err(|m| format!("email.{m}"))?;
        out.push(Channel {
            key: "email".into(),
            target: Target::Email(email),
            rules,
        });
    }
    for (i, c) in config.chat.iter().flatten().enumerate() {
        let key = format!("chat[{i}]");
        let (chat, rules) = Chat::from_config(c).map_err(|m| format!("{key}.{m}"))?;
        out.push(Channel {
            key,
            target: Target::Chat(chat),
            rules,
        });
    }
    Ok(out)
}

/// This machine's name (for `From:` and the message's footer).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into a buffer we own.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn check(yaml: &str) -> Result<Vec<Channel>, String> {
        let cfg = Config::parse(yaml, Path::new("n.yaml")).map_err(|e| e.to_string())?;
        channels(&cfg)
    }

    #[test]
    fn defaults() {
        let ch = check("email: {to: a@b.c}").unwrap();
        let r = &ch[0].rules;
        assert_eq!(r.digest, 600.0);
        assert_eq!(r.immediate, [Kind::Crashed, Kind::Rule]);
        assert_eq!(r.stalled, Some(3600.0));
        assert_eq!(r.queued_over, None);
        assert!(r.on.is_empty() && r.takes(Kind::Finished));
        let Target::Email(e) = &ch[0].target else {
            panic!()
        };
        assert!(e.from.starts_with("neronet@"), "{}", e.from);
        assert!(matches!(e.mailer, Mailer::Smtp(_)));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, want) in [
            (
                "email: {to: a@b.c, stalled: banana}",
                "email.stalled: \"banana\"",
            ),
            ("email: {to: a@b.c, queued_over: 2x}", "email.queued_over"),
            (
                "email: {to: a@b.c, immediate: [crash]}",
                "email.immediate: \"crash\"",
            ),
            ("email: {to: a@b.c, on: [running]}", "email.on: \"running\""),
            (
                "email: {to: a@b.c, when: ['loss>']}",
                "email.when[0]: \"loss>\": column",
            ),
            (
                "chat: [{url: 'https://hooks.slack.com/x'}, {url: 'https://example.org/h'}]",
                "chat[1].kind: missing",
            ),
            (
                "chat: [{url: 'https://example.org/h', kind: teams}]",
                "chat[0].kind: \"teams\"",
            ),
            ("chat: [{kind: slack}]", "chat[0].url: missing"),
            (
                "chat: [{url: 'ftp://x', kind: slack}]",
                "chat[0].url: \"ftp://x\"",
            ),
            (
                "email: {to: a@b.c, smtp: {host: h, password_env: P}}",
                "email.smtp.user: missing",
            ),
        ] {
            let e = check(yaml).expect_err(yaml);
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn kinds_are_guessed_from_the_address() {
        for (url, kind) in [
            (
                "https://hooks.slack.com/services/T/B/X",
                Some(ChatKind::Slack),
            ),
            (
                "https://discord.com/api/webhooks/1/abc",
                Some(ChatKind::Discord),
            ),
            ("https://ntfy.sh/mytopic", Some(ChatKind::Ntfy)),
            (
                "https://mattermost.example.org/hooks/xyz",
                Some(ChatKind::Mattermost),
            ),
            ("http://127.0.0.1:9000/hook", None),
        ] {
            assert_eq!(ChatKind::guess(url), kind, "{url}");
        }
        let ch = check(
            "chat: [{url_env: HOOK}, {url: 'https://ntfy.sh/t', stalled: 'off', on: [crashed]}]",
        )
        .unwrap();
        let Target::Chat(c) = &ch[0].target else {
            panic!()
        };
        assert!(c.kind.is_none(), "guessed when the variable is read");
        assert_eq!(format!("{:?}", c.url), "Url::Env(HOOK)");
        assert_eq!(ch[1].rules.stalled, None);
        assert!(!ch[1].rules.takes(Kind::Finished));
        assert!(ch[1].rules.takes(Kind::Stalled));
    }
}
