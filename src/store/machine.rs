//! The delivery rules, written once above every driver: which deliveries a
//! batch of new events makes, recording an outcome (done, a failing key
//! split out of its delivery, failed or dead), at-most-once calls, file
//! marks, retry, forget and prune plans, operators' changes with their
//! history, and the history held back so that a fast handler does not pay
//! a write for it per call.
//!
//! `Machine` is the `Store` the pipeline, the delivery engine and the
//! operator commands use; it runs each rule as one transaction of row
//! operations on the driver's `Executor` (`crate::store::driver`).
//!
//! Not here: SQL (the drivers), retry policy and calling handlers (the
//! delivery engine), the plans' pure parts shared with listings
//! (`crate::store::admin`).

use std::sync::Arc;

use regex::Regex;

use super::admin::{Change, owed_keys};
use super::driver::{Commit, Executor, NewDelivery, Rows, SeenRow};
use super::{
    ContextJson, Delivery, DeliveryQuery, DeliveryState, Failure, FileMark, Forgotten,
    HistoryEntry, NewMark, PlannedDelivery, Pruned, Recorded, Store, StoredEvent,
};
use crate::error::{Error, Result};
use crate::event::Event;

/// History entries held back before they are written (with the next write
/// that commits to disk anyway, or on their own once this many are held).
const HISTORY_HELD: usize = 256;

/// Seen keys looked at per page when pruning.
const PRUNE_PAGE: usize = 5000;

/// The store: the delivery rules over one driver's executor.
pub struct Machine {
    exec: Box<dyn Executor>,
    /// History entries not written yet.
    history: Vec<HistoryEntry>,
    /// Sources' high-water marks to write with the next batch.
    cursors: Vec<NewMark>,
}

impl Machine {
    pub fn new(exec: Box<dyn Executor>) -> Machine {
        Machine {
            exec,
            history: Vec::new(),
            cursors: Vec::new(),
        }
    }

    /// Whether processes share this store (by claims).
    fn shared(&self) -> bool {
        self.exec.worker().is_some()
    }

    /// Runs `work` in one transaction. The history held rides along with
    /// a write that goes to disk anyway (a batch, an operator's change).
    fn write<T>(
        &mut self,
        action: &str,
        commit: Commit,
        mut work: impl FnMut(&mut dyn Rows) -> Result<T>,
    ) -> Result<T> {
        let carry = commit != Commit::Outcome && !self.history.is_empty();
        let Machine { exec, history, .. } = self;
        let mut out = None;
        exec.write(action, commit, false, &mut |rows| {
            let value = work(rows)?;
            if carry {
                rows.insert_history(history)?;
            }
            out = Some(value);
            Ok(())
        })?;
        if carry {
            history.clear();
        }
        out.ok_or_else(|| Error::Store {
            database: self.exec.name().to_owned(),
            action: action.to_owned(),
            error: "the transaction did not run".into(),
        })
    }

    /// `write` of one fenced change to delivery `id`: an error if this
    /// process no longer holds it (another took it over).
    fn write_fenced(
        &mut self,
        action: &str,
        commit: Commit,
        id: i64,
        mut change: impl FnMut(&mut dyn Rows) -> Result<bool>,
    ) -> Result<()> {
        let database = self.exec.name().to_owned();
        let single = commit == Commit::Outcome || self.history.is_empty();
        if !single {
            return self.write(action, commit, |rows| fenced(change(rows)?, &database, id));
        }
        self.exec.write(action, commit, true, &mut |rows| {
            fenced(change(rows)?, &database, id)
        })
    }

    /// Writes the history held back.
    fn flush_history(&mut self) -> Result<()> {
        if self.history.is_empty() {
            return Ok(());
        }
        let Machine { exec, history, .. } = self;
        exec.write(
            "recording the delivery history",
            Commit::Outcome,
            false,
            &mut |rows| rows.insert_history(history),
        )?;
        history.clear();
        Ok(())
    }
}

