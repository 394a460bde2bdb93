//! The command line: clap definitions and dispatch to the library. Printing
//! lives in the submodules, one per family of commands. Human output is
//! short (one summary line per run, nothing with `-q` on success); `--json`
//! prints one JSON document on stdout; logs go to stderr.
//!
//! Not here: any logic a library user would want without the CLI.

mod admin;
mod complete;
mod history;
mod list;
mod manpage;
mod output;
mod run;
mod serve;
mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use clap_complete::engine::ArgValueCompleter;
use jiff::civil::Date;

use crate::config::{self, Config};
use crate::error::Error;
use crate::pipeline::RunOptions;
use crate::records::parse_date;
use crate::registry::{Registry, SourceCtx};
use crate::store::DeliveryState;

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
    /// More log output on stderr: -v a line per delivery (key, handler,
    /// outcome, attempt, milliseconds), -vv also a line per batch;
    /// RUST_LOG (e.g. spark=debug) overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    /// Log lines as text, or as one JSON object per line (for log shippers)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read the sources, record new events and deliver them (the main job, for cron)
    ProcessSources {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        lock: LockArgs,
        /// Write the run's figures here in Prometheus text format (for
        /// node_exporter's textfile collector)
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
    /// process-sources in a loop, for systemd: wakes when the database
    /// changes, a retry comes due, or the interval passes; SIGTERM stops it
    /// cleanly, SIGHUP reloads the config
    Watch {
        /// Only this source (repeatable)
        #[arg(long = "source", value_name = "NAME", add = ArgValueCompleter::new(complete::sources))]
        sources: Vec<String>,
        /// The longest wait between two cycles, e.g. "30s"
        #[arg(long, default_value = "30s", value_name = "DURATION")]
        interval: String,
        /// Write each cycle's figures here in Prometheus text format
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// Stop after this many cycles (for tests and benchmarks)
        #[arg(long, value_name = "N", hide = true)]
        cycles: Option<u64>,
        #[command(flatten)]
        lock: LockArgs,
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
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Record everything the sources produce now as seen, dispatching nothing
    /// (turning spark on over an existing database)
    SkipBackfill {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// List seen events, newest first (django-spark's admin list)
    Events {
        /// Only groups matching this regex (search semantics)
        #[arg(long, value_name = "REGEX")]
        group: Option<String>,
        /// Only keys starting with this
        #[arg(long, value_name = "PREFIX")]
        key_prefix: Option<String>,
        /// Only events whose key or stored context contains this text
        #[arg(long, value_name = "TEXT")]
        contains: Option<String>,
        /// Only events recorded on or after this date (UTC), YYYY-MM-DD
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Only events recorded before this date (UTC), YYYY-MM-DD
        #[arg(long, value_name = "DATE")]
        until: Option<String>,
        /// At most this many (0: all)
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
    },
    /// List deliveries not finished yet: failed, dead, pending
    Deliveries {
        /// Only this state (repeatable): pending, failed, dead, in_flight
        /// (owed), or done, discarded (the history)
        #[arg(long, value_name = "STATE", value_parser = ["pending", "failed", "dead", "in_flight", "done", "discarded"])]
        state: Vec<String>,
        /// Only this handler
        #[arg(long, value_name = "NAME", add = ArgValueCompleter::new(complete::handlers))]
        handler: Option<String>,
        /// Only this event key (repeatable)
        #[arg(long, value_name = "KEY")]
        key: Vec<String>,
        /// Only deliveries owed to handlers no longer in the config
        #[arg(long, conflicts_with = "handler")]
        orphaned: bool,
        /// At most this many lines of history (with done, discarded)
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: usize,
    },
    /// Show one event: its context, and for each handler what is owed and
    /// every attempt (time, outcome, error, duration)
    Show {
        /// The event key
        key: String,
    },
    /// Hand every delivery owed to handler OLD (renamed or removed) to NEW
    Reassign {
        /// The handler the deliveries are owed to (need not be in the config)
        old: String,
        /// A handler of the config
        #[arg(add = ArgValueCompleter::new(complete::handlers))]
        new: String,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Acknowledge owed deliveries without delivering them (kept in the
    /// history with who, when and why)
    Discard {
        /// The deliveries of this event key (repeatable)
        #[arg(long, value_name = "KEY")]
        key: Vec<String>,
        /// Every delivery owed to this handler (need not be in the config)
        #[arg(long, value_name = "NAME", add = ArgValueCompleter::new(complete::handlers))]
        handler: Option<String>,
        /// Only dead deliveries
        #[arg(long)]
        dead: bool,
        /// Why (kept in the history)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Deliver already-seen events to one handler (a handler added later,
    /// or one whose deliveries must be redone); other handlers get nothing
    Replay {
        /// The handler to deliver to
        #[arg(long, value_name = "NAME", add = ArgValueCompleter::new(complete::handlers))]
        handler: String,
        /// Only events whose group matches this regex
        #[arg(long, value_name = "REGEX")]
        group: Option<String>,
        /// Only events seen on or after this day (UTC, YYYY-MM-DD)
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Only these event keys (repeatable)
        #[arg(long, value_name = "KEY")]
        key: Vec<String>,
        /// Say what would be replayed; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Replay events whose stored context is not JSON (django-spark's
        /// `repr()`) too: handlers get it as text, `{"text": "..."}`
        #[arg(long)]
        text_contexts: bool,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Deliver what is due (pending, and failed ones whose retry time came)
    /// without reading the sources: a delivery worker beside the scanning
    /// runs (PostgreSQL: any number of them share the backlog)
    Deliver {
        /// Keep looking for due deliveries until none has come for this
        /// long, e.g. "5m" [default: stop as soon as none is due]
        #[arg(long, value_name = "DURATION")]
        linger: Option<String>,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Create or upgrade spark's tables now; with --print-sql, print the SQL
    /// instead (for a DBA who applies schema changes by hand); with
    /// --print-grants ROLE, the GRANT statements a PostgreSQL role needs
    Migrate {
        /// Print the SQL that would bring the database up to date; run nothing
        #[arg(long)]
        print_sql: bool,
        /// Print the GRANT statements that give ROLE what spark needs (PostgreSQL); run nothing
        #[arg(long, value_name = "ROLE", conflicts_with = "print_sql")]
        print_grants: Option<String>,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Serve the operator console: a web page of events and deliveries,
    /// with Retry, Discard and Replay (HTTP Basic auth; see [serve])
    Serve {
        /// Listen on this address and port [default: [serve] listen, else 127.0.0.1:8025]
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
        /// Show no action and refuse every POST (403)
        #[arg(long)]
        read_only: bool,
        /// Ask no password (only on a loopback address)
        #[arg(long)]
        no_auth: bool,
    },
    /// Deliver failed or dead deliveries now, with a fresh count of attempts
    Retry {
        /// The deliveries of this event key (repeatable)
        #[arg(long, value_name = "KEY")]
        key: Vec<String>,
        /// The deliveries of this handler
        #[arg(long, value_name = "NAME", add = ArgValueCompleter::new(complete::handlers))]
        handler: Option<String>,
        /// Only dead deliveries
        #[arg(long)]
        dead: bool,
        /// Every failed and dead delivery
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Forget event keys so that they may fire again (drops what was owed for them)
    Forget {
        /// The event keys
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Render the mail a mail handler would send for an event; sends nothing
    PreviewMail {
        /// The mail handler's name
        #[arg(add = ArgValueCompleter::new(complete::handlers))]
        handler: String,
        /// A seen event's key
        #[arg(long, value_name = "KEY", conflicts_with = "context")]
        key: Option<String>,
        /// Or a context, as a JSON object (needs --group)
        #[arg(long, value_name = "JSON", requires = "group")]
        context: Option<String>,
        /// The event's group (with --context)
        #[arg(long, value_name = "G")]
        group: Option<String>,
    },
    /// Check the config against its database without writing anything
    Check,
    /// Print the effective config as TOML (or JSON): defaults filled in, paths
    /// absolute, each value from ${VAR} written as ${VAR} again; no secret shown
    Config,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with --dir write it and one page per
    /// command there (e.g. /usr/local/share/man/man1)
    Man {
        /// Write spark.1 and spark-COMMAND.1 pages into this folder
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Delete seen events recorded longer ago than a duration (keeps undelivered ones)
    Prune {
        /// e.g. "90d"
        #[arg(long, value_name = "DURATION")]
        older_than: String,
        /// Only groups matching this regex (search semantics)
        #[arg(long, value_name = "REGEX")]
        group: Option<String>,
        /// Only count what would be deleted
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        lock: LockArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Only this source (repeatable)
    #[arg(long = "source", value_name = "NAME", add = ArgValueCompleter::new(complete::sources))]
    sources: Vec<String>,
    /// The date sources and generators treat as today, YYYY-MM-DD, or a
    /// moment for `now` too, YYYY-MM-DDTHH:MM[:SS][offset]
    /// [default: the local date and the clock]
    #[arg(long, value_name = "DATE")]
    as_of: Option<String>,
    /// Read every record of the sources with a `cursor` too, not only
    /// those above their high-water marks
    #[arg(long)]
    full: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LockArgs {
    /// Wait up to this long for another run on the same database, e.g. "30s"
    /// [default: do not wait; exit with status 3]
    #[arg(long, value_name = "DURATION")]
    wait: Option<String>,
}

impl LockArgs {
    pub(crate) fn wait(&self) -> Result<Duration, Error> {
        match &self.wait {
            None => Ok(Duration::ZERO),
            Some(text) => config::parse_duration(text)
                .map_err(|e| Error::Usage(format!("--wait {text:?}: {e}"))),
        }
    }
}

/// Parses the command line, runs the command and returns the exit status:
/// 0 all done, 1 finished but something failed, 2 unusable input, 3 another
/// run holds the lock, 128+N stopped by signal N.
pub fn run_cli(registry: Registry) -> ExitCode {
    // `COMPLETE=bash spark`: the completion script; and its calls back.
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
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
    init_logging(cli.verbose, cli.quiet, cli.log_format);
    crate::panics::install_hook();
    match dispatch(&cli, &registry) {
        Ok(code) => code,
        // A reader that stopped reading (`spark events | head`) is not an error.
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let code = err.downcast_ref::<Error>().map_or(2, Error::exit_code);
            // Under -q, being locked out by another run is no news: cron
            // would mail every overlap.
            if !(cli.quiet && code == 3) {
                output::errln!("error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}

fn init_logging(verbose: u8, quiet: bool, format: LogFormat) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("spark={default}")));
    // No colours: every log line is escaped (values from the database must
    // not drive the terminal), which would escape colours too.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || output::LogWriter {
            json: format == LogFormat::Json,
        })
        .with_target(false)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.without_time().try_init(),
        // A log shipper wants the time and the fields as fields.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// The config file to use: `--config`, else `$SPARK_CONFIG`, else `./spark.toml`.
pub(crate) fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("SPARK_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("spark.toml"))
}

fn dispatch(cli: &Cli, registry: &Registry) -> anyhow::Result<ExitCode> {
    // Commands that need no config.
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "spark", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => {
            manpage::man(dir.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if let Command::Check = &cli.command {
        return list::check(cli, &config_path(cli), registry);
    }
    if let Command::Watch {
        sources,
        interval,
        metrics_file,
        cycles,
        lock,
    } = &cli.command
    {
        let interval = config::parse_duration(interval)
            .map_err(|e| Error::Usage(format!("--interval {interval:?}: {e}")))?;
        return watch::watch(
            cli,
            registry,
            &watch::WatchArgs {
                sources,
                interval,
                metrics_file: metrics_file.as_deref(),
                wait: lock.wait()?,
                cycles: *cycles,
            },
        );
    }
    if let Command::ProcessSources {
        run,
        lock,
        metrics_file: Some(path),
    } = &cli.command
    {
        return run::process_sources_with_metrics(cli, registry, run, lock, path);
    }
    let config = Config::load(&config_path(cli), registry).map_err(Error::from)?;
    match &cli.command {
        Command::Completions { .. } | Command::Man { .. } | Command::Watch { .. } => {
            Ok(ExitCode::SUCCESS)
        }
        Command::ProcessSources { run, lock, .. } => {
            let opts = run_options(cli, run, lock.wait()?, true)?;
            run::process_sources(cli, &config, registry, &opts)
        }
        Command::Check => list::check(cli, &config_path(cli), registry),
        Command::Config => list::config(cli, &config),
        Command::SkipBackfill { run, lock } => {
            let opts = run_options(cli, run, lock.wait()?, false)?;
            run::skip_backfill(cli, &config, registry, &opts)
        }
        Command::DryRun { run } => {
            let opts = run_options(cli, run, Duration::ZERO, true)?;
            run::dry_run(cli, &config, registry, &opts)
        }
        Command::Deliver { linger, lock } => {
            let linger = match linger {
                None => Duration::ZERO,
                Some(text) => config::parse_duration(text)
                    .map_err(|e| Error::Usage(format!("--linger {text:?}: {e}")))?,
            };
            run::deliver(cli, &config, registry, linger, lock.wait()?)
        }
        Command::Migrate {
            print_grants: Some(role),
            ..
        } => admin::print_grants(cli, &config, role),
        Command::Migrate {
            print_sql, lock, ..
        } => admin::migrate(cli, &config, *print_sql, lock.wait()?),
        Command::Retry {
            key,
            handler,
            dead,
            all,
            lock,
        } => {
            if key.is_empty() && handler.is_none() && !dead && !all {
                return Err(Error::Usage(
                    "retry: say which deliveries: --key KEY, --handler NAME, --dead or --all"
                        .into(),
                )
                .into());
            }
            if let Some(h) = handler
                && !config.handlers.iter().any(|c| &c.name == h)
            {
                return Err(Error::Usage(format!(
                    "retry --handler {h}: no handler of that name in {}",
                    config.path.display()
                ))
                .into());
            }
            let states = if *dead {
                vec![DeliveryState::Dead]
            } else {
                vec![DeliveryState::Failed, DeliveryState::Dead]
            };
            let query = crate::store::admin::DeliveryQuery {
                states,
                handler: handler.clone(),
                keys: key.clone(),
            };
            run::retry(cli, &config, registry, &query, lock.wait()?)
        }
        Command::Serve {
            listen,
            read_only,
            no_auth,
        } => serve::serve(
            cli,
            &config,
            registry,
            listen.as_deref(),
            *read_only,
            *no_auth,
        ),
        Command::ListHandlers => list::handlers(cli, &config, registry),
        Command::ListSources => list::sources(cli, &config, registry),
        Command::MarkSeen { key, group, lock } => {
            admin::mark_seen(cli, &config, key, group.as_deref(), lock.wait()?)
        }
        Command::Events {
            group,
            key_prefix,
            contains,
            since,
            until,
            limit,
        } => {
            let query = crate::store::admin::EventQuery {
                group: group.as_deref().map(regex_arg).transpose()?,
                key_prefix: key_prefix.clone(),
                since: since
                    .as_deref()
                    .map(|d| date_arg("--since", d))
                    .transpose()?,
                until: until
                    .as_deref()
                    .map(|d| date_arg("--until", d))
                    .transpose()?,
                limit: (*limit > 0).then_some(*limit),
                text: contains.clone().filter(|t| !t.is_empty()),
                offset: 0,
            };
            admin::events(cli, &config, &query)
        }
        Command::Deliveries {
            state,
            handler,
            key,
            orphaned,
            limit,
        } => {
            let (owed, history): (Vec<&String>, Vec<&String>) = state
                .iter()
                .partition(|s| DeliveryState::parse(s).is_some());
            let query = crate::store::admin::DeliveryQuery {
                states: owed
                    .iter()
                    .filter_map(|s| DeliveryState::parse(s))
                    .collect(),
                handler: handler.clone(),
                keys: key.clone(),
            };
            if !history.is_empty() {
                if !owed.is_empty() || *orphaned {
                    return Err(Error::Usage(
                        "deliveries: --state done/discarded (the history) cannot be mixed with owed states or --orphaned".into(),
                    )
                    .into());
                }
                let query = crate::store::HistoryQuery {
                    outcomes: history
                        .iter()
                        .map(|s| {
                            if *s == "done" {
                                "delivered".to_owned()
                            } else {
                                (*s).clone()
                            }
                        })
                        .collect(),
                    handler: handler.clone(),
                    keys: key.clone(),
                    limit: Some(*limit),
                };
                return history::list(cli, &config, &query);
            }
            admin::deliveries(cli, &config, &query, *orphaned)
        }
        Command::Show { key } => history::show(cli, &config, key),
        Command::Reassign { old, new, lock } => {
            history::reassign(cli, &config, old, new, lock.wait()?)
        }
        Command::Discard {
            key,
            handler,
            dead,
            reason,
            lock,
        } => {
            if key.is_empty() && handler.is_none() && !dead {
                return Err(Error::Usage(
                    "discard: say which deliveries: --key KEY, --handler NAME or --dead".into(),
                )
                .into());
            }
            let query = crate::store::admin::DeliveryQuery {
                states: if *dead {
                    vec![DeliveryState::Dead]
                } else {
                    Vec::new()
                },
                handler: handler.clone(),
                keys: key.clone(),
            };
            history::discard(cli, &config, &query, reason.as_deref(), lock.wait()?)
        }
        Command::Replay {
            handler,
            group,
            since,
            key,
            dry_run,
            text_contexts,
            lock,
        } => {
            let query = crate::store::admin::EventQuery {
                group: group.as_deref().map(regex_arg).transpose()?,
                since: since
                    .as_deref()
                    .map(|d| date_arg("--since", d))
                    .transpose()?,
                ..Default::default()
            };
            history::replay(
                cli,
                &config,
                &crate::ops::ReplayRequest {
                    handler,
                    query: &query,
                    keys: key,
                    dry_run: *dry_run,
                    text_contexts: *text_contexts,
                    wait: lock.wait()?,
                },
            )
        }
        Command::Forget { keys, lock } => admin::forget(cli, &config, keys, lock.wait()?),
        Command::PreviewMail {
            handler,
            key,
            context,
            group,
        } => admin::preview_mail(
            cli,
            &config,
            handler,
            key.as_deref(),
            context.as_deref(),
            group.as_deref(),
        ),
        Command::Prune {
            older_than,
            group,
            dry_run,
            lock,
        } => {
            let age = config::parse_duration(older_than)
                .map_err(|e| Error::Usage(format!("--older-than {older_than:?}: {e}")))?;
            let group = group.as_deref().map(regex_arg).transpose()?;
            admin::prune(cli, &config, age, group.as_ref(), *dry_run, lock.wait()?)
        }
    }
}

fn regex_arg(pattern: &str) -> Result<regex::Regex, Error> {
    regex::Regex::new(pattern).map_err(|e| Error::Usage(format!("--group {pattern:?}: {e}")))
}

/// A `YYYY-MM-DD` argument.
fn date_arg(option: &str, text: &str) -> Result<String, Error> {
    parse_date(text)
        .filter(|_| text.len() == 10)
        .map(|d| d.to_string())
        .ok_or_else(|| Error::Usage(format!("{option} {text:?}: expected a date YYYY-MM-DD")))
}

pub(crate) fn run_options(
    cli: &Cli,
    run: &RunArgs,
    wait: Duration,
    dispatch: bool,
) -> anyhow::Result<RunOptions> {
    let as_of = match &run.as_of {
        Some(text) => as_of_arg(text)?,
        None => SourceCtx::on(local_today()),
    };
    Ok(RunOptions {
        only: run.sources.clone(),
        as_of,
        wait,
        progress: !cli.quiet && !cli.json && std::io::stderr().is_terminal(),
        dispatch,
        lock_held: false,
        full: run.full,
    })
}

/// `--as-of`: a date (now is that date at this time of day) or a datetime
/// (`2026-03-10T14:00`, local time unless it gives an offset).
fn as_of_arg(text: &str) -> Result<SourceCtx, Error> {
    let bad = || {
        Error::Usage(format!(
            "--as-of {text:?}: expected a date YYYY-MM-DD or a datetime YYYY-MM-DDTHH:MM[:SS][offset]"
        ))
    };
    let text = text.trim();
    if text.len() == 10 {
        return parse_date(text).map(SourceCtx::on).ok_or_else(bad);
    }
    parse_date(text).ok_or_else(bad)?;
    let now = match text.parse::<jiff::Timestamp>() {
        Ok(t) => t,
        Err(_) => text
            .parse::<jiff::civil::DateTime>()
            .ok()
            .and_then(|dt| dt.to_zoned_datetime(jiff::tz::TimeZone::system()).ok())
            .ok_or_else(bad)?
            .timestamp(),
    };
    let today = now.to_zoned_datetime(jiff::tz::TimeZone::system()).date();
    Ok(SourceCtx { today, now })
}

fn local_today() -> Date {
    jiff::ZonedDateTime::now().date()
}
