//! spark turns database records into events and hands each new event to the
//! handlers that want it, exactly once per event key.
//!
//! It is a standalone successor of django-spark: sources map records to
//! events (`event(group, id, context)` builds the key `"{group}_{id}"`), a
//! store remembers every key ever seen, and handlers (jsonl files, commands,
//! webhooks, mail, compiled-in functions) receive each new event, with
//! retries when they fail. The compiled-in example source and handler are
//! in `builtins` (`Registry::with_builtins`).
//!
//! A binary with its own compiled-in sources and handlers is a few lines:
//!
//! ```no_run
//! use spark::{Registry, event};
//!
//! fn main() -> std::process::ExitCode {
//!     let mut registry = Registry::with_builtins();
//!     registry
//!         .add_source("signup_events", |record, _ctx| {
//!             let id = record.key_text("id")?;
//!             Ok(vec![event("user_signed_up", id, record.to_map())])
//!         })
//!         .reads(["id"])
//!         .emits(["user_signed_up"]);
//!     spark::run_cli(registry)
//! }
//! ```

pub mod backend;
pub mod builtins;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod crashpoint;
pub mod cursor;
pub mod database;
pub mod delivery;
pub mod error;
pub mod escape;
pub mod event;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod handlers;
pub mod metrics;
pub mod ops;
pub mod panics;
pub mod pipeline;
pub mod records;
pub mod redact;
pub mod registry;
pub mod signals;
pub mod sources;
pub mod store;
pub mod templates;
pub mod watch;

pub use cli::run_cli;
pub use error::Error;
pub use event::{Context, Event, event};
pub use records::{Record, RecordError};
pub use registry::{HandlerError, Registry, SourceCtx};
