//! Printing for the operator commands over the store: mark-seen, events,
//! deliveries, forget, prune, migrate, preview-mail (the changes are made
//! by `crate::ops`).

use std::process::ExitCode;
use std::time::Duration;

use regex::Regex;
use serde_json::json;

use super::Cli;
use super::output::{clip, field, outln, print_table, stdout_json};
use crate::backend;
use crate::config::{Config, HandlerKind};
use crate::error::Error;
use crate::handlers::mail::MailHandler;
use crate::store::admin::{self, DeliveryQuery, EventQuery};

/// `spark migrate --print-grants ROLE`: the GRANT statements the role
/// needs; connects to nothing.
pub fn print_grants(cli: &Cli, config: &Config, role: &str) -> anyhow::Result<ExitCode> {
    if role.is_empty() {
        return Err(Error::Usage("migrate --print-grants: ROLE must not be empty".into()).into());
    }
    let Some(grants) = backend::grants(config, role) else {
        return Err(Error::Usage(format!(
            "migrate --print-grants: {} is an SQLite file, which has no roles: spark needs to read it and to write in its folder",
            config.database.describe()
        ))
        .into());
    };
    if cli.json {
        stdout_json(&json!({"role": role, "sql": grants}))?;
    } else {
        outln!("{}", grants.trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `spark migrate`: creates or upgrades spark's tables, or prints the SQL.
pub fn migrate(
    cli: &Cli,
    config: &Config,
    print_sql: bool,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let pending = backend::pending_sql(config)?;
    let up_to_date = pending.lines().count() <= 2;
    if print_sql {
        if cli.json {
            stdout_json(&json!({"up_to_date": up_to_date, "sql": pending}))?;
        } else if up_to_date {
            outln!(
                "-- {}: spark's tables are up to date; nothing to run",
                config.database.describe()
            )?;
        } else {
            outln!(
                "-- {}: what spark would run to bring its tables up to date\n{}",
                config.database.describe(),
                pending.trim_end()
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !up_to_date {
        crate::ops::migrate(config, wait)?;
    }
    if cli.json {
        stdout_json(&json!({"up_to_date": up_to_date, "migrated": !up_to_date}))?;
    } else if !cli.quiet {
        if up_to_date {
            outln!(
                "spark's tables in {} are up to date",
                config.database.describe()
            )?;
        } else {
            outln!(
                "created or upgraded spark's tables in {}",
                config.database.describe()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn mark_seen(
    cli: &Cli,
    config: &Config,
    key: &str,
    group: Option<&str>,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let done = crate::ops::mark_seen(config, key, group, wait)?;
    if cli.json {
        stdout_json(&json!(done))?;
    } else if !cli.quiet {
        if done.new {
            outln!(
                "marked {} as seen (group {}); it will not be dispatched",
                field(&done.key),
                field(&done.group)
            )?;
        } else {
            outln!("{} was already seen; nothing changed", field(&done.key))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn events(cli: &Cli, config: &Config, query: &EventQuery) -> anyhow::Result<ExitCode> {
    let mut reader = backend::reader(config)?;
    reader.seen_table()?;
    let mut events = Vec::new();
    reader.list_events(query, &mut |e| events.push(e))?;
    if cli.json {
        stdout_json(&json!(events))?;
    } else if !cli.quiet {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                let context = match &e.context {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                vec![
                    e.key.clone(),
                    e.group.clone(),
                    e.created_at.clone(),
                    clip(&context, 60),
                ]
            })
            .collect();
        print_table(&["KEY", "GROUP", "CREATED_AT", "CONTEXT"], &rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn deliveries(
    cli: &Cli,
    config: &Config,
    query: &DeliveryQuery,
    orphaned: bool,
) -> anyhow::Result<ExitCode> {
    let mut owed = backend::reader(config)?.deliveries()?;
    if orphaned {
        let known = config.handler_names();
        owed.retain(|d| !known.contains(&d.handler.as_str()));
    }
    let lines = admin::list_deliveries(&owed, query);
    if cli.json {
        stdout_json(&json!(lines))?;
    } else if !cli.quiet {
        if lines.is_empty() {
            outln!("no deliveries pending, in flight, failed or dead")?;
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|d| {
                vec![
                    d.handler.clone(),
                    d.key.clone(),
                    d.state.clone(),
                    d.attempts.to_string(),
                    d.next_attempt_at.clone().unwrap_or_else(|| "-".into()),
                    match (&d.worker, &d.lease_until) {
                        (Some(worker), Some(until)) => format!("{worker} until {until}"),
                        _ => "-".into(),
                    },
                    clip(d.last_error.as_deref().unwrap_or("-"), 80),
                ]
            })
            .collect();
        print_table(
            &[
                "HANDLER",
                "KEY",
                "STATE",
                "ATTEMPTS",
                "NEXT_ATTEMPT",
                "HELD_BY",
                "ERROR",
            ],
            &rows,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn forget(
    cli: &Cli,
    config: &Config,
    keys: &[String],
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let report = crate::ops::forget(config, keys, wait)?;
    if cli.json {
        stdout_json(&json!(report))?;
    } else if !cli.quiet {
        outln!(
            "forgot {} keys ({} owed deliveries dropped); they fire again when a source produces them",
            report.forgotten.len(),
            report.deliveries_dropped
        )?;
        if !report.unknown.is_empty() {
            let unknown: Vec<String> = report.unknown.iter().map(|k| field(k)).collect();
            outln!("not seen, nothing to forget: {}", unknown.join(", "))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn prune(
    cli: &Cli,
    config: &Config,
    age: Duration,
    group: Option<&Regex>,
    dry_run: bool,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let done = crate::ops::prune(config, age, group, dry_run, wait)?;
    if cli.json {
        stdout_json(&json!(done))?;
    } else if !cli.quiet {
        let verb = if dry_run { "would prune" } else { "pruned" };
        outln!(
            "{verb} {} events recorded before {} UTC; kept {} with unfinished deliveries",
            done.pruned,
            done.cutoff,
            done.kept_undelivered
        )?;
        if !dry_run {
            outln!(
                "pruned {} history entries from before {} UTC (keep_history)",
                done.history_pruned,
                done.history_cutoff
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn preview_mail(
    cli: &Cli,
    config: &Config,
    handler: &str,
    key: Option<&str>,
    context: Option<&str>,
    group: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let Some(h) = config.handlers.iter().find(|h| h.name == handler) else {
        return Err(Error::Usage(format!(
            "preview-mail: no handler `{handler}` in {}",
            config.path.display()
        ))
        .into());
    };
    let HandlerKind::Mail(mail) = &h.kind else {
        return Err(Error::Usage(format!(
            "preview-mail: handler `{handler}` is a {} handler, not mail",
            h.kind.name()
        ))
        .into());
    };
    let event = match (key, context) {
        (Some(key), _) => {
            let mut reader = backend::reader(config)?;
            reader.seen_table()?;
            reader
                .seen_event(key)?
                .ok_or_else(|| {
                    Error::Usage(format!("preview-mail --key {key}: no such seen event"))
                })?
                .to_event()
        }
        (None, Some(json)) => {
            let Ok(serde_json::Value::Object(map)) = serde_json::from_str(json) else {
                return Err(
                    Error::Usage("preview-mail --context: expected a JSON object".into()).into(),
                );
            };
            let group = group.unwrap_or_default();
            crate::event::event(group, "preview", map)
        }
        (None, None) => {
            return Err(Error::Usage(
                "preview-mail: give --key KEY or --context JSON --group G".into(),
            )
            .into());
        }
    };
    let renderer = MailHandler::new(handler, (**mail).clone());
    let rendered = renderer.render_parts(&event).map_err(Error::Usage)?;
    // A mail without a recipient or a sender is shown, with what it lacks
    // (its delivery would fail), as django-spark's admin preview shows it.
    let missing = renderer.missing(&event, &rendered);
    if cli.json {
        stdout_json(&json!({
            "key": event.key,
            "group": event.group,
            "from": rendered.from,
            "to": rendered.to,
            "cc": rendered.cc,
            "bcc": rendered.bcc,
            "reply_to": rendered.reply_to,
            "subject": rendered.subject,
            "body": rendered.body,
            "html": rendered.html,
            "headers": rendered.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "missing": missing,
        }))?;
    } else {
        if let Some(problem) = &missing {
            outln!(
                "# {}: a delivery of this mail would fail",
                crate::escape::escape(problem)
            )?;
        }
        let message = renderer.preview(&event, &rendered).map_err(Error::Usage)?;
        let text = String::from_utf8_lossy(&message.formatted()).replace("\r\n", "\n");
        outln!("{}", text.trim_end_matches('\n'))?;
    }
    Ok(ExitCode::SUCCESS)
}
