//! The databases spark works on. A backend reads records and keeps the
//! store: `Reader` and `Store` (in `crate::store`), implemented once per
//! database, chosen here, in one place, from `[database]`. Nothing above
//! this module names a database library.
//!
//! - SQLite (`path`): the embedded default. One run at a time per database
//!   (a file lock next to it).
//! - PostgreSQL (`url`): any number of processes share one backlog; each
//!   claims the deliveries it works on with a lease.

pub mod sqlite;

use std::time::Duration;

use crate::config::{BackendConfig, Config};
use crate::error::Result;
use crate::store::{Reader, Store};

/// Opens the database read-only (never writes, not even spark's schema).
pub fn reader(config: &Config) -> Result<Box<dyn Reader>> {
    match &config.database.backend {
        BackendConfig::Sqlite(db) => Ok(Box::new(sqlite::SqliteReader::open(config, db)?)),
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
    }
}

/// What keeps other runs out while this one works: SQLite's run lock
/// (waiting up to `wait` for another run). Dropping it lets go.
pub struct RunGuard {
    _lock: Option<sqlite::lock::RunLock>,
}

/// Takes the run guard of the config's database.
pub fn run_guard(config: &Config, wait: Duration) -> Result<RunGuard> {
    match &config.database.backend {
        BackendConfig::Sqlite(db) => Ok(RunGuard {
            _lock: Some(sqlite::lock::RunLock::acquire(&db.path, wait)?),
        }),
    }
}
