//! The databases spark works on, one driver each (a folder per database
//! library), chosen here, in one place, from `[database]` (`open`). A
//! driver is thin SQL of its dialect behind the traits of
//! `crate::store::driver`; the delivery rules above it are
//! `crate::store::machine`, once. Nothing outside this module names a
//! database library.
//!
//! - SQLite (`path`): the embedded default. One run at a time per database
//!   (a file lock next to it).
//! - PostgreSQL (`url`): any number of processes share one backlog; each
//!   claims the deliveries it works on with a lease.
//! - MySQL and MariaDB (`url = "mysql://..."`): the same, in MySQL's SQL.

pub mod mysql;
pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use crate::config::{BackendConfig, Config};
use crate::error::Result;
use crate::records::RecordSet;
use crate::store::machine::Machine;
use crate::store::{Notifier, Reader, Store};

pub use crate::store::driver::{Driver, RunGuard};

/// A name in standard SQL's quotes (SQLite's and PostgreSQL's): `"a""b"`.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The driver of the config's database: the one place that chooses.
pub fn open(config: &Config) -> Box<dyn Driver> {
    let seen_table = &config.database.seen_table;
    match &config.database.backend {
        BackendConfig::Sqlite(db) => {
            Box::new(sqlite::SqliteDriver::new(db, seen_table, &config.path))
        }
        BackendConfig::Postgres(pg) => Box::new(postgres::PgDriver::new(pg, seen_table)),
        BackendConfig::Mysql(my) => Box::new(mysql::MysqlDriver::new(my, seen_table)),
    }
}

/// What `spark watch` waits on in this database (`None`: nothing but the
/// interval, PostgreSQL without `listen`).
pub fn notifier(config: &Config) -> Result<Option<Box<dyn Notifier>>> {
    open(config).notifier()
}

/// Opens the database read-only (never writes, not even spark's schema).
pub fn reader(config: &Config) -> Result<Box<dyn Reader>> {
    open(config).reader()
}

/// Opens the store for writing, creating or upgrading spark's tables (and,
/// for a SQLite database with `create_from`, the database itself).
pub fn store(config: &Config) -> Result<Box<dyn Store>> {
    Ok(Box::new(Machine::new(open(config).executor()?)))
}

/// The SQL that would bring the database's schema (the seen table, spark's
/// own tables) up to date now: empty of statements when it is.
pub fn pending_sql(config: &Config) -> Result<String> {
    open(config).pending_sql()
}

/// The GRANT statements that give role `role` what spark needs with this
/// config (`spark migrate --print-grants ROLE`); `None` for a database
/// without roles (SQLite).
pub fn grants(config: &Config, role: &str) -> Option<String> {
    let mut tables: Vec<String> = Vec::new();
    let mut queries = false;
    for source in &config.sources {
        match &source.records {
            RecordSet::Table { table, .. } => {
                if !tables.contains(table) {
                    tables.push(table.clone());
                }
            }
            RecordSet::Query(_) => queries = true,
        }
    }
    open(config).grants(role, &tables, queries)
}

/// Takes the run guard of the config's database: SQLite's run lock
/// (waiting up to `wait` for another run); nothing on PostgreSQL, where
/// processes share the work by claims. Dropping it lets go.
pub fn run_guard(config: &Config, wait: Duration) -> Result<RunGuard> {
    open(config).guard(wait)
}
