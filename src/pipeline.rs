//! Records -> sources -> new-event filter -> deliveries -> handlers.
//!
//! `process_sources` first works off what earlier runs left (due retries,
//! deliveries a dead run left unfinished), then streams each source's
//! records, turns them into events, and every `batch_size` events records
//! the new ones with their deliveries in one transaction before handing them
//! to the handlers. `dry_run` does the same reading and reports what would
//! be dispatched, writing nothing.
//!
//! Data flows one way: nothing below this module calls back up.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::backend;
use crate::config::{Config, SourceConfig, SourceKind};
use crate::cursor::{self, Plan};
use crate::database;
use crate::delivery::{Engine, FailureReport, HandlerStats};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handlers::Dispatch;
use crate::records::{Record, RecordError};
use crate::registry::{Registry, SourceCtx, SourceFunction};
use crate::signals;
use crate::sources::generator::Generator;
use crate::store::KeyLimits;
use crate::store::{NewMark, PlannedDelivery, Reader, SeenTable, Store};

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Only these sources (all enabled ones when empty).
    pub only: Vec<String>,
    /// The date and moment sources treat as today and now (`--as-of`).
    pub as_of: SourceCtx,
    /// How long to wait for another run to finish.
    pub wait: Duration,
    /// Show a progress spinner on stderr.
    pub progress: bool,
    /// Deliver new events (`false`: only record them as seen, for
    /// `skip-backfill`).
    pub dispatch: bool,
    /// The caller holds the run lock already (`watch` holds it for its
    /// whole life).
    pub lock_held: bool,
    /// Read every record of the sources with a cursor too (`--full`).
    pub full: bool,
}

/// One source's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStats {
    pub name: String,
    pub records: u64,
    pub events: u64,
    pub new: u64,
    /// Records the source could not read (see `record_errors`).
    pub bad_records: u64,
    /// A source with a cursor: whether it read all its records (`full`) or
    /// those above its mark (`incremental`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<&'static str>,
}

/// A record a source could not turn into events.
#[derive(Debug, Clone, Serialize)]
pub struct RecordErrorReport {
    pub source: String,
    pub record: String,
    pub error: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub sources: Vec<SourceStats>,
    pub handlers: Vec<HandlerStats>,
    /// Earlier deliveries worked on before reading records.
    pub retried: u64,
    /// At-most-once deliveries an earlier run died during; now dead.
    pub interrupted: u64,
    pub failures: Vec<FailureReport>,
    pub record_errors: Vec<RecordErrorReport>,
    pub seconds: f64,
    /// The signal that stopped the run early, if one did.
    pub stopped: Option<String>,
    /// Deliveries not finished after the run: (handler, state, events).
    pub outstanding: Vec<(String, String, u64)>,
    /// Deliveries owed to handlers no longer in the config.
    pub orphaned: Vec<crate::store::admin::Orphaned>,
    /// Deliveries other workers held when the run ended (a shared store).
    pub held: Option<Held>,
    /// Whether deliveries held elsewhere need attention (`deliver`: it
    /// was asked to deliver what is owed, and some of it is not its to do).
    pub held_needs_attention: bool,
}

/// Deliveries other workers hold: how many, for how many events, and when
/// the last of their leases runs out unless renewed (UTC).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    pub deliveries: u64,
    pub events: u64,
    pub until: String,
}

impl Held {
    /// What `deliveries` other than `me`'s are held right now.
    pub fn of(deliveries: &[crate::store::Delivery], me: Option<&str>) -> Option<Held> {
        let others: Vec<&crate::store::Delivery> = deliveries
            .iter()
            .filter(|d| {
                d.claim
                    .as_ref()
                    .is_some_and(|c| Some(c.worker.as_str()) != me)
            })
            .collect();
        let until = others
            .iter()
            .filter_map(|d| d.claim.as_ref().map(|c| c.until_ms))
            .max()?;
        Some(Held {
            deliveries: others.len() as u64,
            events: others.iter().map(|d| d.remaining().len() as u64).sum(),
            until: crate::clock::utc_text(until),
        })
    }
}

