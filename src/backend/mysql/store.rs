//! The MySQL and MariaDB executor, shared by any number of spark processes:
//! the SQL of MySQL for the delivery rules (`crate::store::machine`).
//!
//! - **Keys**, without RETURNING and never with INSERT IGNORE (which turns
//!   every error into a warning): a batch's rows go into a temporary table
//!   keyed like the seen table (its collation decides, as everywhere in
//!   this database, which keys are the same); a join says which are seen;
//!   the others are inserted with a plain `INSERT ... SELECT` in key order.
//!   A key another worker recorded meanwhile makes that insert fail on the
//!   primary key (1062), and the batch is tried again: a key is recorded
//!   once, and gets its deliveries once, whichever process reads it first.
//! - **Claims**: `SELECT ... FOR UPDATE SKIP LOCKED` picks a delivery nobody
//!   holds, an `UPDATE` by primary key gives it a lease (measured by the
//!   database's clock), renewed by a heartbeat thread while the process
//!   lives; every change to a claimed delivery is fenced (`AND claimed_by =
//!   me`), on a connection whose UPDATEs report the rows they matched.
//! - **Retries**: a deadlock (1213), a lock wait timeout (1205) or a key
//!   recorded by another worker meanwhile (1062) tries the transaction
//!   again.
//! - **Commits**: InnoDB's durability is the server's
//!   (`innodb_flush_log_at_trx_commit`); MySQL has no per-session
//!   asynchronous commit, so every commit of spark waits for it.
//!
//! Not here: the rules, the schema (`schema.rs`) or read-only queries
//! (`MysqlReader`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, Row, TxOpts, Value};

use super::CREATED_AT_TEXT;
use super::{DELIVERY_COLUMNS, NOW_MS, connect, message, placeholders, quote, schema, store_err};
use crate::clock;
use crate::config::MysqlConfig;
use crate::error::{Error, Result};
use crate::store::driver::{
    Commit, Executor, Heartbeat, NewDelivery, Rows, SeenRow, retry_transient,
};
use crate::store::{
    Claim, Delivery, DeliveryRow, DeliveryState, Failure, FileMark, HistoryEntry, NewMark,
    StoredEvent, keys_json,
};

/// How many times a transaction is tried when another one is in its way.
const RETRIES: u32 = 8;

/// Bytes of values per statement at most (the server refuses packets over
/// `max_allowed_packet`, 16 MiB by default).
const STATEMENT_BYTES: usize = 4 << 20;

/// Values per statement at most (a prepared statement takes 65,535).
const STATEMENT_VALUES: usize = 60_000;

/// The connection of one spark process that writes.
pub struct MysqlExecutor {
    /// The connection, shared with the heartbeat.
    conn: Arc<Mutex<Conn>>,
    who: Who,
    /// Renews this process's leases while it lives; stops when dropped.
    _heartbeat: Heartbeat,
}

/// What every row operation needs to know of the executor.
struct Who {
    name: String,
    /// This process, as it signs its claims: `host:pid:random`.
    me: String,
    host: String,
    lease_ms: i64,
    /// The seen table, quoted.
    seen: String,
    /// The session's sql_mode has NO_BACKSLASH_ESCAPES (how a literal is
    /// written).
    no_backslash_escape: bool,
}

/// Renews this process's leases every third of a lease (see `Heartbeat`).
fn heartbeat(conn: Arc<Mutex<Conn>>, me: &str, lease: Duration) -> Heartbeat {
    let me = me.to_owned();
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    Heartbeat::start(lease, move || {
        let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
        let renewed = c.exec_drop(
            format!(
                "UPDATE `spark_delivery` SET `lease_until` = {NOW_MS} + ? \
                 WHERE `claimed_by` = ? AND `lease_until` >= {NOW_MS}"
            ),
            (lease_ms, &me),
        );
        if let Err(e) = renewed {
            tracing::warn!(
                error = message(&e).as_str(),
                "renewing this worker's leases failed; other workers take its deliveries over when they run out"
            );
        }
        std::ops::ControlFlow::Continue(())
    })
}

/// A row of `DELIVERY_COLUMNS`, to decode (`DeliveryRow::decode`).
pub(crate) fn delivery_row(mut row: Row) -> std::result::Result<DeliveryRow, String> {
    fn take<T: mysql::prelude::FromValue>(
        row: &mut Row,
        i: usize,
    ) -> std::result::Result<T, String> {
        match row.take_opt::<T, usize>(i) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(format!("column {i} of spark_delivery: {e}")),
            None => Err(format!("column {i} of spark_delivery is missing")),
        }
    }
    let worker: Option<String> = take(&mut row, 11)?;
    let lease_until: Option<i64> = take(&mut row, 12)?;
    Ok(DeliveryRow {
        id: take(&mut row, 0)?,
        handler: take(&mut row, 1)?,
        keys: take(&mut row, 2)?,
        done: take(&mut row, 3)?,
        state: take(&mut row, 4)?,
        attempts: take(&mut row, 5)?,
        next_attempt_at: take(&mut row, 6)?,
        last_error: take(&mut row, 7)?,
        file_offset: take(&mut row, 8)?,
        created_at: take(&mut row, 9)?,
        file_id: take(&mut row, 10)?,
        claim: worker
            .zip(lease_until)
            .map(|(worker, until_ms)| Claim { worker, until_ms }),
    })
}

