//! spark's tables in a MySQL or MariaDB database: the seen table (exactly
//! the DDL Django 3.2's MySQL backend emits for django-spark's `Event`,
//! migrations 0001 and 0002, created only when missing) and spark's own
//! tables (utf8mb4 with a binary collation: keys and handler names compare
//! exactly), created and upgraded by an append-only list of migrations
//! tracked in `spark_meta`.
//!
//! MySQL commits each DDL statement by itself, so a migration cannot be one
//! transaction: every step is idempotent (`IF NOT EXISTS`) and the version
//! is written last; workers starting together take a named lock
//! (`GET_LOCK`) and migrate once.
//!
//! Not here: reading or writing events and deliveries (`store.rs`).

use mysql::prelude::Queryable;

use crate::backend::mysql::quote;

/// spark's own schema on MySQL, one step per release that changed it.
/// Never edit or remove a released step; append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: deliveries (see store/mod.rs for the model), with the claims of the
    // workers sharing them.
    "CREATE TABLE IF NOT EXISTS `spark_delivery` (
        `id` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
        `handler` varchar(255) NOT NULL,
        `keys` longtext NOT NULL,
        `done` integer NOT NULL DEFAULT 0,
        `state` varchar(16) NOT NULL DEFAULT 'pending',
        `attempts` integer NOT NULL DEFAULT 0,
        `next_attempt_at` bigint NOT NULL DEFAULT 0,
        `last_error` longtext,
        `file_offset` bigint,
        `file_id` varchar(255),
        `host` varchar(255),
        `claimed_by` varchar(255),
        `lease_until` bigint,
        `created_at` varchar(32) NOT NULL,
        `updated_at` varchar(32) NOT NULL,
        KEY `spark_delivery_due` (`state`, `next_attempt_at`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;",
    // 2: the delivery history (store/history.rs).
    "CREATE TABLE IF NOT EXISTS `spark_history` (
        `id` bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
        `key` varchar(255) NOT NULL,
        `handler` varchar(255) NOT NULL,
        `at` varchar(32) NOT NULL,
        `outcome` varchar(32) NOT NULL,
        `attempt` integer NOT NULL DEFAULT 0,
        `ms` bigint,
        `error` longtext,
        `by_whom` varchar(255),
        KEY `spark_history_key` (`key`),
        KEY `spark_history_at` (`at`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;",
    // 3: the high-water marks of sources with a cursor (see crate::cursor).
    "CREATE TABLE IF NOT EXISTS `spark_cursor` (
        `source` varchar(255) NOT NULL PRIMARY KEY,
        `fingerprint` varchar(64) NOT NULL,
        `mark` varchar(255),
        `full_at` bigint NOT NULL,
        `full_as_of` varchar(32) NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;",
];

/// The named lock migrations take.
const MIGRATION_LOCK: &str = "spark_migrate";

/// The seen table's DDL: the table Django 3.2 makes for django-spark's
/// `Event` (0001 creates it with the group index, 0002 adds `context`), in
/// one statement: MySQL commits each DDL statement by itself, and a
/// worker starting beside this one must never see the table without its
/// `context`. `SHOW CREATE TABLE` shows the same table either way.
pub fn seen_table_ddl(table: &str) -> String {
    let index = if table == crate::config::DEFAULT_SEEN_TABLE {
        "spark_event_group_95029792".to_owned()
    } else {
        format!("{table}_group")
    };
    format!(
        "CREATE TABLE {} (`key` varchar(100) NOT NULL PRIMARY KEY, `group` varchar(50) NOT NULL, \
         `created_at` datetime(6) NOT NULL, `context` longtext NOT NULL, KEY {} (`group`));",
        quote(table),
        quote(&index),
    )
}

/// The DDL that brings a database at `version` (0: none) up to date,
/// creating the seen table if `seen_exists` is false: what `spark migrate
/// --print-sql` prints for a DBA. (`BEGIN`/`COMMIT` are there for the
/// other databases' sake: MySQL commits each statement of it alone.)
pub fn pending_sql(seen_table: &str, seen_exists: bool, version: i64) -> String {
    crate::store::pending_sql(
        (!seen_exists).then(|| seen_table_ddl(seen_table)),
        "CREATE TABLE IF NOT EXISTS `spark_meta` (`name` varchar(100) NOT NULL PRIMARY KEY, \
         `value` text NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;",
        MIGRATIONS,
        version,
        &|known| {
            format!(
                "INSERT INTO `spark_meta` (`name`, `value`) VALUES ('schema_version', '{known}') \
                 ON DUPLICATE KEY UPDATE `value` = VALUES(`value`);"
            )
        },
    )
}

/// Whether a table or view of that name is in the connection's database.
pub fn table_exists(conn: &mut impl Queryable, name: &str) -> Result<bool, mysql::Error> {
    let n: Option<i64> = conn.exec_first(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (name,),
    )?;
    Ok(n.unwrap_or(0) > 0)
}

/// The schema version spark last left in this database (0: none yet).
pub fn version(conn: &mut impl Queryable) -> Result<i64, mysql::Error> {
    if !table_exists(conn, "spark_meta")? {
        return Ok(0);
    }
    let v: Option<String> =
        conn.query_first("SELECT `value` FROM `spark_meta` WHERE `name` = 'schema_version'")?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Why the schema cannot be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "its spark schema is version {found}, newer than this spark knows ({known}); use a newer spark"
    )]
    TooNew { found: i64, known: i64 },
    #[error("{}", super::message(.0))]
    Sql(#[from] mysql::Error),
}

