//! The config file as written: plain serde structs that mirror the TOML, with
//! spans so that validation errors can point at a line. Unknown keys are
//! rejected here (a handler's kind options: by its kind's own struct, see
//! `crate::handlers::KINDS`); meaning is checked by the `Validator`.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub database: Spanned<RawDatabase>,
    #[serde(default)]
    pub delivery: Option<Spanned<RawDelivery>>,
    #[serde(default)]
    pub serve: Option<Spanned<RawServe>>,
    #[serde(default)]
    pub sources: Vec<Spanned<RawSource>>,
    #[serde(default)]
    pub handlers: Vec<Spanned<RawHandler>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// An SQLite file...
    pub path: Option<Spanned<String>>,
    /// ...or a PostgreSQL database.
    pub url: Option<Spanned<String>>,
    pub seen_table: Option<Spanned<String>>,
    pub create_from: Option<Spanned<String>>,
    pub busy_timeout: Option<Spanned<String>>,
    /// PostgreSQL: how long a claim on a delivery lasts unrenewed.
    pub lease: Option<Spanned<String>>,
    /// PostgreSQL: the channel `watch` listens on for changes.
    pub listen: Option<Spanned<String>>,
    /// A database server's password, from this environment variable.
    pub password_env: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub max_attempts: Option<Spanned<i64>>,
    pub backoff: Option<Spanned<String>>,
    pub max_backoff: Option<Spanned<String>>,
    pub batch_size: Option<Spanned<i64>>,
    pub keep_history: Option<Spanned<String>>,
}

/// `[serve]`: the console.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServe {
    pub listen: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: Spanned<String>,
    pub function: Option<Spanned<String>>,
    pub table: Option<Spanned<String>>,
    #[serde(rename = "where")]
    pub filter: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub enabled: Option<bool>,
    /// A generator's event group (instead of `function`).
    pub group: Option<Spanned<String>>,
    /// A generator's id column (default `id`).
    pub id: Option<Spanned<String>>,
    pub conditions: Option<Vec<Spanned<RawCondition>>>,
    /// A column whose value grows whenever a row is inserted or changed:
    /// runs read only what is above the source's high-water mark.
    pub cursor: Option<Spanned<String>>,
    /// How far back below the mark a datetime cursor reads (default 1m).
    pub cursor_lookback: Option<Spanned<String>>,
    /// How often a source with a cursor reads all its records (default 1h).
    pub rescan: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub variable: Spanned<String>,
    pub op: Spanned<String>,
    pub value: Spanned<toml::Value>,
}

/// What every `[[handlers]]` entry has; the rest of its fields are its
/// kind's options (`crate::handlers::KINDS`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    pub name: Spanned<String>,
    pub group: Spanned<String>,
    pub kind: Spanned<String>,
    pub delivery: Option<Spanned<String>>,
    pub max_attempts: Option<Spanned<i64>>,
    pub backoff: Option<Spanned<String>>,
    // throughput (handlers called once per event)
    pub concurrency: Option<Spanned<i64>>,
    pub rate: Option<Spanned<String>>,
}
