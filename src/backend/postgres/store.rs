//! The PostgreSQL store, shared by any number of spark processes.
//!
//! - **Keys**: each batch is one transaction: `INSERT ... ON CONFLICT DO
//!   NOTHING RETURNING` (in key order, so that scanners racing over the same
//!   records never deadlock) tells which keys this process recorded; only
//!   those get deliveries, in the same transaction. A key is recorded once
//!   and gets its deliveries once, whichever process reads it first.
//! - **Claims**: a process works only on deliveries it has claimed:
//!   `SELECT ... FOR UPDATE SKIP LOCKED` picks one nobody holds, and an
//!   `UPDATE` gives it a lease (`claimed_by`, `lease_until`, measured by the
//!   database's clock). A heartbeat thread renews this process's leases
//!   while it lives, however long a handler call takes; when a process dies
//!   (kill -9, a lost connection, a machine gone) its leases run out and the
//!   others take its deliveries over. Every change to a claimed delivery is
//!   fenced (`AND claimed_by = me`): a process that lost its claim learns it
//!   (`Error::LostClaim`) and stops working on that delivery.
//! - **Chunks**: deliveries for handlers called once per event are written
//!   in chunks (`PlannedDelivery::chunk`: 10 keys, or four windows of a
//!   handler's calls in flight), so that many workers share a backlog evenly.
//!   Deliveries for a file sink (jsonl) belong to the host that recorded
//!   them (`host`), and are written claimed by the process that holds the
//!   file, which delivers them at once.
//! - **At-most-once**: a delivery in flight whose lease ran out belonged to
//!   a process that died mid-call: it becomes dead "interrupted", as on
//!   SQLite.
//!
//! Not here: the schema (`schema.rs`) or read-only queries (`PgReader`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::Duration;

use postgres::{Client, GenericClient, Row};
use regex::Regex;

use super::{
    CREATED_AT_TEXT, DELIVERY_COLUMNS, NOW_MS, all_deliveries, connect, message, schema, store_err,
};
use crate::clock;
use crate::config::PgConfig;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::records::quote_ident;
use crate::store::admin::owed_keys;
use crate::store::{
    Claim, ContextJson, Delivery, DeliveryQuery, DeliveryRow, DeliveryState, Failure, FileMark,
    Forgotten, HistoryEntry, PlannedDelivery, Pruned, Recorded, Store, StoredEvent,
};

/// Planner costs for spark's own sessions (see `PgStore::open`).
pub(crate) const LOOKUP_COSTS: &str = "SET random_page_cost = 1.1";

/// Makes the transaction it starts a commit that waits for the disk (in a
/// session whose commits do not, by default).
const DURABLE: &str = "SET LOCAL synchronous_commit = on";

/// After recording this many keys in a run, the seen table is analyzed.
const ANALYZE_AFTER: u64 = 10_000;

/// How many times a batch is tried again after a deadlock or a
/// serialization failure (another worker's transaction in the way).
const RETRIES: u32 = 5;

/// The PostgreSQL store.
pub struct PgStore {
    /// The connection, shared with the heartbeat: when it is cut, renewals
    /// stop with it, and the others take this process's claims over.
    client: Arc<Mutex<Client>>,
    name: String,
    seen_table: String,
    /// This process, as it signs its claims: `host:pid:random`.
    me: String,
    host: String,
    lease_ms: i64,
    sql: Statements,
    /// Keys this process recorded (a big first run analyzes the seen table
    /// after it, so that the next run's lookups are planned well).
    recorded: u64,
    /// History entries not written yet: written `HISTORY_HELD` at a time,
    /// and when the run ends (the operator's record, not the delivery log).
    history: Vec<HistoryEntry>,
    /// The statements of the hot path, prepared once (one round trip per
    /// outcome instead of two).
    prepared: HashMap<&'static str, postgres::Statement>,
    /// Renews this process's leases while it lives; stops when dropped.
    _heartbeat: Heartbeat,
}

/// How many history entries a store holds before writing them.
const HISTORY_HELD: usize = 256;

struct Statements {
    insert: String,
    exists: String,
    load: String,
}

