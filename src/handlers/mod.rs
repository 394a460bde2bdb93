//! Handler kinds: what receives an event. A kind is one file (`mail`, the
//! biggest, a folder): its options as a serde struct, what they become
//! (`HandlerKind`), and its sink. `KINDS` is the one table of kinds: the
//! config reads each handler's options through it; `HandlerKind`'s methods
//! answer for every kind what listings, checks and the delivery engine ask
//! (what it writes, where it delivers, its sink).
//!
//! A handler is a `Sink`: either called once per event (`Each`: command,
//! function, webhook, mail), each success recorded as soon as the call
//! returns, or a file that takes a whole delivery at once (`File`: jsonl),
//! made exactly-once with the store through the file's length and identity
//! recorded with the delivery.
//!
//! Not here: retries, recording outcomes (the delivery engine).

pub mod command;
pub mod function;
pub mod jsonl;
pub mod kind;
pub mod mail;
pub mod webhook;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::event::Event;
use crate::registry::Registry;
use crate::store::FileMark;

pub use kind::Secret;
pub use mail::{MailConfig, MailTransport, SmtpSecurity, SmtpServer, is_loopback_host};
pub use webhook::{BodyKind, HttpMethod, WebhookConfig};

/// A handler kind: its name in the config, the options it takes, and how
/// they become a `HandlerKind`.
pub struct Kind {
    pub name: &'static str,
    /// Called once per event, so that `concurrency` and `rate` apply (a
    /// file sink takes whole deliveries).
    pub per_event: bool,
    /// The options it takes: its `Options` struct's fields.
    pub fields: fn() -> &'static [&'static str],
    /// Its options, checked, as a `HandlerKind` (`None`: problems were
    /// reported).
    pub config: for<'a> fn(&mut dyn kind::Checks, Spanned<DeValue<'a>>) -> Option<HandlerKind>,
}

/// Every handler kind, in the order the docs list them.
pub const KINDS: &[Kind] = &[
    jsonl::KIND,
    command::KIND,
    function::KIND,
    webhook::KIND,
    mail::KIND,
];

/// The kind of that name.
pub fn kind_named(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The kinds' names, for messages: "jsonl, command, ...".
pub fn kind_names() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// A configured handler kind, with its options checked.
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

    /// Whether it writes a local file a whole delivery at a time (its
    /// deliveries belong to this host: another host's file is another
    /// file). The one rule, for the delivery engine and the operator's
    /// commands alike.
    pub fn is_file_sink(&self) -> bool {
        matches!(self, HandlerKind::Jsonl { .. })
    }

    /// Where it delivers, in a few words (`list-handlers`).
    pub fn target(&self) -> String {
        match self {
            HandlerKind::Jsonl { path, .. } => path.display().to_string(),
            HandlerKind::Command { argv, timeout, .. } => format!(
                "{} (timeout {})",
                argv.join(" "),
                humantime::format_duration(*timeout)
            ),
            HandlerKind::Function { function } => function.clone(),
            HandlerKind::Webhook(hook) => format!(
                "{} {} (timeout {})",
                hook.method,
                hook.url,
                humantime::format_duration(hook.timeout)
            ),
            HandlerKind::Mail(mail) => match &mail.transport {
                MailTransport::Outbox { dir, .. } => format!("outbox {}", dir.display()),
                MailTransport::Smtp(smtp) => format!("smtp {}:{}", smtp.host, smtp.port),
            },
        }
    }

    /// Its options as the config file writes them (`spark config`): every
    /// option set, paths absolute (`absolute`; a templates folder as
    /// `folder` writes it), secrets by the names of their variables.
    pub fn view(
        &self,
        v: &mut serde_json::Value,
        absolute: kind::Absolute<'_>,
        folder: &dyn Fn(&str) -> String,
    ) {
        match self {
            HandlerKind::Jsonl { path, mode } => jsonl::view(v, path, *mode, absolute),
            HandlerKind::Command {
                argv, timeout, env, ..
            } => command::view(v, argv, *timeout, env, absolute),
            HandlerKind::Function { function } => v["function"] = serde_json::json!(function),
            HandlerKind::Webhook(hook) => hook.view(v),
            HandlerKind::Mail(mail) => mail.view(v, absolute, folder),
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

/// An event on its way to a handler: the event, its context already as JSON,
/// and when it was recorded as seen.
#[derive(Debug, Clone, Copy)]
pub struct Dispatch<'a> {
    pub event: &'a Event,
    pub context_json: &'a str,
    pub seen_at: &'a str,
}

impl Dispatch<'_> {
    /// The event as one JSON object: `{"key", "group", "context", "seen_at"}`.
    /// This is what `jsonl` writes as a line and `command` gets on stdin.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.context_json.len() + 96);
        self.write_json(&mut out);
        out
    }

    /// Appends `to_json()` to `out`.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"key\":");
        push_json_str(out, &self.event.key);
        out.push_str(",\"group\":");
        push_json_str(out, &self.event.group);
        out.push_str(",\"context\":");
        out.push_str(self.context_json);
        out.push_str(",\"seen_at\":");
        push_json_str(out, self.seen_at);
        out.push('}');
    }
}