/// The rows a batch's planned deliveries become, with their events'
/// batch indices. Where one process holds the store, a batch is one
/// delivery per handler (a file sink's one write; calls in flight move
/// their window over it all), but for a handler called one event at a
/// time, whose every outcome is a write of its own: chunks, so that
/// each rewrites a small row. Where processes share it, chunks spread
/// the work; a file sink's deliveries belong to this host, and those
/// this process writes at once (with a mark) are claimed.
fn rows_for(
    planned: Vec<PlannedDelivery>,
    events: &[Event],
    shared: bool,
) -> Vec<(NewDelivery, Vec<usize>)> {
    let mut rows = Vec::new();
    for p in planned {
        let whole = p.file_mark.is_some() || p.file_sink || (!shared && p.in_flight > 1);
        let chunk = if whole {
            p.events.len().max(1)
        } else {
            p.chunk.max(1)
        };
        for indices in p.events.chunks(chunk) {
            let keys = indices.iter().map(|&i| events[i].key.clone()).collect();
            let mut row = NewDelivery::pending(&p.handler, keys);
            row.file_mark = p.file_mark;
            row.this_host = p.file_sink || p.file_mark.is_some();
            row.claimed = !shared || p.file_mark.is_some();
            rows.push((row, indices.to_vec()));
        }
    }
    rows
}

/// `Error::LostClaim` when a fenced change touched no row.
fn fenced(changed: bool, database: &str, id: i64) -> Result<()> {
    if changed {
        Ok(())
    } else {
        Err(Error::LostClaim {
            database: database.to_owned(),
            delivery: id,
        })
    }
}

/// Failed (tried again at its time) or dead (no next attempt).
fn failure_state(failure: &Failure) -> DeliveryState {
    if failure.next_attempt_at.is_some() {
        DeliveryState::Failed
    } else {
        DeliveryState::Dead
    }
}

/// The one-key delivery the next key of `from` becomes when it is split
/// out: failed (with `failure`) or in flight (at most once: claimed by
/// this process, keeping the attempts so far).
fn split_out(from: &Delivery, failure: Option<&Failure>) -> NewDelivery {
    let mut row = NewDelivery::pending(&from.handler, vec![from.keys[from.done].clone()]);
    match failure {
        Some(f) => {
            row.state = failure_state(f);
            row.attempts = f.attempts;
            row.next_attempt_at = f.next_attempt_at.unwrap_or(0);
            row.last_error = Some(f.error.clone());
        }
        None => {
            row.state = DeliveryState::InFlight;
            row.attempts = from.attempts;
            row.claimed = true;
        }
    }
    row
}

/// Applies an operator's plan (`admin::drop_plan`).
fn apply(rows: &mut dyn Rows, changes: &[Change]) -> Result<()> {
    let gone: Vec<i64> = changes
        .iter()
        .filter(|(_, kept)| kept.is_none())
        .map(|(id, _)| *id)
        .collect();
    rows.delete_deliveries(&gone)?;
    for (id, kept) in changes {
        if let Some(keys) = kept {
            rows.set_keys(*id, keys)?;
        }
    }
    Ok(())
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Whatever the run did last is in the history too.
        if let Err(e) = self.flush_history() {
            tracing::debug!(error = %e, "writing the last history entries failed");
        }
    }
}

impl Store for Machine {
    fn name(&self) -> &str {
        self.exec.name()
    }

    fn worker(&self) -> Option<&str> {
        self.exec.worker()
    }

