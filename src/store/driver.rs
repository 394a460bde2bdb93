//! The seam between spark and a database: what a driver (one folder of
//! `crate::backend` per database library) implements, and nothing more.
//!
//! - `Driver`: one database as `[database]` names it: opens its `Reader`
//!   (read-only), its `Executor` (spark's tables created or upgraded), its
//!   run guard (SQLite's run lock; nothing where workers share the store by
//!   claims), its `Notifier` for watch, the SQL of its pending migrations
//!   and the grants a role needs.
//! - `Executor`: one connection that writes. Transactions of row
//!   operations (`Rows`), committed as the rules ask (`Commit`), retried
//!   where the database says another transaction was in the way; the claim
//!   queries of its dialect; reads of the store.
//! - `Rows`: row operations inside one transaction: thin SQL, no rules.
//!   Operations on a delivery this process works on are *fenced* where
//!   workers share the store (`AND claimed_by = me`): they say whether the
//!   row changed, and the machine turns "no" into `Error::LostClaim`.
//!
//! The delivery rules (splitting a failed key out, failed or dead, at most
//! once, reset, forget and prune plans, the history) live once above it, in
//! `crate::store::machine`. Not here: SQL (the drivers).

use std::collections::HashSet;
use std::time::Duration;

use crate::error::Result;
use crate::store::{
    Delivery, DeliveryState, Failure, FileMark, HistoryEntry, NewMark, Notifier, Reader,
    StoredEvent,
};

/// How a write is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// New events and their deliveries: once the write returns it survives
    /// spark being killed; it is on disk (survives a power loss or the
    /// database server crashing) once `Executor::make_durable` returns, which
    /// comes before anything acts on it. Several batches share one sync.
    Batch,
    /// The outcome of handler calls: it need not wait for the disk. Lost to
    /// a power cut or a crash of the server, it can only make a delivered
    /// event delivered again (at least once); a crash of spark loses
    /// nothing the write returned.
    Outcome,
    /// On disk when the write returns: what spark acts on next (a file's
    /// mark, an at-most-once call's mark) and operators' changes.
    Durable,
}

/// Runs one try of a write until it succeeds, fails for good, or has been
/// tried `tries` times: `once` returns its result and whether a failure was
/// transient (a deadlock, a serialization failure, a lock wait: another
/// worker's transaction in the way). Waits a little longer before each
/// new try.
pub fn retry_transient<T>(tries: u32, mut once: impl FnMut() -> (Result<T>, bool)) -> Result<T> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match once() {
            (Err(e), true) if attempt < tries => {
                tracing::debug!(error = %e, "in another worker's way; trying again");
                std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
            }
            (done, _) => return done,
        }
    }
}

/// A delivery row to insert.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub handler: String,
    pub keys: Vec<String>,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub file_mark: Option<FileMark>,
    /// It belongs to this host (a file sink's: another host's file is
    /// another file).
    pub this_host: bool,
    /// This process works on it at once (claimed, where workers share the
    /// store): its id is returned.
    pub claimed: bool,
}

impl NewDelivery {
    /// A pending delivery of `keys` to `handler`.
    pub fn pending(handler: &str, keys: Vec<String>) -> NewDelivery {
        NewDelivery {
            handler: handler.to_owned(),
            keys,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: 0,
            last_error: None,
            file_mark: None,
            this_host: false,
            claimed: false,
        }
    }

    /// The delivery it is once inserted as `id` at `now`.
    pub fn inserted(self, id: i64, now: &str) -> Delivery {
        Delivery {
            id,
            handler: self.handler,
            keys: self.keys,
            done: 0,
            state: self.state,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            file_mark: self.file_mark,
            created_at: now.to_owned(),
            claim: None,
        }
    }
}

/// A seen-table row to insert.
#[derive(Debug, Clone, Copy)]
pub struct SeenRow<'a> {
    pub key: &'a str,
    pub group: &'a str,
    /// The context as JSON.
    pub context: &'a str,
}

/// Row operations inside one transaction of an `Executor::write`. Errors
/// are the store's (`Error::Store`, naming the database and the write's
/// action), or a corrupt row's (`Error::CorruptDelivery`).
pub trait Rows {
    /// The transaction's time as spark writes it (UTC text): the seen-at
    /// time of new events, created_at and updated_at.
    fn now(&self) -> &str;

