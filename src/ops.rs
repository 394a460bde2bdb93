//! Operator commands as plans run in one session: each checks what it is
//! asked, takes the run lock where it writes (SQLite's; on PostgreSQL
//! workers share the store by claims), opens the store once, plans its
//! change from what the store holds, writes the change and its history
//! together, and returns what it did. Shared by the CLI (which parses and
//! prints) and the web console (`crate::console`); the history names `who`
//! acted. `show` is the operator's view of one event, for both.
//!
//! Not here: parsing arguments or printing (`crate::cli`), the SQL (the
//! backends), the plans' pure parts (`crate::store::admin`).

use std::time::Duration;

use regex::Regex;
use serde::Serialize;

use crate::backend::{self, RunGuard};
use crate::clock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::admin::{self, DeliveryQuery, EventQuery, Forgotten, SeenEvent};
use crate::store::{HistoryEntry, Store};

/// The store of one operator command, with the run lock held while it
/// lives (SQLite).
struct Session {
    _guard: RunGuard,
    store: Box<dyn Store>,
}

impl Session {
    /// Takes the run lock (waiting up to `wait`) and opens the store,
    /// creating spark's tables if needed.
    fn open(config: &Config, wait: Duration) -> Result<Session> {
        let guard = backend::run_guard(config, wait)?;
        Ok(Session {
            _guard: guard,
            store: backend::store(config)?,
        })
    }

    /// `open`, or `None` when nothing was ever recorded here (no seen
    /// table): nothing to change, and nothing is created.
    fn open_existing(config: &Config, wait: Duration) -> Result<Option<Session>> {
        if !backend::reader(config)?.seen_table()?.exists {
            return Ok(None);
        }
        Session::open(config, wait).map(Some)
    }
}

/// What `mark_seen` did.
#[derive(Debug, Clone, Serialize)]
pub struct MarkedSeen {
    pub key: String,
    pub group: String,
    /// Whether the key was not seen before.
    pub new: bool,
}

/// Records `key` as seen without dispatching it (group: `group`, else the
/// key up to its last `_`), held to the seen table's limits.
pub fn mark_seen(
    config: &Config,
    key: &str,
    group: Option<&str>,
    wait: Duration,
) -> Result<MarkedSeen> {
    if key.is_empty() {
        return Err(Error::Usage("mark-seen: KEY must not be empty".into()));
    }
    let group = group
        .map(str::to_owned)
        .unwrap_or_else(|| key.rsplit_once('_').map_or(key, |(g, _)| g).to_owned());
    // The limits every record is held to, on every database (SQLite does
    // not enforce a varchar's length itself).
    let limits = backend::reader(config)?.seen_table()?.limits;
    limits
        .check(key, &group)
        .map_err(|problem| Error::Usage(format!("mark-seen: {problem}")))?;
    let mut session = Session::open(config, wait)?;
    let new = session.store.mark_seen(key, &group, "{}")?;
    Ok(MarkedSeen {
        key: key.to_owned(),
        group,
        new,
    })
}

/// Creates or upgrades spark's tables (under the run lock); whether
/// anything was to do.
pub fn migrate(config: &Config, wait: Duration) -> Result<bool> {
    let pending = backend::pending_sql(config)?;
    if pending.lines().count() <= 2 {
        return Ok(false);
    }
    // Opening the store creates or upgrades the tables.
    Session::open(config, wait)?;
    Ok(true)
}

/// Removes `keys` from the seen table (they fire again when a source
/// produces them) and drops what was still owed for them.
pub fn forget(config: &Config, keys: &[String], wait: Duration) -> Result<Forgotten> {
    match Session::open_existing(config, wait)? {
        Some(mut session) => session.store.forget(keys),
        None => Ok(Forgotten {
            unknown: keys.to_vec(),
            ..Forgotten::default()
        }),
    }
}

/// What `prune` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    pub cutoff: String,
    pub dry_run: bool,
    pub pruned: u64,
    pub kept_undelivered: u64,
    pub history_cutoff: String,
    pub history_pruned: u64,
}

