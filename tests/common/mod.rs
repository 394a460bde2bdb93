//! A small builder over assert_cmd for scenario tests: a temp folder with a
//! config and a real database (an SQLite file in the folder, or a fresh
//! PostgreSQL or MariaDB/MySQL database of its own on the test server), the
//! real `spark` binary run in it, and helpers to read back what it wrote,
//! the same on every backend.
//!
//! A behaviour test is written once and run on every backend with
//! `on_every_backend!`; PostgreSQL comes from `SPARK_TEST_DATABASE_URL`
//! (default `postgresql://postgres@127.0.0.1:5432/test`), MySQL/MariaDB from
//! `SPARK_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`).
//! Without a server answering, its tests are skipped with a line saying so,
//! unless `CI` is set: then they fail.
#![allow(dead_code)]

pub mod console;
pub mod servers;

use std::sync::atomic::{AtomicUsize, Ordering};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use rusqlite::Connection;
use tempfile::TempDir;

/// Challenges and donations, like ../shared/bench/make_dataset.py makes.
pub const CHALLENGE_SCHEMA: &str = "
CREATE TABLE challenge (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, user_email TEXT NOT NULL,
    is_active INTEGER NOT NULL, start_date TEXT NOT NULL, end_date TEXT NOT NULL);
CREATE TABLE donation (
    id INTEGER PRIMARY KEY, challenge_id INTEGER NOT NULL REFERENCES challenge(id),
    amount INTEGER NOT NULL);
";

/// The source query of the SPEC's example.
pub const CHALLENGE_QUERY: &str = "SELECT c.*, (SELECT count(*) FROM donation d WHERE d.challenge_id = c.id) AS donation_count FROM challenge c";

/// A config with the challenge source and one jsonl handler `log` for every
/// challenge event, writing `events.jsonl`. `extra` is appended. (`Case::config`
/// points it at a PostgreSQL case's database.)
pub fn challenge_config(extra: &str) -> String {
    format!(
        r#"
[database]
path = "app.sqlite3"

[delivery]
backoff = "0s"

[[sources]]
name = "challenges"
function = "challenge_events"
query = "{CHALLENGE_QUERY}"

[[handlers]]
name = "log"
group = "^challenge"
kind = "jsonl"
path = "events.jsonl"
{extra}"#
    )
}

/// A case whose database holds the challenges `rows` (SQL `VALUES` tuples:
/// id, title, user_email, is_active, start_date, end_date) and whose config
/// is `challenge_config(extra)`.
pub fn challenges_case(rows: &str, extra: &str) -> Case {
    challenges_case_on(Backend::Sqlite, rows, extra)
}

/// `challenges_case` on `backend`.
pub fn challenges_case_on(backend: Backend, rows: &str, extra: &str) -> Case {
    Case::on(backend)
        .db(&format!(
            "{CHALLENGE_SCHEMA}\nINSERT INTO challenge VALUES {rows};"
        ))
        .config(&challenge_config(extra))
}

/// A source `typed` reading every row of table `typed` (id, then a column
/// per type), its events to `events.jsonl`: how each type reads back.
pub const TYPED_CONFIG: &str = r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "typed"
table = "typed"
group = "typed"

[[handlers]]
name = "log"
group = "typed"
kind = "jsonl"
path = "events.jsonl"
"#;

/// The database a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

