//! The store of seen keys and deliveries: the model (events, deliveries and
//! their states, claims, file marks, the history) and the one narrow trait
//! the pipeline, the delivery engine and the operator commands use.
//!
//! Model: an event is *seen* once its key is in the seen table. A *delivery*
//! is a list of event keys for one handler, delivered in order; `done` counts
//! the keys already finished. A batch of new events becomes deliveries for
//! the matching handlers, written in the same transaction as the events. A
//! key that fails is split out into a delivery of its own, which carries the
//! attempts, the last error and the time of the next attempt.
//!
//! - `Store`: the seen keys and deliveries a run writes. Implemented once,
//!   by `machine::Machine`: the delivery rules above every driver.
//! - `Reader`: read-only access (checking a config, streaming records, the
//!   operator's listings), implemented by each driver.
//! - `Notifier`: what `spark watch` waits on, from each driver.
//! - `driver`: the seam a database's driver implements (`crate::backend`);
//!   `DeliveryRow::decode` is the one decoder of a delivery's row, so that a
//!   corrupt row is the same error on every database.
//!
//! On a store several processes share (PostgreSQL), the deliveries a process
//! works on are *claimed* with a lease; on SQLite the run lock makes every
//! claim trivially its own.
//!
//! Not here: retry policy (the delivery engine decides attempts and times),
//! calling handlers, or SQL (the drivers).

pub mod admin;
pub mod driver;
pub mod history;
pub mod limits;
pub mod machine;

use std::collections::HashSet;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::error::Result;
use crate::event::Event;
use crate::records::{Affinity, Record, RecordSet, Since};

pub use admin::{DeliveryQuery, EventQuery, Forgotten, Orphaned, Pruned, SeenEvent};
pub use history::{HistoryEntry, HistoryQuery};
pub use limits::{KeyLimits, declared_length};

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
    /// On a shared store: the worker that holds it right now (a lease not
    /// run out), if one does.
    pub claim: Option<Claim>,
}

/// A row of `spark_delivery` as a driver reads it, before it is trusted:
/// `decode` turns it into a `Delivery`, or says what makes it corrupt, the
/// same on every database (never a silent rewrite into something else).
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: i64,
    pub handler: String,
    pub keys: String,
    pub done: i64,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub file_offset: Option<i64>,
    pub file_id: Option<String>,
    pub created_at: String,
    pub claim: Option<Claim>,
}

impl DeliveryRow {
    /// The delivery the row holds; `Err` names the delivery and what is
    /// wrong with it (a state spark does not know, keys that are not a JSON
    /// list of strings, counts out of range).
    pub fn decode(self, database: &str) -> Result<Delivery> {
        let corrupt = |problem: String| crate::error::Error::CorruptDelivery {
            database: database.to_owned(),
            id: self.id,
            handler: crate::escape::escape(&self.handler).into_owned(),
            problem,
        };
        let keys: Vec<String> = serde_json::from_str(&self.keys)
            .map_err(|e| corrupt(format!("its keys are not a JSON list of strings ({e})")))?;
        let state = DeliveryState::parse(&self.state).ok_or_else(|| {
            corrupt(format!(
                "its state {:?} is not one spark knows (pending, failed, dead, in_flight)",
                crate::escape::escape(&self.state)
            ))
        })?;
        let done = usize::try_from(self.done)
            .ok()
            .filter(|d| *d <= keys.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "it says {} of its {} keys are done",
                    self.done,
                    keys.len()
                ))
            })?;
        let attempts = u32::try_from(self.attempts)
            .map_err(|_| corrupt(format!("its attempts ({}) are out of range", self.attempts)))?;
        Ok(Delivery {
            id: self.id,
            handler: self.handler,
            keys,
            done,
            state,
            attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            file_mark: self
                .file_offset
                .and_then(|o| u64::try_from(o).ok())
                .map(|offset| FileMark {
                    offset,
                    file: self
                        .file_id
                        .as_deref()
                        .and_then(crate::files::FileId::parse),
                }),
            created_at: self.created_at,
            claim: self.claim,
        })
    }

    /// `decode` for every row.
    pub fn decode_all(rows: Vec<DeliveryRow>, database: &str) -> Result<Vec<Delivery>> {
        rows.into_iter().map(|r| r.decode(database)).collect()
    }
}

/// A worker's hold on a delivery: who, and until when (Unix ms, the
/// database's clock) unless it renews it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub worker: String,
    pub until_ms: i64,
}

/// Where a file-sink delivery writes from: the file's length before it
/// wrote, and the file's identity (device and inode; `None` in rows an
/// earlier spark wrote), so that recovery cuts back only that same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMark {
    pub offset: u64,
    pub file: Option<crate::files::FileId>,
}