    /// Which of `keys` are in the seen table.
    fn seen_among(&mut self, keys: &[&str]) -> Result<HashSet<String>>;

    /// Inserts the rows not seen yet, in key order (racing writers take
    /// their locks in one order); for each row, whether this transaction
    /// recorded it (of keys repeated in `rows`, the first).
    fn insert_seen(&mut self, rows: &[SeenRow<'_>]) -> Result<Vec<bool>>;

    /// Deletes `keys` from the seen table; returns those that were there.
    fn delete_seen(&mut self, keys: &[String]) -> Result<Vec<String>>;

    /// Every delivery not finished yet, oldest first, decoded.
    fn deliveries(&mut self) -> Result<Vec<Delivery>>;

    /// The deliveries another process holds a live claim on right now
    /// (none where there are no claims): an operator's change leaves them
    /// to it.
    fn held_by_others(&mut self) -> Result<HashSet<i64>>;

    /// Inserts deliveries; the id of each one `claimed` (others may be
    /// `None`).
    fn insert_deliveries(&mut self, rows: &[NewDelivery]) -> Result<Vec<Option<i64>>>;

    /// Fenced: `keys[..done]` of delivery `id` are finished.
    fn set_done(&mut self, id: i64, done: usize) -> Result<bool>;

    /// Fenced: deletes finished deliveries; returns how many.
    fn delete_finished(&mut self, ids: &[i64]) -> Result<u64>;

    /// Fenced: the delivery failed (`failure` says failed or dead); its
    /// file mark and its claim go (the next attempt is anyone's).
    fn set_failed(&mut self, id: i64, state: DeliveryState, failure: &Failure) -> Result<bool>;

    /// Fenced: an at-most-once delivery is being called.
    fn set_in_flight(&mut self, id: i64) -> Result<bool>;

    /// Fenced: the file position a file-sink delivery writes from.
    fn set_file_mark(&mut self, id: i64, mark: Option<FileMark>) -> Result<bool>;

    /// An operator's change: deletes deliveries (none another process holds).
    fn delete_deliveries(&mut self, ids: &[i64]) -> Result<()>;

    /// An operator's change: the keys a delivery keeps.
    fn set_keys(&mut self, id: i64, keys: &[String]) -> Result<()>;

    /// An operator's change: makes deliveries due now with a fresh count of
    /// attempts and no file mark (a file sink's come to this host); those
    /// another process holds are left alone. Returns the ids reset.
    fn reset(&mut self, ids: &[i64]) -> Result<HashSet<i64>>;

    /// Hands every delivery of handler `from` to `to`; returns how many.
    fn rename_handler(&mut self, from: &str, to: &str) -> Result<u64>;

    /// At-most-once deliveries left in flight by a process that died (on a
    /// shared store: whose lease ran out) become dead with `error`.
    fn bury_interrupted(&mut self, error: &str) -> Result<u64>;

    /// Appends to the history.
    fn insert_history(&mut self, entries: &[HistoryEntry]) -> Result<()>;

    /// Deletes history entries from before `cutoff` (UTC text).
    fn delete_history_before(&mut self, cutoff: &str) -> Result<u64>;

    /// Writes a source's high-water mark (see `NewMark::full`).
    fn set_cursor(&mut self, mark: &NewMark) -> Result<()>;

    /// Deletes every source's high-water mark: each source with a cursor
    /// reads all its records next time.
    fn delete_cursors(&mut self) -> Result<()>;
}

/// One connection that writes the store.
pub trait Executor: Send {
    /// The database, for messages.
    fn name(&self) -> &str;

    /// This process's name in its claims, where workers share the store
    /// (`None`: one process at a time, under the run lock).
    fn worker(&self) -> Option<&str>;

    /// Runs `work` in one transaction committed as `commit` says, trying it
    /// again while another transaction is in its way (a busy SQLite file, a
    /// deadlock). With `single` (one statement, no history riding along) a
    /// driver may run it without a transaction of its own.
    fn write(
        &mut self,
        action: &str,
        commit: Commit,
        single: bool,
        work: &mut dyn FnMut(&mut dyn Rows) -> Result<()>,
    ) -> Result<()>;

    /// Makes every `Commit::Batch` write so far durable.
    fn make_durable(&mut self) -> Result<()>;

    /// The stored events for `keys` (`None` where a key is not seen).
    fn load_events(&mut self, keys: &[String]) -> Result<Vec<Option<StoredEvent>>>;

    /// Deliveries to work on now, for `handlers`: pending ones and failed
    /// ones whose next attempt came before `now_ms`, oldest first (claimed
    /// for this process where workers share the store). Empty when none.
    fn claim_due(&mut self, now_ms: i64, handlers: &[&str]) -> Result<Vec<Delivery>>;

    /// Deliveries of `handlers` holding a file mark (of this host, claimed
    /// where workers share the store), due or not, oldest first.
    fn marked(&mut self, handlers: &[&str]) -> Result<Vec<Delivery>>;

    /// Every delivery not finished yet, oldest first.
    fn deliveries(&mut self) -> Result<Vec<Delivery>>;

    /// Up to `limit` seen keys (with their groups) recorded before `cutoff`
    /// (UTC text), in key order after `after`.
    fn seen_before(
        &mut self,
        cutoff: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>>;

    /// The run is over: lets go of claims not worked on, makes what the run
    /// recorded durable, tidies up (statistics, a checkpoint).
    fn finish_run(&mut self) -> Result<()>;
}

/// This machine's name (a file sink's deliveries belong to it) and this
/// process's, as it signs its claims on a shared store: `host:pid:random`.
pub fn worker_names() -> (String, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    let me = format!("{host}:{}:{:08x}", std::process::id(), random_u32());
    (host, me)
}

/// A random number for a worker's name (no dependency for one number).
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// What keeps other runs out while this one works (SQLite's run lock);
/// dropping it lets go.
pub struct RunGuard {
    _held: Option<Box<dyn std::any::Any>>,
}

impl RunGuard {
    /// A guard holding `held` until it is dropped.
    pub fn holding(held: impl std::any::Any) -> RunGuard {
        RunGuard {
            _held: Some(Box::new(held)),
        }
    }

    /// A guard that keeps nothing out (workers share the store by claims).
    pub fn none() -> RunGuard {
        RunGuard { _held: None }
    }
}

/// One database, as `[database]` names it.
pub trait Driver {
    /// The database, for messages.
    fn name(&self) -> String;

    /// Opens it read-only (never writes, not even spark's schema).
    fn reader(&self) -> Result<Box<dyn Reader>>;

    /// Opens a connection that writes, creating or upgrading spark's tables
    /// (and, for a SQLite database with `create_from`, the database).
    fn executor(&self) -> Result<Box<dyn Executor>>;

    /// The SQL that would bring the schema up to date now (no statement
    /// between `BEGIN` and `COMMIT` when it is).
    fn pending_sql(&self) -> Result<String>;

    /// The GRANT statements a role needs (`None` where a database has no
    /// roles): on the seen table and spark's, SELECT on `tables`, and, for
    /// `queries`, a note that their tables need it too.
    fn grants(&self, role: &str, tables: &[String], queries: bool) -> Option<String>;

    /// Keeps other runs out while it lives (waiting up to `wait`).
    fn guard(&self, wait: Duration) -> Result<RunGuard>;

    /// What `spark watch` waits on (`None`: nothing but its interval).
    fn notifier(&self) -> Result<Option<Box<dyn Notifier>>>;
}

/// A thread renewing this process's leases every third of a lease, on the
/// process's connection (free while a handler call runs). `renew` does one
/// renewal (logging a failure) and says whether to go on: if the connection
/// is cut, renewing stops, the leases run out and the other workers take
/// this process's deliveries over, as they would if it had died. Stopped
/// (and joined) when dropped.
pub struct Heartbeat {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(
        lease: Duration,
        mut renew: impl FnMut() -> std::ops::ControlFlow<()> + Send + 'static,
    ) -> Heartbeat {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let every = lease / 3;
        let thread = std::thread::spawn(move || {
            loop {
                match stopped.recv_timeout(every) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if renew().is_break() {
                    return;
                }
            }
        });
        Heartbeat {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
