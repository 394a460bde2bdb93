//! Operator views and repairs over the SQLite store: list seen events (the
//! django-spark admin list) and deliveries, make deliveries due again, forget
//! keys, prune old events.
//!
//! Listings take a plain (read-only) connection and write nothing; repairs
//! are methods of `SqliteStore` and run in transactions.
//!
//! Not here: the pipeline's interface (`Store`) or delivering (the engine).

use std::collections::HashSet;

use regex::Regex;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use super::schema::table_exists;
use super::{Delivery, DeliveryState, SqliteStore};
use crate::clock;
use crate::error::Result;
use crate::records::quote_ident;

/// Which seen events to list.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Groups matching this regex (search semantics).
    pub group: Option<Regex>,
    pub key_prefix: Option<String>,
    /// `created_at` on or after this (text comparison, `YYYY-MM-DD[ ...]`).
    pub since: Option<String>,
    /// `created_at` before this.
    pub until: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

/// A seen event as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SeenEvent {
    pub key: String,
    pub group: String,
    pub created_at: String,
    /// The context: JSON when spark wrote it, the stored text otherwise.
    pub context: Value,
}

/// Lists seen events, newest first, calling `each` for each one.
pub fn list_events(
    conn: &Connection,
    seen_table: &str,
    query: &EventQuery,
    each: &mut dyn FnMut(SeenEvent),
) -> rusqlite::Result<usize> {
    if !table_exists(conn, seen_table)? {
        return Ok(0);
    }
    let mut sql = format!(
        "SELECT \"key\", \"group\", \"created_at\", \"context\" FROM {} WHERE 1",
        quote_ident(seen_table)
    );
    let mut args: Vec<String> = Vec::new();
    if let Some(prefix) = &query.key_prefix {
        args.push(prefix.clone());
        sql.push_str(&format!(
            " AND substr(\"key\", 1, length(?{n})) = ?{n}",
            n = args.len()
        ));
    }
    if let Some(since) = &query.since {
        args.push(since.clone());
        sql.push_str(&format!(" AND \"created_at\" >= ?{}", args.len()));
    }
    if let Some(until) = &query.until {
        args.push(until.clone());
        sql.push_str(&format!(" AND \"created_at\" < ?{}", args.len()));
    }
    sql.push_str(" ORDER BY \"created_at\" DESC, \"key\"");
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
    let mut listed = 0;
    while let Some(row) = rows.next()? {
        if query.limit.is_some_and(|limit| listed >= limit) {
            break;
        }
        let group: String = row.get(1)?;
        if query.group.as_ref().is_some_and(|re| !re.is_match(&group)) {
            continue;
        }
        let context: String = row.get(3)?;
        each(SeenEvent {
            key: row.get(0)?,
            group,
            created_at: row.get(2)?,
            context: serde_json::from_str(&context).unwrap_or(Value::String(context)),
        });
        listed += 1;
    }
    Ok(listed)
}

/// One seen event by key, as an event (context parsed; other text kept
/// under `"text"`).
pub fn seen_event(
    conn: &Connection,
    seen_table: &str,
    key: &str,
) -> rusqlite::Result<Option<crate::event::Event>> {
    let sql = format!(
        "SELECT \"group\", \"context\" FROM {} WHERE \"key\" = ?1",
        quote_ident(seen_table)
    );
    let found: Option<(String, String)> = conn
        .query_row(&sql, [key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(found.map(|(group, context)| crate::event::Event {
        group,
        key: key.to_owned(),
        context: std::sync::Arc::new(crate::event::context_from_stored(&context)),
    }))
}

/// Which deliveries to list or retry.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    /// Any of these states (all when empty).
    pub states: Vec<DeliveryState>,
    pub handler: Option<String>,
    /// Deliveries still owing any of these keys (all when empty).
    pub keys: Vec<String>,
}

impl DeliveryQuery {
    fn matches(&self, d: &Delivery) -> bool {
        (self.states.is_empty() || self.states.contains(&d.state))
            && self.handler.as_ref().is_none_or(|h| h == &d.handler)
            && (self.keys.is_empty() || d.remaining().iter().any(|k| self.keys.contains(k)))
    }
}

/// One owed (event, handler) pair, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryLine {
    pub id: i64,
    pub handler: String,
    pub key: String,
    pub state: String,
    pub attempts: u32,
    /// UTC, for failed deliveries.
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
}