impl RunReport {
    pub fn records(&self) -> u64 {
        self.sources.iter().map(|s| s.records).sum()
    }
    pub fn events(&self) -> u64 {
        self.sources.iter().map(|s| s.events).sum()
    }
    pub fn new_events(&self) -> u64 {
        self.sources.iter().map(|s| s.new).sum()
    }
    pub fn bad_records(&self) -> u64 {
        self.sources.iter().map(|s| s.bad_records).sum()
    }
    pub fn delivered(&self) -> u64 {
        self.handlers.iter().map(|h| h.delivered).sum()
    }
    pub fn failed(&self) -> u64 {
        self.handlers.iter().map(|h| h.failed).sum()
    }
    pub fn dead(&self) -> u64 {
        self.handlers.iter().map(|h| h.dead).sum()
    }
    pub fn waiting(&self) -> u64 {
        self.handlers.iter().map(|h| h.waiting).sum()
    }
    /// Notes what is still owed after the run, to which handlers no
    /// longer in the config, and what workers other than `me` hold.
    pub fn owed(
        &mut self,
        deliveries: &[crate::store::Delivery],
        config: &Config,
        me: Option<&str>,
    ) {
        self.outstanding = crate::store::admin::outstanding(deliveries);
        self.orphaned = crate::store::admin::orphaned(deliveries, &config.handler_names());
        self.held = Held::of(deliveries, me);
    }

    /// True when something needs attention: failed deliveries, deliveries
    /// left waiting or orphaned, or records that could not be read.
    pub fn has_failures(&self) -> bool {
        self.failed() > 0
            || self.waiting() > 0
            || self.bad_records() > 0
            || self.interrupted > 0
            || !self.orphaned.is_empty()
            || (self.held_needs_attention && self.held.is_some())
    }
}

/// How many record errors a report lists (the counts cover them all).
const RECORD_ERRORS_LISTED: usize = 100;

/// How one source turns a record into events.
enum Evaluator<'a> {
    Function(&'a SourceFunction),
    /// With its relative values resolved for this run.
    Generator(Generator),
}

/// The selected sources grouped by the records they read (same SQL), in
/// the order they first appear: each group's records are read once, as
/// django-spark memoizes its generators' candidate queries. A source with
/// a cursor reads its own, from its own mark.
fn record_sets(sources: &[&SourceConfig]) -> Vec<Vec<usize>> {
    let mut sets: Vec<(&crate::records::RecordSet, Vec<usize>)> = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        if source.cursor.is_some() {
            sets.push((&source.records, vec![s]));
            continue;
        }
        let shared = sets
            .iter_mut()
            .find(|(q, members)| **q == source.records && sources[members[0]].cursor.is_none());
        match shared {
            Some((_, members)) => members.push(s),
            None => sets.push((&source.records, vec![s])),
        }
    }
    sets.into_iter().map(|(_, members)| members).collect()
}

/// What the scanner hands on: an event (with the index of its source and
/// the size of its record), or a source's high-water mark, once every event
/// of the records below it has been handed on.
enum Item {
    Event(Event, usize, usize),
    Mark(usize, Option<String>),
}

/// How each selected source reads its records this run (`None`: all of
/// them, it has no cursor), from the marks the store keeps.
fn plans(
    reader: &mut dyn Reader,
    sources: &[&SourceConfig],
    opts: &RunOptions,
) -> Result<Vec<Option<Plan>>> {
    let kept = if sources.iter().any(|s| s.cursor.is_some()) {
        reader.cursors()?
    } else {
        Vec::new()
    };
    let now = crate::clock::now_ms();
    Ok(sources
        .iter()
        .map(|source| {
            let state = kept.iter().find(|k| k.source == source.name);
            cursor::plan(source, state, &opts.as_of, now, opts.full)
        })
        .collect())
}

/// Streams the selected sources' records into events, handing each event to
/// `sink` with the index of its source.
struct Scanner<'a> {
    registry: &'a Registry,
    ctx: SourceCtx,
    /// What the seen table can store: an event beyond it makes its record bad.
    limits: KeyLimits,
    stats: Vec<SourceStats>,
    record_errors: Vec<RecordErrorReport>,
    progress: Option<ProgressBar>,
}

impl<'a> Scanner<'a> {
    fn new(
        registry: &'a Registry,
        sources: &[&SourceConfig],
        plans: &[Option<Plan>],
        opts: &RunOptions,
        limits: KeyLimits,
    ) -> Self {
        let progress = opts.progress.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Scanner {
            registry,
            ctx: opts.as_of.clone(),
            limits,
            stats: sources
                .iter()
                .zip(plans)
                .map(|(s, plan)| SourceStats {
                    name: s.name.clone(),
                    scan: plan
                        .as_ref()
                        .map(|p| if p.is_full() { "full" } else { "incremental" }),
                    ..SourceStats::default()
                })
                .collect(),
            record_errors: Vec::new(),
            progress,
        }
    }