/// Every delivery not finished yet, oldest first, decoded.
pub(crate) fn all_deliveries(conn: &mut impl Queryable, database: &str) -> Result<Vec<Delivery>> {
    let fail = |error: String| Error::Store {
        database: database.to_owned(),
        action: "listing deliveries".into(),
        error,
    };
    let rows: Vec<Row> = conn
        .query(format!(
            "SELECT {DELIVERY_COLUMNS} FROM `spark_delivery` ORDER BY `id`"
        ))
        .map_err(|e| fail(message(&e)))?;
    let rows = rows
        .into_iter()
        .map(delivery_row)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(fail)?;
    DeliveryRow::decode_all(rows, database)
}

/// Whether an error is another transaction in the way: worth trying again.
fn is_transient(e: &mysql::Error) -> bool {
    matches!(e, mysql::Error::MySqlError(m) if matches!(m.code, 1213 | 1205 | 1062))
}

impl MysqlExecutor {
    /// Connects, creates or upgrades spark's tables (when needed), makes the
    /// batch table, and starts renewing this process's leases.
    pub fn open(my: &MysqlConfig, seen_table: &str) -> Result<MysqlExecutor> {
        let mut conn = connect(my, true)?.conn;
        let name = my.describe();
        schema::migrate(&mut conn, seen_table).map_err(|e| match e {
            schema::MigrateError::TooNew { .. } => Error::OpenDatabase {
                database: name.clone(),
                error: e.to_string(),
            },
            schema::MigrateError::Sql(error) => Error::Store {
                database: name.clone(),
                action: "creating spark's tables".into(),
                error: message(&error),
            },
        })?;
        // A role missing a privilege would fail at its first write, after
        // a handler was called: said now, before anything happens.
        let lacking = missing_privileges(&mut conn, seen_table)
            .map_err(store_err(&name, "checking privileges"))?;
        if !lacking.is_empty() {
            return Err(Error::Store {
                database: name,
                action: "checking privileges".into(),
                error: lacking.join("; "),
            });
        }
        let seen = quote(seen_table);
        // The batch table can be made (CREATE TEMPORARY TABLES): said now.
        conn.query_drop(batch_table_sql(&seen).join("; "))
            .map_err(store_err(&name, "making the batch table"))?;
        let (host, me) = crate::store::driver::worker_names();
        let no_backslash_escape = conn.no_backslash_escape();
        let conn = Arc::new(Mutex::new(conn));
        Ok(MysqlExecutor {
            _heartbeat: heartbeat(conn.clone(), &me, my.lease),
            conn,
            who: Who {
                name,
                me,
                host,
                lease_ms: i64::try_from(my.lease.as_millis()).unwrap_or(i64::MAX),
                seen,
                no_backslash_escape,
            },
        })
    }

    fn conn(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, action: &str) -> impl Fn(mysql::Error) -> Error + use<> {
        store_err(&self.who.name, action)
    }

    /// Gives this process's claims back (but an at-most-once call's).
    fn let_go(&self) -> std::result::Result<(), mysql::Error> {
        self.conn().exec_drop(
            "UPDATE `spark_delivery` SET `claimed_by` = NULL, `lease_until` = NULL \
             WHERE `claimed_by` = ? AND `state` <> 'in_flight'",
            (&self.who.me,),
        )
    }

    /// Claims one delivery `pick` selects (an `id ... FOR UPDATE SKIP
    /// LOCKED` query) and returns it.
    fn claim(&mut self, action: &str, pick: &str, params: Vec<Value>) -> Result<Vec<Delivery>> {
        let fail = self.err(action);
        let (me, lease) = (self.who.me.clone(), self.who.lease_ms);
        let mut conn = self.conn();
        let mut tx = conn.start_transaction(TxOpts::default()).map_err(&fail)?;
        let ids: Vec<i64> = tx.exec(pick, params).map_err(&fail)?;
        let mut rows = Vec::new();
        if !ids.is_empty() {
            let list = placeholders(ids.len());
            let mut p: Vec<Value> = vec![me.into(), lease.into()];
            p.extend(ids.iter().map(|id| Value::from(*id)));
            tx.exec_drop(
                format!(
                    "UPDATE `spark_delivery` SET `claimed_by` = ?, `lease_until` = {NOW_MS} + ? \
                     WHERE `id` IN ({list})"
                ),
                p,
            )
            .map_err(&fail)?;
            let found: Vec<Row> = tx
                .exec(
                    format!(
                        "SELECT {DELIVERY_COLUMNS} FROM `spark_delivery` WHERE `id` IN ({list}) ORDER BY `id`"
                    ),
                    ids,
                )
                .map_err(&fail)?;
            for row in found {
                rows.push(delivery_row(row).map_err(|e| Error::Store {
                    database: self.who.name.clone(),
                    action: action.to_owned(),
                    error: e,
                })?);
            }
        }
        tx.commit().map_err(&fail)?;
        drop(conn);
        DeliveryRow::decode_all(rows, &self.who.name)
    }
}