/// Every delivery not finished yet, oldest first.
pub fn all_deliveries(conn: &Connection) -> rusqlite::Result<Vec<Delivery>> {
    if !table_exists(conn, "spark_delivery")? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM spark_delivery ORDER BY id",
        super::sqlite::DELIVERY_COLUMNS
    ))?;
    stmt.query_map([], super::sqlite::delivery_from_row)?
        .collect()
}

/// How many deliveries a run would work on at `now_ms` (read-only).
pub fn count_due(conn: &Connection, now_ms: i64) -> rusqlite::Result<u64> {
    if !table_exists(conn, "spark_delivery")? {
        return Ok(0);
    }
    let n: i64 = conn.query_row(
        &format!(
            "SELECT count(*) FROM spark_delivery WHERE {}",
            super::sqlite::DUE
        ),
        [now_ms],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Deliveries not finished, counted in events: (handler, state, count).
pub fn outstanding(conn: &Connection) -> rusqlite::Result<Vec<(String, String, u64)>> {
    if !table_exists(conn, "spark_delivery")? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT handler, state, sum(json_array_length(keys) - done) FROM spark_delivery \
         GROUP BY handler, state ORDER BY handler, state",
    )?;
    stmt.query_map([], |r| {
        let n: i64 = r.get(2)?;
        Ok((r.get(0)?, r.get(1)?, u64::try_from(n).unwrap_or(0)))
    })?
    .collect()
}

/// Deliveries owed to a handler that is not in the config (renamed or
/// removed): they would wait forever.
#[derive(Debug, Clone, Serialize)]
pub struct Orphaned {
    pub handler: String,
    /// Events owed.
    pub events: u64,
    /// The first few keys.
    pub keys: Vec<String>,
}

/// How many keys an orphan report names.
const ORPHAN_KEYS_LISTED: usize = 5;

/// Deliveries owed to handlers not among `known`, by handler.
pub fn orphaned(conn: &Connection, known: &[&str]) -> rusqlite::Result<Vec<Orphaned>> {
    let mut found: Vec<Orphaned> = Vec::new();
    for d in all_deliveries(conn)? {
        if known.contains(&d.handler.as_str()) {
            continue;
        }
        let i = match found.iter().position(|o| o.handler == d.handler) {
            Some(i) => i,
            None => {
                found.push(Orphaned {
                    handler: d.handler.clone(),
                    events: 0,
                    keys: Vec::new(),
                });
                found.len() - 1
            }
        };
        let o = &mut found[i];
        o.events += d.remaining().len() as u64;
        for key in d.remaining() {
            if o.keys.len() < ORPHAN_KEYS_LISTED {
                o.keys.push(key.clone());
            }
        }
    }
    Ok(found)
}

/// The owed (event, handler) pairs that `query` selects, one line per key.
pub fn list_deliveries(
    conn: &Connection,
    query: &DeliveryQuery,
) -> rusqlite::Result<Vec<DeliveryLine>> {
    let mut lines = Vec::new();
    for d in all_deliveries(conn)? {
        if !query.matches(&d) {
            continue;
        }
        for key in d.remaining() {
            if !query.keys.is_empty() && !query.keys.contains(key) {
                continue;
            }
            lines.push(DeliveryLine {
                id: d.id,
                handler: d.handler.clone(),
                key: key.clone(),
                state: d.state.to_string(),
                attempts: d.attempts,
                next_attempt_at: (d.state == DeliveryState::Failed)
                    .then(|| clock::utc_text(d.next_attempt_at)),
                last_error: d.last_error.clone(),
                created_at: d.created_at.clone(),
            });
        }
    }
    Ok(lines)
}

/// What `forget` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Forgotten {
    /// Keys removed from the seen table.
    pub forgotten: Vec<String>,
    /// Keys that were not seen.
    pub unknown: Vec<String>,
    /// Owed deliveries of those keys that were dropped.
    pub deliveries_dropped: usize,
}

/// What `prune` did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub pruned: u64,
    /// Old enough, but kept because a delivery of theirs is not finished.
    pub kept_undelivered: u64,
}

