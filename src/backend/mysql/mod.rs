//! The MySQL and MariaDB driver: the application's database holds the
//! records and the store (django-spark's seen table, spark's own tables),
//! and any number of spark processes share it, as on PostgreSQL: keys are
//! recorded race-free (see `store.rs`: no RETURNING, no INSERT IGNORE), and
//! each process claims the deliveries it works on (`SELECT ... FOR UPDATE
//! SKIP LOCKED`, then a lease it renews while it works).
//!
//! Servers: MariaDB >= 10.6 and MySQL >= 8.0 (`SKIP LOCKED`); an older one
//! is refused at connect, naming its version. Connections use the
//! synchronous `mysql` crate (pure Rust; TLS through rustls as `ssl-mode`
//! asks), and every session runs at READ COMMITTED (InnoDB's default
//! REPEATABLE READ takes gap locks; Django's default is READ COMMITTED
//! too), in UTC (TIMESTAMP values read as UTC), in utf8mb4. Records are
//! streamed from a prepared statement, row by row.
//!
//! Not here: what the pipeline does with records and the store.

pub mod notify;
pub mod schema;
pub mod store;
pub mod values;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, SslOpts};

use crate::config::{MysqlConfig, MysqlSslMode};
use crate::error::{Error, Result};
use crate::records::{Bound, Record, RecordSet, Since};
use crate::store::driver::{Driver, Executor, RunGuard};
use crate::store::{
    Column, CursorState, Delivery, EventQuery, HistoryEntry, HistoryQuery, KeyLimits, Notifier,
    Reader, SeenEvent, SeenTable,
};

pub use store::MysqlExecutor;

/// A name in MySQL's quotes: `` `a``b` ``.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The server's own message for an error.
pub fn message(e: &mysql::Error) -> String {
    match e {
        mysql::Error::MySqlError(m) => format!("{} (error {})", m.message, m.code),
        other => other.to_string(),
    }
}

/// `Error::Store` for a failed statement, for `map_err`.
pub(crate) fn store_err(database: &str, action: &str) -> impl Fn(mysql::Error) -> Error + use<> {
    let (database, action) = (database.to_owned(), action.to_owned());
    move |e| Error::Store {
        database: database.clone(),
        action: action.clone(),
        error: message(&e),
    }
}

/// The oldest servers spark works with: `FOR UPDATE SKIP LOCKED` came in
/// MariaDB 10.6 and MySQL 8.0.
const MARIADB_MIN: (u16, u16) = (10, 6);
const MYSQL_MIN: (u16, u16) = (8, 0);

/// The columns `store::delivery_row` reads, in its order.
pub(crate) const DELIVERY_COLUMNS: &str = "`id`, `handler`, `keys`, `done`, `state`, `attempts`, \
     `next_attempt_at`, `last_error`, `file_offset`, `created_at`, `file_id`, `claimed_by`, `lease_until`";

/// Now, in Unix milliseconds, by the database's clock.
pub(crate) const NOW_MS: &str = "CAST(UNIX_TIMESTAMP(CURRENT_TIMESTAMP(3)) * 1000 AS SIGNED)";

/// `created_at` as UTC text in Django's format, as the SQLite store keeps it.
pub(crate) const CREATED_AT_TEXT: &str = "DATE_FORMAT(`created_at`, '%Y-%m-%d %H:%i:%s.%f')";

/// A connection, its session set up as spark needs, and whether the
/// server is MariaDB.
pub struct Connected {
    pub conn: Conn,
    pub mariadb: bool,
}

