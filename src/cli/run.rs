//! Printing for the commands that run sources or deliveries:
//! process-sources, skip-backfill, retry, dry-run.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::json;

use super::Cli;
use super::output::{errln, field, outln, stdout_json};
use crate::config::Config;
use crate::error::Error;
use crate::metrics;
use crate::pipeline::{self, RunOptions, RunReport};
use crate::registry::Registry;
use crate::signals;
use crate::store::admin::DeliveryQuery;

/// Runs the pipeline with the signal handlers in place.
fn run_pipeline(
    config: &Config,
    registry: &Registry,
    opts: &RunOptions,
) -> anyhow::Result<RunReport> {
    signals::install().context("installing signal handlers")?;
    Ok(pipeline::process_sources(config, registry, opts)?)
}

pub fn process_sources(
    cli: &Cli,
    config: &Config,
    registry: &Registry,
    opts: &RunOptions,
) -> anyhow::Result<ExitCode> {
    let report = run_pipeline(config, registry, opts)?;
    print_run(cli, "process-sources", &report).map(ExitCode::from)
}

fn unix_now() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// process-sources with `--metrics-file`: the metrics are written however
/// the run ends, an unusable config included (as a failed run).
pub fn process_sources_with_metrics(
    cli: &Cli,
    registry: &Registry,
    run: &super::RunArgs,
    lock: &super::LockArgs,
    path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let started = unix_now();
    let result = (|| -> anyhow::Result<(u8, RunReport)> {
        let config = Config::load(&super::config_path(cli), registry).map_err(Error::from)?;
        let opts = super::run_options(cli, run, lock.wait()?, true)?;
        let report = run_pipeline(&config, registry, &opts)?;
        let code = print_run(cli, "process-sources", &report)?;
        Ok((code, report))
    })();
    let (code, report) = match &result {
        Ok((code, report)) => (*code, Some(report)),
        Err(e) => (e.downcast_ref::<Error>().map_or(2, Error::exit_code), None),
    };
    let outcome = metrics::RunOutcome {
        started,
        ended: unix_now(),
        exit_status: code,
        report,
    };
    if let Err(e) = metrics::write(path, &outcome) {
        errln!(
            "warning: cannot write the metrics file {}: {e}",
            path.display()
        );
    }
    result.map(|(code, _)| ExitCode::from(code))
}

pub fn skip_backfill(
    cli: &Cli,
    config: &Config,
    registry: &Registry,
    opts: &RunOptions,
) -> anyhow::Result<ExitCode> {
    let report = run_pipeline(config, registry, opts)?;
    if cli.json {
        stdout_json(&report_json("skip-backfill", &report))?;
    } else if !cli.quiet {
        outln!(
            "skip-backfill: {} records, {} events, {} new recorded as seen without dispatching, in {:.2}s",
            report.records(),
            report.events(),
            report.new_events(),
            report.seconds
        )?;
    }
    finish(cli, &report).map(ExitCode::from)
}

pub fn retry(
    cli: &Cli,
    config: &Config,
    registry: &Registry,
    query: &DeliveryQuery,
    wait: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    signals::install().context("installing signal handlers")?;
    let who = crate::store::history::operator();
    let report = pipeline::retry(config, registry, query, &who, wait)?;
    print_run(cli, "retry", &report).map(ExitCode::from)
}

/// `spark deliver`: works off what is due, reading no source.
pub fn deliver(
    cli: &Cli,
    config: &Config,
    registry: &Registry,
    linger: std::time::Duration,
    wait: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    signals::install().context("installing signal handlers")?;
    let report = pipeline::deliver(config, registry, linger, wait)?;
    print_run(cli, "deliver", &report).map(ExitCode::from)
}

fn summary(command: &str, r: &RunReport) -> String {
    let mut line = if command == "retry" || command == "deliver" {
        format!(
            "{command}: {} deliveries, {} delivered, {} failed",
            r.retried,
            r.delivered(),
            r.failed()
        )
    } else {
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
        line
    };
    if r.dead() > 0 {
        line.push_str(&format!(" ({} now dead)", r.dead()));
    }
    if r.interrupted > 0 {
        line.push_str(&format!(
            ", {} at-most-once deliveries interrupted by an earlier crash (now dead)",
            r.interrupted
        ));
    }
    if r.waiting() > 0 {
        line.push_str(&format!(", {} waiting for the next run", r.waiting()));
    }
    if r.bad_records() > 0 {
        line.push_str(&format!(", {} records skipped", r.bad_records()));
    }
    if let Some(held) = &r.held {
        line.push_str(&format!(
            ", {} deliveries ({} events) held by other workers (leases end by {} UTC unless renewed)",
            held.deliveries, held.events, held.until
        ));
    }
    line.push_str(&format!(" in {:.2}s", r.seconds));
    line
}