impl FileMark {
    /// A mark as the two columns that keep it: the offset, and the file's
    /// identity as text.
    pub fn columns(mark: Option<FileMark>) -> (Option<i64>, Option<String>) {
        match mark {
            None => (None, None),
            Some(m) => (
                Some(i64::try_from(m.offset).unwrap_or(i64::MAX)),
                m.file.map(|f| f.to_string()),
            ),
        }
    }
}

/// A delivery's keys as its row keeps them: a JSON list of strings.
pub fn keys_json(keys: &[String]) -> String {
    serde_json::to_string(keys).unwrap_or_else(|_| String::from("[]"))
}

impl Delivery {
    /// Where it stands as the operator sees it: a delivery a worker holds
    /// right now is in flight, whatever its state.
    pub fn shown_state(&self) -> DeliveryState {
        if self.claim.is_some() {
            DeliveryState::InFlight
        } else {
            self.state
        }
    }

    /// The keys still to deliver.
    pub fn remaining(&self) -> &[String] {
        self.keys.get(self.done..).unwrap_or(&[])
    }
}

/// What the store keeps of a source with a cursor (see `crate::cursor`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CursorState {
    pub source: String,
    /// The source's definition the mark holds for
    /// (`SourceConfig::fingerprint`): another one means a full scan.
    pub fingerprint: String,
    /// The highest cursor value read and recorded: an integer, or a date or
    /// datetime as the database showed it (`None`: no record had one).
    pub mark: Option<String>,
    /// When the last full scan ended (Unix ms) and the as-of date it used.
    pub full_at: i64,
    pub full_as_of: String,
}

/// A high-water mark to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMark {
    pub state: CursorState,
    /// Written by a full scan: replaces what was kept. Otherwise (an
    /// incremental read) it only moves the mark of the state the run
    /// started from, and is dropped if that state was replaced or deleted
    /// meanwhile (`forget`, another config).
    pub full: bool,
}

/// A delivery to write with a batch: which of the batch's events a handler gets.
#[derive(Debug, Clone)]
pub struct PlannedDelivery {
    pub handler: String,
    /// Indices into the batch, in order.
    pub events: Vec<usize>,
    /// For a file sink this process writes: where the delivery writes from.
    pub file_mark: Option<FileMark>,
    /// Whether the handler writes a local file (its deliveries belong to
    /// this host: another host's file is another file).
    pub file_sink: bool,
    /// Keys per delivery for a handler called per event where workers
    /// share the backlog (PostgreSQL): a few calls' worth, enough to keep
    /// its calls in flight busy.
    pub chunk: usize,
    /// How many calls the handler has in flight at once.
    pub in_flight: usize,
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

impl StoredEvent {
    /// An event read back from the seen table, with its context as JSON
    /// (what spark wrote, or the stored text wrapped under `"text"`).
    pub fn from_stored(key: &str, group: String, context_json: String, seen_at: String) -> Self {
        let (context, context_json) = match serde_json::from_str::<serde_json::Value>(&context_json)
        {
            Ok(serde_json::Value::Object(map)) => (map, context_json),
            _ => {
                let map = crate::event::context_from_stored(&context_json);
                let json = serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned());
                (map, json)
            }
        };
        StoredEvent {
            event: Event {
                group,
                key: key.to_owned(),
                context: Arc::new(context),
            },
            context_json,
            seen_at,
        }
    }
}

/// The SQL that brings a store's schema from `version` (0: none) up to
/// date, in one transaction: the seen table's DDL (when it is missing),
/// `spark_meta` (when there is none), the migrations after `version`, and
/// the new version (`set_version`, the driver's statement that records it,
/// given the version). Each driver hands in its own SQL.
pub fn pending_sql(
    seen_ddl: Option<String>,
    meta_ddl: &str,
    migrations: &[&str],
    version: i64,
    set_version: &dyn Fn(usize) -> String,
) -> String {
    let mut sql = String::from("BEGIN;\n");
    if let Some(ddl) = seen_ddl {
        sql.push_str(&ddl);
        sql.push('\n');
    }
    let known = migrations.len();
    if version < known as i64 {
        if version == 0 {
            sql.push_str(meta_ddl);
            sql.push('\n');
        }
        for step in &migrations[usize::try_from(version.max(0)).unwrap_or(0)..] {
            sql.push_str(step);
            sql.push('\n');
        }
        sql.push_str(&set_version(known));
        sql.push('\n');
    }
    sql.push_str("COMMIT;\n");
    sql
}

/// Contexts serialized once each: the events of one record share their
/// context (`Arc`), so its JSON is made once.
#[derive(Default)]
pub struct ContextJson {
    made: std::collections::HashMap<*const serde_json::Map<String, serde_json::Value>, Arc<str>>,
}

