//! The SQLite backend: the application's SQLite file holds both the records
//! and the store (django-spark's seen table, spark's own tables). One run at
//! a time works on it (`lock`: a file lock next to the database).
//!
//! The only way spark creates a database is `create_from` (demos and tests):
//! a SQL script run into a new file that is moved into place when complete.
//! Read-only commands build such a database in memory instead.
//!
//! Not here: what the pipeline does with records and the store.

pub mod lock;
pub mod notify;
pub mod records;
pub mod schema;
pub mod store;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use schema::table_exists;

use crate::backend::quote_ident;
use crate::config::SqliteConfig;
use crate::error::{Error, Result};
use crate::records::{Bound, Record, RecordSet, Since};
use crate::store::driver::{Driver, Executor, RunGuard};
use crate::store::{
    Column, Delivery, EventQuery, HistoryEntry, HistoryQuery, Reader, SeenEvent, SeenTable,
};
use crate::store::{CursorState, DeliveryRow, KeyLimits, Notifier, declared_length};

pub use store::SqliteExecutor;

/// The deliveries a run works on: pending ones, and failed ones whose next
/// attempt (`?1`, Unix ms) is due.
pub(crate) const DUE: &str = "state = 'pending' OR (state = 'failed' AND next_attempt_at <= ?1)";

/// The columns `store::delivery_row` reads, in its order.
pub(crate) const DELIVERY_COLUMNS: &str = "id, handler, keys, done, state, attempts, next_attempt_at, \
                                last_error, file_offset, created_at, file_id";

/// SQLite's own message for an error, without rusqlite's wrapping.
pub fn sql_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

/// A SQLite database as `[database] path` names it.
pub struct SqliteDriver {
    db: SqliteConfig,
    seen_table: String,
    /// The config file, for the message about a database that is missing.
    config_path: std::path::PathBuf,
}

impl SqliteDriver {
    pub fn new(db: &SqliteConfig, seen_table: &str, config_path: &Path) -> SqliteDriver {
        SqliteDriver {
            db: db.clone(),
            seen_table: seen_table.to_owned(),
            config_path: config_path.to_owned(),
        }
    }

    fn store_err(&self, action: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        let action = action.to_owned();
        move |e| Error::Store {
            database: self.db.path.display().to_string(),
            action: action.clone(),
            error: sql_message(&e),
        }
    }
}

impl Driver for SqliteDriver {
    fn name(&self) -> String {
        self.db.path.display().to_string()
    }

    fn reader(&self) -> Result<Box<dyn Reader>> {
        Ok(Box::new(SqliteReader::open(
            &self.db,
            &self.seen_table,
            &self.config_path,
        )?))
    }

    fn executor(&self) -> Result<Box<dyn Executor>> {
        create_if_missing(&self.db)?;
        Ok(Box::new(SqliteExecutor::open(
            &self.db.path,
            &self.seen_table,
            self.db.busy_timeout,
        )?))
    }

    fn pending_sql(&self) -> Result<String> {
        let reader = SqliteReader::open(&self.db, &self.seen_table, &self.config_path)?;
        let conn = reader.connection();
        let found =
            schema::version(conn).map_err(self.store_err("reading spark's schema version"))?;
        let seen = schema::table_exists(conn, &self.seen_table)
            .map_err(self.store_err("looking up the seen table"))?;
        Ok(schema::pending_sql(&self.seen_table, seen, found))
    }

    fn grants(&self, _role: &str, _tables: &[String], _queries: bool) -> Option<String> {
        None
    }

    fn guard(&self, wait: std::time::Duration) -> Result<RunGuard> {
        Ok(RunGuard::holding(lock::RunLock::acquire(
            &self.db.path,
            wait,
        )?))
    }

    fn notifier(&self) -> Result<Option<Box<dyn Notifier>>> {
        Ok(Some(Box::new(notify::DataVersion::open(&self.db)?)))
    }
}

