//! Handlers in the config: the validated types, and turning a raw
//! `[[handlers]]` entry into one (kind by kind, with the fields each kind
//! takes; every other field is reported).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use toml::Spanned;

use super::raw::{OneOrMany, RawHandler, RawTemplates};
use super::{Problem, RetryPolicy, Validator};
use crate::registry::Registry;

/// Whether a delivery is recorded done after the handler returns (a crash
/// mid-call repeats it) or before it is called (a crash mid-call loses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    AtLeastOnce,
    AtMostOnce,
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::AtMostOnce => "at-most-once",
        })
    }
}

/// A value read from the environment (a token, a password): never printed
/// (it is registered with `crate::redact`). A variable that is not set
/// leaves it empty; `Config::require_secrets` refuses to deliver then.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: Option<String>,
    /// The environment variable it came from, for messages.
    pub var: String,
}

impl Secret {
    pub fn new(var: &str, value: String) -> Secret {
        crate::redact::register(&value);
        Secret {
            value: Some(value),
            var: var.to_owned(),
        }
    }

    /// The secret in environment variable `var` (unset: empty).
    pub fn from_env(var: &str) -> Secret {
        match std::env::var(var) {
            Ok(value) => Secret::new(var, value),
            Err(_) => Secret {
                value: None,
                var: var.to_owned(),
            },
        }
    }

    /// A value given in the config itself (a literal header).
    pub fn literal(value: String) -> Secret {
        Secret {
            value: Some(value),
            var: String::new(),
        }
    }

    /// Whether it has a value (its variable is set).
    pub fn is_set(&self) -> bool {
        self.value.is_some()
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        self.value.as_deref().unwrap_or_default()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.var.is_empty() {
            write!(f, "{:?}", self.expose())
        } else {
            write!(f, "${{{}}} (hidden)", self.var)
        }
    }
}

#[derive(Debug, Clone)]
pub struct HandlerConfig {
    pub name: String,
    /// Matched against an event's group with search semantics.
    pub group: Regex,
    pub kind: HandlerKind,
    pub guarantee: Guarantee,
    pub retry: RetryPolicy,
    /// Calls in flight at once (1: one after the other).
    pub concurrency: usize,
    /// At most this many calls per time (`rate = "10/s"`).
    pub rate: Option<Rate>,
}

/// A pace: at most `calls` calls per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub calls: u32,
    pub per: Duration,
}

impl Rate {
    /// Parses `"10/s"`, `"600/m"` (or `/min`), `"5/h"`.
    pub fn parse(text: &str) -> Option<Rate> {
        let (calls, unit) = text.trim().split_once('/')?;
        let calls: u32 = calls.trim().parse().ok().filter(|n| *n > 0)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(Rate { calls, per })
    }

    /// The time between two calls.
    pub fn interval(&self) -> Duration {
        self.per / self.calls
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.calls)
    }
}

/// A PEM file of certificate authorities, read when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

/// The most calls a handler may have in flight.
pub const MAX_CONCURRENCY: i64 = 256;

#[derive(Debug, Clone)]
pub enum HandlerKind {
    /// Appends one JSON line per event to `path` (created with `mode`).
    Jsonl { path: PathBuf, mode: u32 },
    /// Runs `argv` with the event JSON on stdin, in the config's folder,
    /// with `env` added to its environment.
    Command {
        argv: Vec<String>,
        timeout: Duration,
        workdir: PathBuf,
        env: Vec<(String, String)>,
    },
    /// Calls a compiled-in handler function.
    Function { function: String },
    /// Sends the event to `url`: its JSON, or the rendered `body`.
    Webhook(Box<WebhookConfig>),
    /// Renders a mail per event and sends it (SMTP) or writes it (outbox).
    Mail(Box<MailConfig>),
}

/// The handler kinds a config may name.
pub const HANDLER_KINDS: &str = "jsonl, command, function, webhook, mail";

impl HandlerKind {
    /// The file or folder this handler writes, which no other handler may share.
    pub fn output(&self) -> Option<&Path> {
        match self {
            HandlerKind::Jsonl { path, .. } => Some(path),
            HandlerKind::Mail(mail) => match &mail.transport {
                MailTransport::Outbox { dir, .. } => Some(dir),
                MailTransport::Smtp(_) => None,
            },
            _ => None,
        }
    }

    /// The mode of the files this handler creates, for a handler that
    /// writes files.
    pub fn file_mode(&self) -> Option<u32> {
        match self {
            HandlerKind::Jsonl { mode, .. } => Some(*mode),
            HandlerKind::Mail(mail) => match &mail.transport {
                MailTransport::Outbox { mode, .. } => Some(*mode),
                MailTransport::Smtp(_) => None,
            },
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            HandlerKind::Jsonl { .. } => "jsonl",
            HandlerKind::Command { .. } => "command",
            HandlerKind::Function { .. } => "function",
            HandlerKind::Webhook(_) => "webhook",
            HandlerKind::Mail(_) => "mail",
        }
    }
}