/// The admin URL of the MySQL/MariaDB test server.
pub fn test_mysql_url() -> String {
    std::env::var("SPARK_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// The admin URL of the PostgreSQL test server.
pub fn test_server_url() -> String {
    std::env::var("SPARK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// Whether `what` (a test server, a browser), found at `at`, is there for
/// `test`: `answers` says. Missing under `CI` fails the test (CI needs it);
/// elsewhere the test is skipped, saying so.
pub fn available(test: &str, what: &str, at: &str, answers: &Result<(), String>) -> bool {
    match answers {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {what} at {at} is not there ({e}); CI needs it")
        }
        Err(e) => {
            eprintln!("skipped {test} on {what}: none at {at} ({e})");
            false
        }
    }
}

impl Backend {
    /// Whether several processes share the store (by claims and leases).
    pub fn shared(self) -> bool {
        self != Backend::Sqlite
    }

    /// MySQL/MariaDB, when the test server answers. Otherwise: under `CI`,
    /// a failure; elsewhere `None` (the caller skips, saying so).
    pub fn mysql(test: &str) -> Option<Backend> {
        static ANSWERS: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        let answers = ANSWERS.get_or_init(|| {
            mysql::Conn::new(mysql::Opts::from_url(&test_mysql_url()).map_err(|e| e.to_string())?)
                .map(drop)
                .map_err(|e| e.to_string())
        });
        available(test, "MySQL", &test_mysql_url(), answers).then_some(Backend::Mysql)
    }

    /// PostgreSQL, when the test server answers. Otherwise: under `CI`, a
    /// failure; elsewhere `None` (the caller skips, saying so).
    pub fn postgres(test: &str) -> Option<Backend> {
        static ANSWERS: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        let answers = ANSWERS.get_or_init(|| {
            postgres::Client::connect(&test_server_url(), postgres::NoTls)
                .map(drop)
                .map_err(|e| e.to_string())
        });
        available(test, "PostgreSQL", &test_server_url(), answers).then_some(Backend::Postgres)
    }
}

/// Runs each test function once per backend: `name::sqlite`,
/// `name::postgres` and `name::mysql`.
#[macro_export]
macro_rules! on_every_backend {
    ($($(#[$meta:meta])* fn $name:ident($backend:ident: Backend) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn run($backend: Backend) $body
                #[test]
                fn sqlite() {
                    run(Backend::Sqlite)
                }
                #[test]
                fn postgres() {
                    if let Some(b) = Backend::postgres(concat!(module_path!(), "::", stringify!($name))) {
                        run(b)
                    }
                }
                #[test]
                fn mysql() {
                    if let Some(b) = Backend::mysql(concat!(module_path!(), "::", stringify!($name))) {
                        run(b)
                    }
                }
            }
        )*
    };
}

/// Runs each test function once per backend where workers share the
/// store: `name::postgres` and `name::mysql`.
#[macro_export]
macro_rules! on_shared_backends {
    ($($(#[$meta:meta])* fn $name:ident($backend:ident: Backend) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn run($backend: Backend) $body
                #[test]
                fn postgres() {
                    if let Some(b) = Backend::postgres(concat!(module_path!(), "::", stringify!($name))) {
                        run(b)
                    }
                }
                #[test]
                fn mysql() {
                    if let Some(b) = Backend::mysql(concat!(module_path!(), "::", stringify!($name))) {
                        run(b)
                    }
                }
            }
        )*
    };
}

/// The lease of PostgreSQL and MySQL test cases.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(3);

/// A name for a test database no other test (or test run) uses.
fn unique_database_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "spark_test_{}_{}_{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// A server's admin URL naming database `name` instead (its query kept).
fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    format!("{base}/{name}{query}")
}

/// A PostgreSQL database of a case's own, dropped with it.
struct PgDb {
    name: String,
    url: String,
}

impl PgDb {
    fn create() -> PgDb {
        let admin = test_server_url();
        let name = unique_database_name();
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("test server");
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create test database");
        PgDb {
            url: with_database(&admin, &name),
            name,
        }
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("test database")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&test_server_url(), postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A MySQL/MariaDB database of a case's own, dropped with it.
struct MyDb {
    name: String,
    url: String,
}

impl MyDb {
    fn create() -> MyDb {
        let admin = test_mysql_url();
        let name = unique_database_name();
        let mut conn = admin_mysql(&admin);
        use mysql::prelude::Queryable;
        conn.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .expect("create test database");
        MyDb {
            url: with_database(&admin, &name),
            name,
        }
    }

    /// A connection that reads the tests' SQL as SQLite does: "..." names,
    /// `||` joins strings.
    fn conn(&self) -> mysql::Conn {
        use mysql::prelude::Queryable;
        let mut conn = admin_mysql(&self.url);
        conn.query_drop(
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',PIPES_AS_CONCAT,ANSI_QUOTES'), \
             time_zone = '+00:00', NAMES utf8mb4",
        )
        .expect("set up the test session");
        // Long recursive CTEs (many_challenges_sql): MariaDB's and MySQL's
        // names for the limit.
        let _ = conn.query_drop("SET SESSION max_recursive_iterations = 10000000");
        let _ = conn.query_drop("SET SESSION cte_max_recursion_depth = 10000000");
        conn
    }

    /// Runs every statement of `sql`, failing on the first that fails
    /// (dropping a multi-statement result would hide a later error).
    fn run(&self, sql: &str) -> Result<(), mysql::Error> {
        use mysql::prelude::Queryable;
        let mut conn = self.conn();
        let mut result = conn.query_iter(sql)?;
        while let Some(set) = result.iter() {
            for row in set {
                row?;
            }
        }
        Ok(())
    }
}

fn admin_mysql(url: &str) -> mysql::Conn {
    let opts = mysql::Opts::from_url(url).expect("MySQL test URL");
    mysql::Conn::new(mysql::OptsBuilder::from_opts(opts).prefer_socket(false))
        .expect("MySQL test server")
}

impl Drop for MyDb {
    fn drop(&mut self) {
        use mysql::prelude::Queryable;
        if let Ok(opts) = mysql::Opts::from_url(&test_mysql_url())
            && let Ok(mut conn) = mysql::Conn::new(opts)
        {
            let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

/// SQLite test SQL in MySQL's words: `printf('%.*c', n, 'x')` is
/// `REPEAT('x', n)`, `INTEGER PRIMARY KEY` numbers its rows, and a CTE goes
/// after `INSERT INTO`.
fn for_mysql(sql: &str) -> String {
    let re = regex::Regex::new(r"printf\('%\.\*c', (\w+), '(.)'\)").expect("regex");
    let sql = re.replace_all(sql, "REPEAT('$2', $1)");
    let cte =
        regex::Regex::new(r"(?s)(WITH RECURSIVE .*?\))\s*INSERT INTO (\w+) SELECT").expect("regex");
    let sql = cte.replace_all(&sql, "INSERT INTO $2 $1 SELECT");
    sql.replace("INTEGER PRIMARY KEY", "INTEGER AUTO_INCREMENT PRIMARY KEY")
}

/// SQLite test SQL in PostgreSQL's words: `INTEGER PRIMARY KEY` numbers its
/// rows, `printf('%.*c', n, 'x')` is `repeat('x', n)`.
fn for_postgres(sql: &str) -> String {
    let re = regex::Regex::new(r"printf\('%\.\*c', (\w+), '(.)'\)").expect("regex");
    let sql = re.replace_all(sql, "repeat('$2', $1)");
    sql.replace(
        "INTEGER PRIMARY KEY",
        "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
}

#[must_use]
pub struct Case {
    pub dir: TempDir,
    bin: PathBuf,
    pg: Option<PgDb>,
    my: Option<MyDb>,
}

impl Case {
    pub fn new() -> Case {
        Case::on(Backend::Sqlite)
    }

    /// A case on `backend`.
    pub fn on(backend: Backend) -> Case {
        Case {
            dir: tempfile::tempdir().expect("temp dir"),
            bin: assert_cmd::cargo::cargo_bin("spark"),
            pg: (backend == Backend::Postgres).then(PgDb::create),
            my: (backend == Backend::Mysql).then(MyDb::create),
        }
    }

    pub fn backend(&self) -> Backend {
        if self.pg.is_some() {
            Backend::Postgres
        } else if self.my.is_some() {
            Backend::Mysql
        } else {
            Backend::Sqlite
        }
    }

    /// The `[database]` line that names this case's database (on
    /// PostgreSQL with a short lease, so that tests of dead workers need
    /// not wait a minute).
    pub fn database_line(&self) -> String {
        match (&self.pg, &self.my) {
            (Some(pg), _) => format!("url = \"{}\"\nlease = \"{}s\"", pg.url, LEASE.as_secs()),
            (_, Some(my)) => format!("url = \"{}\"\nlease = \"{}s\"", my.url, LEASE.as_secs()),
            _ => "path = \"app.sqlite3\"".to_owned(),
        }
    }

    /// Waits until the leases a killed worker held have run out (nothing on
    /// SQLite, where a run lock dies with its process).
    pub fn let_leases_run_out(&self) {
        if self.backend().shared() {
            std::thread::sleep(LEASE + std::time::Duration::from_millis(300));
        }
    }

    /// The PostgreSQL URL of the case's database.
    pub fn pg_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|p| p.url.as_str())
    }

    /// Runs a different binary (e.g. an example) instead of `spark`.
    pub fn binary(mut self, bin: PathBuf) -> Case {
        self.bin = bin;
        self
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Creates the database (`app.sqlite3`, or fills the case's PostgreSQL
    /// database) and runs `sql` in it.
    pub fn db(self, sql: &str) -> Case {
        self.sql(sql);
        self
    }

    /// The MySQL URL of the case's database.
    pub fn mysql_url(&self) -> Option<&str> {
        self.my.as_ref().map(|m| m.url.as_str())
    }

    /// Runs `sql` in MySQL as it is (a MySQL case only).
    pub fn my_sql(&self, sql: &str) {
        let my = self.my.as_ref().expect("a MySQL case");
        my.run(sql)
            .unwrap_or_else(|e| panic!("run sql: {e}\n{sql}"));
    }

    /// Runs `sql` in the case's database (SQLite's words; see `for_postgres`
    /// and `for_mysql`).
    pub fn sql(&self, sql: &str) {
        if let Some(my) = &self.my {
            my.run(&for_mysql(sql))
                .unwrap_or_else(|e| panic!("run sql: {e}\n{sql}"));
            return;
        }
        match &self.pg {
            None => {
                let conn = Connection::open(self.path("app.sqlite3")).expect("open db");
                conn.execute_batch(sql).expect("run sql");
            }
            Some(pg) => pg
                .client()
                .batch_execute(&for_postgres(sql))
                .unwrap_or_else(|e| panic!("run sql: {e}\n{sql}")),
        }
    }

    /// Runs `sql` in PostgreSQL as it is (a PostgreSQL case only).
    pub fn pg_sql(&self, sql: &str) {
        let pg = self.pg.as_ref().expect("a PostgreSQL case");
        pg.client()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("run sql: {e}\n{sql}"));
    }

    /// Rows of a query, each value as text (NULL as None).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        if let Some(my) = &self.my {
            use mysql::prelude::Queryable;
            let rows: Vec<mysql::Row> = my
                .conn()
                .query(sql)
                .unwrap_or_else(|e| panic!("query: {e}\n{sql}"));
            return rows
                .into_iter()
                .map(|r| {
                    r.unwrap()
                        .into_iter()
                        .map(|v| match v {
                            mysql::Value::NULL => None,
                            mysql::Value::Bytes(b) => {
                                Some(String::from_utf8_lossy(&b).into_owned())
                            }
                            mysql::Value::Int(n) => Some(n.to_string()),
                            mysql::Value::UInt(n) => Some(n.to_string()),
                            mysql::Value::Float(x) => Some(x.to_string()),
                            mysql::Value::Double(x) => Some(x.to_string()),
                            other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
                        })
                        .collect()
                })
                .collect();
        }
        match &self.pg {
            None => {
                let conn = Connection::open(self.path("app.sqlite3")).expect("open db");
                let mut stmt = conn.prepare(sql).expect("query");
                let n = stmt.column_count();
                let mut rows = stmt.query([]).expect("query");
                let mut out = Vec::new();
                while let Some(row) = rows.next().expect("row") {
                    out.push(
                        (0..n)
                            .map(|i| match row.get_ref(i).expect("value") {
                                rusqlite::types::ValueRef::Null => None,
                                rusqlite::types::ValueRef::Integer(v) => Some(v.to_string()),
                                rusqlite::types::ValueRef::Real(v) => Some(v.to_string()),
                                rusqlite::types::ValueRef::Text(t)
                                | rusqlite::types::ValueRef::Blob(t) => {
                                    Some(String::from_utf8_lossy(t).into_owned())
                                }
                            })
                            .collect(),
                    );
                }
                out
            }
            Some(pg) => {
                let mut client = pg.client();
                let columns: Vec<String> = client
                    .prepare(sql)
                    .unwrap_or_else(|e| panic!("query: {e}\n{sql}"))
                    .columns()
                    .iter()
                    .map(|c| format!("q.\"{}\"::text", c.name()))
                    .collect();
                let text = format!("SELECT {} FROM ({sql}) AS q", columns.join(", "));
                client
                    .query(&text, &[])
                    .unwrap_or_else(|e| panic!("query: {e}\n{text}"))
                    .iter()
                    .map(|r| (0..columns.len()).map(|i| r.get(i)).collect())
                    .collect()
            }
        }
    }

    /// Writes the config, its `[database]` naming this case's database
    /// (a config written for SQLite, `path = "app.sqlite3"`, is pointed at
    /// the case's PostgreSQL database instead).
    pub fn config(self, toml: &str) -> Case {
        let toml = toml.replace("path = \"app.sqlite3\"", &self.database_line());
        self.file("spark.toml", &toml)
    }

    pub fn file(self, rel: &str, content: &str) -> Case {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write file");
        self
    }

    /// A shell script, made executable.
    pub fn script(self, rel: &str, body: &str) -> Case {
        let case = self.file(rel, &format!("#!/bin/sh\n{body}\n"));
        let path = case.path(rel);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        case
    }

    /// A command ready to run in the case's folder with `--config spark.toml`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self.dir.path())
            .env_remove("SPARK_CONFIG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg("spark.toml");
        cmd
    }

    /// Starts spark with `args` in the background (stdout and stderr captured).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(&self.bin)
            .current_dir(self.dir.path())
            .env_remove("SPARK_CONFIG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg("spark.toml")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn spark")
    }

    /// Lines of a text file in the case's folder (empty if missing).
    pub fn lines(&self, rel: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(rel))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs spark with `args` and returns what it did.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command().args(args).output().expect("run spark");
        Run { output }
    }

    /// The `key` of every line of a jsonl file (in file order; empty if the
    /// file does not exist). Every line must be whole JSON.
    pub fn jsonl_keys(&self, rel: &str) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(self.path(rel)) else {
            return Vec::new();
        };
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{rel}: not JSON ({e}): {line:?}"));
                v["key"].as_str().expect("key").to_owned()
            })
            .collect()
    }

    /// Seen keys and their groups.
    pub fn seen(&self) -> BTreeMap<String, String> {
        self.query("SELECT \"key\", \"group\" FROM spark_event")
            .into_iter()
            .map(|r| {
                (
                    r[0].clone().unwrap_or_default(),
                    r[1].clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Rows of `spark_delivery` as (handler, keys, state, attempts, last_error).
    pub fn deliveries(&self) -> Vec<(String, String, String, i64, Option<String>)> {
        self.query(
            "SELECT handler, \"keys\", state, attempts, last_error FROM spark_delivery ORDER BY id",
        )
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
                r[2].clone().unwrap_or_default(),
                r[3].as_deref().and_then(|n| n.parse().ok()).unwrap_or(-1),
                r[4].clone(),
            )
        })
        .collect()
    }

    /// What the database holds, to show that a command left it untouched:
    /// the SQLite file's bytes, or every PostgreSQL table's rows.
    pub fn db_bytes(&self) -> Vec<u8> {
        if self.pg.is_none() && self.my.is_none() {
            return std::fs::read(self.path("app.sqlite3")).expect("read db");
        }
        let mut all = String::new();
        for table in self.tables() {
            all.push_str(&format!("== {table}\n"));
            let mut rows: Vec<String> = self
                .query(&format!("SELECT * FROM \"{table}\""))
                .into_iter()
                .map(|r| format!("{r:?}"))
                .collect();
            rows.sort();
            all.push_str(&rows.join("\n"));
        }
        all.into_bytes()
    }

    /// Names of the tables in the database.
    pub fn tables(&self) -> Vec<String> {
        let sql = match (&self.pg, &self.my) {
            (None, Some(_)) => {
                "SELECT TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1"
            }
            (None, None) => "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            (Some(_), _) => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
            }
        };
        self.query(sql)
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect()
    }
}

