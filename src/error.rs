//! The library's error type: what went wrong, in the terms of the config and
//! the database (source, handler, table, column), never a bare SQL error.
//!
//! Not here: failed deliveries. A handler failing is not an error of the run;
//! it is recorded with the delivery and retried.

use std::path::PathBuf;

/// Why a command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file (a `crate::config::ConfigError`, which converts into
    /// this: the error type sits below everything, the config included).
    #[error(transparent)]
    Config(Box<dyn std::error::Error + Send + Sync>),

    #[error(
        "database {} does not exist; spark never creates an empty database (check `path` under [database] in {})",
        path.display(), config.display()
    )]
    MissingDatabase { path: PathBuf, config: PathBuf },

    #[error("{} is not a SQLite database ({reason})", path.display())]
    NotADatabase { path: PathBuf, reason: String },

    #[error("cannot open database {database}: {error}")]
    OpenDatabase { database: String, error: String },

    #[error("cannot connect to PostgreSQL {target}: {error}")]
    Connect { target: String, error: String },

    #[error("database {}: cannot create it from {}: {error}", path.display(), script.display())]
    CreateFrom {
        path: PathBuf,
        script: PathBuf,
        error: String,
    },

    #[error("source `{source_name}`: table `{table}` does not exist in {database}")]
    MissingTable {
        source_name: String,
        table: String,
        database: String,
    },

    #[error(
        "source `{source_name}`: column `{column}` in {database} is of type {type_name}, which spark cannot turn into JSON; cast it in the query (e.g. `{column}::text`)"
    )]
    UnmappableColumn {
        source_name: String,
        column: String,
        type_name: String,
        database: String,
    },

    #[error(
        "source `{source_name}`: column `{column}`, which {needed_by}, is not among its columns in {database} ({columns})"
    )]
    MissingColumn {
        source_name: String,
        /// Who needs it: "function `challenge_events` reads" or "is the generator's id".
        needed_by: String,
        column: String,
        columns: String,
        database: String,
    },

    #[error(
        "source `{source_name}`: its `cursor` column `{column}` in {database} is of type {type_name}, whose values do not grow with each change; a cursor is an integer (an autoincrement id) or a date or datetime (an `updated_at`)"
    )]
    BadCursor {
        source_name: String,
        column: String,
        type_name: String,
        database: String,
    },

    #[error("{0}")]
    ConditionType(Box<ConditionMismatch>),

    #[error("source `{source_name}`: {what} does not run in {database}: {message}")]
    BadQuery {
        source_name: String,
        what: &'static str,
        message: String,
        database: String,
    },

    #[error("seen table `{table}` in {database}: {problem}")]
    BadSeenTable {
        table: String,
        database: String,
        problem: String,
    },

    #[error("--source {name}: no source of that name in {} (sources: {known})", config.display())]
    UnknownSource {
        name: String,
        config: PathBuf,
        known: String,
    },

    #[error("source `{source_name}`: reading its records from {database} failed: {error}")]
    ReadRecords {
        source_name: String,
        error: String,
        database: String,
    },

    #[error(
        "database {database}: delivery {id} (handler `{handler}`) in spark_delivery is corrupt: {problem}; fix the row or delete it"
    )]
    CorruptDelivery {
        database: String,
        id: i64,
        handler: String,
        problem: String,
    },

    #[error("database {database}: {action}: {error}")]
    Store {
        database: String,
        action: String,
        error: String,
    },

    #[error(
        "another spark run is working on {} (it holds {}); this run did nothing. Pass --wait DURATION to wait for it",
        database.display(), lock.display()
    )]
    Busy { database: PathBuf, lock: PathBuf },

    #[error("lock file {}: {error}", path.display())]
    Lock {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("stopped by {signal}: {summary}")]
    Interrupted {
        signal: &'static str,
        summary: String,
    },

    #[error(
        "database {database}: delivery {delivery} was taken over by another worker (this one's lease ran out)"
    )]
    LostClaim { database: String, delivery: i64 },

    #[error("{0}")]
    Usage(String),

    /// Several problems at once (e.g. one per source), each on its own line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<Error>),
}

impl Error {
    /// A failed database operation, for `map_err`: `Error::Store` naming the
    /// database and what spark was doing.
    pub fn store<'a, E: std::fmt::Display>(
        database: &'a str,
        action: &'a str,
    ) -> impl Fn(E) -> Error + 'a {
        move |error| Error::Store {
            database: database.to_owned(),
            action: action.to_owned(),
            error: error.to_string(),
        }
    }

    /// `Ok` when `errors` is empty, the error itself when there is one,
    /// `Several` otherwise.
    pub fn all(mut errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Several(errors)),
        }
    }

    /// The process exit status for this error: 3 when another run holds the
    /// lock, 2 for everything else (unusable config, arguments or database).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Busy { .. } => 3,
            _ => 2,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A generator's condition that could never match its column.
#[derive(Debug, thiserror::Error)]
#[error(
    "{at}source `{source_name}`: condition `{condition}` compares column `{column}`, declared {declared}, with {value_kind}; it could never match{hint}"
)]
pub struct ConditionMismatch {
    /// `spark.toml:14:1: ` (or empty).
    pub at: String,
    pub hint: &'static str,
    pub source_name: String,
    pub condition: String,
    pub column: String,
    pub declared: String,
    pub value_kind: &'static str,
}
