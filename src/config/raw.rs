//! The config file as written: plain serde structs that mirror the TOML, with
//! spans so that validation errors can point at a line. Unknown keys are
//! rejected here; meaning is checked in `config::validate`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub database: Spanned<RawDatabase>,
    #[serde(default)]
    pub delivery: Option<Spanned<RawDelivery>>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub variable: Spanned<String>,
    pub op: Spanned<String>,
    pub value: Spanned<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandler {
    pub name: Spanned<String>,
    pub group: Spanned<String>,
    pub kind: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<String>>>,
    /// A command's environment additions.
    pub env: Option<Spanned<BTreeMap<String, String>>>,
    /// The mode of the files a jsonl or outbox handler creates ("0600").
    pub mode: Option<Spanned<String>>,
    pub function: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub delivery: Option<Spanned<String>>,
    pub max_attempts: Option<Spanned<i64>>,
    pub backoff: Option<Spanned<String>>,
    // webhook
    pub url: Option<Spanned<String>>,
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub header_env: Option<Spanned<BTreeMap<String, String>>>,
    pub signing_secret_env: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    /// A webhook's HTTP method (POST, PUT, PATCH).
    pub method: Option<Spanned<String>>,
    /// A webhook body's content type.
    pub content_type: Option<Spanned<String>>,
    // templates (mail, webhook)
    pub strict_templates: Option<Spanned<bool>>,
    // mail
    pub html: Option<Spanned<String>>,
    pub templates: Option<Spanned<RawTemplates>>,
    pub from: Option<Spanned<String>>,
    pub to: Option<Spanned<OneOrMany>>,
    pub cc: Option<Spanned<OneOrMany>>,
    pub bcc: Option<Spanned<OneOrMany>>,
    pub reply_to: Option<Spanned<OneOrMany>>,
    pub subject: Option<Spanned<String>>,
    pub body: Option<Spanned<String>>,
    pub transport: Option<Spanned<String>>,
    pub outbox: Option<Spanned<String>>,
    pub smtp_host: Option<Spanned<String>>,
    pub smtp_port: Option<Spanned<i64>>,
    pub smtp_security: Option<Spanned<String>>,
    pub smtp_user: Option<Spanned<String>>,
    pub smtp_password_env: Option<Spanned<String>>,
    pub smtp_pool: Option<Spanned<bool>>,
    pub smtp_ca_file: Option<Spanned<String>>,
    /// Send SMTP credentials over a connection without TLS to a relay that
    /// is not on loopback.
    pub smtp_allow_plaintext_auth: Option<Spanned<bool>>,
    /// The `spark_mail` keys honoured when `spark_mail` comes from the
    /// database (a column of a generator's records).
    pub spark_mail_from_records: Option<Spanned<Vec<String>>>,
    // throughput
    pub concurrency: Option<Spanned<i64>>,
    pub rate: Option<Spanned<String>>,
}

/// A mail handler's templates: a folder of `GROUP.txt` files, or inline.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawTemplates {
    Folder(String),
    Inline(BTreeMap<String, String>),
}

/// An address field: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}
