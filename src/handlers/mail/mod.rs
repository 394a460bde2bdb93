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
//!    above unless it came out empty. Lines break where Python's
//!    `splitlines` breaks them (`\n`, `\r\n`, a bare `\r`, ...).
//! 4. an HTML template for the group (`<group>.html`), or else the handler's
//!    `html`, makes an HTML part: the mail is multipart/alternative with the
//!    text part first. HTML is autoescaped; text is not (a text/plain mail
//!    shows `<` as `<`; django-spark escapes it as `&lt;`).
//!
//! `context.spark_mail` takes the keys Django's mail class takes that make
//! sense here: `from` (or `from_email`), `to`, `cc`, `bcc`, `reply_to`,
//! `subject`, `body`, and `headers` (an object of extra header fields,
//! checked: no line breaks, a valid name, and never one spark or the
//! addresses own: `To`, `Cc`, `Bcc`, `From`, `Sender`, `Reply-To`,
//! `Subject`, `Date`, `Message-ID`, `MIME-Version`, `Content-*`, ...). Any
//! other key fails the delivery, naming it.
//!
//! A subject too long for one header line is folded; a word that cannot be
//! folded (no spaces) is written as RFC 2047 encoded words, and so are
//! display names lettre could not fold: no header line passes 78
//! characters.
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

pub mod config;
pub mod smtp;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message, MultiPart, SinglePart};
use minijinja::Environment;
use serde_json::Value;

use super::{DeliverEach, Dispatch, Failed, Outcome};
use crate::event::Event;
pub use config::{
    CaFile, KIND, MailConfig, MailTransport, SmtpSecurity, SmtpServer, is_loopback_host,
};

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
    /// The HTML part, when there is one.
    pub html: Option<String>,
    /// Extra header fields (`spark_mail.headers`), checked.
    pub headers: Vec<(String, String)>,
}

/// The keys `context.spark_mail` takes.
pub const SPARK_MAIL_KEYS: [&str; 9] = [
    "from",
    "from_email",
    "to",
    "cc",
    "bcc",
    "reply_to",
    "subject",
    "body",
    "headers",
];

/// Header fields `spark_mail.headers` may set, whatever the rest of the
/// name: fields that name no address and route no mail. Anything else is
/// refused (`Resent-To`, `Errors-To`, `Disposition-Notification-To`, ...:
/// a pickup tool running `sendmail -t`, or a mail client, would act on
/// them). An allow-list, so that a field nobody thought of is refused.
const SAFE_HEADERS: [&str; 13] = [
    "keywords",
    "comments",
    "importance",
    "priority",
    "sensitivity",
    "auto-submitted",
    "precedence",
    "in-reply-to",
    "references",
    "organization",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

/// Words that make an `X-` field name one that may name an address or
/// route mail (`X-Original-To`, `X-Envelope-From`, `X-BCC`, ...).
const ADDRESS_WORDS: [&str; 24] = [
    "to",
    "cc",
    "bcc",
    "from",
    "sender",
    "recipient",
    "recipients",
    "rcpt",
    "reply",
    "return",
    "envelope",
    "errors",
    "error",
    "receipt",
    "notification",
    "notify",
    "forward",
    "forwarded",
    "delivered",
    "original",
    "apparently",
    "resent",
    "bounce",
    "spark",
];

/// Why `name` may not be set from `spark_mail.headers`, if it may not.
fn refused_header(name: &str, value: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("x-") {
        if rest.split('-').any(|word| ADDRESS_WORDS.contains(&word)) {
            return Some("an X- field whose name speaks of addresses or routing is refused");
        }
        return None;
    }
    if !SAFE_HEADERS.contains(&lower.as_str()) {
        return Some(
            "not a field spark_mail may set (it may set Keywords, Comments, Importance, Priority, \
             Sensitivity, Auto-Submitted, Precedence, In-Reply-To, References, Organization, \
             List-Id, List-Unsubscribe, List-Unsubscribe-Post and X- fields; addresses and the \
             subject have their own spark_mail keys)",
        );
    }
    // An unsubscribe link, never a mailbox to write to.
    if lower == "list-unsubscribe"
        && !value.split(',').all(|part| {
            let part = part.trim().to_ascii_lowercase();
            part.starts_with("<https://") && part.ends_with('>')
        })
    {
        return Some("List-Unsubscribe takes only <https://...> links");
    }
    None
}

/// One extra header field from `spark_mail.headers`, or why it is refused.
fn extra_header(name: &str, value: &Value, key: &str) -> Result<(String, String), String> {
    let refuse = |why: &str| {
        format!(
            "context.spark_mail.headers for {key}: {:?}: {why}",
            crate::escape::escape(name)
        )
    };
    if name.is_empty()
        || name.len() > 76
        || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
    {
        return Err(refuse("not a header field name"));
    }
    let Some(text) = value.as_str() else {
        return Err(refuse("the value must be a string"));
    };
    if let Some(why) = refused_header(name, text) {
        return Err(refuse(why));
    }
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(refuse(
            "the value holds a line break or a control character",
        ));
    }
    if name.len() + 2 + text.len() > 998 {
        return Err(refuse("longer than a header line may be (998 characters)"));
    }
    Ok((name.to_owned(), text.to_owned()))
}