/// Appends `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    // Keys and groups rarely need escaping: copy those as they are.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    #[derive(Serialize)]
    struct S<'a>(&'a str);
    // Serializing a &str to JSON cannot fail.
    if let Ok(quoted) = serde_json::to_string(&S(s)) {
        out.push_str(&quoted);
    }
}

/// Why a call failed, and what that means for the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub error: String,
    pub retry: Retry,
}

/// When a failed call may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Later, on the handler's backoff (counts towards `max_attempts`).
    Later,
    /// After this long, as the receiver asked (HTTP 429 or 503 with
    /// `Retry-After`); not counted towards `max_attempts`.
    After(std::time::Duration),
    /// Never: it cannot work (an SMTP 5xx reply). The delivery is dead.
    Never,
}

impl Failed {
    /// A failure to try again later.
    pub fn later(error: impl Into<String>) -> Failed {
        Failed {
            error: error.into(),
            retry: Retry::Later,
        }
    }
}

impl From<String> for Failed {
    fn from(error: String) -> Failed {
        Failed::later(error)
    }
}

/// What one call did.
pub type Outcome = Result<(), Failed>;

/// Called once per event; `Err` is the failure recorded with the delivery.
/// Shared by the calls a handler has in flight at once (`concurrency`).
pub trait DeliverEach: Send + Sync {
    fn deliver(&self, dispatch: &Dispatch<'_>, attempt: u32) -> Outcome;
}

/// A file that takes whole deliveries and can be cut back to a length.
pub trait FileSink: Send {
    /// The file's current length (0 if it is new) and identity.
    fn position(&mut self) -> io::Result<FileMark>;
    /// Cuts the file back to `mark.offset`, if it is longer and still the
    /// file `mark` names; another file is an error, and nothing is cut.
    fn truncate_to(&mut self, mark: &FileMark) -> Result<(), CutError>;
    /// Appends the events and makes them durable (fsync) before returning.
    fn append_all(&mut self, events: &[Dispatch<'_>]) -> io::Result<()> {
        self.stage(events)?;
        self.write_staged()
    }
    /// Adds the events to what is staged: rendered, not written yet. The
    /// position (`position`) counts what is staged.
    fn stage(&mut self, events: &[Dispatch<'_>]) -> io::Result<()>;
    /// How many bytes are staged.
    fn staged(&self) -> usize;
    /// Writes what is staged with one write and makes it durable with one
    /// fsync (group commit). On an error nothing stays staged; what was
    /// written of it may be in the file.
    fn write_staged(&mut self) -> io::Result<()>;
}

/// Why a file sink did not cut its file back.
#[derive(Debug, thiserror::Error)]
pub enum CutError {
    /// The path names another file than the one the delivery wrote to:
    /// nothing of the delivery is in it, and nothing was cut.
    #[error("{0}")]
    OtherFile(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A configured handler, ready to deliver.
pub enum Sink {
    Each(std::sync::Arc<dyn DeliverEach>),
    File(Box<dyn FileSink>),
}

/// Builds the sink for a configured handler. `withheld` are the
/// environment variables command handlers do not inherit (secrets spark
/// read for the config).
pub fn build(
    name: &str,
    kind: &HandlerKind,
    concurrency: usize,
    registry: &Registry,
    withheld: &[String],
) -> Sink {
    match kind {
        HandlerKind::Jsonl { path, mode } => {
            Sink::File(Box::new(jsonl::JsonlSink::new(path.clone(), *mode)))
        }
        HandlerKind::Command {
            argv,
            timeout,
            workdir,
            env,
        } => Sink::Each(std::sync::Arc::new(command::CommandHandler::new(
            name,
            argv.clone(),
            *timeout,
            workdir.clone(),
            env.clone(),
            withheld.to_vec(),
        ))),
        HandlerKind::Function { function } => Sink::Each(std::sync::Arc::new(
            function::FunctionSink::new(function, registry.handler(function).cloned()),
        )),
        HandlerKind::Webhook(hook) => Sink::Each(std::sync::Arc::new(
            webhook::WebhookHandler::new((**hook).clone(), concurrency),
        )),
        HandlerKind::Mail(config) => Sink::Each(std::sync::Arc::new(mail::MailHandler::new(
            name,
            (**config).clone(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::event;

    #[test]
    fn json_strings_are_escaped_when_needed() {
        for s in [
            "plain_1",
            "quo\"te",
            "back\\slash",
            "new\nline",
            "tab\t",
            "é ü",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s, "{out}");
        }
    }

    #[test]
    fn dispatch_json_embeds_the_context() {
        let e = event("g\"x", 1, serde_json::Map::new());
        let d = Dispatch {
            event: &e,
            context_json: "{\"a\":1}",
            seen_at: "2026-01-01 00:00:00.000000",
        };
        let v: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(v["key"], "g\"x_1");
        assert_eq!(v["context"]["a"], 1);
    }
}
