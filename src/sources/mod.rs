//! Compiled-in sources shipped with spark, and their registration.
//!
//! Not here: running sources over records (the pipeline) or declarative
//! generators written in the config.

mod challenge;

pub use challenge::challenge_events;

use crate::registry::Registry;

/// Registers the sources every `spark` binary offers.
pub fn register_builtins(registry: &mut Registry) {
    registry
        .add_source("challenge_events", challenge_events)
        .reads(challenge::READS)
        .emits(challenge::EMITS);
}
