//! Printing for list-handlers, list-sources and config (they read the
//! config only, and list-sources the marks of sources with a cursor).

use std::process::ExitCode;

use serde_json::json;

use super::Cli;
use super::output::{clip, errln, outln, print_table, stdout_json};
use crate::config::{Config, SourceKind};
use crate::records::RecordSet;
use crate::registry::Registry;
use crate::sources::generator::CondValue;

pub fn handlers(cli: &Cli, config: &Config, registry: &Registry) -> anyhow::Result<ExitCode> {
    let (groups, complete) = crate::check::emitted_groups(config, registry);
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
                    "target": h.kind.target(),
                    "receives": groups.iter().filter(|g| h.group.is_match(g)).collect::<Vec<_>>(),
                    "max_attempts": h.retry.max_attempts,
                    "backoff": humantime::format_duration(h.retry.backoff).to_string(),
                    "concurrency": h.concurrency,
                    "rate": h.rate.map(|r| r.to_string()),
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
                    h.kind.target(),
                    receives(h, &groups, complete),
                ]
            })
            .collect();
        print_table(
            &["NAME", "KIND", "GROUP", "DELIVERY", "TARGET", "RECEIVES"],
            &rows,
        )?;
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

/// What the store keeps of the sources with a cursor (read only when one
/// has a cursor; a database that cannot be read is a warning here).
fn cursor_states(config: &Config) -> Vec<crate::store::CursorState> {
    if config.sources.iter().all(|s| s.cursor.is_none()) {
        return Vec::new();
    }
    match crate::backend::reader(config).and_then(|mut r| r.cursors()) {
        Ok(states) => states,
        Err(e) => {
            errln!("warning: the sources' high-water marks were not read: {e}");
            Vec::new()
        }
    }
}

/// A source's cursor as `list-sources` shows it: its column, its mark and
/// when its last full scan ended (UTC), or why the next run reads all.
struct CursorView {
    column: String,
    mark: Option<String>,
    full_scan: Option<String>,
    /// The kept mark is of another definition of the source.
    stale: bool,
}

fn cursor_view(
    source: &crate::config::SourceConfig,
    states: &[crate::store::CursorState],
) -> Option<CursorView> {
    let cursor = source.cursor.as_ref()?;
    let state = states.iter().find(|k| k.source == source.name);
    Some(CursorView {
        column: cursor.column.clone(),
        mark: state.and_then(|k| k.mark.clone()),
        full_scan: state.map(|k| crate::clock::utc_text(k.full_at)),
        stale: state.is_some_and(|k| k.fingerprint != source.fingerprint()),
    })
}

