//! The SQLite store: seen keys in the (django-spark compatible) seen table of
//! the records database, deliveries in `spark_delivery`.
//!
//! The connection runs in WAL mode with `synchronous = FULL`, so a commit
//! survives a power loss, and with a busy timeout, so that an application
//! writing to the same database makes spark wait, not fail. Two kinds of
//! writes are the exception, committed with `synchronous = NORMAL` (they
//! survive spark being killed, not a power loss until the log is synced):
//! batches of new events, made durable by `make_durable` before anything
//! acts on them, so that several batches share one sync; and the outcomes
//! of handler calls (done, failed, the history), whose loss to a power cut
//! can only make a delivered event delivered again, so that a fast handler
//! is not held to a disk sync per call.
//! Every write is one `BEGIN IMMEDIATE` transaction; statements are prepared
//! once and reused.
//!
//! Not here: opening the database read-only to validate it (`SqliteReader`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use super::{DELIVERY_COLUMNS, all_deliveries, schema};
use crate::clock;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::records::quote_ident;
use crate::store::ContextJson;
use crate::store::admin::owed_keys;
use crate::store::{
    Delivery, DeliveryQuery, DeliveryRow, DeliveryState, Failure, FileMark, Forgotten,
    HistoryEntry, PlannedDelivery, Pruned, Recorded, Store, StoredEvent,
};

/// The deliveries holding a file mark (settled first), in any state but in
/// flight (file sinks are never at-most-once).
const MARKED: &str = "file_offset IS NOT NULL AND state <> 'in_flight'";

/// The deliveries a drain works on: pending ones, and failed ones whose next
/// attempt (`?1`, Unix ms) came before the drain started (a delivery failing
/// during it waits for a later one, whatever its backoff).
const CLAIMABLE: &str = "state = 'pending' OR (state = 'failed' AND next_attempt_at < ?1)";

/// How many deliveries one claim returns at most.
const CLAIM_LIMIT: i64 = 1000;

/// The SQLite store over one records database.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    name: String,
    seen_table: String,
    busy_timeout: Duration,
    sql: Statements,
    /// Commits since the write-ahead log was last made durable (batches
    /// are committed lazily; see `record_batch`).
    unsynced: std::cell::Cell<bool>,
    /// History entries not written yet: they ride along with the next
    /// transaction (no commit of their own), or are written when the run
    /// finishes or the store is dropped.
    history: std::cell::RefCell<Vec<HistoryEntry>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Whatever the run did last is in the history too.
        let _ = self.flush_history();
    }
}

/// History entries held back for the next transaction at most.
const HISTORY_HELD: usize = 256;

/// The SQL that names the seen table, built once.
struct Statements {
    exists: String,
    insert: String,
    load: String,
}

impl SqliteStore {
    /// Opens the store in an existing database, switches it to WAL and
    /// creates or upgrades spark's tables.
    pub fn open(path: &Path, seen_table: &str, busy_timeout: Duration) -> Result<SqliteStore> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let name = path.display().to_string();
        let mut conn =
            Connection::open_with_flags(path, flags).map_err(|error| Error::OpenDatabase {
                database: name.clone(),
                error: super::sql_message(&error),
            })?;
        let store_err = |action: &str| {
            let action = action.to_owned();
            let database = name.clone();
            move |error: rusqlite::Error| Error::Store {
                database,
                action,
                error: super::sql_message(&error),
            }
        };
        conn.busy_timeout(busy_timeout)
            .map_err(store_err("setting the busy timeout"))?;
        // Changing the journal mode does not wait for locks by itself.
        let mode: String = retry_busy(busy_timeout, || {
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        })
        .map_err(store_err("switching to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Store {
                database: name,
                action: "switching to WAL mode".into(),
                error: format!("the journal mode stayed {mode}"),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(store_err("setting synchronous = FULL"))?;
        conn.set_prepared_statement_cache_capacity(32);
        // While a run reads records on another connection, that reader's
        // snapshot keeps checkpoints from finishing; trying after every
        // commit only costs time. `checkpoint()` runs one when done.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(store_err("setting wal_autocheckpoint"))?;
        retry_busy(busy_timeout, || schema::migrate(&mut conn, seen_table)).map_err(
            |e| match e {
                schema::MigrateError::Sql(error) => Error::Store {
                    database: name.clone(),
                    action: "creating spark's tables".into(),
                    error: super::sql_message(&error),
                },
                too_new => Error::OpenDatabase {
                    database: name.clone(),
                    error: too_new.to_string(),
                },
            },
        )?;
        let t = quote_ident(seen_table);
        Ok(SqliteStore {
            conn,
            path: path.to_owned(),
            name,
            seen_table: seen_table.to_owned(),
            busy_timeout,
            unsynced: std::cell::Cell::new(false),
            history: std::cell::RefCell::new(Vec::new()),
            sql: Statements {
                exists: format!("SELECT 1 FROM {t} WHERE \"key\" = ?1"),
                insert: format!(
                    "INSERT INTO {t} (\"key\", \"group\", \"created_at\", \"context\") \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING"
                ),
                load: format!(
                    "SELECT \"group\", \"context\", \"created_at\" FROM {t} WHERE \"key\" = ?1"
                ),
            },
        })
    }

    /// Copies what the WAL holds into the database file, as far as readers
    /// allow, without waiting for them (best effort: SQLite does it again
    /// later if this one cannot finish).
    pub fn checkpoint(&self) {
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::debug!(error = %e, "checkpoint skipped");
        }
    }

