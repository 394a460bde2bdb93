//! The delivery log an operator needs: the history (`deliveries --state
//! done`, `show KEY`), and repairs that leave a trace in it (`reassign`,
//! `discard`, `replay`).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::Cli;
use super::admin::check_database;
use super::output::{clip, field, outln, print_table, stdout_json};
use crate::backend;
use crate::config::{Config, HandlerKind};
use crate::error::Error;
use crate::store::admin::{self, DeliveryQuery, EventQuery};
use crate::store::{HistoryEntry, HistoryQuery};

/// Keys per delivery `replay` creates.
const REPLAY_CHUNK: usize = 500;

fn history_rows<'a>(entries: impl IntoIterator<Item = &'a HistoryEntry>) -> Vec<Vec<String>> {
    entries
        .into_iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.handler.clone(),
                e.key.clone(),
                e.outcome.clone(),
                e.attempt.to_string(),
                e.ms.map_or_else(|| "-".into(), |ms| ms.to_string()),
                clip(
                    &match (&e.by, &e.error) {
                        (Some(by), Some(why)) => format!("by {by}: {why}"),
                        (Some(by), None) => format!("by {by}"),
                        (None, Some(error)) => error.clone(),
                        (None, None) => "-".into(),
                    },
                    80,
                ),
            ]
        })
        .collect()
}

const HISTORY_HEADER: [&str; 7] = ["AT", "HANDLER", "KEY", "OUTCOME", "ATTEMPT", "MS", "ERROR"];