pub fn sources(cli: &Cli, config: &Config, registry: &Registry) -> anyhow::Result<ExitCode> {
    let states = cursor_states(config);
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
                if let Some(view) = cursor_view(s, &states) {
                    entry["cursor"] = json!({
                        "column": view.column,
                        "mark": view.mark,
                        "last_full_scan": view.full_scan,
                        "config_changed": view.stale,
                    });
                }
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
        let with_cursors = config.sources.iter().any(|s| s.cursor.is_some());
        let rows: Vec<Vec<String>> = config
            .sources
            .iter()
            .map(|s| {
                let conditions = match &s.kind {
                    SourceKind::Generator(g) => g.describe_conditions(),
                    SourceKind::Function { .. } => "-".to_owned(),
                };
                let mut row = vec![
                    s.name.clone(),
                    source_kind(&s.kind),
                    if s.enabled { "yes" } else { "no" }.to_owned(),
                    clip(&s.records.describe(), 60),
                    s.kind.emits(registry).join(", "),
                    conditions,
                ];
                if with_cursors {
                    let view = cursor_view(s, &states);
                    row.push(view.as_ref().map_or("-".into(), |v| v.column.clone()));
                    row.push(match &view {
                        None => "-".into(),
                        Some(v) if v.stale => "(config changed: next run reads all)".into(),
                        Some(v) => v.mark.as_deref().map_or("(none)".into(), |m| clip(m, 40)),
                    });
                    row.push(view.and_then(|v| v.full_scan).unwrap_or_else(|| "-".into()));
                }
                row
            })
            .collect();
        let mut header = vec!["NAME", "SOURCE", "ENABLED", "RECORDS", "EMITS", "WHEN"];
        if with_cursors {
            header.extend(["CURSOR", "MARK", "LAST FULL SCAN"]);
        }
        print_table(&header, &rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The groups (of those the sources emit) a handler receives.
fn receives(handler: &crate::config::HandlerConfig, groups: &[&str], complete: bool) -> String {
    let mine: Vec<&str> = groups
        .iter()
        .copied()
        .filter(|g| handler.group.is_match(g))
        .collect();
    match (mine.is_empty(), complete) {
        (false, true) => mine.join(", "),
        (false, false) => format!("{}, and maybe more", mine.join(", ")),
        (true, true) => "(nothing)".to_owned(),
        (true, false) => "(unknown)".to_owned(),
    }
}

/// `check`: the config file's own problems and its database's together,
/// in text or JSON, whatever is wrong.
pub fn check(cli: &Cli, path: &std::path::Path, registry: &Registry) -> anyhow::Result<ExitCode> {
    let partial = match Config::load_partial(path, registry) {
        Ok(partial) => partial,
        Err(e) => {
            // Nothing could be made of the file: its one error.
            let report = crate::check::CheckReport {
                errors: vec![e.to_string()],
                ..Default::default()
            };
            return print_check(cli, &report, &path.display().to_string(), "(not read)");
        }
    };
    let report = crate::check::check(&partial, registry);
    let config = &partial.config;
    print_check(
        cli,
        &report,
        &config.path.display().to_string(),
        &config.database.describe(),
    )
}

fn print_check(
    cli: &Cli,
    report: &crate::check::CheckReport,
    path: &str,
    database: &str,
) -> anyhow::Result<ExitCode> {
    if cli.json {
        stdout_json(&json!({
            "ok": report.errors.is_empty(),
            "errors": report.errors,
            "warnings": report.warnings,
            "orphaned": report.orphaned,
        }))?;
    } else {
        for e in &report.errors {
            errln!("error: {e}");
        }
        for w in &report.warnings {
            errln!("warning: {w}");
        }
        super::run::print_orphaned(&report.orphaned);
        if !cli.quiet || !report.errors.is_empty() {
            outln!(
                "check: {path} against {database}: {} errors, {} warnings",
                report.errors.len(),
                report.warnings.len()
            )?;
        }
    }
    Ok(ExitCode::from(report.exit_code()))
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The effective config, in the config file's own terms.
fn config_view(config: &Config) -> ConfigView {
    let database = config.database.view(&|p| absolute(p));
    let d = &config.delivery;
    let sources: Vec<_> = config
        .sources
        .iter()
        .map(|s| {
            let mut v = json!({"name": s.name, "enabled": s.enabled});
            match &s.records {
                RecordSet::Table { table, filter } => {
                    v["table"] = json!(table);
                    if let Some(f) = filter {
                        v["where"] = json!(f);
                    }
                }
                RecordSet::Query(q) => v["query"] = json!(q),
            }
            if let Some(c) = &s.cursor {
                v["cursor"] = json!(c.column);
                v["cursor_lookback"] = json!(duration(c.lookback));
                v["rescan"] = json!(duration(c.rescan));
            }
            match &s.kind {
                SourceKind::Function { function } => v["function"] = json!(function),
                SourceKind::Generator(g) => {
                    v["group"] = json!(g.group);
                    v["id"] = json!(g.id);
                    v["conditions"] = json!(
                        g.conditions
                            .iter()
                            .map(|c| {
                                let value = match &c.value {
                                    CondValue::Int(i) => json!(i),
                                    CondValue::Float(x) => json!(x),
                                    CondValue::Text(t) => json!(t),
                                    CondValue::Date(d) => json!(d.to_string()),
                                    CondValue::DateTime(t) => json!(t.to_string()),
                                    CondValue::Relative(r) => json!(r.to_string()),
                                    CondValue::Bool(b) => json!(b),
                                };
                                json!({"variable": c.variable, "op": c.op.to_string(), "value": value})
                            })
                            .collect::<Vec<_>>()
                    );
                }
            }
            v
        })
        .collect();
    let handlers: Vec<_> = config
        .handlers
        .iter()
        .map(|h| {
            let mut v = json!({
                "name": h.name,
                "group": h.group.as_str(),
                "kind": h.kind.name(),
                "delivery": h.guarantee.to_string(),
                "max_attempts": h.retry.max_attempts,
                "backoff": duration(h.retry.backoff),
            });
            if !h.kind.is_file_sink() {
                v["concurrency"] = json!(h.concurrency);
            }
            if let Some(rate) = h.rate {
                v["rate"] = json!(rate.to_string());
            }
            h.kind
                .view(&mut v, &|p| absolute(p), &|f| folder_path(config, f));
            v
        })
        .collect();
    ConfigView {
        database,
        delivery: json!({
            "max_attempts": d.retry.max_attempts,
            "backoff": duration(d.retry.backoff),
            "max_backoff": duration(d.retry.max_backoff),
            "batch_size": d.batch_size,
            "keep_history": duration(d.keep_history),
        }),
        serve: {
            let mut v = json!({
                "listen": config.serve.listen.to_string(),
                "user": config.serve.user,
            });
            if let Some(var) = &config.serve.password_env {
                v["password_env"] = json!(var);
            }
            v
        },
        sources,
        handlers,
    }
}

/// The effective config, in the order of a config file.
#[derive(serde::Serialize)]
struct ConfigView {
    database: serde_json::Value,
    delivery: serde_json::Value,
    serve: serde_json::Value,
    sources: Vec<serde_json::Value>,
    handlers: Vec<serde_json::Value>,
}

/// A folder as the config wrote it, made absolute so that the printed
/// config works wherever it is saved.
fn folder_path(config: &Config, written: &str) -> String {
    let dir = config.path.parent().unwrap_or(std::path::Path::new(""));
    absolute(&dir.join(written))
}

/// `path` (already resolved against the config's folder) as an absolute
/// path.
fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// Every string in `value` written so that the config reads it back the
/// same: a literal `${` as `$${`, and each value a `${VAR}` expanded to as
/// that `${VAR}` again (so a value from the environment is never printed;
/// one shorter than 4 characters is printed as it is, neither masked nor
/// replaced, as it could stand for any text).
fn as_written(value: &mut serde_json::Value, env_values: &[(String, String)]) {
    match value {
        serde_json::Value::String(s) => {
            let mut text = s.replace("${", "$${");
            for (var, expanded) in env_values {
                // As short values are not masked either (see `redact`).
                if expanded.chars().count() >= crate::redact::MIN_LEN {
                    text = text.replace(expanded.as_str(), &format!("${{{var}}}"));
                }
            }
            *s = text;
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| as_written(v, env_values)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| as_written(v, env_values)),
        _ => {}
    }
}

pub fn config(cli: &Cli, config: &Config) -> anyhow::Result<ExitCode> {
    // Values from the environment are written back as `${VAR}`; other
    // secrets are masked on the way out, like everything printed.
    let mut env_values = config.env_values.clone();
    env_values.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let mut view = config_view(config);
    for part in [&mut view.database, &mut view.delivery, &mut view.serve] {
        as_written(part, &env_values);
    }
    for part in view.sources.iter_mut().chain(view.handlers.iter_mut()) {
        as_written(part, &env_values);
    }
    if cli.json {
        stdout_json(&serde_json::to_value(&view)?)?;
    } else {
        outln!(
            "# effective config from {}\n{}",
            config.path.display(),
            toml::to_string_pretty(&view)?.trim_end()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