/// The statements that make the batch table afresh: the seen table's key,
/// group and context columns (their types and collations), keyed like it.
/// Made again for each batch rather than emptied: rows deleted from an
/// InnoDB table stay behind as long as another connection's read (the
/// source's records, streamed) is open, and every batch would read them
/// all again. (DDL on a temporary table commits nothing.)
fn batch_table_sql(seen: &str) -> [String; 3] {
    [
        "DROP TEMPORARY TABLE IF EXISTS `spark_batch`".to_owned(),
        format!(
            "CREATE TEMPORARY TABLE `spark_batch` ENGINE=InnoDB \
             SELECT `key` AS `k`, `group` AS `g`, `context` AS `c` FROM {seen} LIMIT 0"
        ),
        "ALTER TABLE `spark_batch` ADD COLUMN `i` integer NOT NULL, ADD PRIMARY KEY (`k`)"
            .to_owned(),
    ]
}

/// A process that stops any way but a kill gives its claims back at once.
impl Drop for MysqlExecutor {
    fn drop(&mut self) {
        if let Err(e) = self.let_go() {
            tracing::debug!(error = message(&e).as_str(), "giving claims back failed");
        }
    }
}

/// The row operations of one transaction (or of one statement of its own).
struct MyRows<'a, C: Queryable> {
    c: &'a mut C,
    who: &'a Who,
    action: &'a str,
    now: String,
    /// Whether an error was another transaction in the way.
    transient: bool,
}

impl<C: Queryable> MyRows<'_, C> {
    fn fail(&mut self, e: mysql::Error) -> Error {
        self.transient |= is_transient(&e);
        Error::Store {
            database: self.who.name.clone(),
            action: self.action.to_owned(),
            error: message(&e),
        }
    }

    /// Runs a statement; how many rows it matched (or inserted).
    fn exec(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        let done = self.c.exec_iter(sql, params).map(|r| r.affected_rows());
        done.map_err(|e| self.fail(e))
    }

    fn ids(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<i64>> {
        self.c.exec(sql, params).map_err(|e| self.fail(e))
    }
}

/// Splits `rows` into statements of at most `STATEMENT_BYTES` of values
/// (and `STATEMENT_VALUES` values of `width` per row).
fn statement_chunks<T>(rows: &[T], width: usize, bytes: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let b = bytes(row);
        if i > start && (size + b > STATEMENT_BYTES || (i - start + 1) * width > STATEMENT_VALUES) {
            chunks.push(&rows[start..i]);
            start = i;
            size = 0;
        }
        size += b;
    }
    if start < rows.len() {
        chunks.push(&rows[start..]);
    }
    chunks
}