/// What one run of spark did (its assertions return it, to chain more).
pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    fn describe(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
    /// Asserts the exit status and returns the run.
    #[track_caller]
    pub fn status(self, code: i32) -> Run {
        assert_eq!(self.code(), code, "{}", self.describe());
        self
    }
    #[track_caller]
    pub fn success(self) -> Run {
        self.status(0)
    }
    /// Asserts that stderr mentions every one of `parts`.
    #[track_caller]
    pub fn stderr_has(self, parts: &[&str]) -> Run {
        let err = self.stderr();
        for part in parts {
            assert!(
                err.contains(part),
                "stderr lacks {part:?}\n{}",
                self.describe()
            );
        }
        self
    }
    #[track_caller]
    pub fn stdout_has(self, parts: &[&str]) -> Run {
        let out = self.stdout();
        for part in parts {
            assert!(
                out.contains(part),
                "stdout lacks {part:?}\n{}",
                self.describe()
            );
        }
        self
    }
    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
    }
}

/// Waits (up to 30 s) until `cond` holds.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A small deterministic random number generator (for kill times).
pub struct Lcg(pub u64);

impl Lcg {
    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

/// `n` active challenges that started long before 2026-03-10 with no
/// donations: each yields `challenge_created_N` and `challenge_inactivity_2d_N`.
pub fn many_challenges_sql(n: usize) -> String {
    format!(
        "{CHALLENGE_SCHEMA}
        WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n})
        INSERT INTO challenge SELECT i, 'challenge ' || i, 'u' || i || '@x', 1, '2026-01-01', '2026-06-01' FROM c;"
    )
}

/// The keys `many_challenges_sql(n)` yields.
pub fn many_challenges_keys(n: usize) -> Vec<String> {
    let mut keys = Vec::with_capacity(2 * n);
    for i in 1..=n {
        keys.push(format!("challenge_created_{i}"));
        keys.push(format!("challenge_inactivity_2d_{i}"));
    }
    keys.sort();
    keys
}

/// Sorted copy, for comparing key sets.
pub fn sorted<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.as_ref().to_owned()).collect();
    v.sort();
    v
}

/// Whether a path exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}
