//! TOML -> a validated `Config`: paths resolved against the config file's
//! folder, regexes compiled, durations parsed, compiled-in functions looked up
//! in the registry. Every problem names the file, line, column and entry.
//!
//! Not here: anything that needs the database (tables, columns): that is
//! checked when the database is opened (`crate::database`).

mod handlers;
pub mod interpolate;
pub mod mysql;
pub mod postgres;
mod raw;

pub use handlers::{Guarantee, HandlerConfig, Rate};

pub use crate::handlers::{
    BodyKind, HandlerKind, HttpMethod, MailConfig, MailTransport, Secret, SmtpSecurity, SmtpServer,
    WebhookConfig, is_loopback_host,
};

pub use mysql::{MysqlConfig, MysqlSslMode};
pub use postgres::{PgConfig, SslMode};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize as _;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::records::{RecordSet, parse_date};
use crate::registry::Registry;
use crate::sources::generator::{CondValue, Condition, Generator, Op, parse_moment};
use raw::{RawCondition, RawConfig, RawSource};

/// The default name of the seen-events table (django-spark's).
pub const DEFAULT_SEEN_TABLE: &str = "spark_event";

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file it was read from.
    pub path: PathBuf,
    pub database: DatabaseConfig,
    pub delivery: DeliveryConfig,
    pub serve: ServeConfig,
    pub sources: Vec<SourceConfig>,
    pub handlers: Vec<HandlerConfig>,
    /// Environment variables that may hold secrets: every `${VAR}` the
    /// config expands, the `*_env` keys' variables and the database
    /// clients' password variables; not handed to command handlers (unless
    /// a handler's own `env` passes one).
    pub withheld_env: Vec<String>,
    /// Secrets named by `*_env` keys whose variables are not set. Only
    /// commands that deliver need them (see `require_secrets`).
    pub missing_secrets: Vec<MissingSecret>,
    /// Each `${VAR}` the file used and what it expanded to (for `spark
    /// config`, which writes them back as `${VAR}`).
    pub env_values: Vec<(String, String)>,
}

/// A `*_env` key naming a variable that is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSecret {
    pub at: Location,
    /// `handler `name``.
    pub entry: String,
    pub field: String,
    pub var: String,
}

impl MissingSecret {
    pub fn problem(&self) -> Located {
        Located {
            at: self.at.clone(),
            problem: Problem::MissingEnv {
                entry: self.entry.clone(),
                field: self.field.clone(),
                var: self.var.clone(),
            },
        }
    }
}

/// `[database]`: which database holds the records and the store.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub seen_table: String,
    pub backend: BackendConfig,
    /// The variable `password_env` named (for `spark config`).
    pub password_env: Option<String>,
}

/// The database itself, by kind.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// `path`: an SQLite file.
    Sqlite(SqliteConfig),
    /// `url`: a PostgreSQL database.
    Postgres(PgConfig),
    /// `url = "mysql://..."`: a MySQL or MariaDB database.
    Mysql(MysqlConfig),
}

#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The records database (resolved against the config's folder).
    pub path: PathBuf,
    /// Demo and test convenience: when `path` does not exist, create it by
    /// running this SQL script. Never creates an empty database.
    pub create_from: Option<PathBuf>,
    /// How long to wait for a lock another connection holds.
    pub busy_timeout: Duration,
}

impl DatabaseConfig {
    /// The database, for messages: its file, or `host:port/dbname`.
    pub fn describe(&self) -> String {
        match &self.backend {
            BackendConfig::Sqlite(db) => db.path.display().to_string(),
            BackendConfig::Postgres(pg) => pg.describe(),
            BackendConfig::Mysql(my) => my.describe(),
        }
    }

    /// `[database]` as the config file writes it (`spark config`): paths
    /// absolute (`absolute`), the URL as written (its `${VAR}`s kept).
    pub fn view(&self, absolute: crate::handlers::kind::Absolute<'_>) -> serde_json::Value {
        use crate::handlers::kind::duration_text;
        use serde_json::json;
        let mut v = json!({ "seen_table": self.seen_table });
        match &self.backend {
            BackendConfig::Sqlite(db) => {
                v["path"] = json!(absolute(&db.path));
                v["busy_timeout"] = json!(duration_text(db.busy_timeout));
                if let Some(script) = &db.create_from {
                    v["create_from"] = json!(absolute(script));
                }
            }
            BackendConfig::Postgres(pg) => {
                v["url"] = json!(pg.written);
                if let Some(channel) = &pg.listen {
                    v["listen"] = json!(channel);
                }
                v["lease"] = json!(duration_text(pg.lease));
            }
            BackendConfig::Mysql(my) => {
                v["url"] = json!(my.written);
                v["lease"] = json!(duration_text(my.lease));
            }
        }
        if let Some(var) = &self.password_env {
            v["password_env"] = json!(var);
        }
        v
    }

    /// The SQLite file, when the database is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.backend {
            BackendConfig::Sqlite(db) => Some(&db.path),
            BackendConfig::Postgres(_) | BackendConfig::Mysql(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The retry policy handlers inherit.
    pub retry: RetryPolicy,
    /// Events per store transaction.
    pub batch_size: usize,
    /// How long the delivery history is kept (zero: none is written).
    pub keep_history: Duration,
}

/// `[serve]`: where the console listens and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// `ADDR:PORT` (default `127.0.0.1:8025`).
    pub listen: std::net::SocketAddr,
    /// The HTTP Basic user (default `spark`).
    pub user: String,
    /// The environment variable holding the password.
    pub password_env: Option<String>,
}

/// A database URL's connect timeout (`name` as the URL spells it): whole
/// seconds, up to `MAX_DURATION`.
pub(crate) fn connect_timeout(name: &str, text: &str) -> Result<Duration, String> {
    text.trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("{name} {text:?} is not a whole number of seconds up to 100 years"))
}

