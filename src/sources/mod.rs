//! Sources: the compiled-in ones shipped with spark (and their
//! registration), and declarative generators written in the config.
//!
//! Not here: running sources over records (the pipeline).

mod challenge;
pub mod generator;

pub use challenge::challenge_events;

use crate::registry::Registry;

/// Registers the sources every `spark` binary offers.
pub fn register_builtins(registry: &mut Registry) {
    registry
        .add_source("challenge_events", challenge_events)
        .reads(challenge::READS)
        .emits(challenge::EMITS);
}