impl<C: Queryable> MyRows<'_, C> {
    /// The common case, a batch of keys none of which is seen: one plain
    /// INSERT of them all, in key order. A key already there (or repeated
    /// in the batch, or recorded by another worker meanwhile) fails it on
    /// the primary key, which undoes the statement alone: `None`, and the
    /// batch goes the careful way.
    fn insert_all_new(&mut self, rows: &[SeenRow<'_>]) -> Result<Option<Vec<bool>>> {
        let bytes: usize = rows
            .iter()
            .map(|r| r.key.len() + r.group.len() + r.context.len() + 16)
            .sum();
        if bytes > STATEMENT_BYTES || rows.len() * 4 > STATEMENT_VALUES {
            return Ok(None);
        }
        let mut order: Vec<&SeenRow<'_>> = rows.iter().collect();
        order.sort_by(|a, b| a.key.cmp(b.key));
        let mut params: Vec<Value> = Vec::with_capacity(rows.len() * 4);
        for r in order {
            params.push(r.key.into());
            params.push(r.group.into());
            params.push(self.now.as_str().into());
            params.push(r.context.into());
        }
        let values = vec!["(?, ?, ?, ?)"; rows.len()].join(", ");
        let sql = format!(
            "INSERT INTO {} (`key`, `group`, `created_at`, `context`) VALUES {values}",
            self.who.seen
        );
        let done = self.c.exec_iter(sql, params).map(|r| r.affected_rows());
        match done {
            Ok(n) if n == rows.len() as u64 => Ok(Some(vec![true; rows.len()])),
            Ok(_) => Err(Error::Store {
                database: self.who.name.clone(),
                action: self.action.to_owned(),
                error: "an INSERT of new keys inserted another number of rows".into(),
            }),
            Err(mysql::Error::MySqlError(e)) if e.code == 1062 => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }
}

impl<C: Queryable> Rows for MyRows<'_, C> {
    fn now(&self) -> &str {
        &self.now
    }

    fn seen_among(&mut self, keys: &[&str]) -> Result<HashSet<String>> {
        let mut seen = HashSet::new();
        for chunk in keys.chunks(1000) {
            // As literals (escaped by the driver, which knows the session's
            // sql_mode): a list of parameters is not planned as well.
            let list: Vec<String> = chunk
                .iter()
                .map(|k| Value::from(*k).as_sql(self.who.no_backslash_escape))
                .collect();
            let sql = format!(
                "SELECT `key` FROM {} WHERE `key` IN ({})",
                self.who.seen,
                list.join(", ")
            );
            let found: Vec<String> = self.c.query(sql).map_err(|e| self.fail(e))?;
            seen.extend(found);
        }
        Ok(seen)
    }

    fn insert_seen(&mut self, rows: &[SeenRow<'_>]) -> Result<Vec<bool>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(all_new) = self.insert_all_new(rows)? {
            return Ok(all_new);
        }
        for statement in batch_table_sql(&self.who.seen) {
            self.exec(&statement, Vec::new())?;
        }
        // Keys the seen table's collation makes equal keep the first row.
        let indexed: Vec<(usize, &SeenRow<'_>)> = rows.iter().enumerate().collect();
        for chunk in statement_chunks(&indexed, 4, |(_, r)| {
            r.key.len() + r.group.len() + r.context.len() + 16
        }) {
            let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 4);
            for (i, r) in chunk {
                params.push(Value::from(*i as i64));
                params.push(r.key.into());
                params.push(r.group.into());
                params.push(r.context.into());
            }
            let values = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
            self.exec(
                &format!(
                    "INSERT INTO `spark_batch` (`i`, `k`, `g`, `c`) VALUES {values} \
                     ON DUPLICATE KEY UPDATE `i` = `i`"
                ),
                params,
            )?;
        }
        let seen = self.who.seen.clone();
        let first = self.ids("SELECT `i` FROM `spark_batch`", Vec::new())?;
        let existing: HashSet<i64> = self
            .ids(
                &format!("SELECT b.`i` FROM `spark_batch` b JOIN {seen} s ON s.`key` = b.`k`"),
                Vec::new(),
            )?
            .into_iter()
            .collect();
        // A key another worker records meanwhile fails this insert (1062):
        // the transaction is tried again.
        let now = self.now.clone();
        let inserted = self.exec(
            &format!(
                "INSERT INTO {seen} (`key`, `group`, `created_at`, `context`) \
                 SELECT b.`k`, b.`g`, ?, b.`c` FROM `spark_batch` b \
                 WHERE NOT EXISTS (SELECT 1 FROM {seen} s WHERE s.`key` = b.`k`) ORDER BY b.`k`"
            ),
            vec![now.into()],
        )?;
        let new: HashSet<i64> = first
            .into_iter()
            .filter(|i| !existing.contains(i))
            .collect();
        if inserted != new.len() as u64 {
            // Someone else's key came in between: try the batch again.
            self.transient = true;
            return Err(Error::Store {
                database: self.who.name.clone(),
                action: self.action.to_owned(),
                error: "the seen table changed while the batch was recorded".into(),
            });
        }
        Ok((0..rows.len()).map(|i| new.contains(&(i as i64))).collect())
    }

    fn delete_seen(&mut self, keys: &[String]) -> Result<Vec<String>> {
        let sql = format!("DELETE FROM {} WHERE `key` = ?", self.who.seen);
        let mut gone = Vec::new();
        for key in keys {
            if self.exec(&sql, vec![key.as_str().into()])? > 0 {
                gone.push(key.clone());
            }
        }
        Ok(gone)
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        all_deliveries(self.c, &self.who.name)
    }

    fn held_by_others(&mut self) -> Result<HashSet<i64>> {
        let me = self.who.me.clone();
        Ok(self
            .ids(
                &format!(
                    "SELECT `id` FROM `spark_delivery` WHERE `claimed_by` IS NOT NULL \
                     AND `claimed_by` <> ? AND `lease_until` >= {NOW_MS}"
                ),
                vec![me.into()],
            )?
            .into_iter()
            .collect())
    }

    fn insert_deliveries(&mut self, rows: &[NewDelivery]) -> Result<Vec<Option<i64>>> {
        let mut ids = vec![None; rows.len()];
        let now = self.now.clone();
        let row_values = |r: &NewDelivery, host: &str| -> Vec<Value> {
            let (offset, file_id) = FileMark::columns(r.file_mark);
            vec![
                r.handler.as_str().into(),
                keys_json(&r.keys).into(),
                r.state.as_str().into(),
                r.attempts.into(),
                r.next_attempt_at.into(),
                r.last_error.clone().into(),
                offset.into(),
                file_id.into(),
                r.this_host.then(|| host.to_owned()).into(),
                now.as_str().into(),
            ]
        };
        let columns = "`handler`, `keys`, `state`, `attempts`, `next_attempt_at`, `last_error`, \
                       `file_offset`, `file_id`, `host`, `created_at`, `updated_at`";
        let host = self.who.host.clone();
        let mut plain: Vec<&NewDelivery> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            if !r.claimed {
                plain.push(r);
                continue;
            }
            // Claimed ones one by one, for their ids.
            let mut params = row_values(r, &host);
            params.push(now.as_str().into());
            params.push(self.who.me.as_str().into());
            params.push(self.who.lease_ms.into());
            let n = self.exec(
                &format!(
                    "INSERT INTO `spark_delivery` ({columns}, `claimed_by`, `lease_until`) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {NOW_MS} + ?)"
                ),
                params,
            )?;
            let id: Option<i64> = self
                .c
                .query_first("SELECT LAST_INSERT_ID()")
                .map_err(|e| self.fail(e))?;
            ids[i] = id.filter(|_| n == 1);
        }
        for chunk in statement_chunks(&plain, 11, |r| {
            r.keys.iter().map(|k| k.len() + 4).sum::<usize>()
                + r.last_error.as_ref().map_or(0, String::len)
                + 128
        }) {
            let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 11);
            for r in chunk {
                params.extend(row_values(r, &host));
                params.push(now.as_str().into());
            }
            let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            self.exec(
                &format!("INSERT INTO `spark_delivery` ({columns}) VALUES {values}"),
                params,
            )?;
        }
        Ok(ids)
    }

    fn set_done(&mut self, id: i64, done: usize) -> Result<bool> {
        let (now, me) = (self.now.clone(), self.who.me.clone());
        self.exec(
            "UPDATE `spark_delivery` SET `done` = ?, `updated_at` = ? WHERE `id` = ? AND `claimed_by` = ?",
            vec![(done as i64).into(), now.into(), id.into(), me.into()],
        )
        .map(|n| n == 1)
    }

    fn delete_finished(&mut self, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let me = self.who.me.clone();
        let mut params: Vec<Value> = ids.iter().map(|id| Value::from(*id)).collect();
        params.push(me.into());
        self.exec(
            &format!(
                "DELETE FROM `spark_delivery` WHERE `id` IN ({}) AND `claimed_by` = ?",
                placeholders(ids.len())
            ),
            params,
        )
    }

    fn set_failed(&mut self, id: i64, state: DeliveryState, failure: &Failure) -> Result<bool> {
        let (now, me) = (self.now.clone(), self.who.me.clone());
        // The claim goes with the failure: the next attempt is anyone's.
        self.exec(
            "UPDATE `spark_delivery` SET `state` = ?, `attempts` = ?, `next_attempt_at` = ?, \
             `last_error` = ?, `file_offset` = NULL, `file_id` = NULL, `claimed_by` = NULL, \
             `lease_until` = NULL, `updated_at` = ? WHERE `id` = ? AND `claimed_by` = ?",
            vec![
                state.as_str().into(),
                failure.attempts.into(),
                failure.next_attempt_at.unwrap_or(0).into(),
                failure.error.as_str().into(),
                now.into(),
                id.into(),
                me.into(),
            ],
        )
        .map(|n| n == 1)
    }

    fn set_in_flight(&mut self, id: i64) -> Result<bool> {
        let (now, me) = (self.now.clone(), self.who.me.clone());
        self.exec(
            "UPDATE `spark_delivery` SET `state` = 'in_flight', `updated_at` = ? \
             WHERE `id` = ? AND `claimed_by` = ?",
            vec![now.into(), id.into(), me.into()],
        )
        .map(|n| n == 1)
    }

    fn set_file_mark(&mut self, id: i64, mark: Option<FileMark>) -> Result<bool> {
        let (now, me) = (self.now.clone(), self.who.me.clone());
        let (offset, file_id) = FileMark::columns(mark);
        self.exec(
            "UPDATE `spark_delivery` SET `file_offset` = ?, `file_id` = ?, `updated_at` = ? \
             WHERE `id` = ? AND `claimed_by` = ?",
            vec![
                offset.into(),
                file_id.into(),
                now.into(),
                id.into(),
                me.into(),
            ],
        )
        .map(|n| n == 1)
    }

    fn delete_deliveries(&mut self, ids: &[i64]) -> Result<()> {
        for chunk in ids.chunks(1000) {
            self.exec(
                &format!(
                    "DELETE FROM `spark_delivery` WHERE `id` IN ({})",
                    placeholders(chunk.len())
                ),
                chunk.iter().map(|id| Value::from(*id)).collect(),
            )?;
        }
        Ok(())
    }

    fn set_keys(&mut self, id: i64, keys: &[String]) -> Result<()> {
        let now = self.now.clone();
        self.exec(
            "UPDATE `spark_delivery` SET `keys` = ?, `updated_at` = ? WHERE `id` = ?",
            vec![keys_json(keys).into(), now.into(), id.into()],
        )
        .map(drop)
    }

    fn reset(&mut self, ids: &[i64]) -> Result<HashSet<i64>> {
        let (now, host) = (self.now.clone(), self.who.host.clone());
        let mut reset = HashSet::new();
        for chunk in ids.chunks(1000) {
            let list = placeholders(chunk.len());
            let params: Vec<Value> = chunk.iter().map(|id| Value::from(*id)).collect();
            // Deliveries another process is working on are left to it.
            let free = self.ids(
                &format!(
                    "SELECT `id` FROM `spark_delivery` WHERE `id` IN ({list}) \
                     AND (`claimed_by` IS NULL OR `lease_until` < {NOW_MS}) FOR UPDATE"
                ),
                params,
            )?;
            if free.is_empty() {
                continue;
            }
            let mut p: Vec<Value> = vec![now.as_str().into(), host.as_str().into()];
            p.extend(free.iter().map(|id| Value::from(*id)));
            // A file sink's deliveries come to this machine: the operator
            // retrying them here decided that they go to the file here.
            self.exec(
                &format!(
                    "UPDATE `spark_delivery` SET `state` = 'pending', `attempts` = 0, \
                     `next_attempt_at` = 0, `file_offset` = NULL, `file_id` = NULL, `updated_at` = ?, \
                     `host` = CASE WHEN `host` IS NULL THEN NULL ELSE ? END WHERE `id` IN ({})",
                    placeholders(free.len())
                ),
                p,
            )?;
            reset.extend(free);
        }
        Ok(reset)
    }

    fn rename_handler(&mut self, from: &str, to: &str) -> Result<u64> {
        let now = self.now.clone();
        self.exec(
            "UPDATE `spark_delivery` SET `handler` = ?, `updated_at` = ? WHERE `handler` = ?",
            vec![to.into(), now.into(), from.into()],
        )
    }

    fn bury_interrupted(&mut self, error: &str) -> Result<u64> {
        let now = self.now.clone();
        // In flight with a lease that ran out: its process died mid-call.
        self.exec(
            &format!(
                "UPDATE `spark_delivery` SET `state` = 'dead', `attempts` = `attempts` + 1, \
                 `last_error` = ?, `claimed_by` = NULL, `lease_until` = NULL, `updated_at` = ? \
                 WHERE `state` = 'in_flight' AND (`claimed_by` IS NULL OR `lease_until` < {NOW_MS})"
            ),
            vec![error.into(), now.into()],
        )
    }

    fn insert_history(&mut self, entries: &[HistoryEntry]) -> Result<()> {
        for chunk in statement_chunks(entries, 8, |e| {
            e.key.len() + e.handler.len() + e.error.as_ref().map_or(0, String::len) + 96
        }) {
            let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 8);
            for e in chunk {
                params.extend([
                    e.key.as_str().into(),
                    e.handler.as_str().into(),
                    e.at.as_str().into(),
                    e.outcome.as_str().into(),
                    e.attempt.into(),
                    e.ms.into(),
                    e.error.clone().into(),
                    e.by.clone().into(),
                ]);
            }
            let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            self.exec(
                &format!(
                    "INSERT INTO `spark_history` (`key`, `handler`, `at`, `outcome`, `attempt`, \
                     `ms`, `error`, `by_whom`) VALUES {values}"
                ),
                params,
            )?;
        }
        Ok(())
    }

    fn delete_history_before(&mut self, cutoff: &str) -> Result<u64> {
        self.exec(
            "DELETE FROM `spark_history` WHERE `at` < ?",
            vec![cutoff.into()],
        )
    }

    fn set_cursor(&mut self, mark: &NewMark) -> Result<()> {
        let s = &mark.state;
        // The mark first in both, then what the row is found by.
        let sql = if mark.full {
            "INSERT INTO `spark_cursor` (`mark`, `source`, `fingerprint`, `full_at`, `full_as_of`) \
                 VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE `fingerprint` = VALUES(`fingerprint`), \
                 `mark` = VALUES(`mark`), `full_at` = VALUES(`full_at`), `full_as_of` = VALUES(`full_as_of`)"
        } else {
            "UPDATE `spark_cursor` SET `mark` = ? WHERE `source` = ? AND `fingerprint` = ? \
                 AND `full_at` = ? AND `full_as_of` = ?"
        };
        self.exec(
            sql,
            vec![
                s.mark.clone().into(),
                s.source.as_str().into(),
                s.fingerprint.as_str().into(),
                s.full_at.into(),
                s.full_as_of.as_str().into(),
            ],
        )
        .map(drop)
    }

    fn delete_cursors(&mut self) -> Result<()> {
        self.exec("DELETE FROM `spark_cursor`", Vec::new())
            .map(drop)
    }
}

