//! E-mail through lettre's blocking transports: SMTP (STARTTLS required, implicit TLS, or plain
//! to a local relay; rustls with the system's CAs plus an optional `ca_file`; a login whose
//! password comes from an environment variable) or a `sendmail` program.

use super::channel::{Email, Mailer};
use super::SendError;
use crate::config::{SmtpConfig, SmtpTls};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SendmailTransport, SmtpTransport, Transport};
use std::time::Duration;

/// How long one SMTP conversation may take (the sender thread waits this long at most).
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

fn tls_of(s: &SmtpConfig) -> SmtpTls {
    s.tls.unwrap_or(SmtpTls::Starttls)
}

fn port_of(s: &SmtpConfig) -> u16 {
    s.port.unwrap_or(match tls_of(s) {
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    })
}

/// `email to a@b via smtp localhost:2525 (starttls)`.
pub fn describe(e: &Email) -> String {
    let how = match &e.mailer {
        Mailer::Smtp(s) => {
            let tls = match tls_of(s) {
                SmtpTls::Starttls => "starttls",
                SmtpTls::Tls => "tls",
                SmtpTls::None => "no tls",
            };
            format!("smtp {}:{} ({tls})", s.host, port_of(s))
        }
        Mailer::Sendmail(p) => format!("sendmail {}", p.display()),
    };
    format!("email to {} via {how}", e.to.join(", "))
}

/// A settings mistake: retrying does not help.
fn settings(answer: String) -> SendError {
    SendError {
        permanent: true,
        answer,
    }
}

/// The message as it goes out; `message_id` is stable per outbox entry, so a copy sent twice
/// (a crash between the server's yes and the store's note) is recognisable as the same.
pub fn message(
    e: &Email,
    subject: &str,
    body: &str,
    html: Option<&str>,
    message_id: &str,
) -> Result<Message, SendError> {
    let from: Mailbox = e
        .from
        .parse()
        .map_err(|err| settings(format!("email.from: {:?}: {err}", e.from)))?;
    let mut b = Message::builder()
        .from(from)
        .subject(subject)
        .message_id(Some(message_id.to_string()));
    for to in &e.to {
        let mb: Mailbox = to
            .parse()
            .map_err(|err| settings(format!("email.to: {to:?}: {err}")))?;
        b = b.to(mb);
    }
    let built = match html {
        Some(h) => b.multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(body.to_string()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(h.to_string()),
                ),
        ),
        None => b.header(ContentType::TEXT_PLAIN).body(body.to_string()),
    };
    built.map_err(|err| settings(format!("cannot build the message: {err}")))
}

fn transport(s: &SmtpConfig) -> Result<SmtpTransport, SendError> {
    let tls_params = || -> Result<TlsParameters, SendError> {
        let mut b = TlsParameters::builder(s.host.clone());
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|err| settings(format!("email.smtp.ca_file: {}: {err}", ca.display())))?;
            let cert = Certificate::from_pem(&pem).map_err(|err| {
                settings(format!(
                    "email.smtp.ca_file: {}: not a PEM certificate ({err})",
                    ca.display()
                ))
            })?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls()
            .map_err(|err| settings(format!("TLS settings: {err}")))
    };
    let tls = match tls_of(s) {
        // Required: a server that does not offer STARTTLS is refused, nothing goes in clear.
        SmtpTls::Starttls => Tls::Required(tls_params()?),
        SmtpTls::Tls => Tls::Wrapper(tls_params()?),
        SmtpTls::None => Tls::None,
    };
    let mut b = SmtpTransport::builder_dangerous(s.host.clone())
        .port(port_of(s))
        .tls(tls)
        .timeout(Some(SMTP_TIMEOUT));
    if let Some(user) = &s.user {
        let password = match &s.password_env {
            Some(var) => std::env::var(var).map_err(|_| {
                settings(format!(
                    "email.smtp.password_env: the environment variable {var} is not set (in the environment of the process that sends: the watcher)"
                ))
            })?,
            None => String::new(),
        };
        b = b.credentials(Credentials::new(user.clone(), password));
    }
    Ok(b.build())
}

/// Every line of an error's chain: lettre puts the server's words in the source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

pub fn send(e: &Email, msg: &Message) -> Result<(), SendError> {
    match &e.mailer {
        Mailer::Smtp(s) => {
            let t = transport(s)?;
            t.send(msg).map(|_| ()).map_err(|err| {
                let mut answer = chain(&err);
                let no_starttls = answer.contains("STARTTLS") || answer.contains("starttls");
                if no_starttls && tls_of(s) == SmtpTls::Starttls {
                    answer = format!(
                        "{}:{} does not offer STARTTLS and `tls: starttls` requires it; nothing was sent ({answer})",
                        s.host,
                        port_of(s)
                    );
                }
                SendError {
                    // A 5xx answer, or a server that refuses what the settings require.
                    permanent: err.is_permanent() || no_starttls,
                    answer,
                }
            })
        }
        Mailer::Sendmail(path) => {
            SendmailTransport::new_with_command(path)
                .send(msg)
                .map_err(|err| SendError {
                    permanent: false,
                    answer: format!("{}: {}", path.display(), chain(&err)),
                })
        }
    }
}
