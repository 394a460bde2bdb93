//! The operator's view of the store, the same on every backend: what to
//! list or change (queries), what a listing shows, and what a repair did.
//! The listings are computed here from what a `Reader` returns; the SQL
//! lives in the backends.
//!
//! Not here: the pipeline's interface (`Store`) or delivering (the engine).

use regex::Regex;
use serde::Serialize;
use serde_json::Value;

use super::{Delivery, DeliveryState};
use crate::clock;

/// Which seen events to list.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Groups matching this regex (search semantics).
    pub group: Option<Regex>,
    pub key_prefix: Option<String>,
    /// Keys or stored contexts containing this text.
    pub text: Option<String>,
    /// `created_at` on or after this day (UTC, `YYYY-MM-DD`).
    pub since: Option<String>,
    /// `created_at` before this day.
    pub until: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
    /// After skipping this many of those that match.
    pub offset: usize,
}

impl EventQuery {
    /// How many rows a database may stop after (`None`: all), when it
    /// filters everything the query asks itself (the group regex is
    /// matched here).
    pub fn pushed_limit(&self) -> Option<usize> {
        match (&self.group, self.limit) {
            (None, Some(limit)) => Some(limit.saturating_add(self.offset)),
            _ => None,
        }
    }

    /// Whether a row the database returned is listed, counting it in
    /// `seen` (matches so far, the skipped included); `Break` once enough
    /// are listed.
    pub fn take(&self, group: &str, seen: &mut usize) -> std::ops::ControlFlow<(), bool> {
        if self
            .limit
            .is_some_and(|limit| *seen >= limit.saturating_add(self.offset))
        {
            return std::ops::ControlFlow::Break(());
        }
        if self.group.as_ref().is_some_and(|re| !re.is_match(group)) {
            return std::ops::ControlFlow::Continue(false);
        }
        *seen += 1;
        std::ops::ControlFlow::Continue(*seen > self.offset)
    }
}

/// A seen event as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SeenEvent {
    pub key: String,
    pub group: String,
    pub created_at: String,
    /// The context: JSON when spark wrote it, the stored text otherwise.
    pub context: Value,
}

impl SeenEvent {
    /// A listed event from the stored columns.
    pub fn from_stored(key: String, group: String, created_at: String, context: String) -> Self {
        SeenEvent {
            key,
            group,
            created_at,
            context: serde_json::from_str(&context).unwrap_or(Value::String(context)),
        }
    }

    /// Whether its context is a JSON object, as spark writes contexts (not,
    /// for instance, the Python `repr()` django-spark wrote).
    pub fn context_is_json(&self) -> bool {
        self.context.is_object()
    }

    /// The event, its context as handlers get it: the object, or other
    /// stored text kept under `"text"`.
    pub fn to_event(&self) -> crate::event::Event {
        let context = match &self.context {
            Value::Object(map) => map.clone(),
            Value::String(text) => crate::event::context_from_stored(text),
            other => crate::event::context_from_stored(&other.to_string()),
        };
        crate::event::Event {
            group: self.group.clone(),
            key: self.key.clone(),
            context: std::sync::Arc::new(context),
        }
    }
}

/// Which deliveries to list or retry.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    /// Any of these states (all when empty).
    pub states: Vec<DeliveryState>,
    pub handler: Option<String>,
    /// Deliveries still owing any of these keys (all when empty).
    pub keys: Vec<String>,
}

impl DeliveryQuery {
    pub fn matches(&self, d: &Delivery) -> bool {
        (self.states.is_empty() || self.states.contains(&d.shown_state()))
            && self.handler.as_ref().is_none_or(|h| h == &d.handler)
            && (self.keys.is_empty() || d.remaining().iter().any(|k| self.keys.contains(k)))
    }
}

/// One owed (event, handler) pair, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryLine {
    pub id: i64,
    pub handler: String,
    pub key: String,
    pub state: String,
    pub attempts: u32,
    /// UTC, for failed deliveries.
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    /// The worker holding it right now (`in_flight`), and until when (UTC)
    /// unless it renews its lease.
    pub worker: Option<String>,
    pub lease_until: Option<String>,
}

/// Deliveries not finished, counted in events: (handler, state, count),
/// by handler then state.
pub fn outstanding(deliveries: &[Delivery]) -> Vec<(String, String, u64)> {
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for d in deliveries {
        *counts
            .entry((d.handler.clone(), d.shown_state().to_string()))
            .or_default() += d.remaining().len() as u64;
    }
    counts
        .into_iter()
        .map(|((handler, state), n)| (handler, state, n))
        .collect()
}

