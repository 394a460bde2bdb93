//! What `spark watch` waits on in a MySQL or MariaDB database, which has no
//! LISTEN: when the tables of the database last changed, as InnoDB keeps it
//! (`information_schema.TABLES.UPDATE_TIME`, set when a transaction that
//! wrote the table commits), read every 250 ms while it waits: one cheap
//! query that needs no privilege beyond the tables'. spark's own tables
//! (the seen table, spark_delivery, spark_history, spark_meta) are left
//! out, so that a cycle's own writes wake nothing.
//!
//! `UPDATE_TIME` counts whole seconds: a commit in the very second already
//! seen cannot be told apart, so when the last change seen fell in the
//! second it was seen in, watch wakes once more when that second is over.
//! Tables of other databases a query reads are not watched (their changes
//! wait for the interval).
//!
//! Not here: the watch loop (`crate::watch`).

use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

use crate::config::MysqlConfig;
use crate::error::{Error, Result};
use crate::store::Notifier;

/// How often the tables' times are read.
const POLL: Duration = Duration::from_millis(250);

pub struct Changes {
    conn: mysql::Conn,
    name: String,
    seen_table: String,
    /// The last change seen (Unix seconds, the server's clock).
    last: i64,
    /// It fell in the second it was seen in: another commit in that
    /// second would look the same.
    unsure: bool,
}

impl Changes {
    pub fn open(my: &MysqlConfig, seen_table: &str) -> Result<Changes> {
        let mut conn = super::connect(my, false)?.conn;
        // MySQL 8 caches the tables' statistics for a day by default.
        let _ = conn.query_drop("SET SESSION information_schema_stats_expiry = 0");
        let mut changes = Changes {
            conn,
            name: my.describe(),
            seen_table: seen_table.to_owned(),
            last: 0,
            unsure: false,
        };
        changes.settle()?;
        Ok(changes)
    }

    /// The server's time and the tables' last change (Unix seconds).
    fn read(&mut self) -> Result<(i64, i64)> {
        let row: Option<(i64, i64)> = self
            .conn
            .exec_first(
                "SELECT UNIX_TIMESTAMP(), COALESCE(MAX(UNIX_TIMESTAMP(UPDATE_TIME)), 0) \
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME NOT IN (?, 'spark_delivery', 'spark_history', 'spark_meta')",
                (&self.seen_table,),
            )
            .map_err(|e| Error::Store {
                database: self.name.clone(),
                action: "reading when its tables last changed".into(),
                error: super::message(&e),
            })?;
        Ok(row.unwrap_or((0, 0)))
    }
}

impl Notifier for Changes {
    fn settle(&mut self) -> Result<()> {
        let (now, last) = self.read()?;
        self.last = last;
        self.unsure = last >= now;
        Ok(())
    }

    fn changed(&mut self, wait: Duration) -> Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            let (now, last) = self.read()?;
            if last > self.last {
                self.last = last;
                self.unsure = last >= now;
                return Ok(true);
            }
            if self.unsure && now > self.last {
                // The second of the last change is over: whatever else it
                // held is seen by one more cycle.
                self.unsure = false;
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            std::thread::sleep(left.min(POLL));
        }
    }
}
