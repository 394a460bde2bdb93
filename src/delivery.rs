//! The delivery engine: hands a delivery's events to its handler and records
//! each outcome in the store, following the handler's guarantee and retry
//! policy.
//!
//! - at-least-once (default): a success is recorded after the call returns;
//!   a run that dies mid-call repeats that one call.
//! - at-most-once: the key is marked in flight before the call; a run that
//!   dies mid-call leaves it dead (listed, retried only by hand), never
//!   called twice.
//! - file sinks (jsonl): the file's length is recorded before writing; the
//!   whole delivery is written and fsynced, then recorded done. Recovering an
//!   unfinished delivery cuts the file back to that length first, so every
//!   key is in the file exactly once.
//!
//! A failure is kept with its error; the next attempt waits `backoff`,
//! doubling per attempt (with jitter, capped at `max_backoff`); after
//! `max_attempts` attempts the delivery is dead.
//!
//! Not here: finding new events (the pipeline), the store's rules
//! (`store::machine`) or SQL (the drivers).

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock;
use crate::config::{Config, Guarantee, RetryPolicy};
use crate::crashpoint;
use crate::error::{Error, Result};
use crate::handlers::{self, CutError, DeliverEach, Dispatch, Failed, Outcome, Retry, Sink};
use crate::registry::Registry;
use crate::signals;
use crate::store::{Delivery, DeliveryState, Failure, FileMark, HistoryEntry, Store, StoredEvent};

/// Spaces a handler's calls `interval` apart, however many are in flight
/// (`rate = "10/s"`: 100 ms).
pub struct Pace {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pace {
    pub fn new(interval: Duration) -> Pace {
        Pace {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this call's turn.
    pub fn wait(&self) {
        let turn = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let turn = (*next).max(Instant::now());
            *next = turn + self.interval;
            turn
        };
        let now = Instant::now();
        if turn > now {
            std::thread::sleep(turn - now);
        }
    }
}

/// How a handler's calls are made: its sink, shared by the calls in flight
/// (at most `n`), paced when it has a rate.
struct Calls {
    sink: Arc<dyn DeliverEach>,
    pace: Option<Arc<Pace>>,
    n: usize,
    /// The handler's name, for the log.
    handler: String,
}

/// A call's outcome, with which attempt it was and how long it took.
struct Called {
    outcome: Outcome,
    took: Took,
}

/// The threads that make a handler's calls in flight: started as calls
/// need them (at most `n`), each taking the next call from a queue, so that
/// a fast handler does not pay a thread per call. Each outcome comes back
/// with the tag it was sent with.
struct Workers<'scope, T> {
    jobs: Option<mpsc::Sender<(T, Dispatch<'scope>, u32)>>,
    queue: Arc<Mutex<mpsc::Receiver<(T, Dispatch<'scope>, u32)>>>,
    done_tx: mpsc::Sender<(T, Called)>,
    done: mpsc::Receiver<(T, Called)>,
    /// Outcomes taken off `done` early (to see whether a worker is free),
    /// handed out first.
    early: std::collections::VecDeque<(T, Called)>,
    started: usize,
    idle: usize,
}

impl<'scope, T: Send + 'scope> Workers<'scope, T> {
    fn new() -> Self {
        let (jobs, queue) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        Workers {
            jobs: Some(jobs),
            queue: Arc::new(Mutex::new(queue)),
            done_tx,
            done,
            early: std::collections::VecDeque::new(),
            started: 0,
            idle: 0,
        }
    }

    /// Hands a call to a worker, starting one if none is idle.
    fn send<'env>(
        &mut self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        calls: &'scope Calls,
        job: (T, Dispatch<'scope>, u32),
    ) {
        // A fast handler's worker is often done already: take what it
        // finished, and it takes this call, rather than a new thread.
        while self.idle == 0
            && let Ok(done) = self.done.try_recv()
        {
            self.idle += 1;
            self.early.push_back(done);
        }
        if self.idle == 0 && self.started < calls.n {
            self.started += 1;
            self.idle += 1;
            let queue = Arc::clone(&self.queue);
            let done = self.done_tx.clone();
            scope.spawn(move || {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((tag, dispatch, attempt)) = next else {
                        return;
                    };
                    if done.send((tag, calls.call(&dispatch, attempt))).is_err() {
                        return;
                    }
                }
            });
        }
        self.idle = self.idle.saturating_sub(1);
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// Waits for the next outcome (`None` when no worker is left).
    fn recv(&mut self) -> Option<(T, Called)> {
        if let Some(done) = self.early.pop_front() {
            return Some(done);
        }
        let got = self.done.recv().ok();
        if got.is_some() {
            self.idle += 1;
        }
        got
    }

    /// An outcome that is ready, without waiting.
    fn try_recv(&mut self) -> Option<(T, Called)> {
        if let Some(done) = self.early.pop_front() {
            return Some(done);
        }
        let got = self.done.try_recv().ok();
        if got.is_some() {
            self.idle += 1;
        }
        got
    }
}

impl<T> Drop for Workers<'_, T> {
    /// Closing the queue lets the workers end (the scope joins them).
    fn drop(&mut self) {
        self.jobs = None;
    }
}

/// Which attempt a call was and how long it took (for the history).
#[derive(Clone, Copy)]
struct Took {
    attempt: u32,
    ms: i64,
    /// The same in microseconds (to tell a fast handler).
    us: u64,
}

/// A call quicker than this is one a thread of its own only slows down.
const FAST_CALL_US: u64 = 50;

/// After this many fast calls in a row, a handler with calls in flight is
/// called from the delivering thread itself (see `Slot::inline`).
const FAST_STREAK: u32 = 64;

/// An inline call slower than this puts the calls back on their threads.
const SLOW_CALL_US: u64 = 1_000;

impl Calls {
    /// Calls the handler; with `-v`, one log line per call: key, handler,
    /// outcome, attempt, milliseconds.
    fn call(&self, dispatch: &Dispatch<'_>, attempt: u32) -> Called {
        if let Some(pace) = &self.pace {
            pace.wait();
        }
        let started = Instant::now();
        // An error may quote a value of megabytes: bounded from here on.
        let outcome = self.sink.deliver(dispatch, attempt).map_err(|mut failed| {
            failed.error = crate::redact::error_text(failed.error);
            failed
        });
        let elapsed = started.elapsed();
        let ms = elapsed.as_millis() as u64;
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        match &outcome {
            Ok(()) => tracing::info!(key = dispatch.event.key.as_str(), handler = %self.handler,
                outcome = "delivered", attempt, ms, "delivery"),
            Err(failed) => {
                tracing::info!(key = dispatch.event.key.as_str(), handler = %self.handler,
                outcome = "failed", attempt, ms, error = failed.error.as_str(), "delivery")
            }
        }
        Called {
            outcome,
            took: Took {
                attempt,
                ms: i64::try_from(ms).unwrap_or(i64::MAX),
                us,
            },
        }
    }
}

/// What happened to one handler's deliveries during a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandlerStats {
    pub name: String,
    /// Events delivered.
    pub delivered: u64,
    /// Failed attempts (each kept for a retry).
    pub failed: u64,
    /// Deliveries given up after their last attempt.
    pub dead: u64,
    /// Events left waiting for a later run (the handler was stopped).
    pub waiting: u64,
}