impl Executor for MysqlExecutor {
    fn name(&self) -> &str {
        &self.who.name
    }

    fn worker(&self) -> Option<&str> {
        Some(&self.who.me)
    }

    fn write(
        &mut self,
        action: &str,
        _commit: Commit,
        single: bool,
        work: &mut dyn FnMut(&mut dyn Rows) -> Result<()>,
    ) -> Result<()> {
        retry_transient(RETRIES, || {
            let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if single {
                // One statement: no transaction of its own (one round trip).
                let mut rows = MyRows {
                    c: &mut *conn,
                    who: &self.who,
                    action,
                    now: clock::now_text(),
                    transient: false,
                };
                let done = work(&mut rows);
                return (done, rows.transient);
            }
            let fail = store_err(&self.who.name, action);
            let mut tx = match conn.start_transaction(TxOpts::default()) {
                Ok(tx) => tx,
                Err(e) => return (Err(fail(e)), false),
            };
            let mut rows = MyRows {
                c: &mut tx,
                who: &self.who,
                action,
                now: clock::now_text(),
                transient: false,
            };
            let done = work(&mut rows);
            let mut transient = rows.transient;
            let done = match done {
                Ok(()) => tx.commit().map_err(|e| {
                    transient |= is_transient(&e);
                    fail(e)
                }),
                Err(e) => {
                    let _ = tx.rollback();
                    Err(e)
                }
            };
            (done, transient)
        })
    }

