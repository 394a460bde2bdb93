//! Checking a config against its database, without writing, on any
//! backend: every source's table and columns must be there (and for a
//! generator, of types its conditions can match), and the events must fit
//! the seen table (`store::KeyLimits`).
//!
//! Not here: opening databases (`backend`) or writing (`store`).

use crate::config::{Config, SourceConfig, SourceKind};
use crate::error::ConditionMismatch;
use crate::error::{Error, Result};
use crate::records::{Affinity, RecordSet};
use crate::registry::Registry;
use crate::sources::generator::CondValue;
use crate::store::Reader;

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
    reader: &mut dyn Reader,
    registry: &Registry,
    sources: &[&SourceConfig],
) -> Result<()> {
    let mut errors = Vec::new();
    for source in sources {
        match check_source(reader, registry, source) {
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
    reader: &mut dyn Reader,
    registry: &Registry,
    source: &SourceConfig,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let what = match &source.records {
        RecordSet::Table { table, filter } => {
            if !reader.table_exists(table)? {
                return Err(Error::MissingTable {
                    source_name: source.name.clone(),
                    table: table.clone(),
                    database: reader.name().to_owned(),
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
    let columns = reader
        .columns(&source.records)
        .map_err(|message| Error::BadQuery {
            source_name: source.name.clone(),
            what,
            message,
            database: reader.name().to_owned(),
        })?;
    if let Some(bad) = columns.iter().find(|c| c.affinity == Affinity::Unmappable) {
        return Err(Error::UnmappableColumn {
            source_name: source.name.clone(),
            column: bad.name.clone(),
            type_name: bad.declared.clone().unwrap_or_default(),
            database: reader.name().to_owned(),
        });
    }
    let names = || {
        columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let has = |column: &str| columns.iter().any(|c| c.name == column);
    if let Some(cursor) = &source.cursor {
        let Some(column) = columns.iter().find(|c| c.name == cursor.column) else {
            return Err(Error::MissingColumn {
                source_name: source.name.clone(),
                needed_by: "is its `cursor`".into(),
                column: cursor.column.clone(),
                columns: names(),
                database: reader.name().to_owned(),
            });
        };
        // What can grow: integers, dates and datetimes (and what a query's
        // expression leaves undeclared, judged by its values).
        if column.declared.is_some()
            && !matches!(
                column.affinity,
                Affinity::Integer | Affinity::Temporal | Affinity::Any
            )
        {
            return Err(Error::BadCursor {
                source_name: source.name.clone(),
                column: cursor.column.clone(),
                type_name: column.declared.clone().unwrap_or_default(),
                database: reader.name().to_owned(),
            });
        }
    }
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
                    database: reader.name().to_owned(),
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
                    database: reader.name().to_owned(),
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
                let column = columns.iter().find(|c| c.name == condition.variable);
                if let Some(column) = column
                    && let Some(declared) = &column.declared
                    && !comparable(&condition.value, column.affinity)
                {
                    return Err(Error::ConditionType(Box::new(ConditionMismatch {
                        at: if condition.at.is_empty() {
                            String::new()
                        } else {
                            format!("{}: ", condition.at)
                        },
                        hint: if column.affinity == Affinity::Temporal {
                            " (compare a date column with a date: \"2026-03-01\", 2026-03-01, \"2026-03-01 14:00\", today, today-3d, now-2h)"
                        } else {
                            ""
                        },
                        source_name: source.name.clone(),
                        condition: condition.to_string(),
                        column: condition.variable.clone(),
                        declared: declared.to_owned(),
                        value_kind: condition.value.kind(),
                    })));
                }
            }
        }
    }
    Ok(warnings)
}

/// A warning when a table source's cursor column leads no index of its
/// table (every incremental read then reads the whole table to find what
/// changed), for `check`.
pub fn cursor_index_warning(reader: &mut dyn Reader, source: &SourceConfig) -> Option<String> {
    let cursor = source.cursor.as_ref()?;
    let RecordSet::Table { table, .. } = &source.records else {
        return None;
    };
    let indexed = reader.indexed(table, &cursor.column).ok()??;
    (!indexed).then(|| {
        format!(
            "source `{}`: no index of table `{table}` starts with its cursor column `{}`: every \
             incremental run reads the whole table to find what changed (CREATE INDEX ... ON {table} ({}))",
            source.name, cursor.column, cursor.column
        )
    })
}

/// Whether a condition's value can ever match a column of this affinity.
fn comparable(value: &CondValue, affinity: Affinity) -> bool {
    !matches!(
        (value, affinity),
        (
            CondValue::Int(_) | CondValue::Float(_),
            Affinity::Text | Affinity::Boolean | Affinity::Temporal
        ) | (
            CondValue::Text(_),
            Affinity::Integer | Affinity::Real | Affinity::Boolean | Affinity::Temporal
        ) | (
            CondValue::Date(_) | CondValue::DateTime(_) | CondValue::Relative(_),
            Affinity::Integer | Affinity::Real | Affinity::Boolean
        ) | (
            CondValue::Bool(_),
            Affinity::Text | Affinity::Real | Affinity::Temporal
        )
    )
}
