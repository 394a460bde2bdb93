//! `mail`: one mail per event, as django-spark's spark_mails renders them,
//! sent by SMTP or written as an `.eml` file to an outbox folder.
//!
//! How a mail is made, in order:
//! 1. the handler's defaults (`from`, `to`, `cc`, `bcc`, `reply_to`,
//!    `subject`, `body`), each a template rendered against the event;
//! 2. overridden by the event's `context.spark_mail` object, field by field
//!    (values used as they are);
//! 3. if there is a template for the event's group, it is rendered: the first
//!    non-empty line is the subject, the rest (blank lines around it removed,
//!    trailing spaces removed per line) the body; each replaces the one from
//!    above unless it came out empty.
//!
//! Each entry of `from`, `to`, `cc`, `bcc` and `reply_to` (a string or a
//! list in the config; a string or a JSON array in `spark_mail`) must render
//! to exactly one mailbox, parsed by RFC 5322's rules (`"Doe, Jane"
//! <jane@example.com>` is one). Rendered text is never split: a value from
//! the database can never add a recipient. An entry that renders empty is
//! left out.
//!
//! A mail without a recipient or a sender, an entry that is not exactly one
//! mailbox, or a template that fails to render is a failed delivery naming
//! the key, the template and the error (django-spark would mail anyway).
//! Templates are minijinja (Jinja2 syntax); the event's context is their top
//! level, and `spark_event.key` / `spark_event.group` name the event.
//!
//! The Message-ID is made from the event key, so a retry of the same
//! delivery sends the same Message-ID; the key itself travels in an
//! `X-Spark-Key` header. The outbox file is named by the key (percent-encoded,
//! a long one cut to a readable prefix plus a hash, so that every key makes
//! a valid file name), so a retry replaces it rather than adding a second
//! mail; it is written whole, readable by its owner only unless the handler
//! sets `mode`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment};
use serde_json::{Map, Value};

use super::{DeliverEach, Dispatch, Failed, Outcome};
use crate::config::{MailConfig, MailTransport};
use crate::event::Event;

/// A mail, rendered, before it becomes a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderedMail {
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Vec<String>,
    pub subject: String,
    pub body: String,
}

pub struct MailHandler {
    name: String,
    config: MailConfig,
    env: Environment<'static>,
    /// The SMTP connections, for the smtp transport.
    smtp: Option<super::smtp::Pool>,
}

/// Splits a rendered template into subject (its first non-empty line) and
/// body (the lines after it, trailing spaces and surrounding blank lines
/// removed), as django-spark's `Mail.render` does.
pub fn split_subject_body(rendered: &str) -> (String, String) {
    let lines: Vec<&str> = rendered.lines().map(str::trim_end).collect();
    let Some(first) = lines.iter().position(|l| !l.is_empty()) else {
        return (String::new(), String::new());
    };
    let body = lines[first + 1..].join("\n");
    (
        lines[first].trim_start().to_owned(),
        body.trim_matches('\n').to_owned(),
    )
}

/// `text` with every byte outside `[A-Za-z0-9._-]` percent-encoded: safe in
/// a file name and in a Message-ID.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Encoded keys longer than this are cut to a prefix plus a hash.
const NAME_MAX: usize = 120;

