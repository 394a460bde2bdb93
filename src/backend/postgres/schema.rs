//! spark's tables in a PostgreSQL database: the seen table (exactly the DDL
//! Django's migrations emit for django-spark's `Event` on PostgreSQL, created
//! only when missing) and spark's own tables, created and upgraded by an
//! append-only list of migrations tracked in `spark_meta`.
//!
//! Every statement is run only when needed (the version says so, or the
//! table is missing), so a role without CREATE works against tables a DBA
//! made from `spark migrate --print-sql`. Migrations take a transaction-level
//! advisory lock, so that workers starting together migrate once.
//!
//! Not here: reading or writing events and deliveries (`store.rs`).

use postgres::GenericClient;

use crate::backend::quote_ident;

/// spark's own schema on PostgreSQL, one step per release that changed it.
/// Never edit or remove a released step; append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: deliveries (see store/mod.rs for the model), with the claims of the
    // workers sharing them: who holds one, until when (Unix ms, the
    // database's clock), and the host of a file sink's deliveries.
    "CREATE TABLE spark_delivery (
        id bigserial PRIMARY KEY,
        handler text NOT NULL,
        keys text NOT NULL,
        done integer NOT NULL DEFAULT 0,
        state text NOT NULL DEFAULT 'pending',
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at bigint NOT NULL DEFAULT 0,
        last_error text,
        file_offset bigint,
        file_id text,
        host text,
        claimed_by text,
        lease_until bigint,
        created_at text NOT NULL,
        updated_at text NOT NULL
    );
    CREATE INDEX spark_delivery_due ON spark_delivery (state, next_attempt_at);",
    // 2: the delivery history (store/history.rs).
    "CREATE TABLE spark_history (
        id bigserial PRIMARY KEY,
        key text NOT NULL,
        handler text NOT NULL,
        at text NOT NULL,
        outcome text NOT NULL,
        attempt integer NOT NULL DEFAULT 0,
        ms bigint,
        error text,
        by_whom text
    );
    CREATE INDEX spark_history_key ON spark_history (key);
    CREATE INDEX spark_history_at ON spark_history (at);",
    // 3: the high-water marks of sources with a cursor (see crate::cursor).
    "CREATE TABLE spark_cursor (
        source text PRIMARY KEY,
        fingerprint text NOT NULL,
        mark text,
        full_at bigint NOT NULL,
        full_as_of text NOT NULL
    );",
];

/// The key of the advisory lock migrations take.
const MIGRATION_LOCK: i64 = 0x5350_4152_4b01; // "SPARK" 1

/// The seen table's DDL: exactly what Django emits for django-spark's `Event`
/// (migrations 0001 and 0002) on PostgreSQL, so that both tools can share it.
pub fn seen_table_ddl(table: &str) -> String {
    let (key_like, group, group_like) = if table == crate::config::DEFAULT_SEEN_TABLE {
        (
            "spark_event_key_2f7c6e69_like".to_owned(),
            "spark_event_group_95029792".to_owned(),
            "spark_event_group_95029792_like".to_owned(),
        )
    } else {
        (
            format!("{table}_key_like"),
            format!("{table}_group"),
            format!("{table}_group_like"),
        )
    };
    let t = quote_ident(table);
    format!(
        "CREATE TABLE {t} (\"key\" varchar(100) NOT NULL PRIMARY KEY, \"group\" varchar(50) NOT NULL, \
         \"created_at\" timestamp with time zone NOT NULL, \"context\" text NOT NULL);\n\
         CREATE INDEX {} ON {t} (\"key\" varchar_pattern_ops);\n\
         CREATE INDEX {} ON {t} (\"group\");\n\
         CREATE INDEX {} ON {t} (\"group\" varchar_pattern_ops);",
        quote_ident(&key_like),
        quote_ident(&group),
        quote_ident(&group_like),
    )
}

/// The DDL that brings a database at `version` (0: none) up to date,
/// creating the seen table if `seen_exists` is false: what
/// `spark migrate --print-sql` prints for a DBA.
pub fn pending_sql(seen_table: &str, seen_exists: bool, version: i64) -> String {
    crate::store::pending_sql(
        (!seen_exists).then(|| seen_table_ddl(seen_table)),
        "CREATE TABLE spark_meta (name text PRIMARY KEY, value text NOT NULL);",
        MIGRATIONS,
        version,
        &|known| {
            format!(
                "INSERT INTO spark_meta (name, value) VALUES ('schema_version', '{known}') \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value;"
            )
        },
    )
}

/// Whether a table of that name is visible in the search path.
pub fn table_exists(client: &mut impl GenericClient, name: &str) -> Result<bool, postgres::Error> {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = $1 AND c.relkind IN ('r', 'v', 'm', 'p', 'f') \
             AND n.nspname = ANY (current_schemas(false)))",
            &[&name],
        )
        .and_then(|row| row.try_get(0))
}