    /// How each member source turns a record into events.
    fn evaluators(&self, members: &[&'a SourceConfig]) -> Result<Vec<Evaluator<'a>>> {
        members
            .iter()
            .map(|source| match &source.kind {
                SourceKind::Function { function } => self
                    .registry
                    .source(function)
                    .map(Evaluator::Function)
                    .ok_or_else(|| {
                        Error::Usage(format!(
                            "source `{}`: unknown function `{function}`",
                            source.name
                        ))
                    }),
                SourceKind::Generator(g) => Ok(Evaluator::Generator(g.resolved(&self.ctx))),
            })
            .collect()
    }

    /// Reads the records of one record set once, handing each record to
    /// every source in `members` (indices into `sources`) and each event to
    /// `sink` with its source's index and the size of its record. A source
    /// with a cursor (alone in its set) reads as `plan` says and hands on
    /// marks too: read incrementally (in the cursor's order), each new
    /// highest value before the events of its record; read in full, the
    /// highest once every record was read.
    fn scan_set(
        &mut self,
        reader: &mut dyn Reader,
        members: &[usize],
        sources: &[&'a SourceConfig],
        plan: Option<&Plan>,
        sink: &mut dyn FnMut(Item) -> ControlFlow<()>,
    ) -> Result<()> {
        let first = sources[members[0]];
        let member_sources: Vec<&SourceConfig> = members.iter().map(|&m| sources[m]).collect();
        let evaluators = self.evaluators(&member_sources)?;
        tracing::info!(
            records = %first.records.describe(),
            sources = %member_sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            "reading records once for"
        );
        let mut events = Vec::new();
        let mut read = 0u64;
        let database = reader.name().to_owned();
        let mut tracker = plan.map(|_| cursor::Tracker::new(jiff::Timestamp::now()));
        let incremental = plan.is_some_and(|p| !p.is_full());
        let mut stopped = false;
        reader
            .scan(
                &first.records,
                plan.and_then(|p| p.since.as_ref()),
                &mut |record| {
                    if signals::requested().is_some() {
                        return ControlFlow::Break(());
                    }
                    read += 1;
                    if let (Some(tracker), Some(plan)) = (tracker.as_mut(), plan)
                        && tracker.see(record.get(&plan.column))
                        && incremental
                        && sink(Item::Mark(members[0], tracker.mark())).is_break()
                    {
                        stopped = true;
                        return ControlFlow::Break(());
                    }
                    // Generators on this record share one context made from it.
                    let mut context = None;
                    for (&s, evaluator) in members.iter().zip(&evaluators) {
                        self.stats[s].records += 1;
                        if let Some(defect) = record.defect() {
                            self.skipped(sources[s], s, record, defect);
                            continue;
                        }
                        events.clear();
                        let produced = match evaluator {
                            Evaluator::Function(f) => f.call(record, &self.ctx).map(|e| events = e),
                            Evaluator::Generator(g) => {
                                g.evaluate(record, &mut context).map(|e| events.extend(e))
                            }
                        }
                        .and_then(|()| {
                            // An event the seen table cannot hold makes the record
                            // bad (all its events), never a failed batch.
                            events.iter().try_for_each(|e| {
                                self.limits
                                    .check(&e.key, &e.group)
                                    .map_err(|problem| RecordError::new("", problem))
                            })
                        });
                        match produced {
                            Ok(()) => {
                                self.stats[s].events += events.len() as u64;
                                for event in events.drain(..) {
                                    if sink(Item::Event(event, s, record.bytes())).is_break() {
                                        stopped = true;
                                        return ControlFlow::Break(());
                                    }
                                }
                            }
                            Err(error) => self.skipped(sources[s], s, record, &error),
                        }
                    }
                    if read.is_multiple_of(4096)
                        && let Some(bar) = &self.progress
                    {
                        let (events, new) = members.iter().fold((0, 0), |(e, n), &s| {
                            (e + self.stats[s].events, n + self.stats[s].new)
                        });
                        bar.set_message(format!(
                            "{}: {read} records, {events} events, {new} new",
                            first.records.describe()
                        ));
                    }
                    ControlFlow::Continue(())
                },
            )
            .map_err(|error| Error::ReadRecords {
                source_name: first.name.clone(),
                error,
                database,
            })?;
        // Read to the end (not stopped by a signal or the sink): a full
        // scan's mark (an incremental one's is handed on as it goes).
        if let Some(tracker) = tracker
            && !incremental
            && !stopped
            && signals::requested().is_none()
        {
            let _ = sink(Item::Mark(members[0], tracker.mark()));
        }
        Ok(())
    }

    /// Notes a record that a source could not read.
    fn skipped(&mut self, source: &SourceConfig, s: usize, record: &Record, error: &RecordError) {
        let stats = &mut self.stats[s];
        stats.bad_records += 1;
        // Both come from the database: bounded, like every error.
        let id = record.get("id").map_or_else(
            || format!("#{}", stats.records),
            |v| match v {
                serde_json::Value::String(s) => crate::redact::cut(s.clone(), 200),
                other => crate::redact::cut(other.to_string(), 200),
            },
        );
        let error = crate::redact::error_text(error.to_string());
        tracing::warn!(source = %source.name, record = id.as_str(), error = error.as_str(), "record skipped");
        if self.record_errors.len() < RECORD_ERRORS_LISTED {
            self.record_errors.push(RecordErrorReport {
                source: source.name.clone(),
                record: id,
                error,
            });
        }
    }

    fn finish(self, started: Instant) -> RunReport {
        if let Some(bar) = &self.progress {
            bar.finish_and_clear();
        }
        RunReport {
            sources: self.stats,
            record_errors: self.record_errors,
            seconds: started.elapsed().as_secs_f64(),
            ..RunReport::default()
        }
    }
}

/// What opening and checking the database found.
struct Checked<'c> {
    reader: Box<dyn Reader>,
    sources: Vec<&'c SourceConfig>,
    seen: SeenTable,
}

/// Opens the database read-only and checks the config against it.
fn open_checked<'c>(
    config: &'c Config,
    registry: &Registry,
    only: &[String],
) -> Result<Checked<'c>> {
    let sources = database::select_sources(config, only)?;
    let mut reader = backend::reader(config)?;
    database::check_sources(&mut *reader, registry, &sources)?;
    let seen = reader.seen_table()?;
    Ok(Checked {
        reader,
        sources,
        seen,
    })
}