/// What `[database]` stands for when it has a problem (reported): a
/// config with problems is not run, but the rest of it is still checked.
fn unusable() -> BackendConfig {
    BackendConfig::Sqlite(SqliteConfig {
        path: PathBuf::new(),
        create_from: None,
        busy_timeout: Duration::ZERO,
    })
}

/// `ADDR:PORT` as `[serve] listen` and `--listen` take it: an IP address
/// and port (`127.0.0.1:8025`, `[::1]:8025`, `0.0.0.0:8025`), or
/// `localhost:PORT` (127.0.0.1).
pub fn parse_listen(text: &str) -> Option<std::net::SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    host.eq_ignore_ascii_case("localhost")
        .then(|| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The console's address unless the config or `--listen` says another.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8025";

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8025)),
            user: "spark".to_owned(),
            password_env: None,
        }
    }
}

/// When a failed delivery is tried again, and when it is given up (dead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; then the delivery is dead.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles with each attempt.
    pub backoff: Duration,
    /// The delay never exceeds this.
    pub max_backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub records: RecordSet,
    pub kind: SourceKind,
    pub enabled: bool,
    /// Read incrementally, above a high-water mark of this column.
    pub cursor: Option<Cursor>,
}

/// A source's cursor: a column of its records whose value grows whenever a
/// row is inserted or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub column: String,
    /// How far below the mark a datetime cursor reads again (transactions
    /// that commit late with an older value).
    pub lookback: Duration,
    /// How often all the records are read anyway (rules that change with
    /// time alone).
    pub rescan: Duration,
}

/// The options a `[[sources]]` entry takes (for tests that each is
/// written back by `spark config`).
pub fn source_fields() -> &'static [&'static str] {
    crate::handlers::kind::fields_of::<raw::RawSource>()
}

impl SourceConfig {
    /// What the high-water mark is tied to: the records read and what turns
    /// them into events. A new `where` or condition must not skip rows that
    /// now match, so a change of any of them makes the next run a full scan.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let cursor = self.cursor.as_ref().map(|c| c.column.as_str());
        let text = format!("{:?}\n{:?}\n{cursor:?}", self.records, self.kind);
        hex::encode(sha2::Sha256::digest(text.as_bytes()))[..16].to_owned()
    }
}

#[derive(Debug, Clone)]
pub enum SourceKind {
    /// A compiled-in function, by its registered name.
    Function { function: String },
    /// A declarative generator (django-spark's spark_generators).
    Generator(Generator),
}

impl SourceKind {
    /// The groups this source may emit, when known.
    pub fn emits<'a>(&'a self, registry: &'a Registry) -> Vec<&'a str> {
        match self {
            SourceKind::Function { function } => registry
                .source(function)
                .map(|f| f.emits.iter().map(String::as_str).collect())
                .unwrap_or_default(),
            SourceKind::Generator(g) => vec![g.group.as_str()],
        }
    }
}

/// A place in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// One thing wrong with a config, in the terms of the config.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("source `{source_name}`: unknown function `{function}` (known: {known})")]
    UnknownSourceFunction {
        source_name: String,
        function: String,
        known: String,
    },
    #[error("handler `{handler}`: unknown function `{function}` (known: {known})")]
    UnknownHandlerFunction {
        handler: String,
        function: String,
        known: String,
    },
    #[error("handler `{handler}`: invalid group regex `{pattern}`: {error}")]
    BadHandlerRegex {
        handler: String,
        pattern: String,
        error: Box<regex::Error>,
    },
    #[error(
        "handler `{handler}`: unknown kind `{kind}` (known: {})",
        crate::handlers::kind_names()
    )]
    UnknownHandlerKind { handler: String, kind: String },
    #[error("{entry}: unknown field `{field}` (kind {kind} takes {expected})")]
    UnknownField {
        entry: String,
        field: String,
        kind: &'static str,
        expected: String,
    },
    #[error("{entry}: {message}")]
    BadOption { entry: String, message: String },
    #[error("{entry}: `{field}` is required{why}")]
    MissingField {
        entry: String,
        field: &'static str,
        why: String,
    },
    #[error("{entry}: `{field}` does not apply {why}")]
    UnusedField {
        entry: String,
        field: &'static str,
        why: String,
    },
    #[error("{entry}: `{field}` must not be empty")]
    Empty { entry: String, field: &'static str },
    #[error("{entry}: the name is already used by an earlier {entry_kind}; names must be unique")]
    DuplicateName {
        entry: String,
        entry_kind: &'static str,
    },
    #[error(
        "{entry}: `{field}` = {value:?} is not a duration ({error}); write e.g. \"500ms\", \"30s\", \"1m\", \"2h\", \"7d\""
    )]
    BadDuration {
        entry: String,
        field: &'static str,
        value: String,
        error: String,
    },
    #[error("{entry}: `{field}` must be {expected}, not {value}")]
    OutOfRange {
        entry: String,
        field: &'static str,
        expected: &'static str,
        value: i64,
    },
    #[error("{entry}: `delivery` must be \"at-least-once\" or \"at-most-once\", not {value:?}")]
    BadGuarantee { entry: String, value: String },
    #[error(
        "{entry}: give either `function` (a compiled-in source) or `group` (a generator), not both"
    )]
    FunctionAndGroup { entry: String },
    #[error("{entry}: `{field}` only applies to generators (sources with `group`)")]
    GeneratorOnly { entry: String, field: &'static str },
    #[error(
        "{entry}: condition on `{variable}`: unknown operator `{op}` (known: {})",
        Op::ALL
    )]
    BadOperator {
        entry: String,
        variable: String,
        op: String,
    },
    #[error("{entry}: condition on `{variable}`: {problem}")]
    BadConditionValue {
        entry: String,
        variable: String,
        problem: String,
    },
    #[error("${{{var}}}: the environment variable {var} is not set")]
    UnsetVariable { var: String },
    #[error("{entry}: `{field}` names the environment variable {var}, which is not set")]
    MissingEnv {
        entry: String,
        field: String,
        var: String,
    },
    #[error("{entry}: template {name}: {error}")]
    BadTemplate {
        entry: String,
        name: String,
        error: String,
    },
    #[error("{entry}: `{field}`: {message}")]
    BadValue {
        entry: String,
        field: &'static str,
        message: String,
    },
    #[error("handler `{handler}`: {} is also written by handler `{other}`", path.display())]
    SharedOutput {
        handler: String,
        other: String,
        path: PathBuf,
    },
    #[error(
        "handler `{handler}`: {} is the database's own file ({database}); a handler must write elsewhere",
        path.display()
    )]
    WritesDatabase {
        handler: String,
        path: PathBuf,
        database: String,
    },
}

