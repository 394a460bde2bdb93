//! What `spark watch` waits on between cycles: the database changing, a
//! retry coming due, the interval passing, or a signal.
//!
//! The database's own notifier comes from its backend (`store::Notifier`:
//! SQLite's data version polled every 100 ms, PostgreSQL's LISTEN); this
//! module names no database library.
//!
//! Not here: running a cycle (the pipeline) or the loop (the CLI).

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::Result;
use crate::signals;
use crate::store::Notifier;

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

/// Watches one database for changes (through its backend's notifier, if
/// it has one; otherwise the interval alone).
pub struct Waker {
    notifier: Option<Box<dyn Notifier>>,
}

impl Waker {
    pub fn open(config: &Config) -> Result<Waker> {
        Ok(Waker {
            notifier: crate::backend::notifier(config)?,
        })
    }

    /// Takes the database as it is now as seen: only later changes wake.
    pub fn settle(&mut self) -> Result<()> {
        match &mut self.notifier {
            Some(n) => n.settle(),
            None => Ok(()),
        }
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
            match &mut self.notifier {
                Some(n) => {
                    if n.changed(tick)? {
                        return Ok(Wake::Changed);
                    }
                }
                None => std::thread::sleep(tick),
            }
        }
    }
}