/// A batch is sent on once its records take about this many bytes, however
/// few events it holds: rows of megabytes must not pile up in memory.
pub const BATCH_BYTES: usize = 4 << 20;

/// Events on their way from the scanner to the store, with the index of
/// the source each came from, and (when the store expects them to be new)
/// each event's context as JSON.
struct Batch {
    events: Vec<Event>,
    origin: Vec<usize>,
    contexts: Vec<Arc<str>>,
    /// About how many bytes the records behind the events take.
    bytes: usize,
    /// High-water marks (by source index) to write with these events.
    marks: Vec<(usize, Option<String>)>,
}

impl Batch {
    fn with_capacity(n: usize) -> Batch {
        Batch {
            events: Vec::with_capacity(n),
            origin: Vec::with_capacity(n),
            contexts: Vec::new(),
            bytes: 0,
            marks: Vec::new(),
        }
    }

    /// Notes source `s`'s new high-water mark (replacing an earlier one).
    fn mark(&mut self, s: usize, mark: Option<String>) {
        match self.marks.iter_mut().find(|(m, _)| *m == s) {
            Some(kept) => kept.1 = mark,
            None => self.marks.push((s, mark)),
        }
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.marks.is_empty()
    }

    /// Adds an event whose record takes `record_bytes` (counted once per
    /// shared context); true when the batch is full.
    fn push(&mut self, event: Event, origin: usize, record_bytes: usize, max: usize) -> bool {
        let shared = self
            .events
            .last()
            .is_some_and(|last| Arc::ptr_eq(&last.context, &event.context));
        self.bytes += event.key.len() + event.group.len() + 64;
        if !shared {
            self.bytes += record_bytes;
        }
        self.events.push(event);
        self.origin.push(origin);
        self.events.len() >= max || self.bytes >= BATCH_BYTES
    }