/// The schema version spark last left in this database (0: none yet).
pub fn version(client: &mut impl GenericClient) -> Result<i64, postgres::Error> {
    if !table_exists(client, "spark_meta")? {
        return Ok(0);
    }
    let row = client.query_opt(
        "SELECT value FROM spark_meta WHERE name = 'schema_version'",
        &[],
    )?;
    Ok(row
        .and_then(|r| r.try_get::<_, String>(0).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Why the schema cannot be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "its spark schema is version {found}, newer than this spark knows ({known}); use a newer spark"
    )]
    TooNew { found: i64, known: i64 },
    #[error("{}", super::message(.0))]
    Sql(#[from] postgres::Error),
}

/// Creates the seen table if missing and applies the migrations this
/// database lacks, in one transaction; does nothing (and needs no CREATE
/// privilege) when all is there.
pub fn migrate(client: &mut postgres::Client, seen_table: &str) -> Result<(), MigrateError> {
    let known = MIGRATIONS.len() as i64;
    let up_to_date = |c: &mut postgres::Client| -> Result<bool, MigrateError> {
        let found = version(c)?;
        if found > known {
            return Err(MigrateError::TooNew { found, known });
        }
        Ok(found == known && table_exists(c, seen_table)?)
    };
    if up_to_date(client)? {
        return Ok(());
    }
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    // Another worker may have migrated while this one waited for the lock.
    let found = version(&mut tx)?;
    if found > known {
        return Err(MigrateError::TooNew { found, known });
    }
    let seen_exists = table_exists(&mut tx, seen_table)?;
    if found < known || !seen_exists {
        tx.batch_execute(
            &pending_sql(seen_table, seen_exists, found)
                .replace("BEGIN;\n", "")
                .replace("COMMIT;\n", ""),
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Checks that an existing seen table can serve as the store: the four
/// columns, and `key` unique. `Ok(None)` when the table does not exist;
/// otherwise the lengths `key` and `group` declare (characters).
pub fn check_seen_table(
    client: &mut impl GenericClient,
    table: &str,
) -> Result<Option<crate::store::KeyLimits>, String> {
    let sql_err = |e: postgres::Error| super::message(&e);
    let rows = client
        .query(
            "SELECT a.attname::text, CASE WHEN a.atttypmod > 4 AND t.typname IN ('varchar', 'bpchar') \
                 THEN a.atttypmod - 4 END, t.typname::text \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             WHERE c.relname = $1 AND n.nspname = ANY (current_schemas(false)) \
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table],
        )
        .map_err(sql_err)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let columns: Vec<(String, Option<i32>, String)> = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, postgres::Error>>()
        .map_err(sql_err)?;
    // The types spark reads and writes these columns as (Django makes
    // varchar, varchar, timestamptz and text).
    const TEXT: &[&str] = &["text", "varchar", "bpchar", "citext"];
    const MOMENT: &[&str] = &["timestamptz", "timestamp"];
    for (needed, types) in [
        ("key", TEXT),
        ("group", TEXT),
        ("created_at", MOMENT),
        ("context", TEXT),
    ] {
        let Some((_, _, ty)) = columns.iter().find(|(c, _, _)| c == needed) else {
            let have: Vec<&str> = columns.iter().map(|(c, _, _)| c.as_str()).collect();
            return Err(format!(
                "column `{needed}` is missing (it has: {}); it must have django-spark's columns key, group, created_at, context",
                have.join(", ")
            ));
        };
        if !types.contains(&ty.as_str()) {
            let fix = if needed == "context" {
                format!(
                    "; spark writes contexts as JSON text, as django-spark's migration makes the column \
                     (ALTER TABLE {table} ALTER COLUMN context TYPE text USING context::text)"
                )
            } else {
                String::new()
            };
            return Err(format!(
                "column `{needed}` is of type {ty}, not one of {}{fix}",
                types.join(", ")
            ));
        }
    }
    let unique = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
             WHERE c.relname = $1 AND n.nspname = ANY (current_schemas(false)) \
               AND i.indisunique AND i.indnatts = 1 AND a.attname = 'key')",
            &[&table],
        )
        .map_err(sql_err)?
        .try_get::<_, bool>(0)
        .map_err(sql_err)?;
    if !unique {
        return Err("column `key` is not unique (no primary key or unique index on it alone), so seen keys could repeat".into());
    }
    let length = |name: &str| {
        columns
            .iter()
            .find(|(c, _, _)| c == name)
            .and_then(|(_, n, _)| *n)
            .and_then(|n| usize::try_from(n).ok())
    };
    Ok(Some(crate::store::KeyLimits {
        key: length("key"),
        group: length("group"),
    }))
}
