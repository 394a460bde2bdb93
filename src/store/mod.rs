//! The store of seen keys and deliveries, behind one narrow trait: what the
//! pipeline and the delivery engine need, nothing more.
//!
//! Model: an event is *seen* once its key is in the seen table. A *delivery*
//! is a list of event keys for one handler, delivered in order; `done` counts
//! the keys already finished. A batch of new events becomes one delivery per
//! matching handler, written in the same transaction as the events. A key
//! that fails is split out into a delivery of its own, which carries the
//! attempts, the last error and the time of the next attempt.
//!
//! Not here: retry policy (the delivery engine decides attempts and times) or
//! calling handlers.

pub mod admin;
pub mod schema;
pub mod sqlite;

use std::fmt;
use std::sync::Arc;

use crate::error::Result;
use crate::event::Event;

pub use sqlite::SqliteStore;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not attempted yet (or left unfinished by a run that died).
    Pending,
    /// Failed at least once; tried again at `next_attempt_at`.
    Failed,
    /// Given up: listed, retried only by hand.
    Dead,
    /// An at-most-once delivery being called right now. Found at the start
    /// of a run, it means the run died mid-call: it becomes dead.
    InFlight,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Failed => "failed",
            DeliveryState::Dead => "dead",
            DeliveryState::InFlight => "in_flight",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        Some(match text {
            "pending" => DeliveryState::Pending,
            "failed" => DeliveryState::Failed,
            "dead" => DeliveryState::Dead,
            "in_flight" => DeliveryState::InFlight,
            _ => return None,
        })
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Event keys for one handler, delivered in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub handler: String,
    pub keys: Vec<String>,
    /// `keys[..done]` are finished (delivered, or split out after failing).
    pub done: usize,
    pub state: DeliveryState,
    pub attempts: u32,
    /// Unix milliseconds.
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    /// For file sinks: the file's length before this delivery wrote to it,
    /// and which file it was.
    pub file_mark: Option<FileMark>,
    pub created_at: String,
}

/// Where a file-sink delivery writes from: the file's length before it
/// wrote, and the file's identity (device and inode; `None` in rows an
/// earlier spark wrote), so that recovery cuts back only that same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMark {
    pub offset: u64,
    pub file: Option<crate::files::FileId>,
}

impl Delivery {
    /// The keys still to deliver.
    pub fn remaining(&self) -> &[String] {
        self.keys.get(self.done..).unwrap_or(&[])
    }
}

/// A delivery to write with a batch: which of the batch's events a handler gets.
#[derive(Debug, Clone)]
pub struct PlannedDelivery {
    pub handler: String,
    /// Indices into the batch, in order.
    pub events: Vec<usize>,
    pub file_mark: Option<FileMark>,
}

/// What a batch left in the store.
#[derive(Debug)]
pub struct Recorded {
    /// The seen-at time written for the new events (UTC).
    pub seen_at: String,
    /// For each event of the batch: its context as JSON if it was new
    /// (shared by the events of one context).
    pub new: Vec<Option<Arc<str>>>,
    /// The deliveries written, with the batch indices of their events.
    pub deliveries: Vec<(Delivery, Vec<usize>)>,
}

/// An event as the store keeps it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: Event,
    pub context_json: String,
    pub seen_at: String,
}

/// How a failed attempt is recorded: the error, and when to try again
/// (`None`: never automatically; the delivery is dead).
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: String,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
}

/// The seen keys and the deliveries.
pub trait Store {
    /// Records the new events of `events` as seen and, in the same
    /// transaction, the deliveries `plan` makes from the new-events mask.
    /// Keys already seen (or repeated within the batch) are not new.
    ///
    /// `contexts` is either empty or each event's context already as JSON
    /// (a caller that expects most events to be new prepares them, so that
    /// the store can insert without looking each key up first).
    /// `finished` are deliveries completed since the last batch: they are
    /// removed in the same transaction.
    fn record_batch(
        &mut self,
        events: &[Event],
        contexts: &[Arc<str>],
        finished: &[i64],
        plan: &mut dyn FnMut(&[bool]) -> Vec<PlannedDelivery>,
    ) -> Result<Recorded>;

    /// Removes finished deliveries (the ones `record_batch` would have).
    fn finish(&mut self, finished: &[i64]) -> Result<()>;

    /// Records `key` as seen without any delivery; `false` if already seen.
    fn mark_seen(&mut self, key: &str, group: &str, context_json: &str) -> Result<bool>;

    /// The stored events for `keys` (`None` where a key is not in the store).
    fn load_events(&mut self, keys: &[String]) -> Result<Vec<Option<StoredEvent>>>;

    /// Turns deliveries left in flight by a run that died into dead ones;
    /// returns how many.
    fn bury_interrupted(&mut self, error: &str) -> Result<usize>;

    /// Deliveries to work on now: pending ones, failed ones whose next
    /// attempt is due at `now_ms`, and any holding a file mark (due or not,
    /// so that its file is cut back first); oldest first.
    fn due_deliveries(&mut self, now_ms: i64) -> Result<Vec<Delivery>>;

    /// Records the file position a file-sink delivery writes from (`None`:
    /// nothing of it is in the file).
    fn set_file_mark(&mut self, delivery: &mut Delivery, mark: Option<FileMark>) -> Result<()>;

    /// Marks `delivery.keys[..done]` finished; a finished delivery is removed.
    fn advance(&mut self, delivery: &mut Delivery, done: usize) -> Result<()>;

    /// Records that the key at `delivery.done` failed: the delivery itself
    /// when it is the last key, otherwise split out into its own delivery.
    fn fail_next(&mut self, delivery: &mut Delivery, failure: &Failure) -> Result<()>;

    /// Records that all remaining keys of `delivery` failed together.
    fn fail_rest(&mut self, delivery: &mut Delivery, failure: &Failure) -> Result<()>;

    /// For at-most-once handlers: marks the key at `delivery.done` in flight
    /// before it is called, and returns the one-key delivery to finish
    /// (with `advance`) or fail once the call returns.
    fn begin_at_most_once(&mut self, delivery: &mut Delivery) -> Result<Delivery>;
}