/// Connects (TLS as `ssl-mode` says), checks the server's version and sets
/// the session up: READ COMMITTED, UTC, utf8mb4. `found_rows`: UPDATEs
/// report the rows they matched rather than those they changed (fenced
/// changes rely on it).
pub fn connect(my: &MysqlConfig, found_rows: bool) -> Result<Connected> {
    let name = my.describe();
    let fail = |error: String| Error::OpenDatabase {
        database: name.clone(),
        error,
    };
    // Both of rustls's providers may be compiled in: say which.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = OptsBuilder::new()
        .ip_or_hostname(Some(my.host.clone()))
        .tcp_port(my.port)
        .user(Some(my.user.clone()))
        .pass(my.password.clone())
        .db_name(Some(my.database.clone()))
        .prefer_socket(false)
        .tcp_connect_timeout(my.connect_timeout)
        .init(vec![
            "SET NAMES utf8mb4",
            "SET SESSION time_zone = '+00:00'",
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            // A slow handler between two rows of a streamed source must not
            // make the server give up writing them.
            "SET SESSION net_write_timeout = 31536000",
        ]);
    if found_rows {
        builder =
            builder.additional_capabilities(mysql::consts::CapabilityFlags::CLIENT_FOUND_ROWS);
    }
    let tls = match my.ssl_mode {
        MysqlSslMode::Disabled => None,
        MysqlSslMode::Preferred | MysqlSslMode::Required => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        MysqlSslMode::VerifyCa | MysqlSslMode::VerifyIdentity => {
            let mut opts = SslOpts::default()
                .with_danger_skip_domain_validation(my.ssl_mode == MysqlSslMode::VerifyCa);
            if let Some(ca) = &my.ssl_ca {
                if let Err(e) = std::fs::metadata(ca) {
                    return Err(fail(format!("ssl-ca {}: {e}", ca.display())));
                }
                opts = opts.with_root_cert_path(Some(ca.clone()));
            }
            Some(opts)
        }
    };
    let conn = match Conn::new(builder.clone().ssl_opts(tls.clone())) {
        Ok(conn) => conn,
        // PREFERRED: a server without TLS is used without it.
        Err(mysql::Error::DriverError(mysql::DriverError::TlsNotSupported))
            if my.ssl_mode == MysqlSslMode::Preferred =>
        {
            Conn::new(builder.ssl_opts(None::<SslOpts>)).map_err(|e| fail(message(&e)))?
        }
        Err(mysql::Error::DriverError(mysql::DriverError::TlsNotSupported)) => {
            return Err(fail(format!(
                "the server does not offer TLS, which ssl-mode={} requires",
                my.ssl_mode.as_str()
            )));
        }
        Err(e) => return Err(fail(message(&e))),
    };
    let mut conn = conn;
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .map_err(|e| fail(message(&e)))?;
    let version = version.unwrap_or_default();
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    if let Some(problem) = too_old(&version) {
        return Err(fail(problem));
    }
    Ok(Connected { conn, mariadb })
}

/// Why a server of this `VERSION()` cannot serve, if it cannot: older than
/// MariaDB 10.6 or MySQL 8.0. (MariaDB's handshake says 5.5.5 for old
/// clients' sake; `VERSION()` is the truth: "10.11.19-MariaDB-0+deb12u1",
/// "8.0.36".)
pub fn too_old(version: &str) -> Option<String> {
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    // Behind some proxies MariaDB still says 5.5.5- first.
    let bare = if mariadb {
        version.strip_prefix("5.5.5-").unwrap_or(version)
    } else {
        version
    };
    let mut numbers = bare
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u16>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let (min, product) = if mariadb {
        (MARIADB_MIN, "MariaDB")
    } else {
        (MYSQL_MIN, "MySQL")
    };
    ((major, minor) < min).then(|| {
        format!(
            "{product} {version} is older than spark works with ({product} {}.{} or later: \
             it needs FOR UPDATE SKIP LOCKED; MariaDB 10.6 or MySQL 8.0)",
            min.0, min.1
        )
    })
}

/// A MySQL or MariaDB database as `[database] url` names it.
pub struct MysqlDriver {
    my: MysqlConfig,
    seen_table: String,
}

impl MysqlDriver {
    pub fn new(my: &MysqlConfig, seen_table: &str) -> MysqlDriver {
        MysqlDriver {
            my: my.clone(),
            seen_table: seen_table.to_owned(),
        }
    }
}

impl Driver for MysqlDriver {
    fn name(&self) -> String {
        self.my.describe()
    }

    fn reader(&self) -> Result<Box<dyn Reader>> {
        Ok(Box::new(MysqlReader::open(&self.my, &self.seen_table)?))
    }

    fn executor(&self) -> Result<Box<dyn Executor>> {
        Ok(Box::new(MysqlExecutor::open(&self.my, &self.seen_table)?))
    }

