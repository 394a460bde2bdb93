//! Sources: the compiled-in ones shipped with spark, and declarative
//! generators written in the config.
//!
//! Not here: running sources over records (the pipeline).

pub(crate) mod challenge;
pub mod generator;

pub use challenge::challenge_events;