/// Deletes seen events recorded more than `age` ago (those of `group`
/// only, if given), keeping any with an unfinished delivery, and the
/// history older than `keep_history`.
pub fn prune(
    config: &Config,
    age: Duration,
    group: Option<&Regex>,
    dry_run: bool,
    wait: Duration,
) -> Result<Pruned> {
    let cutoff = clock::ago_text(age);
    let history_cutoff = clock::ago_text(config.delivery.keep_history);
    let (report, history_pruned) = match Session::open_existing(config, wait)? {
        Some(mut session) => {
            let report = session.store.prune(&cutoff, group, dry_run)?;
            let history = if dry_run {
                0
            } else {
                session.store.prune_history(&history_cutoff)?
            };
            (report, history)
        }
        None => (admin::Pruned::default(), 0),
    };
    Ok(Pruned {
        cutoff,
        dry_run,
        pruned: report.pruned,
        kept_undelivered: report.kept_undelivered,
        history_cutoff,
        history_pruned,
    })
}

/// What `reassign` did.
#[derive(Debug, Clone, Serialize)]
pub struct Reassigned {
    pub from: String,
    pub to: String,
    pub deliveries: u64,
    pub events: usize,
}

/// Hands every delivery owed to handler `old` (renamed or removed) to
/// `new`, a handler of the config.
pub fn reassign(
    config: &Config,
    old: &str,
    new: &str,
    who: &str,
    wait: Duration,
) -> Result<Reassigned> {
    if !config.handlers.iter().any(|h| h.name == new) {
        return Err(Error::Usage(format!(
            "reassign: no handler `{new}` in {} to hand deliveries to",
            config.path.display()
        )));
    }
    if old == new {
        return Err(Error::Usage(
            "reassign: OLD and NEW are the same handler".into(),
        ));
    }
    let (deliveries, events) = match Session::open_existing(config, wait)? {
        Some(mut session) => {
            let owed: Vec<String> = session
                .store
                .deliveries()?
                .iter()
                .filter(|d| d.handler == old)
                .flat_map(|d| d.remaining().to_vec())
                .collect();
            let note = format!("from handler {old}");
            let history: Vec<HistoryEntry> = owed
                .iter()
                .map(|key| HistoryEntry::action_by(key, new, "reassigned", Some(&note), who))
                .collect();
            (session.store.reassign(old, new, &history)?, owed.len())
        }
        None => (0, 0),
    };
    Ok(Reassigned {
        from: old.to_owned(),
        to: new.to_owned(),
        deliveries,
        events,
    })
}

/// What `discard` did.
#[derive(Debug, Clone, Serialize)]
pub struct Discarded {
    /// (handler, key) of each owed delivery acknowledged.
    pub discarded: Vec<(String, String)>,
    /// Deliveries another worker holds right now, left alone.
    pub left_to_other_workers: usize,
}

/// Acknowledges the owed deliveries `query` selects without delivering
/// them; the history keeps who, when and why.
pub fn discard(
    config: &Config,
    query: &DeliveryQuery,
    reason: Option<&str>,
    who: &str,
    wait: Duration,
) -> Result<Discarded> {
    let Some(mut session) = Session::open_existing(config, wait)? else {
        return Ok(Discarded {
            discarded: Vec::new(),
            left_to_other_workers: 0,
        });
    };
    let deliveries = session.store.deliveries()?;
    let (changes, dropped) = admin::drop_plan(&deliveries, &|d, key| {
        query.matches(d) && (query.keys.is_empty() || query.keys.contains(key))
    });
    let history: Vec<HistoryEntry> = dropped
        .iter()
        .map(|(handler, key)| HistoryEntry::action_by(key, handler, "discarded", reason, who))
        .collect();
    let changed = session.store.drop_owed(&changes, &history)?;
    Ok(Discarded {
        discarded: dropped,
        left_to_other_workers: changes.len().saturating_sub(changed),
    })
}

/// What `replay` is asked to do.
pub struct ReplayRequest<'a> {
    pub handler: &'a str,
    pub query: &'a EventQuery,
    pub keys: &'a [String],
    pub dry_run: bool,
    /// Replay events whose stored context is not JSON too (as text).
    pub text_contexts: bool,
    pub wait: Duration,
}