/// One failed attempt, for the run's report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailureReport {
    pub handler: String,
    pub key: String,
    pub attempts: u32,
    pub dead: bool,
    pub error: String,
}

/// The error recorded for an at-most-once delivery whose run died mid-call.
pub const INTERRUPTED: &str = "interrupted: the run stopped during this call; \
     the handler is at-most-once, so it is not retried automatically";

struct Slot {
    name: String,
    guarantee: Guarantee,
    retry: RetryPolicy,
    sink: Sink,
    /// Calls in flight at once.
    concurrency: usize,
    /// The pace of calls, for a handler with a `rate`.
    pace: Option<Arc<Pace>>,
    /// Why this handler takes no more deliveries in this run.
    stopped: Option<String>,
    /// Another process on this host writes this handler's file: its
    /// deliveries are that process's, not owed by this one.
    elsewhere: bool,
    /// File deliveries staged in the sink, not written yet, with their
    /// event counts (in the order they were staged).
    staged: Vec<(Delivery, u64)>,
    /// Whether this handler's calls in flight are made one after the other
    /// by the delivering thread: its calls proved so fast (`FAST_CALL_US`)
    /// that handing each to a thread costs more than the call. Its
    /// outcomes are still recorded a window of `concurrency` at a time.
    inline: bool,
    /// Fast calls in a row (to decide `inline`).
    fast_streak: u32,
}

/// Delivers and records, handler by handler.
pub struct Engine {
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    stats: Vec<HandlerStats>,
    failures: Vec<FailureReport>,
    /// At-most-once deliveries a dead run left in flight, now dead.
    buried: u64,
    /// Group commit for file sinks: deliveries are staged and written
    /// several at a time (one write, one fsync), and finished ones wait to
    /// be recorded with the next batch (saving a commit per batch).
    group_files: bool,
    /// File deliveries written and fsynced, not yet recorded as done.
    finished: Vec<i64>,
    now: fn() -> i64,
    /// When the run started (Unix ms): failed deliveries due before it are
    /// retried in this run; one failing during it waits for a later run.
    run_started: i64,
    /// Whether calls are written to the delivery history.
    history: bool,
}

/// Keys per delivery where workers share the backlog, for a handler with
/// one call at a time: small, so that many workers share a backlog evenly.
pub const CHUNK: usize = 50;

/// How many failures a run's report lists (the counts cover them all).
const FAILURES_LISTED: usize = 100;

