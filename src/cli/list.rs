//! Printing for list-handlers and list-sources (read the config only).

use std::process::ExitCode;

use serde_json::json;

use super::Cli;
use super::output::{clip, print_table, stdout_json};
use crate::config::{Config, HandlerKind, MailTransport, SourceKind};
use crate::registry::Registry;

fn handler_target(kind: &HandlerKind) -> String {
    match kind {
        HandlerKind::Jsonl { path } => path.display().to_string(),
        HandlerKind::Command { argv, timeout, .. } => format!(
            "{} (timeout {})",
            argv.join(" "),
            humantime::format_duration(*timeout)
        ),
        HandlerKind::Function { function } => function.clone(),
        HandlerKind::Webhook { url, timeout, .. } => {
            format!(
                "POST {url} (timeout {})",
                humantime::format_duration(*timeout)
            )
        }
        HandlerKind::Mail(mail) => match &mail.transport {
            MailTransport::Outbox { dir } => format!("outbox {}", dir.display()),
            MailTransport::Smtp { host, port, .. } => format!("smtp {host}:{port}"),
        },
    }
}

pub fn handlers(cli: &Cli, config: &Config) -> anyhow::Result<ExitCode> {
    if cli.json {
        let handlers: Vec<_> = config
            .handlers
            .iter()
            .map(|h| {
                json!({
                    "name": h.name,
                    "kind": h.kind.name(),
                    "group": h.group.as_str(),
                    "delivery": h.guarantee.to_string(),
                    "target": handler_target(&h.kind),
                    "max_attempts": h.retry.max_attempts,
                    "backoff": humantime::format_duration(h.retry.backoff).to_string(),
                })
            })
            .collect();
        stdout_json(&json!(handlers))?;
    } else {
        let rows: Vec<Vec<String>> = config
            .handlers
            .iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    h.kind.name().to_owned(),
                    h.group.as_str().to_owned(),
                    h.guarantee.to_string(),
                    handler_target(&h.kind),
                ]
            })
            .collect();
        print_table(&["NAME", "KIND", "GROUP", "DELIVERY", "TARGET"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// How a source makes events, in one phrase.
fn source_kind(kind: &SourceKind) -> String {
    match kind {
        SourceKind::Function { function } => format!("function {function}"),
        SourceKind::Generator(g) => format!("generator (id: {})", g.id),
    }
}

pub fn sources(cli: &Cli, config: &Config, registry: &Registry) -> anyhow::Result<ExitCode> {
    if cli.json {
        let sources: Vec<_> = config
            .sources
            .iter()
            .map(|s| {
                let mut entry = json!({
                    "name": s.name,
                    "records": s.records.describe(),
                    "sql": s.records.sql(),
                    "enabled": s.enabled,
                    "emits": s.kind.emits(registry),
                });
                match &s.kind {
                    SourceKind::Function { function } => {
                        entry["kind"] = json!("function");
                        entry["function"] = json!(function);
                        entry["reads"] = json!(
                            registry
                                .source(function)
                                .map(|f| f.reads.clone())
                                .unwrap_or_default()
                        );
                    }
                    SourceKind::Generator(g) => {
                        entry["kind"] = json!("generator");
                        entry["group"] = json!(g.group);
                        entry["id"] = json!(g.id);
                        entry["conditions"] = json!(
                            g.conditions
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                        );
                    }
                }
                entry
            })
            .collect();
        stdout_json(&json!(sources))?;
    } else {
        let rows: Vec<Vec<String>> = config
            .sources
            .iter()
            .map(|s| {
                let conditions = match &s.kind {
                    SourceKind::Generator(g) => g.describe_conditions(),
                    SourceKind::Function { .. } => "-".to_owned(),
                };
                vec![
                    s.name.clone(),
                    source_kind(&s.kind),
                    if s.enabled { "yes" } else { "no" }.to_owned(),
                    clip(&s.records.describe(), 60),
                    s.kind.emits(registry).join(", "),
                    conditions,
                ]
            })
            .collect();
        print_table(
            &["NAME", "SOURCE", "ENABLED", "RECORDS", "EMITS", "WHEN"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}