/// `deliveries --state done` (or `discarded`): the history, newest first.
pub fn list(cli: &Cli, config: &Config, query: &HistoryQuery) -> anyhow::Result<ExitCode> {
    let entries = backend::reader(config)?.history(query)?;
    if cli.json {
        stdout_json(&json!(entries))?;
    } else if !cli.quiet {
        if entries.is_empty() {
            outln!(
                "no history (kept for {}; see [delivery] keep_history)",
                humantime::format_duration(config.delivery.keep_history)
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        print_table(&HISTORY_HEADER, &history_rows(&entries))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `show KEY`: the event, its context, and per handler what is owed and
/// what happened.
pub fn show(cli: &Cli, config: &Config, key: &str) -> anyhow::Result<ExitCode> {
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
    let mut history = reader.history(&HistoryQuery {
        keys: vec![key.to_owned()],
        ..Default::default()
    })?;
    history.reverse();
    let Some(event) = event else {
        if owed.is_empty() && history.is_empty() {
            return Err(Error::Usage(format!("show {key}: no such seen event")).into());
        }
        // Forgotten or pruned, but still known to the delivery log.
        return print_show(cli, config, key, None, &owed, &history);
    };
    print_show(cli, config, key, Some(&event), &owed, &history)
}

fn print_show(
    cli: &Cli,
    config: &Config,
    key: &str,
    event: Option<&admin::SeenEvent>,
    owed: &[admin::DeliveryLine],
    history: &[HistoryEntry],
) -> anyhow::Result<ExitCode> {
    // spark writes every context as a JSON object: one that is not (a
    // Python repr) was recorded by django-spark, before spark.
    let before_spark = event.is_some_and(|e| !e.context_is_json());
    // The handlers that receive the event's group, then any other that
    // owes or did something for it.
    let mut handlers: Vec<String> = event.map_or_else(Vec::new, |e| {
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
        if !handlers.contains(name) {
            handlers.push(name.clone());
        }
    }
    let stories: Vec<Story<'_>> = handlers
        .into_iter()
        .map(|name| {
            let kind = config
                .handlers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.kind.name());
            let owed: Vec<&admin::DeliveryLine> =
                owed.iter().filter(|o| o.handler == name).collect();
            let attempts: Vec<&HistoryEntry> =
                history.iter().filter(|h| h.handler == name).collect();
            let state = match (owed.first(), attempts.last()) {
                (Some(o), _) => o.state.clone(),
                (None, Some(last)) => match last.outcome.as_str() {
                    "delivered" => "done".into(),
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
    if cli.json {
        stdout_json(&json!({
            "key": key,
            "group": event.map(|e| e.group.clone()),
            "context": event.map(|e| e.context.clone()),
            "created_at": event.map(|e| e.created_at.clone()),
            "recorded_before_spark": before_spark,
            "handlers": stories,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    match event {
        Some(e) => {
            outln!("{} (group {})", field(key), field(&e.group))?;
            let context = match &e.context {
                serde_json::Value::String(text) if before_spark => {
                    outln!("  context as django-spark stored it (not JSON):")?;
                    text.clone()
                }
                other => serde_json::to_string_pretty(other).unwrap_or_default(),
            };
            for line in context.lines() {
                outln!("  {line}")?;
            }
        }
        None => outln!(
            "{}: not in the seen table (forgotten or pruned)",
            field(key)
        )?,
    }
    for story in &stories {
        let note = if story.in_config {
            ""
        } else {
            " (not in the config)"
        };
        outln!("\nhandler {}{note}: {}", story.handler, story.state)?;
        if !story.attempts.is_empty() {
            print_table(
                &HISTORY_HEADER,
                &history_rows(story.attempts.iter().copied()),
            )?;
        }
        for o in &story.owed {
            outln!(
                "  owed: {} after {} attempts{}{}",
                o.state,
                o.attempts,
                o.next_attempt_at
                    .as_deref()
                    .map(|t| format!(", next at {t} UTC"))
                    .unwrap_or_default(),
                o.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {}", clip(e, 120)))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What one handler did and owes for the event `show` shows.
#[derive(serde::Serialize)]
struct Story<'a> {
    handler: String,
    in_config: bool,
    state: String,
    owed: Vec<&'a admin::DeliveryLine>,
    attempts: Vec<&'a HistoryEntry>,
}

/// `reassign OLD NEW`: every delivery owed to OLD goes to NEW.
pub fn reassign(
    cli: &Cli,
    config: &Config,
    old: &str,
    new: &str,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    if !config.handlers.iter().any(|h| h.name == new) {
        return Err(Error::Usage(format!(
            "reassign: no handler `{new}` in {} to hand deliveries to",
            config.path.display()
        ))
        .into());
    }
    if old == new {
        return Err(Error::Usage("reassign: OLD and NEW are the same handler".into()).into());
    }
    let (moved, events) = if check_database(config)? {
        let _guard = backend::run_guard(config, wait)?;
        let mut store = backend::store(config)?;
        let owed: Vec<(String, String)> = store
            .deliveries()?
            .iter()
            .filter(|d| d.handler == old)
            .flat_map(|d| d.remaining().iter().map(|k| (d.handler.clone(), k.clone())))
            .collect();
        let history: Vec<HistoryEntry> = owed
            .iter()
            .map(|(_, key)| {
                HistoryEntry::action(key, new, "reassigned", Some(&format!("from handler {old}")))
            })
            .collect();
        (store.reassign(old, new, &history)?, owed.len())
    } else {
        (0, 0)
    };
    if cli.json {
        stdout_json(&json!({"from": old, "to": new, "deliveries": moved, "events": events}))?;
    } else if !cli.quiet {
        outln!("handed {events} owed events ({moved} deliveries) of handler {old} to {new}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `discard`: owed deliveries acknowledged without delivering them.
pub fn discard(
    cli: &Cli,
    config: &Config,
    query: &DeliveryQuery,
    reason: Option<&str>,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let (discarded, changed) = if check_database(config)? {
        let _guard = backend::run_guard(config, wait)?;
        let mut store = backend::store(config)?;
        let deliveries = store.deliveries()?;
        let (changes, dropped) = admin::drop_plan(&deliveries, &|d, key| {
            query.matches(d) && (query.keys.is_empty() || query.keys.contains(key))
        });
        let history: Vec<HistoryEntry> = dropped
            .iter()
            .map(|(handler, key)| HistoryEntry::action(key, handler, "discarded", reason))
            .collect();
        let changed = store.drop_owed(&changes, &history)?;
        if changed < changes.len() {
            // A shared store: another worker holds some of them right now.
            (history, Some(changes.len() - changed))
        } else {
            (history, None)
        }
    } else {
        (Vec::new(), None)
    };
    if cli.json {
        stdout_json(&json!({
            "discarded": discarded.iter().map(|e| json!({"handler": e.handler, "key": e.key})).collect::<Vec<_>>(),
            "left_to_other_workers": changed.unwrap_or(0),
        }))?;
    } else if !cli.quiet {
        outln!(
            "discarded {} owed deliveries{}",
            discarded.len(),
            reason.map(|r| format!(" ({r})")).unwrap_or_default()
        )?;
        if let Some(n) = changed {
            outln!("{n} deliveries another worker holds right now were left alone; run again")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `replay`: already-seen events delivered again, to one handler.
/// What `spark replay` is asked to do.
pub struct Replay<'a> {
    pub handler: &'a str,
    pub query: &'a EventQuery,
    pub keys: &'a [String],
    pub dry_run: bool,
    /// Replay events whose stored context is not JSON too (as text).
    pub text_contexts: bool,
    pub wait: Duration,
}

/// How many keys a refusal names.
const KEYS_NAMED: usize = 10;

pub fn replay(cli: &Cli, config: &Config, request: &Replay<'_>) -> anyhow::Result<ExitCode> {
    let Replay {
        handler,
        query,
        keys,
        dry_run,
        text_contexts,
        wait,
    } = *request;
    let Some(h) = config.handlers.iter().find(|h| h.name == handler) else {
        return Err(Error::Usage(format!(
            "replay --handler {handler}: no handler of that name in {}",
            config.path.display()
        ))
        .into());
    };
    let mut reader = backend::reader(config)?;
    reader.seen_table()?;
    // The events asked for, in the order they were seen.
    let mut chosen: Vec<(String, String)> = Vec::new();
    // Events whose stored context is not JSON (django-spark's `repr()`):
    // a handler would get `{"text": ...}` and a template render empty.
    let mut not_json: Vec<String> = Vec::new();
    let mut choose = |e: admin::SeenEvent| {
        if !e.context_is_json() && h.group.is_match(&e.group) {
            not_json.push(e.key.clone());
        }
        chosen.push((e.key, e.group));
    };
    if keys.is_empty() {
        reader.list_events(query, &mut choose)?;
        chosen.reverse();
    } else {
        for key in keys {
            match reader.seen_event(key)? {
                Some(e) => choose(e),
                None => {
                    return Err(
                        Error::Usage(format!("replay --key {key}: no such seen event")).into(),
                    );
                }
            }
        }
    }
    if !not_json.is_empty() && !text_contexts {
        let named: Vec<String> = not_json.iter().take(KEYS_NAMED).map(|k| field(k)).collect();
        let more = not_json.len().saturating_sub(KEYS_NAMED);
        return Err(Error::Usage(format!(
            "replay: {} events' stored contexts are not JSON (django-spark wrote Python reprs), so \
             {handler} would get them as {{\"text\": \"...\"}} and templates would render them empty: {}{}; \
             leave them out (--key, --group, --since), or pass --text-contexts to send them as text",
            not_json.len(),
            named.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ))
        .into());
    }
    // Only events of groups the handler receives; none it already owes.
    let owed: std::collections::HashSet<String> = reader
        .deliveries()?
        .iter()
        .filter(|d| d.handler == handler)
        .flat_map(|d| d.remaining().to_vec())
        .collect();
    drop(reader);
    let total = chosen.len();
    type Chosen = Vec<(String, String)>;
    let (receives, other): (Chosen, Chosen) = chosen
        .into_iter()
        .partition(|(_, group)| h.group.is_match(group));
    let (already, replayed): (Vec<String>, Vec<String>) = receives
        .into_iter()
        .map(|(key, _)| key)
        .partition(|key| owed.contains(key));
    if !dry_run && !replayed.is_empty() {
        let _guard = backend::run_guard(config, wait)?;
        let mut store = backend::store(config)?;
        let history: Vec<HistoryEntry> = replayed
            .iter()
            .map(|key| HistoryEntry::action(key, handler, "replayed", None))
            .collect();
        let file_sink = matches!(h.kind, HandlerKind::Jsonl { .. });
        store.add_deliveries(handler, &replayed, REPLAY_CHUNK, file_sink, &history)?;
    }
    if cli.json {
        stdout_json(&json!({
            "handler": handler,
            "dry_run": dry_run,
            "replayed": replayed,
            "already_owed": already,
            "not_received": other.len(),
            "selected": total,
        }))?;
    } else if !cli.quiet {
        let verb = if dry_run { "would replay" } else { "replayed" };
        outln!(
            "{verb} {} events to {handler} (of {total} selected: {} already owed to it, {} of groups it does not receive){}",
            replayed.len(),
            already.len(),
            other.len(),
            if dry_run || replayed.is_empty() {
                ""
            } else {
                "; the next process-sources or deliver delivers them"
            }
        )?;
        if dry_run {
            for key in replayed.iter().take(20) {
                outln!("  {}", field(key))?;
            }
            if replayed.len() > 20 {
                outln!("  ... and {} more", replayed.len() - 20)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
