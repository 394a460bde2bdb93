//! Printing for list-handlers and list-sources (read the config only).

use std::process::ExitCode;

use serde_json::json;

use super::Cli;
use super::output::{print_table, stdout_json};
use crate::config::{Config, HandlerKind, SourceKind};
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

pub fn sources(cli: &Cli, config: &Config, registry: &Registry) -> anyhow::Result<ExitCode> {
    if cli.json {
        let sources: Vec<_> = config
            .sources
            .iter()
            .map(|s| {
                let SourceKind::Function { function } = &s.kind;
                let func = registry.source(function);
                json!({
                    "name": s.name,
                    "kind": "function",
                    "function": function,
                    "records": s.records.describe(),
                    "sql": s.records.sql(),
                    "enabled": s.enabled,
                    "emits": func.map(|f| f.emits.clone()).unwrap_or_default(),
                    "reads": func.map(|f| f.reads.clone()).unwrap_or_default(),
                })
            })
            .collect();
        stdout_json(&json!(sources))?;
    } else {
        let rows: Vec<Vec<String>> = config
            .sources
            .iter()
            .map(|s| {
                let SourceKind::Function { function } = &s.kind;
                let emits = registry
                    .source(function)
                    .map(|f| f.emits.join(", "))
                    .unwrap_or_default();
                vec![
                    s.name.clone(),
                    format!("function {function}"),
                    if s.enabled { "yes" } else { "no" }.to_owned(),
                    s.records.describe(),
                    emits,
                ]
            })
            .collect();
        print_table(&["NAME", "SOURCE", "ENABLED", "RECORDS", "EMITS"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