/// What `replay` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub handler: String,
    pub dry_run: bool,
    pub replayed: Vec<String>,
    pub already_owed: Vec<String>,
    pub not_received: usize,
    pub selected: usize,
}

/// How many keys a refusal names.
const KEYS_NAMED: usize = 10;

/// Keys per delivery a replay adds.
const REPLAY_CHUNK: usize = 500;

/// Creates deliveries of already-seen events to one handler: those of
/// groups it receives and not owed to it already. Events whose stored
/// context is not JSON (django-spark's `repr()`) are refused, naming them,
/// unless `text_contexts`.
pub fn replay(config: &Config, request: &ReplayRequest<'_>, who: &str) -> Result<Replayed> {
    let handler = request.handler;
    let Some(h) = config.handlers.iter().find(|h| h.name == handler) else {
        return Err(Error::Usage(format!(
            "replay --handler {handler}: no handler of that name in {}",
            config.path.display()
        )));
    };
    let mut reader = backend::reader(config)?;
    reader.seen_table()?;
    // The events asked for, in the order they were seen.
    let mut chosen: Vec<(String, String)> = Vec::new();
    // Events whose stored context is not JSON: a handler would get
    // `{"text": ...}` and a template render empty.
    let mut not_json: Vec<String> = Vec::new();
    let mut choose = |e: SeenEvent| {
        if !e.context_is_json() && h.group.is_match(&e.group) {
            not_json.push(e.key.clone());
        }
        chosen.push((e.key, e.group));
    };
    if request.keys.is_empty() {
        reader.list_events(request.query, &mut choose)?;
        chosen.reverse();
    } else {
        for key in request.keys {
            match reader.seen_event(key)? {
                Some(e) => choose(e),
                None => {
                    return Err(Error::Usage(format!(
                        "replay --key {key}: no such seen event"
                    )));
                }
            }
        }
    }
    if !not_json.is_empty() && !request.text_contexts {
        let named: Vec<String> = not_json
            .iter()
            .take(KEYS_NAMED)
            .map(|k| crate::escape::escape(k).into_owned())
            .collect();
        let more = not_json.len().saturating_sub(KEYS_NAMED);
        return Err(Error::Usage(format!(
            "replay: {} events' stored contexts are not JSON (django-spark wrote Python reprs), so \
             {handler} would get them as {{\"text\": \"...\"}} and templates would render them empty: {}{}; \
             leave them out (--key, --group, --since), or pass --text-contexts to send them as text",
            not_json.len(),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )));
    }
    // Only events of groups the handler receives; none it already owes.
    let owed: std::collections::HashSet<String> = reader
        .deliveries()?
        .iter()
        .filter(|d| d.handler == handler)
        .flat_map(|d| d.remaining().to_vec())
        .collect();
    drop(reader);
    let selected = chosen.len();
    type Chosen = Vec<(String, String)>;
    let (receives, other): (Chosen, Chosen) = chosen
        .into_iter()
        .partition(|(_, group)| h.group.is_match(group));
    let (already_owed, replayed): (Vec<String>, Vec<String>) = receives
        .into_iter()
        .map(|(key, _)| key)
        .partition(|key| owed.contains(key));
    if !request.dry_run && !replayed.is_empty() {
        let mut session = Session::open(config, request.wait)?;
        let history: Vec<HistoryEntry> = replayed
            .iter()
            .map(|key| HistoryEntry::action_by(key, handler, "replayed", None, who))
            .collect();
        let file_sink = h.kind.is_file_sink();
        session
            .store
            .add_deliveries(handler, &replayed, REPLAY_CHUNK, file_sink, &history)?;
    }
    Ok(Replayed {
        handler: handler.to_owned(),
        dry_run: request.dry_run,
        replayed,
        already_owed,
        not_received: other.len(),
        selected,
    })
}

/// One event as an operator sees it (`show KEY`, the console's event
/// page): the event if still seen, and per handler what is owed and what
/// happened.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub key: String,
    /// The seen event's group, context and created_at (`None`: forgotten
    /// or pruned, known to the delivery log only).
    pub group: Option<String>,
    pub context: Option<serde_json::Value>,
    pub created_at: Option<String>,
    /// Its context is not JSON: django-spark recorded it, before spark.
    pub recorded_before_spark: bool,
    pub handlers: Vec<Story>,
}