    fn record_batch(
        &mut self,
        events: &[Event],
        contexts: &[Arc<str>],
        finished: &[i64],
        plan: &mut dyn FnMut(&[bool]) -> Vec<PlannedDelivery>,
    ) -> Result<Recorded> {
        let prepared = contexts.len() == events.len();
        let database = self.exec.name().to_owned();
        let mut recorded: Option<(String, Vec<Option<Arc<str>>>)> = None;
        let mut claimed: Vec<(Delivery, Vec<usize>)> = Vec::new();
        let mut planned_rows: Vec<(NewDelivery, Vec<usize>)> = Vec::new();
        let shared = self.shared();
        let Machine {
            exec,
            history,
            cursors,
        } = self;
        let carry = !history.is_empty();
        exec.write("recording new events", Commit::Batch, false, &mut |rows| {
            if !finished.is_empty() {
                rows.delete_finished(finished)?;
            }
            // Which events to insert: all when most are expected new (their
            // contexts prepared), else only those not seen yet.
            let candidates: Vec<usize> = if prepared {
                (0..events.len()).collect()
            } else {
                let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
                let seen = rows.seen_among(&keys)?;
                (0..events.len())
                    .filter(|&i| !seen.contains(&events[i].key))
                    .collect()
            };
            let mut serialized = ContextJson::default();
            let mut jsons: Vec<Arc<str>> = Vec::with_capacity(candidates.len());
            for &i in &candidates {
                jsons.push(if prepared {
                    contexts[i].clone()
                } else {
                    serialized.of(&events[i]).map_err(|e| Error::Store {
                        database: database.clone(),
                        action: "serializing a context".into(),
                        error: e.to_string(),
                    })?
                });
            }
            let seen_rows: Vec<SeenRow<'_>> = candidates
                .iter()
                .zip(&jsons)
                .map(|(&i, json)| SeenRow {
                    key: &events[i].key,
                    group: &events[i].group,
                    context: json,
                })
                .collect();
            let inserted = rows.insert_seen(&seen_rows)?;
            let mut new: Vec<Option<Arc<str>>> = vec![None; events.len()];
            for ((&i, json), fresh) in candidates.iter().zip(&jsons).zip(inserted) {
                if fresh {
                    new[i] = Some(json.clone());
                }
            }
            let mask: Vec<bool> = new.iter().map(Option::is_some).collect();
            planned_rows = rows_for(plan(&mask), events, shared);
            let new_rows: Vec<NewDelivery> = planned_rows.iter().map(|(r, _)| r.clone()).collect();
            let ids = rows.insert_deliveries(&new_rows)?;
            claimed.clear();
            for ((row, indices), id) in planned_rows.iter().zip(ids) {
                if let (true, Some(id)) = (row.claimed, id) {
                    claimed.push((row.clone().inserted(id, rows.now()), indices.clone()));
                }
            }
            if carry {
                rows.insert_history(history)?;
            }
            // The marks of what this batch recorded, with it.
            for mark in cursors.iter() {
                rows.set_cursor(mark)?;
            }
            recorded = Some((rows.now().to_owned(), new));
            Ok(())
        })?;
        if carry {
            history.clear();
        }
        cursors.clear();
        let (seen_at, new) = recorded.ok_or_else(|| Error::Store {
            database,
            action: "recording new events".into(),
            error: "the transaction did not run".into(),
        })?;
        Ok(Recorded {
            seen_at,
            new,
            deliveries: claimed,
        })
    }

    fn stage_cursors(&mut self, marks: &[NewMark]) {
        for mark in marks {
            self.cursors.retain(|c| c.state.source != mark.state.source);
            self.cursors.push(mark.clone());
        }
    }