/// The key of a `key = value` line holding byte `at` of `text` (only the
/// key: the value may be a secret).
fn field_at(text: &str, at: usize) -> Option<&str> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'));
    bare.then_some(key)
}

/// A problem and where it is.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct Located {
    pub at: Location,
    pub problem: Problem,
}

/// A config as far as it could be made, and what is wrong with it.
#[derive(Debug)]
pub struct PartialConfig {
    /// The sources and handlers that are valid (the others left out).
    pub config: Config,
    pub problems: Vec<Located>,
    /// Whether `[database]` itself is valid (its database can be checked).
    pub database_usable: bool,
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no config file at {} (pass --config PATH or set SPARK_CONFIG)", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read config {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    #[error("{}", list(problems))]
    Invalid { problems: Vec<Located> },
}

impl From<ConfigError> for crate::error::Error {
    fn from(error: ConfigError) -> Self {
        crate::error::Error::Config(Box::new(error))
    }
}

fn list(problems: &[Located]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of the config file at `path`.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_owned(),
            }
        } else {
            ConfigError::Read {
                path: path.to_owned(),
                error,
            }
        }
    })
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        let text = read_text(path)?;
        Config::parse(&text, path, registry)
    }

    /// Validates config `text` as if read from `path` (relative paths in it
    /// are resolved against `path`'s folder).
    pub fn parse(text: &str, path: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        let partial = Config::parse_partial(text, path, registry)?;
        if partial.problems.is_empty() {
            Ok(partial.config)
        } else {
            Err(ConfigError::Invalid {
                problems: partial.problems,
            })
        }
    }

    /// Reads the config at `path` for `check`: what could be made of it,
    /// with its problems, so that the database can be checked too. `Err`
    /// when nothing could be made of it (missing, unreadable, not TOML).
    pub fn load_partial(path: &Path, registry: &Registry) -> Result<PartialConfig, ConfigError> {
        let text = read_text(path)?;
        Config::parse_partial(&text, path, registry)
    }

    /// `parse`, keeping what is valid beside the problems.
    pub fn parse_partial(
        text: &str,
        path: &Path,
        registry: &Registry,
    ) -> Result<PartialConfig, ConfigError> {
        let mut v = Validator {
            text,
            path,
            dir: config_dir(path),
            problems: Vec::new(),
            missing_secrets: Vec::new(),
            withheld_env: Vec::new(),
            deferred: Vec::new(),
            database_failed: false,
            handler_options: Vec::new(),
        };
        let syntax = |v: &Validator<'_>, e: toml::de::Error| {
            let span = e.span().unwrap_or(0..0);
            let mut message = e.message().trim_end().to_owned();
            if let Some(field) = field_at(text, span.start)
                && !message.contains(&format!("`{field}`"))
            {
                message.push_str(&format!(" (field `{field}`)"));
            }
            ConfigError::Syntax {
                at: v.at(span),
                message,
            }
        };
        let mut table = toml::de::DeTable::parse(text).map_err(|e| syntax(&v, e))?;
        let lookup = |var: &str| std::env::var(var).ok();
        let done = interpolate::interpolate(table.get_mut(), &lookup);
        // Every variable the config expands is withheld from commands (a
        // webhook URL or a database password is a secret whatever its
        // name), and so are the database clients' own password variables.
        for var in DATABASE_PASSWORD_VARS {
            v.withheld_env.push((*var).to_owned());
        }
        for (var, value) in &done.values {
            crate::redact::register(value);
            if !v.withheld_env.contains(var) {
                v.withheld_env.push(var.clone());
            }
        }
        for unset in done.unset {
            match unset.handler {
                // A handler's: needed only when it is about to deliver.
                Some((name, field)) => {
                    let at = v.at(unset.span.clone());
                    v.missing_secrets.push(MissingSecret {
                        at,
                        entry: format!("handler `{name}`"),
                        field,
                        var: unset.var,
                    });
                    v.deferred.push(unset.span);
                }
                None => v.report(unset.span, Problem::UnsetVariable { var: unset.var }),
            }
        }
        if !v.problems.is_empty() {
            return Err(ConfigError::Invalid {
                problems: v.problems,
            });
        }
        v.handler_options = kind_options(table.get_mut());
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(table))
            .map_err(|e| syntax(&v, e))?;
        let mut config = v.config(raw, registry);
        config.withheld_env = std::mem::take(&mut v.withheld_env);
        config.missing_secrets = std::mem::take(&mut v.missing_secrets);
        config.env_values = done.values.clone();
        Ok(PartialConfig {
            config,
            problems: v.problems,
            database_usable: !v.database_failed,
        })
    }

    /// Fails, naming each, when a `*_env` key names a variable that is not
    /// set. Commands that deliver call it before anything is written;
    /// read-only and admin commands do not need delivery secrets.
    pub fn require_secrets(&self) -> Result<(), ConfigError> {
        if self.missing_secrets.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            problems: self
                .missing_secrets
                .iter()
                .map(MissingSecret::problem)
                .collect(),
        })
    }

    /// The handlers' names, in config order.
    pub fn handler_names(&self) -> Vec<&str> {
        self.handlers.iter().map(|h| h.name.as_str()).collect()
    }

    /// The handlers whose group regex matches `group` (search semantics), in
    /// config order.
    pub fn handlers_for<'a>(&'a self, group: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.handlers
            .iter()
            .enumerate()
            .filter(move |(_, h)| h.group.is_match(group))
            .map(|(i, _)| i)
    }
}