impl EventView {
    /// The context as shown: pretty JSON, or the text django-spark stored.
    pub fn context_text(&self) -> String {
        match &self.context {
            Some(serde_json::Value::String(text)) if self.recorded_before_spark => text.clone(),
            Some(other) => serde_json::to_string_pretty(other).unwrap_or_default(),
            None => String::new(),
        }
    }
}

/// What one handler did and owes for an event.
#[derive(Debug, Clone, Serialize)]
pub struct Story {
    pub handler: String,
    pub in_config: bool,
    pub state: String,
    pub owed: Vec<admin::DeliveryLine>,
    /// Oldest first.
    pub attempts: Vec<HistoryEntry>,
}

/// The event `key`: an error if neither the seen table, the deliveries nor
/// the history know it.
pub fn show(config: &Config, key: &str) -> Result<EventView> {
    let mut reader = backend::reader(config)?;
    reader.seen_table()?;
    let event = reader.seen_event(key)?;
    let owed: Vec<admin::DeliveryLine> = admin::list_deliveries(
        &reader.deliveries()?,
        &DeliveryQuery {
            keys: vec![key.to_owned()],
            ..Default::default()
        },
    );
    let mut history = reader.history(&crate::store::HistoryQuery {
        keys: vec![key.to_owned()],
        ..Default::default()
    })?;
    history.reverse();
    if event.is_none() && owed.is_empty() && history.is_empty() {
        return Err(Error::Usage(format!("show {key}: no such seen event")));
    }
    // spark writes every context as a JSON object: one that is not (a
    // Python repr) was recorded by django-spark, before spark.
    let before_spark = event.as_ref().is_some_and(|e| !e.context_is_json());
    // The handlers that receive the event's group, then any other that
    // owes or did something for it.
    let mut names: Vec<String> = event.as_ref().map_or_else(Vec::new, |e| {
        config
            .handlers_for(&e.group)
            .map(|i| config.handlers[i].name.clone())
            .collect()
    });
    for name in owed
        .iter()
        .map(|o| &o.handler)
        .chain(history.iter().map(|h| &h.handler))
    {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let handlers = names
        .into_iter()
        .map(|name| {
            let kind = config
                .handlers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.kind.name());
            let owed: Vec<admin::DeliveryLine> =
                owed.iter().filter(|o| o.handler == name).cloned().collect();
            let attempts: Vec<HistoryEntry> = history
                .iter()
                .filter(|h| h.handler == name)
                .cloned()
                .collect();
            let state = match (owed.first(), attempts.last()) {
                (Some(o), _) => o.state.clone(),
                (None, Some(last)) => match last.outcome.as_str() {
                    "delivered" => "done".into(),
                    // Made owed again, owed no more: delivered since (a
                    // file handler writes no entry of its own).
                    "retried" | "replayed" | "reassigned" if kind == Some("jsonl") => {
                        "done (in the file)".into()
                    }
                    "retried" | "replayed" | "reassigned" => "done".into(),
                    other => other.into(),
                },
                // Nothing owed and no history: recorded by django-spark
                // (spark never delivered it), a file handler's (the file is
                // its record), or done before the history was kept.
                (None, None) if before_spark => {
                    "recorded before spark (by django-spark: its context is not JSON); no delivery recorded".into()
                }
                (None, None) if kind == Some("jsonl") => "done (in the file)".into(),
                (None, None) if kind.is_none() => "unknown".into(),
                (None, None) => "done (no history)".into(),
            };
            Story {
                handler: name,
                in_config: kind.is_some(),
                state,
                owed,
                attempts,
            }
        })
        .collect();
    let (group, context, created_at) = match event {
        Some(e) => (Some(e.group), Some(e.context), Some(e.created_at)),
        None => (None, None, None),
    };
    Ok(EventView {
        key: key.to_owned(),
        group,
        context,
        created_at,
        recorded_before_spark: before_spark,
        handlers,
    })
}