    fn make_durable(&mut self) -> Result<()> {
        // Every commit waited for the server's log.
        Ok(())
    }

    fn load_events(&mut self, keys: &[String]) -> Result<Vec<Option<StoredEvent>>> {
        let fail = self.err("loading events for delivery");
        let seen = self.who.seen.clone();
        let mut found: HashMap<String, StoredEvent> = HashMap::new();
        let mut conn = self.conn();
        for chunk in keys.chunks(1000) {
            let rows: Vec<(String, String, Option<String>, String)> = conn
                .exec(
                    format!(
                        "SELECT `key`, `group`, `context`, {CREATED_AT_TEXT} FROM {seen} \
                         WHERE `key` IN ({})",
                        placeholders(chunk.len())
                    ),
                    chunk.to_vec(),
                )
                .map_err(&fail)?;
            for (key, group, context, seen_at) in rows {
                let stored = StoredEvent::from_stored(
                    &key,
                    group,
                    context.unwrap_or_else(|| "{}".to_owned()),
                    seen_at,
                );
                found.insert(key, stored);
            }
        }
        Ok(keys.iter().map(|k| found.remove(k)).collect())
    }

    fn claim_due(&mut self, now_ms: i64, handlers: &[&str]) -> Result<Vec<Delivery>> {
        let mut params: Vec<Value> = vec![now_ms.into()];
        params.extend(handlers.iter().map(|h| Value::from(*h)));
        params.push(self.who.host.as_str().into());
        let pick = format!(
            "SELECT `id` FROM `spark_delivery` \
             WHERE (`state` = 'pending' OR (`state` = 'failed' AND `next_attempt_at` < ?)) \
               AND `handler` IN ({}) AND (`host` IS NULL OR `host` = ?) \
               AND (`claimed_by` IS NULL OR `lease_until` < {NOW_MS}) \
             ORDER BY `id` LIMIT 1 FOR UPDATE SKIP LOCKED",
            placeholders(handlers.len().max(1))
        );
        if handlers.is_empty() {
            return Ok(Vec::new());
        }
        self.claim("claiming due deliveries", &pick, params)
    }