    fn pending_sql(&self) -> Result<String> {
        let mut c = connect(&self.my, false)?;
        let fail = store_err(&self.my.describe(), "reading spark's schema version");
        let found = schema::version(&mut c.conn).map_err(&fail)?;
        let seen = schema::table_exists(&mut c.conn, &self.seen_table).map_err(&fail)?;
        Ok(schema::pending_sql(&self.seen_table, seen, found))
    }

    fn grants(&self, role: &str, tables: &[String], queries: bool) -> Option<String> {
        Some(store::grants(
            &self.my.database,
            &self.seen_table,
            role,
            tables,
            queries,
        ))
    }

    fn guard(&self, _wait: std::time::Duration) -> Result<RunGuard> {
        // Processes share the store by claims.
        Ok(RunGuard::none())
    }

    fn notifier(&self) -> Result<Option<Box<dyn Notifier>>> {
        Ok(Some(Box::new(notify::Changes::open(
            &self.my,
            &self.seen_table,
        )?)))
    }
}

/// A read-only connection.
pub struct MysqlReader {
    conn: Conn,
    mariadb: bool,
    name: String,
    seen_table: String,
    /// MariaDB's JSON columns (LONGTEXT with a `json_valid` check), by
    /// (table, column), once looked up.
    json_columns: Option<HashSet<(String, String)>>,
}

impl MysqlReader {
    pub fn open(my: &MysqlConfig, seen_table: &str) -> Result<MysqlReader> {
        let c = connect(my, false)?;
        Ok(MysqlReader {
            conn: c.conn,
            mariadb: c.mariadb,
            name: my.describe(),
            seen_table: seen_table.to_owned(),
            json_columns: None,
        })
    }

    fn err(&self, action: &str) -> impl Fn(mysql::Error) -> Error + use<> {
        store_err(&self.name, action)
    }

    fn seen_exists(&mut self) -> Result<bool> {
        let table = self.seen_table.clone();
        schema::table_exists(&mut self.conn, &table).map_err(self.err("looking up a table"))
    }

    /// What each column of a statement's result is.
    fn kinds(
        &mut self,
        columns: &[mysql::Column],
    ) -> std::result::Result<Vec<values::Kind>, String> {
        if self.mariadb && self.json_columns.is_none() {
            let found: Vec<(String, String)> = self
                .conn
                .query(
                    "SELECT TABLE_NAME, CONSTRAINT_NAME FROM information_schema.CHECK_CONSTRAINTS \
                     WHERE CONSTRAINT_SCHEMA = DATABASE() AND LEVEL = 'Column' \
                       AND CHECK_CLAUSE LIKE 'json_valid(%'",
                )
                .map_err(|e| message(&e))?;
            self.json_columns = Some(found.into_iter().collect());
        }
        Ok(columns
            .iter()
            .map(|c| {
                let json = self.json_columns.as_ref().is_some_and(|j| {
                    j.contains(&(
                        c.org_table_str().into_owned(),
                        c.org_name_str().into_owned(),
                    ))
                });
                values::kind(c, json)
            })
            .collect())
    }
}

impl Reader for MysqlReader {
    fn name(&self) -> &str {
        &self.name
    }

    fn table_exists(&mut self, table: &str) -> Result<bool> {
        schema::table_exists(&mut self.conn, table).map_err(self.err("looking up a table"))
    }

    fn columns(&mut self, records: &RecordSet) -> std::result::Result<Vec<Column>, String> {
        let sql = records.sql_quoted(quote);
        let stmt = self.conn.prep(&sql).map_err(|e| message(&e))?;
        let columns = stmt.columns().to_vec();
        let _ = self.conn.close(stmt);
        let kinds = self.kinds(&columns)?;
        Ok(columns
            .iter()
            .zip(kinds)
            .map(|(c, kind)| Column {
                name: c.name_str().into_owned(),
                declared: Some(values::declared(c, kind)),
                affinity: values::affinity(kind),
            })
            .collect())
    }