/// A webhook handler: where, how, and what it sends.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The address; a template when it holds `{{`/`{%` (values rendered
    /// into it are percent-encoded, and scheme and host are literal).
    pub url: String,
    pub method: HttpMethod,
    /// The body template (default: the event JSON).
    pub body: Option<String>,
    /// The body's content type (default `application/json`).
    pub content_type: String,
    /// Extra headers: literal values are templates, `header_env` ones
    /// secrets sent as they are (`Secret::var` tells them apart).
    pub headers: Vec<(String, Secret)>,
    pub signing_secret: Option<Secret>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Fail a render that looks up something undefined.
    pub strict_templates: bool,
}

/// How values rendered into a webhook body are escaped: by its content
/// type, so that a value stays inside its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Any JSON type (`application/json`, `text/json`, `*/*+json`): values
    /// JSON-escaped, and the body must parse as JSON.
    Json,
    /// `application/x-www-form-urlencoded`: values percent-encoded, so
    /// that a value cannot add a field.
    Form,
    /// `text/plain`: values as they are (there is nothing to break out of).
    Text,
    /// Anything else: spark cannot escape values for it, so its body may
    /// not be a template.
    Other,
}

impl BodyKind {
    /// The kind a content type (`type/subtype; params`) makes.
    pub fn of(content_type: &str) -> BodyKind {
        let t = content_type.to_ascii_lowercase();
        let essence = t.split(';').next().unwrap_or_default().trim();
        let subtype = essence.split_once('/').map_or("", |(_, sub)| sub);
        if subtype == "json" || subtype == "x-json" || subtype.ends_with("+json") {
            BodyKind::Json
        } else if essence == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else if essence == "text/plain" {
            BodyKind::Text
        } else {
            BodyKind::Other
        }
    }
}

impl WebhookConfig {
    /// How the body's values are escaped (its content type says).
    pub fn body_kind(&self) -> BodyKind {
        BodyKind::of(&self.content_type)
    }
}

/// Whether `name` is an HTTP header field name (RFC 9110's token).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// The HTTP methods a webhook may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Post,
    Put,
    Patch,
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
        })
    }
}

/// A mail handler: templates per group, defaults, and how mail leaves.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// Template source per event group, with a name for messages.
    pub templates: BTreeMap<String, (String, String)>,
    /// HTML template source per event group (`<group>.html`).
    pub html_templates: BTreeMap<String, (String, String)>,
    /// The default HTML part (a template), for groups without one.
    pub html: Option<String>,
    /// Fail a render that looks up something undefined (default: render
    /// it empty, as Django does).
    pub strict_templates: bool,
    /// `templates` as the config wrote it when it named a folder.
    pub templates_folder: Option<String>,
    /// Defaults (each itself a template): `from`, `subject`, `body`.
    pub from: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    /// Default recipients (templates too).
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Vec<String>,
    pub transport: MailTransport,
    /// The `spark_mail` keys honoured when `spark_mail` came from the
    /// database (`spark_mail_from_records`; none by default).
    pub spark_mail_from_records: Vec<String>,
    /// The groups whose events carry a record as their context (the
    /// groups of the config's generators): their `spark_mail` is a value
    /// from the database. Filled in once the sources are known.
    pub record_groups: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub enum MailTransport {
    /// One `.eml` file per delivery, named by the event key, created with
    /// `mode`.
    Outbox {
        dir: PathBuf,
        mode: u32,
    },
    Smtp(SmtpServer),
}

/// The SMTP server a mail handler sends through, and how.
#[derive(Debug, Clone)]
pub struct SmtpServer {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
    /// Keep connections open for the next mail (`smtp_pool`, default
    /// true); false opens one per mail.
    pub pool: bool,
    /// The certificate authorities to trust instead of the public ones
    /// (`smtp_ca_file`, PEM), for a relay with a private CA.
    pub ca: Option<CaFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587).
    StartTls,
    /// TLS from the start (port 465).
    Tls,
    /// No encryption (a local relay).
    None,
}

type Span = Option<Range<usize>>;

fn span<T>(v: &Option<Spanned<T>>) -> Span {
    v.as_ref().map(Spanned::span)
}

