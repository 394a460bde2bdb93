//! Compiled-in sources and handlers, registered by name so that a config can
//! refer to them (`function = "challenge_events"`), with lookups that list
//! what is known when a name is wrong.
//!
//! Not here: declarative generators and handler kinds configured in TOML.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use jiff::civil::Date;

use crate::event::Event;
use crate::records::{Record, RecordError};

/// What a source function knows besides the record.
#[derive(Debug, Clone)]
pub struct SourceCtx {
    /// The date sources treat as "today" (`--as-of`, default the local date).
    pub today: Date,
    /// The moment sources treat as "now" (`--as-of`, default the clock).
    pub now: jiff::Timestamp,
}

impl SourceCtx {
    /// A run on `today`, now being that date at this time of day (local).
    pub fn on(today: Date) -> SourceCtx {
        let now = jiff::ZonedDateTime::now();
        let now = today
            .to_datetime(now.time())
            .to_zoned_datetime(now.time_zone().clone())
            .map_or_else(|_| now.timestamp(), |z| z.timestamp());
        SourceCtx { today, now }
    }
}

/// The error a function handler returns; its text is recorded with the
/// failed delivery.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

type SourceFnBox = dyn Fn(&Record, &SourceCtx) -> Result<Vec<Event>, RecordError> + Send + Sync;
type HandlerFnBox = dyn Fn(&Event) -> Result<(), HandlerError> + Send + Sync;

/// A compiled-in source: a function from one record to zero or more events,
/// with the columns it reads and the groups it emits (for checks and listings).
#[derive(Clone)]
pub struct SourceFunction {
    pub name: String,
    pub reads: Vec<String>,
    pub emits: Vec<String>,
    func: Arc<SourceFnBox>,
}

impl SourceFunction {
    /// Declares the columns the function reads; configs are checked against them.
    pub fn reads<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, columns: I) -> &mut Self {
        self.reads = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Declares the groups the function may emit.
    pub fn emits<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, groups: I) -> &mut Self {
        self.emits = groups.into_iter().map(Into::into).collect();
        self
    }

    /// Runs the function on one record. A panic in the function is caught
    /// and reported like an unreadable record.
    pub fn call(&self, record: &Record, ctx: &SourceCtx) -> Result<Vec<Event>, RecordError> {
        crate::panics::catch(|| (self.func)(record, ctx)).unwrap_or_else(|msg| {
            Err(RecordError {
                column: String::new(),
                problem: format!("source function `{}` panicked: {msg}", self.name),
            })
        })
    }
}

/// A compiled-in handler: called once per event delivered to it. An `Err`
/// makes the delivery fail (it is kept and retried).
#[derive(Clone)]
pub struct HandlerFunction {
    pub name: String,
    func: Arc<HandlerFnBox>,
}

impl HandlerFunction {
    pub fn call(&self, event: &Event) -> Result<(), HandlerError> {
        (self.func)(event)
    }
}

/// The named compiled-in sources and handlers a binary offers.
#[derive(Clone, Default)]
pub struct Registry {
    sources: BTreeMap<String, SourceFunction>,
    handlers: BTreeMap<String, HandlerFunction>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers a source function under `name` (replacing one of that name).
    pub fn add_source<F>(&mut self, name: &str, func: F) -> &mut SourceFunction
    where
        F: Fn(&Record, &SourceCtx) -> Result<Vec<Event>, RecordError> + Send + Sync + 'static,
    {
        let entry = SourceFunction {
            name: name.to_owned(),
            reads: Vec::new(),
            emits: Vec::new(),
            func: Arc::new(func),
        };
        match self.sources.entry(name.to_owned()) {
            Entry::Occupied(mut slot) => {
                slot.insert(entry);
                slot.into_mut()
            }
            Entry::Vacant(slot) => slot.insert(entry),
        }
    }

    /// Registers a handler function under `name` (replacing one of that name).
    pub fn add_handler<F>(&mut self, name: &str, func: F) -> &mut Self
    where
        F: Fn(&Event) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        let entry = HandlerFunction {
            name: name.to_owned(),
            func: Arc::new(func),
        };
        self.handlers.insert(name.to_owned(), entry);
        self
    }

    pub fn source(&self, name: &str) -> Option<&SourceFunction> {
        self.sources.get(name)
    }

    pub fn handler(&self, name: &str) -> Option<&HandlerFunction> {
        self.handlers.get(name)
    }

    /// Names of the registered sources, sorted, for error messages.
    pub fn source_names(&self) -> Vec<&str> {
        self.sources.keys().map(String::as_str).collect()
    }

    /// Names of the registered handlers, sorted, for error messages.
    pub fn handler_names(&self) -> Vec<&str> {
        self.handlers.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_source_is_an_unreadable_record() {
        let mut registry = Registry::new();
        registry.add_source("boom", |_, _| panic!("kaboom"));
        let record = Record::from_map(serde_json::Map::new());
        let ctx = SourceCtx::on(jiff::civil::Date::constant(2026, 1, 1));
        let err = registry
            .source("boom")
            .unwrap()
            .call(&record, &ctx)
            .unwrap_err();
        assert!(err.to_string().contains("`boom` panicked: kaboom"), "{err}");
    }

    #[test]
    fn names_are_listed_sorted() {
        let registry = Registry::with_builtins();
        assert_eq!(registry.source_names(), ["challenge_events"]);
        assert_eq!(registry.handler_names(), ["log_event"]);
    }
}
