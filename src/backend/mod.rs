//! The databases spark works on. A backend reads records and keeps the
//! store: `Reader` and `Store` (in `crate::store`), implemented once per
//! database, chosen here, in one place, from `[database]`. Nothing above
//! this module names a database library.
//!
//! - SQLite (`path`): the embedded default. One run at a time per database
//!   (a file lock next to it).
//! - PostgreSQL (`url`): any number of processes share one backlog; each
//!   claims the deliveries it works on with a lease.

pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use crate::config::{BackendConfig, Config};
use crate::error::Result;
use crate::store::{Notifier, Reader, Store};

/// What `spark watch` waits on in this database (`None`: nothing but the
/// interval, PostgreSQL without `listen`).
pub fn notifier(config: &Config) -> Result<Option<Box<dyn Notifier>>> {
    Ok(match &config.database.backend {
        BackendConfig::Sqlite(db) => Some(Box::new(sqlite::notify::DataVersion::open(db)?)),
        BackendConfig::Postgres(pg) => match &pg.listen {
            None => None,
            Some(channel) => Some(Box::new(postgres::notify::Listener::open(pg, channel)?)),
        },
    })
}

/// Opens the database read-only (never writes, not even spark's schema).
pub fn reader(config: &Config) -> Result<Box<dyn Reader>> {
    match &config.database.backend {
        BackendConfig::Sqlite(db) => Ok(Box::new(sqlite::SqliteReader::open(config, db)?)),
        BackendConfig::Postgres(pg) => Ok(Box::new(postgres::PgReader::open(
            pg,
            &config.database.seen_table,
        )?)),
    }
}

/// Opens the store for writing, creating or upgrading spark's tables (and,
/// for a SQLite database with `create_from`, the database itself).
pub fn store(config: &Config) -> Result<Box<dyn Store>> {
    match &config.database.backend {
        BackendConfig::Sqlite(db) => {
            sqlite::create_if_missing(db)?;
            Ok(Box::new(sqlite::SqliteStore::open(
                &db.path,
                &config.database.seen_table,
                db.busy_timeout,
            )?))
        }
        BackendConfig::Postgres(pg) => Ok(Box::new(postgres::PgStore::open(
            pg,
            &config.database.seen_table,
        )?)),
    }
}

/// The SQL that would bring the database's schema (the seen table, spark's
/// own tables) up to date now: empty of statements when it is.
pub fn pending_sql(config: &Config) -> Result<String> {
    let table = &config.database.seen_table;
    match &config.database.backend {
        BackendConfig::Sqlite(db) => {
            let reader = sqlite::SqliteReader::open(config, db)?;
            let conn = reader.connection();
            let found = sqlite::schema::version(conn).map_err(|e| crate::error::Error::Store {
                database: db.path.display().to_string(),
                action: "reading spark's schema version".into(),
                error: e.to_string(),
            })?;
            let seen = sqlite::schema::table_exists(conn, table).map_err(|e| {
                crate::error::Error::Store {
                    database: db.path.display().to_string(),
                    action: "looking up the seen table".into(),
                    error: e.to_string(),
                }
            })?;
            Ok(sqlite::schema::pending_sql(table, seen, found))
        }
        BackendConfig::Postgres(pg) => {
            let mut client = postgres::connect(pg)?;
            let fail = postgres::store_err(&pg.describe(), "reading spark's schema version");
            let found = postgres::schema::version(&mut client).map_err(&fail)?;
            let seen = postgres::schema::table_exists(&mut client, table).map_err(&fail)?;
            Ok(postgres::schema::pending_sql(table, seen, found))
        }
    }
}

/// The GRANT statements that give PostgreSQL role `role` what spark needs
/// with this config (`spark migrate --print-grants ROLE`); `None` for a
/// database without roles (SQLite).
pub fn grants(config: &Config, role: &str) -> Option<String> {
    let BackendConfig::Postgres(_) = &config.database.backend else {
        return None;
    };
    let mut tables: Vec<String> = Vec::new();
    let mut queries = false;
    for source in &config.sources {
        match &source.records {
            crate::records::RecordSet::Table { table, .. } => {
                if !tables.contains(table) {
                    tables.push(table.clone());
                }
            }
            crate::records::RecordSet::Query(_) => queries = true,
        }
    }
    Some(postgres::privileges::grants(
        &config.database.seen_table,
        role,
        &tables,
        queries,
    ))
}

/// What keeps other runs out while this one works: SQLite's run lock
/// (waiting up to `wait` for another run); nothing on PostgreSQL, where
/// processes share the work by claims. Dropping it lets go.
pub struct RunGuard {
    _lock: Option<sqlite::lock::RunLock>,
}

/// Takes the run guard of the config's database.
pub fn run_guard(config: &Config, wait: Duration) -> Result<RunGuard> {
    match &config.database.backend {
        BackendConfig::Sqlite(db) => Ok(RunGuard {
            _lock: Some(sqlite::lock::RunLock::acquire(&db.path, wait)?),
        }),
        BackendConfig::Postgres(_) => Ok(RunGuard { _lock: None }),
    }
}
