//! The delivery log an operator needs: the history (`deliveries --state
//! done`, `show KEY`), and printing the repairs that leave a trace in it
//! (`reassign`, `discard`, `replay`: made by `crate::ops`).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::Cli;
use super::output::{clip, field, outln, print_table, stdout_json};
use crate::backend;
use crate::config::Config;
use crate::ops::{self, ReplayRequest};
use crate::store::admin::DeliveryQuery;
use crate::store::history::operator;
use crate::store::{HistoryEntry, HistoryQuery};

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
    let view = ops::show(config, key)?;
    if cli.json {
        stdout_json(&json!(view))?;
        return Ok(ExitCode::SUCCESS);
    }
    match &view.group {
        Some(group) => {
            outln!("{} (group {})", field(key), field(group))?;
            if view.recorded_before_spark {
                outln!("  context as django-spark stored it (not JSON):")?;
            }
            for line in view.context_text().lines() {
                outln!("  {line}")?;
            }
        }
        None => outln!(
            "{}: not in the seen table (forgotten or pruned)",
            field(key)
        )?,
    }
    for story in &view.handlers {
        let note = if story.in_config {
            ""
        } else {
            " (not in the config)"
        };
        outln!("\nhandler {}{note}: {}", story.handler, story.state)?;
        if !story.attempts.is_empty() {
            print_table(&HISTORY_HEADER, &history_rows(&story.attempts))?;
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

/// `reassign OLD NEW`: every delivery owed to OLD goes to NEW.
pub fn reassign(
    cli: &Cli,
    config: &Config,
    old: &str,
    new: &str,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let done = ops::reassign(config, old, new, &operator(), wait)?;
    if cli.json {
        stdout_json(&json!(done))?;
    } else if !cli.quiet {
        outln!(
            "handed {} owed events ({} deliveries) of handler {old} to {new}",
            done.events,
            done.deliveries
        )?;
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
    let done = ops::discard(config, query, reason, &operator(), wait)?;
    if cli.json {
        stdout_json(&json!({
            "discarded": done.discarded.iter().map(|(handler, key)| json!({"handler": handler, "key": key})).collect::<Vec<_>>(),
            "left_to_other_workers": done.left_to_other_workers,
        }))?;
    } else if !cli.quiet {
        outln!(
            "discarded {} owed deliveries{}",
            done.discarded.len(),
            reason.map(|r| format!(" ({r})")).unwrap_or_default()
        )?;
        if done.left_to_other_workers > 0 {
            outln!(
                "{} deliveries another worker holds right now were left alone; run again",
                done.left_to_other_workers
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `replay`: already-seen events delivered again, to one handler.
pub fn replay(cli: &Cli, config: &Config, request: &ReplayRequest<'_>) -> anyhow::Result<ExitCode> {
    let done = ops::replay(config, request, &operator())?;
    let (handler, dry_run, total) = (&done.handler, done.dry_run, done.selected);
    let (replayed, already) = (&done.replayed, &done.already_owed);
    let other = done.not_received;
    if cli.json {
        stdout_json(&json!({
            "handler": handler,
            "dry_run": dry_run,
            "replayed": replayed,
            "already_owed": already,
            "not_received": other,
            "selected": total,
        }))?;
    } else if !cli.quiet {
        let verb = if dry_run { "would replay" } else { "replayed" };
        outln!(
            "{verb} {} events to {handler} (of {total} selected: {} already owed to it, {} of groups it does not receive){}",
            replayed.len(),
            already.len(),
            other,
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