/// A read-only connection to the records database.
pub struct SqliteReader {
    conn: Connection,
    name: String,
    seen_table: String,
    /// Where a passive checkpoint can be run when reading is done (`None`
    /// for a database built in memory).
    path: Option<std::path::PathBuf>,
}

fn open_err(name: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |error| Error::OpenDatabase {
        database: name.to_owned(),
        error: sql_message(&error),
    }
}

impl SqliteReader {
    /// Opens the records database read-only. A database that does not exist
    /// yet but has a `create_from` script is built in memory from it, so
    /// read-only commands see what the first run will see.
    pub fn open(db: &SqliteConfig, seen_table: &str, config_path: &Path) -> Result<SqliteReader> {
        let name = db.path.display().to_string();
        let seen_table = seen_table.to_owned();
        if !db.path.exists() {
            let Some(script) = &db.create_from else {
                return Err(Error::MissingDatabase {
                    path: db.path.clone(),
                    config: config_path.to_owned(),
                });
            };
            let conn = Connection::open_in_memory().map_err(open_err(&name))?;
            run_script(&conn, script).map_err(|error| Error::CreateFrom {
                path: db.path.clone(),
                script: script.clone(),
                error,
            })?;
            return Ok(SqliteReader {
                conn,
                name,
                seen_table,
                path: None,
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&db.path, flags).map_err(open_err(&name))?;
        conn.busy_timeout(db.busy_timeout)
            .map_err(open_err(&name))?;
        // Reading the schema is what tells a database from any other file.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|error| match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => Error::NotADatabase {
                path: db.path.clone(),
                reason: "file is not a database".into(),
            },
            _ => open_err(&name)(error),
        })?;
        Ok(SqliteReader {
            conn,
            name,
            seen_table,
            path: Some(db.path.clone()),
        })
    }

    fn err(&self, action: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        let action = action.to_owned();
        move |error| Error::Store {
            database: self.name.clone(),
            action: action.clone(),
            error: sql_message(&error),
        }
    }

    /// The connection, for the SQLite-only queries of tests and benchmarks.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn run_script(conn: &Connection, script: &Path) -> Result<(), String> {
    let sql = std::fs::read_to_string(script).map_err(|e| e.to_string())?;
    conn.execute_batch(&sql).map_err(|e| e.to_string())
}

/// Creates the database from its `create_from` script if it does not exist.
/// The script runs into a temporary file (an unpredictable name, created
/// exclusively, readable by its owner only) that is moved into place only
/// when it succeeded; a database that appeared meanwhile is kept.
pub fn create_if_missing(db: &SqliteConfig) -> Result<()> {
    let Some(script) = &db.create_from else {
        return Ok(());
    };
    if db.path.exists() {
        return Ok(());
    }
    let fail = |error: String| Error::CreateFrom {
        path: db.path.clone(),
        script: script.clone(),
        error,
    };
    let dir = crate::files::parent(&db.path);
    crate::files::create_dir_all(dir, crate::files::dir_mode(crate::files::PRIVATE))
        .map_err(|e| fail(e.to_string()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".spark-creating-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(
            crate::files::PRIVATE,
        ))
        .tempfile_in(dir)
        .map_err(|e| fail(e.to_string()))?;
    let conn = Connection::open(tmp.path()).map_err(|e| fail(e.to_string()))?;
    run_script(&conn, script).map_err(fail)?;
    conn.close().map_err(|(_, e)| fail(e.to_string()))?;
    // No-clobber: another process may have created the database meanwhile.
    match tmp.persist_noclobber(&db.path) {
        Ok(_) => {
            crate::files::sync_dir(dir);
            Ok(())
        }
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(fail(e.error.to_string())),
    }
}

/// A best-effort passive checkpoint on a connection of its own.
fn checkpoint(path: &Path) {
    let done = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|conn| conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)"));
    if let Err(e) = done {
        tracing::debug!(error = %e, "early checkpoint skipped");
    }
}

