//! What `spark watch` waits on in a PostgreSQL database: `LISTEN channel`,
//! woken by a trigger's `pg_notify` (see the README).
//!
//! Not here: the watch loop (`crate::watch`).

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;

use crate::config::PgConfig;
use crate::error::{Error, Result};
use crate::store::Notifier;

pub struct Listener {
    client: postgres::Client,
    channel: String,
    name: String,
}

impl Listener {
    pub fn open(pg: &PgConfig, channel: &str) -> Result<Listener> {
        let mut client = super::connect(pg)?;
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .map_err(|e| Error::Store {
                database: pg.describe(),
                action: format!("listening on channel {channel}"),
                error: super::message(&e),
            })?;
        Ok(Listener {
            client,
            channel: channel.to_owned(),
            name: pg.describe(),
        })
    }
}

impl Notifier for Listener {
    fn settle(&mut self) -> Result<()> {
        // Notifications of what the last cycle saw already.
        let _ = self.client.notifications().iter().count();
        Ok(())
    }

    fn changed(&mut self, wait: Duration) -> Result<bool> {
        let got = self
            .client
            .notifications()
            .timeout_iter(wait)
            .next()
            .map_err(|e| Error::Store {
                database: self.name.clone(),
                action: format!("waiting on channel {}", self.channel),
                error: super::message(&e),
            })?;
        Ok(got.is_some())
    }
}
