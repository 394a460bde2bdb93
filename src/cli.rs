//! The command line: clap definitions, dispatch to the library, and all
//! printing. Human output is short (one summary line per run, nothing with
//! `-q` on success); `--json` prints one JSON document on stdout; logs go to
//! stderr.
//!
//! Not here: any logic a library user would want without the CLI.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand};
use jiff::civil::Date;
use serde_json::json;

use crate::config::{Config, HandlerKind, SourceKind};
use crate::error::Error;
use crate::pipeline::{self, RunOptions, RunReport};
use crate::records::parse_date;
use crate::registry::Registry;
use crate::store::{SqliteStore, Store};
use crate::{config, database};

/// spark: turns database records into events and hands each new event to the
/// handlers that want it, exactly once per event key.
#[derive(Debug, Parser)]
#[command(name = "spark", version, about, long_about = None)]
pub struct Cli {
    /// Config file [default: $SPARK_CONFIG, else ./spark.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing on success (for cron)
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read the sources, record new events and deliver them (the main job, for cron)
    ProcessSources {
        #[command(flatten)]
        run: RunArgs,
        /// Wait up to this long for another run on the same database (e.g. "30s")
        #[arg(long, value_name = "DURATION", default_value = "0s")]
        wait: String,
    },
    /// Show what process-sources would dispatch now; writes nothing
    DryRun {
        #[command(flatten)]
        run: RunArgs,
    },
    /// List the configured handlers: name, kind, group regex
    ListHandlers,
    /// List the configured sources
    ListSources,
    /// Record KEY as seen without dispatching it
    MarkSeen {
        /// The event key, e.g. challenge_ended_42
        key: String,
        /// The event's group [default: KEY up to its last "_"]
        #[arg(long, value_name = "G")]
        group: Option<String>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Only this source (repeatable)
    #[arg(long = "source", value_name = "NAME")]
    sources: Vec<String>,
    /// The date sources treat as today, YYYY-MM-DD [default: the local date]
    #[arg(long, value_name = "DATE")]
    as_of: Option<String>,
}

/// Parses the command line, runs the command and returns the exit status:
/// 0 all done, 1 finished with failed deliveries, 2 unusable input, 3
/// another run holds the lock.
pub fn run_cli(registry: Registry) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose, cli.quiet);
    match run(&cli, &registry) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            let code = err.downcast_ref::<Error>().map_or(2, Error::exit_code);
            ExitCode::from(code)
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("spark={default}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

/// The config file to use: `--config`, else `$SPARK_CONFIG`, else `./spark.toml`.
fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("SPARK_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("spark.toml"))
}

fn run(cli: &Cli, registry: &Registry) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_path(cli), registry).map_err(Error::from)?;
    match &cli.command {
        Command::ProcessSources { run, wait } => {
            let wait = config::parse_duration(wait)
                .map_err(|e| Error::Usage(format!("--wait {wait:?}: {e}")))?;
            let opts = run_options(cli, run, wait)?;
            let report = pipeline::process_sources(&config, registry, &opts)?;
            print_run(cli, "process-sources", &report)
        }
        Command::DryRun { run } => {
            let opts = run_options(cli, run, std::time::Duration::ZERO)?;
            dry_run(cli, &config, registry, &opts)
        }
        Command::ListHandlers => list_handlers(cli, &config),
        Command::ListSources => list_sources(cli, &config, registry),
        Command::MarkSeen { key, group } => mark_seen(cli, &config, key, group.as_deref()),
    }
}

fn run_options(cli: &Cli, run: &RunArgs, wait: std::time::Duration) -> anyhow::Result<RunOptions> {
    let today = match &run.as_of {
        Some(text) => parse_date(text)
            .filter(|_| text.len() == 10)
            .ok_or_else(|| Error::Usage(format!("--as-of {text:?}: expected a date YYYY-MM-DD")))?,
        None => local_today(),
    };
    Ok(RunOptions {
        only: run.sources.clone(),
        today,
        wait,
        progress: !cli.quiet && !cli.json && std::io::stderr().is_terminal(),
    })
}

fn local_today() -> Date {
    jiff::ZonedDateTime::now().date()
}

fn stdout_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn summary(command: &str, r: &RunReport) -> String {
    let mut line = format!(
        "{command}: {} records, {} events, {} new, {} delivered, {} failed",
        r.records(),
        r.events(),
        r.new_events(),
        r.delivered(),
        r.failed()
    );
    if r.retried > 0 {
        line.push_str(&format!(", {} earlier deliveries retried", r.retried));
    }
    if r.waiting() > 0 {
        line.push_str(&format!(", {} waiting", r.waiting()));
    }
    if r.bad_records() > 0 {
        line.push_str(&format!(", {} records skipped", r.bad_records()));
    }
    line.push_str(&format!(" in {:.2}s", r.seconds));
    line
}

fn report_json(command: &str, r: &RunReport) -> serde_json::Value {
    json!({
        "command": command,
        "records": r.records(),
        "events": r.events(),
        "new": r.new_events(),
        "delivered": r.delivered(),
        "failed": r.failed(),
        "dead": r.dead(),
        "waiting": r.waiting(),
        "retried": r.retried,
        "bad_records": r.bad_records(),
        "seconds": r.seconds,
        "sources": r.sources,
        "handlers": r.handlers,
        "failures": r.failures,
        "record_errors": r.record_errors,
    })
}