impl Validator<'_> {
    pub(super) fn handler(
        &mut self,
        raw: RawHandler,
        defaults: &RetryPolicy,
        registry: &Registry,
    ) -> Option<HandlerConfig> {
        let name = raw.name.get_ref().clone();
        let entry = format!("handler `{name}`");
        self.non_empty(&entry, "name", &raw.name);

        let group = match Regex::new(raw.group.get_ref()) {
            Ok(re) => Some(re),
            Err(error) => {
                self.report(
                    raw.group.span(),
                    Problem::BadHandlerRegex {
                        handler: name.clone(),
                        pattern: raw.group.get_ref().clone(),
                        error: Box::new(error),
                    },
                );
                None
            }
        };
        let guarantee = match raw.delivery.as_ref().map(|d| d.get_ref().as_str()) {
            None | Some("at-least-once") => Guarantee::AtLeastOnce,
            Some("at-most-once") => Guarantee::AtMostOnce,
            Some(other) => {
                self.report(
                    raw.delivery.as_ref().map_or(0..0, Spanned::span),
                    Problem::BadGuarantee {
                        entry: entry.clone(),
                        value: other.to_owned(),
                    },
                );
                Guarantee::AtLeastOnce
            }
        };
        let retry = RetryPolicy {
            max_attempts: self.positive(
                &entry,
                "max_attempts",
                raw.max_attempts.as_ref(),
                defaults.max_attempts,
            ),
            backoff: self.duration(&entry, "backoff", raw.backoff.as_ref(), defaults.backoff),
            max_backoff: defaults.max_backoff,
        };
        let concurrency = match &raw.concurrency {
            None => 1,
            Some(n) if (1..=MAX_CONCURRENCY).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.report(
                    n.span(),
                    Problem::OutOfRange {
                        entry: entry.clone(),
                        field: "concurrency",
                        expected: "a whole number from 1 to 256",
                        value: *n.get_ref(),
                    },
                );
                1
            }
        };
        let rate = raw.rate.as_ref().and_then(|r| match Rate::parse(r.get_ref()) {
            Some(rate) => Some(rate),
            None => {
                self.bad_value(
                    &entry,
                    "rate",
                    r.span(),
                    format!(
                        "{:?} is not a rate: write calls per second, minute or hour, like \"10/s\", \"600/m\", \"5/h\"",
                        r.get_ref()
                    ),
                );
                None
            }
        });
        let kind = self.handler_kind(&name, &entry, raw, registry)?;
        Some(HandlerConfig {
            name,
            group: group?,
            kind,
            guarantee,
            retry,
            concurrency,
            rate,
        })
    }

    /// Reports the fields given that `kind` does not take.
    fn unused_fields(&mut self, entry: &str, kind: &str, takes: &[&str], raw: &RawHandler) {
        let fields: [(&'static str, Span); 24] = [
            ("path", span(&raw.path)),
            ("command", span(&raw.command)),
            ("env", span(&raw.env)),
            ("mode", span(&raw.mode)),
            ("function", span(&raw.function)),
            ("timeout", span(&raw.timeout)),
            ("url", span(&raw.url)),
            ("headers", span(&raw.headers)),
            ("header_env", span(&raw.header_env)),
            ("signing_secret_env", span(&raw.signing_secret_env)),
            ("connect_timeout", span(&raw.connect_timeout)),
            ("templates", span(&raw.templates)),
            ("from", span(&raw.from)),
            ("to", span(&raw.to)),
            ("cc", span(&raw.cc)),
            ("bcc", span(&raw.bcc)),
            ("reply_to", span(&raw.reply_to)),
            ("subject", span(&raw.subject)),
            ("body", span(&raw.body)),
            ("transport", span(&raw.transport)),
            ("outbox", span(&raw.outbox)),
            ("smtp_host", span(&raw.smtp_host)),
            ("smtp_port", span(&raw.smtp_port)),
            ("smtp_security", span(&raw.smtp_security)),
        ];
        let more: [(&'static str, Span); 12] = [
            (
                "smtp_allow_plaintext_auth",
                span(&raw.smtp_allow_plaintext_auth),
            ),
            (
                "spark_mail_from_records",
                span(&raw.spark_mail_from_records),
            ),
            ("method", span(&raw.method)),
            ("content_type", span(&raw.content_type)),
            ("strict_templates", span(&raw.strict_templates)),
            ("html", span(&raw.html)),
            ("smtp_user", span(&raw.smtp_user)),
            ("smtp_password_env", span(&raw.smtp_password_env)),
            ("smtp_pool", span(&raw.smtp_pool)),
            ("smtp_ca_file", span(&raw.smtp_ca_file)),
            ("concurrency", span(&raw.concurrency)),
            ("rate", span(&raw.rate)),
        ];
        for (field, span) in fields.into_iter().chain(more) {
            if !takes.contains(&field) {
                self.unused(entry, field, span, &format!("to kind {kind}"));
            }
        }
    }

    /// Reports `field` (when set: `span`) as meaning nothing `why`.
    fn unused(&mut self, entry: &str, field: &'static str, span: Span, why: &str) {
        if let Some(span) = span {
            self.report(
                span,
                Problem::UnusedField {
                    entry: entry.to_owned(),
                    field,
                    why: why.to_owned(),
                },
            );
        }
    }

    fn missing(&mut self, entry: &str, kind: &str, field: &'static str, span: Range<usize>) {
        self.report(
            span,
            Problem::MissingField {
                entry: entry.to_owned(),
                field,
                why: format!(" for kind {kind}"),
            },
        );
    }

    /// The secret in environment variable `var`, named by `field`. One
    /// that is not set is noted, not reported: only delivering needs it.
    fn env(&mut self, entry: &str, field: &'static str, var: &Spanned<String>) -> Secret {
        let secret = Secret::from_env(var.get_ref());
        if !secret.is_set() {
            let at = self.at(var.span());
            self.missing_secrets.push(super::MissingSecret {
                at,
                entry: entry.to_owned(),
                field: field.to_owned(),
                var: var.get_ref().clone(),
            });
        }
        if !self.withheld_env.contains(&secret.var) {
            self.withheld_env.push(secret.var.clone());
        }
        secret
    }

    /// A file mode written like `"0640"` (default 0600). The owner must be
    /// able to read and write.
    fn mode(&mut self, entry: &str, raw: &RawHandler) -> u32 {
        let Some(mode) = &raw.mode else {
            return crate::files::PRIVATE;
        };
        match u32::from_str_radix(mode.get_ref().trim(), 8) {
            // Event data that others could rewrite is not spark's to make.
            Ok(m) if m <= 0o777 && m & 0o022 != 0 => {
                self.bad_value(
                    entry,
                    "mode",
                    mode.span(),
                    format!(
                        "{:?} lets the group or others write the files, which hold event data: \
                         give write to the owner only (like \"0640\")",
                        mode.get_ref()
                    ),
                );
                crate::files::PRIVATE
            }
            Ok(m) if m <= 0o777 && m & 0o600 == 0o600 => m,
            _ => {
                self.bad_value(
                    entry,
                    "mode",
                    mode.span(),
                    format!(
                        "{:?} is not a file mode spark can use: write it in octal, like \"0640\", with read and write for the owner",
                        mode.get_ref()
                    ),
                );
                crate::files::PRIVATE
            }
        }
    }

    pub(super) fn bad_value(
        &mut self,
        entry: &str,
        field: &'static str,
        span: Range<usize>,
        message: String,
    ) {
        self.report(
            span,
            Problem::BadValue {
                entry: entry.to_owned(),
                field,
                message,
            },
        );
    }

    fn handler_kind(
        &mut self,
        name: &str,
        entry: &str,
        raw: RawHandler,
        registry: &Registry,
    ) -> Option<HandlerKind> {
        let kind = raw.kind.get_ref().clone();
        let kind_span = raw.kind.span();
        let takes: &[&str] = match kind.as_str() {
            "jsonl" => &["path", "mode"],
            "command" => &["command", "timeout", "env", "concurrency", "rate"],
            "function" => &["function", "concurrency", "rate"],
            "webhook" => &[
                "url",
                "method",
                "body",
                "content_type",
                "strict_templates",
                "headers",
                "header_env",
                "signing_secret_env",
                "timeout",
                "connect_timeout",
                "concurrency",
                "rate",
            ],
            "mail" => &[
                "templates",
                "html",
                "strict_templates",
                "from",
                "to",
                "cc",
                "bcc",
                "reply_to",
                "subject",
                "body",
                "transport",
                "outbox",
                "smtp_host",
                "smtp_port",
                "smtp_security",
                "smtp_user",
                "smtp_password_env",
                "smtp_pool",
                "smtp_ca_file",
                "smtp_allow_plaintext_auth",
                "spark_mail_from_records",
                "timeout",
                "mode",
                "concurrency",
                "rate",
            ],
            _ => {
                self.report(
                    kind_span,
                    Problem::UnknownHandlerKind {
                        handler: name.to_owned(),
                        kind,
                    },
                );
                return None;
            }
        };
        self.unused_fields(entry, &kind, takes, &raw);
        match kind.as_str() {
            "jsonl" => self.jsonl(entry, raw),
            "command" => self.command(entry, raw),
            "function" => self.function(name, entry, raw, registry),
            "webhook" => self.webhook(entry, raw),
            _ => self
                .mail(entry, raw)
                .map(|m| HandlerKind::Mail(Box::new(m))),
        }
    }

    fn jsonl(&mut self, entry: &str, raw: RawHandler) -> Option<HandlerKind> {
        let mode = self.mode(entry, &raw);
        let Some(path) = raw.path else {
            self.missing(entry, "jsonl", "path", raw.kind.span());
            return None;
        };
        self.non_empty(entry, "path", &path);
        Some(HandlerKind::Jsonl {
            path: self.resolve(path.get_ref()),
            mode,
        })
    }

    /// The handler's `timeout` (default 30 s).
    fn timeout(&mut self, entry: &str, raw: &RawHandler) -> Duration {
        self.duration(
            entry,
            "timeout",
            raw.timeout.as_ref(),
            Duration::from_secs(30),
        )
    }

    fn command(&mut self, entry: &str, raw: RawHandler) -> Option<HandlerKind> {
        let timeout = self.timeout(entry, &raw);
        let env: Vec<(String, String)> = match raw.env {
            None => Vec::new(),
            Some(env) => {
                let span = env.span();
                let env = env.into_inner();
                if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
                    self.bad_value(
                        entry,
                        "env",
                        span,
                        format!("{bad:?} is not an environment variable name"),
                    );
                }
                env.into_iter().collect()
            }
        };
        let Some(argv) = raw.command else {
            self.missing(entry, "command", "command", raw.kind.span());
            return None;
        };
        if argv.get_ref().first().is_none_or(|p| p.is_empty()) {
            self.report(
                argv.span(),
                Problem::Empty {
                    entry: entry.to_owned(),
                    field: "command",
                },
            );
            return None;
        }
        let mut argv = argv.into_inner();
        // A program named by a relative path is relative to the config.
        if argv[0].contains('/') && Path::new(&argv[0]).is_relative() {
            argv[0] = self.resolve(&argv[0]).to_string_lossy().into_owned();
        }
        Some(HandlerKind::Command {
            argv,
            timeout,
            workdir: if self.dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                self.dir.clone()
            },
            env,
        })
    }

    fn function(
        &mut self,
        name: &str,
        entry: &str,
        raw: RawHandler,
        registry: &Registry,
    ) -> Option<HandlerKind> {
        let Some(function) = raw.function else {
            self.missing(entry, "function", "function", raw.kind.span());
            return None;
        };
        if registry.handler(function.get_ref()).is_none() {
            self.report(
                function.span(),
                Problem::UnknownHandlerFunction {
                    handler: name.to_owned(),
                    function: function.get_ref().clone(),
                    known: registry.handler_names().join(", "),
                },
            );
            return None;
        }
        Some(HandlerKind::Function {
            function: function.into_inner(),
        })
    }

    fn webhook(&mut self, entry: &str, raw: RawHandler) -> Option<HandlerKind> {
        let timeout = self.timeout(entry, &raw);
        let connect_timeout = self.duration(
            entry,
            "connect_timeout",
            raw.connect_timeout.as_ref(),
            Duration::from_secs(10),
        );
        let Some(url) = raw.url else {
            self.missing(entry, "webhook", "url", raw.kind.span());
            return None;
        };
        crate::redact::register_url(url.get_ref());
        let lower = url.get_ref().to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            self.bad_value(
                entry,
                "url",
                url.span(),
                format!("{:?} is not an http:// or https:// URL", url.get_ref()),
            );
        } else if let Some(at) = url.get_ref().find(['{']) {
            // A templated URL: the scheme and the host stay literal.
            let literal = &url.get_ref()[..at];
            let after_scheme = literal.split_once("://").map_or("", |(_, rest)| rest);
            if !after_scheme.contains('/') {
                self.bad_value(
                    entry,
                    "url",
                    url.span(),
                    format!(
                        "{:?}: a template may fill in the path and the query, not the scheme or the host (write them literally, up to the first `/`)",
                        url.get_ref()
                    ),
                );
            }
        }
        let method = match raw
            .method
            .as_ref()
            .map(|m| m.get_ref().to_ascii_uppercase())
        {
            None => HttpMethod::Post,
            Some(m) if m == "POST" => HttpMethod::Post,
            Some(m) if m == "PUT" => HttpMethod::Put,
            Some(m) if m == "PATCH" => HttpMethod::Patch,
            Some(other) => {
                let span = raw.method.as_ref().map_or(0..0, Spanned::span);
                self.bad_value(
                    entry,
                    "method",
                    span,
                    format!("{other:?}: expected \"POST\", \"PUT\" or \"PATCH\""),
                );
                HttpMethod::Post
            }
        };
        let content_type = match &raw.content_type {
            None => "application/json".to_owned(),
            Some(t) => {
                let text = t.get_ref().trim();
                if text.is_empty() || text.chars().any(char::is_control) || !text.contains('/') {
                    self.bad_value(
                        entry,
                        "content_type",
                        t.span(),
                        format!(
                            "{:?} is not a media type (like \"application/json\")",
                            t.get_ref()
                        ),
                    );
                }
                text.to_owned()
            }
        };
        if raw.content_type.is_some() && raw.body.is_none() {
            let span = raw.content_type.as_ref().map_or(0..0, Spanned::span);
            self.bad_value(
                entry,
                "content_type",
                span,
                "without `body` the event is sent as JSON; set `body` to send something else"
                    .into(),
            );
        }
        if let Some(body) = &raw.body
            && BodyKind::of(&content_type) == BodyKind::Other
            && body.get_ref().contains('{')
        {
            let span = raw.content_type.as_ref().map_or(body.span(), Spanned::span);
            self.bad_value(
                entry,
                "content_type",
                span,
                format!(
                    "{content_type:?}: spark escapes values rendered into a body only for JSON types, \
                     application/x-www-form-urlencoded and text/plain; a body of another type \
                     must not be a template"
                ),
            );
        }
        let mut headers: Vec<(String, Secret)> = Vec::new();
        let mut templates: Vec<(String, String)> = Vec::new();
        for (field, names) in [
            ("headers", raw.headers.as_ref()),
            ("header_env", raw.header_env.as_ref()),
        ] {
            let Some(names) = names else { continue };
            for name in names.get_ref().keys() {
                if !is_header_name(name) {
                    self.bad_value(
                        entry,
                        field,
                        names.span(),
                        format!(
                            "{:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
                            crate::escape::escape(name)
                        ),
                    );
                }
            }
        }
        if let Some(literal) = raw.headers {
            for (name, value) in literal.into_inner() {
                templates.push((format!("header `{name}`"), value.clone()));
                headers.push((name, Secret::literal(value)));
            }
        }
        if let Some(from_env) = raw.header_env {
            let span = from_env.span();
            for (name, var) in from_env.into_inner() {
                let var = Spanned::new(span.clone(), var);
                let secret = self.env(entry, "header_env", &var);
                headers.push((name, secret));
            }
        }
        if let Some(body) = &raw.body {
            templates.push(("`body`".into(), body.get_ref().clone()));
        }
        if url.get_ref().contains('{') {
            templates.push(("`url`".into(), url.get_ref().clone()));
        }
        self.check_templates(entry, raw.kind.span(), &templates);
        let signing_secret = raw
            .signing_secret_env
            .as_ref()
            .map(|var| self.env(entry, "signing_secret_env", var));
        Some(HandlerKind::Webhook(Box::new(WebhookConfig {
            url: url.into_inner(),
            method,
            body: raw.body.map(Spanned::into_inner),
            content_type,
            headers,
            signing_secret,
            timeout,
            connect_timeout,
            strict_templates: raw.strict_templates.is_some_and(|s| *s.get_ref()),
        })))
    }

    fn mail(&mut self, entry: &str, raw: RawHandler) -> Option<MailConfig> {
        let transport = self.mail_transport(entry, &raw);
        let strict_templates = raw.strict_templates.as_ref().is_some_and(|s| *s.get_ref());
        let templates_folder = match raw.templates.as_ref().map(Spanned::get_ref) {
            Some(RawTemplates::Folder(dir)) => Some(dir.clone()),
            _ => None,
        };
        let (templates, html_templates) = match raw.templates {
            None => (BTreeMap::new(), BTreeMap::new()),
            Some(t) => {
                let span = t.span();
                match t.into_inner() {
                    RawTemplates::Inline(map) => {
                        let (mut text, mut html) = (BTreeMap::new(), BTreeMap::new());
                        for (name, source) in map {
                            match name.strip_suffix(".html") {
                                Some(group) => {
                                    html.insert(
                                        group.to_owned(),
                                        (format!("{name} (inline)"), source),
                                    );
                                }
                                None => {
                                    let group =
                                        name.strip_suffix(".txt").unwrap_or(&name).to_owned();
                                    text.insert(group, (format!("{name} (inline)"), source));
                                }
                            }
                        }
                        (text, html)
                    }
                    RawTemplates::Folder(dir) => {
                        let dir = self.resolve(&dir);
                        match read_template_folder(&dir) {
                            Ok(maps) => maps,
                            Err(message) => {
                                self.bad_value(entry, "templates", span, message);
                                (BTreeMap::new(), BTreeMap::new())
                            }
                        }
                    }
                }
            }
        };
        // Every template must parse and name only filters and tests that
        // exist: check now rather than at the first mail.
        let defaults = [
            ("from", raw.from.as_ref().map(|s| s.get_ref().clone())),
            ("subject", raw.subject.as_ref().map(|s| s.get_ref().clone())),
            ("body", raw.body.as_ref().map(|s| s.get_ref().clone())),
            ("html", raw.html.as_ref().map(|s| s.get_ref().clone())),
        ];
        let addresses = |v: &Option<Spanned<OneOrMany>>| {
            v.as_ref()
                .map(|s| s.get_ref().clone().into_vec())
                .unwrap_or_default()
        };
        let (to, cc, bcc, reply_to) = (
            addresses(&raw.to),
            addresses(&raw.cc),
            addresses(&raw.bcc),
            addresses(&raw.reply_to),
        );
        let mut sources: Vec<(String, &str)> = templates
            .values()
            .chain(html_templates.values())
            .map(|(name, source)| (name.clone(), source.as_str()))
            .collect();
        for (field, value) in &defaults {
            if let Some(v) = value {
                sources.push((format!("`{field}`"), v.as_str()));
            }
        }
        for (field, list) in [
            ("to", &to),
            ("cc", &cc),
            ("bcc", &bcc),
            ("reply_to", &reply_to),
        ] {
            for v in list {
                sources.push((format!("`{field}`"), v.as_str()));
            }
        }
        self.check_templates(entry, raw.kind.span(), &sources);
        let spark_mail_from_records = match &raw.spark_mail_from_records {
            None => Vec::new(),
            Some(keys) => {
                for key in keys.get_ref() {
                    if !crate::handlers::mail::SPARK_MAIL_KEYS.contains(&key.as_str()) {
                        self.bad_value(
                            entry,
                            "spark_mail_from_records",
                            keys.span(),
                            format!(
                                "{key:?} is not a spark_mail key (they are {})",
                                crate::handlers::mail::SPARK_MAIL_KEYS.join(", ")
                            ),
                        );
                    }
                }
                keys.get_ref().clone()
            }
        };

        let transport = transport?;
        let [(_, from), (_, subject), (_, body), (_, html)] = defaults;
        Some(MailConfig {
            templates,
            html_templates,
            html,
            strict_templates,
            templates_folder,
            from,
            subject,
            body,
            to,
            cc,
            bcc,
            reply_to,
            transport,
            spark_mail_from_records,
            record_groups: Default::default(),
        })
    }

    /// Reports each template (name, source) that does not parse or names
    /// a filter or test that does not exist.
    fn check_templates<S: AsRef<str>>(
        &mut self,
        entry: &str,
        span: Range<usize>,
        sources: &[(String, S)],
    ) {
        let env = crate::templates::environment(false);
        for (name, source) in sources {
            if let Err(error) = crate::templates::check(&env, source.as_ref()) {
                self.report(
                    span.clone(),
                    Problem::BadTemplate {
                        entry: entry.to_owned(),
                        name: name.clone(),
                        error,
                    },
                );
            }
        }
    }

    fn mail_transport(&mut self, entry: &str, raw: &RawHandler) -> Option<MailTransport> {
        let transport = match (&raw.transport, &raw.outbox, &raw.smtp_host) {
            (Some(t), _, _) => t.get_ref().clone(),
            (None, Some(_), None) => "outbox".to_owned(),
            (None, None, Some(_)) => "smtp".to_owned(),
            _ => {
                self.missing(entry, "mail", "transport", raw.kind.span());
                return None;
            }
        };
        let timeout = self.timeout(entry, raw);
        match transport.as_str() {
            "outbox" => {
                let Some(dir) = &raw.outbox else {
                    self.missing(
                        entry,
                        "mail with transport outbox",
                        "outbox",
                        raw.kind.span(),
                    );
                    return None;
                };
                // An SMTP setting beside an outbox is a slip that would
                // leave every mail in a folder: said, not ignored.
                for (field, span) in [
                    ("smtp_host", span(&raw.smtp_host)),
                    ("smtp_port", span(&raw.smtp_port)),
                    ("smtp_security", span(&raw.smtp_security)),
                    ("smtp_user", span(&raw.smtp_user)),
                    ("smtp_password_env", span(&raw.smtp_password_env)),
                    ("smtp_pool", span(&raw.smtp_pool)),
                    ("smtp_ca_file", span(&raw.smtp_ca_file)),
                ] {
                    self.unused(entry, field, span, "to transport outbox (it sends nothing)");
                }
                Some(MailTransport::Outbox {
                    dir: self.resolve(dir.get_ref()),
                    mode: self.mode(entry, raw),
                })
            }
            "smtp" => {
                for (field, span) in [("mode", span(&raw.mode)), ("outbox", span(&raw.outbox))] {
                    self.unused(entry, field, span, "to transport smtp (it writes no files)");
                }
                let Some(host) = &raw.smtp_host else {
                    self.missing(
                        entry,
                        "mail with transport smtp",
                        "smtp_host",
                        raw.kind.span(),
                    );
                    return None;
                };
                let security = match raw.smtp_security.as_ref().map(|s| s.get_ref().as_str()) {
                    None | Some("starttls") => SmtpSecurity::StartTls,
                    Some("tls") => SmtpSecurity::Tls,
                    Some("none") => SmtpSecurity::None,
                    Some(other) => {
                        let span = raw.smtp_security.as_ref().map_or(0..0, Spanned::span);
                        self.bad_value(
                            entry,
                            "smtp_security",
                            span,
                            format!("{other:?}: expected \"starttls\", \"tls\" or \"none\""),
                        );
                        SmtpSecurity::StartTls
                    }
                };
                let default_port = match security {
                    SmtpSecurity::StartTls => 587,
                    SmtpSecurity::Tls => 465,
                    SmtpSecurity::None => 25,
                };
                let port = match &raw.smtp_port {
                    None => default_port,
                    Some(p) => u16::try_from(*p.get_ref()).unwrap_or_else(|_| {
                        self.bad_value(
                            entry,
                            "smtp_port",
                            p.span(),
                            format!("{} is not a port number", p.get_ref()),
                        );
                        default_port
                    }),
                };
                let password = raw
                    .smtp_password_env
                    .as_ref()
                    .map(|var| self.env(entry, "smtp_password_env", var));
                let allow_plaintext = raw
                    .smtp_allow_plaintext_auth
                    .as_ref()
                    .is_some_and(|a| *a.get_ref());
                if security == SmtpSecurity::None
                    && (raw.smtp_user.is_some() || password.is_some())
                    && !is_loopback_host(host.get_ref())
                    && !allow_plaintext
                {
                    let span = raw
                        .smtp_security
                        .as_ref()
                        .map_or(host.span(), Spanned::span);
                    self.bad_value(
                        entry,
                        "smtp_security",
                        span,
                        format!(
                            "\"none\" would send the SMTP credentials in the clear to {}: use \
                             \"starttls\" or \"tls\", or set smtp_allow_plaintext_auth = true \
                             for a relay you trust on this network",
                            host.get_ref()
                        ),
                    );
                }
                let ca = raw
                    .smtp_ca_file
                    .as_ref()
                    .and_then(|file| self.ca_file(entry, file, security));
                Some(MailTransport::Smtp(SmtpServer {
                    host: host.get_ref().clone(),
                    port,
                    security,
                    user: raw.smtp_user.as_ref().map(|u| u.get_ref().clone()),
                    password,
                    timeout,
                    pool: raw.smtp_pool.as_ref().is_none_or(|p| *p.get_ref()),
                    ca,
                }))
            }
            other => {
                let span = raw.transport.as_ref().map_or(0..0, Spanned::span);
                self.bad_value(
                    entry,
                    "transport",
                    span,
                    format!("{other:?}: expected \"smtp\" or \"outbox\""),
                );
                None
            }
        }
    }
}