pub fn report_json(command: &str, r: &RunReport) -> serde_json::Value {
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
        "interrupted": r.interrupted,
        "bad_records": r.bad_records(),
        "seconds": r.seconds,
        "stopped": r.stopped,
        "sources": r.sources,
        "handlers": r.handlers,
        "failures": r.failures,
        "record_errors": r.record_errors,
        "orphaned": r.orphaned,
        "held": r.held,
        "outstanding": r
            .outstanding
            .iter()
            .map(|(handler, state, events)| json!({"handler": handler, "state": state, "events": events}))
            .collect::<Vec<_>>(),
    })
}

fn print_run(cli: &Cli, command: &str, r: &RunReport) -> anyhow::Result<u8> {
    // The run is done whatever happens to its summary: a closed stdout
    // does not change the exit status.
    let printed = if cli.json {
        stdout_json(&report_json(command, r))
    } else if !cli.quiet {
        outln!("{}", summary(command, r))
    } else {
        if r.has_failures() || r.stopped.is_some() {
            errln!("{}", summary(command, r));
        }
        Ok(())
    };
    match printed {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    finish(cli, r)
}

/// A `watch` cycle's summary, failures and orphans; its exit status.
pub(super) fn print_cycle(cli: &Cli, r: &RunReport) -> anyhow::Result<u8> {
    print_run(cli, "watch", r)
}

/// One `skipped:` line per record a source could not read.
fn print_record_errors(r: &RunReport) {
    for e in &r.record_errors {
        errln!(
            "skipped: source `{}`, record {}: {}",
            e.source,
            field(&e.record),
            field(&e.error)
        );
    }
}

/// One `orphaned:` line per handler, no longer in the config, that is owed
/// deliveries.
pub(super) fn print_orphaned(orphaned: &[crate::store::admin::Orphaned]) {
    for o in orphaned {
        let keys: Vec<String> = o.keys.iter().map(|k| field(k)).collect();
        let more = if o.events as usize > o.keys.len() {
            ", ..."
        } else {
            ""
        };
        errln!(
            "orphaned: {} deliveries wait for handler `{}`, which is not in the config ({}{more}); \
             rename the handler back, or move or drop them (`spark deliveries --handler {}`)",
            o.events,
            field(&o.handler),
            keys.join(", "),
            field(&o.handler),
        );
    }
}

/// Prints failures and a stop, and picks the exit status.
fn finish(cli: &Cli, r: &RunReport) -> anyhow::Result<u8> {
    if !cli.json {
        for f in &r.failures {
            let next = if f.dead {
                "dead: retry it by hand with `spark retry`"
            } else {
                "will be retried"
            };
            errln!(
                "failed: handler `{}`, event {} (attempt {}, {next}): {}",
                f.handler,
                field(&f.key),
                f.attempts,
                field(&f.error)
            );
        }
        print_record_errors(r);
        print_orphaned(&r.orphaned);
    }
    if let Some(stop) = signals::requested() {
        if !cli.json {
            errln!(
                "stopped by {}: what was recorded is consistent; {} deliveries wait for the next run",
                stop.name(),
                r.waiting()
            );
        }
        return Ok(stop.exit_code());
    }
    Ok(u8::from(r.has_failures()))
}

pub fn dry_run(
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
                .and_then(|j| write!(out, "{sep}{}", crate::redact::redact(&j)))
        } else if !cli.quiet {
            let handlers = if would.handlers.is_empty() {
                "(no handler)".to_owned()
            } else {
                would.handlers.join(", ")
            };
            writeln!(
                out,
                "{} -> {handlers}",
                field(&crate::redact::redact(would.key))
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
        let summary = crate::redact::redact_owned(summary.to_string());
        writeln!(out, "\n], \"summary\": {summary}}}")?;
    } else if !cli.quiet {
        drop(out);
        outln!(
            "dry-run: {} records, {} events, {} new, {} earlier deliveries due; nothing was written",
            report.records(),
            report.events(),
            report.new_events(),
            report.retried
        )?;
        print_record_errors(&report);
    }
    Ok(ExitCode::SUCCESS)
}