/// The names templates are kept under (their suffix picks the escaping).
fn text_name(group: &str) -> String {
    format!("text:{group}.txt")
}

fn html_name(group: &str) -> String {
    format!("html:{group}.html")
}

const DEFAULT_HTML: &str = "default:html.html";

pub struct MailHandler {
    name: String,
    config: MailConfig,
    env: Environment<'static>,
    /// The SMTP connections, for the smtp transport.
    smtp: Option<smtp::Pool>,
}

/// Splits a rendered template into subject (its first non-empty line) and
/// body (the lines after it, trailing spaces and surrounding blank lines
/// removed), as django-spark's `Mail.render` does.
pub fn split_subject_body(rendered: &str) -> (String, String) {
    let lines: Vec<&str> = split_lines(rendered)
        .into_iter()
        .map(str::trim_end)
        .collect();
    let Some(first) = lines.iter().position(|l| !l.is_empty()) else {
        return (String::new(), String::new());
    };
    let body = lines[first + 1..].join("\n");
    (
        lines[first].trim_start().to_owned(),
        body.trim_matches('\n').to_owned(),
    )
}

/// `text` cut into lines where Python's `str.splitlines` cuts it: `\r\n`,
/// `\n`, a bare `\r`, and `\v`, `\f`, `\x1c`-`\x1e`, `\u{85}`,
/// `\u{2028}`, `\u{2029}`.
pub fn split_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let breaks = matches!(
            c,
            '\n' | '\r'
                | '\u{b}'
                | '\u{c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if !breaks {
            continue;
        }
        lines.push(&text[start..i]);
        start = i + c.len_utf8();
        if c == '\r' && chars.peek().map(|(_, n)| *n) == Some('\n') {
            chars.next();
            start += 1;
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
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

/// The `Subject` header, folded so that no line passes 78 characters: at
/// spaces where the words fit, and as RFC 2047 encoded words (UTF-8,
/// base64, 39 bytes each) when a word is too long to fold.
#[derive(Debug, Clone)]
struct FoldedSubject(String);

/// Longest word written as it is in a subject.
const SUBJECT_WORD_MAX: usize = 60;

impl Header for FoldedSubject {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Subject")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(FoldedSubject(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        let text = &self.0;
        if text.split(' ').all(|w| w.len() <= SUBJECT_WORD_MAX) {
            // lettre folds at spaces and encodes what is not ASCII.
            return HeaderValue::new(Self::name(), text.clone());
        }
        let encoded = encoded_words(text);
        HeaderValue::dangerous_new_pre_encoded(Self::name(), text.clone(), encoded)
    }
}