    /// The database this store writes to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for the SQLite-only queries of tests and benchmarks.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(super) fn error(
        &self,
        action: impl Into<String>,
    ) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        let action = action.into();
        move |error| match error {
            // A corrupt row, decoded inside a transaction: said as itself.
            rusqlite::Error::ToSqlConversionFailure(inner) => match inner.downcast::<Error>() {
                Ok(inner) => *inner,
                Err(other) => Error::Store {
                    database: self.name.clone(),
                    action,
                    error: other.to_string(),
                },
            },
            error => Error::Store {
                database: self.name.clone(),
                action,
                error: super::sql_message(&error),
            },
        }
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction. If the database
    /// stays busy (another connection holds its lock) longer than the busy
    /// handler waits, the whole transaction is tried again, until
    /// `busy_timeout` has passed.
    pub(super) fn write<T>(
        &self,
        action: &str,
        work: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.transact(action, true, work)
    }

    /// Like `write`, but the commit does not wait for the disk
    /// (`synchronous = NORMAL`): it survives the process being killed, and
    /// a power loss only once `make_durable` has run.
    fn write_lazy<T>(
        &self,
        action: &str,
        work: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let value = self.write_unsynced(action, true, work)?;
        self.unsynced.set(true);
        Ok(value)
    }

    /// Records the outcome of handler calls: a commit that does not wait
    /// for the disk, and that nothing waits on (a power loss can cost it,
    /// and then a delivered event is delivered again: at least once). The
    /// history entries held stay held (written `HISTORY_HELD` at a time), so
    /// that each outcome rewrites a page or two.
    fn write_outcome<T>(
        &self,
        action: &str,
        work: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.write_unsynced(action, false, work)
    }

    /// `write` with `synchronous = NORMAL` for this one commit.
    fn write_unsynced<T>(
        &self,
        action: &str,
        with_history: bool,
        work: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let set = |level: &str| {
            self.conn
                .pragma_update(None, "synchronous", level)
                .map_err(self.error(action))
        };
        set("NORMAL")?;
        let value = self.transact(action, with_history, work);
        set("FULL")?;
        value
    }

    /// Writes the held history entries now (a commit that need not wait
    /// for the disk).
    fn flush_history(&self) -> Result<()> {
        if self.history.borrow().is_empty() {
            return Ok(());
        }
        self.write_unsynced("recording the delivery history", true, |_| Ok(()))
    }

    /// One transaction; held history entries ride along `with_history`.
    fn transact<T>(
        &self,
        action: &str,
        with_history: bool,
        mut work: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        retry_busy(self.busy_timeout, || {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let done = work(&self.conn).and_then(|value| {
                let held = self.history.borrow();
                let flushed = with_history && !held.is_empty();
                if flushed {
                    insert_history(&self.conn, &held)?;
                }
                drop(held);
                self.conn.execute_batch("COMMIT")?;
                if flushed {
                    self.history.borrow_mut().clear();
                }
                Ok(value)
            });
            if done.is_err() && !self.conn.is_autocommit() {
                // Abandon the transaction; a failed rollback leaves nothing
                // committed either.
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            done
        })
        .map_err(self.error(action))
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Calls `op` until it is not refused for a busy database, or `timeout` passed.
fn retry_busy<T, E: AsSqlError>(
    timeout: Duration,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match op() {
            Err(e)
                if e.as_sql_error().is_some_and(is_busy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// Errors that may be SQLite's "database is busy".
trait AsSqlError {
    fn as_sql_error(&self) -> Option<&rusqlite::Error>;
}

impl AsSqlError for rusqlite::Error {
    fn as_sql_error(&self) -> Option<&rusqlite::Error> {
        Some(self)
    }
}

impl AsSqlError for schema::MigrateError {
    fn as_sql_error(&self) -> Option<&rusqlite::Error> {
        match self {
            schema::MigrateError::Sql(e) => Some(e),
            schema::MigrateError::TooNew { .. } => None,
        }
    }
}

/// A row of `DELIVERY_COLUMNS`, to decode (`DeliveryRow::decode`).
pub(crate) fn delivery_row(row: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: row.get(0)?,
        handler: row.get(1)?,
        keys: row.get(2)?,
        done: row.get(3)?,
        state: row.get(4)?,
        attempts: row.get(5)?,
        next_attempt_at: row.get(6)?,
        last_error: row.get(7)?,
        file_offset: row.get(8)?,
        created_at: row.get(9)?,
        file_id: row.get(10)?,
        claim: None,
    })
}

/// Rows decoded inside a transaction: a corrupt one is carried out as the
/// same error the model gives everywhere (see `SqliteStore::error`).
pub(crate) fn decoded(rows: Vec<DeliveryRow>, database: &str) -> rusqlite::Result<Vec<Delivery>> {
    DeliveryRow::decode_all(rows, database)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Handler names as a JSON array, for `IN (SELECT value FROM json_each(?))`.
fn names_json(names: &[&str]) -> String {
    serde_json::to_string(names).unwrap_or_else(|_| String::from("[]"))
}

pub(super) fn keys_json(keys: &[String]) -> String {
    serde_json::to_string(keys).unwrap_or_else(|_| String::from("[]"))
}

/// A file mark as the two columns that keep it.
fn mark_sql(mark: Option<FileMark>) -> (Option<i64>, Option<String>) {
    match mark {
        None => (None, None),
        Some(m) => (
            Some(i64::try_from(m.offset).unwrap_or(i64::MAX)),
            m.file.map(|f| f.to_string()),
        ),
    }
}

/// Inserts a one-key delivery split out of `from` and returns it.
fn insert_single(
    conn: &Connection,
    from: &Delivery,
    state: DeliveryState,
    failure: Option<&Failure>,
    now: &str,
) -> rusqlite::Result<Delivery> {
    let keys = vec![from.keys[from.done].clone()];
    let (attempts, next, error) = match failure {
        Some(f) => (
            f.attempts,
            f.next_attempt_at.unwrap_or(0),
            Some(f.error.clone()),
        ),
        None => (from.attempts, 0, None),
    };
    conn.prepare_cached(
        "INSERT INTO spark_delivery (handler, keys, done, state, attempts, next_attempt_at, \
         last_error, created_at, updated_at) VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?7)",
    )?
    .execute(params![
        from.handler,
        keys_json(&keys),
        state.as_str(),
        attempts,
        next,
        error,
        now
    ])?;
    Ok(Delivery {
        claim: None,
        id: conn.last_insert_rowid(),
        handler: from.handler.clone(),
        keys,
        done: 0,
        state,
        attempts,
        next_attempt_at: next,
        last_error: error,
        file_mark: None,
        created_at: now.to_owned(),
    })
}

/// Applies a `drop_plan`: deletes the deliveries that keep nothing, and
/// rewrites the keys of the others.
fn apply_changes(
    conn: &Connection,
    changes: &[(i64, Option<Vec<String>>)],
    now: &str,
) -> rusqlite::Result<()> {
    for (id, kept) in changes {
        match kept {
            None => {
                conn.execute("DELETE FROM spark_delivery WHERE id = ?1", [id])?;
            }
            Some(keys) => {
                conn.execute(
                    "UPDATE spark_delivery SET keys = ?2, updated_at = ?3 WHERE id = ?1",
                    params![id, keys_json(keys), now],
                )?;
            }
        }
    }
    Ok(())
}

/// Appends history entries.
fn insert_history(conn: &Connection, entries: &[HistoryEntry]) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO spark_history (key, handler, at, outcome, attempt, ms, error, by_whom) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for e in entries {
        insert.execute(params![
            e.key, e.handler, e.at, e.outcome, e.attempt, e.ms, e.error, e.by
        ])?;
    }
    Ok(())
}

fn delete_deliveries(conn: &Connection, ids: &[i64]) -> rusqlite::Result<()> {
    let mut delete = conn.prepare_cached("DELETE FROM spark_delivery WHERE id = ?1")?;
    for id in ids {
        delete.execute([id])?;
    }
    Ok(())
}

fn set_done(conn: &Connection, id: i64, done: usize, now: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE spark_delivery SET done = ?2, updated_at = ?3 WHERE id = ?1")?
        .execute(params![id, done as i64, now])?;
    Ok(())
}

fn failure_state(failure: &Failure) -> DeliveryState {
    if failure.next_attempt_at.is_some() {
        DeliveryState::Failed
    } else {
        DeliveryState::Dead
    }
}

impl Store for SqliteStore {
    fn name(&self) -> &str {
        &self.name
    }

    /// Syncs the write-ahead log, which holds every commit not yet copied
    /// into the database (a checkpoint syncs the log before it copies).
    fn make_durable(&mut self) -> Result<()> {
        if !self.unsynced.get() {
            return Ok(());
        }
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        match std::fs::File::open(&wal).and_then(|f| f.sync_data()) {
            Ok(()) => {}
            // No log: everything is in the database file already.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Store {
                    database: self.name.clone(),
                    action: "syncing the write-ahead log".into(),
                    error: e.to_string(),
                });
            }
        }
        self.unsynced.set(false);
        Ok(())
    }

    fn record_batch(
        &mut self,
        events: &[Event],
        contexts: &[Arc<str>],
        finished: &[i64],
        plan: &mut dyn FnMut(&[bool]) -> Vec<PlannedDelivery>,
    ) -> Result<Recorded> {
        let prepared = contexts.len() == events.len();
        let seen_at = clock::now_text();
        let sql = &self.sql;
        let (new, deliveries) = {
            let seen_at = seen_at.as_str();
            self.write_lazy("recording new events", |conn| {
                delete_deliveries(conn, finished)?;
                let mut exists = conn.prepare_cached(&sql.exists)?;
                let mut insert = conn.prepare_cached(&sql.insert)?;
                // In key order, each index page is visited once per batch
                // rather than once per event (the stable sort keeps the first
                // of repeated keys first).
                let mut order: Vec<usize> = (0..events.len()).collect();
                order.sort_by(|&a, &b| events[a].key.cmp(&events[b].key));
                let mut new: Vec<Option<Arc<str>>> = vec![None; events.len()];
                let mut serialized = ContextJson::default();
                for i in order {
                    let e = &events[i];
                    if prepared {
                        // Expecting new keys: the insert itself finds the seen ones.
                        let json = &contexts[i];
                        if insert.execute(params![e.key, e.group, seen_at, &**json])? == 1 {
                            new[i] = Some(json.clone());
                        }
                        continue;
                    }
                    if exists.exists([&e.key])? {
                        continue;
                    }
                    let json = serialized
                        .of(e)
                        .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
                    if insert.execute(params![e.key, e.group, seen_at, &*json])? == 1 {
                        new[i] = Some(json);
                    }
                }
                let mask: Vec<bool> = new.iter().map(Option::is_some).collect();
                let mut deliveries = Vec::new();
                let mut add = conn.prepare_cached(
                    "INSERT INTO spark_delivery (handler, keys, file_offset, file_id, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )?;
                for planned in plan(&mask) {
                    // One process delivers here: a batch is one delivery
                    // (a file sink's one write; calls in flight move their
                    // window over all of it), but for a handler called one
                    // event at a time, whose every outcome is a commit of
                    // its own: chunks, so that each rewrites a small row.
                    let chunk = if planned.file_sink
                        || planned.file_mark.is_some()
                        || planned.in_flight > 1
                    {
                        planned.events.len().max(1)
                    } else {
                        planned.chunk.max(1)
                    };
                    for indices in planned.events.chunks(chunk) {
                        let keys: Vec<String> =
                            indices.iter().map(|&i| events[i].key.clone()).collect();
                        let (offset, file_id) = mark_sql(planned.file_mark);
                        add.execute(params![
                            planned.handler,
                            keys_json(&keys),
                            offset,
                            file_id,
                            seen_at
                        ])?;
                        let delivery = Delivery {
                            claim: None,
                            id: conn.last_insert_rowid(),
                            handler: planned.handler.clone(),
                            keys,
                            done: 0,
                            state: DeliveryState::Pending,
                            attempts: 0,
                            next_attempt_at: 0,
                            last_error: None,
                            file_mark: planned.file_mark,
                            created_at: seen_at.to_owned(),
                        };
                        deliveries.push((delivery, indices.to_vec()));
                    }
                }
                Ok((new, deliveries))
            })?
        };
        Ok(Recorded {
            seen_at,
            new,
            deliveries,
        })
    }

    fn finish(&mut self, finished: &[i64]) -> Result<()> {
        if finished.is_empty() {
            return Ok(());
        }
        self.write_outcome("recording deliveries done", |conn| {
            delete_deliveries(conn, finished)
        })
    }

    fn mark_seen(&mut self, key: &str, group: &str, context_json: &str) -> Result<bool> {
        let now = clock::now_text();
        let insert = self.sql.insert.clone();
        self.write("marking a key seen", |conn| {
            Ok(conn
                .prepare_cached(&insert)?
                .execute(params![key, group, now, context_json])?
                == 1)
        })
    }

    fn load_events(&mut self, keys: &[String]) -> Result<Vec<Option<StoredEvent>>> {
        let load = |conn: &Connection| -> rusqlite::Result<Vec<Option<StoredEvent>>> {
            let mut stmt = conn.prepare_cached(&self.sql.load)?;
            keys.iter()
                .map(|key| {
                    stmt.query_row([key], |r| {
                        let group: String = r.get(0)?;
                        let context_json: String = r.get(1)?;
                        let seen_at: String = r.get(2)?;
                        Ok((group, context_json, seen_at))
                    })
                    .optional()
                    .map(|found| {
                        found.map(|(group, context_json, seen_at)| {
                            StoredEvent::from_stored(key, group, context_json, seen_at)
                        })
                    })
                })
                .collect()
        };
        load(&self.conn).map_err(self.error("loading events for delivery"))
    }

    fn bury_interrupted(&mut self, error: &str) -> Result<usize> {
        let now = clock::now_text();
        self.write("burying interrupted deliveries", |conn| {
            conn.execute(
                "UPDATE spark_delivery SET state = 'dead', attempts = attempts + 1, \
                 last_error = ?1, updated_at = ?2 WHERE state = 'in_flight'",
                params![error, now],
            )
        })
    }

    fn marked(&mut self, handlers: &[&str]) -> Result<Vec<Delivery>> {
        let query = |conn: &Connection| -> rusqlite::Result<Vec<Delivery>> {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM spark_delivery WHERE {MARKED} \
                 AND handler IN (SELECT value FROM json_each(?1)) ORDER BY id"
            ))?;
            let rows = stmt
                .query_map([names_json(handlers)], delivery_row)?
                .collect::<rusqlite::Result<_>>()?;
            decoded(rows, &self.name)
        };
        query(&self.conn).map_err(self.error("listing deliveries to settle"))
    }

    fn claim_due(&mut self, now_ms: i64, handlers: &[&str]) -> Result<Vec<Delivery>> {
        // One run at a time holds the database (the run lock): what it
        // reads is its own, nothing to mark.
        let query = |conn: &Connection| -> rusqlite::Result<Vec<Delivery>> {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM spark_delivery WHERE ({CLAIMABLE}) \
                 AND handler IN (SELECT value FROM json_each(?2)) ORDER BY id LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(
                    params![now_ms, names_json(handlers), CLAIM_LIMIT],
                    delivery_row,
                )?
                .collect::<rusqlite::Result<_>>()?;
            decoded(rows, &self.name)
        };
        query(&self.conn).map_err(self.error("listing due deliveries"))
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        let rows = all_deliveries(&self.conn).map_err(self.error("listing deliveries"))?;
        DeliveryRow::decode_all(rows, &self.name)
    }

    fn finish_run(&mut self) -> Result<()> {
        self.flush_history()?;
        self.checkpoint();
        Ok(())
    }

    fn reset_for_retry(&mut self, query: &DeliveryQuery) -> Result<Vec<Delivery>> {
        let now = clock::now_text();
        self.write("making deliveries due", |conn| {
            let mut selected: Vec<Delivery> = decoded(all_deliveries(conn)?, &self.name)?
                .into_iter()
                .filter(|d| query.matches(d))
                .collect();
            let mut reset = conn.prepare(
                "UPDATE spark_delivery SET state = 'pending', attempts = 0, next_attempt_at = 0, \
                 file_offset = NULL, file_id = NULL, updated_at = ?2 WHERE id = ?1",
            )?;
            for d in &mut selected {
                reset.execute(params![d.id, now])?;
                d.state = DeliveryState::Pending;
                d.attempts = 0;
                d.next_attempt_at = 0;
                d.file_mark = None;
            }
            Ok(selected)
        })
    }

    fn forget(&mut self, keys: &[String]) -> Result<Forgotten> {
        let delete_sql = format!(
            "DELETE FROM {} WHERE \"key\" = ?1",
            quote_ident(&self.seen_table)
        );
        let now = clock::now_text();
        self.write("forgetting keys", |conn| {
            let mut report = Forgotten::default();
            let mut delete = conn.prepare(&delete_sql)?;
            for key in keys {
                if delete.execute([key])? > 0 {
                    report.forgotten.push(key.clone());
                } else {
                    report.unknown.push(key.clone());
                }
            }
            let changes = report.plan(&decoded(all_deliveries(conn)?, &self.name)?, keys);
            apply_changes(conn, &changes, &now)?;
            Ok(report)
        })
    }

    fn prune(&mut self, cutoff: &str, group: Option<&Regex>, dry_run: bool) -> Result<Pruned> {
        let table = quote_ident(&self.seen_table);
        let page_sql = format!(
            "SELECT \"key\", \"group\" FROM {table} WHERE \"created_at\" < ?1 AND \"key\" > ?2 \
             ORDER BY \"key\" LIMIT 5000"
        );
        let delete_sql = format!("DELETE FROM {table} WHERE \"key\" = ?1");
        let owed = owed_keys(&self.deliveries()?);
        let mut report = Pruned::default();
        let mut after = String::new();
        loop {
            let page: Vec<(String, String)> = {
                let mut stmt = self
                    .conn
                    .prepare_cached(&page_sql)
                    .map_err(self.error("listing old events"))?;
                stmt.query_map(params![cutoff, after], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect())
                    .map_err(self.error("listing old events"))?
            };
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let doomed: Vec<&String> = page
                .iter()
                .filter(|(_, g)| group.is_none_or(|re| re.is_match(g)))
                .filter_map(|(k, _)| {
                    if owed.contains(k) {
                        report.kept_undelivered += 1;
                        None
                    } else {
                        Some(k)
                    }
                })
                .collect();
            report.pruned += doomed.len() as u64;
            if !dry_run && !doomed.is_empty() {
                self.write("pruning old events", |conn| {
                    let mut delete = conn.prepare_cached(&delete_sql)?;
                    for key in &doomed {
                        delete.execute([key])?;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(report)
    }

    fn set_file_mark(&mut self, delivery: &mut Delivery, mark: Option<FileMark>) -> Result<()> {
        let now = clock::now_text();
        let id = delivery.id;
        let (offset, file_id) = mark_sql(mark);
        self.write("recording a file offset", |conn| {
            conn.prepare_cached(
                "UPDATE spark_delivery SET file_offset = ?2, file_id = ?3, updated_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id, offset, file_id, now])
        })?;
        delivery.file_mark = mark;
        Ok(())
    }

    fn advance(&mut self, delivery: &mut Delivery, done: usize) -> Result<()> {
        let now = clock::now_text();
        let id = delivery.id;
        let finished = done >= delivery.keys.len();
        self.write_outcome("recording deliveries done", |conn| {
            if finished {
                delete_deliveries(conn, &[id])
            } else {
                set_done(conn, id, done, &now)
            }
        })?;
        delivery.done = done;
        Ok(())
    }

    fn fail_next(&mut self, delivery: &mut Delivery, failure: &Failure) -> Result<()> {
        if delivery.remaining().len() <= 1 {
            return self.fail_rest(delivery, failure);
        }
        let now = clock::now_text();
        let state = failure_state(failure);
        let from = delivery.clone();
        self.write_outcome("recording a failed delivery", |conn| {
            insert_single(conn, &from, state, Some(failure), &now)?;
            set_done(conn, from.id, from.done + 1, &now)
        })?;
        delivery.done += 1;
        Ok(())
    }

    fn fail_rest(&mut self, delivery: &mut Delivery, failure: &Failure) -> Result<()> {
        let now = clock::now_text();
        let state = failure_state(failure);
        let id = delivery.id;
        self.write_outcome("recording a failed delivery", |conn| {
            conn.prepare_cached(
                "UPDATE spark_delivery SET state = ?2, attempts = ?3, next_attempt_at = ?4, \
                 last_error = ?5, file_offset = NULL, file_id = NULL, updated_at = ?6 WHERE id = ?1",
            )?
            .execute(params![
                id,
                state.as_str(),
                failure.attempts,
                failure.next_attempt_at.unwrap_or(0),
                failure.error,
                now
            ])
        })?;
        delivery.state = state;
        delivery.attempts = failure.attempts;
        delivery.next_attempt_at = failure.next_attempt_at.unwrap_or(0);
        delivery.last_error = Some(failure.error.clone());
        delivery.file_mark = None;
        Ok(())
    }

    fn add_history(&mut self, entries: &[HistoryEntry]) -> Result<()> {
        self.history.borrow_mut().extend_from_slice(entries);
        if self.history.borrow().len() >= HISTORY_HELD {
            self.flush_history()?;
        }
        Ok(())
    }

    fn prune_history(&mut self, cutoff: &str) -> Result<u64> {
        self.write("pruning the delivery history", |conn| {
            conn.execute("DELETE FROM spark_history WHERE at < ?1", [cutoff])
        })
        .map(|n| n as u64)
    }

    fn drop_owed(
        &mut self,
        changes: &[(i64, Option<Vec<String>>)],
        history: &[HistoryEntry],
    ) -> Result<usize> {
        let now = clock::now_text();
        self.write("dropping deliveries", |conn| {
            apply_changes(conn, changes, &now)?;
            insert_history(conn, history)?;
            Ok(changes.len())
        })
    }

    fn reassign(&mut self, from: &str, to: &str, history: &[HistoryEntry]) -> Result<u64> {
        let now = clock::now_text();
        self.write("handing deliveries to another handler", |conn| {
            let n = conn.execute(
                "UPDATE spark_delivery SET handler = ?2, updated_at = ?3 WHERE handler = ?1",
                params![from, to, now],
            )?;
            insert_history(conn, history)?;
            Ok(n as u64)
        })
    }

    fn add_deliveries(
        &mut self,
        handler: &str,
        keys: &[String],
        chunk: usize,
        _file_sink: bool,
        history: &[HistoryEntry],
    ) -> Result<u64> {
        let now = clock::now_text();
        self.write("adding deliveries", |conn| {
            let mut insert = conn.prepare_cached(
                "INSERT INTO spark_delivery (handler, keys, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?3)",
            )?;
            let mut n = 0;
            for part in keys.chunks(chunk.max(1)) {
                insert.execute(params![handler, keys_json(part), now])?;
                n += 1;
            }
            insert_history(conn, history)?;
            Ok(n)
        })
    }

    fn begin_at_most_once(&mut self, delivery: &mut Delivery) -> Result<Delivery> {
        let now = clock::now_text();
        if delivery.remaining().len() <= 1 {
            let id = delivery.id;
            self.write("marking a delivery in flight", |conn| {
                conn.prepare_cached(
                    "UPDATE spark_delivery SET state = 'in_flight', updated_at = ?2 WHERE id = ?1",
                )?
                .execute(params![id, now])
            })?;
            delivery.state = DeliveryState::InFlight;
            return Ok(delivery.clone());
        }
        let from = delivery.clone();
        let single = self.write("marking a delivery in flight", |conn| {
            let single = insert_single(conn, &from, DeliveryState::InFlight, None, &now)?;
            set_done(conn, from.id, from.done + 1, &now)?;
            Ok(single)
        })?;
        delivery.done += 1;
        Ok(single)
    }
}