/// The owed (event, handler) pairs that `query` selects, one line per key.
pub fn list_deliveries(deliveries: &[Delivery], query: &DeliveryQuery) -> Vec<DeliveryLine> {
    let mut lines = Vec::new();
    for d in deliveries {
        if !query.matches(d) {
            continue;
        }
        for key in d.remaining() {
            if !query.keys.is_empty() && !query.keys.contains(key) {
                continue;
            }
            lines.push(DeliveryLine {
                id: d.id,
                handler: d.handler.clone(),
                key: key.clone(),
                state: d.shown_state().to_string(),
                attempts: d.attempts,
                next_attempt_at: (d.state == DeliveryState::Failed)
                    .then(|| clock::utc_text(d.next_attempt_at)),
                last_error: d.last_error.clone(),
                created_at: d.created_at.clone(),
                worker: d.claim.as_ref().map(|c| c.worker.clone()),
                lease_until: d.claim.as_ref().map(|c| clock::utc_text(c.until_ms)),
            });
        }
    }
    lines
}

/// Deliveries owed to a handler that is not in the config (renamed or
/// removed): they would wait forever.
#[derive(Debug, Clone, Serialize)]
pub struct Orphaned {
    pub handler: String,
    /// Events owed.
    pub events: u64,
    /// The first few keys.
    pub keys: Vec<String>,
}

/// How many keys an orphan report names.
const ORPHAN_KEYS_LISTED: usize = 5;

/// Deliveries owed to handlers not among `known`, by handler.
pub fn orphaned(deliveries: &[Delivery], known: &[&str]) -> Vec<Orphaned> {
    let mut found: Vec<Orphaned> = Vec::new();
    for d in deliveries {
        if known.contains(&d.handler.as_str()) {
            continue;
        }
        let i = match found.iter().position(|o| o.handler == d.handler) {
            Some(i) => i,
            None => {
                found.push(Orphaned {
                    handler: d.handler.clone(),
                    events: 0,
                    keys: Vec::new(),
                });
                found.len() - 1
            }
        };
        let o = &mut found[i];
        o.events += d.remaining().len() as u64;
        for key in d.remaining() {
            if o.keys.len() < ORPHAN_KEYS_LISTED {
                o.keys.push(key.clone());
            }
        }
    }
    found
}

/// What `forget` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Forgotten {
    /// Keys removed from the seen table.
    pub forgotten: Vec<String>,
    /// Keys that were not seen.
    pub unknown: Vec<String>,
    /// Owed deliveries of those keys that were dropped.
    pub deliveries_dropped: usize,
}

impl Forgotten {
    /// How the deliveries change when `keys` are forgotten: for each
    /// delivery that owes any of them, its id and the keys it keeps
    /// (`None`: it owes nothing else and goes). Counts what is dropped.
    pub fn plan(
        &mut self,
        deliveries: &[Delivery],
        keys: &[String],
    ) -> Vec<(i64, Option<Vec<String>>)> {
        let wanted: std::collections::HashSet<&String> = keys.iter().collect();
        let (changes, dropped) = drop_plan(deliveries, &|_, key| wanted.contains(key));
        self.deliveries_dropped += dropped.len();
        changes
    }
}

/// A change to one owed delivery: its id, and the keys it keeps (`None`:
/// it goes).
pub type Change = (i64, Option<Vec<String>>);

/// How owed deliveries change when the (delivery, key) pairs `pick`
/// selects are dropped: for each delivery that owes any of them, its id
/// and the keys it keeps (`None`: it owes nothing else and goes); and the
/// dropped (handler, key) pairs.
pub fn drop_plan(
    deliveries: &[Delivery],
    pick: &dyn Fn(&Delivery, &String) -> bool,
) -> (Vec<Change>, Vec<(String, String)>) {
    let mut changes = Vec::new();
    let mut dropped = Vec::new();
    for d in deliveries {
        let (gone, kept): (Vec<&String>, Vec<&String>) =
            d.remaining().iter().partition(|k| pick(d, k));
        if gone.is_empty() {
            continue;
        }
        dropped.extend(gone.into_iter().map(|k| (d.handler.clone(), k.clone())));
        if kept.is_empty() {
            changes.push((d.id, None));
        } else {
            let mut keys = d.keys[..d.done].to_vec();
            keys.extend(kept.into_iter().cloned());
            changes.push((d.id, Some(keys)));
        }
    }
    (changes, dropped)
}

/// What `prune` did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub pruned: u64,
    /// Old enough, but kept because a delivery of theirs is not finished.
    pub kept_undelivered: u64,
}

/// The keys some unfinished delivery still owes (prune keeps them).
pub fn owed_keys(deliveries: &[Delivery]) -> std::collections::HashSet<String> {
    deliveries
        .iter()
        .flat_map(|d| d.remaining().to_vec())
        .collect()
}
