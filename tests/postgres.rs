//! What only PostgreSQL has: connecting (URLs, key=value strings, libpq's
//! environment, TLS), its types read as Django's JSON encoder writes them,
//! a database django-spark used first, `migrate --print-sql` and a role
//! without CREATE, and clear errors that never show the password. Against
//! the real test server (see tests/common: skipped without one, unless CI).

mod common;

use common::{Backend, CHALLENGE_SCHEMA, Case, Run, challenge_config};

const AS_OF: &str = "2026-03-10";

fn pg_case(test: &str) -> Option<Case> {
    Backend::postgres(test).map(Case::on)
}

fn run_env(case: &Case, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = case.command();
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGSSLMODE",
        "PGSSLROOTCERT",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run {
        output: cmd.args(args).output().unwrap(),
    }
}

/// The parts of the case's URL: (host, port, dbname).
fn url_parts(case: &Case) -> (String, String, String) {
    let url = case.pg_url().unwrap();
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.split('?').next().unwrap();
    let (authority, db) = rest.split_once('/').unwrap();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    (host.to_owned(), port.to_owned(), db.to_owned())
}

/// A table with one column of each type spark maps, and what each becomes.
#[test]
fn postgres_types_read_as_djangos_json_encoder_writes_them() {
    let Some(case) = pg_case("postgres_types_read_as_djangos_json_encoder_writes_them") else {
        return;
    };
    case.pg_sql(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN email AS text;
         CREATE TABLE typed (
           id integer PRIMARY KEY, small smallint, big bigint, real4 real, dbl double precision,
           nan double precision, amount numeric(10,2), tiny numeric, neg numeric, flag boolean,
           name varchar(20), code char(3), body text, day date, at timestamp, at_tz timestamptz,
           clock time, span interval, uid uuid, doc json, docb jsonb, raw bytea, nums integer[],
           grid text[][], addr inet, net cidr, feeling mood, mail email, nothing text);
         INSERT INTO typed VALUES (
           1, -3, 9007199254740993, 1.5, 2.25, 'NaN', 12345.60, 0.00010, -7.5, true,
           'vc', 'ab', 'tëxt \"q\"', '2026-03-10', '2026-03-10 12:34:56.789123',
           '2026-03-10 12:34:56+02', '08:09:10.5', '1 day 02:03:04.000005',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"b\": [1, 2], \"a\": null}',
           '{\"k\": {\"n\": 1.5}}', '\\x00ff10', '{1,NULL,3}', '{{a,b},{c,d}}',
           '10.0.0.1', '10.0.0.0/8', 'happy', 'x@example.org', NULL);",
    );
    let case = case.config(common::TYPED_CONFIG);
    case.run(&["process-sources"]).success();
    let line = std::fs::read_to_string(case.path("events.jsonl")).unwrap();
    let ctx = serde_json::from_str::<serde_json::Value>(&line).unwrap()["context"].clone();
    let expected = serde_json::json!({
        "id": 1, "small": -3, "big": 9007199254740993_i64, "real4": 1.5, "dbl": 2.25,
        "nan": null, "amount": "12345.60", "tiny": "0.00010", "neg": "-7.5", "flag": true,
        "name": "vc", "code": "ab ", "body": "tëxt \"q\"", "day": "2026-03-10",
        "at": "2026-03-10T12:34:56.789", "at_tz": "2026-03-10T10:34:56Z",
        "clock": "08:09:10.500", "span": "P1DT02H03M04.000005S",
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "doc": {"b": [1, 2], "a": null}, "docb": {"k": {"n": 1.5}}, "raw": "AP8Q",
        "nums": [1, null, 3], "grid": [["a", "b"], ["c", "d"]], "addr": "10.0.0.1",
        "net": "10.0.0.0/8", "feeling": "happy", "mail": "x@example.org", "nothing": null
    });
    assert_eq!(ctx, expected);
}

#[test]
fn a_column_spark_cannot_map_is_exit_2_naming_it() {
    let Some(case) = pg_case("a_column_spark_cannot_map_is_exit_2_naming_it") else {
        return;
    };
    case.pg_sql("CREATE TABLE spots (id integer, at point, span int4range)");
    let case = case.config(
        r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "spots"
table = "spots"
group = "spot"

[[handlers]]
name = "log"
group = "spot"
kind = "jsonl"
path = "events.jsonl"
"#,
    );
    let before = case.db_bytes();
    case.run(&["process-sources"]).status(2).stderr_has(&[
        "source `spots`",
        "column `at`",
        "type point",
    ]);
    case.run(&["check"]).status(2).stderr_has(&["column `at`"]);
    assert_eq!(case.db_bytes(), before);
    assert_eq!(
        case.tables(),
        ["spots"],
        "nothing written, not even the schema"
    );
}

