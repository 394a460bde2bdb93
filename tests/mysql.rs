//! What only MySQL and MariaDB have: their types read as Django reads them
//! (and its JSON encoder writes them), binary columns refused by name, the
//! seen table Django makes, TLS modes, the password from `password_env`,
//! `migrate --print-sql` and `--print-grants` with a user that may not
//! CREATE, and errors that name the database and never the password.
//! Against the real test server (see tests/common: skipped without one,
//! unless CI).

mod common;

use common::{Backend, CHALLENGE_SCHEMA, Case, challenge_config};

const AS_OF: &str = "2026-03-10";

fn my_case(test: &str) -> Option<Case> {
    Backend::mysql(test).map(Case::on)
}

/// The parts of the case's URL: (host, port, database).
fn url_parts(case: &Case) -> (String, String, String) {
    let url = case.mysql_url().unwrap();
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.split('?').next().unwrap();
    let (authority, db) = rest.split_once('/').unwrap();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
    (host.to_owned(), port.to_owned(), db.to_owned())
}

/// A table with one column of each type Django makes on MySQL, and what
/// each becomes.
#[test]
fn mysql_types_read_as_django_reads_them() {
    let Some(case) = my_case("mysql_types_read_as_django_reads_them") else {
        return;
    };
    case.my_sql(
        "CREATE TABLE typed (
           id integer PRIMARY KEY, tiny tinyint, small smallint, big bigint,
           huge bigint unsigned, flag tinyint(1), flag_off tinyint(1), year_ year, real4 float,
           dbl double, amount decimal(30,10), name varchar(20), code char(3), body longtext,
           emoji varchar(10), day date, at datetime(6), at_ts timestamp(3) NULL,
           clock time(3), doc json, mood enum('sad','happy'), tags set('a','b','c'),
           bits bit(10), nothing text
         ) CHARACTER SET utf8mb4;
         INSERT INTO typed VALUES (
           1, -3, -300, 9007199254740993, 18446744073709551615, 1, 0, 2026, 1.5, 2.25,
           '12345678901234567890.0001000000', 'vc', 'ab', 'tëxt \"q\"', '🚀 go', '2026-03-10',
           '2026-03-10 12:34:56.789123', '2026-03-10 10:34:56.500', '08:09:10.500',
           '{\"b\": [1, 2], \"a\": null}', 'happy', 'a,c', b'1000000001', NULL);",
    );
    let case = case.config(common::TYPED_CONFIG);
    case.run(&["check"]).success();
    case.run(&["process-sources"]).success();
    let line = std::fs::read_to_string(case.path("events.jsonl")).unwrap();
    let ctx = serde_json::from_str::<serde_json::Value>(&line).unwrap()["context"].clone();
    let expected = serde_json::json!({
        "id": 1, "tiny": -3, "small": -300, "big": 9007199254740993_i64,
        "huge": 18446744073709551615_u64, "flag": true, "flag_off": false, "year_": 2026,
        "real4": 1.5, "dbl": 2.25, "amount": "12345678901234567890.0001000000",
        "name": "vc", "code": "ab", "body": "tëxt \"q\"", "emoji": "🚀 go",
        "day": "2026-03-10", "at": "2026-03-10T12:34:56.789Z", "at_ts": "2026-03-10T10:34:56.500Z",
        "clock": "08:09:10.500", "doc": {"b": [1, 2], "a": null}, "mood": "happy",
        "tags": "a,c", "bits": 513, "nothing": null
    });
    assert_eq!(ctx, expected);
    // BIGINT UNSIGNED beyond i64 stays exact in the file.
    assert!(line.contains("18446744073709551615"), "{line}");
}

/// One JSON value spark cannot read (a number beyond a double) is one bad
/// record, named; the other records go on.
#[test]
fn one_hostile_json_value_is_one_bad_record() {
    let Some(case) = my_case("one_hostile_json_value_is_one_bad_record") else {
        return;
    };
    case.my_sql(
        "CREATE TABLE typed (id integer PRIMARY KEY, doc json);
         INSERT INTO typed VALUES (1, '{\"amount\": 1e400}'), (2, '{\"ok\": true}');",
    );
    let case = case.config(common::TYPED_CONFIG);
    case.run(&["process-sources"])
        .status(1)
        .stderr_has(&["doc", "json that spark cannot read"]);
    assert_eq!(case.jsonl_keys("events.jsonl"), ["typed_2"]);
}