    /// Serializes each event's context (once per shared context).
    fn prepare_contexts(&mut self) -> Result<()> {
        let mut last: Option<(*const serde_json::Map<String, serde_json::Value>, Arc<str>)> = None;
        self.contexts.clear();
        for e in &self.events {
            let ptr = Arc::as_ptr(&e.context);
            let json = match &last {
                Some((p, json)) if *p == ptr => json.clone(),
                _ => {
                    let json: Arc<str> = serde_json::to_string(&*e.context)
                        .map_err(|err| Error::Usage(format!("event {}: context: {err}", e.key)))?
                        .into();
                    last = Some((ptr, json.clone()));
                    json
                }
            };
            self.contexts.push(json);
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.events.clear();
        self.origin.clear();
        self.contexts.clear();
        self.bytes = 0;
        self.marks.clear();
    }
}

/// The main job: see the module documentation.
///
/// Reading records and turning them into events runs on a thread of its
/// own, handing full batches to this thread, which records and delivers
/// them one after the other. At most two batches wait in between, so memory
/// stays bounded.
pub fn process_sources(
    config: &Config,
    registry: &Registry,
    opts: &RunOptions,
) -> Result<RunReport> {
    let started = Instant::now();
    if opts.dispatch {
        config.require_secrets()?;
    }
    let Checked {
        reader: mut check_reader,
        sources,
        seen,
    } = open_checked(config, registry, &opts.only)?;
    let limits = seen.limits;
    // On a first run every event is new: prepare for that from the start.
    let first_run = !seen.exists || check_reader.seen_is_empty()?;
    drop(check_reader);

    let _guard = if opts.lock_held {
        None
    } else {
        Some(backend::run_guard(config, opts.wait)?)
    };
    let mut store = backend::store(config)?;
    let store = &mut *store;
    let mut engine = Engine::new(config, registry);
    let retried = if opts.dispatch {
        engine.drain(store)? as u64
    } else {
        0
    };

    engine.group_file_deliveries(true);

    // Records are read on a connection of their own, so that the store can
    // commit batches while a source's query is still being stepped through.
    let mut reader = backend::reader(config)?;
    let plans = plans(&mut *reader, &sources, opts)?;
    let batch_size = config.delivery.batch_size;
    let mut writer = Batcher {
        config,
        plans: &plans,
        marks: plans
            .iter()
            .map(|p| p.as_ref().and_then(|p| p.base.mark.clone()))
            .collect(),
        routes: HashMap::default(),
        dispatch: opts.dispatch,
        new_per_source: vec![0u64; sources.len()],
        last_new: 0,
        staged_batches: 0,
    };
    // Batches go to the writer; emptied ones come back, so that freeing
    // their events (and reusing their memory) happens on the scanner's side.
    let (tx, rx) = mpsc::sync_channel::<Batch>(1);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Batch>();
    // Set by the writer when the last batch was mostly new: the scanner then
    // serializes contexts itself, and the store inserts without looking up.
    let expect_new = AtomicBool::new(first_run);
    let (scanned, written) = thread::scope(|scope| {
        let sources = &sources;
        let plans = &plans;
        let expect_new = &expect_new;
        let scanning = scope.spawn(move || -> Result<Scanner<'_>> {
            let mut scanner = Scanner::new(registry, sources, plans, opts, limits);
            let fresh = || {
                recycle_rx
                    .try_recv()
                    .map(|mut b| {
                        b.clear();
                        b
                    })
                    .unwrap_or_else(|_| Batch::with_capacity(batch_size))
            };
            let send = |mut full: Batch| -> Result<bool> {
                if expect_new.load(Ordering::Relaxed) {
                    full.prepare_contexts()?;
                }
                Ok(tx.send(full).is_ok())
            };
            let mut batch = fresh();
            for members in record_sets(sources) {
                let mut outcome: Result<bool> = Ok(true);
                scanner.scan_set(
                    &mut *reader,
                    &members,
                    sources,
                    plans[members[0]].as_ref(),
                    &mut |item| {
                        let full = match item {
                            Item::Event(event, s, bytes) => batch.push(event, s, bytes, batch_size),
                            Item::Mark(s, mark) => {
                                batch.mark(s, mark);
                                false
                            }
                        };
                        if full {
                            outcome = send(std::mem::replace(&mut batch, fresh()));
                            if !matches!(outcome, Ok(true)) {
                                return ControlFlow::Break(());
                            }
                        }
                        ControlFlow::Continue(())
                    },
                )?;
                // Err: a context did not serialize; Ok(false): the writer stopped.
                if !outcome? {
                    return Ok(scanner);
                }
            }
            // A stopped run leaves its last events unrecorded: the next run
            // finds them again.
            // Reading is done (SQLite: the reader's snapshot no longer holds
            // the WAL back, so what is committed so far is copied into the
            // database file now, alongside the last batches).
            let checkpointing = scope.spawn(move || reader.finish());
            if signals::requested().is_none() && !batch.is_empty() {
                send(batch)?;
            }
            drop(tx);
            let _ = checkpointing.join();
            Ok(scanner)
        });
        let written = {
            // Owned here, so that a failing writer drops it and the scanner,
            // finding nobody to send to, stops.
            let rx = rx;
            let mut written = Ok(());
            for batch in rx.iter() {
                written = writer.flush(&batch, store, &mut engine);
                let new: u64 = writer.last_new;
                expect_new.store(new * 2 > batch.events.len() as u64, Ordering::Relaxed);
                let _ = recycle_tx.send(batch);
                if written.is_err() {
                    break;
                }
            }
            written
        };
        let scanned = scanning.join().unwrap_or_else(|_| {
            Err(Error::Usage(
                "reading records failed: a source function panicked".into(),
            ))
        });
        (scanned, written)
    });
    written?;
    let scanner = scanned?;
    engine.write_all_staged(store)?;
    engine.group_file_deliveries(false);
    store.finish(&engine.take_finished())?;
    // What the run recorded survives a power loss from here on (the last
    // batches may have been committed lazily).
    store.make_durable()?;
    if opts.dispatch {
        // What this run recorded but did not deliver at once (on a shared
        // store: what any worker left for whoever claims it first).
        engine.drain(store)?;
    }
    store.finish_run()?;