    fn write_cursors(&mut self) -> Result<()> {
        if self.cursors.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.cursors);
        self.write(
            "recording sources' high-water marks",
            Commit::Durable,
            |rows| staged.iter().try_for_each(|mark| rows.set_cursor(mark)),
        )
    }

    fn finish(&mut self, finished: &[i64]) -> Result<()> {
        if finished.is_empty() {
            return Ok(());
        }
        self.exec.write(
            "recording deliveries done",
            Commit::Outcome,
            true,
            &mut |rows| rows.delete_finished(finished).map(drop),
        )
    }

    fn make_durable(&mut self) -> Result<()> {
        self.exec.make_durable()
    }

    fn mark_seen(&mut self, key: &str, group: &str, context_json: &str) -> Result<bool> {
        let row = SeenRow {
            key,
            group,
            context: context_json,
        };
        self.write("marking a key seen", Commit::Durable, |rows| {
            Ok(rows.insert_seen(&[row])?.first() == Some(&true))
        })
    }

    fn load_events(&mut self, keys: &[String]) -> Result<Vec<Option<StoredEvent>>> {
        self.exec.load_events(keys)
    }

    fn bury_interrupted(&mut self, error: &str) -> Result<usize> {
        self.write("burying interrupted deliveries", Commit::Durable, |rows| {
            rows.bury_interrupted(error)
        })
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn marked(&mut self, handlers: &[&str]) -> Result<Vec<Delivery>> {
        self.exec.marked(handlers)
    }

    fn claim_due(&mut self, now_ms: i64, handlers: &[&str]) -> Result<Vec<Delivery>> {
        self.exec.claim_due(now_ms, handlers)
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        self.exec.deliveries()
    }

    fn finish_run(&mut self) -> Result<()> {
        self.flush_history()?;
        self.exec.finish_run()
    }

    fn reset_for_retry(&mut self, query: &DeliveryQuery) -> Result<Vec<Delivery>> {
        self.write("making deliveries due", Commit::Durable, |rows| {
            let mut selected: Vec<Delivery> = rows
                .deliveries()?
                .into_iter()
                .filter(|d| query.matches(d))
                .collect();
            let ids: Vec<i64> = selected.iter().map(|d| d.id).collect();
            let reset = rows.reset(&ids)?;
            selected.retain(|d| reset.contains(&d.id));
            for d in &mut selected {
                d.state = DeliveryState::Pending;
                d.attempts = 0;
                d.next_attempt_at = 0;
                d.file_mark = None;
            }
            Ok(selected)
        })
    }

    fn forget(&mut self, keys: &[String]) -> Result<Forgotten> {
        self.write("forgetting keys", Commit::Durable, |rows| {
            let gone = rows.delete_seen(keys)?;
            // A forgotten key fires again when a source produces it: the
            // next run reads all the records of sources with a cursor.
            if !gone.is_empty() {
                rows.delete_cursors()?;
            }
            let mut report = Forgotten::default();
            for key in keys {
                if gone.contains(key) {
                    report.forgotten.push(key.clone());
                } else {
                    report.unknown.push(key.clone());
                }
            }
            let held = rows.held_by_others()?;
            let free: Vec<Delivery> = rows
                .deliveries()?
                .into_iter()
                .filter(|d| !held.contains(&d.id))
                .collect();
            let changes = report.plan(&free, keys);
            apply(rows, &changes)?;
            Ok(report)
        })
    }

    fn prune(&mut self, cutoff: &str, group: Option<&Regex>, dry_run: bool) -> Result<Pruned> {
        let owed = owed_keys(&self.exec.deliveries()?);
        let mut report = Pruned::default();
        let mut after = String::new();
        loop {
            let page = self.exec.seen_before(cutoff, &after, PRUNE_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let doomed: Vec<String> = page
                .into_iter()
                .filter(|(_, g)| group.is_none_or(|re| re.is_match(g)))
                .filter_map(|(k, _)| {
                    if owed.contains(&k) {
                        report.kept_undelivered += 1;
                        None
                    } else {
                        Some(k)
                    }
                })
                .collect();
            report.pruned += doomed.len() as u64;
            if !dry_run && !doomed.is_empty() {
                self.write("pruning old events", Commit::Durable, |rows| {
                    rows.delete_seen(&doomed).map(drop)
                })?;
            }
        }
        Ok(report)
    }

    fn set_file_mark(&mut self, delivery: &mut Delivery, mark: Option<FileMark>) -> Result<()> {
        let id = delivery.id;
        // The file is cut back to this mark after a crash: on disk first.
        self.write_fenced("recording a file offset", Commit::Durable, id, |rows| {
            rows.set_file_mark(id, mark)
        })?;
        delivery.file_mark = mark;
        Ok(())
    }

    fn advance(&mut self, delivery: &mut Delivery, done: usize) -> Result<()> {
        let id = delivery.id;
        let finished = done >= delivery.keys.len();
        self.write_fenced("recording deliveries done", Commit::Outcome, id, |rows| {
            if finished {
                Ok(rows.delete_finished(&[id])? == 1)
            } else {
                rows.set_done(id, done)
            }
        })?;
        delivery.done = done;
        Ok(())
    }

    fn fail_next(&mut self, delivery: &mut Delivery, failure: &Failure) -> Result<()> {
        if delivery.remaining().len() <= 1 {
            return self.fail_rest(delivery, failure);
        }
        let single = split_out(delivery, Some(failure));
        let database = self.exec.name().to_owned();
        let (id, done) = (delivery.id, delivery.done);
        self.exec.write(
            "recording a failed delivery",
            Commit::Outcome,
            false,
            &mut |rows| {
                fenced(rows.set_done(id, done + 1)?, &database, id)?;
                rows.insert_deliveries(std::slice::from_ref(&single))
                    .map(drop)
            },
        )?;
        delivery.done += 1;
        Ok(())
    }

    fn fail_rest(&mut self, delivery: &mut Delivery, failure: &Failure) -> Result<()> {
        let id = delivery.id;
        let state = failure_state(failure);
        self.write_fenced("recording a failed delivery", Commit::Outcome, id, |rows| {
            rows.set_failed(id, state, failure)
        })?;
        delivery.state = state;
        delivery.attempts = failure.attempts;
        delivery.next_attempt_at = failure.next_attempt_at.unwrap_or(0);
        delivery.last_error = Some(failure.error.clone());
        delivery.file_mark = None;
        Ok(())
    }

    fn begin_at_most_once(&mut self, delivery: &mut Delivery) -> Result<Delivery> {
        // Never called twice: marked on disk before the call.
        let id = delivery.id;
        if delivery.remaining().len() <= 1 {
            self.write_fenced(
                "marking a delivery in flight",
                Commit::Durable,
                id,
                |rows| rows.set_in_flight(id),
            )?;
            delivery.state = DeliveryState::InFlight;
            return Ok(delivery.clone());
        }
        let single = split_out(delivery, None);
        let database = self.exec.name().to_owned();
        let done = delivery.done;
        let made = self.write("marking a delivery in flight", Commit::Durable, |rows| {
            fenced(rows.set_done(id, done + 1)?, &database, id)?;
            let ids = rows.insert_deliveries(std::slice::from_ref(&single))?;
            let new_id = ids.first().copied().flatten().ok_or_else(|| Error::Store {
                database: database.clone(),
                action: "marking a delivery in flight".into(),
                error: "the new delivery's id was not returned".into(),
            })?;
            Ok(single.clone().inserted(new_id, rows.now()))
        })?;
        delivery.done += 1;
        Ok(made)
    }

    fn add_history(&mut self, entries: &[HistoryEntry]) -> Result<()> {
        self.history.extend_from_slice(entries);
        if self.history.len() >= HISTORY_HELD {
            self.flush_history()?;
        }
        Ok(())
    }

    fn prune_history(&mut self, cutoff: &str) -> Result<u64> {
        self.write("pruning the delivery history", Commit::Durable, |rows| {
            rows.delete_history_before(cutoff)
        })
    }

    fn drop_owed(&mut self, changes: &[Change], history: &[HistoryEntry]) -> Result<usize> {
        self.write("dropping deliveries", Commit::Durable, |rows| {
            // Deliveries another process is working on are left to it.
            let held = rows.held_by_others()?;
            let free: Vec<Change> = changes
                .iter()
                .filter(|(id, _)| !held.contains(id))
                .cloned()
                .collect();
            apply(rows, &free)?;
            rows.insert_history(history)?;
            Ok(free.len())
        })
    }

    fn reassign(&mut self, from: &str, to: &str, history: &[HistoryEntry]) -> Result<u64> {
        self.write(
            "handing deliveries to another handler",
            Commit::Durable,
            |rows| {
                let n = rows.rename_handler(from, to)?;
                rows.insert_history(history)?;
                Ok(n)
            },
        )
    }

    fn add_deliveries(
        &mut self,
        handler: &str,
        keys: &[String],
        chunk: usize,
        file_sink: bool,
        history: &[HistoryEntry],
    ) -> Result<u64> {
        let new: Vec<NewDelivery> = keys
            .chunks(chunk.max(1))
            .map(|part| {
                let mut row = NewDelivery::pending(handler, part.to_vec());
                row.this_host = file_sink;
                row
            })
            .collect();
        self.write("adding deliveries", Commit::Durable, |rows| {
            rows.insert_deliveries(&new)?;
            rows.insert_history(history)?;
            Ok(new.len() as u64)
        })
    }
}