impl ContextJson {
    /// The JSON of `event`'s context.
    pub fn of(&mut self, event: &Event) -> Result<Arc<str>, serde_json::Error> {
        let ptr = Arc::as_ptr(&event.context);
        if let Some(json) = self.made.get(&ptr) {
            return Ok(json.clone());
        }
        let json: Arc<str> = serde_json::to_string(&*event.context)?.into();
        self.made.insert(ptr, json.clone());
        Ok(json)
    }
}

/// How a failed attempt is recorded: the error, and when to try again
/// (`None`: never automatically; the delivery is dead).
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: String,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
}

/// A column of a record set: its name, its type in the database's own words
/// when known (SQLite's declared type, PostgreSQL's type name), and what
/// that type compares like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub declared: Option<String>,
    pub affinity: Affinity,
}

/// What the seen table is like, if it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenTable {
    pub exists: bool,
    /// The longest key and group it takes (django-spark's when it does not
    /// exist yet: spark creates it so).
    pub limits: KeyLimits,
}

/// Read-only access to a database: checking a config against it, reading
/// records, and the operator's listings. Never writes, not even spark's
/// schema.
pub trait Reader: Send {
    /// The database, for messages: a file, or `host:port/dbname`.
    fn name(&self) -> &str;

    /// Whether a table or view of that name exists.
    fn table_exists(&mut self, table: &str) -> Result<bool>;

    /// The columns `records` yield, without reading them; `Err` is the
    /// database's own message.
    fn columns(&mut self, records: &RecordSet) -> Result<Vec<Column>, String>;

    /// Streams `records` (a query, or a table in this database's quotes),
    /// in chunks, never all in memory; with `since`, only those at or above
    /// its bound, in its column's order (see `RecordSet::sql_since`). `Err`
    /// is the database's own message.
    fn scan(
        &mut self,
        records: &RecordSet,
        since: Option<&Since>,
        each: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), String>;

    /// Checks the seen table: `Err` names what makes it unusable.
    fn seen_table(&mut self) -> Result<SeenTable>;

    /// Whether a trigger in the database notifies `channel` (what `spark
    /// watch` LISTENs on); `None` where a database has no such thing.
    fn notifies(&mut self, _channel: &str) -> Result<Option<bool>> {
        Ok(None)
    }

    /// The high-water marks of the sources with a cursor (none where spark
    /// has not made its table yet).
    fn cursors(&mut self) -> Result<Vec<CursorState>>;

    /// Whether `column` of `table` leads an index (`None`: cannot tell).
    fn indexed(&mut self, _table: &str, _column: &str) -> Result<Option<bool>> {
        Ok(None)
    }