impl SqliteStore {
    /// Makes the deliveries `query` selects due now, with a fresh count of
    /// attempts, and returns them.
    pub fn reset_for_retry(&mut self, query: &DeliveryQuery) -> Result<Vec<Delivery>> {
        let now = clock::now_text();
        self.write("making deliveries due", |conn| {
            let mut selected: Vec<Delivery> = all_deliveries(conn)?
                .into_iter()
                .filter(|d| query.matches(d))
                .collect();
            let mut reset = conn.prepare(
                "UPDATE spark_delivery SET state = 'pending', attempts = 0, next_attempt_at = 0, \
                 updated_at = ?2 WHERE id = ?1",
            )?;
            for d in &mut selected {
                reset.execute(params![d.id, now])?;
                d.state = DeliveryState::Pending;
                d.attempts = 0;
                d.next_attempt_at = 0;
            }
            Ok(selected)
        })
    }

    /// Removes `keys` from the seen table, so that they may fire again, and
    /// drops what was still owed for them.
    pub fn forget(&mut self, keys: &[String]) -> Result<Forgotten> {
        let delete_sql = format!(
            "DELETE FROM {} WHERE \"key\" = ?1",
            quote_ident(self.seen_table())
        );
        let now = clock::now_text();
        self.write("forgetting keys", |conn| {
            let mut report = Forgotten::default();
            let mut delete = conn.prepare(&delete_sql)?;
            for key in keys {
                if delete.execute([key])? > 0 {
                    report.forgotten.push(key.clone());
                } else {
                    report.unknown.push(key.clone());
                }
            }
            let wanted: HashSet<&String> = keys.iter().collect();
            for d in all_deliveries(conn)? {
                let kept: Vec<String> = d
                    .remaining()
                    .iter()
                    .filter(|k| !wanted.contains(k))
                    .cloned()
                    .collect();
                let dropped = d.remaining().len() - kept.len();
                if dropped == 0 {
                    continue;
                }
                report.deliveries_dropped += dropped;
                if kept.is_empty() {
                    conn.execute("DELETE FROM spark_delivery WHERE id = ?1", [d.id])?;
                } else {
                    let mut keys = d.keys[..d.done].to_vec();
                    keys.extend(kept);
                    conn.execute(
                        "UPDATE spark_delivery SET keys = ?2, updated_at = ?3 WHERE id = ?1",
                        params![d.id, super::sqlite::keys_json(&keys), now],
                    )?;
                }
            }
            Ok(report)
        })
    }

    /// Deletes seen events recorded before `cutoff` (UTC text), optionally
    /// only those whose group matches, keeping any with an unfinished
    /// delivery. With `dry_run`, only counts.
    pub fn prune(&mut self, cutoff: &str, group: Option<&Regex>, dry_run: bool) -> Result<Pruned> {
        let table = quote_ident(self.seen_table());
        let page_sql = format!(
            "SELECT \"key\", \"group\" FROM {table} WHERE \"created_at\" < ?1 AND \"key\" > ?2 \
             ORDER BY \"key\" LIMIT 5000"
        );
        let delete_sql = format!("DELETE FROM {table} WHERE \"key\" = ?1");
        let owed: HashSet<String> = all_deliveries(self.connection())
            .map_err(self.error("listing deliveries"))?
            .iter()
            .flat_map(|d| d.remaining().to_vec())
            .collect();
        let mut report = Pruned::default();
        let mut after = String::new();
        loop {
            let page: Vec<(String, String)> = {
                let mut stmt = self
                    .connection()
                    .prepare_cached(&page_sql)
                    .map_err(self.error("listing old events"))?;
                stmt.query_map(params![cutoff, after], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect())
                    .map_err(self.error("listing old events"))?
            };
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let doomed: Vec<&String> = page
                .iter()
                .filter(|(_, g)| group.is_none_or(|re| re.is_match(g)))
                .filter_map(|(k, _)| {
                    if owed.contains(k) {
                        report.kept_undelivered += 1;
                        None
                    } else {
                        Some(k)
                    }
                })
                .collect();
            report.pruned += doomed.len() as u64;
            if !dry_run && !doomed.is_empty() {
                self.write("pruning old events", |conn| {
                    let mut delete = conn.prepare_cached(&delete_sql)?;
                    for key in &doomed {
                        delete.execute([key])?;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(report)
    }
}
