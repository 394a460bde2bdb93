//! `spark watch`: process-sources in a loop, in one process, for systemd.
//!
//! It holds the run lock for its whole life (a cron `process-sources`
//! beside it exits 3), runs a cycle, then waits for the database to change
//! (see `crate::watch`), a failed delivery's retry to come due, or the
//! interval to pass. SIGTERM or SIGINT: the cycle under way finishes its
//! calls in flight and records them, then it exits 0. SIGHUP: the config is
//! read again before the next cycle; an invalid one is refused with its
//! error logged, and the old one kept. Once an hour it prunes the history
//! to `[delivery] keep_history`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::Cli;
use super::output::errln;
use crate::config::Config;
use crate::error::Error;
use crate::metrics;
use crate::pipeline::{self, RunOptions};
use crate::registry::{Registry, SourceCtx};
use crate::signals;
use crate::watch::{Wake, Waker};

/// The least time between two cycles that found retries due (a backoff of
/// zero would spin otherwise).
const MIN_GAP: Duration = Duration::from_secs(1);

/// How often the history is pruned (to `[delivery] keep_history`; more
/// often when that is shorter).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes history older than `keep_history`; returns how many entries.
fn prune_history(config: &Config) -> crate::error::Result<u64> {
    let cutoff = crate::clock::ago_text(config.delivery.keep_history);
    crate::backend::store(config)?.prune_history(&cutoff)
}

pub struct WatchArgs<'a> {
    pub sources: &'a [String],
    pub interval: Duration,
    pub metrics_file: Option<&'a std::path::Path>,
    pub wait: Duration,
    pub cycles: Option<u64>,
}

fn unix_now() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// When the earliest failed delivery comes due, if any.
fn next_retry(config: &Config) -> Option<Instant> {
    let deliveries = crate::backend::reader(config).ok()?.deliveries().ok()?;
    let handlers = config.handler_names();
    let at = deliveries
        .iter()
        .filter(|d| d.state == crate::store::DeliveryState::Failed)
        .filter(|d| handlers.contains(&d.handler.as_str()))
        .map(|d| d.next_attempt_at)
        .min()?;
    let wait_ms = at.saturating_sub(crate::clock::now_ms()).max(0);
    Some(Instant::now() + Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)))
}

pub fn watch(cli: &Cli, registry: &Registry, args: &WatchArgs<'_>) -> anyhow::Result<ExitCode> {
    signals::install().context("installing signal handlers")?;
    signals::install_hangup().context("installing signal handlers")?;
    let path = super::config_path(cli);
    let mut config = Config::load(&path, registry).map_err(Error::from)?;
    config.require_secrets().map_err(Error::from)?;
    let mut guard = Some(crate::backend::run_guard(&config, args.wait)?);
    // Opened before the first cycle, so that nothing committed during it
    // is missed; after it when the database does not exist yet (the first
    // cycle creates it from `create_from`).
    let mut waker: Option<Waker> = Waker::open(&config).ok();
    tracing::info!(config = %path.display(), database = %config.database.describe(),
        interval = %humantime::format_duration(args.interval), "watching");
    let mut cycles = 0u64;
    let mut pruned_at: Option<Instant> = None;
    loop {
        if signals::hangup() {
            match Config::load(&path, registry)
                .map_err(Error::from)
                .and_then(|c| c.require_secrets().map(|()| c).map_err(Error::from))
            {
                Ok(new) => {
                    if new.database.describe() != config.database.describe() {
                        // Another database: its own lock and change counter.
                        drop(guard.take());
                        guard = Some(crate::backend::run_guard(&new, args.wait)?);
                        waker = Waker::open(&new).ok();
                    }
                    config = new;
                    errln!("watch: config reloaded from {}", path.display());
                }
                Err(e) => {
                    errln!("error: the config was not reloaded, the old one stays in use: {e}");
                }
            }
        }
        // Changes from here on wake the next wait: a row committed while
        // this cycle runs is never missed (this cycle's own writes may wake
        // one more cycle, which finds nothing new and writes nothing).
        if let Some(waker) = &mut waker {
            waker.settle()?;
        }
        let started = unix_now();
        let cycle_started = Instant::now();
        let opts = RunOptions {
            only: args.sources.to_vec(),
            as_of: SourceCtx::on(jiff::ZonedDateTime::now().date()),
            wait: Duration::ZERO,
            progress: false,
            dispatch: true,
            lock_held: guard.is_some(),
            full: false,
        };
        let result = pipeline::process_sources(&config, registry, &opts);
        let cycle_took = cycle_started.elapsed();
        cycles += 1;
        let code = match &result {
            Ok(report) => {
                let did_something = report.new_events() > 0
                    || report.delivered() > 0
                    || report.failed() > 0
                    || report.retried > 0
                    || report.bad_records() > 0;
                if did_something || report.has_failures() {
                    super::run::print_cycle(cli, report)?
                } else {
                    0
                }
            }
            Err(e) => {
                errln!("error: {e}");
                e.exit_code()
            }
        };
        if let Some(file) = args.metrics_file {
            let outcome = metrics::RunOutcome {
                started,
                ended: unix_now(),
                exit_status: code,
                report: result.as_ref().ok(),
            };
            if let Err(e) = metrics::write(file, &outcome) {
                errln!(
                    "warning: cannot write the metrics file {}: {e}",
                    file.display()
                );
            }
        }
        if signals::requested().is_some() || args.cycles.is_some_and(|n| cycles >= n) {
            break;
        }
        let every = PRUNE_EVERY.min(config.delivery.keep_history.max(Duration::from_secs(1)));
        if pruned_at.is_none_or(|at| at.elapsed() >= every) && result.is_ok() {
            match prune_history(&config) {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, "history pruned"),
                Err(e) => errln!("warning: cannot prune the history: {e}"),
            }
            pruned_at = Some(Instant::now());
        }
        let mut until = Instant::now() + args.interval;
        if let Some(retry) = next_retry(&config) {
            until = until.min(retry.max(Instant::now() + MIN_GAP));
        }
        let waker = match &mut waker {
            Some(waker) => waker,
            None => {
                let mut opened = Waker::open(&config)?;
                opened.settle()?;
                waker.insert(opened)
            }
        };
        match waker.wait(until)? {
            Wake::Stop => break,
            Wake::Changed => {
                // A database written all the time must not keep spark
                // scanning all the time: the next cycle starts no sooner
                // than the last one took (and at least a second) after it.
                let earliest = cycle_started + cycle_took + cycle_took.max(MIN_GAP);
                while Instant::now() < earliest
                    && signals::requested().is_none()
                    && !signals::hangup_pending()
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Wake::Due | Wake::Reload => {}
        }
    }
    drop(guard);
    Ok(ExitCode::SUCCESS)
}
