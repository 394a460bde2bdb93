//! The PostgreSQL backend: the application's database holds the records and
//! the store (django-spark's seen table, spark's own tables), and any number
//! of spark processes, on one machine or several, share it. Keys are
//! recorded race-free (`INSERT ... ON CONFLICT DO NOTHING RETURNING`), and
//! each process *claims* the deliveries it works on (`FOR UPDATE SKIP
//! LOCKED`, then a lease it renews while it works; see `store.rs`).
//!
//! Connections use the synchronous `postgres` client, with TLS through
//! rustls as `sslmode` asks (see `connect`). Records are streamed through a
//! cursor (a portal) in a read-only, repeatable-read transaction, fetched
//! `FETCH_ROWS` at a time.
//!
//! Not here: what the pipeline does with records and the store.

pub mod notify;
pub mod privileges;
pub mod schema;
pub mod store;
pub mod values;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use postgres::{Client, IsolationLevel, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::backend::quote_ident;
use crate::config::{PgConfig, SslMode};
use crate::error::{Error, Result};
use crate::records::{Bound, Record, RecordSet, Since};
use crate::store::driver::{Driver, Executor, RunGuard};
use crate::store::{Column, Delivery, EventQuery, Reader, SeenEvent, SeenTable};
use crate::store::{CursorState, DeliveryRow, KeyLimits, Notifier};

pub use store::PgExecutor;

/// Rows fetched from a cursor at a time.
const FETCH_ROWS: i32 = 2000;

/// The database's clock, in Unix milliseconds (leases are measured by it,
/// so that workers on machines whose clocks differ agree).
pub(crate) const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The columns `store::delivery_row` reads, in its order.
pub(crate) const DELIVERY_COLUMNS: &str = "id, handler, keys, done, state, attempts, next_attempt_at, \
     last_error, file_offset, created_at, file_id, \
     CASE WHEN lease_until >= (extract(epoch from clock_timestamp()) * 1000)::bigint THEN claimed_by END, \
     lease_until";

/// A PostgreSQL error in a sentence: the server's message (with its detail
/// and hint), or what went wrong on the way.
pub fn message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Opens a connection to the database the config names. An unreachable
/// server, a refused login or a missing database is `Error::Connect`,
/// naming user, host, port and database (never the password).
pub fn connect(pg: &PgConfig) -> Result<Client> {
    let fail = |error: String| Error::Connect {
        target: pg.describe(),
        error,
    };
    let mut config = postgres::Config::new();
    for host in &pg.hosts {
        config.host(host);
    }
    if let Some(addr) = &pg.hostaddr {
        let ip = addr
            .parse()
            .map_err(|_| fail(format!("hostaddr {addr:?} is not an IP address")))?;
        config.hostaddr(ip);
    }
    config
        .port(pg.port)
        .user(&pg.user)
        .dbname(&pg.dbname)
        .application_name(&pg.application_name)
        .keepalives(true);
    if let Some(password) = &pg.password {
        config.password(password);
    }
    if let Some(timeout) = pg.connect_timeout {
        config.connect_timeout(timeout);
    }
    // As libpq: TLS is not used over Unix sockets.
    let socket = pg.hosts.iter().all(|h| h.starts_with('/'));
    let mode = if socket { SslMode::Disable } else { pg.sslmode };
    config.ssl_mode(match mode {
        SslMode::Disable => postgres::config::SslMode::Disable,
        SslMode::Prefer => postgres::config::SslMode::Prefer,
        _ => postgres::config::SslMode::Require,
    });
    let client = if mode == SslMode::Disable {
        config.connect(NoTls)
    } else {
        config.connect(tls(pg, mode).map_err(fail)?)
    };
    client.map_err(|e| fail(message(&e)))
}

/// The rustls connector for `mode`: prefer and require encrypt without
/// checking the server's certificate (as libpq does), verify-ca checks it
/// against the trusted roots, verify-full also checks the host name. The
/// roots: `sslrootcert` (a PEM file), else `~/.postgresql/root.crt` if it
/// exists, else the Mozilla roots (webpki-roots).
fn tls(pg: &PgConfig, mode: SslMode) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(pg)?);
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("TLS: {e}"))?;
            if mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                    .with_no_client_auth()
            }
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn roots(pg: &PgConfig) -> Result<RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let home_root = std::env::var_os("HOME")
        .map(|h| std::path::PathBuf::from(h).join(".postgresql/root.crt"))
        .filter(|p| p.exists());
    let file = pg.sslrootcert.clone().or(home_root);
    let mut store = RootCertStore::empty();
    match file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if store.is_empty() {
                return Err(format!(
                    "sslrootcert {}: no certificate in it",
                    path.display()
                ));
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// sslmode prefer/require: encrypted, the certificate not checked (libpq's
/// meaning; verify-ca or verify-full check it). The handshake's signatures
/// are still verified.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// sslmode verify-ca: the certificate checked against the roots, the host
/// name not.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A PostgreSQL database as `[database] url` names it.
pub struct PgDriver {
    pg: PgConfig,
    seen_table: String,
}

impl PgDriver {
    pub fn new(pg: &PgConfig, seen_table: &str) -> PgDriver {
        PgDriver {
            pg: pg.clone(),
            seen_table: seen_table.to_owned(),
        }
    }
}

impl Driver for PgDriver {
    fn name(&self) -> String {
        self.pg.describe()
    }

    fn reader(&self) -> Result<Box<dyn Reader>> {
        Ok(Box::new(PgReader::open(&self.pg, &self.seen_table)?))
    }

    fn executor(&self) -> Result<Box<dyn Executor>> {
        Ok(Box::new(PgExecutor::open(&self.pg, &self.seen_table)?))
    }

    fn pending_sql(&self) -> Result<String> {
        let mut client = connect(&self.pg)?;
        let fail = store_err(&self.pg.describe(), "reading spark's schema version");
        let found = schema::version(&mut client).map_err(&fail)?;
        let seen = schema::table_exists(&mut client, &self.seen_table).map_err(&fail)?;
        Ok(schema::pending_sql(&self.seen_table, seen, found))
    }

    fn grants(&self, role: &str, tables: &[String], queries: bool) -> Option<String> {
        Some(privileges::grants(&self.seen_table, role, tables, queries))
    }

    fn guard(&self, _wait: std::time::Duration) -> Result<RunGuard> {
        // Processes share the store by claims.
        Ok(RunGuard::none())
    }

    fn notifier(&self) -> Result<Option<Box<dyn Notifier>>> {
        Ok(match &self.pg.listen {
            None => None,
            Some(channel) => Some(Box::new(notify::Listener::open(&self.pg, channel)?)),
        })
    }
}

/// A read-only connection.
pub struct PgReader {
    client: Client,
    name: String,
    seen_table: String,
}

impl PgReader {
    pub fn open(pg: &PgConfig, seen_table: &str) -> Result<PgReader> {
        Ok(PgReader {
            client: connect(pg)?,
            name: pg.describe(),
            seen_table: seen_table.to_owned(),
        })
    }

    fn err(&self, action: &str) -> impl Fn(postgres::Error) -> Error + use<> {
        store_err(&self.name, action)
    }

    fn seen_exists(&mut self) -> Result<bool> {
        let table = self.seen_table.clone();
        schema::table_exists(&mut self.client, &table).map_err(self.err("looking up a table"))
    }
}

/// `Error::Store` for a failed statement, for `map_err`.
pub(crate) fn store_err(database: &str, action: &str) -> impl Fn(postgres::Error) -> Error + use<> {
    let (database, action) = (database.to_owned(), action.to_owned());
    move |e| Error::Store {
        database: database.clone(),
        action: action.clone(),
        error: message(&e),
    }
}

/// Every delivery not finished yet, oldest first.
pub(crate) fn all_deliveries(
    client: &mut impl postgres::GenericClient,
) -> std::result::Result<Vec<DeliveryRow>, postgres::Error> {
    if !schema::table_exists(client, "spark_delivery")? {
        return Ok(Vec::new());
    }
    let rows = client.query(
        &format!("SELECT {DELIVERY_COLUMNS} FROM spark_delivery ORDER BY id"),
        &[],
    )?;
    rows.iter().map(store::delivery_row).collect()
}

/// `created_at` as UTC text in Django's format, as the SQLite store keeps it.
pub(crate) const CREATED_AT_TEXT: &str =
    "to_char(\"created_at\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')";

impl Reader for PgReader {
    fn name(&self) -> &str {
        &self.name
    }

    fn table_exists(&mut self, table: &str) -> Result<bool> {
        schema::table_exists(&mut self.client, table).map_err(self.err("looking up a table"))
    }

    fn columns(&mut self, records: &RecordSet) -> std::result::Result<Vec<Column>, String> {
        let sql = records.sql_quoted(super::quote_ident);
        let stmt = self.client.prepare(&sql).map_err(|e| message(&e))?;
        Ok(stmt
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_owned(),
                declared: Some(c.type_().name().to_owned()),
                affinity: values::affinity(c.type_()),
            })
            .collect())
    }

    fn scan(
        &mut self,
        records: &RecordSet,
        since: Option<&Since>,
        each: &mut dyn FnMut(&Record) -> ControlFlow<()>,
    ) -> std::result::Result<(), String> {
        let mut tx = self
            .client
            .build_transaction()
            .read_only(true)
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .map_err(|e| message(&e))?;
        let sql = match since {
            None => records.sql_quoted(super::quote_ident),
            Some(since) => records.sql_since(super::quote_ident, since, &Bound::literal),
        };
        let stmt = tx.prepare(&sql).map_err(|e| message(&e))?;
        let columns: Arc<[String]> = stmt
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect::<Vec<_>>()
            .into();
        let types: Vec<postgres::types::Type> =
            stmt.columns().iter().map(|c| c.type_().clone()).collect();
        let portal = tx.bind(&stmt, &[]).map_err(|e| message(&e))?;
        let mut record = Record::with_columns(columns);
        'fetching: loop {
            let rows = tx
                .query_portal(&portal, FETCH_ROWS)
                .map_err(|e| message(&e))?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                record.reset();
                for (i, ty) in types.iter().enumerate() {
                    let raw: values::Raw<'_> = row.try_get(i).map_err(|e| message(&e))?;
                    match values::decode(ty, raw.0) {
                        Ok(value) => record.push(Ok(value)),
                        Err(Ok(lossy)) => record.push(Err(lossy)),
                        // One value spark cannot read makes one bad record;
                        // the other records go on.
                        Err(Err(problem)) => {
                            let column = record.columns().get(i).cloned().unwrap_or_default();
                            record.set_defect(crate::records::RecordError::new(&column, problem));
                            record.push(Ok(serde_json::Value::Null));
                        }
                    }
                }
                if each(&record).is_break() {
                    break 'fetching;
                }
            }
        }
        // Read-only: nothing to keep.
        let _ = tx.rollback();
        Ok(())
    }

    fn seen_table(&mut self) -> Result<SeenTable> {
        let table = self.seen_table.clone();
        let found = schema::check_seen_table(&mut self.client, &table).map_err(|problem| {
            Error::BadSeenTable {
                table: table.clone(),
                database: self.name.clone(),
                problem,
            }
        })?;
        Ok(match found {
            None => SeenTable {
                exists: false,
                limits: KeyLimits::DJANGO,
            },
            Some(limits) => SeenTable {
                exists: true,
                limits,
            },
        })
    }

    fn notifies(&mut self, channel: &str) -> Result<Option<bool>> {
        self.client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                 JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
                 WHERE NOT t.tgisinternal AND p.prosrc ILIKE '%notify%' \
                   AND position(lower($1) in lower(p.prosrc)) > 0)",
                &[&channel],
            )
            .and_then(|r| r.try_get(0))
            .map(Some)
            .map_err(self.err("looking up triggers"))
    }

    fn cursors(&mut self) -> Result<Vec<CursorState>> {
        if !schema::table_exists(&mut self.client, "spark_cursor")
            .map_err(self.err("looking up a table"))?
        {
            return Ok(Vec::new());
        }
        let fail = self.err("reading sources' high-water marks");
        self.client
            .query(
                "SELECT source, fingerprint, mark, full_at, full_as_of FROM spark_cursor",
                &[],
            )
            .map_err(&fail)?
            .iter()
            .map(|r| {
                Ok(CursorState {
                    source: r.try_get(0)?,
                    fingerprint: r.try_get(1)?,
                    mark: r.try_get(2)?,
                    full_at: r.try_get(3)?,
                    full_as_of: r.try_get(4)?,
                })
            })
            .collect::<std::result::Result<_, postgres::Error>>()
            .map_err(&fail)
    }

    fn indexed(&mut self, table: &str, column: &str) -> Result<Option<bool>> {
        let found = self.client.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
             WHERE c.relname = $1 AND n.nspname = ANY (current_schemas(false)) AND a.attname = $2)",
            &[&table, &column],
        );
        Ok(found.and_then(|r| r.try_get(0)).ok())
    }

    fn missing_privileges(&mut self) -> Result<Vec<String>> {
        let table = self.seen_table.clone();
        privileges::missing(&mut self.client, &table).map_err(self.err("checking privileges"))
    }

    fn seen_is_empty(&mut self) -> Result<bool> {
        if !self.seen_exists()? {
            return Ok(true);
        }
        let sql = format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {})",
            quote_ident(&self.seen_table)
        );
        self.client
            .query_one(&sql, &[])
            .and_then(|r| r.try_get(0))
            .map_err(self.err("reading the seen table"))
    }

    fn count_events(&mut self) -> Result<u64> {
        if !self.seen_exists()? {
            return Ok(0);
        }
        let sql = format!("SELECT count(*) FROM {}", quote_ident(&self.seen_table));
        let n: i64 = self
            .client
            .query_one(&sql, &[])
            .and_then(|r| r.try_get(0))
            .map_err(self.err("counting seen events"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn seen_among(&mut self, keys: &[String]) -> Result<HashSet<String>> {
        if keys.is_empty() || !self.seen_exists()? {
            return Ok(HashSet::new());
        }
        let sql = format!(
            "SELECT \"key\"::text FROM {} WHERE \"key\" = ANY($1)",
            quote_ident(&self.seen_table)
        );
        let fail = self.err("reading the seen table");
        let mut tx = self.client.transaction().map_err(&fail)?;
        tx.batch_execute(&store::LOOKUP_COSTS.replace("SET ", "SET LOCAL "))
            .map_err(&fail)?;
        let rows = tx.query(&sql, &[&keys]).map_err(&fail)?;
        let _ = tx.rollback();
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(&fail)
    }

    fn list_events(
        &mut self,
        query: &EventQuery,
        each: &mut dyn FnMut(SeenEvent),
    ) -> Result<usize> {
        if !self.seen_exists()? {
            return Ok(0);
        }
        let mut sql = format!(
            "SELECT \"key\"::text, \"group\"::text, {CREATED_AT_TEXT}, \"context\"::text FROM {} \
             WHERE ($1::text IS NULL OR left(\"key\", length($1)) = $1) \
               AND ($2::text IS NULL OR \"created_at\" >= ($2 || ' 00:00:00+00')::timestamptz) \
               AND ($3::text IS NULL OR \"created_at\" < ($3 || ' 00:00:00+00')::timestamptz) \
               AND ($4::text IS NULL OR strpos(\"key\"::text, $4) > 0 \
                    OR strpos(\"context\"::text, $4) > 0) \
             ORDER BY \"created_at\" DESC, \"key\"",
            quote_ident(&self.seen_table)
        );
        if let Some(limit) = query.pushed_limit() {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let fail = self.err("listing seen events");
        let mut tx = self
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .map_err(&fail)?;
        let stmt = tx.prepare(&sql).map_err(&fail)?;
        let portal = tx
            .bind(
                &stmt,
                &[&query.key_prefix, &query.since, &query.until, &query.text],
            )
            .map_err(&fail)?;
        let mut listed = 0;
        let mut matched = 0;
        'fetching: loop {
            let rows = tx.query_portal(&portal, FETCH_ROWS).map_err(&fail)?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let group: String = row.try_get(1).map_err(&fail)?;
                match query.take(&group, &mut matched) {
                    std::ops::ControlFlow::Break(()) => break 'fetching,
                    std::ops::ControlFlow::Continue(false) => continue,
                    std::ops::ControlFlow::Continue(true) => {}
                }
                each(SeenEvent::from_stored(
                    row.try_get(0).map_err(&fail)?,
                    group,
                    row.try_get(2).map_err(&fail)?,
                    context_text(&row, 3).map_err(&fail)?,
                ));
                listed += 1;
            }
        }
        let _ = tx.rollback();
        Ok(listed)
    }

    fn seen_event(&mut self, key: &str) -> Result<Option<SeenEvent>> {
        if !self.seen_exists()? {
            return Ok(None);
        }
        let sql = format!(
            "SELECT \"group\"::text, {CREATED_AT_TEXT}, \"context\"::text FROM {} WHERE \"key\" = $1",
            quote_ident(&self.seen_table)
        );
        let fail = self.err("reading a seen event");
        let Some(r) = self.client.query_opt(&sql, &[&key]).map_err(&fail)? else {
            return Ok(None);
        };
        Ok(Some(SeenEvent::from_stored(
            key.to_owned(),
            r.try_get(0).map_err(&fail)?,
            r.try_get(1).map_err(&fail)?,
            context_text(&r, 2).map_err(&fail)?,
        )))
    }

    fn deliveries(&mut self) -> Result<Vec<Delivery>> {
        let rows = all_deliveries(&mut self.client).map_err(self.err("listing deliveries"))?;
        DeliveryRow::decode_all(rows, &self.name)
    }

    fn history(
        &mut self,
        query: &crate::store::HistoryQuery,
    ) -> Result<Vec<crate::store::HistoryEntry>> {
        if !schema::table_exists(&mut self.client, "spark_history")
            .map_err(self.err("looking up a table"))?
        {
            return Ok(Vec::new());
        }
        history(&mut self.client, query).map_err(self.err("reading the delivery history"))
    }

    fn attempts_per_hour(&mut self, since: &str) -> Result<Vec<(String, String, u64)>> {
        if !schema::table_exists(&mut self.client, "spark_history")
            .map_err(self.err("looking up a table"))?
        {
            return Ok(Vec::new());
        }
        let fail = self.err("counting the delivery history");
        let rows = self
            .client
            .query(
                "SELECT left(at, 13), outcome, count(*) FROM spark_history \
                 WHERE at >= $1 AND outcome IN ('delivered', 'failed', 'dead') GROUP BY 1, 2",
                &[&since],
            )
            .map_err(&fail)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<_, String>(0).map_err(&fail)?,
                    r.try_get::<_, String>(1).map_err(&fail)?,
                    u64::try_from(r.try_get::<_, i64>(2).map_err(&fail)?).unwrap_or(0),
                ))
            })
            .collect()
    }

    fn count_due(&mut self, now_ms: i64) -> Result<u64> {
        if !schema::table_exists(&mut self.client, "spark_delivery")
            .map_err(self.err("looking up a table"))?
        {
            return Ok(0);
        }
        let n: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM spark_delivery \
                 WHERE state = 'pending' OR (state = 'failed' AND next_attempt_at <= $1)",
                &[&now_ms],
            )
            .and_then(|r| r.try_get(0))
            .map_err(self.err("counting due deliveries"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// A seen event's context as text, selected as `"context"::text`: NULL (a
/// seen table not made by Django's migration) reads as an empty context.
pub(crate) fn context_text(
    row: &postgres::Row,
    i: usize,
) -> std::result::Result<String, postgres::Error> {
    Ok(row
        .try_get::<_, Option<String>>(i)?
        .unwrap_or_else(|| "{}".to_owned()))
}

/// The history entries `query` selects, newest first.
pub(crate) fn history(
    client: &mut impl postgres::GenericClient,
    query: &crate::store::HistoryQuery,
) -> std::result::Result<Vec<crate::store::HistoryEntry>, postgres::Error> {
    let limit = query.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let rows = client.query(
        "SELECT key, handler, at, outcome, attempt, ms, error, by_whom FROM spark_history \
         WHERE (cardinality($1::text[]) = 0 OR outcome = ANY($1)) \
         AND ($2::text IS NULL OR handler = $2) \
         AND (cardinality($3::text[]) = 0 OR key = ANY($3)) \
         ORDER BY at DESC, id DESC LIMIT $4",
        &[&query.outcomes, &query.handler, &query.keys, &limit],
    )?;
    rows.iter()
        .map(|r| {
            Ok(crate::store::HistoryEntry {
                key: r.try_get(0)?,
                handler: r.try_get(1)?,
                at: r.try_get(2)?,
                outcome: r.try_get(3)?,
                attempt: u32::try_from(r.try_get::<_, i32>(4)?).unwrap_or(0),
                ms: r.try_get(5)?,
                error: r.try_get(6)?,
                by: r.try_get(7)?,
            })
        })
        .collect()
}