fn print_run(cli: &Cli, command: &str, r: &RunReport) -> anyhow::Result<ExitCode> {
    let failed = r.has_failures();
    if cli.json {
        stdout_json(&report_json(command, r))?;
    } else if !cli.quiet {
        println!("{}", summary(command, r));
    } else if failed {
        eprintln!("{}", summary(command, r));
    }
    if !cli.json {
        for f in &r.failures {
            let next = if f.dead {
                "dead, retry by hand".to_owned()
            } else {
                "will retry".to_owned()
            };
            eprintln!(
                "failed: handler `{}`, event {} (attempt {}, {next}): {}",
                f.handler, f.key, f.attempts, f.error
            );
        }
        for e in &r.record_errors {
            eprintln!(
                "skipped: source `{}`, record {}: {}",
                e.source, e.record, e.error
            );
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn dry_run(
    cli: &Cli,
    config: &Config,
    registry: &Registry,
    opts: &RunOptions,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut first = true;
    let mut write_err: Option<std::io::Error> = None;
    if cli.json {
        write!(out, "{{\"events\": [")?;
    }
    let report = pipeline::dry_run(config, registry, opts, &mut |would| {
        let written = if cli.json {
            let sep = if first { "\n  " } else { ",\n  " };
            serde_json::to_string(would)
                .map_err(std::io::Error::other)
                .and_then(|j| write!(out, "{sep}{j}"))
        } else if !cli.quiet {
            writeln!(
                out,
                "{} -> {}",
                would.key,
                display_handlers(&would.handlers)
            )
        } else {
            Ok(())
        };
        first = false;
        if let Err(e) = written
            && write_err.is_none()
        {
            write_err = Some(e);
        }
    })?;
    if let Some(e) = write_err {
        return Err(e).context("writing the dry-run output");
    }
    if cli.json {
        let mut summary = report_json("dry-run", &report);
        if let Some(obj) = summary.as_object_mut() {
            obj.remove("command");
        }
        writeln!(out, "\n], \"summary\": {summary}}}")?;
    } else if !cli.quiet {
        writeln!(
            out,
            "dry-run: {} records, {} events, {} new, {} earlier deliveries due; nothing was written",
            report.records(),
            report.events(),
            report.new_events(),
            report.retried
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn display_handlers(handlers: &[&str]) -> String {
    if handlers.is_empty() {
        "(no handler)".to_owned()
    } else {
        handlers.join(", ")
    }
}

/// Prints rows as columns aligned on the widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn handler_target(kind: &HandlerKind) -> String {
    match kind {
        HandlerKind::Jsonl { path } => path.display().to_string(),
        HandlerKind::Command { argv, timeout, .. } => {
            format!(
                "{} (timeout {})",
                argv.join(" "),
                humantime::format_duration(*timeout)
            )
        }
        HandlerKind::Function { function } => function.clone(),
    }
}

fn list_handlers(cli: &Cli, config: &Config) -> anyhow::Result<ExitCode> {
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

fn list_sources(cli: &Cli, config: &Config, registry: &Registry) -> anyhow::Result<ExitCode> {
    let describe = |s: &config::SourceConfig| match &s.kind {
        SourceKind::Function { function } => {
            let emits = registry
                .source(function)
                .map(|f| f.emits.join(", "))
                .unwrap_or_default();
            (format!("function {function}"), emits)
        }
    };
    if cli.json {
        let sources: Vec<_> = config
            .sources
            .iter()
            .map(|s| {
                let SourceKind::Function { function } = &s.kind;
                json!({
                    "name": s.name,
                    "kind": "function",
                    "function": function,
                    "records": s.records.describe(),
                    "sql": s.records.sql(),
                    "enabled": s.enabled,
                    "emits": registry.source(function).map(|f| f.emits.clone()).unwrap_or_default(),
                    "reads": registry.source(function).map(|f| f.reads.clone()).unwrap_or_default(),
                })
            })
            .collect();
        stdout_json(&json!(sources))?;
    } else {
        let rows: Vec<Vec<String>> = config
            .sources
            .iter()
            .map(|s| {
                let (what, emits) = describe(s);
                vec![
                    s.name.clone(),
                    what,
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

fn mark_seen(
    cli: &Cli,
    config: &Config,
    key: &str,
    group: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if key.is_empty() {
        return Err(Error::Usage("mark-seen: KEY must not be empty".into()).into());
    }
    let group = group
        .map(str::to_owned)
        .unwrap_or_else(|| key.rsplit_once('_').map_or(key, |(g, _)| g).to_owned());
    // Check read-only first, so that a bad database is left untouched.
    let conn = database::open_read_only(config)?;
    database::check_seen_table(&conn, config)?;
    drop(conn);
    database::create_if_missing(config)?;
    let mut store = SqliteStore::open(
        &config.database.path,
        &config.database.seen_table,
        config.database.busy_timeout,
    )?;
    let new = store.mark_seen(key, &group, "{}")?;
    if cli.json {
        stdout_json(&json!({"key": key, "group": group, "new": new}))?;
    } else if !cli.quiet {
        if new {
            println!("marked {key} as seen (group {group}); it will not be dispatched");
        } else {
            println!("{key} was already seen; nothing changed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