/// A thread renewing this process's leases every third of a lease, on the
/// process's connection (free while a handler call runs). If the connection
/// is cut, renewing stops: the leases run out and the other workers take
/// this process's deliveries over, as they would if it had died.
struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(client: Arc<Mutex<Client>>, me: &str, lease: Duration) -> Heartbeat {
        let (stop, stopped) = mpsc::channel::<()>();
        let me = me.to_owned();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let every = lease / 3;
        let thread = thread::spawn(move || {
            loop {
                match stopped.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
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
                        return;
                    }
                }
            }
        });
        Heartbeat {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// This machine's name (for file sinks' deliveries).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A delivery from a row of `DELIVERY_COLUMNS`.
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

fn keys_json(keys: &[String]) -> String {
    serde_json::to_string(keys).unwrap_or_else(|_| String::from("[]"))
}

fn mark_sql(mark: Option<FileMark>) -> (Option<i64>, Option<String>) {
    match mark {
        None => (None, None),
        Some(m) => (
            Some(i64::try_from(m.offset).unwrap_or(i64::MAX)),
            m.file.map(|f| f.to_string()),
        ),
    }
}

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Whether an error is another transaction in the way: worth trying again.
fn is_transient(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

impl PgStore {
    /// Connects, creates or upgrades spark's tables (when needed), and
    /// starts renewing this process's leases.
    pub fn open(pg: &PgConfig, seen_table: &str) -> Result<PgStore> {
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
        let host = host_name();
        let random: u32 = rand_u32();
        let me = format!("{host}:{}:{random:08x}", std::process::id());
        let t = quote_ident(seen_table);
        let client = Arc::new(Mutex::new(client));
        Ok(PgStore {
            _heartbeat: Heartbeat::start(client.clone(), &me, pg.lease),
            client,
            name,
            seen_table: seen_table.to_owned(),
            me,
            host,
            lease_ms: i64::try_from(pg.lease.as_millis()).unwrap_or(i64::MAX),
            recorded: 0,
            history: Vec::new(),
            prepared: HashMap::new(),
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
            &[&self.me],
        )
    }

    /// Runs one of the hot path's statements, prepared the first time.
    fn execute_prepared(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> std::result::Result<u64, postgres::Error> {
        let mut conn = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let stmt = match self.prepared.get(sql) {
            Some(stmt) => stmt.clone(),
            None => {
                let stmt = conn.prepare(sql)?;
                self.prepared.insert(sql, stmt.clone());
                stmt
            }
        };
        conn.execute(&stmt, params)
    }

    /// Writes the held history entries.
    fn flush_history(&mut self) -> Result<()> {
        if self.history.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.history);
        let fail = store_err(&self.name, "recording the delivery history");
        insert_history(&mut *self.conn(), &entries).map_err(fail)
    }

    /// Runs an operator's change, then a sync point: the change is on disk
    /// when the command ends.
    fn durable<T>(&mut self, change: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let done = change(self)?;
        self.sync_point("making an operator's change durable")?;
        Ok(done)
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
        store_err(&self.name, action)
    }

    /// A fenced change touched no row: another process took the delivery
    /// over (this one's lease ran out).
    fn check_claim(&self, changed: u64, id: i64) -> Result<()> {
        lost_claim(&self.name, changed, id)
    }
}

/// `Error::LostClaim` when a fenced change touched no row.
fn lost_claim(database: &str, changed: u64, id: i64) -> Result<()> {
    if changed == 0 {
        return Err(Error::LostClaim {
            database: database.to_owned(),
            delivery: id,
        });
    }
    Ok(())
}

/// A random number for the worker's name (no dependency for one number).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// The deliveries some process holds a live claim on right now (an
/// operator's change leaves them to it).
fn claimed_now(tx: &mut impl GenericClient) -> std::result::Result<Vec<i64>, postgres::Error> {
    tx.query(
        &format!(
            "SELECT id FROM spark_delivery WHERE claimed_by IS NOT NULL AND lease_until >= {NOW_MS}"
        ),
        &[],
    )?
    .iter()
    .map(|r| r.try_get(0))
    .collect()
}

/// Applies a `drop_plan`: deletes the deliveries that keep nothing, and
/// rewrites the keys of the others.
fn apply_changes(
    tx: &mut impl GenericClient,
    changes: &[(i64, Option<Vec<String>>)],
    now: &str,
) -> std::result::Result<(), postgres::Error> {
    for (id, kept) in changes {
        match kept {
            None => tx.execute("DELETE FROM spark_delivery WHERE id = $1", &[id])?,
            Some(keys) => tx.execute(
                "UPDATE spark_delivery SET keys = $2, updated_at = $3 WHERE id = $1",
                &[id, &keys_json(keys), &now],
            )?,
        };
    }
    Ok(())
}

/// Appends history entries (one statement).
fn insert_history(
    tx: &mut impl GenericClient,
    entries: &[HistoryEntry],
) -> std::result::Result<(), postgres::Error> {
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
    let attempts: Vec<i32> = entries
        .iter()
        .map(|e| i32::try_from(e.attempt).unwrap_or(i32::MAX))
        .collect();
    let ms: Vec<Option<i64>> = entries.iter().map(|e| e.ms).collect();
    tx.execute(
        "INSERT INTO spark_history (key, handler, at, outcome, attempt, ms, error, by_whom) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], \
                              $6::bigint[], $7::text[], $8::text[])",
        &[
            &keys, &handlers, &ats, &outcomes, &attempts, &ms, &errors, &bys,
        ],
    )?;
    Ok(())
}

/// Inserts one delivery row and returns its id.
#[allow(clippy::too_many_arguments)]
fn insert_delivery(
    tx: &mut impl GenericClient,
    handler: &str,
    keys: &[String],
    state: DeliveryState,
    attempts: u32,
    next: i64,
    error: Option<&str>,
    mark: Option<FileMark>,
    host: Option<&str>,
    claimed_by: Option<&str>,
    lease_ms: i64,
    now: &str,
) -> std::result::Result<i64, postgres::Error> {
    let (offset, file_id) = mark_sql(mark);
    let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
    let row = tx.query_one(
        &format!(
            "INSERT INTO spark_delivery (handler, keys, state, attempts, next_attempt_at, last_error, \
             file_offset, file_id, host, claimed_by, lease_until, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                     CASE WHEN $10::text IS NULL THEN NULL ELSE {NOW_MS} + $11 END, $12, $12) \
             RETURNING id"
        ),
        &[
            &handler,
            &keys_json(keys),
            &state.as_str(),
            &attempts,
            &next,
            &error,
            &offset,
            &file_id,
            &host,
            &claimed_by,
            &lease_ms,
            &now,
        ],
    )?;
    row.try_get(0)
}

/// A process that stops any way but a kill (an error, a panic unwinding)
/// gives its claims back at once, instead of leaving them to their lease.
impl Drop for PgStore {
    fn drop(&mut self) {
        let _ = self.flush_history();
        if let Err(e) = self.let_go() {
            tracing::debug!(error = message(&e).as_str(), "giving claims back failed");
        }
    }
}

impl Store for PgStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn worker(&self) -> Option<&str> {
        Some(&self.me)
    }

    fn record_batch(
        &mut self,
        events: &[Event],
        contexts: &[Arc<str>],
        finished: &[i64],
        plan: &mut dyn FnMut(&[bool]) -> Vec<PlannedDelivery>,
    ) -> Result<Recorded> {
        let seen_at = clock::now_text();
        let prepared = contexts.len() == events.len();
        // Which events to insert: all of them when most are expected new
        // (contexts prepared), else only those not seen yet.
        let t0 = std::time::Instant::now();
        let candidates: Vec<usize> = if prepared {
            (0..events.len()).collect()
        } else {
            let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
            let seen: std::collections::HashSet<String> = self
                .conn()
                .query(&self.sql.exists, &[&keys])
                .map_err(self.err("reading the seen table"))?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, postgres::Error>>()
                .map_err(self.err("reading the seen table"))?;
            (0..events.len())
                .filter(|&i| !seen.contains(&events[i].key))
                .collect()
        };
        tracing::trace!(us = t0.elapsed().as_micros() as u64, "seen keys looked up");
        let mut serialized = ContextJson::default();
        let mut jsons: Vec<Arc<str>> = Vec::with_capacity(candidates.len());
        for &i in &candidates {
            jsons.push(if prepared {
                contexts[i].clone()
            } else {
                serialized.of(&events[i]).map_err(|e| Error::Store {
                    database: self.name.clone(),
                    action: "serializing a context".into(),
                    error: e.to_string(),
                })?
            });
        }
        let keys: Vec<&str> = candidates.iter().map(|&i| events[i].key.as_str()).collect();
        let groups: Vec<&str> = candidates
            .iter()
            .map(|&i| events[i].group.as_str())
            .collect();
        let ctx: Vec<&str> = jsons.iter().map(|j| &**j).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_record(
                events,
                &candidates,
                &jsons,
                (&keys, &groups, &ctx),
                &seen_at,
                finished,
                plan,
            ) {
                Err(e) if attempt < RETRIES && is_transient(&e) => {
                    tracing::debug!(
                        error = message(&e).as_str(),
                        "batch in another worker's way; trying again"
                    );
                    thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
                }
                Err(e) => {
                    return Err(Error::Store {
                        database: self.name.clone(),
                        action: "recording new events".into(),
                        error: message(&e),
                    });
                }
                Ok((new, deliveries)) => {
                    self.recorded += new.iter().filter(|n| n.is_some()).count() as u64;
                    return Ok(Recorded {
                        seen_at,
                        new,
                        deliveries,
                    });
                }
            }
        }
    }

    fn finish(&mut self, finished: &[i64]) -> Result<()> {
        if finished.is_empty() {
            return Ok(());
        }
        let me = self.me.clone();
        self.conn()
            .execute(
                "DELETE FROM spark_delivery WHERE id = ANY($1) AND claimed_by = $2",
                &[&finished, &me],
            )
            .map_err(self.err("recording deliveries done"))?;
        Ok(())
    }

    fn mark_seen(&mut self, key: &str, group: &str, context_json: &str) -> Result<bool> {
        self.durable(|s| s.mark_seen_unsynced(key, group, context_json))
    }

    fn load_events(&mut self, keys: &[String]) -> Result<Vec<Option<StoredEvent>>> {
        let fail = self.err("loading events for delivery");
        let rows = self.conn().query(&self.sql.load, &[&keys]).map_err(&fail)?;
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

    fn bury_interrupted(&mut self, error: &str) -> Result<usize> {
        self.durable(|s| s.bury_interrupted_unsynced(error))
    }

    fn marked(&mut self, handlers: &[&str]) -> Result<Vec<Delivery>> {
        // This process holds the files of `handlers` (their file lock): a
        // marked delivery of this host for one of them belonged to a process
        // that is gone, however long its lease still runs.
        let (me, host, lease) = (self.me.clone(), self.host.clone(), self.lease_ms);
        let rows = self
            .conn()
            .query(
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
            .map_err(self.err("claiming deliveries to settle"))?;
        let rows: Vec<DeliveryRow> = rows
            .iter()
            .map(delivery_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(self.err("claiming deliveries to settle"))?;
        let mut found = DeliveryRow::decode_all(rows, &self.name)?;
        found.sort_by_key(|d| d.id);
        Ok(found)
    }

    fn claim_due(&mut self, now_ms: i64, handlers: &[&str]) -> Result<Vec<Delivery>> {
        let (me, host, lease) = (self.me.clone(), self.host.clone(), self.lease_ms);
        let rows = self
            .conn()
            .query(
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
            .map_err(self.err("claiming due deliveries"))?;
        let rows: Vec<DeliveryRow> = rows
            .iter()
            .map(delivery_row)
            .collect::<std::result::Result<_, _>>()
            .map_err(self.err("claiming due deliveries"))?;
        DeliveryRow::decode_all(rows, &self.name)
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        let rows = all_deliveries(&mut *self.conn()).map_err(self.err("listing deliveries"))?;
        DeliveryRow::decode_all(rows, &self.name)
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
        self.flush_history()?;
        // What the run recorded is on disk when it ends.
        self.sync_point("ending the run")
    }

    fn set_file_mark(&mut self, delivery: &mut Delivery, mark: Option<FileMark>) -> Result<()> {
        let (offset, file_id) = mark_sql(mark);
        let (now, me) = (clock::now_text(), self.me.clone());
        let n = self
            .conn()
            .execute(
                "UPDATE spark_delivery SET file_offset = $2, file_id = $3, updated_at = $4 \
                 WHERE id = $1 AND claimed_by = $5",
                &[&delivery.id, &offset, &file_id, &now, &me],
            )
            .map_err(self.err("recording a file offset"))?;
        self.check_claim(n, delivery.id)?;
        // The file is cut back to this mark after a crash: on disk first.
        self.sync_point("recording a file offset")?;
        delivery.file_mark = mark;
        Ok(())
    }

    fn advance(&mut self, delivery: &mut Delivery, done: usize) -> Result<()> {
        let (now, me) = (clock::now_text(), self.me.clone());
        let n = if done >= delivery.keys.len() {
            self.execute_prepared(
                "DELETE FROM spark_delivery WHERE id = $1 AND claimed_by = $2",
                &[&delivery.id, &me],
            )
        } else {
            self.execute_prepared(
                "UPDATE spark_delivery SET done = $2, updated_at = $3 WHERE id = $1 AND claimed_by = $4",
                &[&delivery.id, &to_i32(done), &now, &me],
            )
        }
        .map_err(self.err("recording deliveries done"))?;
        self.check_claim(n, delivery.id)?;
        delivery.done = done;
        Ok(())
    }

    fn fail_next(&mut self, delivery: &mut Delivery, failure: &Failure) -> Result<()> {
        if delivery.remaining().len() <= 1 {
            return self.fail_rest(delivery, failure);
        }
        let (now, me) = (clock::now_text(), self.me.clone());
        let state = if failure.next_attempt_at.is_some() {
            DeliveryState::Failed
        } else {
            DeliveryState::Dead
        };
        let key = vec![delivery.keys[delivery.done].clone()];
        let host: Option<String> = None;
        let fail = store_err(&self.name, "recording a failed delivery");
        let name = self.name.clone();
        let mut conn = self.conn();
        let mut tx = conn.transaction().map_err(&fail)?;
        let result = (|| -> std::result::Result<u64, postgres::Error> {
            let n = tx.execute(
                "UPDATE spark_delivery SET done = $2, updated_at = $3 WHERE id = $1 AND claimed_by = $4",
                &[&delivery.id, &to_i32(delivery.done + 1), &now, &me],
            )?;
            if n == 1 {
                insert_delivery(
                    &mut tx,
                    &delivery.handler,
                    &key,
                    state,
                    failure.attempts,
                    failure.next_attempt_at.unwrap_or(0),
                    Some(&failure.error),
                    None,
                    host.as_deref(),
                    None,
                    0,
                    &now,
                )?;
            }
            Ok(n)
        })();
        let n = result.map_err(&fail)?;
        lost_claim(&name, n, delivery.id)?;
        tx.commit().map_err(&fail)?;
        delivery.done += 1;
        Ok(())
    }

    fn fail_rest(&mut self, delivery: &mut Delivery, failure: &Failure) -> Result<()> {
        let (now, me) = (clock::now_text(), self.me.clone());
        let state = if failure.next_attempt_at.is_some() {
            DeliveryState::Failed
        } else {
            DeliveryState::Dead
        };
        let attempts = i32::try_from(failure.attempts).unwrap_or(i32::MAX);
        let next = failure.next_attempt_at.unwrap_or(0);
        // The claim goes with the failure: the next attempt is anyone's.
        let n = self
            .conn()
            .execute(
                "UPDATE spark_delivery SET state = $2, attempts = $3, next_attempt_at = $4, \
                 last_error = $5, file_offset = NULL, file_id = NULL, claimed_by = NULL, \
                 lease_until = NULL, updated_at = $6 WHERE id = $1 AND claimed_by = $7",
                &[
                    &delivery.id,
                    &state.as_str(),
                    &attempts,
                    &next,
                    &failure.error,
                    &now,
                    &me,
                ],
            )
            .map_err(self.err("recording a failed delivery"))?;
        self.check_claim(n, delivery.id)?;
        delivery.state = state;
        delivery.attempts = failure.attempts;
        delivery.next_attempt_at = next;
        delivery.last_error = Some(failure.error.clone());
        delivery.file_mark = None;
        Ok(())
    }

    fn begin_at_most_once(&mut self, delivery: &mut Delivery) -> Result<Delivery> {
        let (now, me, lease) = (clock::now_text(), self.me.clone(), self.lease_ms);
        if delivery.remaining().len() <= 1 {
            let n = self
                .conn()
                .execute(
                    "UPDATE spark_delivery SET state = 'in_flight', updated_at = $2 \
                     WHERE id = $1 AND claimed_by = $3",
                    &[&delivery.id, &now, &me],
                )
                .map_err(self.err("marking a delivery in flight"))?;
            self.check_claim(n, delivery.id)?;
            // Never called twice: marked on disk before the call.
            self.sync_point("marking a delivery in flight")?;
            delivery.state = DeliveryState::InFlight;
            return Ok(delivery.clone());
        }
        let key = vec![delivery.keys[delivery.done].clone()];
        let fail = store_err(&self.name, "marking a delivery in flight");
        let name = self.name.clone();
        let mut conn = self.conn();
        let mut tx = conn.transaction().map_err(&fail)?;
        // Never called twice: marked on disk before the call.
        tx.batch_execute(DURABLE).map_err(&fail)?;
        let n = tx
            .execute(
                "UPDATE spark_delivery SET done = $2, updated_at = $3 WHERE id = $1 AND claimed_by = $4",
                &[&delivery.id, &to_i32(delivery.done + 1), &now, &me],
            )
            .map_err(&fail)?;
        lost_claim(&name, n, delivery.id)?;
        let id = insert_delivery(
            &mut tx,
            &delivery.handler,
            &key,
            DeliveryState::InFlight,
            delivery.attempts,
            0,
            None,
            None,
            None,
            Some(&me),
            lease,
            &now,
        )
        .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        delivery.done += 1;
        Ok(Delivery {
            claim: None,
            id,
            handler: delivery.handler.clone(),
            keys: key,
            done: 0,
            state: DeliveryState::InFlight,
            attempts: delivery.attempts,
            next_attempt_at: 0,
            last_error: None,
            file_mark: None,
            created_at: now,
        })
    }

    fn reset_for_retry(&mut self, query: &DeliveryQuery) -> Result<Vec<Delivery>> {
        self.durable(|s| s.reset_for_retry_unsynced(query))
    }

    fn forget(&mut self, keys: &[String]) -> Result<Forgotten> {
        self.durable(|s| s.forget_unsynced(keys))
    }

    fn add_history(&mut self, entries: &[HistoryEntry]) -> Result<()> {
        self.history.extend_from_slice(entries);
        if self.history.len() >= HISTORY_HELD {
            self.flush_history()?;
        }
        Ok(())
    }

    fn prune_history(&mut self, cutoff: &str) -> Result<u64> {
        self.durable(|s| s.prune_history_unsynced(cutoff))
    }

    fn drop_owed(
        &mut self,
        changes: &[(i64, Option<Vec<String>>)],
        history: &[HistoryEntry],
    ) -> Result<usize> {
        self.durable(|s| s.drop_owed_unsynced(changes, history))
    }

    fn reassign(&mut self, from: &str, to: &str, history: &[HistoryEntry]) -> Result<u64> {
        self.durable(|s| s.reassign_unsynced(from, to, history))
    }

    fn add_deliveries(
        &mut self,
        handler: &str,
        keys: &[String],
        chunk: usize,
        file_sink: bool,
        history: &[HistoryEntry],
    ) -> Result<u64> {
        self.durable(|s| s.add_deliveries_unsynced(handler, keys, chunk, file_sink, history))
    }

    fn prune(&mut self, cutoff: &str, group: Option<&Regex>, dry_run: bool) -> Result<Pruned> {
        self.durable(|s| s.prune_unsynced(cutoff, group, dry_run))
    }
}

/// The operator's changes as they are made; their trait methods end with
/// a sync point (an operator's change is on disk when the command ends).
impl PgStore {
    fn mark_seen_unsynced(&mut self, key: &str, group: &str, context_json: &str) -> Result<bool> {
        let now = clock::now_text();
        let rows = self
            .conn()
            .query(
                &self.sql.insert,
                &[&vec![key], &vec![group], &now, &vec![context_json]],
            )
            .map_err(self.err("marking a key seen"))?;
        Ok(!rows.is_empty())
    }

    fn bury_interrupted_unsynced(&mut self, error: &str) -> Result<usize> {
        let now = clock::now_text();
        // In flight with a lease that ran out: its process died mid-call.
        let n = self
            .conn()
            .execute(
                &format!(
                    "UPDATE spark_delivery SET state = 'dead', attempts = attempts + 1, last_error = $1, \
                     claimed_by = NULL, lease_until = NULL, updated_at = $2 \
                     WHERE state = 'in_flight' AND (claimed_by IS NULL OR lease_until < {NOW_MS})"
                ),
                &[&error, &now],
            )
            .map_err(self.err("burying interrupted deliveries"))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn reset_for_retry_unsynced(&mut self, query: &DeliveryQuery) -> Result<Vec<Delivery>> {
        let now = clock::now_text();
        let mut selected: Vec<Delivery> = self
            .deliveries()?
            .into_iter()
            .filter(|d| query.matches(d))
            .collect();
        let ids: Vec<i64> = selected.iter().map(|d| d.id).collect();
        // Deliveries another process is working on are left to it. A file
        // sink's deliveries come to this machine: the operator retrying
        // them here decided that they go to the file here.
        let reset: Vec<i64> = self
            .conn()
            .query(
                &format!(
                    "UPDATE spark_delivery SET state = 'pending', attempts = 0, next_attempt_at = 0, \
                     file_offset = NULL, file_id = NULL, updated_at = $2, \
                     host = CASE WHEN host IS NULL THEN NULL ELSE $3 END \
                     WHERE id = ANY($1) AND (claimed_by IS NULL OR lease_until < {NOW_MS}) \
                     RETURNING id"
                ),
                &[&ids, &now, &self.host],
            )
            .map_err(self.err("making deliveries due"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, postgres::Error>>()
            .map_err(self.err("making deliveries due"))?;
        selected.retain(|d| reset.contains(&d.id));
        for d in &mut selected {
            d.state = DeliveryState::Pending;
            d.attempts = 0;
            d.next_attempt_at = 0;
            d.file_mark = None;
        }
        Ok(selected)
    }

    fn forget_unsynced(&mut self, keys: &[String]) -> Result<Forgotten> {
        let now = clock::now_text();
        let delete_sql = format!(
            "DELETE FROM {} WHERE \"key\" = ANY($1) RETURNING \"key\"::text",
            quote_ident(&self.seen_table)
        );
        let fail = store_err(&self.name, "forgetting keys");
        let mut conn = self.conn();
        let mut tx = conn.transaction().map_err(&fail)?;
        let gone: Vec<String> = tx
            .query(&delete_sql, &[&keys])
            .map_err(&fail)?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, postgres::Error>>()
            .map_err(&fail)?;
        let mut report = Forgotten::default();
        for key in keys {
            if gone.contains(key) {
                report.forgotten.push(key.clone());
            } else {
                report.unknown.push(key.clone());
            }
        }
        // Deliveries another process is working on are left to it.
        let free: Vec<Delivery> =
            DeliveryRow::decode_all(all_deliveries(&mut tx).map_err(&fail)?, &self.name)?;
        let claimed = claimed_now(&mut tx).map_err(&fail)?;
        let free: Vec<Delivery> = free
            .into_iter()
            .filter(|d| !claimed.contains(&d.id))
            .collect();
        let changes = report.plan(&free, keys);
        apply_changes(&mut tx, &changes, &now).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(report)
    }

    fn prune_history_unsynced(&mut self, cutoff: &str) -> Result<u64> {
        self.conn()
            .execute("DELETE FROM spark_history WHERE at < $1", &[&cutoff])
            .map_err(self.err("pruning the delivery history"))
    }

    fn drop_owed_unsynced(
        &mut self,
        changes: &[(i64, Option<Vec<String>>)],
        history: &[HistoryEntry],
    ) -> Result<usize> {
        let now = clock::now_text();
        let fail = store_err(&self.name, "dropping deliveries");
        let mut conn = self.conn();
        let mut tx = conn.transaction().map_err(&fail)?;
        // Deliveries another process is working on are left to it.
        let claimed = claimed_now(&mut tx).map_err(&fail)?;
        let free: Vec<(i64, Option<Vec<String>>)> = changes
            .iter()
            .filter(|(id, _)| !claimed.contains(id))
            .cloned()
            .collect();
        apply_changes(&mut tx, &free, &now).map_err(&fail)?;
        insert_history(&mut tx, history).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(free.len())
    }

    fn reassign_unsynced(&mut self, from: &str, to: &str, history: &[HistoryEntry]) -> Result<u64> {
        let now = clock::now_text();
        let fail = store_err(&self.name, "handing deliveries to another handler");
        let mut conn = self.conn();
        let mut tx = conn.transaction().map_err(&fail)?;
        let n = tx
            .execute(
                "UPDATE spark_delivery SET handler = $2, updated_at = $3 WHERE handler = $1",
                &[&from, &to, &now],
            )
            .map_err(&fail)?;
        insert_history(&mut tx, history).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(n)
    }

    fn add_deliveries_unsynced(
        &mut self,
        handler: &str,
        keys: &[String],
        chunk: usize,
        file_sink: bool,
        history: &[HistoryEntry],
    ) -> Result<u64> {
        let now = clock::now_text();
        let host = file_sink.then(|| self.host.clone());
        let fail = store_err(&self.name, "adding deliveries");
        let mut conn = self.conn();
        let mut tx = conn.transaction().map_err(&fail)?;
        let mut n = 0;
        for part in keys.chunks(chunk.max(1)) {
            insert_delivery(
                &mut tx,
                handler,
                part,
                DeliveryState::Pending,
                0,
                0,
                None,
                None,
                host.as_deref(),
                None,
                0,
                &now,
            )
            .map_err(&fail)?;
            n += 1;
        }
        insert_history(&mut tx, history).map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(n)
    }

    fn prune_unsynced(
        &mut self,
        cutoff: &str,
        group: Option<&Regex>,
        dry_run: bool,
    ) -> Result<Pruned> {
        let table = quote_ident(&self.seen_table);
        let page_sql = format!(
            "SELECT \"key\"::text, \"group\"::text FROM {table} \
             WHERE \"created_at\" < ($1 || '+00')::timestamptz AND \"key\" > $2 \
             ORDER BY \"key\" LIMIT 5000"
        );
        let delete_sql = format!("DELETE FROM {table} WHERE \"key\" = ANY($1)");
        let owed = owed_keys(&self.deliveries()?);
        let mut report = Pruned::default();
        let mut after = String::new();
        loop {
            let page: Vec<(String, String)> = self
                .conn()
                .query(&page_sql, &[&cutoff, &after])
                .map_err(self.err("listing old events"))?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<std::result::Result<_, postgres::Error>>()
                .map_err(self.err("listing old events"))?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let doomed: Vec<&str> = page
                .iter()
                .filter(|(_, g)| group.is_none_or(|re| re.is_match(g)))
                .filter_map(|(k, _)| {
                    if owed.contains(k) {
                        report.kept_undelivered += 1;
                        None
                    } else {
                        Some(k.as_str())
                    }
                })
                .collect();
            report.pruned += doomed.len() as u64;
            if !dry_run && !doomed.is_empty() {
                self.conn()
                    .execute(&delete_sql, &[&doomed])
                    .map_err(self.err("pruning old events"))?;
            }
        }
        Ok(report)
    }
}

type Columns<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str]);

impl PgStore {
    /// One attempt at recording a batch (see `record_batch`): the new keys
    /// and, for them, the deliveries.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn try_record(
        &mut self,
        events: &[Event],
        candidates: &[usize],
        jsons: &[Arc<str>],
        (keys, groups, ctx): Columns<'_>,
        seen_at: &str,
        finished: &[i64],
        plan: &mut dyn FnMut(&[bool]) -> Vec<PlannedDelivery>,
    ) -> std::result::Result<(Vec<Option<Arc<str>>>, Vec<(Delivery, Vec<usize>)>), postgres::Error>
    {
        let (me, host, lease) = (self.me.clone(), self.host.clone(), self.lease_ms);
        let mut conn = self.conn();
        let mut tx = conn.transaction()?;
        // Handlers are called for these events once this returns.
        tx.batch_execute(DURABLE)?;
        if !finished.is_empty() {
            tx.execute(
                "DELETE FROM spark_delivery WHERE id = ANY($1) AND claimed_by = $2",
                &[&finished, &me],
            )?;
        }
        let inserted: std::collections::HashSet<String> = if keys.is_empty() {
            Default::default()
        } else {
            tx.query(&self.sql.insert, &[&keys, &groups, &seen_at, &ctx])?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, postgres::Error>>()?
        };
        let mut new: Vec<Option<Arc<str>>> = vec![None; events.len()];
        let mut taken = std::collections::HashSet::new();
        for (c, &i) in candidates.iter().enumerate() {
            let key = &events[i].key;
            // The first of repeated keys in the batch is the new one.
            if inserted.contains(key) && taken.insert(key.as_str()) {
                new[i] = Some(jsons[c].clone());
            }
        }
        let mask: Vec<bool> = new.iter().map(Option::is_some).collect();
        let mut now_deliveries = Vec::new();
        let mut chunk_handlers: Vec<&str> = Vec::new();
        let mut chunk_keys: Vec<String> = Vec::new();
        let mut chunk_hosts: Vec<Option<&str>> = Vec::new();
        let planned = plan(&mask);
        for p in &planned {
            let keys: Vec<String> = p.events.iter().map(|&i| events[i].key.clone()).collect();
            if p.file_mark.is_some() {
                // This process holds the file: claimed, delivered at once.
                let id = insert_delivery(
                    &mut tx,
                    &p.handler,
                    &keys,
                    DeliveryState::Pending,
                    0,
                    0,
                    None,
                    p.file_mark,
                    Some(&host),
                    Some(&me),
                    lease,
                    seen_at,
                )?;
                now_deliveries.push((
                    Delivery {
                        claim: None,
                        id,
                        handler: p.handler.clone(),
                        keys,
                        done: 0,
                        state: DeliveryState::Pending,
                        attempts: 0,
                        next_attempt_at: 0,
                        last_error: None,
                        file_mark: p.file_mark,
                        created_at: seen_at.to_owned(),
                    },
                    p.events.clone(),
                ));
            } else if p.file_sink {
                // Another process on this host holds the file: it (or the
                // next run here) delivers these.
                chunk_handlers.push(&p.handler);
                chunk_keys.push(keys_json(&keys));
                chunk_hosts.push(Some(&host));
            } else {
                for chunk in keys.chunks(p.chunk.max(1)) {
                    chunk_handlers.push(&p.handler);
                    chunk_keys.push(keys_json(chunk));
                    chunk_hosts.push(None);
                }
            }
        }
        if !chunk_handlers.is_empty() {
            tx.execute(
                "INSERT INTO spark_delivery (handler, keys, host, created_at, updated_at) \
                 SELECT h, k, o, $4, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS d(h, k, o)",
                &[&chunk_handlers, &chunk_keys, &chunk_hosts, &seen_at],
            )?;
        }
        tx.commit()?;
        Ok((new, now_deliveries))
    }
}