/// Takes each handler's kind options out of its table (every field but
/// those all handlers have: `RawHandler`'s), for its kind to read.
fn kind_options<'a>(table: &mut DeTable<'a>) -> Vec<Spanned<DeValue<'a>>> {
    let common = crate::handlers::kind::fields_of::<raw::RawHandler>();
    let Some(DeValue::Array(handlers)) = table.get_mut("handlers").map(Spanned::get_mut) else {
        return Vec::new();
    };
    handlers
        .iter_mut()
        .map(|handler| {
            let span = handler.span();
            let mut options = DeTable::new();
            if let DeValue::Table(fields) = handler.get_mut() {
                let theirs: Vec<_> = fields
                    .keys()
                    .filter(|k| !common.contains(&k.get_ref().as_ref()))
                    .cloned()
                    .collect();
                for key in theirs {
                    if let Some(value) = fields.remove(key.get_ref().as_ref()) {
                        options.insert(key, value);
                    }
                }
            }
            Spanned::new(span, DeValue::Table(options))
        })
        .collect()
}

/// The folder relative paths in a config are resolved against.
fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) => dir.to_owned(),
        None => PathBuf::new(),
    }
}

/// The longest duration spark takes anywhere (config and command line):
/// 100 years. Longer ones mean nothing a run could wait for, and a time
/// that far from now is outside what clocks and databases represent (a
/// cutoff of `now - 99999999999d` once compared later than every event).
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses a duration like `"500ms"`, `"30s"`, `"1m"`, `"2h"`, `"7d"`, of at
/// most `MAX_DURATION`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const TOO_LONG: &str = "longer than the most spark takes, 100 years (\"36500d\")";
    let d = humantime::parse_duration(text.trim()).map_err(|e| match e {
        // A number too large to count in nanoseconds: too long, whatever
        // its unit.
        humantime::DurationError::NumberOverflow => TOO_LONG.to_owned(),
        other => other.to_string(),
    })?;
    if d > MAX_DURATION {
        return Err(TOO_LONG.to_owned());
    }
    Ok(d)
}

/// The variables database clients read passwords from: never handed to a
/// command that does not pass them itself.
pub const DATABASE_PASSWORD_VARS: &[&str] = &["PGPASSWORD", "PGPASSFILE", "MYSQL_PWD"];

/// The most events recorded per transaction (`[delivery] batch_size`).
const MAX_BATCH_SIZE: u32 = 100_000;

/// The longest `busy_timeout` SQLite takes (`i32::MAX` milliseconds is a
/// little more).
const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(24 * 86_400);

/// Collects problems while turning a `RawConfig` into a `Config`.
struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
    dir: PathBuf,
    problems: Vec<Located>,
    missing_secrets: Vec<MissingSecret>,
    withheld_env: Vec<String>,
    /// Where a handler's `${VAR}` was left unexpanded (its variable is not
    /// set): what the value says there is no problem of its own.
    deferred: Vec<std::ops::Range<usize>>,
    /// Whether `[database]` had a problem.
    database_failed: bool,
    /// Each handler's kind options, taken out of its table (see
    /// `kind_options`), in the handlers' order.
    handler_options: Vec<Spanned<DeValue<'a>>>,
}

