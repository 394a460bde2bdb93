//! spark's tables in the records database: the seen table (django-spark's
//! schema, created only when missing) and spark's own tables, created and
//! upgraded by an append-only list of migrations.
//!
//! The schema version lives in spark's own `spark_meta` table rather than in
//! `PRAGMA user_version`: the database belongs to the application, and its
//! `user_version` may already mean something to it.
//!
//! Not here: reading or writing events and deliveries (`store.rs`).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::backend::quote_ident;

/// spark's own schema, one step per release that changed it. Never edit or
/// remove a released step; append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: deliveries (see store/mod.rs for the model).
    "CREATE TABLE spark_delivery (
        id INTEGER PRIMARY KEY,
        handler TEXT NOT NULL,
        keys TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        file_offset INTEGER,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX spark_delivery_state ON spark_delivery (state, next_attempt_at);",
    // 2: the identity (device:inode) of the file a file-sink delivery
    // writes to, so that recovery never cuts another file.
    "ALTER TABLE spark_delivery ADD COLUMN file_id TEXT;",
    // 3: the delivery history (store/history.rs).
    "CREATE TABLE spark_history (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        handler TEXT NOT NULL,
        at TEXT NOT NULL,
        outcome TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        ms INTEGER,
        error TEXT,
        by_whom TEXT
    );
    CREATE INDEX spark_history_key ON spark_history (key);
    CREATE INDEX spark_history_at ON spark_history (at);",
    // 4: the high-water marks of sources with a cursor (see crate::cursor).
    "CREATE TABLE spark_cursor (
        source TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        mark TEXT,
        full_at INTEGER NOT NULL,
        full_as_of TEXT NOT NULL
    );",
];

/// The seen table's DDL: exactly what Django emits for django-spark's `Event`
/// (migrations 0001 and 0002), so that both tools can share the table.
pub fn seen_table_ddl(table: &str) -> String {
    let index = if table == crate::config::DEFAULT_SEEN_TABLE {
        "spark_event_group_95029792".to_owned()
    } else {
        format!("{table}_group")
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (\"key\" varchar(100) NOT NULL PRIMARY KEY, \
         \"group\" varchar(50) NOT NULL, \"created_at\" datetime NOT NULL, \"context\" text NOT NULL);\n\
         CREATE INDEX IF NOT EXISTS {i} ON {t} (\"group\");",
        t = quote_ident(table),
        i = quote_ident(&index),
    )
}

/// The SQL that brings a database at `version` (0: none) up to date,
/// creating the seen table if `seen_exists` is false: what
/// `spark migrate --print-sql` prints.
pub fn pending_sql(seen_table: &str, seen_exists: bool, version: i64) -> String {
    crate::store::pending_sql(
        (!seen_exists).then(|| seen_table_ddl(seen_table).replace("IF NOT EXISTS ", "")),
        "CREATE TABLE IF NOT EXISTS spark_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
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

/// Whether the database has a table of that name.
pub fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )
}

/// The schema version spark last left in this database (0: none yet).
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    if !table_exists(conn, "spark_meta")? {
        return Ok(0);
    }
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM spark_meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Why the schema cannot be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "its spark schema is version {found}, newer than this spark knows ({known}); use a newer spark"
    )]
    TooNew { found: i64, known: i64 },
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
}

/// Creates the seen table if missing and applies the migrations this
/// database lacks, in one exclusive transaction.
pub fn migrate(conn: &mut Connection, seen_table: &str) -> Result<(), MigrateError> {
    let known = MIGRATIONS.len() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let found = version(&tx)?;
    if found > known {
        return Err(MigrateError::TooNew { found, known });
    }
    tx.execute_batch(&seen_table_ddl(seen_table))?;
    if found < known {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS spark_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )?;
        for step in &MIGRATIONS[found as usize..] {
            tx.execute_batch(step)?;
        }
        tx.execute(
            "INSERT INTO spark_meta (name, value) VALUES ('schema_version', ?1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [known.to_string()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Checks that an existing seen table can serve as the store: the four
/// columns, and `key` unique. `Ok(false)` when the table does not exist.
pub fn check_seen_table(conn: &Connection, table: &str) -> Result<bool, String> {
    let sql_err = |e: rusqlite::Error| e.to_string();
    let mut stmt = conn
        .prepare("SELECT name, pk FROM pragma_table_info(?1)")
        .map_err(sql_err)?;
    let columns: Vec<(String, i64)> = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql_err)?
        .collect::<Result<_, _>>()
        .map_err(sql_err)?;
    if columns.is_empty() {
        return Ok(false);
    }
    for needed in ["key", "group", "created_at", "context"] {
        if !columns.iter().any(|(c, _)| c == needed) {
            let have: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
            return Err(format!(
                "column `{needed}` is missing (it has: {}); it must have django-spark's columns key, group, created_at, context",
                have.join(", ")
            ));
        }
    }
    let pk: Vec<&str> = columns
        .iter()
        .filter(|(_, pk)| *pk > 0)
        .map(|(c, _)| c.as_str())
        .collect();
    if pk == ["key"] {
        return Ok(true);
    }
    let mut stmt = conn
        .prepare(
            "SELECT il.name FROM pragma_index_list(?1) AS il
             WHERE il.\"unique\" AND (SELECT group_concat(ii.name) FROM pragma_index_info(il.name) AS ii) = 'key'",
        )
        .map_err(sql_err)?;
    if stmt.exists([table]).map_err(sql_err)? {
        Ok(true)
    } else {
        Err("column `key` is not unique (no primary key or unique index on it alone), so seen keys could repeat".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_is_idempotent_and_versioned() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "spark_event").unwrap();
        migrate(&mut conn, "spark_event").unwrap();
        assert_eq!(version(&conn).unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(check_seen_table(&conn, "spark_event"), Ok(true));
        assert_eq!(check_seen_table(&conn, "nope"), Ok(false));
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "spark_event").unwrap();
        conn.execute(
            "UPDATE spark_meta SET value = '999' WHERE name = 'schema_version'",
            [],
        )
        .unwrap();
        assert!(matches!(
            migrate(&mut conn, "spark_event"),
            Err(MigrateError::TooNew { found: 999, .. })
        ));
    }

    #[test]
    fn seen_table_without_unique_key_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE ev (key TEXT, \"group\" TEXT, created_at TEXT, context TEXT)",
        )
        .unwrap();
        let err = check_seen_table(&conn, "ev").unwrap_err();
        assert!(err.contains("not unique"), "{err}");
        conn.execute_batch("CREATE UNIQUE INDEX ev_key ON ev (key)")
            .unwrap();
        assert_eq!(check_seen_table(&conn, "ev"), Ok(true));
        conn.execute_batch("CREATE TABLE bad (key TEXT PRIMARY KEY, created_at TEXT)")
            .unwrap();
        assert!(
            check_seen_table(&conn, "bad")
                .unwrap_err()
                .contains("`group`")
        );
    }
}