#[test]
fn generators_and_the_example_source_behave_as_on_sqlite_with_date_columns() {
    let Some(case) =
        pg_case("generators_and_the_example_source_behave_as_on_sqlite_with_date_columns")
    else {
        return;
    };
    // Dates as PostgreSQL keeps them (Django's DateField), amounts as numeric.
    case.pg_sql(
        "CREATE TABLE challenge (id integer PRIMARY KEY, title text NOT NULL, user_email text NOT NULL,
           is_active boolean NOT NULL, start_date date NOT NULL, end_date date NOT NULL);
         CREATE TABLE donation (id serial PRIMARY KEY, challenge_id integer NOT NULL, amount numeric(8,2) NOT NULL);
         INSERT INTO challenge VALUES (1, 'a', 'a@x', true, '2026-03-01', '2026-03-30'),
           (2, 'b', 'b@x', true, '2026-03-09', '2026-03-12'), (3, 'c', 'c@x', false, '2026-03-01', '2026-03-05');
         INSERT INTO donation (challenge_id, amount) VALUES (1, 150.00), (1, 99.99), (2, 100.01);",
    );
    let case = case.config(&challenge_config(
        r#"
[[sources]]
name = "big-donations"
table = "donation"
group = "donation_big"
conditions = [ { variable = "amount", op = ">", value = 100 } ]

[[sources]]
name = "ending"
table = "challenge"
group = "ending_soon"
conditions = [ { variable = "end_date", op = "<=", value = 2026-03-12 }, { variable = "is_active", op = "=", value = true } ]

[[handlers]]
name = "rest"
group = "^(donation|ending)"
kind = "jsonl"
path = "rest.jsonl"
"#,
    ));
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    let mut keys = case.jsonl_keys("events.jsonl");
    keys.sort();
    assert_eq!(
        keys,
        // Challenge 1 has two donations: no inactivity reminder.
        [
            "challenge_created_1",
            "challenge_created_2",
            "challenge_ends_2d_2"
        ]
    );
    let mut rest = case.jsonl_keys("rest.jsonl");
    rest.sort();
    assert_eq!(rest, ["donation_big_1", "donation_big_3", "ending_soon_2"]);
}

/// Exactly what `manage.py sqlmigrate spark 0001` and `0002` print for
/// django-spark 0.3.0 on PostgreSQL, and rows as Django writes them.
const DJANGO_PG: &str = r#"
CREATE TABLE "spark_event" ("key" varchar(100) NOT NULL PRIMARY KEY, "group" varchar(50) NOT NULL, "created_at" timestamp with time zone NOT NULL);
CREATE INDEX "spark_event_key_2f7c6e69_like" ON "spark_event" ("key" varchar_pattern_ops);
CREATE INDEX "spark_event_group_95029792" ON "spark_event" ("group");
CREATE INDEX "spark_event_group_95029792_like" ON "spark_event" ("group" varchar_pattern_ops);
ALTER TABLE "spark_event" ADD COLUMN "context" text DEFAULT '' NOT NULL;
ALTER TABLE "spark_event" ALTER COLUMN "context" DROP DEFAULT;
INSERT INTO spark_event VALUES
  ('challenge_created_1', 'challenge_created', '2026-03-01 10:00:00.123456+00', '{''challenge'': <Challenge: Challenge object (1)>}'),
  ('challenge_ends_2d_2', 'challenge_ends_2d', '2026-03-06 10:00:00+00', '{''challenge'': <Challenge: Challenge object (2)>}');
"#;

#[test]
fn a_database_django_spark_used_first_keeps_its_history() {
    let Some(case) = pg_case("a_database_django_spark_used_first_keeps_its_history") else {
        return;
    };
    case.sql(&format!(
        "{CHALLENGE_SCHEMA}
         INSERT INTO challenge VALUES (1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30'),
           (2, 'b', 'b@x', 1, '2026-03-09', '2026-03-12');"
    ));
    case.pg_sql(DJANGO_PG);
    let indexes = |case: &Case| {
        case.query("SELECT indexname FROM pg_indexes WHERE tablename = 'spark_event' ORDER BY 1")
    };
    let before = indexes(&case);
    let case = case.config(&challenge_config(""));
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["2 new"]);
    let mut keys = case.jsonl_keys("events.jsonl");
    keys.sort();
    assert_eq!(keys, ["challenge_created_2", "challenge_inactivity_2d_1"]);
    let old = case.query(
        "SELECT key, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), context \
         FROM spark_event WHERE key IN ('challenge_created_1', 'challenge_ends_2d_2') ORDER BY key",
    );
    assert_eq!(
        old,
        [
            vec![
                Some("challenge_created_1".to_owned()),
                Some("2026-03-01 10:00:00.123456".to_owned()),
                Some("{'challenge': <Challenge: Challenge object (1)>}".to_owned())
            ],
            vec![
                Some("challenge_ends_2d_2".to_owned()),
                Some("2026-03-06 10:00:00.000000".to_owned()),
                Some("{'challenge': <Challenge: Challenge object (2)>}".to_owned())
            ]
        ]
    );
    assert_eq!(indexes(&case), before, "Django's indexes, and no others");
    // The listings read Django's rows too.
    case.run(&["events", "--key-prefix", "challenge_created_1"])
        .success()
        .stdout_has(&["challenge_created_1", "<Challenge: Challenge object (1)>"]);
}