    fn marked(&mut self, handlers: &[&str]) -> Result<Vec<Delivery>> {
        if handlers.is_empty() {
            return Ok(Vec::new());
        }
        // This process holds the files of `handlers` (their file lock): a
        // marked delivery of this host for one of them belonged to a process
        // that is gone, however long its lease still runs.
        let mut params: Vec<Value> = handlers.iter().map(|h| Value::from(*h)).collect();
        params.push(self.who.host.as_str().into());
        let pick = format!(
            "SELECT `id` FROM `spark_delivery` \
             WHERE `file_offset` IS NOT NULL AND `state` <> 'in_flight' \
               AND `handler` IN ({}) AND `host` = ? \
             ORDER BY `id` FOR UPDATE SKIP LOCKED",
            placeholders(handlers.len())
        );
        self.claim("claiming deliveries to settle", &pick, params)
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        let name = self.who.name.clone();
        all_deliveries(&mut *self.conn(), &name)
    }

    fn seen_before(
        &mut self,
        cutoff: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT `key`, `group` FROM {} WHERE `created_at` < ? AND `key` > ? \
             ORDER BY `key` LIMIT ?",
            self.who.seen
        );
        self.conn()
            .exec(sql, (cutoff, after, limit))
            .map_err(self.err("listing old events"))
    }

    fn finish_run(&mut self) -> Result<()> {
        // Claims not worked on go back to the others at once.
        self.let_go().map_err(self.err("letting go of claims"))
    }
}