/// A key made safe and bounded for a file name or a Message-ID: the key
/// percent-encoded; when that is long, its first 80 bytes (never cutting
/// an escape), `~`, and 32 hex digits of the key's SHA-256.
pub fn key_name(key: &str) -> String {
    let encoded = encode(key);
    if encoded.len() <= NAME_MAX {
        return encoded;
    }
    let bytes = encoded.as_bytes();
    let mut cut: usize = 80;
    while cut > 0 && bytes[cut.saturating_sub(2)..cut].contains(&b'%') {
        cut -= 1;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!("{}~{}", &encoded[..cut], hex::encode(&digest[..16]))
}

/// The outbox file of an event.
pub fn outbox_file(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{}.eml", key_name(key)))
}

/// The `X-Spark-Key` header: the event key, whole (encoded as RFC 2047
/// says when it is not plain ASCII).
#[derive(Debug, Clone)]
struct SparkKey(String);

impl Header for SparkKey {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Spark-Key")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(SparkKey(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// One address entry as one mailbox, or a failure naming the key.
fn mailbox(field: &str, text: &str, key: &str) -> Result<Mailbox, String> {
    text.trim().parse::<Mailbox>().map_err(|_| {
        format!(
            "`{field}` for {key}: {:?} is not exactly one mailbox (one address, optionally with a name: \
             Jane Doe <jane@example.com>); give several recipients as a list",
            crate::escape::escape(text)
        )
    })
}

fn strings(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

impl MailHandler {
    pub fn new(name: &str, config: MailConfig) -> MailHandler {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::None);
        for (group, (_, source)) in &config.templates {
            // Checked when the config was loaded; a template that failed
            // there never gets here.
            let _ = env.add_template_owned(group.clone(), source.clone());
        }
        let smtp = match &config.transport {
            MailTransport::Smtp(server) => Some(super::smtp::Pool::new(server.clone())),
            MailTransport::Outbox { .. } => None,
        };
        MailHandler {
            name: name.to_owned(),
            config,
            env,
            smtp,
        }
    }

    /// The template context: the event's context, plus `spark_event`.
    fn context(event: &Event) -> minijinja::Value {
        let mut ctx: Map<String, Value> = (*event.context).clone();
        let mut about = Map::new();
        about.insert("key".into(), Value::String(event.key.clone()));
        about.insert("group".into(), Value::String(event.group.clone()));
        ctx.insert("spark_event".into(), Value::Object(about));
        minijinja::Value::from(Serde(ctx))
    }

    fn render_str(
        &self,
        what: &str,
        source: &str,
        ctx: &minijinja::Value,
    ) -> Result<String, String> {
        self.env.render_str(source, ctx.clone()).map_err(|e| {
            format!(
                "handler default `{what}` does not render: {}",
                crate::config::describe_template_error(&e)
            )
        })
    }

    fn render_list(
        &self,
        what: &str,
        sources: &[String],
        ctx: &minijinja::Value,
    ) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for source in sources {
            // One entry, one mailbox: rendered text is never split (see
            // `message`), and an entry that renders empty is left out.
            let rendered = self.render_str(what, source, ctx)?;
            if !rendered.trim().is_empty() {
                out.push(rendered.trim().to_owned());
            }
        }
        Ok(out)
    }

    /// Renders the mail for `event` (see the module documentation).
    pub fn render(&self, event: &Event) -> Result<RenderedMail, String> {
        let c = &self.config;
        let ctx = Self::context(event);
        let opt = |what: &str, v: &Option<String>| -> Result<String, String> {
            v.as_deref()
                .map_or(Ok(String::new()), |s| self.render_str(what, s, &ctx))
        };
        let mut mail = RenderedMail {
            from: opt("from", &c.from)?.trim().to_owned(),
            to: self.render_list("to", &c.to, &ctx)?,
            cc: self.render_list("cc", &c.cc, &ctx)?,
            bcc: self.render_list("bcc", &c.bcc, &ctx)?,
            reply_to: self.render_list("reply_to", &c.reply_to, &ctx)?,
            subject: opt("subject", &c.subject)?.trim().to_owned(),
            body: opt("body", &c.body)?,
        };
        if let Some(Value::Object(over)) = event.context.get("spark_mail") {
            for (field, value) in over {
                let bad =
                    || format!("context.spark_mail.{field} must be a string or a list of strings");
                match field.as_str() {
                    "from" => mail.from = value.as_str().ok_or_else(bad)?.to_owned(),
                    "subject" => mail.subject = value.as_str().ok_or_else(bad)?.to_owned(),
                    "body" => mail.body = value.as_str().ok_or_else(bad)?.to_owned(),
                    "to" => mail.to = strings(value).ok_or_else(bad)?,
                    "cc" => mail.cc = strings(value).ok_or_else(bad)?,
                    "bcc" => mail.bcc = strings(value).ok_or_else(bad)?,
                    "reply_to" => mail.reply_to = strings(value).ok_or_else(bad)?,
                    _ => {}
                }
            }
        }
        if let Some((name, _)) = c.templates.get(&event.group) {
            let rendered = self
                .env
                .get_template(&event.group)
                .and_then(|t| t.render(ctx.clone()))
                .map_err(|e| {
                    format!(
                        "template {name} does not render: {}",
                        crate::config::describe_template_error(&e)
                    )
                })?;
            let (subject, body) = split_subject_body(&rendered);
            if !subject.is_empty() {
                mail.subject = subject;
            }
            if !body.is_empty() {
                mail.body = body;
            }
        }
        if mail.to.is_empty() {
            return Err(format!(
                "no recipient for {}: set `to` on the handler or context.spark_mail.to",
                event.key
            ));
        }
        if mail.from.is_empty() {
            return Err(format!(
                "no sender for {}: set `from` on the handler or context.spark_mail.from",
                event.key
            ));
        }
        Ok(mail)
    }

    /// The message for a rendered mail. Bcc is kept in the message only
    /// for the outbox (where a pickup service needs it).
    pub fn message(&self, event: &Event, mail: &RenderedMail) -> Result<Message, String> {
        let parse = |field: &str, text: &str| mailbox(field, text, &event.key);
        let from = parse("from", &mail.from)?;
        let domain = from.email.domain().to_owned();
        let mut builder = Message::builder()
            .from(from)
            .subject(mail.subject.clone())
            .message_id(Some(format!(
                "<{}.{}@{domain}>",
                key_name(&event.key),
                encode(&self.name)
            )))
            .date_now()
            .user_agent(concat!("spark/", env!("CARGO_PKG_VERSION")).to_owned())
            .header(SparkKey(event.key.clone()));
        for to in &mail.to {
            builder = builder.to(parse("to", to)?);
        }
        for cc in &mail.cc {
            builder = builder.cc(parse("cc", cc)?);
        }
        for bcc in &mail.bcc {
            builder = builder.bcc(parse("bcc", bcc)?);
        }
        for reply_to in &mail.reply_to {
            builder = builder.reply_to(parse("reply_to", reply_to)?);
        }
        if matches!(self.config.transport, MailTransport::Outbox { .. }) {
            builder = builder.keep_bcc();
        }
        builder
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone())
            .map_err(|e| format!("cannot build the mail: {e}"))
    }
}

