//! What `spark watch` waits on in an SQLite database: `PRAGMA
//! data_version` on a read-only connection of its own, which changes when
//! another connection commits (reading it touches no table: a few
//! microseconds).
//!
//! Not here: the watch loop (`crate::watch`).

use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::config::SqliteConfig;
use crate::error::{Error, Result};
use crate::store::Notifier;

pub struct DataVersion {
    conn: Connection,
    version: i64,
    name: String,
}

impl DataVersion {
    pub fn open(db: &SqliteConfig) -> Result<DataVersion> {
        let name = db.path.display().to_string();
        let conn = Connection::open_with_flags(
            &db.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::Store {
            database: name.clone(),
            action: "opening a connection to watch for changes".into(),
            error: e.to_string(),
        })?;
        let mut watched = DataVersion {
            conn,
            version: 0,
            name,
        };
        watched.settle()?;
        Ok(watched)
    }

    fn read(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| Error::Store {
                database: self.name.clone(),
                action: "watching for changes".into(),
                error: e.to_string(),
            })
    }
}

impl Notifier for DataVersion {
    fn settle(&mut self) -> Result<()> {
        self.version = self.read()?;
        Ok(())
    }

    fn changed(&mut self, wait: Duration) -> Result<bool> {
        if self.read()? != self.version {
            return Ok(true);
        }
        std::thread::sleep(wait);
        Ok(false)
    }
}