/// What spark needs on each table (and the database, for the batch table).
fn needed(seen_table: &str) -> Vec<(String, &'static [&'static str])> {
    const KEEP: &[&str] = &["SELECT", "INSERT", "DELETE"];
    vec![
        (seen_table.to_owned(), KEEP),
        (
            "spark_delivery".to_owned(),
            &["SELECT", "INSERT", "UPDATE", "DELETE"],
        ),
        ("spark_history".to_owned(), KEEP),
        (
            "spark_cursor".to_owned(),
            &["SELECT", "INSERT", "UPDATE", "DELETE"],
        ),
        ("spark_meta".to_owned(), &["SELECT"]),
    ]
}

/// What the connected user lacks to run spark here, one line per table:
/// from the privileges MySQL lists for the current user (global, on the
/// database, on each table). Privileges that come from a role are not
/// listed there: a role's user may see lines here that its first run
/// would not fail on.
pub(crate) fn missing_privileges(
    conn: &mut impl Queryable,
    seen_table: &str,
) -> std::result::Result<Vec<String>, mysql::Error> {
    let grantee: Option<String> = conn.query_first(
        "SELECT CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
         SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
    )?;
    let grantee = grantee.unwrap_or_default();
    let broad: Vec<String> = conn.exec(
        "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ? \
         UNION SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES \
         WHERE GRANTEE = ? AND TABLE_SCHEMA = DATABASE()",
        (&grantee, &grantee),
    )?;
    let on_tables: Vec<(String, String)> = conn.exec(
        "SELECT TABLE_NAME, PRIVILEGE_TYPE FROM information_schema.TABLE_PRIVILEGES \
         WHERE GRANTEE = ? AND TABLE_SCHEMA = DATABASE()",
        (&grantee,),
    )?;
    let has = |table: &str, privilege: &str| {
        broad
            .iter()
            .any(|p| p == privilege || p == "ALL PRIVILEGES")
            || on_tables
                .iter()
                .any(|(t, p)| t == table && (p == privilege || p == "ALL PRIVILEGES"))
    };
    let mut lines = Vec::new();
    for (table, privileges) in needed(seen_table) {
        let lacking: Vec<&str> = privileges
            .iter()
            .filter(|p| !has(&table, p))
            .copied()
            .collect();
        if !lacking.is_empty() {
            lines.push(format!(
                "{grantee} lacks {} on `{table}`",
                lacking.join(", ")
            ));
        }
    }
    if !has("", "CREATE TEMPORARY TABLES") {
        lines.push(format!(
            "{grantee} lacks CREATE TEMPORARY TABLES on the database (spark records a batch of keys through one)"
        ));
    }
    Ok(lines)
}

/// The GRANT statements that give `role` (`'user'@'host'`) what spark
/// needs: rows of the seen table and spark's, SELECT on the source
/// tables, CREATE TEMPORARY TABLES on the database.
pub fn grants(
    database: &str,
    seen_table: &str,
    role: &str,
    source_tables: &[String],
    queries: bool,
) -> String {
    let db = quote(database);
    let mut out = String::from(
        "-- What spark needs, granted by a user who may (spark migrate made the tables):\n",
    );
    for (table, privileges) in needed(seen_table) {
        out.push_str(&format!(
            "GRANT {} ON {db}.{} TO {role};\n",
            privileges.join(", "),
            quote(&table)
        ));
    }
    out.push_str(&format!(
        "GRANT CREATE TEMPORARY TABLES ON {db}.* TO {role};\n"
    ));
    for table in source_tables {
        out.push_str(&format!(
            "GRANT SELECT ON {db}.{} TO {role};\n",
            quote(table)
        ));
    }
    if queries {
        out.push_str("-- and SELECT on every table the sources' queries read.\n");
    }
    out
}
