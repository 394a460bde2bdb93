//! What `spark watch` waits on between cycles: the database changing, a
//! retry coming due, the interval passing, or a signal.
//!
//! - SQLite: `PRAGMA data_version` on a read-only connection of its own,
//!   polled every 100 ms: it changes when another connection commits, and
//!   reading it touches no table (a few microseconds).
//! - PostgreSQL with `[database] listen = "channel"`: `LISTEN channel`, woken
//!   by a trigger's `pg_notify` (see the README); without it, the interval.
//!
//! Not here: running a cycle (the pipeline) or the loop (the CLI).

use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator as _;

use crate::config::{BackendConfig, Config};
use crate::error::{Error, Result};
use crate::signals;

/// How often signals and SQLite's change counter are looked at.
const TICK: Duration = Duration::from_millis(100);

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The database changed.
    Changed,
    /// The time asked for came.
    Due,
    /// SIGTERM or SIGINT: stop.
    Stop,
    /// SIGHUP: reload the config.
    Reload,
}

/// Watches one database for changes.
pub enum Waker {
    Sqlite {
        conn: rusqlite::Connection,
        version: i64,
        name: String,
    },
    Postgres {
        client: Box<postgres::Client>,
        channel: String,
    },
    /// Nothing to watch: the interval alone.
    Interval,
}

impl Waker {
    pub fn open(config: &Config) -> Result<Waker> {
        match &config.database.backend {
            BackendConfig::Sqlite(db) => {
                let name = db.path.display().to_string();
                let conn = rusqlite::Connection::open_with_flags(
                    &db.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| Error::Store {
                    database: name.clone(),
                    action: "opening a connection to watch for changes".into(),
                    error: e.to_string(),
                })?;
                let mut waker = Waker::Sqlite {
                    conn,
                    version: 0,
                    name,
                };
                waker.settle()?;
                Ok(waker)
            }
            BackendConfig::Postgres(pg) => match &pg.listen {
                None => Ok(Waker::Interval),
                Some(channel) => {
                    let mut client = crate::backend::postgres::connect(pg)?;
                    client
                        .batch_execute(&format!("LISTEN {channel}"))
                        .map_err(|e| Error::Store {
                            database: pg.describe(),
                            action: format!("listening on channel {channel}"),
                            error: e.to_string(),
                        })?;
                    Ok(Waker::Postgres {
                        client: Box::new(client),
                        channel: channel.clone(),
                    })
                }
            },
        }
    }

    /// Takes the database as it is now as seen: only later changes wake.
    pub fn settle(&mut self) -> Result<()> {
        match self {
            Waker::Sqlite {
                conn,
                version,
                name,
            } => {
                *version = data_version(conn, name)?;
            }
            Waker::Postgres { client, .. } => {
                // Notifications of what the last cycle saw already.
                let _ = client.notifications().iter().count();
            }
            Waker::Interval => {}
        }
        Ok(())
    }

    /// Waits until `until`, a change, or a signal.
    pub fn wait(&mut self, until: Instant) -> Result<Wake> {
        loop {
            if signals::requested().is_some() {
                return Ok(Wake::Stop);
            }
            if signals::hangup_pending() {
                return Ok(Wake::Reload);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(Wake::Due);
            }
            let tick = TICK.min(until - now);
            match self {
                Waker::Sqlite {
                    conn,
                    version,
                    name,
                } => {
                    if data_version(conn, name)? != *version {
                        return Ok(Wake::Changed);
                    }
                    std::thread::sleep(tick);
                }
                Waker::Postgres { client, channel } => {
                    let got = client
                        .notifications()
                        .timeout_iter(tick)
                        .next()
                        .map_err(|e| Error::Store {
                            database: String::from("PostgreSQL"),
                            action: format!("waiting on channel {channel}"),
                            error: e.to_string(),
                        })?;
                    if got.is_some() {
                        return Ok(Wake::Changed);
                    }
                }
                Waker::Interval => std::thread::sleep(tick),
            }
        }
    }
}

fn data_version(conn: &rusqlite::Connection, name: &str) -> Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .map_err(|e| Error::Store {
            database: name.to_owned(),
            action: "watching for changes".into(),
            error: e.to_string(),
        })
}