/// Every delivery not finished yet, oldest first.
pub(crate) fn all_deliveries(conn: &Connection) -> rusqlite::Result<Vec<DeliveryRow>> {
    if !table_exists(conn, "spark_delivery")? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM spark_delivery ORDER BY id"
    ))?;
    stmt.query_map([], store::delivery_row)?.collect()
}

impl Reader for SqliteReader {
    fn name(&self) -> &str {
        &self.name
    }

    fn table_exists(&mut self, table: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master \
                 WHERE type IN ('table', 'view') AND name = ?1 COLLATE NOCASE",
                [table],
                |r| r.get(0),
            )
            .map_err(self.err("looking up a table"))
    }

    fn columns(&mut self, records: &RecordSet) -> Result<Vec<Column>, String> {
        records::columns(&self.conn, &records.sql_quoted(super::quote_ident))
            .map_err(|e| sql_message(&e))
    }

    fn scan(
        &mut self,
        records: &RecordSet,
        since: Option<&Since>,
        each: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> Result<(), String> {
        let message = |e: rusqlite::Error| sql_message(&e);
        let sql = match since {
            None => records.sql_quoted(super::quote_ident),
            Some(since) => records.sql_since(super::quote_ident, since, &Bound::literal),
        };
        let mut stmt = self.conn.prepare(&sql).map_err(message)?;
        let mut reader = records::RecordReader::new(&mut stmt).map_err(message)?;
        while let Some(record) = reader.next_record().map_err(message)? {
            if each(record).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn cursors(&mut self) -> Result<Vec<CursorState>> {
        if !table_exists(&self.conn, "spark_cursor").map_err(self.err("looking up a table"))? {
            return Ok(Vec::new());
        }
        let read = |conn: &Connection| -> rusqlite::Result<Vec<CursorState>> {
            let mut stmt = conn.prepare(
                "SELECT source, fingerprint, mark, full_at, full_as_of FROM spark_cursor",
            )?;
            stmt.query_map([], |r| {
                Ok(CursorState {
                    source: r.get(0)?,
                    fingerprint: r.get(1)?,
                    mark: r.get(2)?,
                    full_at: r.get(3)?,
                    full_as_of: r.get(4)?,
                })
            })?
            .collect()
        };
        read(&self.conn).map_err(self.err("reading sources' high-water marks"))
    }

    fn indexed(&mut self, table: &str, column: &str) -> Result<Option<bool>> {
        // An index led by the column, or the column is the rowid (an
        // `INTEGER PRIMARY KEY`, which orders the table itself).
        let sql = "SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1) AS l \
             JOIN pragma_index_info(l.name) AS i WHERE i.seqno = 0 AND i.name = ?2) \
             OR (SELECT count(*) = 1 AND max(name = ?2 AND upper(type) = 'INTEGER') \
                 FROM pragma_table_info(?1) WHERE pk > 0)";
        let found: rusqlite::Result<bool> =
            self.conn
                .query_row(sql, rusqlite::params![table, column], |r| r.get(0));
        Ok(found.ok())
    }

    fn seen_table(&mut self) -> Result<SeenTable> {
        let table = self.seen_table.clone();
        let exists = schema::check_seen_table(&self.conn, &table).map_err(|problem| {
            Error::BadSeenTable {
                table: table.clone(),
                database: self.name.clone(),
                problem,
            }
        })?;
        if !exists {
            return Ok(SeenTable {
                exists,
                limits: KeyLimits::DJANGO,
            });
        }
        let mut stmt = self
            .conn
            .prepare("SELECT name, type FROM pragma_table_info(?1)")
            .map_err(self.err("reading the seen table's columns"))?;
        let columns: Vec<(String, String)> = stmt
            .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(self.err("reading the seen table's columns"))?;
        let of = |name: &str| {
            columns
                .iter()
                .find(|(c, _)| c == name)
                .and_then(|(_, t)| declared_length(t))
        };
        Ok(SeenTable {
            exists,
            limits: KeyLimits {
                key: of("key"),
                group: of("group"),
            },
        })
    }

    fn seen_is_empty(&mut self) -> Result<bool> {
        if !table_exists(&self.conn, &self.seen_table).map_err(self.err("looking up a table"))? {
            return Ok(true);
        }
        let sql = format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {})",
            quote_ident(&self.seen_table)
        );
        self.conn
            .query_row(&sql, [], |r| r.get(0))
            .map_err(self.err("reading the seen table"))
    }

    fn count_events(&mut self) -> Result<u64> {
        if !table_exists(&self.conn, &self.seen_table).map_err(self.err("looking up a table"))? {
            return Ok(0);
        }
        let sql = format!("SELECT count(*) FROM {}", quote_ident(&self.seen_table));
        let n: i64 = self
            .conn
            .query_row(&sql, [], |r| r.get(0))
            .map_err(self.err("counting seen events"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn seen_among(&mut self, keys: &[String]) -> Result<HashSet<String>> {
        if !table_exists(&self.conn, &self.seen_table).map_err(self.err("looking up a table"))? {
            return Ok(HashSet::new());
        }
        let sql = format!(
            "SELECT 1 FROM {} WHERE \"key\" = ?1",
            quote_ident(&self.seen_table)
        );
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(self.err("reading the seen table"))?;
        let mut seen = HashSet::new();
        for key in keys {
            if stmt.exists([key]).map_err(|e| Error::Store {
                database: self.name.clone(),
                action: "reading the seen table".into(),
                error: sql_message(&e),
            })? {
                seen.insert(key.clone());
            }
        }
        Ok(seen)
    }

    fn list_events(
        &mut self,
        query: &EventQuery,
        each: &mut dyn FnMut(SeenEvent),
    ) -> Result<usize> {
        list_events(&self.conn, &self.seen_table, query, each)
            .map_err(self.err("listing seen events"))
    }

    fn seen_event(&mut self, key: &str) -> Result<Option<SeenEvent>> {
        if !table_exists(&self.conn, &self.seen_table).map_err(self.err("looking up a table"))? {
            return Ok(None);
        }
        let sql = format!(
            "SELECT \"group\", \"created_at\", \"context\" FROM {} WHERE \"key\" = ?1",
            quote_ident(&self.seen_table)
        );
        self.conn
            .query_row(&sql, [key], |r| {
                Ok(SeenEvent::from_stored(
                    key.to_owned(),
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                ))
            })
            .optional()
            .map_err(self.err("reading a seen event"))
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        let rows = all_deliveries(&self.conn).map_err(self.err("listing deliveries"))?;
        DeliveryRow::decode_all(rows, &self.name)
    }

    fn count_due(&mut self, now_ms: i64) -> Result<u64> {
        if !table_exists(&self.conn, "spark_delivery").map_err(self.err("looking up a table"))? {
            return Ok(0);
        }
        let n: i64 = self
            .conn
            .query_row(
                &format!("SELECT count(*) FROM spark_delivery WHERE {DUE}"),
                [now_ms],
                |r| r.get(0),
            )
            .map_err(self.err("counting due deliveries"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn history(&mut self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        if !table_exists(&self.conn, "spark_history").map_err(self.err("looking up a table"))? {
            return Ok(Vec::new());
        }
        history(&self.conn, query).map_err(self.err("reading the delivery history"))
    }

    fn attempts_per_hour(&mut self, since: &str) -> Result<Vec<(String, String, u64)>> {
        if !table_exists(&self.conn, "spark_history").map_err(self.err("looking up a table"))? {
            return Ok(Vec::new());
        }
        let fail = self.err("counting the delivery history");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT substr(at, 1, 13), outcome, count(*) FROM spark_history \
                 WHERE at >= ?1 AND outcome IN ('delivered', 'failed', 'dead') GROUP BY 1, 2",
            )
            .map_err(&fail)?;
        let rows = stmt
            .query_map([since], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(&fail)?;
        rows.map(|r| {
            r.map(|(h, o, n)| (h, o, u64::try_from(n).unwrap_or(0)))
                .map_err(&fail)
        })
        .collect()
    }

    fn finish(self: Box<Self>) {
        let path = self.path.clone();
        drop(self);
        if let Some(path) = path {
            checkpoint(&path);
        }
    }
}

/// The history entries `query` selects, newest first.
pub(crate) fn history(
    conn: &Connection,
    query: &HistoryQuery,
) -> rusqlite::Result<Vec<HistoryEntry>> {
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    let mut stmt = conn.prepare(
        "SELECT key, handler, at, outcome, attempt, ms, error, by_whom FROM spark_history \
         WHERE (?1 = '[]' OR outcome IN (SELECT value FROM json_each(?1))) \
         AND (?2 IS NULL OR handler = ?2) \
         AND (?3 = '[]' OR key IN (SELECT value FROM json_each(?3))) \
         ORDER BY at DESC, id DESC LIMIT ?4",
    )?;
    let limit = query
        .limit
        .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    stmt.query_map(
        rusqlite::params![
            json(&query.outcomes),
            query.handler,
            json(&query.keys),
            limit
        ],
        |r| {
            Ok(HistoryEntry {
                key: r.get(0)?,
                handler: r.get(1)?,
                at: r.get(2)?,
                outcome: r.get(3)?,
                attempt: r.get(4)?,
                ms: r.get(5)?,
                error: r.get(6)?,
                by: r.get(7)?,
            })
        },
    )?
    .collect()
}

/// Lists seen events, newest first, calling `each` for each one.
fn list_events(
    conn: &Connection,
    seen_table: &str,
    query: &EventQuery,
    each: &mut dyn FnMut(SeenEvent),
) -> rusqlite::Result<usize> {
    if !table_exists(conn, seen_table)? {
        return Ok(0);
    }
    let mut sql = format!(
        "SELECT \"key\", \"group\", \"created_at\", \"context\" FROM {} WHERE 1",
        quote_ident(seen_table)
    );
    let mut args: Vec<String> = Vec::new();
    if let Some(prefix) = &query.key_prefix {
        args.push(prefix.clone());
        sql.push_str(&format!(
            " AND substr(\"key\", 1, length(?{n})) = ?{n}",
            n = args.len()
        ));
    }
    if let Some(text) = &query.text {
        args.push(text.clone());
        sql.push_str(&format!(
            " AND (instr(\"key\", ?{n}) > 0 OR instr(\"context\", ?{n}) > 0)",
            n = args.len()
        ));
    }
    if let Some(since) = &query.since {
        args.push(since.clone());
        sql.push_str(&format!(" AND \"created_at\" >= ?{}", args.len()));
    }
    if let Some(until) = &query.until {
        args.push(until.clone());
        sql.push_str(&format!(" AND \"created_at\" < ?{}", args.len()));
    }
    sql.push_str(" ORDER BY \"created_at\" DESC, \"key\"");
    if let Some(limit) = query.pushed_limit() {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
    let mut listed = 0;
    let mut matched = 0;
    while let Some(row) = rows.next()? {
        let group: String = row.get(1)?;
        match query.take(&group, &mut matched) {
            std::ops::ControlFlow::Break(()) => break,
            std::ops::ControlFlow::Continue(false) => continue,
            std::ops::ControlFlow::Continue(true) => {}
        }
        each(SeenEvent::from_stored(
            row.get(0)?,
            group,
            row.get(2)?,
            row.get(3)?,
        ));
        listed += 1;
    }
    Ok(listed)
}