/// Whether `host` is this machine (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Validator<'_> {
    /// Reads `smtp_ca_file`: a readable PEM file with at least one
    /// certificate, for a handler that uses TLS.
    fn ca_file(
        &mut self,
        entry: &str,
        file: &Spanned<String>,
        security: SmtpSecurity,
    ) -> Option<CaFile> {
        let path = self.resolve(file.get_ref());
        let problem = if security == SmtpSecurity::None {
            Some("smtp_security = \"none\" uses no TLS: set \"starttls\" or \"tls\"".to_owned())
        } else {
            match std::fs::read(&path) {
                Err(e) => Some(format!("cannot read {}: {e}", path.display())),
                Ok(pem) => {
                    use rustls_pki_types::CertificateDer;
                    use rustls_pki_types::pem::PemObject;
                    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
                    match certs {
                        Ok(certs) if !certs.is_empty() => {
                            return Some(CaFile { path, pem });
                        }
                        Ok(_) => Some(format!("{} holds no PEM certificate", path.display())),
                        Err(e) => Some(format!("{}: not PEM certificates ({e})", path.display())),
                    }
                }
            }
        };
        if let Some(problem) = problem {
            self.bad_value(entry, "smtp_ca_file", file.span(), problem);
        }
        None
    }
}

/// The templates of a folder: `GROUP.txt` (text) and `GROUP.html` (HTML),
/// each group -> (file path, source).
type TemplateMap = BTreeMap<String, (String, String)>;

fn read_template_folder(dir: &Path) -> Result<(TemplateMap, TemplateMap), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read folder {}: {e}", dir.display()))?;
    let (mut text, mut html) = (BTreeMap::new(), BTreeMap::new());
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read folder {}: {e}", dir.display()))?
            .path();
        let into = match path.extension().and_then(|e| e.to_str()) {
            Some("txt") => &mut text,
            Some("html") => &mut html,
            _ => continue,
        };
        let Some(group) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let source = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        into.insert(group.to_owned(), (path.display().to_string(), source));
    }
    Ok((text, html))
}