    let mut report = scanner.finish(started);
    report.stopped = signals::requested().map(|s| s.name().to_owned());
    for (stats, new) in report.sources.iter_mut().zip(&writer.new_per_source) {
        stats.new = *new;
    }
    report.retried = retried;
    let owed = store.deliveries()?;
    report.owed(&owed, config, store.worker());
    report.interrupted = engine.buried();
    report.handlers = engine.stats().to_vec();
    report.failures = engine.failures().to_vec();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// File deliveries are staged for this many batches, or this many bytes,
/// before they are written (with one fsync per file).
const STAGED_BATCHES: usize = 4;
const STAGED_LIMIT: usize = 4 << 20;

/// Records batches and hands their new events to the engine; routes groups
/// to handlers.
struct Batcher<'c> {
    config: &'c Config,
    /// How each source reads (what its marks are written with).
    plans: &'c [Option<Plan>],
    /// Each source's mark as the store has it (a mark that did not move
    /// is not written again: one statement less per batch).
    marks: Vec<Option<String>>,
    /// The handlers (indices, config order) of each group seen.
    routes: HashMap<String, Vec<usize>, BuildHasherDefault<Fnv>>,
    /// Plan deliveries (`false`: record the events as seen only).
    dispatch: bool,
    /// New events per source.
    new_per_source: Vec<u64>,
    /// New events in the last batch.
    last_new: u64,
    /// Batches since file deliveries were last written.
    staged_batches: usize,
}

impl Batcher<'_> {
    /// Records the batch's new events with their deliveries, then delivers.
    fn flush(&mut self, batch: &Batch, store: &mut dyn Store, engine: &mut Engine) -> Result<()> {
        self.last_new = 0;
        if !batch.marks.is_empty() {
            let mut marks: Vec<NewMark> = Vec::new();
            for (s, mark) in &batch.marks {
                let Some(plan) = &self.plans[*s] else {
                    continue;
                };
                if plan.is_full() || self.marks[*s] != *mark {
                    marks.push(plan.state(mark.clone()));
                    self.marks[*s].clone_from(mark);
                }
            }
            // With the batch's events, in their transaction.
            store.stage_cursors(&marks);
        }
        if batch.events.is_empty() {
            return store.write_cursors();
        }
        // Each event's handlers, looked up once per event (and computed once
        // per group).
        let routes = &mut self.routes;
        let config = self.config;
        let handlers = &self.config.handlers;
        let events = &batch.events;
        let dispatch = self.dispatch;
        let finished = engine.take_finished();
        let started = Instant::now();
        let recorded = store.record_batch(events, &batch.contexts, &finished, &mut |mask| {
            if !dispatch {
                return Vec::new();
            }
            let mut per_handler: Vec<Vec<usize>> = vec![Vec::new(); handlers.len()];
            for (i, is_new) in mask.iter().enumerate() {
                if *is_new {
                    // Routed only when new: a run of seen events routes nothing.
                    let group = &events[i].group;
                    if !routes.contains_key(group.as_str()) {
                        routes.insert(group.clone(), config.handlers_for(group).collect());
                    }
                    for &h in routes.get(group.as_str()).map_or(&[][..], Vec::as_slice) {
                        per_handler[h].push(i);
                    }
                }
            }
            per_handler
                .into_iter()
                .enumerate()
                .filter(|(_, events)| !events.is_empty())
                .map(|(h, events)| PlannedDelivery {
                    handler: handlers[h].name.clone(),
                    events,
                    file_mark: engine.planned_mark(h),
                    file_sink: engine.is_file_sink(h),
                    chunk: engine.chunk(h),
                    in_flight: engine.in_flight(h),
                })
                .collect()
        })?;
        crate::crashpoint::hit("batch-recorded");
        let recorded_in = started.elapsed();
        for (i, new) in recorded.new.iter().enumerate() {
            if new.is_some() {
                self.new_per_source[batch.origin[i]] += 1;
                self.last_new += 1;
            }
        }
        for (mut delivery, indices) in recorded.deliveries {
            let dispatches: Vec<Option<Dispatch<'_>>> = indices
                .iter()
                .map(|&i| {
                    recorded.new[i].as_deref().map(|context_json| Dispatch {
                        event: &events[i],
                        context_json,
                        seen_at: &recorded.seen_at,
                    })
                })
                .collect();
            engine.deliver(store, &mut delivery, &dispatches)?;
        }
        // File deliveries are written a few batches at a time.
        self.staged_batches += 1;
        if self.staged_batches >= STAGED_BATCHES || engine.staged_bytes() >= STAGED_LIMIT {
            engine.write_all_staged(store)?;
            self.staged_batches = 0;
        }
        tracing::debug!(
            events = events.len(),
            new = self.last_new,
            recorded_ms = recorded_in.as_millis() as u64,
            delivered_ms = (started.elapsed() - recorded_in).as_millis() as u64,
            "batch"
        );
        Ok(())
    }
}

