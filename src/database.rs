//! Opening the records database and checking a config against it, without
//! writing: the database must exist and be SQLite, every source's table and
//! columns must be there, and an existing seen table must fit.
//!
//! The only way spark creates a database is `create_from` (demos and tests):
//! a SQL script run into a new file that is moved into place when complete.
//!
//! Not here: spark's own tables and writes (`store`).

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::config::{Config, SourceConfig, SourceKind};
use crate::error::{Error, Result};
use crate::records::{Affinity, RecordSet};
use crate::registry::Registry;
use crate::sources::generator::CondValue;
use crate::store::schema;

/// Opens the records database read-only. A database that does not exist yet
/// but has a `create_from` script is built in memory from it, so read-only
/// commands see what the first run will see.
pub fn open_read_only(config: &Config) -> Result<Connection> {
    let db = &config.database;
    if !db.path.exists() {
        let Some(script) = &db.create_from else {
            return Err(Error::MissingDatabase {
                path: db.path.clone(),
                config: config.path.clone(),
            });
        };
        let conn = Connection::open_in_memory().map_err(Error::on_database(&db.path))?;
        run_script(&conn, script).map_err(|error| Error::CreateFrom {
            path: db.path.clone(),
            script: script.clone(),
            error,
        })?;
        return Ok(conn);
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(&db.path, flags).map_err(Error::on_database(&db.path))?;
    conn.busy_timeout(db.busy_timeout)
        .map_err(Error::on_database(&db.path))?;
    // Reading the schema is what tells a database from any other file.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|error| match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => Error::NotADatabase {
            path: db.path.clone(),
            reason: "file is not a database".into(),
        },
        _ => Error::OpenDatabase {
            path: db.path.clone(),
            error,
        },
    })?;
    Ok(conn)
}

fn run_script(conn: &Connection, script: &Path) -> Result<(), String> {
    let sql = std::fs::read_to_string(script).map_err(|e| e.to_string())?;
    conn.execute_batch(&sql).map_err(|e| e.to_string())
}

/// Creates the database from its `create_from` script if it does not exist.
/// The script runs into a temporary file (an unpredictable name, created
/// exclusively, readable by its owner only) that is moved into place only
/// when it succeeded; a database that appeared meanwhile is kept.
pub fn create_if_missing(config: &Config) -> Result<()> {
    let db = &config.database;
    let Some(script) = &db.create_from else {
        return Ok(());
    };
    if db.path.exists() {
        return Ok(());
    }
    let fail = |error: String| Error::CreateFrom {
        path: db.path.clone(),
        script: script.clone(),
        error,
    };
    let dir = crate::files::parent(&db.path);
    crate::files::create_dir_all(dir, crate::files::dir_mode(crate::files::PRIVATE))
        .map_err(|e| fail(e.to_string()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".spark-creating-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(
            crate::files::PRIVATE,
        ))
        .tempfile_in(dir)
        .map_err(|e| fail(e.to_string()))?;
    let conn = Connection::open(tmp.path()).map_err(|e| fail(e.to_string()))?;
    run_script(&conn, script).map_err(fail)?;
    conn.close().map_err(|(_, e)| fail(e.to_string()))?;
    // No-clobber: another process may have created the database meanwhile.
    match tmp.persist_noclobber(&db.path) {
        Ok(_) => {
            crate::files::sync_dir(dir);
            Ok(())
        }
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(fail(e.error.to_string())),
    }
}

/// The sources a run works on: all enabled ones, or those named (`--source`).
pub fn select_sources<'c>(config: &'c Config, only: &[String]) -> Result<Vec<&'c SourceConfig>> {
    if only.is_empty() {
        return Ok(config.sources.iter().filter(|s| s.enabled).collect());
    }
    only.iter()
        .map(|name| {
            config
                .sources
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| Error::UnknownSource {
                    name: name.clone(),
                    config: config.path.clone(),
                    known: config
                        .sources
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        })
        .collect()
}