impl Validator<'_> {
    fn at(&self, span: std::ops::Range<usize>) -> Location {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        Location {
            path: self.path.to_owned(),
            line,
            column,
        }
    }

    fn report(&mut self, span: std::ops::Range<usize>, problem: Problem) {
        if self
            .deferred
            .iter()
            .any(|d| d.start < span.end && span.start < d.end)
        {
            return;
        }
        let at = self.at(span);
        self.problems.push(Located { at, problem });
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }

    fn duration(
        &mut self,
        entry: &str,
        field: &'static str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value.get_ref()) {
            Ok(d) => d,
            Err(error) => {
                self.report(
                    value.span(),
                    Problem::BadDuration {
                        entry: entry.to_owned(),
                        field,
                        value: value.get_ref().clone(),
                        error,
                    },
                );
                default
            }
        }
    }

    fn positive(
        &mut self,
        entry: &str,
        field: &'static str,
        value: Option<&Spanned<i64>>,
        default: u32,
    ) -> u32 {
        let Some(value) = value else { return default };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                self.report(
                    value.span(),
                    Problem::OutOfRange {
                        entry: entry.to_owned(),
                        field,
                        expected: "a whole number from 1 to 4294967295",
                        value: *value.get_ref(),
                    },
                );
                default
            }
        }
    }

    fn non_empty(&mut self, entry: &str, field: &'static str, value: &Spanned<String>) {
        if value.get_ref().trim().is_empty() {
            self.report(
                value.span(),
                Problem::Empty {
                    entry: entry.to_owned(),
                    field,
                },
            );
        }
    }

    fn config(&mut self, raw: RawConfig, registry: &Registry) -> Config {
        let before = self.problems.len();
        let database = self.database(raw.database);
        self.database_failed = self.problems.len() > before;
        let delivery = self.delivery(raw.delivery);
        let serve = self.serve(raw.serve);
        let mut sources: Vec<SourceConfig> = Vec::new();
        for source in raw.sources {
            let span = source.span();
            let source = self.source(source.into_inner(), registry);
            if sources.iter().any(|s| s.name == source.name) {
                self.report(
                    span,
                    Problem::DuplicateName {
                        entry: format!("source `{}`", source.name),
                        entry_kind: "source",
                    },
                );
            }
            sources.push(source);
        }
        let mut handlers: Vec<HandlerConfig> = Vec::new();
        // Each handler's output resolved (through links, `.` and `..`), so
        // that one file under two spellings is caught.
        let mut outputs: Vec<(String, PathBuf)> = Vec::new();
        let database_files: Vec<PathBuf> = match database.sqlite_path() {
            None => Vec::new(),
            Some(path) => ["", "-wal", "-shm", "-journal", "-spark.lock"]
                .iter()
                .map(|suffix| {
                    let mut name = path.as_os_str().to_owned();
                    name.push(suffix);
                    crate::files::resolved(Path::new(&name))
                })
                .collect(),
        };
        let mut options = std::mem::take(&mut self.handler_options).into_iter();
        for handler in raw.handlers {
            let span = handler.span();
            let kind_options = options
                .next()
                .unwrap_or_else(|| Spanned::new(span.clone(), DeValue::Table(DeTable::new())));
            let Some(handler) = self.handler(
                handler.into_inner(),
                kind_options,
                &delivery.retry,
                registry,
            ) else {
                continue;
            };
            if handlers.iter().any(|h| h.name == handler.name) {
                self.report(
                    span.clone(),
                    Problem::DuplicateName {
                        entry: format!("handler `{}`", handler.name),
                        entry_kind: "handler",
                    },
                );
            }
            if let Some(path) = handler.kind.output() {
                let resolved = crate::files::resolved(path);
                if let Some((other, _)) = outputs.iter().find(|(_, p)| *p == resolved) {
                    self.report(
                        span.clone(),
                        Problem::SharedOutput {
                            handler: handler.name.clone(),
                            other: other.clone(),
                            path: path.to_owned(),
                        },
                    );
                }
                if database_files.contains(&resolved) {
                    self.report(
                        span,
                        Problem::WritesDatabase {
                            handler: handler.name.clone(),
                            path: path.to_owned(),
                            database: database.describe(),
                        },
                    );
                }
                outputs.push((handler.name.clone(), resolved));
            }
            handlers.push(handler);
        }
        // A generator's context is its record: `spark_mail` there is a
        // value from the database, honoured only as far as a handler says.
        let record_groups: std::collections::BTreeSet<String> = sources
            .iter()
            .filter_map(|s| match &s.kind {
                SourceKind::Generator(g) => Some(g.group.clone()),
                SourceKind::Function { .. } => None,
            })
            .collect();
        for handler in &mut handlers {
            if let HandlerKind::Mail(mail) = &mut handler.kind {
                mail.record_groups = record_groups.clone();
            }
        }
        Config {
            path: self.path.to_owned(),
            database,
            delivery,
            serve,
            sources,
            handlers,
            withheld_env: Vec::new(),
            missing_secrets: Vec::new(),
            env_values: Vec::new(),
        }
    }

    fn database(&mut self, raw: Spanned<raw::RawDatabase>) -> DatabaseConfig {
        let span = raw.span();
        let raw = raw.into_inner();
        let entry = "[database]";
        let seen_table = match &raw.seen_table {
            Some(t) => {
                self.non_empty(entry, "seen_table", t);
                t.get_ref().clone()
            }
            None => DEFAULT_SEEN_TABLE.to_owned(),
        };
        let unused = |v: &mut Self,
                      field: &'static str,
                      value: Option<std::ops::Range<usize>>,
                      why: &str| {
            if let Some(span) = value {
                v.report(
                    span,
                    Problem::UnusedField {
                        entry: entry.to_owned(),
                        field,
                        why: why.to_owned(),
                    },
                );
            }
        };
        // A database server's `url` takes no SQLite settings.
        let sqlite_only = |v: &mut Self, server: &str| {
            for (field, value) in [
                ("create_from", raw.create_from.as_ref().map(Spanned::span)),
                ("busy_timeout", raw.busy_timeout.as_ref().map(Spanned::span)),
            ] {
                unused(
                    v,
                    field,
                    value,
                    &format!("to {server} (`url`); it is for SQLite files"),
                );
            }
        };
        // How long a claim lasts, on a server workers share.
        let lease = |v: &mut Self, default: Duration| {
            let lease = v.duration(entry, "lease", raw.lease.as_ref(), default);
            if lease < Duration::from_secs(3) {
                v.bad_value(
                    entry,
                    "lease",
                    raw.lease.as_ref().map_or(0..0, Spanned::span),
                    "must be at least 3s (it is renewed every third of it)".into(),
                );
            }
            lease
        };
        // A MySQL or MariaDB URL given as `path` is a slip: said as such,
        // not as a missing file.
        let mut mysql_path = false;
        if let Some(path) = &raw.path
            && mysql::is_mysql_url(path.get_ref())
        {
            mysql_path = true;
            self.bad_value(
                entry,
                "path",
                path.span(),
                "a MySQL/MariaDB URL goes in `url` (`path` is an SQLite file)".into(),
            );
        }
        // The password of a database server, from the environment.
        let password = raw.password_env.as_ref().map(|var| {
            let value = std::env::var(var.get_ref()).ok();
            if value.is_none() {
                self.report(
                    var.span(),
                    Problem::UnsetVariable {
                        var: var.get_ref().clone(),
                    },
                );
            }
            if !self.withheld_env.contains(var.get_ref()) {
                self.withheld_env.push(var.get_ref().clone());
            }
            if let Some(v) = &value {
                crate::redact::register(v);
            }
            value
        });
        if let (Some(var), Some(_)) = (&raw.password_env, &raw.path) {
            self.report(
                var.span(),
                Problem::UnusedField {
                    entry: entry.to_owned(),
                    field: "password_env",
                    why: "to an SQLite database (it has no password)".into(),
                },
            );
        }
        let backend = match (&raw.path, &raw.url) {
            _ if mysql_path => unusable(),
            (None, Some(url)) if mysql::is_mysql_url(url.get_ref()) => {
                sqlite_only(self, "MySQL");
                unused(
                    self,
                    "listen",
                    raw.listen.as_ref().map(Spanned::span),
                    "to MySQL (it has no LISTEN: `watch` polls the server's row counters)",
                );
                match mysql::parse(url.get_ref()) {
                    Ok(mut my) => {
                        my.lease = lease(self, my.lease);
                        if let Some(Some(p)) = password {
                            my.password = Some(p.clone());
                        }
                        BackendConfig::Mysql(my)
                    }
                    Err(message) => {
                        self.bad_value(entry, "url", url.span(), message);
                        unusable()
                    }
                }
            }
            (Some(path), None) => {
                self.non_empty(entry, "path", path);
                unused(
                    self,
                    "lease",
                    raw.lease.as_ref().map(Spanned::span),
                    "to an SQLite database (one run at a time works on it)",
                );
                unused(
                    self,
                    "listen",
                    raw.listen.as_ref().map(Spanned::span),
                    "to an SQLite database (`watch` sees its changes by itself)",
                );
                let busy_timeout = self.duration(
                    entry,
                    "busy_timeout",
                    raw.busy_timeout.as_ref(),
                    Duration::from_secs(10),
                );
                // SQLite counts it in milliseconds of a 32-bit int.
                if busy_timeout > MAX_BUSY_TIMEOUT {
                    self.bad_value(
                        entry,
                        "busy_timeout",
                        raw.busy_timeout.as_ref().map_or(0..0, Spanned::span),
                        "must be at most \"24d\" (SQLite counts it in milliseconds of a 32-bit number)".into(),
                    );
                }
                BackendConfig::Sqlite(SqliteConfig {
                    path: self.resolve(path.get_ref()),
                    create_from: raw.create_from.as_ref().map(|p| self.resolve(p.get_ref())),
                    busy_timeout,
                })
            }
            (None, Some(url)) => {
                sqlite_only(self, "PostgreSQL");
                // The parser registers the password; the user, host and
                // parameters are no secrets.
                let lookup = |var: &str| std::env::var(var).ok();
                match postgres::parse(url.get_ref(), &lookup) {
                    Ok(mut pg) => {
                        pg.lease = lease(self, pg.lease);
                        if let Some(Some(p)) = &password {
                            pg.password = Some(p.clone());
                        }
                        if let Some(channel) = &raw.listen {
                            let name = channel.get_ref();
                            let ok = name
                                .chars()
                                .next()
                                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                                && name.len() <= 63;
                            if ok {
                                pg.listen = Some(name.clone());
                            } else {
                                self.bad_value(
                                    entry,
                                    "listen",
                                    channel.span(),
                                    format!("{name:?} is not a channel name (letters, digits and _, up to 63)"),
                                );
                            }
                        }
                        BackendConfig::Postgres(pg)
                    }
                    Err(message) => {
                        self.bad_value(entry, "url", url.span(), message);
                        unusable()
                    }
                }
            }
            (Some(_), Some(url)) => {
                self.report(
                    url.span(),
                    Problem::UnusedField {
                        entry: entry.to_owned(),
                        field: "url",
                        why: "together with `path`: give one of them (`path` for SQLite, `url` for PostgreSQL or MySQL)".into(),
                    },
                );
                unusable()
            }
            (None, None) => {
                self.report(
                    span,
                    Problem::MissingField {
                        entry: entry.to_owned(),
                        field: "path",
                        why:
                            " (an SQLite file), or `url` (a PostgreSQL, MySQL or MariaDB database)"
                                .into(),
                    },
                );
                unusable()
            }
        };
        DatabaseConfig {
            seen_table,
            backend,
            password_env: raw.password_env.map(Spanned::into_inner),
        }
    }

    fn serve(&mut self, raw: Option<Spanned<raw::RawServe>>) -> ServeConfig {
        let raw = raw.map(Spanned::into_inner).unwrap_or_default();
        let entry = "[serve]";
        let mut serve = ServeConfig::default();
        if let Some(listen) = &raw.listen {
            match parse_listen(listen.get_ref()) {
                Some(addr) => serve.listen = addr,
                None => self.bad_value(
                    entry,
                    "listen",
                    listen.span(),
                    format!(
                        "{:?} is not an address and port such as \"{DEFAULT_LISTEN}\"",
                        listen.get_ref()
                    ),
                ),
            }
        }
        if let Some(user) = &raw.user {
            self.non_empty(entry, "user", user);
            if user.get_ref().contains(':') {
                self.bad_value(
                    entry,
                    "user",
                    user.span(),
                    "HTTP Basic user names cannot contain `:`".into(),
                );
            }
            serve.user = user.get_ref().clone();
        }
        if let Some(var) = &raw.password_env {
            self.non_empty(entry, "password_env", var);
            // A secret: withheld from command handlers, masked in output.
            // Only `serve` needs it set (it says so if not).
            if !self.withheld_env.contains(var.get_ref()) {
                self.withheld_env.push(var.get_ref().clone());
            }
            if let Ok(value) = std::env::var(var.get_ref()) {
                crate::redact::register(&value);
            }
            serve.password_env = Some(var.get_ref().clone());
        }
        serve
    }

    fn delivery(&mut self, raw: Option<Spanned<raw::RawDelivery>>) -> DeliveryConfig {
        let raw = raw.map(Spanned::into_inner).unwrap_or_default();
        let entry = "[delivery]";
        let max_attempts = self.positive(entry, "max_attempts", raw.max_attempts.as_ref(), 8);
        let backoff = self.duration(
            entry,
            "backoff",
            raw.backoff.as_ref(),
            Duration::from_secs(60),
        );
        let max_backoff = self.duration(
            entry,
            "max_backoff",
            raw.max_backoff.as_ref(),
            Duration::from_secs(6 * 3600),
        );
        let mut batch_size = self.positive(entry, "batch_size", raw.batch_size.as_ref(), 2500);
        // A batch is held in memory (and bounded by bytes too): a huge
        // count would ask for gigabytes up front.
        if let Some(value) = raw.batch_size.as_ref()
            && batch_size > MAX_BATCH_SIZE
        {
            self.report(
                value.span(),
                Problem::OutOfRange {
                    entry: entry.to_owned(),
                    field: "batch_size",
                    expected: "a whole number from 1 to 100000",
                    value: *value.get_ref(),
                },
            );
            batch_size = 2500;
        }
        let keep_history = self.duration(
            entry,
            "keep_history",
            raw.keep_history.as_ref(),
            Duration::from_secs(30 * 86_400),
        );
        DeliveryConfig {
            retry: RetryPolicy {
                max_attempts,
                backoff,
                max_backoff,
            },
            batch_size: batch_size as usize,
            keep_history,
        }
    }

    fn source(&mut self, raw: RawSource, registry: &Registry) -> SourceConfig {
        let name = raw.name.get_ref().clone();
        let entry = format!("source `{name}`");
        self.non_empty(&entry, "name", &raw.name);
        let records = self.record_set(&entry, &raw);
        let kind = match (raw.function, raw.group) {
            (Some(function), None) => {
                for (field, present) in [
                    ("id", raw.id.as_ref().map(Spanned::span)),
                    (
                        "conditions",
                        raw.conditions
                            .as_ref()
                            .and_then(|c| c.first())
                            .map(Spanned::span),
                    ),
                ] {
                    if let Some(span) = present {
                        self.report(
                            span,
                            Problem::GeneratorOnly {
                                entry: entry.clone(),
                                field,
                            },
                        );
                    }
                }
                if registry.source(function.get_ref()).is_none() {
                    self.report(
                        function.span(),
                        Problem::UnknownSourceFunction {
                            source_name: name.clone(),
                            function: function.get_ref().clone(),
                            known: registry.source_names().join(", "),
                        },
                    );
                }
                SourceKind::Function {
                    function: function.into_inner(),
                }
            }
            (None, Some(group)) => {
                self.non_empty(&entry, "group", &group);
                let id = match raw.id {
                    Some(id) => {
                        self.non_empty(&entry, "id", &id);
                        id.into_inner()
                    }
                    None => "id".to_owned(),
                };
                let conditions = raw
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| self.condition(&entry, c.into_inner()))
                    .collect();
                SourceKind::Generator(Generator {
                    group: group.into_inner(),
                    id,
                    conditions,
                })
            }
            (Some(function), Some(_)) => {
                self.report(
                    function.span(),
                    Problem::FunctionAndGroup {
                        entry: entry.clone(),
                    },
                );
                SourceKind::Function {
                    function: function.into_inner(),
                }
            }
            (None, None) => {
                self.report(
                    raw.name.span(),
                    Problem::MissingField {
                        entry: entry.clone(),
                        field: "function",
                        why: " (a compiled-in source function), or `group` for a generator".into(),
                    },
                );
                SourceKind::Function {
                    function: String::new(),
                }
            }
        };
        let cursor = match &raw.cursor {
            Some(column) => {
                self.non_empty(&entry, "cursor", column);
                Some(Cursor {
                    column: column.get_ref().clone(),
                    lookback: self.duration(
                        &entry,
                        "cursor_lookback",
                        raw.cursor_lookback.as_ref(),
                        Duration::from_secs(60),
                    ),
                    rescan: self.duration(
                        &entry,
                        "rescan",
                        raw.rescan.as_ref(),
                        Duration::from_secs(3600),
                    ),
                })
            }
            None => {
                for (field, value) in [
                    ("cursor_lookback", raw.cursor_lookback.as_ref()),
                    ("rescan", raw.rescan.as_ref()),
                ] {
                    if let Some(value) = value {
                        self.report(
                            value.span(),
                            Problem::UnusedField {
                                entry: entry.clone(),
                                field,
                                why: "without `cursor` (every run reads every record)".into(),
                            },
                        );
                    }
                }
                None
            }
        };
        SourceConfig {
            name,
            records,
            kind,
            enabled: raw.enabled.unwrap_or(true),
            cursor,
        }
    }

    fn condition(&mut self, entry: &str, raw: RawCondition) -> Option<Condition> {
        let variable = raw.variable.into_inner();
        let Some(op) = Op::parse(raw.op.get_ref()) else {
            self.report(
                raw.op.span(),
                Problem::BadOperator {
                    entry: entry.to_owned(),
                    variable,
                    op: raw.op.into_inner(),
                },
            );
            return None;
        };
        let bad = |problem: &str| Problem::BadConditionValue {
            entry: entry.to_owned(),
            variable: variable.clone(),
            problem: problem.to_owned(),
        };
        let value = match raw.value.get_ref() {
            toml::Value::Integer(i) => CondValue::Int(*i),
            toml::Value::Float(x) if x.is_finite() => CondValue::Float(*x),
            toml::Value::String(s) => match CondValue::from_text(s) {
                Ok(value) => value,
                Err(problem) => {
                    self.report(raw.value.span(), bad(&problem));
                    return None;
                }
            },
            toml::Value::Boolean(b) => CondValue::Bool(*b),
            toml::Value::Datetime(dt) => {
                let parsed = match (dt.date, dt.time) {
                    (Some(d), None) => parse_date(&d.to_string()).map(CondValue::Date),
                    (Some(_), Some(_)) => parse_moment(&dt.to_string()).map(CondValue::DateTime),
                    _ => None,
                };
                match parsed {
                    Some(value) => value,
                    None => {
                        self.report(
                            raw.value.span(),
                            bad("not a valid date or datetime (2026-03-01, 2026-03-01T14:00:00Z)"),
                        );
                        return None;
                    }
                }
            }
            _ => {
                self.report(
                    raw.value.span(),
                    bad("the value must be a number, a string, a date or a boolean"),
                );
                return None;
            }
        };
        let at = self.at(raw.value.span()).to_string();
        Some(Condition {
            variable,
            op,
            value,
            at,
        })
    }

    fn record_set(&mut self, entry: &str, raw: &RawSource) -> RecordSet {
        match (&raw.table, &raw.query) {
            (Some(table), None) => {
                self.non_empty(entry, "table", table);
                RecordSet::Table {
                    table: table.get_ref().clone(),
                    filter: raw.filter.as_ref().map(|w| w.get_ref().clone()),
                }
            }
            (None, Some(query)) => {
                self.non_empty(entry, "query", query);
                if let Some(filter) = &raw.filter {
                    self.report(
                        filter.span(),
                        Problem::UnusedField {
                            entry: entry.to_owned(),
                            field: "where",
                            why: "with `query` (put the condition in the query)".into(),
                        },
                    );
                }
                RecordSet::Query(query.get_ref().clone())
            }
            (Some(_), Some(query)) => {
                self.report(
                    query.span(),
                    Problem::UnusedField {
                        entry: entry.to_owned(),
                        field: "query",
                        why: "together with `table`: give one of them".into(),
                    },
                );
                RecordSet::Query(query.get_ref().clone())
            }
            (None, None) => {
                self.report(
                    raw.name.span(),
                    Problem::MissingField {
                        entry: entry.to_owned(),
                        field: "table",
                        why: " (or `query`): where the records come from".into(),
                    },
                );
                RecordSet::Query(String::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("127.0.0.1:8025").unwrap().port(), 8025);
        assert!(parse_listen("[::1]:80").unwrap().ip().is_loopback());
        assert_eq!(
            parse_listen("LOCALHOST:9").unwrap(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 9))
        );
        for bad in [
            "localhost",
            "localhost:http",
            "example.org:80",
            "127.0.0.1",
            ":80",
            "",
        ] {
            assert!(parse_listen(bad).is_none(), "{bad}");
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("/etc/spark/spark.toml"),
            &Registry::with_builtins(),
        )
    }

    const MINIMAL: &str = r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "challenges"
function = "challenge_events"
table = "challenge"

[[handlers]]
name = "log"
group = "^challenge"
kind = "jsonl"
path = "var/events.jsonl"
"#;

    #[test]
    fn minimal_config_resolves_paths_against_its_folder() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(
            c.database.sqlite_path(),
            Some(Path::new("/etc/spark/app.sqlite3"))
        );
        assert_eq!(c.database.seen_table, "spark_event");
        assert_eq!(c.delivery.retry.max_attempts, 8);
        let HandlerKind::Jsonl { path, .. } = &c.handlers[0].kind else {
            panic!("expected jsonl")
        };
        assert_eq!(path, Path::new("/etc/spark/var/events.jsonl"));
    }

    #[test]
    fn regex_uses_search_semantics() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.handlers_for("challenge_ended").count(), 1);
        assert_eq!(c.handlers_for("a_challenge").count(), 0);
    }

    fn problems(text: &str) -> String {
        match parse(text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("config should be rejected"),
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_line() {
        let msg = problems(&MINIMAL.replace("kind = \"jsonl\"", "kind = \"jsonl\"\ncolour = 1"));
        assert!(msg.contains("colour"), "{msg}");
        assert!(
            msg.contains("spark.toml:14:1: handler `log`: unknown field `colour`"),
            "{msg}"
        );
    }

    #[test]
    fn problems_name_the_entry_and_line() {
        let msg = problems(
            &MINIMAL
                .replace("^challenge", "(unclosed")
                .replace("challenge_events", "nope"),
        );
        assert!(
            msg.contains("spark.toml:7:12: source `challenges`: unknown function `nope`"),
            "{msg}"
        );
        assert!(
            msg.contains("spark.toml:12:9: handler `log`: invalid group regex `(unclosed`"),
            "{msg}"
        );
    }

    #[test]
    fn kind_specific_fields() {
        let msg = problems(&MINIMAL.replace("path = \"var/events.jsonl\"", "timeout = \"1s\""));
        assert!(
            msg.contains("`timeout` does not apply to kind jsonl"),
            "{msg}"
        );
        assert!(msg.contains("`path` is required for kind jsonl"), "{msg}");
        let msg = problems(&MINIMAL.replace("\"jsonl\"", "\"carrier-pigeon\""));
        assert!(msg.contains("unknown kind `carrier-pigeon`"), "{msg}");
    }

    #[test]
    fn durations_and_numbers() {
        let text = format!("{MINIMAL}\n[delivery]\nbackoff = \"soon\"\nmax_attempts = 0\n");
        let msg = problems(&text);
        assert!(
            msg.contains("`backoff` = \"soon\" is not a duration"),
            "{msg}"
        );
        assert!(
            msg.contains("`max_attempts` must be a whole number"),
            "{msg}"
        );
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn duplicate_names_and_shared_files() {
        let twice = MINIMAL.replace("[[handlers]]", "[[handlers]]\nname = \"x\"\ngroup = \"a\"\nkind = \"jsonl\"\npath = \"var/events.jsonl\"\n\n[[handlers]]");
        let msg = problems(&twice);
        assert!(msg.contains("is also written by handler `x`"), "{msg}");
    }

    #[test]
    fn command_program_is_resolved_against_the_config() {
        let text = MINIMAL.replace(
            "kind = \"jsonl\"\npath = \"var/events.jsonl\"",
            "kind = \"command\"\ncommand = [\"./notify.sh\", \"x\"]",
        );
        let c = parse(&text).unwrap();
        let HandlerKind::Command { argv, timeout, .. } = &c.handlers[0].kind else {
            panic!("expected command")
        };
        assert_eq!(argv[0], "/etc/spark/./notify.sh");
        assert_eq!(*timeout, Duration::from_secs(30));
    }
}