#[test]
fn errors_name_host_and_database_and_never_the_password() {
    let Some(case) = pg_case("errors_name_host_and_database_and_never_the_password") else {
        return;
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (host, port, db) = url_parts(&case);
    let config = |url: &str| {
        challenge_config("").replace("path = \"app.sqlite3\"", &format!("url = \"{url}\"\n"))
    };
    // Unreachable.
    let case = case.file(
        "spark.toml",
        &config(&format!(
            "postgresql://spark:s3cret-pw-42@127.0.0.1:{closed}/appdb?connect_timeout=5"
        )),
    );
    let run = case.run(&["process-sources"]).status(2).stderr_has(&[
        "PostgreSQL",
        &format!("127.0.0.1:{closed}/appdb"),
        "spark@",
    ]);
    assert!(!run.stderr().contains("s3cret-pw-42"), "{}", run.stderr());
    // A database that does not exist.
    let case = case.file(
        "spark.toml",
        &config(&format!(
            "postgresql://postgres:s3cret-pw-42@{host}:{port}/no_such_db_here"
        )),
    );
    let run = case
        .run(&["process-sources"])
        .status(2)
        .stderr_has(&["no_such_db_here", "does not exist"]);
    assert!(!run.stderr().contains("s3cret-pw-42"), "{}", run.stderr());
    // A table that does not exist.
    let case = case.file(
        "spark.toml",
        &config(&format!("postgresql://postgres@{host}:{port}/{db}")),
    );
    case.run(&["process-sources"]).status(2).stderr_has(&[
        "source `challenges`",
        "relation \"challenge\" does not exist",
    ]);
    assert!(case.tables().is_empty(), "nothing written");
    // `path` and `url` together, or neither.
    let both = config(&format!("postgresql://postgres@{host}:{port}/{db}"))
        .replace("[database]\n", "[database]\npath = \"x.sqlite3\"\n");
    let case = case.file("spark.toml", &both);
    case.run(&["check"])
        .status(2)
        .stderr_has(&["`url`", "together with `path`"]);
}

#[test]
fn key_value_strings_and_the_pg_environment_connect() {
    let Some(case) = pg_case("key_value_strings_and_the_pg_environment_connect") else {
        return;
    };
    case.sql(&format!(
        "{CHALLENGE_SCHEMA} INSERT INTO challenge VALUES (1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30');"
    ));
    let (host, port, db) = url_parts(&case);
    let case = case.file(
        "spark.toml",
        &challenge_config("").replace(
            "path = \"app.sqlite3\"",
            &format!("url = \"host={host} port={port} dbname='{db}' sslmode=disable\""),
        ),
    );
    run_env(
        &case,
        &["process-sources", "--as-of", AS_OF],
        &[("PGUSER", "postgres")],
    )
    .success()
    .stdout_has(&["1 new"]);
    // Everything from the environment.
    let case = case.file(
        "spark.toml",
        &challenge_config("").replace("path = \"app.sqlite3\"", "url = \"\""),
    );
    run_env(
        &case,
        &["process-sources", "--as-of", AS_OF],
        &[
            ("PGHOST", &host),
            ("PGPORT", &port),
            ("PGUSER", "postgres"),
            ("PGDATABASE", &db),
            ("PGPASSWORD", "unused-but-secret-77"),
        ],
    )
    .success()
    .stdout_has(&["0 new"]);
}

#[test]
fn tls_modes_encrypt_and_verify_as_libpq_says() {
    let Some(case) = pg_case("tls_modes_encrypt_and_verify_as_libpq_says") else {
        return;
    };
    let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let ssl_on = case.query("SELECT current_setting('ssl')")[0][0].as_deref() == Some("on");
    if !ssl_on || !std::path::Path::new(snakeoil).exists() {
        eprintln!("skipped: the test server has no TLS (ssl = off) or no snakeoil certificate");
        return;
    }
    case.sql(&format!(
        "{CHALLENGE_SCHEMA} INSERT INTO challenge VALUES (1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30');"
    ));
    let (_, port, db) = url_parts(&case);
    let with = |params: &str| {
        challenge_config("").replace(
            "path = \"app.sqlite3\"",
            &format!(
                "url = \"postgresql://postgres@localhost:{port}/{db}?hostaddr=127.0.0.1&{params}\""
            ),
        )
    };
    let case = case.file("spark.toml", &with("sslmode=require"));
    case.run(&["check"]).success();
    let case = case.file(
        "spark.toml",
        &with(&format!("sslmode=verify-full&sslrootcert={snakeoil}")),
    );
    case.run(&["check"]).success();
    // Not signed by a root spark trusts.
    let case = case.file("spark.toml", &with("sslmode=verify-full"));
    case.run(&["check"])
        .status(2)
        .stderr_has(&["cannot connect to PostgreSQL", "certificate"]);
    // verify-ca checks the certificate, not the name: an IP address is fine.
    let by_ip = challenge_config("").replace(
        "path = \"app.sqlite3\"",
        &format!(
            "url = \"postgresql://postgres@127.0.0.1:{port}/{db}?sslmode=verify-ca&sslrootcert={snakeoil}\""
        ),
    );
    let case = case.file("spark.toml", &by_ip);
    case.run(&["check"]).success();
    let case = case.file("spark.toml", &by_ip.replace("verify-ca", "verify-full"));
    case.run(&["check"]).status(2).stderr_has(&["certificate"]);
}

#[test]
fn migrate_prints_the_ddl_and_a_role_without_create_works_against_it() {
    let Some(case) = pg_case("migrate_prints_the_ddl_and_a_role_without_create_works_against_it")
    else {
        return;
    };
    case.sql(&format!(
        "{CHALLENGE_SCHEMA} INSERT INTO challenge VALUES (1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30');"
    ));
    let case = case.config(&challenge_config(""));
    let printed = case.run(&["migrate", "--print-sql"]).success().stdout();
    assert!(
        printed.contains("CREATE TABLE \"spark_event\""),
        "{printed}"
    );
    assert!(printed.contains("CREATE TABLE spark_delivery"), "{printed}");
    assert!(case.tables().len() == 2, "printing runs nothing");
    // A DBA applies it; the application's role may only read and write.
    let role = format!("spark_limited_{}", std::process::id());
    case.pg_sql(&printed);
    case.pg_sql(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT ON challenge, donation TO {role};
         GRANT SELECT, INSERT, DELETE ON spark_event TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON spark_delivery TO {role};
         GRANT SELECT ON spark_meta TO {role};
         GRANT SELECT, INSERT, DELETE ON spark_history TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON spark_cursor TO {role};
         GRANT USAGE ON SEQUENCE spark_delivery_id_seq, spark_history_id_seq TO {role};"
    ));
    let (host, port, db) = url_parts(&case);
    let case = case.file(
        "spark.toml",
        &challenge_config("").replace(
            "path = \"app.sqlite3\"",
            &format!("url = \"postgresql://{role}@{host}:{port}/{db}\""),
        ),
    );
    case.run(&["migrate", "--print-sql"])
        .success()
        .stdout_has(&["up to date"]);
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["1 new", "1 delivered"]);
    case.pg_sql(&format!("DROP OWNED BY {role}; DROP ROLE {role};"));
}

#[test]
fn preview_mail_and_the_listings_read_postgres() {
    let Some(case) = pg_case("preview_mail_and_the_listings_read_postgres") else {
        return;
    };
    case.sql(&format!(
        "{CHALLENGE_SCHEMA} INSERT INTO challenge VALUES (1, 'Swim', 'a@example.org', 1, '2026-03-09', '2026-03-30');"
    ));
    let case = case.config(&challenge_config(
        r#"
[[handlers]]
name = "mail"
group = "created"
kind = "mail"
from = "shop@example.org"
to = "{{ challenge.user_email }}"
subject = "Hello {{ challenge.title }}"
outbox = "outbox"
"#,
    ));
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    case.run(&["preview-mail", "mail", "--key", "challenge_created_1"])
        .success()
        .stdout_has(&["Subject: Hello Swim", "To: a@example.org"]);
    case.run(&["list-handlers"]).success().stdout_has(&["mail"]);
    case.run(&["config"])
        .success()
        .stdout_has(&["url = \"postgresql://postgres@"]);
    case.run(&["migrate"]).success().stdout_has(&["up to date"]);
}
