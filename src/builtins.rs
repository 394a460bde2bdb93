//! What every `spark` binary has compiled in: the example source
//! `challenge_events` and the handler function `log_event`, registered in
//! `Registry::with_builtins`. Here rather than in the registry, so that the
//! registry names none of the sources and handlers that use it.
//!
//! Not here: the registry itself (`crate::registry`).

use crate::registry::Registry;
use crate::sources::{challenge, challenge_events};

impl Registry {
    /// The registry of the `spark` binary: the example source
    /// `challenge_events` and the `log_event` handler.
    pub fn with_builtins() -> Registry {
        let mut registry = Registry::new();
        registry
            .add_source("challenge_events", challenge_events)
            .reads(challenge::READS)
            .emits(challenge::EMITS);
        // Logs each event at info level (see `-v`).
        registry.add_handler("log_event", |event| {
            tracing::info!(
                key = event.key.as_str(),
                group = event.group.as_str(),
                "event"
            );
            Ok(())
        });
        registry
    }
}