/// Makes the deliveries `query` selects due now (with a fresh count of
/// attempts) and delivers them, under the run guard.
pub fn retry(
    config: &Config,
    registry: &Registry,
    query: &crate::store::admin::DeliveryQuery,
    who: &str,
    wait: Duration,
) -> Result<RunReport> {
    let started = Instant::now();
    config.require_secrets()?;
    if !backend::reader(config)?.seen_table()?.exists {
        // Nothing was ever recorded here, so nothing is owed.
        return Ok(RunReport::default());
    }
    let _guard = backend::run_guard(config, wait)?;
    let mut store = backend::store(config)?;
    let store = &mut *store;
    let mut engine = Engine::new(config, registry);
    let reset = store.reset_for_retry(query)?;
    // Who asked, in the history (written with the run's first outcomes).
    let asked: Vec<crate::store::HistoryEntry> = reset
        .iter()
        .flat_map(|d| {
            d.remaining().iter().map(|key| {
                crate::store::HistoryEntry::action_by(key, &d.handler, "retried", None, who)
            })
        })
        .collect();
    store.add_history(&asked)?;
    // The selected deliveries are due now; so may be others, which are owed
    // anyway (and a file mark a dead run left must be settled first).
    let retried = engine.drain(store)?;
    delivery_report(config, store, &engine, retried, started)
}

/// Delivers what is due without reading the sources, under the run guard:
/// drains, and with `linger`, keeps looking every second until nothing has
/// come for that long (or a stop is asked for).
pub fn deliver(
    config: &Config,
    registry: &Registry,
    linger: Duration,
    wait: Duration,
) -> Result<RunReport> {
    let started = Instant::now();
    config.require_secrets()?;
    let _guard = backend::run_guard(config, wait)?;
    let mut store = backend::store(config)?;
    let store = &mut *store;
    let mut engine = Engine::new(config, registry);
    let mut worked = engine.drain(store)?;
    let mut idle_since = Instant::now();
    while !linger.is_zero() && signals::requested().is_none() {
        // Once idle for `linger`: wait on only for deliveries other workers
        // hold whose lease runs out within reach (a dead worker's pass to
        // this one then; a live one's are done by it meanwhile).
        if idle_since.elapsed() >= linger && !held_within(store, linger)? {
            break;
        }
        thread::sleep(Duration::from_millis(250).min(linger));
        // A new drain: what failed meanwhile waits for its own time.
        engine.restart_clock();
        let n = engine.drain(store)?;
        if n > 0 {
            worked += n;
            idle_since = Instant::now();
        }
    }
    let mut report = delivery_report(config, store, &engine, worked, started)?;
    report.held_needs_attention = true;
    Ok(report)
}

