//! The SQLite executor: spark's writes to the (django-spark compatible)
//! seen table of the records database and to `spark_delivery` and
//! `spark_history` beside it, as the delivery rules (`crate::store::machine`)
//! ask, one `BEGIN IMMEDIATE` transaction each.
//!
//! The connection runs in WAL mode with `synchronous = FULL`, so a commit
//! survives a power loss, and with a busy timeout, so that an application
//! writing to the same database makes spark wait, not fail (a transaction
//! still refused for a busy database is tried again until `busy_timeout`).
//! Batches and outcomes (`Commit::Batch`, `Commit::Outcome`) are committed
//! with `synchronous = NORMAL`: they survive spark being killed, not a power
//! loss until the log is synced (`make_durable`, before anything acts on a
//! batch). One run at a time works here (the run lock): claims are trivially
//! this process's, and fenced changes need no fence. Statements are prepared
//! once and reused.
//!
//! Not here: the rules (`crate::store::machine`), opening the database
//! read-only to validate it (`SqliteReader`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use super::{DELIVERY_COLUMNS, all_deliveries, schema};
use crate::backend::quote_ident;
use crate::clock;
use crate::error::{Error, Result};
use crate::store::driver::{Commit, Executor, NewDelivery, Rows, SeenRow};
use crate::store::{
    Delivery, DeliveryRow, DeliveryState, Failure, FileMark, HistoryEntry, NewMark, StoredEvent,
    keys_json,
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

/// The connection that writes one records database.
pub struct SqliteExecutor {
    conn: Connection,
    path: PathBuf,
    name: String,
    busy_timeout: Duration,
    sql: Statements,
    /// Batches committed since the write-ahead log was last made durable.
    unsynced: bool,
}

/// The SQL that names the seen table, built once.
struct Statements {
    exists: String,
    insert: String,
    load: String,
    delete: String,
    page: String,
}

impl SqliteExecutor {
    /// Opens the store in an existing database, switches it to WAL and
    /// creates or upgrades spark's tables.
    pub fn open(path: &Path, seen_table: &str, busy_timeout: Duration) -> Result<SqliteExecutor> {
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
        Ok(SqliteExecutor {
            conn,
            path: path.to_owned(),
            name,
            busy_timeout,
            unsynced: false,
            sql: Statements {
                exists: format!("SELECT 1 FROM {t} WHERE \"key\" = ?1"),
                insert: format!(
                    "INSERT INTO {t} (\"key\", \"group\", \"created_at\", \"context\") \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING"
                ),
                load: format!(
                    "SELECT \"group\", \"context\", \"created_at\" FROM {t} WHERE \"key\" = ?1"
                ),
                delete: format!("DELETE FROM {t} WHERE \"key\" = ?1"),
                page: format!(
                    "SELECT \"key\", \"group\" FROM {t} WHERE \"created_at\" < ?1 AND \"key\" > ?2 \
                     ORDER BY \"key\" LIMIT ?3"
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

    /// The connection, for the SQLite-only queries of tests and benchmarks.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, action: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        let action = action.to_owned();
        move |error| Error::Store {
            database: self.name.clone(),
            action: action.clone(),
            error: super::sql_message(&error),
        }
    }

    /// Sets `synchronous` for the commits that follow.
    fn synchronous(&self, level: &str, action: &str) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", level)
            .map_err(self.err(action))
    }

    /// One `BEGIN IMMEDIATE` transaction of `work`, tried again while the
    /// database stays busy, until `busy_timeout` has passed.
    fn transact(
        &self,
        action: &str,
        work: &mut dyn FnMut(&mut dyn Rows) -> Result<()>,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + self.busy_timeout;
        loop {
            let mut rows = SqliteRows {
                conn: &self.conn,
                sql: &self.sql,
                name: &self.name,
                action,
                now: clock::now_text(),
                busy: false,
            };
            let done = match self.conn.execute_batch("BEGIN IMMEDIATE") {
                Err(e) => Err(rows.fail(e)),
                Ok(()) => work(&mut rows)
                    .and_then(|()| self.conn.execute_batch("COMMIT").map_err(|e| rows.fail(e))),
            };
            let busy = rows.busy;
            if done.is_err() && !self.conn.is_autocommit() {
                // Abandon the transaction; a failed rollback leaves nothing
                // committed either.
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            match done {
                Err(_) if busy && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                other => return other,
            }
        }
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

/// Handler names as a JSON array, for `IN (SELECT value FROM json_each(?))`.
fn names_json(names: &[&str]) -> String {
    serde_json::to_string(names).unwrap_or_else(|_| String::from("[]"))
}

/// The row operations of one transaction.
struct SqliteRows<'a> {
    conn: &'a Connection,
    sql: &'a Statements,
    name: &'a str,
    action: &'a str,
    now: String,
    /// Whether an error was SQLite's "busy" (the transaction is tried again).
    busy: bool,
}

impl SqliteRows<'_> {
    fn fail(&mut self, error: rusqlite::Error) -> Error {
        self.busy |= is_busy(&error);
        Error::Store {
            database: self.name.to_owned(),
            action: self.action.to_owned(),
            error: super::sql_message(&error),
        }
    }

    /// Runs `op`, turning its error into the store's.
    fn run<T>(&mut self, op: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        op(self.conn).map_err(|e| self.fail(e))
    }

    /// Runs a cached statement with `params`; how many rows it changed.
    fn exec(&mut self, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
        self.run(|c| c.prepare_cached(sql)?.execute(params))
    }
}

impl Rows for SqliteRows<'_> {
    fn now(&self) -> &str {
        &self.now
    }

    fn seen_among(&mut self, keys: &[&str]) -> Result<HashSet<String>> {
        let sql = self.sql.exists.clone();
        self.run(|c| {
            let mut exists = c.prepare_cached(&sql)?;
            let mut seen = HashSet::new();
            for key in keys {
                if exists.exists([key])? {
                    seen.insert((*key).to_owned());
                }
            }
            Ok(seen)
        })
    }

    fn insert_seen(&mut self, rows: &[SeenRow<'_>]) -> Result<Vec<bool>> {
        let (sql, now) = (self.sql.insert.clone(), self.now.clone());
        self.run(|c| {
            let mut insert = c.prepare_cached(&sql)?;
            // In key order, each index page is visited once per batch
            // rather than once per event (the stable sort keeps the first
            // of repeated keys first).
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.sort_by(|&a, &b| rows[a].key.cmp(rows[b].key));
            let mut inserted = vec![false; rows.len()];
            for i in order {
                let r = &rows[i];
                inserted[i] = insert.execute(params![r.key, r.group, now, r.context])? == 1;
            }
            Ok(inserted)
        })
    }

    fn delete_seen(&mut self, keys: &[String]) -> Result<Vec<String>> {
        let sql = self.sql.delete.clone();
        self.run(|c| {
            let mut delete = c.prepare_cached(&sql)?;
            let mut gone = Vec::new();
            for key in keys {
                if delete.execute([key])? > 0 {
                    gone.push(key.clone());
                }
            }
            Ok(gone)
        })
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        let rows = self.run(all_deliveries)?;
        DeliveryRow::decode_all(rows, self.name)
    }

    fn held_by_others(&mut self) -> Result<HashSet<i64>> {
        // One run at a time: nobody else holds anything.
        Ok(HashSet::new())
    }

    fn insert_deliveries(&mut self, rows: &[NewDelivery]) -> Result<Vec<Option<i64>>> {
        let now = self.now.clone();
        self.run(|c| {
            let mut insert = c.prepare_cached(
                "INSERT INTO spark_delivery (handler, keys, state, attempts, next_attempt_at, \
                 last_error, file_offset, file_id, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
            )?;
            let mut ids = Vec::with_capacity(rows.len());
            for r in rows {
                let (offset, file_id) = FileMark::columns(r.file_mark);
                insert.execute(params![
                    r.handler,
                    keys_json(&r.keys),
                    r.state.as_str(),
                    r.attempts,
                    r.next_attempt_at,
                    r.last_error,
                    offset,
                    file_id,
                    now
                ])?;
                ids.push(Some(c.last_insert_rowid()));
            }
            Ok(ids)
        })
    }

    fn set_done(&mut self, id: i64, done: usize) -> Result<bool> {
        let now = self.now.clone();
        self.exec(
            "UPDATE spark_delivery SET done = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, done as i64, now],
        )
        .map(|n| n == 1)
    }

    fn delete_finished(&mut self, ids: &[i64]) -> Result<u64> {
        self.run(|c| {
            let mut delete = c.prepare_cached("DELETE FROM spark_delivery WHERE id = ?1")?;
            let mut n = 0;
            for id in ids {
                n += delete.execute([id])? as u64;
            }
            Ok(n)
        })
    }

    fn set_failed(&mut self, id: i64, state: DeliveryState, failure: &Failure) -> Result<bool> {
        let now = self.now.clone();
        self.exec(
            "UPDATE spark_delivery SET state = ?2, attempts = ?3, next_attempt_at = ?4, \
             last_error = ?5, file_offset = NULL, file_id = NULL, updated_at = ?6 WHERE id = ?1",
            params![
                id,
                state.as_str(),
                failure.attempts,
                failure.next_attempt_at.unwrap_or(0),
                failure.error,
                now
            ],
        )
        .map(|n| n == 1)
    }

    fn set_in_flight(&mut self, id: i64) -> Result<bool> {
        let now = self.now.clone();
        self.exec(
            "UPDATE spark_delivery SET state = 'in_flight', updated_at = ?2 WHERE id = ?1",
            params![id, now],
        )
        .map(|n| n == 1)
    }

    fn set_file_mark(&mut self, id: i64, mark: Option<FileMark>) -> Result<bool> {
        let now = self.now.clone();
        let (offset, file_id) = FileMark::columns(mark);
        self.exec(
            "UPDATE spark_delivery SET file_offset = ?2, file_id = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, offset, file_id, now],
        )
        .map(|n| n == 1)
    }

    fn delete_deliveries(&mut self, ids: &[i64]) -> Result<()> {
        self.delete_finished(ids).map(drop)
    }

    fn set_keys(&mut self, id: i64, keys: &[String]) -> Result<()> {
        let now = self.now.clone();
        self.exec(
            "UPDATE spark_delivery SET keys = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, keys_json(keys), now],
        )
        .map(drop)
    }

    fn reset(&mut self, ids: &[i64]) -> Result<HashSet<i64>> {
        let now = self.now.clone();
        self.run(|c| {
            let mut reset = c.prepare_cached(
                "UPDATE spark_delivery SET state = 'pending', attempts = 0, next_attempt_at = 0, \
                 file_offset = NULL, file_id = NULL, updated_at = ?2 WHERE id = ?1",
            )?;
            let mut done = HashSet::new();
            for id in ids {
                if reset.execute(params![id, now])? == 1 {
                    done.insert(*id);
                }
            }
            Ok(done)
        })
    }

    fn rename_handler(&mut self, from: &str, to: &str) -> Result<u64> {
        let now = self.now.clone();
        self.exec(
            "UPDATE spark_delivery SET handler = ?2, updated_at = ?3 WHERE handler = ?1",
            params![from, to, now],
        )
        .map(|n| n as u64)
    }

    fn bury_interrupted(&mut self, error: &str) -> Result<u64> {
        let now = self.now.clone();
        self.exec(
            "UPDATE spark_delivery SET state = 'dead', attempts = attempts + 1, \
             last_error = ?1, updated_at = ?2 WHERE state = 'in_flight'",
            params![error, now],
        )
        .map(|n| n as u64)
    }

    fn insert_history(&mut self, entries: &[HistoryEntry]) -> Result<()> {
        self.run(|c| {
            let mut insert = c.prepare_cached(
                "INSERT INTO spark_history (key, handler, at, outcome, attempt, ms, error, by_whom) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for e in entries {
                insert.execute(params![
                    e.key, e.handler, e.at, e.outcome, e.attempt, e.ms, e.error, e.by
                ])?;
            }
            Ok(())
        })
    }

    fn delete_history_before(&mut self, cutoff: &str) -> Result<u64> {
        self.exec("DELETE FROM spark_history WHERE at < ?1", [cutoff])
            .map(|n| n as u64)
    }

    fn set_cursor(&mut self, mark: &NewMark) -> Result<()> {
        let s = &mark.state;
        let sql = if mark.full {
            "INSERT INTO spark_cursor (source, fingerprint, mark, full_at, full_as_of) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (source) DO UPDATE SET \
             fingerprint = excluded.fingerprint, mark = excluded.mark, \
             full_at = excluded.full_at, full_as_of = excluded.full_as_of"
        } else {
            "UPDATE spark_cursor SET mark = ?3 WHERE source = ?1 AND fingerprint = ?2 \
             AND full_at = ?4 AND full_as_of = ?5"
        };
        self.exec(
            sql,
            params![s.source, s.fingerprint, s.mark, s.full_at, s.full_as_of],
        )
        .map(drop)
    }

    fn delete_cursors(&mut self) -> Result<()> {
        self.exec("DELETE FROM spark_cursor", params![]).map(drop)
    }
}

impl Executor for SqliteExecutor {
    fn name(&self) -> &str {
        &self.name
    }

    fn worker(&self) -> Option<&str> {
        None
    }

    fn write(
        &mut self,
        action: &str,
        commit: Commit,
        _single: bool,
        work: &mut dyn FnMut(&mut dyn Rows) -> Result<()>,
    ) -> Result<()> {
        if commit == Commit::Durable {
            return self.transact(action, work);
        }
        self.synchronous("NORMAL", action)?;
        let done = self.transact(action, work);
        self.synchronous("FULL", action)?;
        if commit == Commit::Batch && done.is_ok() {
            self.unsynced = true;
        }
        done
    }

    /// Syncs the write-ahead log, which holds every commit not yet copied
    /// into the database (a checkpoint syncs the log before it copies).
    fn make_durable(&mut self) -> Result<()> {
        if !self.unsynced {
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
        self.unsynced = false;
        Ok(())
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
        load(&self.conn).map_err(self.err("loading events for delivery"))
    }

    fn claim_due(&mut self, now_ms: i64, handlers: &[&str]) -> Result<Vec<Delivery>> {
        // One run at a time holds the database (the run lock): what it
        // reads is its own, nothing to mark.
        let rows = self
            .conn
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM spark_delivery WHERE ({CLAIMABLE}) \
                 AND handler IN (SELECT value FROM json_each(?2)) ORDER BY id LIMIT ?3"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(
                    params![now_ms, names_json(handlers), CLAIM_LIMIT],
                    delivery_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.err("listing due deliveries"))?;
        DeliveryRow::decode_all(rows, &self.name)
    }

    fn marked(&mut self, handlers: &[&str]) -> Result<Vec<Delivery>> {
        let rows = self
            .conn
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM spark_delivery WHERE {MARKED} \
                 AND handler IN (SELECT value FROM json_each(?1)) ORDER BY id"
            ))
            .and_then(|mut stmt| {
                stmt.query_map([names_json(handlers)], delivery_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.err("listing deliveries to settle"))?;
        DeliveryRow::decode_all(rows, &self.name)
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        let rows = all_deliveries(&self.conn).map_err(self.err("listing deliveries"))?;
        DeliveryRow::decode_all(rows, &self.name)
    }

    fn seen_before(
        &mut self,
        cutoff: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached(&self.sql.page)
            .and_then(|mut stmt| {
                stmt.query_map(params![cutoff, after, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect()
            })
            .map_err(self.err("listing old events"))
    }

    fn finish_run(&mut self) -> Result<()> {
        self.checkpoint();
        Ok(())
    }
}