    fn scan(
        &mut self,
        records: &RecordSet,
        since: Option<&Since>,
        each: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> std::result::Result<(), String> {
        let sql = match since {
            None => records.sql_quoted(quote),
            Some(since) => records.sql_since(quote, since, &literal),
        };
        let stmt = self.conn.prep(&sql).map_err(|e| message(&e))?;
        let meta = stmt.columns().to_vec();
        let kinds = self.kinds(&meta)?;
        let columns: Arc<[String]> = meta
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect::<Vec<_>>()
            .into();
        let mut record = Record::with_columns(columns);
        let mut rows = self.conn.exec_iter(&stmt, ()).map_err(|e| message(&e))?;
        let mut stopped = false;
        if let Some(set) = rows.iter() {
            for row in set {
                if stopped {
                    // Read what the server already sends, without work.
                    continue;
                }
                let row = row.map_err(|e| message(&e))?;
                record.reset();
                for (i, kind) in kinds.iter().enumerate() {
                    let value = row.as_ref(i).unwrap_or(&mysql::Value::NULL);
                    match values::decode(*kind, value) {
                        Ok(value) => record.push(Ok(value)),
                        Err(Ok(lossy)) => record.push(Err(lossy)),
                        // One value spark cannot read makes one bad record;
                        // the other records go on.
                        Err(Err(problem)) => {
                            let column = record.columns().get(i).cloned().unwrap_or_default();
                            record.set_defect(crate::records::RecordError::new(&column, problem));
                            record.push(Ok(serde_json::Value::Null));
                        }
                    }
                }
                if each(&record).is_break() {
                    stopped = true;
                }
            }
        }
        drop(rows);
        let _ = self.conn.close(stmt);
        Ok(())
    }

    fn seen_table(&mut self) -> Result<SeenTable> {
        let table = self.seen_table.clone();
        let found = schema::check_seen_table(&mut self.conn, &table).map_err(|problem| {
            Error::BadSeenTable {
                table: table.clone(),
                database: self.name.clone(),
                problem,
            }
        })?;
        Ok(match found {
            None => SeenTable {
                exists: false,
                limits: KeyLimits::DJANGO,
            },
            Some(limits) => SeenTable {
                exists: true,
                limits,
            },
        })
    }

    fn cursors(&mut self) -> Result<Vec<CursorState>> {
        if !schema::table_exists(&mut self.conn, "spark_cursor")
            .map_err(self.err("looking up a table"))?
        {
            return Ok(Vec::new());
        }
        type Row = (String, String, Option<String>, i64, String);
        let rows: Vec<Row> = self
            .conn
            .query("SELECT `source`, `fingerprint`, `mark`, `full_at`, `full_as_of` FROM `spark_cursor`")
            .map_err(self.err("reading sources' high-water marks"))?;
        Ok(rows
            .into_iter()
            .map(
                |(source, fingerprint, mark, full_at, full_as_of)| CursorState {
                    source,
                    fingerprint,
                    mark,
                    full_at,
                    full_as_of,
                },
            )
            .collect())
    }

    fn indexed(&mut self, table: &str, column: &str) -> Result<Option<bool>> {
        let found: std::result::Result<Option<i64>, _> = self.conn.exec_first(
            "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = ? AND COLUMN_NAME = ? AND SEQ_IN_INDEX = 1",
            (table, column),
        );
        Ok(found.ok().map(|n| n.unwrap_or(0) > 0))
    }

    fn missing_privileges(&mut self) -> Result<Vec<String>> {
        let table = self.seen_table.clone();
        store::missing_privileges(&mut self.conn, &table).map_err(self.err("checking privileges"))
    }

    fn seen_is_empty(&mut self) -> Result<bool> {
        if !self.seen_exists()? {
            return Ok(true);
        }
        let sql = format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {})",
            quote(&self.seen_table)
        );
        let empty: Option<i64> = self
            .conn
            .query_first(sql)
            .map_err(self.err("reading the seen table"))?;
        Ok(empty.unwrap_or(1) != 0)
    }

    fn count_events(&mut self) -> Result<u64> {
        if !self.seen_exists()? {
            return Ok(0);
        }
        let sql = format!("SELECT count(*) FROM {}", quote(&self.seen_table));
        let n: Option<i64> = self
            .conn
            .query_first(sql)
            .map_err(self.err("counting seen events"))?;
        Ok(u64::try_from(n.unwrap_or(0)).unwrap_or(0))
    }

    fn seen_among(&mut self, keys: &[String]) -> Result<HashSet<String>> {
        if keys.is_empty() || !self.seen_exists()? {
            return Ok(HashSet::new());
        }
        let table = quote(&self.seen_table);
        let fail = self.err("reading the seen table");
        let mut seen = HashSet::new();
        for chunk in keys.chunks(1000) {
            let sql = format!(
                "SELECT `key` FROM {table} WHERE `key` IN ({})",
                placeholders(chunk.len())
            );
            let found: Vec<String> = self.conn.exec(sql, chunk.to_vec()).map_err(&fail)?;
            seen.extend(found);
        }
        Ok(seen)
    }

    fn list_events(
        &mut self,
        query: &EventQuery,
        each: &mut dyn FnMut(SeenEvent),
    ) -> Result<usize> {
        if !self.seen_exists()? {
            return Ok(0);
        }
        let mut sql = format!(
            "SELECT `key`, `group`, {CREATED_AT_TEXT}, `context` FROM {} \
             WHERE (? IS NULL OR LEFT(`key`, CHAR_LENGTH(?)) = ?) \
               AND (? IS NULL OR `created_at` >= ?) \
               AND (? IS NULL OR `created_at` < ?) \
               AND (? IS NULL OR LOCATE(?, `key`) > 0 OR LOCATE(?, `context`) > 0) \
             ORDER BY `created_at` DESC, `key`",
            quote(&self.seen_table)
        );
        if let Some(limit) = query.pushed_limit() {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let fail = self.err("listing seen events");
        let prefix = query.key_prefix.clone();
        let since = query.since.clone().map(|d| format!("{d} 00:00:00"));
        let until = query.until.clone().map(|d| format!("{d} 00:00:00"));
        let params = (
            prefix.clone(),
            prefix.clone(),
            prefix,
            since.clone(),
            since,
            until.clone(),
            until,
            query.text.clone(),
            query.text.clone(),
            query.text.clone(),
        );
        let mut rows = self.conn.exec_iter(sql, params).map_err(&fail)?;
        let mut listed = 0;
        let mut matched = 0;
        if let Some(set) = rows.iter() {
            for row in set {
                let row = row.map_err(&fail)?;
                let (key, group, created_at, context): (String, String, String, Option<String>) =
                    mysql::from_row_opt(row).map_err(|e| Error::Store {
                        database: self.name.clone(),
                        action: "listing seen events".into(),
                        error: e.to_string(),
                    })?;
                match query.take(&group, &mut matched) {
                    // The rest of the result is read and dropped: the
                    // connection must be left without a pending result.
                    std::ops::ControlFlow::Break(()) | std::ops::ControlFlow::Continue(false) => {
                        continue;
                    }
                    std::ops::ControlFlow::Continue(true) => {}
                }
                each(SeenEvent::from_stored(
                    key,
                    group,
                    created_at,
                    context.unwrap_or_else(|| "{}".to_owned()),
                ));
                listed += 1;
            }
        }
        Ok(listed)
    }

    fn seen_event(&mut self, key: &str) -> Result<Option<SeenEvent>> {
        if !self.seen_exists()? {
            return Ok(None);
        }
        let sql = format!(
            "SELECT `group`, {CREATED_AT_TEXT}, `context` FROM {} WHERE `key` = ?",
            quote(&self.seen_table)
        );
        let found: Option<(String, String, Option<String>)> = self
            .conn
            .exec_first(sql, (key,))
            .map_err(self.err("reading a seen event"))?;
        Ok(found.map(|(group, created_at, context)| {
            SeenEvent::from_stored(
                key.to_owned(),
                group,
                created_at,
                context.unwrap_or_else(|| "{}".to_owned()),
            )
        }))
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        if !schema::table_exists(&mut self.conn, "spark_delivery")
            .map_err(self.err("looking up a table"))?
        {
            return Ok(Vec::new());
        }
        store::all_deliveries(&mut self.conn, &self.name)
    }

    fn count_due(&mut self, now_ms: i64) -> Result<u64> {
        if !schema::table_exists(&mut self.conn, "spark_delivery")
            .map_err(self.err("looking up a table"))?
        {
            return Ok(0);
        }
        let n: Option<i64> = self
            .conn
            .exec_first(
                "SELECT COUNT(*) FROM `spark_delivery` \
                 WHERE `state` = 'pending' OR (`state` = 'failed' AND `next_attempt_at` <= ?)",
                (now_ms,),
            )
            .map_err(self.err("counting due deliveries"))?;
        Ok(u64::try_from(n.unwrap_or(0)).unwrap_or(0))
    }

    fn attempts_per_hour(&mut self, since: &str) -> Result<Vec<(String, String, u64)>> {
        if !schema::table_exists(&mut self.conn, "spark_history")
            .map_err(self.err("looking up a table"))?
        {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, i64)> = self
            .conn
            .exec(
                "SELECT LEFT(`at`, 13), `outcome`, COUNT(*) FROM `spark_history` \
                 WHERE `at` >= ? AND `outcome` IN ('delivered', 'failed', 'dead') GROUP BY 1, 2",
                (since,),
            )
            .map_err(self.err("counting the delivery history"))?;
        Ok(rows
            .into_iter()
            .map(|(h, o, n)| (h, o, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    fn history(&mut self, query: &HistoryQuery) -> Result<Vec<HistoryEntry>> {
        if !schema::table_exists(&mut self.conn, "spark_history")
            .map_err(self.err("looking up a table"))?
        {
            return Ok(Vec::new());
        }
        let mut sql =
            "SELECT `key`, `handler`, `at`, `outcome`, `attempt`, `ms`, `error`, `by_whom` \
                       FROM `spark_history` WHERE 1 = 1"
                .to_owned();
        let mut params: Vec<mysql::Value> = Vec::new();
        if !query.outcomes.is_empty() {
            sql.push_str(&format!(
                " AND `outcome` IN ({})",
                placeholders(query.outcomes.len())
            ));
            params.extend(query.outcomes.iter().map(|o| o.as_str().into()));
        }
        if let Some(handler) = &query.handler {
            sql.push_str(" AND `handler` = ?");
            params.push(handler.as_str().into());
        }
        if !query.keys.is_empty() {
            sql.push_str(&format!(
                " AND `key` IN ({})",
                placeholders(query.keys.len())
            ));
            params.extend(query.keys.iter().map(|k| k.as_str().into()));
        }
        sql.push_str(" ORDER BY `at` DESC, `id` DESC");
        if let Some(limit) = query.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        type Entry = (
            String,
            String,
            String,
            String,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Entry> = self
            .conn
            .exec(sql, params)
            .map_err(self.err("reading the delivery history"))?;
        Ok(rows
            .into_iter()
            .map(
                |(key, handler, at, outcome, attempt, ms, error, by)| HistoryEntry {
                    key,
                    handler,
                    at,
                    outcome,
                    attempt: u32::try_from(attempt).unwrap_or(0),
                    ms,
                    error,
                    by,
                },
            )
            .collect())
    }
}

/// A cursor's bound in MySQL's words: a datetime without the `T` and the
/// `Z` spark writes its values with (sessions are in UTC).
fn literal(bound: &Bound) -> String {
    match bound {
        Bound::Integer(n) => n.to_string(),
        Bound::Moment(text) => format!("'{}'", text.trim_end_matches('Z').replace('T', " ")),
    }
}

/// `?, ?, ?` for `n` values.
pub(crate) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_skip_locked_are_named() {
        for old in [
            "10.5.23-MariaDB",
            "10.3.39-MariaDB-0+deb10u1",
            "5.7.44",
            "5.5.5-10.4.1-MariaDB",
        ] {
            let says = too_old(old).unwrap_or_else(|| panic!("{old} passed"));
            assert!(says.contains(old), "{says}");
        }
        for fine in [
            "10.6.0-MariaDB",
            "10.11.19-MariaDB-0+deb12u1",
            "5.5.5-10.11.6-MariaDB",
            "11.4.2-MariaDB",
            "8.0.36",
            "8.4.0",
            "9.1.0",
        ] {
            assert_eq!(too_old(fine), None, "{fine}");
        }
    }
}
