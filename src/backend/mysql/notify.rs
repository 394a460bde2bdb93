//! What `spark watch` waits on in a MySQL or MariaDB database, which has no
//! LISTEN: the server's counters of rows written (`Handler_write`,
//! `Handler_update`, `Handler_delete`) and of transactions committed
//! (`Com_commit`: a row written inside a transaction is seen once it
//! commits), from `SHOW GLOBAL STATUS`, read every 100 ms while it waits:
//! one cheap statement that needs no privilege and changes none of them.
//! Any row written anywhere on the server wakes a cycle, so a server busy
//! with other work wakes watch often (its cycles still come no sooner than
//! the last one took).
//!
//! Not here: the watch loop (`crate::watch`).

use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

use crate::config::MysqlConfig;
use crate::error::{Error, Result};
use crate::store::Notifier;

/// How often the counters are read.
const POLL: Duration = Duration::from_millis(100);

pub struct Counters {
    conn: mysql::Conn,
    name: String,
    /// The counters as the last cycle left them.
    seen: u64,
}

impl Counters {
    pub fn open(my: &MysqlConfig) -> Result<Counters> {
        let mut counters = Counters {
            conn: super::connect(my, false)?.conn,
            name: my.describe(),
            seen: 0,
        };
        counters.seen = counters.read()?;
        Ok(counters)
    }

    /// The sum of the server's row counters.
    fn read(&mut self) -> Result<u64> {
        let rows: Vec<(String, String)> = self
            .conn
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('Handler_write', 'Handler_update', 'Handler_delete', 'Com_commit')",
            )
            .map_err(|e| Error::Store {
                database: self.name.clone(),
                action: "reading the server's row counters".into(),
                error: super::message(&e),
            })?;
        Ok(rows
            .iter()
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .fold(0u64, u64::wrapping_add))
    }
}

impl Notifier for Counters {
    fn settle(&mut self) -> Result<()> {
        self.seen = self.read()?;
        Ok(())
    }

    fn changed(&mut self, wait: Duration) -> Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            let now = self.read()?;
            if now != self.seen {
                self.seen = now;
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