    /// What the connected role lacks to run spark here, one line per table
    /// or sequence (empty where a database has no privileges to check).
    fn missing_privileges(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Whether the seen table is missing or has no rows.
    fn seen_is_empty(&mut self) -> Result<bool>;

    /// How many events the seen table holds.
    fn count_events(&mut self) -> Result<u64>;

    /// Which of `keys` are seen.
    fn seen_among(&mut self, keys: &[String]) -> Result<HashSet<String>>;

    /// Lists seen events, newest first, calling `each` for each one.
    fn list_events(&mut self, query: &EventQuery, each: &mut dyn FnMut(SeenEvent))
    -> Result<usize>;

    /// One seen event by key, as listed (its context JSON, or the stored
    /// text when it is not).
    fn seen_event(&mut self, key: &str) -> Result<Option<SeenEvent>>;

    /// Every delivery not finished yet, oldest first.
    fn deliveries(&mut self) -> Result<Vec<Delivery>>;

    /// How many deliveries a run would work on at `now_ms`.
    fn count_due(&mut self, now_ms: i64) -> Result<u64>;

    /// The history `query` selects, newest first (empty where spark has not
    /// made its history table yet).
    fn history(&mut self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>>;

    /// Delivery attempts in the history at or after `since` (UTC text), by
    /// hour: (`YYYY-MM-DD HH`, outcome, how many), for the outcomes
    /// `delivered`, `failed` and `dead`.
    fn attempts_per_hour(&mut self, since: &str) -> Result<Vec<(String, String, u64)>>;

    /// Reading is done (SQLite: its snapshot no longer holds the WAL back,
    /// so committed batches can be copied into the database file now).
    fn finish(self: Box<Self>) {}
}

/// What `spark watch` waits on between cycles: a database's own way of
/// saying it changed (SQLite's data version, PostgreSQL's LISTEN).
pub trait Notifier {
    /// Takes the database as it is now as seen: only later changes count.
    fn settle(&mut self) -> Result<()>;

    /// Whether the database changed, waiting up to `wait` to find out.
    fn changed(&mut self, wait: std::time::Duration) -> Result<bool>;
}

/// The seen keys and the deliveries.
pub trait Store: Send {
    /// The database, for messages.
    fn name(&self) -> &str;

    /// Records the new events of `events` as seen and, in the same
    /// transaction, the deliveries `plan` makes from the new-events mask.
    /// Keys already seen (or repeated within the batch) are not new.
    ///
    /// The commit may be lazy (not yet durable against a power loss, as
    /// SQLite's `synchronous = NORMAL`): call `make_durable` before acting
    /// on what it recorded (calling a handler, writing a file). A crash of
    /// the process alone loses nothing a commit returned.
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

    /// Holds sources' high-water marks to write with the next batch (in its
    /// transaction), or with `write_cursors`: never before what was read
    /// below them is recorded.
    fn stage_cursors(&mut self, marks: &[NewMark]);

    /// Writes the marks staged and not written with a batch.
    fn write_cursors(&mut self) -> Result<()>;

    /// Removes finished deliveries (the ones `record_batch` would have).
    fn finish(&mut self, finished: &[i64]) -> Result<()>;

    /// Makes every commit so far durable (a no-op where every commit is).
    fn make_durable(&mut self) -> Result<()> {
        Ok(())
    }

    /// Records `key` as seen without any delivery; `false` if already seen.
    fn mark_seen(&mut self, key: &str, group: &str, context_json: &str) -> Result<bool>;

    /// The stored events for `keys` (`None` where a key is not in the store).
    fn load_events(&mut self, keys: &[String]) -> Result<Vec<Option<StoredEvent>>>;

    /// Turns deliveries left in flight by a run that died into dead ones;
    /// returns how many.
    fn bury_interrupted(&mut self, error: &str) -> Result<usize>;

    /// Deliveries holding a file mark (a run died writing them, or their
    /// file could not be cut back), due or not, for `handlers`: settled
    /// before anything else writes to their files. Claimed, on a shared
    /// store.
    fn marked(&mut self, handlers: &[&str]) -> Result<Vec<Delivery>>;

    /// Some deliveries to work on now, for `handlers`: pending ones, and
    /// failed ones whose next attempt came before `now_ms`; oldest first.
    /// Empty when none is left. On a shared store they are claimed for this
    /// process (a lease other processes respect until it runs out).
    fn claim_due(&mut self, now_ms: i64, handlers: &[&str]) -> Result<Vec<Delivery>>;

    /// Every delivery not finished yet, oldest first.
    fn deliveries(&mut self) -> Result<Vec<Delivery>>;

    /// This process's name in its claims, on a store processes share.
    fn worker(&self) -> Option<&str> {
        None
    }

    /// The run is over: lets go of claims not worked on, and tidies up
    /// (SQLite: a checkpoint).
    fn finish_run(&mut self) -> Result<()>;

    /// Makes the deliveries `query` selects due now, with a fresh count of
    /// attempts (and no file mark: the operator decided), and returns them.
    fn reset_for_retry(&mut self, query: &DeliveryQuery) -> Result<Vec<Delivery>>;

    /// Removes `keys` from the seen table, so that they may fire again, and
    /// drops what was still owed for them.
    fn forget(&mut self, keys: &[String]) -> Result<Forgotten>;

    /// Deletes seen events recorded before `cutoff` (UTC text), optionally
    /// only those whose group matches, keeping any with an unfinished
    /// delivery. With `dry_run`, only counts.
    fn prune(
        &mut self,
        cutoff: &str,
        group: Option<&regex::Regex>,
        dry_run: bool,
    ) -> Result<Pruned>;

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

    /// Appends to the history (see `history`: SQLite holds the entries for
    /// its next commit, PostgreSQL commits them without waiting for the
    /// disk).
    fn add_history(&mut self, entries: &[HistoryEntry]) -> Result<()>;

    /// Deletes history entries from before `cutoff` (UTC text); returns how
    /// many.
    fn prune_history(&mut self, cutoff: &str) -> Result<u64>;

    /// Applies an operator's change to owed deliveries (see
    /// `admin::drop_plan`: each delivery's id and the keys it keeps, `None`
    /// for none) and records `history`, in one transaction; returns how
    /// many deliveries changed (on a shared store, one another process is
    /// working on right now is left alone).
    fn drop_owed(
        &mut self,
        changes: &[(i64, Option<Vec<String>>)],
        history: &[HistoryEntry],
    ) -> Result<usize>;

    /// Hands every delivery owed to handler `from` to handler `to`, and
    /// records `history`; returns how many deliveries moved.
    fn reassign(&mut self, from: &str, to: &str, history: &[HistoryEntry]) -> Result<u64>;

    /// Adds pending deliveries of `keys` (already seen) to `handler`, in
    /// deliveries of at most `chunk` keys (a file sink's are this host's),
    /// and records `history`.
    fn add_deliveries(
        &mut self,
        handler: &str,
        keys: &[String],
        chunk: usize,
        file_sink: bool,
        history: &[HistoryEntry],
    ) -> Result<u64>;
}