/// A binary column (BLOB, VARBINARY) is refused by name when the config is
/// checked, before a run reads a row.
#[test]
fn a_binary_column_is_exit_2_naming_it() {
    let Some(case) = my_case("a_binary_column_is_exit_2_naming_it") else {
        return;
    };
    case.my_sql(
        "CREATE TABLE typed (id integer PRIMARY KEY, photo blob, tag varbinary(8));
         INSERT INTO typed VALUES (1, x'00ff', x'01');",
    );
    let case = case.config(common::TYPED_CONFIG);
    for args in [&["check"][..], &["process-sources"]] {
        case.run(args)
            .status(2)
            .stderr_has(&["photo", "blob", "typed"]);
    }
    assert!(!case.tables().contains(&"spark_event".to_owned()));
}

/// What `manage.py sqlmigrate spark 0001` and `0002` print for
/// django-spark 0.3.0 with Django 3.2's MySQL backend.
const DJANGO_MYSQL: &str = "
CREATE TABLE `spark_event` (`key` varchar(100) NOT NULL PRIMARY KEY, `group` varchar(50) NOT NULL, `created_at` datetime(6) NOT NULL);
CREATE INDEX `spark_event_group_95029792` ON `spark_event` (`group`);
ALTER TABLE `spark_event` ADD COLUMN `context` longtext DEFAULT '' NOT NULL;
ALTER TABLE `spark_event` ALTER COLUMN `context` DROP DEFAULT;";

fn show_create(case: &Case, table: &str) -> String {
    case.query(&format!("SHOW CREATE TABLE `{table}`"))[0][1]
        .clone()
        .unwrap_or_default()
}

/// The seen table spark makes is the one Django's migrations make; keys
/// django-spark recorded stay seen, and what spark records reads back as
/// Django stores it.
#[test]
fn the_seen_table_is_djangos_and_django_sparks_keys_stay_seen() {
    let Some(case) = my_case("the_seen_table_is_djangos_and_django_sparks_keys_stay_seen") else {
        return;
    };
    case.sql(&format!(
        "{CHALLENGE_SCHEMA} INSERT INTO challenge VALUES (1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30'),
         (2, 'b', 'b@x', 1, '2026-03-09', '2026-03-30');"
    ));
    let case = case.config(&challenge_config(""));
    case.run(&["migrate"]).success();
    let spark_made = show_create(&case, "spark_event");
    case.my_sql("RENAME TABLE spark_event TO spark_event_by_spark");
    case.my_sql(DJANGO_MYSQL);
    let django_made = show_create(&case, "spark_event");
    assert_eq!(
        django_made,
        spark_made.replace("spark_event_by_spark", "spark_event"),
        "spark's seen table is Django's"
    );
    // django-spark recorded challenge 1's creation.
    case.my_sql(
        "INSERT INTO spark_event VALUES ('challenge_created_1', 'challenge_created', \
         '2026-03-01 09:00:00.000000', '{''challenge'': <Challenge: a>}')",
    );
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["3 events, 2 new"]);
    let logged = case.jsonl_keys("events.jsonl");
    assert!(
        !logged.contains(&"challenge_created_1".to_owned()),
        "{logged:?}"
    );
    let stored = case.query(
        "SELECT DATE_FORMAT(created_at, '%Y-%m-%d'), context FROM spark_event \
         WHERE `key` = 'challenge_created_2'",
    );
    let context: serde_json::Value =
        serde_json::from_str(stored[0][1].as_deref().unwrap_or("")).unwrap();
    assert_eq!(context["challenge"]["title"], "b");
}

/// TLS as the mysql client's `--ssl-mode` says: PREFERRED uses a server
/// without TLS as it is; REQUIRED and the VERIFY modes refuse it, saying
/// why; a `ssl-ca` that cannot be read is named.
#[test]
fn ssl_modes_say_what_they_require() {
    let Some(case) = my_case("ssl_modes_say_what_they_require") else {
        return;
    };
    case.sql(&format!(
        "{CHALLENGE_SCHEMA} INSERT INTO challenge VALUES (1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30');"
    ));
    let (host, port, db) = url_parts(&case);
    let server_tls = case.query("SHOW VARIABLES LIKE 'have_ssl'")[0][1]
        .clone()
        .unwrap_or_default();
    let with = |query: &str| {
        challenge_config("").replace(
            "path = \"app.sqlite3\"",
            &format!("url = \"mysql://root@{host}:{port}/{db}{query}\""),
        )
    };
    let mut case = case.file("spark.toml", &with("?ssl-mode=PREFERRED"));
    case.run(&["check"]).success();
    case = case.file("spark.toml", &with("?ssl-mode=DISABLED"));
    case.run(&["check"]).success();
    if server_tls != "YES" {
        case = case.file("spark.toml", &with("?ssl-mode=REQUIRED"));
        case.run(&["check"])
            .status(2)
            .stderr_has(&["does not offer TLS", "ssl-mode=REQUIRED"]);
    }
    case = case.file(
        "spark.toml",
        &with("?ssl-mode=VERIFY_CA&ssl-ca=/nonexistent/ca.pem"),
    );
    case.run(&["check"])
        .status(2)
        .stderr_has(&["/nonexistent/ca.pem"]);
    case = case.file("spark.toml", &with("?ssl-mode=SOMETIMES"));
    case.run(&["check"])
        .status(2)
        .stderr_has(&["ssl-mode", "SOMETIMES"]);
}