impl DeliverEach for MailHandler {
    fn deliver(&self, dispatch: &Dispatch<'_>, _attempt: u32) -> Outcome {
        let event = dispatch.event;
        let mail = self.render(event)?;
        let message = self.message(event, &mail)?;
        match (&self.config.transport, &self.smtp) {
            (MailTransport::Outbox { dir, mode }, _) => {
                let path = outbox_file(dir, &event.key);
                crate::files::write_atomically(&path, &message.formatted(), *mode)
                    .map_err(|e| Failed::later(format!("cannot write {}: {e}", path.display())))
            }
            (MailTransport::Smtp(_), Some(pool)) => {
                pool.send(message.envelope(), &message.formatted())
            }
            (MailTransport::Smtp(_), None) => Err(Failed::later("no SMTP connection pool")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_non_empty_line_is_the_subject() {
        let (s, b) = split_subject_body("\n\n  \nHello {x}   \n\n\nLine 1  \nLine 2\n\n");
        assert_eq!(s, "Hello {x}");
        assert_eq!(b, "Line 1\nLine 2");
        assert_eq!(
            split_subject_body("Only a subject"),
            ("Only a subject".into(), String::new())
        );
        assert_eq!(
            split_subject_body("  \n \n"),
            (String::new(), String::new())
        );
        assert_eq!(split_subject_body("S\r\nB\r\n"), ("S".into(), "B".into()));
    }

    fn handler(templates: &[(&str, &str)]) -> MailHandler {
        MailHandler::new(
            "mail",
            MailConfig {
                templates: templates
                    .iter()
                    .map(|(g, t)| ((*g).to_owned(), (format!("{g}.txt"), (*t).to_owned())))
                    .collect(),
                from: Some("Shop <shop@example.org>".into()),
                subject: Some("Default subject".into()),
                body: Some("Default body for {{ name }}".into()),
                to: vec!["{{ email }}".into()],
                cc: Vec::new(),
                bcc: Vec::new(),
                reply_to: Vec::new(),
                transport: MailTransport::Outbox {
                    dir: PathBuf::from("outbox"),
                    mode: crate::files::PRIVATE,
                },
            },
        )
    }

    fn event_with(context: serde_json::Value) -> Event {
        let Value::Object(map) = context else {
            unreachable!("tests pass objects")
        };
        crate::event::event("order_shipped", 1, map)
    }

    #[test]
    fn spark_mail_overrides_the_defaults_and_the_template_overrides_both() {
        let h = handler(&[("order_shipped", "Shipped: {{ name }}\n\nOn its way.")]);
        let mail = h
            .render(&event_with(serde_json::json!({
                "name": "Ana", "email": "ana@example.org",
                "spark_mail": {"to": ["boss@example.org", "ana@example.org"], "subject": "ignored",
                               "reply_to": "help@example.org"}
            })))
            .unwrap();
        assert_eq!(mail.to, ["boss@example.org", "ana@example.org"]);
        assert_eq!(mail.reply_to, ["help@example.org"]);
        assert_eq!(mail.subject, "Shipped: Ana");
        assert_eq!(mail.body, "On its way.");
    }

    #[test]
    fn an_empty_template_falls_back_to_the_defaults() {
        let h = handler(&[("order_shipped", "{% if false %}x{% endif %}\n  \n")]);
        let mail = h
            .render(&event_with(
                serde_json::json!({"name": "Ben", "email": "ben@example.org"}),
            ))
            .unwrap();
        assert_eq!(mail.subject, "Default subject");
        assert_eq!(mail.body, "Default body for Ben");
        assert_eq!(mail.to, ["ben@example.org"]);
    }

    #[test]
    fn a_bad_address_is_a_failure_naming_it() {
        let h = handler(&[]);
        let e = event_with(serde_json::json!({"email": "not an address"}));
        let mail = h.render(&e).unwrap();
        let err = h.message(&e, &mail).unwrap_err();
        assert!(
            err.contains("`to` for order_shipped_1: \"not an address\" is not exactly one mailbox"),
            "{err}"
        );
    }

    #[test]
    fn an_entry_is_one_mailbox_and_is_never_split() {
        let h = handler(&[]);
        for (email, ok) in [
            ("\"Doe, Jane\" <jane@example.com>", true),
            ("Jane Doe <jane@example.com>", true),
            ("bob@example.org, evil@attacker.org", false),
            ("bob@example.org <evil@attacker.org>", false),
            ("bob@example.org\r\nBcc: evil@attacker.org", false),
        ] {
            let e = event_with(serde_json::json!({ "email": email }));
            let mail = h.render(&e).unwrap();
            assert_eq!(mail.to.len(), 1, "{email}");
            assert_eq!(h.message(&e, &mail).is_ok(), ok, "{email}");
        }
    }

    #[test]
    fn spark_mail_lists_give_several_recipients_and_strings_one() {
        let h = handler(&[]);
        let e = event_with(serde_json::json!({
            "email": "x@example.org",
            "spark_mail": {"to": ["a@example.org", "\"B, Bee\" <b@example.org>"]}
        }));
        let mail = h.render(&e).unwrap();
        let message = h.message(&e, &mail).unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(text.contains("a@example.org"), "{text}");
        assert!(text.contains("b@example.org"), "{text}");
        let e = event_with(serde_json::json!({
            "spark_mail": {"to": "a@example.org, evil@attacker.org"}
        }));
        let mail = h.render(&e).unwrap();
        assert!(h.message(&e, &mail).is_err());
    }

    #[test]
    fn long_keys_make_bounded_names() {
        let key = "漢".repeat(27);
        let name = key_name(&key);
        assert!(name.len() <= NAME_MAX, "{name}");
        assert_ne!(key_name(&format!("{key}x")), name);
        assert_eq!(key_name("short_1"), "short_1");
        let long = "a%".repeat(100);
        let cut = key_name(&long);
        let prefix = cut.split('~').next().unwrap();
        assert!(
            !prefix.ends_with('%') && !prefix[..prefix.len() - 1].ends_with('%'),
            "{cut}"
        );
    }

    #[test]
    fn keys_are_encoded_for_files_and_message_ids() {
        assert_eq!(encode("challenge_ended_4"), "challenge_ended_4");
        assert_eq!(encode("a/b c@d"), "a%2Fb%20c%40d");
        assert_eq!(
            outbox_file(Path::new("out"), "../x"),
            Path::new("out/..%2Fx.eml")
        );
    }
}