impl Engine {
    pub fn new(config: &Config, registry: &Registry) -> Engine {
        let slots: Vec<Slot> = config
            .handlers
            .iter()
            .map(|h| Slot {
                name: h.name.clone(),
                guarantee: h.guarantee,
                retry: h.retry,
                sink: handlers::build(
                    &h.name,
                    &h.kind,
                    h.concurrency,
                    registry,
                    &config.withheld_env,
                ),
                concurrency: h.concurrency,
                pace: h.rate.map(|r| Arc::new(Pace::new(r.interval()))),
                stopped: None,
                elsewhere: false,
                staged: Vec::new(),
                inline: false,
                fast_streak: 0,
            })
            .collect();
        let by_name = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let stats = slots
            .iter()
            .map(|s| HandlerStats {
                name: s.name.clone(),
                ..HandlerStats::default()
            })
            .collect();
        Engine {
            slots,
            by_name,
            stats,
            failures: Vec::new(),
            buried: 0,
            group_files: false,
            finished: Vec::new(),
            now: clock::now_ms,
            run_started: clock::now_ms(),
            history: !config.delivery.keep_history.is_zero(),
        }
    }

    /// The history entry of one call of handler `h`.
    fn entry(&self, h: usize, key: &str, took: Took, failure: Option<&Failure>) -> HistoryEntry {
        HistoryEntry {
            key: key.to_owned(),
            handler: self.slots[h].name.clone(),
            at: clock::now_text(),
            outcome: match failure {
                None => "delivered",
                Some(f) if f.next_attempt_at.is_none() => "dead",
                Some(_) => "failed",
            }
            .to_owned(),
            attempt: took.attempt,
            ms: Some(took.ms),
            error: failure.map(|f| f.error.clone()),
            by: None,
        }
    }

    /// Writes one call of handler `h` to the history, when it is kept.
    fn log_call(
        &self,
        store: &mut dyn Store,
        h: usize,
        key: &str,
        took: Took,
        failure: Option<&Failure>,
    ) -> Result<()> {
        if self.history {
            store.add_history(&[self.entry(h, key, took, failure)])?;
        }
        Ok(())
    }

    /// Writes `entries` to the history, when it is kept.
    fn log(&self, store: &mut dyn Store, entries: &[HistoryEntry]) -> Result<()> {
        if self.history && !entries.is_empty() {
            store.add_history(entries)?;
        }
        Ok(())
    }

    /// Starts a new round: failed deliveries whose retry time came since the
    /// last `drain` are due again (for a long-lived `deliver`).
    pub fn restart_clock(&mut self) {
        self.run_started = (self.now)();
    }

    pub fn stats(&self) -> &[HandlerStats] {
        &self.stats
    }

    pub fn failures(&self) -> &[FailureReport] {
        &self.failures
    }

    /// From now on (or no longer: `on = false`, after writing what is
    /// staged), group file deliveries: each is staged in its sink, the
    /// staged ones are written together by `write_staged` (one write, one
    /// fsync), and finished ones wait to be recorded with the next batch.
    /// Safe because a file delivery not recorded as finished is cut back to
    /// its recorded offset and written again after a crash, and a staged
    /// delivery's offset counts what was staged before it.
    pub fn group_file_deliveries(&mut self, on: bool) {
        self.group_files = on;
    }