/// `migrate --print-sql` prints what a DBA applies, `--print-grants` what a
/// user then needs, and a user with exactly those grants (no CREATE; its
/// password from `password_env`) runs; errors name user, host, port and
/// database, never the password.
#[test]
fn migrate_prints_the_ddl_and_a_user_with_the_printed_grants_works() {
    let Some(case) = my_case("migrate_prints_the_ddl_and_a_user_with_the_printed_grants_works")
    else {
        return;
    };
    case.sql(&format!(
        "{CHALLENGE_SCHEMA} INSERT INTO challenge VALUES (1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30');"
    ));
    let case = case.config(&challenge_config(""));
    let printed = case.run(&["migrate", "--print-sql"]).success().stdout();
    assert!(printed.contains("CREATE TABLE `spark_event`"), "{printed}");
    assert!(printed.contains("`spark_delivery`"), "{printed}");
    assert_eq!(case.tables().len(), 2, "printing runs nothing");
    case.my_sql(&printed);
    let (host, port, db) = url_parts(&case);
    let user = format!("spark_u{}", std::process::id());
    let role = format!("'{user}'@'%'");
    let grants = case
        .run(&["migrate", "--print-grants", &role])
        .success()
        .stdout();
    assert!(grants.contains("CREATE TEMPORARY TABLES"), "{grants}");
    case.my_sql(&format!(
        "DROP USER IF EXISTS {role}; CREATE USER {role} IDENTIFIED BY 'pw-S3cret-9';"
    ));
    case.my_sql(&grants);
    // The source is a query: its tables are the DBA's to grant (--print-grants says so).
    case.my_sql(&format!(
        "GRANT SELECT ON `{db}`.`challenge` TO {role}; GRANT SELECT ON `{db}`.`donation` TO {role};"
    ));
    let config = |password: &str| {
        challenge_config("").replace(
            "path = \"app.sqlite3\"",
            &format!(
                "url = \"mysql://{user}@{host}:{port}/{db}\"\npassword_env = \"SPARK_DB_PASSWORD\"{password}"
            ),
        )
    };
    let case = case.file("spark.toml", &config(""));
    let run_with = |password: &str, args: &[&str]| common::Run {
        output: case
            .command()
            .env("SPARK_DB_PASSWORD", password)
            .args(args)
            .output()
            .unwrap(),
    };
    run_with("pw-S3cret-9", &["migrate", "--print-sql"])
        .success()
        .stdout_has(&["up to date"]);
    run_with("pw-S3cret-9", &["check"]).success();
    run_with("pw-S3cret-9", &["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["1 new", "1 delivered"]);
    // A wrong password: the database named, the password not.
    let denied = run_with("wrong-Pass-77", &["check"]).status(2);
    let stderr = denied.stderr();
    assert!(
        stderr.contains(&format!("{user}@{host}:{port}/{db}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-Pass-77") && !stderr.contains("pw-S3cret-9"),
        "{stderr}"
    );
    // Without a grant, check names what is missing.
    case.my_sql(&format!(
        "REVOKE DELETE ON `{db}`.`spark_history` FROM {role};"
    ));
    run_with("pw-S3cret-9", &["check"])
        .status(2)
        .stderr_has(&["DELETE", "spark_history"]);
    case.my_sql(&format!("DROP USER {role};"));
}

/// Keys compare as the seen table's collation compares them (Django's
/// table takes the database's default, case-insensitive here): a key
/// django-spark recorded in other letters stays seen, and two keys of one
/// batch that the collation makes equal are one key, recorded once, the
/// batch neither failing nor tried for ever.
#[test]
fn keys_compare_as_the_seen_tables_collation_says() {
    let Some(case) = my_case("keys_compare_as_the_seen_tables_collation_says") else {
        return;
    };
    case.my_sql(
        "CREATE TABLE thing (id varchar(10) COLLATE utf8mb4_bin PRIMARY KEY) CHARACTER SET utf8mb4;
         INSERT INTO thing VALUES ('a'), ('A'), ('b'), ('c');",
    );
    let case = case.config(
        r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "things"
table = "thing"
group = "thing"

[[handlers]]
name = "log"
group = "thing"
kind = "jsonl"
path = "events.jsonl"
"#,
    );
    case.run(&["migrate"]).success();
    // django-spark saw `c`, written in capitals.
    case.my_sql("INSERT INTO spark_event VALUES ('THING_C', 'thing', '2026-01-01 00:00:00', '{}')");
    case.run(&["process-sources"])
        .success()
        .stdout_has(&["4 events, 2 new"]);
    let logged = case.jsonl_keys("events.jsonl");
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(logged.contains(&"thing_b".to_owned()), "{logged:?}");
    assert!(
        logged.contains(&"thing_a".to_owned()) ^ logged.contains(&"thing_A".to_owned()),
        "one of a and A: {logged:?}"
    );
    case.run(&["process-sources"])
        .success()
        .stdout_has(&["0 new"]);
}

/// A MariaDB server of this test's own, with TLS (a certificate for
/// `localhost` the test made), on a free port; stopped when dropped.
struct TlsServer {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsServer {
    /// `None` where the machine has no MariaDB to start (CI has one).
    fn start() -> Option<TlsServer> {
        let installer = ["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let (Some(installer), true) = (
            installer,
            std::path::Path::new("/usr/sbin/mariadbd").exists(),
        ) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs mariadbd to test TLS"
            );
            eprintln!("skipped: no mariadbd to start a server with TLS");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem()).unwrap();
        let data = dir.path().join("data");
        let installed = std::process::Command::new(installer)
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .unwrap();
        assert!(
            installed.status.success(),
            "{}",
            String::from_utf8_lossy(&installed.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-log-bin")
            .arg(format!(
                "--ssl-cert={}",
                dir.path().join("cert.pem").display()
            ))
            .arg(format!(
                "--ssl-key={}",
                dir.path().join("key.pem").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = TlsServer { child, port, dir };
        let url = format!("mysql://root@127.0.0.1:{port}/mysql");
        common::wait_until("the TLS server to answer", || {
            mysql::Opts::from_url(&url)
                .ok()
                .and_then(|o| mysql::Conn::new(o).ok())
                .is_some()
        });
        Some(server)
    }

    fn sql(&self, sql: &str) {
        use mysql::prelude::Queryable;
        let opts =
            mysql::Opts::from_url(&format!("mysql://root@127.0.0.1:{}/mysql", self.port)).unwrap();
        let mut conn = mysql::Conn::new(opts).unwrap();
        let mut result = conn.query_iter(sql).unwrap();
        while let Some(set) = result.iter() {
            for row in set {
                row.unwrap();
            }
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Against a server that offers TLS: every mode connects as it says, the
/// certificate checked by VERIFY_CA against `ssl-ca`, and the name by
/// VERIFY_IDENTITY (the certificate names `localhost`, not `127.0.0.1`);
/// what spark reads and writes goes over it.
#[test]
fn ssl_modes_against_a_server_with_tls() {
    let Some(server) = TlsServer::start() else {
        return;
    };
    server.sql(&format!(
        "CREATE DATABASE app CHARACTER SET utf8mb4; USE app; {CHALLENGE_SCHEMA}
         INSERT INTO challenge VALUES (1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30');"
    ));
    let ca = server.dir.path().join("cert.pem");
    let case = Case::new();
    let with = |host: &str, query: &str| {
        challenge_config("").replace(
            "path = \"app.sqlite3\"",
            &format!("url = \"mysql://root@{host}:{}/app{query}\"", server.port),
        )
    };
    let ca = ca.display();
    let mut case = case.file("spark.toml", &with("127.0.0.1", "?ssl-mode=REQUIRED"));
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["1 new"]);
    for (host, query) in [
        ("127.0.0.1", "?ssl-mode=PREFERRED".to_owned()),
        ("127.0.0.1", format!("?ssl-mode=VERIFY_CA&ssl-ca={ca}")),
        (
            "localhost",
            format!("?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
        ),
    ] {
        case = case.file("spark.toml", &with(host, &query));
        case.run(&["process-sources", "--as-of", AS_OF])
            .success()
            .stdout_has(&["0 new"]);
    }
    // The name in the certificate is not the address connected to.
    case = case.file(
        "spark.toml",
        &with(
            "127.0.0.1",
            &format!("?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
        ),
    );
    case.run(&["check"]).status(2).stderr_has(&["127.0.0.1"]);
    // A certificate no root vouches for.
    case = case.file(
        "spark.toml",
        &with("localhost", "?ssl-mode=VERIFY_IDENTITY"),
    );
    case.run(&["check"]).status(2).stderr_has(&["certificate"]);
}
