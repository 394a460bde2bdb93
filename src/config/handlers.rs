//! Handlers in the config: what every handler has (name, group, delivery,
//! retry, concurrency, rate), and its kind's options handed to the kind
//! (`crate::handlers::KINDS`), which reads them into its own struct: a
//! field its struct lacks is reported here, as meaning nothing to that
//! kind (or to any), at its line.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::raw::RawHandler;
use super::{Problem, RetryPolicy, Validator};
use crate::handlers::kind::{Checks, Secret, Span};
use crate::handlers::{HandlerKind, KINDS, Kind, kind_named};
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

/// The most calls a handler may have in flight.
pub const MAX_CONCURRENCY: i64 = 256;

impl Validator<'_> {
    pub(super) fn handler(
        &mut self,
        raw: RawHandler,
        options: Spanned<DeValue<'_>>,
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
        let kind = self.handler_kind(&name, &entry, &raw, options, registry)?;
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

    /// The kind's options, read by the kind: a field it does not take is
    /// reported (another kind's, or nobody's), then the rest is its to read.
    fn handler_kind(
        &mut self,
        name: &str,
        entry: &str,
        raw: &RawHandler,
        options: Spanned<DeValue<'_>>,
        registry: &Registry,
    ) -> Option<HandlerKind> {
        let Some(kind) = kind_named(raw.kind.get_ref()) else {
            self.report(
                raw.kind.span(),
                Problem::UnknownHandlerKind {
                    handler: name.to_owned(),
                    kind: raw.kind.get_ref().clone(),
                },
            );
            return None;
        };
        if !kind.per_event {
            for (field, span) in [
                ("concurrency", raw.concurrency.as_ref().map(Spanned::span)),
                ("rate", raw.rate.as_ref().map(Spanned::span)),
            ] {
                self.unused(
                    entry,
                    field,
                    span,
                    &format!(
                        "to kind {} (it takes whole deliveries, not events)",
                        kind.name
                    ),
                );
            }
        }
        let options = self.kind_options(entry, kind, options);
        let mut checks = KindChecks {
            v: self,
            entry,
            kind_span: raw.kind.span(),
            registry,
        };
        (kind.config)(&mut checks, options)
    }

    /// `options` less the fields `kind` does not take, each reported.
    fn kind_options<'a>(
        &mut self,
        entry: &str,
        kind: &Kind,
        options: Spanned<DeValue<'a>>,
    ) -> Spanned<DeValue<'a>> {
        let span = options.span();
        let DeValue::Table(fields) = options.into_inner() else {
            return Spanned::new(span, DeValue::Table(DeTable::new()));
        };
        let takes = (kind.fields)();
        let mut kept = DeTable::new();
        for (key, value) in fields {
            let field = key.get_ref().as_ref();
            if takes.contains(&field) {
                kept.insert(key, value);
                continue;
            }
            // Another kind's field: named as the kind's own list names it.
            match KINDS
                .iter()
                .flat_map(|k| (k.fields)().iter())
                .find(|f| **f == field)
            {
                Some(other) => self.unused(
                    entry,
                    other,
                    Some(key.span()),
                    &format!("to kind {}", kind.name),
                ),
                None => self.report(
                    key.span(),
                    Problem::UnknownField {
                        entry: entry.to_owned(),
                        field: field.to_owned(),
                        kind: kind.name,
                        expected: takes.join(", "),
                    },
                ),
            }
        }
        Spanned::new(span, DeValue::Table(kept))
    }

    /// Reports `field` (when set: `span`) as meaning nothing `why`.
    fn unused(&mut self, entry: &str, field: &'static str, span: Option<Range<usize>>, why: &str) {
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
}

/// The validator as one handler's kind sees it.
struct KindChecks<'v, 'a> {
    v: &'v mut Validator<'a>,
    entry: &'v str,
    /// Where the handler's `kind` is (a missing field is reported there).
    kind_span: Span,
    registry: &'v Registry,
}

impl Checks for KindChecks<'_, '_> {
    fn bad_value(&mut self, field: &'static str, span: Span, message: String) {
        self.v.bad_value(self.entry, field, span, message);
    }

    fn missing(&mut self, field: &'static str, what: &str) {
        self.v.report(
            self.kind_span.clone(),
            Problem::MissingField {
                entry: self.entry.to_owned(),
                field,
                why: format!(" for kind {what}"),
            },
        );
    }

    fn unused(&mut self, field: &'static str, span: Option<Span>, why: &str) {
        self.v.unused(self.entry, field, span, why);
    }

    fn empty(&mut self, field: &'static str, span: Span) {
        self.v.report(
            span,
            Problem::Empty {
                entry: self.entry.to_owned(),
                field,
            },
        );
    }

    fn bad_template(&mut self, name: &str, error: String) {
        self.v.report(
            self.kind_span.clone(),
            Problem::BadTemplate {
                entry: self.entry.to_owned(),
                name: name.to_owned(),
                error,
            },
        );
    }

    fn unknown_function(&mut self, span: Span, function: &str) {
        let handler = self
            .entry
            .strip_prefix("handler `")
            .and_then(|e| e.strip_suffix('`'))
            .unwrap_or(self.entry)
            .to_owned();
        self.v.report(
            span,
            Problem::UnknownHandlerFunction {
                handler,
                function: function.to_owned(),
                known: self.registry.handler_names().join(", "),
            },
        );
    }

    fn syntax(&mut self, error: toml::de::Error) {
        let span = error.span().unwrap_or_else(|| self.kind_span.clone());
        self.v.report(
            span,
            Problem::BadOption {
                entry: self.entry.to_owned(),
                message: error.message().trim_end().to_owned(),
            },
        );
    }

    fn duration(
        &mut self,
        field: &'static str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        self.v.duration(self.entry, field, value, default)
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.v.resolve(path)
    }

    fn dir(&self) -> PathBuf {
        if self.v.dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            self.v.dir.clone()
        }
    }

    fn secret(&mut self, field: &'static str, var: &Spanned<String>) -> Secret {
        self.v.env(self.entry, field, var)
    }

    fn registry(&self) -> &Registry {
        self.registry
    }
}

impl Validator<'_> {
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
}