/// Checks that each source's records can be read and carry the columns it
/// needs. Every source is checked; all errors are returned together.
/// Warnings (things that are allowed but probably wrong) are logged.
pub fn check_sources(
    conn: &Connection,
    config: &Config,
    registry: &Registry,
    sources: &[&SourceConfig],
) -> Result<()> {
    let mut errors = Vec::new();
    for source in sources {
        match check_source(conn, config, registry, source) {
            Ok(warnings) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
            }
            Err(e) => errors.push(e),
        }
    }
    Error::all(errors)
}

/// Checks one source against the database; `Ok` carries warnings.
pub fn check_source(
    conn: &Connection,
    config: &Config,
    registry: &Registry,
    source: &SourceConfig,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let what = match &source.records {
        RecordSet::Table { table, filter } => {
            let exists: bool = conn
                .query_row(
                    "SELECT count(*) > 0 FROM sqlite_master \
                     WHERE type IN ('table', 'view') AND name = ?1 COLLATE NOCASE",
                    [table],
                    |r| r.get(0),
                )
                .map_err(Error::on_database(&config.database.path))?;
            if !exists {
                return Err(Error::MissingTable {
                    source_name: source.name.clone(),
                    table: table.clone(),
                    database: config.database.path.clone(),
                });
            }
            if filter.is_some() {
                "its `where` condition"
            } else {
                "its table"
            }
        }
        RecordSet::Query(_) => "its query",
    };
    let columns =
        crate::records::columns(conn, &source.records.sql()).map_err(|e| Error::BadQuery {
            source_name: source.name.clone(),
            what,
            message: sql_message(&e),
        })?;
    let names = || {
        columns
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let has = |column: &str| columns.iter().any(|(n, _)| n == column);
    match &source.kind {
        SourceKind::Function { function } => {
            let Some(func) = registry.source(function) else {
                return Ok(warnings);
            };
            if let Some(missing) = func.reads.iter().find(|c| !has(c)) {
                return Err(Error::MissingColumn {
                    source_name: source.name.clone(),
                    needed_by: format!("function `{function}` reads"),
                    column: missing.clone(),
                    columns: names(),
                });
            }
        }
        SourceKind::Generator(generator) => {
            if !has(&generator.id) {
                return Err(Error::MissingColumn {
                    source_name: source.name.clone(),
                    needed_by: "makes the generator's keys (`id`)".into(),
                    column: generator.id.clone(),
                    columns: names(),
                });
            }
            for condition in &generator.conditions {
                if !has(&condition.variable) {
                    warnings.push(format!(
                        "source `{}`: condition `{condition}`: `{}` is not a column of its records ({}), so it never matches",
                        source.name,
                        condition.variable,
                        names()
                    ));
                }
                let declared = columns
                    .iter()
                    .find(|(n, _)| *n == condition.variable)
                    .and_then(|(_, t)| t.as_deref());
                if let Some(declared) = declared
                    && !comparable(&condition.value, Affinity::of(declared))
                {
                    return Err(Error::ConditionType {
                        source_name: source.name.clone(),
                        condition: condition.to_string(),
                        column: condition.variable.clone(),
                        declared: declared.to_owned(),
                        value_kind: condition.value.kind(),
                    });
                }
            }
        }
    }
    Ok(warnings)
}

/// Whether a condition's value can ever match a column of this affinity.
fn comparable(value: &CondValue, affinity: Affinity) -> bool {
    !matches!(
        (value, affinity),
        (CondValue::Int(_) | CondValue::Float(_), Affinity::Text)
            | (
                CondValue::Text(_) | CondValue::Date(_),
                Affinity::Integer | Affinity::Real
            )
            | (CondValue::Bool(_), Affinity::Text | Affinity::Real)
    )
}

/// Checks an existing seen table; `Ok(false)` when it does not exist yet.
pub fn check_seen_table(conn: &Connection, config: &Config) -> Result<bool> {
    schema::check_seen_table(conn, &config.database.seen_table).map_err(|problem| {
        Error::BadSeenTable {
            table: config.database.seen_table.clone(),
            database: config.database.path.clone(),
            problem,
        }
    })
}

/// The longest key and group (in characters) the seen table takes: the
/// lengths its `key` and `group` columns declare (`varchar(100)` and
/// `varchar(50)` in django-spark's schema, which spark creates). SQLite
/// does not enforce them, PostgreSQL does; spark holds every database to
/// them, so that a config behaves the same on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    pub key: Option<usize>,
    pub group: Option<usize>,
}