    /// Bytes staged in file sinks, not written yet.
    pub fn staged_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match &s.sink {
                Sink::File(sink) => sink.staged(),
                Sink::Each(_) => 0,
            })
            .sum()
    }

    /// Writes every file sink's staged deliveries (see `write_staged`).
    pub fn write_all_staged(&mut self, store: &mut dyn Store) -> Result<()> {
        for h in 0..self.slots.len() {
            self.write_staged(store, h)?;
        }
        Ok(())
    }

    /// Writes handler `h`'s staged deliveries with one write and one fsync,
    /// once their records are durable. On an error the file is cut back to
    /// where the first of them starts, and each of them fails.
    fn write_staged(&mut self, store: &mut dyn Store, h: usize) -> Result<()> {
        let staged = std::mem::take(&mut self.slots[h].staged);
        if staged.is_empty() {
            return Ok(());
        }
        // Their records (and offsets) are durable before any of their
        // lines can be.
        store.make_durable()?;
        let Sink::File(sink) = &mut self.slots[h].sink else {
            return Ok(());
        };
        let started = Instant::now();
        let written = sink.write_staged();
        let (events, ms) = (
            staged.iter().map(|(_, n)| n).sum::<u64>(),
            started.elapsed().as_millis() as u64,
        );
        match written {
            Ok(()) => {
                tracing::info!(handler = %self.slots[h].name, events, deliveries = staged.len(),
                    outcome = "delivered", ms, "file write");
                for (mut delivery, n) in staged {
                    if self.group_files {
                        delivery.done = delivery.keys.len();
                        self.finished.push(delivery.id);
                    } else {
                        let end = delivery.keys.len();
                        store.advance(&mut delivery, end)?;
                    }
                    self.stats[h].delivered += n;
                }
                Ok(())
            }
            Err(e) => {
                let first = staged.first().and_then(|(d, _)| d.file_mark);
                let cut = first.is_some_and(|mark| sink.truncate_to(&mark).is_ok());
                for (i, (mut delivery, _)) in staged.into_iter().enumerate() {
                    // The first keeps its offset when the cut failed: the
                    // next run cuts back from there.
                    let keep = if i == 0 && !cut { first } else { None };
                    self.file_failed(store, h, &mut delivery, e.to_string(), keep)?;
                }
                Ok(())
            }
        }
    }

    /// The file deliveries finished since the last call, to record as done.
    pub fn take_finished(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.finished)
    }

    /// How many at-most-once deliveries a dead run had left in flight.
    pub fn buried(&self) -> u64 {
        self.buried
    }

    /// The file position to record with a new delivery for handler `h`: the
    /// file's length and identity, for a file sink still taking deliveries.
    pub fn planned_mark(&mut self, h: usize) -> Option<FileMark> {
        let slot = self.slots.get_mut(h)?;
        if slot.stopped.is_some() {
            return None;
        }
        match &mut slot.sink {
            Sink::File(sink) => match sink.position() {
                Ok(mark) => Some(mark),
                Err(e) => {
                    slot.elsewhere = e.kind() == std::io::ErrorKind::WouldBlock;
                    slot.stopped = Some(e.to_string());
                    None
                }
            },
            Sink::Each(_) => None,
        }
    }

    /// How many keys a delivery for handler `h` holds where workers share
    /// the backlog: `CHUNK`, or four windows of its calls in flight.
    pub fn chunk(&self, h: usize) -> usize {
        let n = self.slots.get(h).map_or(1, |s| s.concurrency);
        CHUNK.max(16 * n)
    }

    /// How many calls handler `h` has in flight at once.
    pub fn in_flight(&self, h: usize) -> usize {
        self.slots.get(h).map_or(1, |s| s.concurrency.max(1))
    }

    /// Whether handler `h` writes a local file (its deliveries belong to
    /// this host).
    pub fn is_file_sink(&self, h: usize) -> bool {
        self.slots
            .get(h)
            .is_some_and(|s| matches!(s.sink, Sink::File(_)))
    }

    /// The handlers still taking deliveries in this run (none once a stop
    /// was asked for). A file sink is opened (and locked) first: one whose
    /// file another process writes is left to that process.
    fn active_handlers(&mut self) -> Vec<String> {
        if signals::requested().is_some() {
            return Vec::new();
        }
        for slot in &mut self.slots {
            if slot.stopped.is_some() {
                continue;
            }
            // A file another process holds is that process's to write; any
            // other trouble with it fails its deliveries, loudly.
            if let Sink::File(sink) = &mut slot.sink
                && let Err(e) = sink.position()
                && e.kind() == std::io::ErrorKind::WouldBlock
            {
                slot.elsewhere = true;
                slot.stopped = Some(e.to_string());
            }
        }
        self.slots
            .iter()
            .filter(|s| s.stopped.is_none())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Works off what is owed: buries at-most-once calls a dead run left in
    /// flight, settles deliveries holding a file mark, then claims and
    /// delivers due deliveries until none is left. Deliveries failing
    /// during this run wait for a later one. Returns how many deliveries it
    /// worked on.
    pub fn drain(&mut self, store: &mut dyn Store) -> Result<usize> {
        let buried = store.bury_interrupted(INTERRUPTED)?;
        if buried > 0 {
            tracing::warn!(
                buried,
                "at-most-once deliveries were in flight when an earlier run died; they are dead now"
            );
        }
        self.buried += buried as u64;
        let now = self.run_started;
        // A delivery that holds a file mark was being written when a run
        // died (or could not be cut back): settle it first, before anything
        // else writes to that file; one not due yet is only cut back.
        let mut count = 0;
        let handlers = self.active_handlers();
        let names: Vec<&str> = handlers.iter().map(String::as_str).collect();
        let marked = store.marked(&names)?;
        for mut delivery in settle_order(store, marked)? {
            let is_due = delivery.state == DeliveryState::Pending
                || (delivery.state == DeliveryState::Failed && delivery.next_attempt_at < now);
            if is_due {
                count += 1;
                self.deliver_stored(store, &mut delivery)?;
            } else {
                self.release_mark(store, &mut delivery)?;
            }
        }
        loop {
            let handlers = self.active_handlers();
            if handlers.is_empty() {
                break;
            }
            let names: Vec<&str> = handlers.iter().map(String::as_str).collect();
            let claimed = store.claim_due(now, &names)?;
            if claimed.is_empty() {
                break;
            }
            for mut delivery in claimed {
                count += 1;
                self.deliver_stored(store, &mut delivery)?;
            }
        }
        Ok(count)
    }

    /// Delivers a delivery read back from the store, loading its events.
    pub fn deliver_stored(&mut self, store: &mut dyn Store, delivery: &mut Delivery) -> Result<()> {
        let stored = store.load_events(delivery.remaining())?;
        let mut dispatches: Vec<Option<Dispatch<'_>>> = vec![None; delivery.done];
        dispatches.extend(stored.iter().map(|s| s.as_ref().map(StoredEvent::dispatch)));
        self.deliver(store, delivery, &dispatches)
    }

    /// Cuts a file sink back to the mark a not-yet-due delivery holds (a
    /// file that is not the one it wrote to holds nothing of it).
    fn release_mark(&mut self, store: &mut dyn Store, delivery: &mut Delivery) -> Result<()> {
        let (Some(mark), Some(&h)) = (delivery.file_mark, self.by_name.get(&delivery.handler))
        else {
            return Ok(());
        };
        if let Sink::File(sink) = &mut self.slots[h].sink {
            match sink.truncate_to(&mark) {
                Ok(()) | Err(CutError::OtherFile(_)) => store.set_file_mark(delivery, None)?,
                Err(CutError::Io(e)) => self.slots[h].stopped = Some(e.to_string()),
            }
        }
        Ok(())
    }

    /// Delivers the remaining keys of `delivery`. `events[i]` is the event
    /// of `delivery.keys[i]` (`None`: no longer stored; skipped).
    pub fn deliver(
        &mut self,
        store: &mut dyn Store,
        delivery: &mut Delivery,
        events: &[Option<Dispatch<'_>>],
    ) -> Result<()> {
        let Some(&h) = self.by_name.get(&delivery.handler) else {
            tracing::warn!(
                handler = %delivery.handler,
                keys = delivery.remaining().len(),
                "deliveries wait for a handler that is not in the config"
            );
            return Ok(());
        };
        if self.slots[h].stopped.is_some() || signals::requested().is_some() {
            if !self.slots[h].elsewhere {
                self.stats[h].waiting += delivery.remaining().len() as u64;
            }
            return Ok(());
        }
        let delivered = match self.slots[h].sink {
            Sink::File(_) => self.deliver_file(store, h, delivery, events),
            Sink::Each(_) => self.deliver_each(store, h, delivery, events),
        };
        match delivered {
            // Another worker took this delivery over (this one's lease ran
            // out while it worked): it is theirs now.
            Err(Error::LostClaim { .. }) => {
                tracing::warn!(handler = %delivery.handler, delivery = delivery.id,
                    "delivery taken over by another worker; leaving it to them");
                Ok(())
            }
            other => other,
        }
    }

    fn deliver_file(
        &mut self,
        store: &mut dyn Store,
        h: usize,
        delivery: &mut Delivery,
        events: &[Option<Dispatch<'_>>],
    ) -> Result<()> {
        let Sink::File(sink) = &mut self.slots[h].sink else {
            return Ok(());
        };
        let batch: Vec<Dispatch<'_>> = events
            .get(delivery.done..)
            .unwrap_or(&[])
            .iter()
            .flatten()
            .copied()
            .collect();
        if self.group_files {
            // Recorded at the position the sink is at (what is staged
            // included): staged, written later with others.
            let at_position = match (delivery.file_mark, sink.position()) {
                (Some(mark), Ok(now)) => mark == now && delivery.done == 0,
                _ => false,
            };
            if at_position {
                return match sink.stage(&batch) {
                    Ok(()) => {
                        let n = batch.len() as u64;
                        self.slots[h].staged.push((delivery.clone(), n));
                        Ok(())
                    }
                    Err(e) => self.file_failed(store, h, delivery, e.to_string(), None),
                };
            }
            // Anything else is written on its own, after what is staged.
            self.write_staged(store, h)?;
        }
        let Sink::File(sink) = &mut self.slots[h].sink else {
            return Ok(());
        };
        let mark = match delivery.file_mark {
            Some(mark) => sink.truncate_to(&mark).map(|()| mark),
            None => sink.position().map_err(CutError::Io),
        };
        let mark = match mark {
            Ok(mark) => mark,
            // Another file (nothing of this delivery in it) or an I/O error:
            // the mark is dropped, so the next attempt writes from the end
            // of the file that is there then.
            Err(e) => return self.file_failed(store, h, delivery, e.to_string(), None),
        };
        if delivery.file_mark.is_none() {
            // Recorded before anything is written, so a crash can cut back.
            store.set_file_mark(delivery, Some(mark))?;
        }
        // Recorded durably before anything of it is written.
        store.make_durable()?;
        let Sink::File(sink) = &mut self.slots[h].sink else {
            return Ok(());
        };
        match sink.append_all(&batch) {
            Ok(()) => {
                let n = batch.len() as u64;
                let end = delivery.keys.len();
                if self.group_files {
                    // Recorded by the next batch's transaction (see `take_finished`).
                    delivery.done = end;
                    self.finished.push(delivery.id);
                } else {
                    store.advance(delivery, end)?;
                }
                self.stats[h].delivered += n;
                Ok(())
            }
            Err(e) => {
                let cut = sink.truncate_to(&mark).is_ok();
                self.file_failed(store, h, delivery, e.to_string(), (!cut).then_some(mark))
            }
        }
    }

    /// Records a failed file delivery and stops the handler for this run.
    /// `keep_mark`: the file could not be cut back, so the delivery keeps
    /// its mark and the next run cuts it.
    fn file_failed(
        &mut self,
        store: &mut dyn Store,
        h: usize,
        delivery: &mut Delivery,
        error: String,
        keep_mark: Option<FileMark>,
    ) -> Result<()> {
        let failure = self.failure(h, delivery, Failed::later(error.clone()));
        store.fail_rest(delivery, &failure)?;
        if keep_mark.is_some() {
            store.set_file_mark(delivery, keep_mark)?;
        }
        let key = delivery.remaining().first().cloned().unwrap_or_default();
        self.note_failure(h, &key, &failure, delivery.remaining().len() as u64);
        self.slots[h].stopped = Some(error);
        Ok(())
    }

    fn deliver_each(
        &mut self,
        store: &mut dyn Store,
        h: usize,
        delivery: &mut Delivery,
        events: &[Option<Dispatch<'_>>],
    ) -> Result<()> {
        // A handler is called only for deliveries recorded durably.
        store.make_durable()?;
        let Sink::Each(sink) = &self.slots[h].sink else {
            return Ok(());
        };
        let calls = Calls {
            sink: Arc::clone(sink),
            pace: self.slots[h].pace.clone(),
            n: self.slots[h].concurrency.max(1),
            handler: self.slots[h].name.clone(),
        };
        match self.slots[h].guarantee {
            Guarantee::AtLeastOnce => self.at_least_once(store, h, delivery, events, &calls),
            Guarantee::AtMostOnce => self.at_most_once(store, h, delivery, events, &calls),
        }
    }

    /// At-least-once: up to `n` calls in flight over a window of the
    /// delivery's next `n` keys; outcomes are recorded in key order, so a
    /// crash repeats at most the `n` calls of the window.
    fn at_least_once(
        &mut self,
        store: &mut dyn Store,
        h: usize,
        delivery: &mut Delivery,
        events: &[Option<Dispatch<'_>>],
        calls: &Calls,
    ) -> Result<()> {
        let attempt = delivery.attempts + 1;
        let len = delivery.keys.len();
        std::thread::scope(|scope| -> Result<()> {
            let mut workers = Workers::<usize>::new();
            let mut next = delivery.done;
            let mut in_flight = 0usize;
            // Outcomes not recorded yet (`None`: the event is gone).
            let mut pending: BTreeMap<usize, Option<Called>> = BTreeMap::new();
            loop {
                // Recorded first, so that the window moves on before new
                // calls start.
                if self.record_ready(store, h, delivery, &mut pending)? {
                    return Ok(());
                }
                while in_flight < calls.n
                    && next < len
                    && next < delivery.done + calls.n
                    && signals::requested().is_none()
                {
                    let i = next;
                    next += 1;
                    let Some(dispatch) = events.get(i).copied().flatten() else {
                        pending.insert(i, None);
                        continue;
                    };
                    if calls.n == 1 || self.slots[h].inline {
                        let called = calls.call(&dispatch, attempt);
                        self.note_speed(h, &called);
                        pending.insert(i, Some(called));
                    } else {
                        in_flight += 1;
                        workers.send(scope, calls, (i, dispatch, attempt));
                    }
                }
                if in_flight == 0 {
                    if pending.is_empty() && (next >= len || signals::requested().is_some()) {
                        break;
                    }
                    continue;
                }
                // Wait for one outcome, and take every other one ready.
                if let Some((i, outcome)) = workers.recv() {
                    in_flight -= 1;
                    self.note_speed(h, &outcome);
                    pending.insert(i, Some(outcome));
                    while let Some((i, outcome)) = workers.try_recv() {
                        in_flight -= 1;
                        self.note_speed(h, &outcome);
                        pending.insert(i, Some(outcome));
                    }
                }
            }
            if delivery.done < len {
                self.stats[h].waiting += (len - delivery.done) as u64;
            }
            Ok(())
        })
    }

    /// Notes how long a call of handler `h` took: a handler whose calls are
    /// all fast is called inline (see `Slot::inline`), until one is slow.
    fn note_speed(&mut self, h: usize, called: &Called) {
        let slot = &mut self.slots[h];
        if slot.concurrency <= 1 {
            return;
        }
        if slot.inline {
            if called.took.us >= SLOW_CALL_US {
                slot.inline = false;
                slot.fast_streak = 0;
            }
        } else if called.took.us < FAST_CALL_US {
            slot.fast_streak += 1;
            slot.inline = slot.fast_streak >= FAST_STREAK;
        } else {
            slot.fast_streak = 0;
        }
    }

    /// Records, in key order, the outcomes `pending` holds from the
    /// delivery's next key on: a run of successes (and events gone) in one
    /// transaction, then a failure on its own, and so on. Returns whether
    /// the delivery's last key failed (the delivery itself is failed then).
    fn record_ready(
        &mut self,
        store: &mut dyn Store,
        h: usize,
        delivery: &mut Delivery,
        pending: &mut BTreeMap<usize, Option<Called>>,
    ) -> Result<bool> {
        loop {
            let from = delivery.done;
            let mut end = from;
            let mut delivered = 0;
            let mut entries = Vec::new();
            while let Some(None)
            | Some(Some(Called {
                outcome: Ok(()), ..
            })) = pending.get(&end)
            {
                match pending.remove(&end).flatten() {
                    None => {
                        tracing::warn!(key = delivery.keys[end].as_str(), handler = %delivery.handler,
                        "event no longer in the seen table; its delivery is dropped")
                    }
                    Some(called) => {
                        delivered += 1;
                        if self.history {
                            entries.push(self.entry(h, &delivery.keys[end], called.took, None));
                        }
                    }
                }
                end += 1;
            }
            if end > from {
                if delivered > 0 {
                    crashpoint::hit("call-returned");
                }
                store.advance(delivery, end)?;
                self.log(store, &entries)?;
                self.stats[h].delivered += delivered;
            }
            let i = delivery.done;
            let Some(Some(Called {
                outcome: Err(failed),
                took,
            })) = pending.remove(&i)
            else {
                return Ok(false);
            };
            let key = delivery.keys[i].clone();
            let failure = self.failure(h, delivery, failed);
            // Split out to a delivery of its own; the last key's failure is
            // the delivery's own (its `done` stays: nothing is left to call).
            store.fail_next(delivery, &failure)?;
            self.log_call(store, h, &key, took, Some(&failure))?;
            self.note_failure(h, &key, &failure, 1);
            if i + 1 == delivery.keys.len() {
                return Ok(true);
            }
        }
    }

    /// At-most-once: each key is marked in flight (a delivery of its own)
    /// before it is called, up to `n` at once; a crash leaves those dead,
    /// never called twice.
    fn at_most_once(
        &mut self,
        store: &mut dyn Store,
        h: usize,
        delivery: &mut Delivery,
        events: &[Option<Dispatch<'_>>],
        calls: &Calls,
    ) -> Result<()> {
        let len = delivery.keys.len();
        std::thread::scope(|scope| -> Result<()> {
            let mut workers = Workers::<(Delivery, String)>::new();
            let mut in_flight = 0usize;
            let mut last_taken = false;
            loop {
                while in_flight < calls.n
                    && !last_taken
                    && delivery.done < len
                    && signals::requested().is_none()
                {
                    let i = delivery.done;
                    let Some(dispatch) = events.get(i).copied().flatten() else {
                        tracing::warn!(key = delivery.keys[i].as_str(), handler = %delivery.handler,
                            "event no longer in the seen table; its delivery is dropped");
                        store.advance(delivery, i + 1)?;
                        continue;
                    };
                    let single = store.begin_at_most_once(delivery)?;
                    last_taken = single.id == delivery.id;
                    let attempt = single.attempts + 1;
                    let key = delivery.keys[i].clone();
                    if calls.n == 1 {
                        let outcome = calls.call(&dispatch, attempt);
                        self.record_single(store, h, single, &key, outcome)?;
                    } else {
                        in_flight += 1;
                        workers.send(scope, calls, ((single, key), dispatch, attempt));
                    }
                }
                if in_flight == 0 {
                    break;
                }
                if let Some(((single, key), outcome)) = workers.recv() {
                    in_flight -= 1;
                    self.record_single(store, h, single, &key, outcome)?;
                }
            }
            if !last_taken && delivery.done < len {
                self.stats[h].waiting += (len - delivery.done) as u64;
            }
            Ok(())
        })
    }

    /// Records the outcome of an at-most-once call on its own delivery.
    fn record_single(
        &mut self,
        store: &mut dyn Store,
        h: usize,
        mut single: Delivery,
        key: &str,
        called: Called,
    ) -> Result<()> {
        let Called { outcome, took } = called;
        match outcome {
            Ok(()) => {
                crashpoint::hit("call-returned");
                let end = single.keys.len();
                store.advance(&mut single, end)?;
                self.log_call(store, h, key, took, None)?;
                self.stats[h].delivered += 1;
            }
            Err(failed) => {
                let failure = self.failure(h, &single, failed);
                store.fail_rest(&mut single, &failure)?;
                self.log_call(store, h, key, took, Some(&failure))?;
                self.note_failure(h, key, &failure, 1);
            }
        }
        Ok(())
    }

    /// The failure to record for the next attempt of `delivery`. Its error
    /// is kept without secrets (it is stored and printed). A receiver's
    /// "retry after" sets the time and does not count as an attempt; a
    /// call that can never work makes the delivery dead at once.
    fn failure(&self, h: usize, delivery: &Delivery, failed: Failed) -> Failure {
        let error = crate::redact::error_text(failed.error);
        let policy = &self.slots[h].retry;
        let at = |delay: Duration| {
            (self.now)().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
        };
        match failed.retry {
            Retry::Never => Failure {
                error,
                attempts: delivery.attempts.saturating_add(1),
                next_attempt_at: None,
            },
            // Not longer than the handler would ever wait on its own: a
            // receiver cannot park a delivery for years.
            Retry::After(after) => Failure {
                error,
                attempts: delivery.attempts,
                next_attempt_at: Some(at(after.min(policy.max_backoff))),
            },
            Retry::Later => {
                let attempts = delivery.attempts.saturating_add(1);
                let next_attempt_at = (attempts < policy.max_attempts).then(|| {
                    let key = delivery.remaining().first().map_or("", String::as_str);
                    at(backoff(policy, attempts, key))
                });
                Failure {
                    error,
                    attempts,
                    next_attempt_at,
                }
            }
        }
    }

    fn note_failure(&mut self, h: usize, key: &str, failure: &Failure, events: u64) {
        let dead = failure.next_attempt_at.is_none();
        self.stats[h].failed += events;
        if dead {
            self.stats[h].dead += events;
        }
        tracing::warn!(handler = %self.slots[h].name, key, attempts = failure.attempts, dead,
            error = failure.error.as_str(), "delivery failed");
        if self.failures.len() < FAILURES_LISTED {
            self.failures.push(FailureReport {
                handler: self.slots[h].name.clone(),
                key: key.to_owned(),
                attempts: failure.attempts,
                dead,
                error: failure.error.clone(),
            });
        }
    }
}

/// The order in which to settle marked deliveries: per handler and file,
/// first the one written from the lowest offset, then the others with
/// their marks dropped. Cutting the file back to the first removes
/// whatever the others wrote after it (a run writes a file's deliveries in
/// the order it recorded them), so the others are written again from the
/// end of the file, wherever the first one's rewrite ends (its events may
/// be fewer, or stored differently, now). The marks are dropped before
/// anything is cut, so a crash in between leaves only the first mark.
fn settle_order(store: &mut dyn Store, marked: Vec<Delivery>) -> Result<Vec<Delivery>> {
    let mut first: Vec<Delivery> = Vec::new();
    let mut others: Vec<Delivery> = Vec::new();
    for delivery in marked {
        let same = first.iter_mut().find(|f| {
            f.handler == delivery.handler
                && f.file_mark.map(|m| m.file) == delivery.file_mark.map(|m| m.file)
        });
        match same {
            None => first.push(delivery),
            Some(f) => {
                let offset = |d: &Delivery| d.file_mark.map_or(0, |m| m.offset);
                if offset(&delivery) < offset(f) {
                    others.push(std::mem::replace(f, delivery));
                } else {
                    others.push(delivery);
                }
            }
        }
    }
    for other in &mut others {
        store.set_file_mark(other, None)?;
    }
    first.sort_by_key(|d| d.id);
    others.sort_by_key(|d| d.id);
    first.extend(others);
    Ok(first)
}

/// The delay before attempt `attempts + 1`: `backoff * 2^(attempts - 1)`,
/// capped at `max_backoff`, less up to a fifth of jitter that depends on the
/// key (so that many failures do not all come back at the same moment).
pub fn backoff(policy: &RetryPolicy, attempts: u32, key: &str) -> Duration {
    let doublings = attempts.saturating_sub(1).min(62);
    let base = policy
        .backoff
        .checked_mul(1u32 << doublings.min(31))
        .and_then(|d| d.checked_mul(1u32 << doublings.saturating_sub(31)))
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff);
    let mut hasher = DefaultHasher::new();
    (key, attempts).hash(&mut hasher);
    let jitter = (hasher.finish() % 1000) as u32; // per mille
    base - base / 5 * jitter / 1000
}

impl StoredEvent {
    /// The stored event as a dispatch.
    pub fn dispatch(&self) -> Dispatch<'_> {
        Dispatch {
            event: &self.event,
            context_json: &self.context_json,
            seen_at: &self.seen_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 8,
        backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(3600),
    };

    #[test]
    fn backoff_doubles_with_jitter_and_cap() {
        for (attempts, base) in [(1u32, 60u64), (2, 120), (3, 240), (7, 3600), (40, 3600)] {
            let d = backoff(&POLICY, attempts, "k").as_secs_f64();
            let base = base as f64;
            assert!(
                d <= base && d >= base * 0.8,
                "attempt {attempts}: {d} vs {base}"
            );
        }
    }

    #[test]
    fn zero_backoff_is_immediate() {
        let p = RetryPolicy {
            backoff: Duration::ZERO,
            ..POLICY
        };
        assert_eq!(backoff(&p, 3, "k"), Duration::ZERO);
    }

    #[test]
    fn jitter_differs_between_keys() {
        let a: Vec<Duration> = (0..20)
            .map(|i| backoff(&POLICY, 1, &format!("key{i}")))
            .collect();
        assert!(a.iter().any(|d| *d != a[0]));
    }
}
