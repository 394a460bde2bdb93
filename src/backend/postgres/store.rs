//! The PostgreSQL executor, shared by any number of spark processes: the
//! SQL of PostgreSQL for the delivery rules (`crate::store::machine`).
//!
//! - **Keys**: `INSERT ... ON CONFLICT DO NOTHING RETURNING` (in key order,
//!   so that scanners racing over the same records never deadlock) tells
//!   which keys this transaction recorded; only those get deliveries, in
//!   the same transaction. A key is recorded once and gets its deliveries
//!   once, whichever process reads it first.
//! - **Claims**: a process works only on deliveries it has claimed:
//!   `SELECT ... FOR UPDATE SKIP LOCKED` picks one nobody holds, and an
//!   `UPDATE` gives it a lease (`claimed_by`, `lease_until`, measured by the
//!   database's clock). A heartbeat thread renews this process's leases
//!   while it lives, however long a handler call takes; when a process dies
//!   (kill -9, a lost connection, a machine gone) its leases run out and the
//!   others take its deliveries over. Every change to a claimed delivery is
//!   fenced (`AND claimed_by = me`): a process that lost its claim learns it
//!   (`Error::LostClaim`) and stops working on that delivery. A process that
//!   stops any other way gives its claims back at once.
//! - **Files**: deliveries for a file sink (jsonl) belong to the host that
//!   recorded them (`host`); those written by the process that holds the
//!   file are claimed by it, which delivers them at once.
//! - **Commits**: spark's session does not wait for the disk
//!   (`synchronous_commit = off`): outcomes survive spark being killed (the
//!   server has them), and a crash of the server can only repeat a
//!   delivery. Batches and durable writes wait (`SET LOCAL
//!   synchronous_commit = on`). A deadlock or serialization failure tries
//!   the transaction again.
//!
//! Not here: the rules, the schema (`schema.rs`) or read-only queries
//! (`PgReader`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, Row, Statement};

use super::{CREATED_AT_TEXT, DELIVERY_COLUMNS, NOW_MS, connect, message, schema, store_err};
use crate::backend::quote_ident;
use crate::clock;
use crate::config::PgConfig;
use crate::error::{Error, Result};
use crate::store::driver::{
    Commit, Executor, Heartbeat, NewDelivery, Rows, SeenRow, retry_transient,
};
use crate::store::{
    Claim, Delivery, DeliveryRow, DeliveryState, Failure, FileMark, HistoryEntry, NewMark,
    StoredEvent, keys_json,
};

/// Planner costs for spark's own sessions (see `PgExecutor::open`).
pub(crate) const LOOKUP_COSTS: &str = "SET random_page_cost = 1.1";

/// Makes the transaction it starts a commit that waits for the disk (in a
/// session whose commits do not, by default).
const DURABLE: &str = "SET LOCAL synchronous_commit = on";

/// After recording this many keys in a run, the seen table is analyzed.
const ANALYZE_AFTER: u64 = 10_000;

/// How many times a transaction is tried after a deadlock or a
/// serialization failure (another worker's transaction in the way).
const RETRIES: u32 = 5;

/// The connection of one spark process that writes.
pub struct PgExecutor {
    /// The connection, shared with the heartbeat: when it is cut, renewals
    /// stop with it, and the others take this process's claims over.
    client: Arc<Mutex<Client>>,
    seen_table: String,
    who: Who,
    /// Keys this process recorded (a big first run analyzes the seen table
    /// after it, so that the next run's lookups are planned well).
    recorded: u64,
    /// The statements of the hot path, prepared once (one round trip per
    /// outcome instead of two).
    prepared: HashMap<&'static str, Statement>,
    /// Renews this process's leases while it lives; stops when dropped.
    _heartbeat: Heartbeat,
}

/// What every row operation needs to know of the executor.
struct Who {
    /// The database, for messages.
    name: String,
    /// This process, as it signs its claims: `host:pid:random`.
    me: String,
    host: String,
    lease_ms: i64,
    sql: Statements,
}

/// The SQL that names the seen table, built once.
struct Statements {
    insert: String,
    exists: String,
    load: String,
    delete: String,
    page: String,
}