impl KeyLimits {
    /// django-spark's columns: `key varchar(100)`, `group varchar(50)`.
    pub const DJANGO: KeyLimits = KeyLimits {
        key: Some(100),
        group: Some(50),
    };

    /// Why an event cannot be recorded as seen, if it cannot: a key or a
    /// group longer than the columns take, or holding a NUL character
    /// (which PostgreSQL's text cannot store).
    pub fn check(&self, key: &str, group: &str) -> Result<(), String> {
        for (what, value, limit) in [("key", key, self.key), ("group", group, self.group)] {
            if value.contains('\0') {
                return Err(format!(
                    "event {what} {:?} contains a NUL character, which no seen table can store",
                    crate::escape::escape(&clipped(value))
                ));
            }
            if let Some(limit) = limit {
                let n = value.chars().count();
                if n > limit {
                    return Err(format!(
                        "event {what} {:?} is {n} characters, longer than the seen table's `{what}` column takes ({limit}); \
                         use a shorter id, or a seen table with a wider column",
                        crate::escape::escape(&clipped(value))
                    ));
                }
            }
        }
        Ok(())
    }
}

fn clipped(text: &str) -> String {
    if text.chars().count() <= 40 {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(39).collect();
        s.push('…');
        s
    }
}

/// The length a declared column type allows: `varchar(100)` -> 100;
/// `text` and the like -> no limit.
pub fn declared_length(declared: &str) -> Option<usize> {
    let lower = declared.to_ascii_lowercase();
    if !(lower.contains("char")) {
        return None;
    }
    let open = lower.find('(')?;
    let close = lower[open..].find(')')? + open;
    lower[open + 1..close].trim().parse().ok()
}

/// The limits of the seen table (django-spark's when it does not exist yet).
pub fn key_limits(conn: &Connection, config: &Config) -> Result<KeyLimits> {
    let mut stmt = conn
        .prepare("SELECT name, type FROM pragma_table_info(?1)")
        .map_err(Error::on_database(&config.database.path))?;
    let columns: Vec<(String, String)> = stmt
        .query_map([&config.database.seen_table], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(Error::on_database(&config.database.path))?;
    if columns.is_empty() {
        return Ok(KeyLimits::DJANGO);
    }
    let of = |name: &str| {
        columns
            .iter()
            .find(|(c, _)| c == name)
            .and_then(|(_, t)| declared_length(t))
    };
    Ok(KeyLimits {
        key: of("key"),
        group: of("group"),
    })
}

/// Whether the (existing) seen table has no rows.
pub fn seen_table_is_empty(conn: &Connection, config: &Config) -> Result<bool> {
    let sql = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {})",
        crate::records::quote_ident(&config.database.seen_table)
    );
    conn.query_row(&sql, [], |r| r.get(0))
        .map_err(Error::on_database(&config.database.path))
}

/// SQLite's own message for an error, without rusqlite's wrapping.
pub fn sql_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths_and_limits() {
        assert_eq!(declared_length("varchar(100)"), Some(100));
        assert_eq!(declared_length("character varying( 50 )"), Some(50));
        assert_eq!(declared_length("text"), None);
        assert_eq!(declared_length("decimal(10,2)"), None);
        let limits = KeyLimits::DJANGO;
        assert!(limits.check("g_1", "g").is_ok());
        assert!(
            limits
                .check(&"k".repeat(101), "g")
                .unwrap_err()
                .contains("101 characters")
        );
        assert!(limits.check(&"漢".repeat(100), "g").is_ok());
        assert!(limits.check("a\0b", "g").unwrap_err().contains("NUL"));
        assert!(
            limits
                .check("k", &"g".repeat(51))
                .unwrap_err()
                .contains("`group`")
        );
    }
}