/// `text` as RFC 2047 encoded words (UTF-8, base64, 39 bytes each, never
/// cutting a character), one per header line: each line stays under 78
/// characters, and a reader joins them back into `text`.
fn encoded_words(text: &str) -> String {
    let mut words = Vec::new();
    let mut chunk_start = 0;
    let mut last = 0;
    for (i, c) in text.char_indices() {
        if i + c.len_utf8() - chunk_start > 39 {
            words.push(&text[chunk_start..last]);
            chunk_start = last;
        }
        last = i + c.len_utf8();
    }
    words.push(&text[chunk_start..]);
    words
        .iter()
        .map(|w| {
            format!(
                "=?utf-8?b?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// Display names lettre can fold by itself: it folds at spaces only, so a
/// run without spaces longer than this would make a line too long.
const NAME_WORD_MAX: usize = 40;

/// Rewrites an address header (`From`, `To`, ...) whose display names lettre
/// could not fold (a long run without spaces, as a value from the database
/// can be): each name as encoded words, each mailbox on lines of its own.
fn fold_addresses(message: &mut Message, field: &'static str, boxes: &[Mailbox], force: bool) {
    // What lettre writes as it is and folds at spaces: short words of
    // ASCII letters, digits and the characters that need no quoting. A
    // name lettre would encode or quote itself could still make a long
    // line, so such names are encoded here, a line per word.
    let foldable = |name: &str| {
        name.split_whitespace().all(|w| {
            w.chars().count() <= NAME_WORD_MAX
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
        })
    };
    if !force && boxes.iter().all(|b| b.name.as_deref().is_none_or(foldable)) {
        return;
    }
    let raw = boxes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let encoded = boxes
        .iter()
        .map(
            |b| match b.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                Some(name) => format!("{}\r\n <{}>", encoded_words(name), b.email),
                None => b.email.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join(",\r\n ");
    message
        .headers_mut()
        .insert_raw(HeaderValue::dangerous_new_pre_encoded(
            HeaderName::new_from_ascii_str(field),
            raw,
            encoded,
        ));
}

/// Whether a formatted mail has a header line longer than 78 characters.
fn header_lines_too_long(formatted: &[u8]) -> bool {
    let end = formatted
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(formatted.len());
    formatted[..end]
        .split(|&b| b == b'\n')
        .any(|line| line.strip_suffix(b"\r").unwrap_or(line).len() > 78)
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
        let mut env = crate::templates::environment(config.strict_templates);
        for (group, (_, source)) in &config.templates {
            // Checked when the config was loaded; a template that failed
            // there never gets here.
            let _ = env.add_template_owned(text_name(group), source.clone());
        }
        for (group, (_, source)) in &config.html_templates {
            let _ = env.add_template_owned(html_name(group), source.clone());
        }
        if let Some(html) = &config.html {
            let _ = env.add_template_owned(DEFAULT_HTML, html.clone());
        }
        let smtp = match &config.transport {
            MailTransport::Smtp(server) => Some(smtp::Pool::new(server.clone())),
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
        crate::templates::event_context(event, None)
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
                crate::templates::describe_error(&e)
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

    fn render_named(
        &self,
        template: &str,
        what: &str,
        ctx: &minijinja::Value,
    ) -> Result<String, String> {
        self.env
            .get_template(template)
            .and_then(|t| t.render(ctx.clone()))
            .map_err(|e| {
                format!(
                    "template {what} does not render: {}",
                    crate::templates::describe_error(&e)
                )
            })
    }

    /// Renders the mail for `event` (see the module documentation),
    /// without asking for a sender or a recipient (`render` does).
    pub fn render_parts(&self, event: &Event) -> Result<RenderedMail, String> {
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
            html: None,
            headers: Vec::new(),
        };
        // A NULL `spark_mail` (a nullable JSON column) overrides nothing.
        if let Some(over) = event.context.get("spark_mail").filter(|v| !v.is_null()) {
            let Value::Object(over) = over else {
                return Err(format!(
                    "context.spark_mail for {} must be an object (keys: {})",
                    event.key,
                    SPARK_MAIL_KEYS.join(", ")
                ));
            };
            let from_records = c.record_groups.contains(&event.group);
            for (field, value) in over {
                if from_records
                    && SPARK_MAIL_KEYS.contains(&field.as_str())
                    && !c.spark_mail_from_records.iter().any(|k| k == field)
                {
                    return Err(format!(
                        "context.spark_mail.{} for {}: this spark_mail came from the database \
                         (group {} is a generator's, its context a record), and the handler \
                         takes {} from records (spark_mail_from_records)",
                        crate::escape::escape(field),
                        event.key,
                        event.group,
                        if c.spark_mail_from_records.is_empty() {
                            "no key".to_owned()
                        } else {
                            c.spark_mail_from_records.join(", ")
                        }
                    ));
                }
                let bad =
                    || format!("context.spark_mail.{field} must be a string or a list of strings");
                match field.as_str() {
                    "from" | "from_email" => mail.from = value.as_str().ok_or_else(bad)?.to_owned(),
                    "subject" => mail.subject = value.as_str().ok_or_else(bad)?.to_owned(),
                    "body" => mail.body = value.as_str().ok_or_else(bad)?.to_owned(),
                    "to" => mail.to = strings(value).ok_or_else(bad)?,
                    "cc" => mail.cc = strings(value).ok_or_else(bad)?,
                    "bcc" => mail.bcc = strings(value).ok_or_else(bad)?,
                    "reply_to" => mail.reply_to = strings(value).ok_or_else(bad)?,
                    "headers" => {
                        let Value::Object(headers) = value else {
                            return Err(format!(
                                "context.spark_mail.headers for {} must be an object of header fields",
                                event.key
                            ));
                        };
                        mail.headers = headers
                            .iter()
                            .map(|(name, value)| extra_header(name, value, &event.key))
                            .collect::<Result<_, _>>()?;
                    }
                    other => {
                        return Err(format!(
                            "context.spark_mail.{} for {}: spark does not take this key (it takes {})",
                            crate::escape::escape(other),
                            event.key,
                            SPARK_MAIL_KEYS.join(", ")
                        ));
                    }
                }
            }
        }
        if let Some((name, _)) = c.templates.get(&event.group) {
            let rendered = self.render_named(&text_name(&event.group), name, &ctx)?;
            let (subject, body) = split_subject_body(&rendered);
            if !subject.is_empty() {
                mail.subject = subject;
            }
            if !body.is_empty() {
                mail.body = body;
            }
        }
        if let Some((name, _)) = c.html_templates.get(&event.group) {
            mail.html = Some(self.render_named(&html_name(&event.group), name, &ctx)?);
        } else if c.html.is_some() {
            mail.html = Some(self.render_named(DEFAULT_HTML, "`html`", &ctx)?);
        }
        Ok(mail)
    }

    /// What a rendered mail lacks to be sent: a recipient, a sender.
    pub fn missing(&self, event: &Event, mail: &RenderedMail) -> Option<String> {
        if mail.to.is_empty() {
            return Some(format!(
                "no recipient for {}: set `to` on the handler or context.spark_mail.to",
                event.key
            ));
        }
        if mail.from.is_empty() {
            return Some(format!(
                "no sender for {}: set `from` on the handler or context.spark_mail.from",
                event.key
            ));
        }
        None
    }

    /// Renders the mail for `event`: a failure when it has no recipient or
    /// no sender.
    pub fn render(&self, event: &Event) -> Result<RenderedMail, String> {
        let mail = self.render_parts(event)?;
        match self.missing(event, &mail) {
            Some(problem) => Err(problem),
            None => Ok(mail),
        }
    }

    /// The message for a rendered mail. Bcc is kept in the message only
    /// for the outbox (where a pickup service needs it).
    pub fn message(&self, event: &Event, mail: &RenderedMail) -> Result<Message, String> {
        self.build(event, mail, false)
    }

    /// The message as `preview-mail` shows it: like `message`, but a mail
    /// without a sender shows a placeholder one, and one without a
    /// recipient is shown without (see `missing`).
    pub fn preview(&self, event: &Event, mail: &RenderedMail) -> Result<Message, String> {
        let mut mail = mail.clone();
        if mail.from.is_empty() {
            mail.from = "no sender <no-sender@invalid>".into();
        }
        self.build(event, &mail, true)
    }

    fn build(&self, event: &Event, mail: &RenderedMail, preview: bool) -> Result<Message, String> {
        let parse = |field: &str, text: &str| mailbox(field, text, &event.key);
        let parse_all = |field: &str, texts: &[String]| -> Result<Vec<Mailbox>, String> {
            texts.iter().map(|t| parse(field, t)).collect()
        };
        let from = parse("from", &mail.from)?;
        let (to, cc, bcc, reply_to) = (
            parse_all("to", &mail.to)?,
            parse_all("cc", &mail.cc)?,
            parse_all("bcc", &mail.bcc)?,
            parse_all("reply_to", &mail.reply_to)?,
        );
        let domain = from.email.domain().to_owned();
        let mut builder = Message::builder()
            .from(from.clone())
            .header(FoldedSubject(mail.subject.clone()))
            .message_id(Some(format!(
                "<{}.{}@{domain}>",
                key_name(&event.key),
                encode(&self.name)
            )))
            .date_now()
            .user_agent(concat!("spark/", env!("CARGO_PKG_VERSION")).to_owned())
            .header(SparkKey(event.key.clone()));
        for mailbox in &to {
            builder = builder.to(mailbox.clone());
        }
        for mailbox in &cc {
            builder = builder.cc(mailbox.clone());
        }
        for mailbox in &bcc {
            builder = builder.bcc(mailbox.clone());
        }
        for mailbox in &reply_to {
            builder = builder.reply_to(mailbox.clone());
        }
        for (name, value) in &mail.headers {
            let name = HeaderName::new_from_ascii(name.clone())
                .map_err(|_| format!("{name:?} is not a header field name"))?;
            builder = builder.raw_header(HeaderValue::new(name, value.clone()));
        }
        if matches!(self.config.transport, MailTransport::Outbox { .. }) {
            builder = builder.keep_bcc();
        }
        if preview && mail.to.is_empty() && mail.cc.is_empty() && mail.bcc.is_empty() {
            let nobody = "no-recipient@invalid"
                .parse()
                .map_err(|e| format!("cannot build the preview: {e}"))?;
            let envelope = lettre::address::Envelope::new(None, vec![nobody])
                .map_err(|e| format!("cannot build the preview: {e}"))?;
            builder = builder.envelope(envelope);
        }
        let keep_bcc = matches!(self.config.transport, MailTransport::Outbox { .. });
        let built = match &mail.html {
            None => builder
                .header(ContentType::TEXT_PLAIN)
                .body(mail.body.clone()),
            Some(html) if mail.body.trim().is_empty() => {
                builder.singlepart(SinglePart::html(html.clone()))
            }
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                mail.body.clone(),
                html.clone(),
            )),
        };
        let mut message = built.map_err(|e| format!("cannot build the mail: {e}"))?;
        let mut fields: Vec<(&'static str, &[Mailbox])> =
            vec![("From", std::slice::from_ref(&from))];
        for (field, boxes) in [("To", &to), ("Cc", &cc), ("Reply-To", &reply_to)] {
            if !boxes.is_empty() {
                fields.push((field, boxes));
            }
        }
        if keep_bcc && !bcc.is_empty() {
            fields.push(("Bcc", &bcc));
        }
        for (field, boxes) in &fields {
            fold_addresses(&mut message, field, boxes, false);
        }
        // lettre folds names only at spaces, and not always within the
        // limit (a quoted name of many words): if a line is still too
        // long, every name is written as encoded words, a line each.
        if header_lines_too_long(&message.formatted()) {
            for (field, boxes) in &fields {
                fold_addresses(&mut message, field, boxes, true);
            }
        }
        Ok(message)
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
    use std::collections::BTreeMap;

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
                html_templates: BTreeMap::new(),
                html: None,
                strict_templates: false,
                templates_folder: None,
                transport: MailTransport::Outbox {
                    dir: PathBuf::from("outbox"),
                    mode: crate::files::PRIVATE,
                },
                // As from a compiled-in source: its spark_mail is code's.
                spark_mail_from_records: Vec::new(),
                record_groups: Default::default(),
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