/// Renews this process's leases every third of a lease (see `Heartbeat`).
fn heartbeat(client: Arc<Mutex<Client>>, me: &str, lease: Duration) -> Heartbeat {
    let me = me.to_owned();
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    Heartbeat::start(lease, move || {
        let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
        let renewed = c.execute(
            &format!(
                "UPDATE spark_delivery SET lease_until = {NOW_MS} + $2 \
                 WHERE claimed_by = $1 AND lease_until >= {NOW_MS}"
            ),
            &[&me, &lease_ms],
        );
        if let Err(e) = renewed {
            tracing::warn!(
                error = message(&e).as_str(),
                "renewing this worker's leases failed; other workers take its deliveries over when they run out"
            );
            if c.is_closed() {
                return std::ops::ControlFlow::Break(());
            }
        }
        std::ops::ControlFlow::Continue(())
    })
}

/// A row of `DELIVERY_COLUMNS`, to decode (`DeliveryRow::decode`).
pub(crate) fn delivery_row(row: &Row) -> std::result::Result<DeliveryRow, postgres::Error> {
    let done: i32 = row.try_get(3)?;
    let attempts: i32 = row.try_get(5)?;
    let worker: Option<String> = row.try_get(11)?;
    let lease_until: Option<i64> = row.try_get(12)?;
    Ok(DeliveryRow {
        id: row.try_get(0)?,
        handler: row.try_get(1)?,
        keys: row.try_get(2)?,
        done: i64::from(done),
        state: row.try_get(4)?,
        attempts: i64::from(attempts),
        next_attempt_at: row.try_get(6)?,
        last_error: row.try_get(7)?,
        file_offset: row.try_get(8)?,
        created_at: row.try_get(9)?,
        file_id: row.try_get(10)?,
        claim: worker
            .zip(lease_until)
            .map(|(worker, until_ms)| Claim { worker, until_ms }),
    })
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Whether an error is another transaction in the way: worth trying again.
fn is_transient(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

impl PgExecutor {
    /// Connects, creates or upgrades spark's tables (when needed), and
    /// starts renewing this process's leases.
    pub fn open(pg: &PgConfig, seen_table: &str) -> Result<PgExecutor> {
        let mut client = connect(pg)?;
        let name = pg.describe();
        schema::migrate(&mut client, seen_table).map_err(|e| match e {
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
        let lacking = super::privileges::missing(&mut client, seen_table)
            .map_err(store_err(&name, "checking privileges"))?;
        if !lacking.is_empty() {
            return Err(Error::Store {
                database: name,
                action: "checking privileges".into(),
                error: lacking.join("; "),
            });
        }
        // The seen table is looked up a few thousand keys at a time; with
        // the default cost of a random page (4, a spinning disk's) the planner
        // prefers reading the whole table to that many index probes, which
        // on hot pages are ten times cheaper. This session only.
        client
            .batch_execute(LOOKUP_COSTS)
            .map_err(store_err(&name, "setting up the session"))?;
        // Commits in this session do not wait for the disk by default: a
        // handler's outcome, the history and claims survive spark being
        // killed (the server has them), and a crash of the server itself
        // can only make a delivered event delivered again. What must be on
        // disk before spark acts on it (new events, a file's mark, an
        // at-most-once call's mark, an operator's change) is committed with
        // `DURABLE` or followed by a sync point.
        client
            .batch_execute("SET synchronous_commit = off")
            .map_err(store_err(&name, "setting up the session"))?;
        let (host, me) = crate::store::driver::worker_names();
        let t = quote_ident(seen_table);
        let client = Arc::new(Mutex::new(client));
        Ok(PgExecutor {
            _heartbeat: heartbeat(client.clone(), &me, pg.lease),
            client,
            seen_table: seen_table.to_owned(),
            recorded: 0,
            prepared: HashMap::new(),
            who: Who {
                name,
                me,
                host,
                lease_ms: i64::try_from(pg.lease.as_millis()).unwrap_or(i64::MAX),
                sql: Statements {
                    insert: format!(
                        "INSERT INTO {t} (\"key\", \"group\", \"created_at\", \"context\") \
                     SELECT k, g, ($3 || '+00')::timestamptz, c \
                     FROM unnest($1::text[], $2::text[], $4::text[]) AS e(k, g, c) ORDER BY k \
                     ON CONFLICT (\"key\") DO NOTHING RETURNING \"key\"::text"
                    ),
                    exists: format!("SELECT \"key\"::text FROM {t} WHERE \"key\" = ANY($1)"),
                    load: format!(
                        "SELECT \"key\"::text, \"group\"::text, \"context\"::text, {CREATED_AT_TEXT} \
                     FROM {t} WHERE \"key\" = ANY($1)"
                    ),
                    delete: format!(
                        "DELETE FROM {t} WHERE \"key\" = ANY($1) RETURNING \"key\"::text"
                    ),
                    page: format!(
                        "SELECT \"key\"::text, \"group\"::text FROM {t} \
                     WHERE \"created_at\" < ($1 || '+00')::timestamptz AND \"key\" > $2 \
                     ORDER BY \"key\" LIMIT $3"
                    ),
                },
            },
        })
    }

    /// Gives this process's claims back (but an at-most-once call's, whose
    /// outcome is unknown until its lease runs out): other workers may take
    /// them at once.
    fn let_go(&self) -> std::result::Result<u64, postgres::Error> {
        self.conn().execute(
            "UPDATE spark_delivery SET claimed_by = NULL, lease_until = NULL \
             WHERE claimed_by = $1 AND state <> 'in_flight'",
            &[&self.who.me],
        )
    }

    /// Waits until everything this session committed is on disk: a commit
    /// that waits for the disk flushes the log up to it, so all the commits
    /// before it too.
    fn sync_point(&self, action: &str) -> Result<()> {
        let fail = self.err(action);
        let mut conn = self.conn();
        let mut tx = conn.transaction().map_err(&fail)?;
        tx.batch_execute(&format!("{DURABLE}; SELECT txid_current()"))
            .map_err(&fail)?;
        tx.commit().map_err(&fail)
    }

    /// The connection (shared with the heartbeat).
    fn conn(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, action: &str) -> impl Fn(postgres::Error) -> Error + use<> {
        store_err(&self.who.name, action)
    }

    /// Deliveries a claiming `UPDATE ... RETURNING` gave this process.
    fn claimed(
        &self,
        action: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Delivery>> {
        let fail = self.err(action);
        let rows: Vec<DeliveryRow> = self
            .conn()
            .query(sql, params)
            .map_err(&fail)?
            .iter()
            .map(delivery_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(&fail)?;
        let mut found = DeliveryRow::decode_all(rows, &self.who.name)?;
        found.sort_by_key(|d| d.id);
        Ok(found)
    }
}

/// A process that stops any way but a kill (an error, a panic unwinding)
/// gives its claims back at once, instead of leaving them to their lease.
impl Drop for PgExecutor {
    fn drop(&mut self) {
        if let Err(e) = self.let_go() {
            tracing::debug!(error = message(&e).as_str(), "giving claims back failed");
        }
    }
}

/// The row operations of one transaction (or of one statement of its own).
struct PgRows<'a, C: GenericClient> {
    c: &'a mut C,
    prepared: &'a mut HashMap<&'static str, Statement>,
    sql: &'a Statements,
    name: &'a str,
    action: &'a str,
    me: &'a str,
    host: &'a str,
    lease_ms: i64,
    now: String,
    /// Keys recorded.
    recorded: u64,
    /// Whether an error was another transaction in the way (tried again).
    transient: bool,
}

impl<'a, C: GenericClient> PgRows<'a, C> {
    fn new(
        c: &'a mut C,
        prepared: &'a mut HashMap<&'static str, Statement>,
        who: &'a Who,
        action: &'a str,
    ) -> Self {
        PgRows {
            c,
            prepared,
            sql: &who.sql,
            name: &who.name,
            action,
            me: &who.me,
            host: &who.host,
            lease_ms: who.lease_ms,
            now: clock::now_text(),
            recorded: 0,
            transient: false,
        }
    }

    fn fail(&mut self, e: postgres::Error) -> Error {
        self.transient |= is_transient(&e);
        Error::Store {
            database: self.name.to_owned(),
            action: self.action.to_owned(),
            error: message(&e),
        }
    }

    /// One of the hot path's statements, prepared the first time.
    fn statement(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(stmt) = self.prepared.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.c.prepare(sql).map_err(|e| self.fail(e))?;
        self.prepared.insert(sql, stmt.clone());
        Ok(stmt)
    }

    /// Runs a prepared statement; how many rows it changed.
    fn exec(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        self.c.execute(&stmt, params).map_err(|e| self.fail(e))
    }

    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.c.query(sql, params).map_err(|e| self.fail(e))
    }

    /// The first column of each row.
    fn column<T>(&mut self, rows: &[Row]) -> Result<Vec<T>>
    where
        T: for<'r> postgres::types::FromSql<'r>,
    {
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.fail(e))
    }
}

impl<C: GenericClient> Rows for PgRows<'_, C> {
    fn now(&self) -> &str {
        &self.now
    }

    fn seen_among(&mut self, keys: &[&str]) -> Result<HashSet<String>> {
        let sql = self.sql.exists.clone();
        let rows = self.query(&sql, &[&keys])?;
        Ok(self.column::<String>(&rows)?.into_iter().collect())
    }

    fn insert_seen(&mut self, rows: &[SeenRow<'_>]) -> Result<Vec<bool>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = rows.iter().map(|r| r.key).collect();
        let groups: Vec<&str> = rows.iter().map(|r| r.group).collect();
        let contexts: Vec<&str> = rows.iter().map(|r| r.context).collect();
        let (sql, now) = (self.sql.insert.clone(), self.now.clone());
        let found = self.query(&sql, &[&keys, &groups, &now, &contexts])?;
        let inserted: HashSet<String> = self.column::<String>(&found)?.into_iter().collect();
        self.recorded += inserted.len() as u64;
        // Of keys repeated in the batch, the first is the new one.
        let mut taken = HashSet::new();
        Ok(rows
            .iter()
            .map(|r| inserted.contains(r.key) && taken.insert(r.key))
            .collect())
    }

    fn delete_seen(&mut self, keys: &[String]) -> Result<Vec<String>> {
        let sql = self.sql.delete.clone();
        let rows = self.query(&sql, &[&keys])?;
        self.column(&rows)
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        let rows = self.query(
            &format!("SELECT {DELIVERY_COLUMNS} FROM spark_delivery ORDER BY id"),
            &[],
        )?;
        let rows: Vec<DeliveryRow> = rows
            .iter()
            .map(delivery_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.fail(e))?;
        DeliveryRow::decode_all(rows, self.name)
    }

    fn held_by_others(&mut self) -> Result<HashSet<i64>> {
        let me = self.me;
        let rows = self.query(
            &format!(
                "SELECT id FROM spark_delivery WHERE claimed_by IS NOT NULL \
                 AND claimed_by <> $1 AND lease_until >= {NOW_MS}"
            ),
            &[&me],
        )?;
        Ok(self.column::<i64>(&rows)?.into_iter().collect())
    }

    fn insert_deliveries(&mut self, rows: &[NewDelivery]) -> Result<Vec<Option<i64>>> {
        let mut ids = vec![None; rows.len()];
        let host = self.host.to_owned();
        let now = self.now.clone();
        // Claimed ones one by one, for their ids; the others in one statement.
        let (mut handlers, mut keys, mut hosts, mut states) = (vec![], vec![], vec![], vec![]);
        let (mut attempts, mut nexts, mut errors, mut offsets, mut file_ids) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (i, r) in rows.iter().enumerate() {
            let (offset, file_id) = FileMark::columns(r.file_mark);
            let on_host = r.this_host.then_some(host.as_str());
            if r.claimed {
                let (me, lease) = (self.me, self.lease_ms);
                let found = self.query(
                    &format!(
                        "INSERT INTO spark_delivery (handler, keys, state, attempts, next_attempt_at, \
                         last_error, file_offset, file_id, host, claimed_by, lease_until, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, {NOW_MS} + $11, $12, $12) \
                         RETURNING id"
                    ),
                    &[
                        &r.handler,
                        &keys_json(&r.keys),
                        &r.state.as_str(),
                        &to_i32(r.attempts),
                        &r.next_attempt_at,
                        &r.last_error,
                        &offset,
                        &file_id,
                        &on_host,
                        &me,
                        &lease,
                        &now,
                    ],
                )?;
                ids[i] = self.column::<i64>(&found)?.first().copied();
                continue;
            }
            handlers.push(r.handler.as_str());
            keys.push(keys_json(&r.keys));
            hosts.push(on_host);
            states.push(r.state.as_str());
            attempts.push(to_i32(r.attempts));
            nexts.push(r.next_attempt_at);
            errors.push(r.last_error.as_deref());
            offsets.push(offset);
            file_ids.push(file_id);
        }
        if !handlers.is_empty() {
            self.exec(
                "INSERT INTO spark_delivery (handler, keys, host, state, attempts, next_attempt_at, \
                 last_error, file_offset, file_id, created_at, updated_at) \
                 SELECT h, k, o, s, a, n, e, f, i, $10, $10 FROM unnest($1::text[], $2::text[], \
                 $3::text[], $4::text[], $5::int[], $6::bigint[], $7::text[], $8::bigint[], $9::text[]) \
                 AS d(h, k, o, s, a, n, e, f, i)",
                &[
                    &handlers, &keys, &hosts, &states, &attempts, &nexts, &errors, &offsets,
                    &file_ids, &now,
                ],
            )?;
        }
        Ok(ids)
    }

    fn set_done(&mut self, id: i64, done: usize) -> Result<bool> {
        let (now, me) = (self.now.clone(), self.me);
        let done = i32::try_from(done).unwrap_or(i32::MAX);
        self.exec(
            "UPDATE spark_delivery SET done = $2, updated_at = $3 WHERE id = $1 AND claimed_by = $4",
            &[&id, &done, &now, &me],
        )
        .map(|n| n == 1)
    }

    fn delete_finished(&mut self, ids: &[i64]) -> Result<u64> {
        let me = self.me;
        self.exec(
            "DELETE FROM spark_delivery WHERE id = ANY($1) AND claimed_by = $2",
            &[&ids, &me],
        )
    }

    fn set_failed(&mut self, id: i64, state: DeliveryState, failure: &Failure) -> Result<bool> {
        let (now, me) = (self.now.clone(), self.me);
        let next = failure.next_attempt_at.unwrap_or(0);
        // The claim goes with the failure: the next attempt is anyone's.
        self.exec(
            "UPDATE spark_delivery SET state = $2, attempts = $3, next_attempt_at = $4, \
             last_error = $5, file_offset = NULL, file_id = NULL, claimed_by = NULL, \
             lease_until = NULL, updated_at = $6 WHERE id = $1 AND claimed_by = $7",
            &[
                &id,
                &state.as_str(),
                &to_i32(failure.attempts),
                &next,
                &failure.error,
                &now,
                &me,
            ],
        )
        .map(|n| n == 1)
    }

    fn set_in_flight(&mut self, id: i64) -> Result<bool> {
        let (now, me) = (self.now.clone(), self.me);
        self.exec(
            "UPDATE spark_delivery SET state = 'in_flight', updated_at = $2 \
             WHERE id = $1 AND claimed_by = $3",
            &[&id, &now, &me],
        )
        .map(|n| n == 1)
    }

    fn set_file_mark(&mut self, id: i64, mark: Option<FileMark>) -> Result<bool> {
        let (now, me) = (self.now.clone(), self.me);
        let (offset, file_id) = FileMark::columns(mark);
        self.exec(
            "UPDATE spark_delivery SET file_offset = $2, file_id = $3, updated_at = $4 \
             WHERE id = $1 AND claimed_by = $5",
            &[&id, &offset, &file_id, &now, &me],
        )
        .map(|n| n == 1)
    }

    fn delete_deliveries(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        self.query("DELETE FROM spark_delivery WHERE id = ANY($1)", &[&ids])
            .map(drop)
    }

    fn set_keys(&mut self, id: i64, keys: &[String]) -> Result<()> {
        let now = self.now.clone();
        self.query(
            "UPDATE spark_delivery SET keys = $2, updated_at = $3 WHERE id = $1",
            &[&id, &keys_json(keys), &now],
        )
        .map(drop)
    }

    fn reset(&mut self, ids: &[i64]) -> Result<HashSet<i64>> {
        let (now, host) = (self.now.clone(), self.host.to_owned());
        let ids = ids.to_vec();
        // Deliveries another process is working on are left to it. A file
        // sink's deliveries come to this machine: the operator retrying
        // them here decided that they go to the file here.
        let rows = self.query(
            &format!(
                "UPDATE spark_delivery SET state = 'pending', attempts = 0, next_attempt_at = 0, \
                 file_offset = NULL, file_id = NULL, updated_at = $2, \
                 host = CASE WHEN host IS NULL THEN NULL ELSE $3 END \
                 WHERE id = ANY($1) AND (claimed_by IS NULL OR lease_until < {NOW_MS}) \
                 RETURNING id"
            ),
            &[&ids, &now, &host],
        )?;
        Ok(self.column::<i64>(&rows)?.into_iter().collect())
    }

    fn rename_handler(&mut self, from: &str, to: &str) -> Result<u64> {
        let now = self.now.clone();
        let (from, to) = (from.to_owned(), to.to_owned());
        self.c
            .execute(
                "UPDATE spark_delivery SET handler = $2, updated_at = $3 WHERE handler = $1",
                &[&from, &to, &now],
            )
            .map_err(|e| self.fail(e))
    }

    fn bury_interrupted(&mut self, error: &str) -> Result<u64> {
        let now = self.now.clone();
        let error = error.to_owned();
        // In flight with a lease that ran out: its process died mid-call.
        self.c
            .execute(
                &format!(
                    "UPDATE spark_delivery SET state = 'dead', attempts = attempts + 1, last_error = $1, \
                     claimed_by = NULL, lease_until = NULL, updated_at = $2 \
                     WHERE state = 'in_flight' AND (claimed_by IS NULL OR lease_until < {NOW_MS})"
                ),
                &[&error, &now],
            )
            .map_err(|e| self.fail(e))
    }

    fn insert_history(&mut self, entries: &[HistoryEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let col = |f: &dyn Fn(&HistoryEntry) -> Option<String>| -> Vec<Option<String>> {
            entries.iter().map(f).collect()
        };
        let keys = col(&|e| Some(e.key.clone()));
        let handlers = col(&|e| Some(e.handler.clone()));
        let ats = col(&|e| Some(e.at.clone()));
        let outcomes = col(&|e| Some(e.outcome.clone()));
        let errors = col(&|e| e.error.clone());
        let bys = col(&|e| e.by.clone());
        let attempts: Vec<i32> = entries.iter().map(|e| to_i32(e.attempt)).collect();
        let ms: Vec<Option<i64>> = entries.iter().map(|e| e.ms).collect();
        self.exec(
            "INSERT INTO spark_history (key, handler, at, outcome, attempt, ms, error, by_whom) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], \
                                  $6::bigint[], $7::text[], $8::text[])",
            &[
                &keys, &handlers, &ats, &outcomes, &attempts, &ms, &errors, &bys,
            ],
        )
        .map(drop)
    }

    fn delete_history_before(&mut self, cutoff: &str) -> Result<u64> {
        let cutoff = cutoff.to_owned();
        self.c
            .execute("DELETE FROM spark_history WHERE at < $1", &[&cutoff])
            .map_err(|e| self.fail(e))
    }

    fn set_cursor(&mut self, mark: &NewMark) -> Result<()> {
        let s = &mark.state;
        let sql = if mark.full {
            "INSERT INTO spark_cursor (source, fingerprint, mark, full_at, full_as_of) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source) DO UPDATE SET \
             fingerprint = excluded.fingerprint, mark = excluded.mark, \
             full_at = excluded.full_at, full_as_of = excluded.full_as_of"
        } else {
            "UPDATE spark_cursor SET mark = $3 WHERE source = $1 AND fingerprint = $2 \
             AND full_at = $4 AND full_as_of = $5"
        };
        self.query(
            sql,
            &[
                &s.source,
                &s.fingerprint,
                &s.mark,
                &s.full_at,
                &s.full_as_of,
            ],
        )
        .map(drop)
    }

    fn delete_cursors(&mut self) -> Result<()> {
        self.query("DELETE FROM spark_cursor", &[]).map(drop)
    }
}

impl Executor for PgExecutor {
    fn name(&self) -> &str {
        &self.who.name
    }

    fn worker(&self) -> Option<&str> {
        Some(&self.who.me)
    }

    fn write(
        &mut self,
        action: &str,
        commit: Commit,
        single: bool,
        work: &mut dyn FnMut(&mut dyn Rows) -> Result<()>,
    ) -> Result<()> {
        let recorded = retry_transient(RETRIES, || {
            let mut conn = self.client.lock().unwrap_or_else(|e| e.into_inner());
            if single && commit == Commit::Outcome {
                // One statement that need not wait for the disk: no
                // transaction of its own (one round trip).
                let mut rows = PgRows::new(&mut *conn, &mut self.prepared, &self.who, action);
                let done = work(&mut rows).map(|()| rows.recorded);
                return (done, rows.transient);
            }
            let fail = store_err(&self.who.name, action);
            let mut tx = match conn.transaction() {
                Ok(tx) => tx,
                Err(e) => return (Err(fail(e)), false),
            };
            if commit != Commit::Outcome {
                // Handlers are called, files cut, operators told once
                // this returns: on disk first.
                if let Err(e) = tx.batch_execute(DURABLE) {
                    return (Err(fail(e)), false);
                }
            }
            let mut rows = PgRows::new(&mut tx, &mut self.prepared, &self.who, action);
            let done = work(&mut rows);
            let (mut transient, recorded) = (rows.transient, rows.recorded);
            let done = done.and_then(|()| {
                tx.commit().map_err(|e| {
                    transient |= is_transient(&e);
                    fail(e)
                })
            });
            (done.map(|()| recorded), transient)
        })?;
        self.recorded += recorded;
        Ok(())
    }

    fn make_durable(&mut self) -> Result<()> {
        // Batches waited for the disk when they committed.
        Ok(())
    }

    fn load_events(&mut self, keys: &[String]) -> Result<Vec<Option<StoredEvent>>> {
        let fail = self.err("loading events for delivery");
        let rows = self
            .conn()
            .query(&self.who.sql.load, &[&keys])
            .map_err(&fail)?;
        let mut found: HashMap<String, StoredEvent> = rows
            .into_iter()
            .map(|r| {
                let key: String = r.try_get(0)?;
                let stored = StoredEvent::from_stored(
                    &key,
                    r.try_get(1)?,
                    super::context_text(&r, 2)?,
                    r.try_get(3)?,
                );
                Ok((key, stored))
            })
            .collect::<std::result::Result<_, postgres::Error>>()
            .map_err(&fail)?;
        Ok(keys.iter().map(|k| found.remove(k)).collect())
    }

    fn claim_due(&mut self, now_ms: i64, handlers: &[&str]) -> Result<Vec<Delivery>> {
        let (me, host, lease) = (
            self.who.me.clone(),
            self.who.host.clone(),
            self.who.lease_ms,
        );
        self.claimed(
            "claiming due deliveries",
            &format!(
                "UPDATE spark_delivery SET claimed_by = $4, lease_until = {NOW_MS} + $5 \
                 WHERE id = (SELECT id FROM spark_delivery \
                    WHERE (state = 'pending' OR (state = 'failed' AND next_attempt_at < $1)) \
                      AND handler = ANY($2) AND (host IS NULL OR host = $3) \
                      AND (claimed_by IS NULL OR lease_until < {NOW_MS}) \
                    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING {DELIVERY_COLUMNS}"
            ),
            &[&now_ms, &handlers, &host, &me, &lease],
        )
    }

    fn marked(&mut self, handlers: &[&str]) -> Result<Vec<Delivery>> {
        // This process holds the files of `handlers` (their file lock): a
        // marked delivery of this host for one of them belonged to a process
        // that is gone, however long its lease still runs.
        let (me, host, lease) = (
            self.who.me.clone(),
            self.who.host.clone(),
            self.who.lease_ms,
        );
        self.claimed(
            "claiming deliveries to settle",
            &format!(
                "UPDATE spark_delivery SET claimed_by = $3, lease_until = {NOW_MS} + $4 \
                 WHERE id IN (SELECT id FROM spark_delivery \
                    WHERE file_offset IS NOT NULL AND state <> 'in_flight' \
                      AND host = $2 AND handler = ANY($1) \
                    ORDER BY id FOR UPDATE SKIP LOCKED) \
                 RETURNING {DELIVERY_COLUMNS}"
            ),
            &[&handlers, &host, &me, &lease],
        )
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        let rows =
            super::all_deliveries(&mut *self.conn()).map_err(self.err("listing deliveries"))?;
        DeliveryRow::decode_all(rows, &self.who.name)
    }

    fn seen_before(
        &mut self,
        cutoff: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let fail = self.err("listing old events");
        self.conn()
            .query(&self.who.sql.page, &[&cutoff, &after, &limit])
            .map_err(&fail)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, postgres::Error>>()
            .map_err(&fail)
    }

    fn finish_run(&mut self) -> Result<()> {
        if self.recorded >= ANALYZE_AFTER {
            // Fresh statistics for the seen table: without them the planner
            // may scan all of it for the next run's key lookups. Autovacuum
            // would, later; a role that does not own the table cannot.
            let sql = format!("ANALYZE {}", quote_ident(&self.seen_table));
            if let Err(e) = self.conn().batch_execute(&sql) {
                tracing::debug!(
                    error = message(&e).as_str(),
                    "analyzing the seen table skipped"
                );
            }
            self.recorded = 0;
        }
        // Claims not worked on go back to the others at once.
        self.let_go().map_err(self.err("letting go of claims"))?;
        // What the run recorded is on disk when it ends.
        self.sync_point("ending the run")
    }
}