/// Whether another worker holds a delivery whose lease runs out within
/// `reach` from now.
fn held_within(store: &mut dyn Store, reach: Duration) -> Result<bool> {
    let me = store.worker().map(str::to_owned);
    let horizon =
        crate::clock::now_ms().saturating_add(i64::try_from(reach.as_millis()).unwrap_or(i64::MAX));
    Ok(store.deliveries()?.iter().any(|d| {
        d.claim
            .as_ref()
            .is_some_and(|c| Some(&c.worker) != me.as_ref() && c.until_ms <= horizon)
    }))
}

/// Ends a run that only delivered (`retry`, `deliver`): lets go of the
/// store's claims and reports what the engine did and what is still owed.
fn delivery_report(
    config: &Config,
    store: &mut dyn Store,
    engine: &Engine,
    worked: usize,
    started: Instant,
) -> Result<RunReport> {
    store.finish_run()?;
    let mut report = RunReport {
        handlers: engine.stats().to_vec(),
        failures: engine.failures().to_vec(),
        retried: worked as u64,
        interrupted: engine.buried(),
        seconds: started.elapsed().as_secs_f64(),
        stopped: signals::requested().map(|s| s.name().to_owned()),
        ..RunReport::default()
    };
    let owed = store.deliveries()?;
    report.owed(&owed, config, store.worker());
    Ok(report)
}

/// FNV-1a: a fast hash for the few short group names routed per event
/// (the default SipHash showed in profiles; no untrusted keys here).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One event a dry run would dispatch.
#[derive(Debug, Clone, Serialize)]
pub struct WouldDispatch<'a> {
    pub key: &'a str,
    pub group: &'a str,
    pub handlers: Vec<&'a str>,
}

/// What `process_sources` would dispatch now, reported event by event to
/// `on_event`; writes nothing (not even spark's tables).
pub fn dry_run(
    config: &Config,
    registry: &Registry,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(&WouldDispatch<'_>),
) -> Result<RunReport> {
    let started = Instant::now();
    let Checked {
        mut reader,
        sources,
        seen,
    } = open_checked(config, registry, &opts.only)?;
    // Seen keys are looked up on a connection of their own, a chunk at a
    // time, while the other streams the records.
    let mut lookup = if seen.exists {
        Some(backend::reader(config)?)
    } else {
        None
    };
    let mut would: HashSet<String> = HashSet::new();
    let mut routes: HashMap<String, Vec<&str>> = HashMap::new();
    let mut new_per_source = vec![0u64; sources.len()];
    let mut pending: Vec<(Event, usize)> = Vec::new();
    let mut failed: Option<Error> = None;
    let mut flush = |pending: &mut Vec<(Event, usize)>| -> Result<()> {
        let keys: Vec<String> = pending.iter().map(|(e, _)| e.key.clone()).collect();
        let seen = match lookup.as_mut() {
            Some(lookup) => lookup.seen_among(&keys)?,
            None => HashSet::new(),
        };
        for (event, s) in pending.drain(..) {
            if seen.contains(&event.key) || would.contains(&event.key) {
                continue;
            }
            new_per_source[s] += 1;
            let handlers = routes.entry(event.group.clone()).or_insert_with(|| {
                config
                    .handlers_for(&event.group)
                    .map(|h| config.handlers[h].name.as_str())
                    .collect()
            });
            on_event(&WouldDispatch {
                key: &event.key,
                group: &event.group,
                handlers: handlers.clone(),
            });
            would.insert(event.key);
        }
        Ok(())
    };
    let plans = plans(&mut *reader, &sources, opts)?;
    let mut scanner = Scanner::new(registry, &sources, &plans, opts, seen.limits);
    for members in record_sets(&sources) {
        scanner.scan_set(
            &mut *reader,
            &members,
            &sources,
            plans[members[0]].as_ref(),
            &mut |item| {
                let Item::Event(event, s, _) = item else {
                    return ControlFlow::Continue(());
                };
                pending.push((event, s));
                if pending.len() >= DRY_RUN_CHUNK
                    && let Err(e) = flush(&mut pending)
                {
                    failed = Some(e);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
        )?;
        if let Some(e) = failed.take() {
            return Err(e);
        }
    }
    flush(&mut pending)?;
    let mut report = scanner.finish(started);
    for (stats, new) in report.sources.iter_mut().zip(&new_per_source) {
        stats.new = *new;
    }
    report.retried = reader.count_due(crate::clock::now_ms())?;
    Ok(report)
}

/// How many events a dry run looks up in the seen table at once.
const DRY_RUN_CHUNK: usize = 1000;