/// Creates the seen table if missing and applies the migrations this
/// database lacks, under a named lock; does nothing (and needs no CREATE
/// privilege) when all is there.
pub fn migrate(conn: &mut mysql::Conn, seen_table: &str) -> Result<(), MigrateError> {
    let known = MIGRATIONS.len() as i64;
    let found = version(conn)?;
    if found > known {
        return Err(MigrateError::TooNew { found, known });
    }
    if found == known && table_exists(conn, seen_table)? {
        return Ok(());
    }
    conn.exec_drop("SELECT GET_LOCK(?, 60)", (MIGRATION_LOCK,))?;
    let done = (|| -> Result<(), MigrateError> {
        // Another worker may have migrated while this one waited.
        let found = version(conn)?;
        if found > known {
            return Err(MigrateError::TooNew { found, known });
        }
        let seen_exists = table_exists(conn, seen_table)?;
        if found == known && seen_exists {
            return Ok(());
        }
        for statement in pending_sql(seen_table, seen_exists, found)
            .split(";\n")
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "BEGIN" && *s != "COMMIT")
        {
            conn.query_drop(statement)?;
        }
        Ok(())
    })();
    let _ = conn.exec_drop("SELECT RELEASE_LOCK(?)", (MIGRATION_LOCK,));
    done
}

/// Checks that an existing seen table can serve as the store: the four
/// columns, of types spark reads and writes, and `key` unique. `Ok(None)`
/// when the table does not exist; otherwise the lengths `key` and `group`
/// declare (characters).
pub fn check_seen_table(
    conn: &mut impl Queryable,
    table: &str,
) -> Result<Option<crate::store::KeyLimits>, String> {
    let sql_err = |e: mysql::Error| super::message(&e);
    let columns: Vec<(String, String, Option<u64>)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (table,),
        )
        .map_err(sql_err)?;
    if columns.is_empty() {
        return Ok(None);
    }
    const TEXT: &[&str] = &[
        "varchar",
        "char",
        "text",
        "mediumtext",
        "longtext",
        "tinytext",
    ];
    const MOMENT: &[&str] = &["datetime", "timestamp"];
    for (needed, types) in [
        ("key", TEXT),
        ("group", TEXT),
        ("created_at", MOMENT),
        ("context", TEXT),
    ] {
        let Some((_, ty, _)) = columns.iter().find(|(c, _, _)| c == needed) else {
            let have: Vec<&str> = columns.iter().map(|(c, _, _)| c.as_str()).collect();
            return Err(format!(
                "column `{needed}` is missing (it has: {}); it must have django-spark's columns key, group, created_at, context",
                have.join(", ")
            ));
        };
        let ty = ty.to_ascii_lowercase();
        if !types.contains(&ty.as_str()) {
            let fix = if needed == "context" {
                format!(
                    "; spark writes contexts as JSON text, as django-spark's migration makes the column \
                     (ALTER TABLE `{table}` MODIFY `context` longtext NOT NULL)"
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
    let unique: Option<i64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM (SELECT INDEX_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
             GROUP BY INDEX_NAME HAVING COUNT(*) = 1 AND MAX(COLUMN_NAME) = 'key') AS u",
            (table,),
        )
        .map_err(sql_err)?;
    if unique.unwrap_or(0) == 0 {
        return Err("column `key` is not unique (no primary key or unique index on it alone), so seen keys could repeat".into());
    }
    let length = |name: &str| {
        columns
            .iter()
            .find(|(c, _, _)| c == name)
            .and_then(|(_, _, n)| *n)
            .and_then(|n| usize::try_from(n).ok())
    };
    Ok(Some(crate::store::KeyLimits {
        key: length("key"),
        group: length("group"),
    }))
}
