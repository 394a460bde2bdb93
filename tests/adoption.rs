//! What a Django shop trips over when it moves to spark on PostgreSQL: the
//! role's privileges, claims left by workers that stopped, django-spark's
//! `repr()` contexts, and errors that name the database. Against the real
//! test server (see tests/common: skipped without one, unless CI).

mod common;

use common::{Backend, CHALLENGE_SCHEMA, Case, challenge_config};

const AS_OF: &str = "2026-03-10";

/// A PostgreSQL case with one challenge, spark's tables made by a DBA from
/// `migrate --print-sql`, and a role of its own (no CREATE) for spark,
/// given `grants` (with `{role}` for its name); the config connects as
/// that role and has, besides the jsonl `log`, a command handler that
/// leaves a file per call in `calls/`.
struct RoleCase {
    case: Case,
    role: String,
}

impl RoleCase {
    fn new(backend: Backend, grants: &str) -> RoleCase {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let role = format!(
            "spark_role_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let extra = r#"
[[handlers]]
name = "notify"
group = "^challenge_created$"
kind = "command"
command = ["./notify.sh"]
"#;
        let case = Case::on(backend)
            .db(&format!(
                "{CHALLENGE_SCHEMA} INSERT INTO challenge VALUES (1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30');"
            ))
            .config(&challenge_config(extra))
            .script("notify.sh", "touch calls/$SPARK_EVENT_KEY");
        std::fs::create_dir(case.path("calls")).expect("mkdir");
        let printed = case.run(&["migrate", "--print-sql"]).success().stdout();
        case.pg_sql(&printed);
        case.pg_sql(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             {}",
            grants.replace("{role}", &role)
        ));
        let url = case
            .pg_url()
            .expect("postgres")
            .replacen("postgres@", &format!("{role}@"), 1);
        let case = case.file(
            "spark.toml",
            &challenge_config(extra).replace(
                "path = \"app.sqlite3\"",
                &format!("url = \"{url}\"\nlease = \"3s\""),
            ),
        );
        RoleCase { case, role }
    }

    fn calls(&self) -> usize {
        std::fs::read_dir(self.case.path("calls")).map_or(0, |d| d.count())
    }
}

impl Drop for RoleCase {
    fn drop(&mut self) {
        if let Some(url) = self.case.pg_url()
            && let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls)
        {
            let _ = c.batch_execute(&format!("DROP OWNED BY {0}; DROP ROLE {0};", self.role));
        }
    }
}

/// The README once listed these, and a role with exactly them failed its
/// first run with exit 2 after calling the handler ("permission denied for
/// table spark_history"), while `check` said 0 errors.
const THE_OLD_README_GRANTS: &str = "GRANT USAGE ON SCHEMA public TO {role};
     GRANT SELECT ON challenge, donation TO {role};
     GRANT SELECT, INSERT, UPDATE, DELETE ON spark_event, spark_delivery, spark_meta TO {role};
     GRANT USAGE ON SEQUENCE spark_delivery_id_seq TO {role};";

#[test]
fn check_names_every_privilege_a_role_lacks_before_the_first_run() {
    let Some(backend) = Backend::postgres("check_names_every_privilege_a_role_lacks") else {
        return;
    };
    let rc = RoleCase::new(backend, THE_OLD_README_GRANTS);
    let case = &rc.case;
    case.run(&["check"]).status(2).stderr_has(&[
        &rc.role,
        "lacks SELECT, INSERT, DELETE on table spark_history",
        "lacks USAGE on sequence spark_history_id_seq",
        "--print-grants",
    ]);
    let before = case.db_bytes();
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(2)
        .stderr_has(&["spark_history"]);
    assert_eq!(rc.calls(), 0, "a handler was called before the run failed");
    assert_eq!(case.db_bytes(), before, "something was written");
}

#[test]
fn a_role_with_the_printed_grants_runs_and_keeps_its_history() {
    let Some(backend) = Backend::postgres("a_role_with_the_printed_grants_runs") else {
        return;
    };
    let probe = RoleCase::new(backend, "");
    let grants = probe
        .case
        .run(&["migrate", "--print-grants", "{role}"])
        .success()
        .stdout()
        .replace("\"{role}\"", "{role}");
    assert!(grants.contains("spark_history_id_seq"), "{grants}");
    // The config's source is a query: its tables are the operator's to add.
    assert!(grants.contains("-- and SELECT on every table"), "{grants}");
    drop(probe);
    let rc = RoleCase::new(
        backend,
        &format!("{grants}\nGRANT SELECT ON challenge, donation TO {{role}};"),
    );
    rc.case.run(&["check"]).success();
    rc.case
        .run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["1 new"]);
    assert_eq!(rc.calls(), 1);
    let history = rc.case.query("SELECT \"key\", outcome FROM spark_history");
    assert_eq!(
        history,
        [vec![
            Some("challenge_created_1".to_owned()),
            Some("delivered".to_owned())
        ]]
    );
}

/// The README's list of privileges is the one the code checks: every GRANT
/// `--print-grants` prints for spark's own tables is in the README as it is.
#[test]
fn the_readmes_grants_are_the_ones_spark_checks() {
    let case = Case::new().file(
        "spark.toml",
        &challenge_config("").replace(
            "path = \"app.sqlite3\"",
            "url = \"postgresql://spark@db.internal/app\"",
        ),
    );
    let printed = case
        .run(&["migrate", "--print-grants", "spark"])
        .success()
        .stdout();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let mut spark_lines = 0;
    for line in printed.lines().filter(|l| l.contains("spark_")) {
        spark_lines += 1;
        assert!(
            readme.contains(line),
            "the README lacks {line:?}:\n{printed}"
        );
    }
    assert_eq!(spark_lines, 7, "{printed}");
    case.run(&["migrate", "--print-grants", "spark"]);
    let sqlite = Case::new().file("spark.toml", &challenge_config(""));
    sqlite
        .run(&["migrate", "--print-grants", "spark"])
        .status(2)
        .stderr_has(&["SQLite", "no roles"]);
}

/// A PostgreSQL case with `n` challenges (each `challenge_created_N`) and a
/// webhook `hook` for them, with `lease` instead of the tests' 3 s.
fn hook_case(backend: Backend, n: usize, url: &str, lease: &str) -> Case {
    let case = Case::on(backend)
        .db(&common::many_challenges_sql(n))
        .config(&challenge_config(&format!(
            "[[handlers]]\nname = \"hook\"\ngroup = \"created\"\nkind = \"webhook\"\nurl = \"{url}\"\ntimeout = \"60s\"\n"
        )));
    let config = std::fs::read_to_string(case.path("spark.toml"))
        .expect("config")
        .replace("lease = \"3s\"", &format!("lease = \"{lease}\""));
    case.file("spark.toml", &config)
}

/// A worker killed mid-call holds its chunk until its lease runs out:
/// `deliveries` shows it in flight with the worker and the lease's end;
/// `deliver --linger` shorter than the lease says so and exits 1 (it once
/// exited 0 with the keys still owed), one that reaches the lease's end
/// waits and delivers them.
#[test]
fn a_killed_workers_claims_are_shown_and_waited_for_within_reach() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let hanging = Arc::new(AtomicBool::new(false));
    let first = Arc::new(AtomicBool::new(true));
    let (h, f) = (hanging.clone(), first.clone());
    let hook = common::servers::Hook::slow(std::time::Duration::ZERO, move |_| {
        if f.swap(false, Ordering::SeqCst) {
            h.store(true, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_secs(30));
        }
    });
    let Some(backend) = Backend::postgres("a_killed_workers_claims_are_shown_and_waited_for")
    else {
        return;
    };
    let case = hook_case(backend, 3, &hook.url, "8s");
    let mut a = case.spawn(&["process-sources", "--as-of", AS_OF]);
    common::wait_until("worker A in its call", || hanging.load(Ordering::SeqCst));
    let held = case
        .run(&["--json", "deliveries", "--state", "in_flight"])
        .success()
        .json();
    let held = held.as_array().expect("a list");
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(held.iter().all(|d| d["state"] == "in_flight"), "{held:?}");
    assert!(
        held.iter().all(|d| d["worker"]
            .as_str()
            .is_some_and(|w| w.contains(&a.id().to_string()))),
        "{held:?}"
    );
    assert!(
        held.iter().all(|d| d["lease_until"].is_string()),
        "{held:?}"
    );
    let text = case.run(&["deliveries"]).success().stdout();
    assert!(
        text.contains("HELD_BY") && text.contains(" until "),
        "{text}"
    );
    a.kill().expect("kill -9");
    let _ = a.wait();
    let short = case.run(&["deliver", "--linger", "1s"]).status(1);
    short.stdout_has(&["0 delivered", "3 events", "held by other workers"]);
    let long = case.run(&["deliver", "--linger", "15s"]).success();
    long.stdout_has(&["3 delivered"]);
    assert!(case.deliveries().is_empty(), "nothing left owed");
}

/// A run that fails (exit 2, not killed) gives its claims back at once: it
/// once kept them for the lease, and the next run said `0 delivered`,
/// exit 0, with no hint why.
#[test]
fn a_run_that_fails_gives_its_claims_back_at_once() {
    let Some(backend) = Backend::postgres("a_run_that_fails_gives_its_claims_back_at_once") else {
        return;
    };
    let hook = common::servers::Hook::start();
    let case = hook_case(backend, 30, &hook.url, "60s");
    let url = case.pg_url().expect("postgres").to_owned();
    // The first call breaks the store under the run: its next batch of
    // new events cannot be recorded.
    let case = case.script(
        "break.sh",
        &format!(
            "[ -f broken ] && exit 0; touch broken; psql -X -q -d '{url}' -c 'ALTER TABLE spark_event RENAME TO spark_event_gone' >/dev/null"
        ),
    );
    let config = std::fs::read_to_string(case.path("spark.toml"))
        .expect("config")
        .replace("name = \"hook\"", "name = \"hook\"\nconcurrency = 1")
        .replace("[delivery]", "[delivery]\nbatch_size = 5")
        + "\n[[handlers]]\nname = \"breaker\"\ngroup = \"created\"\nkind = \"command\"\ncommand = [\"./break.sh\"]\n";
    let case = case.file("spark.toml", &config);
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(2)
        .stderr_has(&["spark_event"]);
    case.pg_sql("ALTER TABLE spark_event_gone RENAME TO spark_event");
    let claimed = case.query(
        "SELECT count(*) FROM spark_delivery WHERE claimed_by IS NOT NULL AND state <> 'in_flight'",
    );
    assert_eq!(
        claimed[0][0].as_deref(),
        Some("0"),
        "claims kept after exit 2"
    );
    let next = case.run(&["deliver"]).success();
    assert!(!next.stdout().contains(" 0 delivered"), "{}", next.stdout());
    assert!(case.deliveries().is_empty(), "{:?}", case.deliveries());
}

/// A database django-spark used first: its keys in the seen table with the
/// Python `repr()` contexts it stored.
fn django_spark_case(backend: Backend) -> Case {
    let case = common::challenges_case_on(
        backend,
        "(1, 'Swim', 'a@x', 1, '2026-03-01', '2026-06-01')",
        "",
    );
    // spark makes its tables (Django's DDL), then django-spark's rows arrive.
    case.run(&["migrate"]).success();
    case.sql(
        "INSERT INTO spark_event (\"key\", \"group\", created_at, context) VALUES
         ('challenge_ended_7', 'challenge_ended', '2025-01-01 10:00:00', '{''challenge'': <Challenge: Swim>}'),
         ('challenge_ended_8', 'challenge_ended', '2025-01-01 10:00:00', '{\"challenge\": {\"title\": \"Run\"}}');",
    );
    case
}

on_every_backend! {
    /// Replaying django-spark's `repr()` contexts once delivered
    /// `{"context": {"text": "..."}}`, and `{{ challenge.title }}` rendered
    /// empty, silently: refused unless asked for, naming the keys.
    fn replaying_a_context_that_is_not_json_is_refused_unless_asked(backend: Backend) {
        let case = django_spark_case(backend);
        let before = case.db_bytes();
        for args in [
            &["replay", "--handler", "log", "--key", "challenge_ended_7"][..],
            &["replay", "--handler", "log", "--group", "ended"],
        ] {
            case.run(args)
                .status(2)
                .stderr_has(&["challenge_ended_7", "not JSON", "--text-contexts"]);
        }
        assert_eq!(case.db_bytes(), before, "something was written");
        case.run(&["replay", "--handler", "log", "--key", "challenge_ended_8"])
            .success();
        case.run(&["replay", "--handler", "log", "--key", "challenge_ended_7", "--text-contexts"])
            .success();
        case.run(&["process-sources", "--as-of", AS_OF]).success();
        let lines = case.lines("events.jsonl");
        let seven = lines.iter().find(|l| l.contains("challenge_ended_7")).expect("replayed");
        let v: serde_json::Value = serde_json::from_str(seven).expect("JSON");
        assert_eq!(v["context"]["text"], "{'challenge': <Challenge: Swim>}");
    }

    /// `show` of a django-spark key once said "handler log: done (in the
    /// file)" though spark never wrote it.
    fn show_says_an_event_was_recorded_before_spark(backend: Backend) {
        let case = django_spark_case(backend);
        let out = case.run(&["show", "challenge_ended_7"]).success().stdout();
        assert!(out.contains("recorded before spark"), "{out}");
        assert!(!out.contains("done (in the file)"), "{out}");
        assert!(out.contains("<Challenge: Swim>"), "{out}");
        let json = case.run(&["--json", "show", "challenge_ended_7"]).success().json();
        assert_eq!(json["recorded_before_spark"], true);
        let eight = case.run(&["show", "challenge_ended_8"]).success().stdout();
        assert!(!eight.contains("recorded before spark"), "{eight}");
    }
}

on_every_backend! {
    /// When spark made `spark_event` first, a later `manage.py migrate` of a
    /// project with django-spark installed fails ("relation spark_event
    /// already exists"): `check` says how to fake its migrations.
    fn check_says_to_fake_django_sparks_migrations_when_spark_made_the_table(backend: Backend) {
        let case = common::challenges_case_on(
            backend,
            "(1, 'Swim', 'a@x', 1, '2026-03-01', '2026-06-01')",
            "",
        );
        case.sql(
            "CREATE TABLE django_migrations (id INTEGER PRIMARY KEY, app varchar(255) NOT NULL,
                 name varchar(255) NOT NULL, applied timestamp NOT NULL);
             INSERT INTO django_migrations (app, name, applied) VALUES ('contenttypes', '0001_initial', '2025-01-01');",
        );
        case.run(&["process-sources", "--as-of", AS_OF]).success();
        let out = case.run(&["check"]).success();
        let text = format!("{}{}", out.stdout(), out.stderr());
        assert!(text.contains("migrate spark 0002 --fake"), "{text}");
        case.sql(
            "INSERT INTO django_migrations (app, name, applied) VALUES
             ('spark', '0001_initial', '2025-01-01'), ('spark', '0002_auto', '2025-01-01');",
        );
        let out = case.run(&["check"]).success();
        let text = format!("{}{}", out.stdout(), out.stderr());
        assert!(!text.contains("--fake"), "{text}");
    }
}

/// A query source whose table is missing said only ``source `challenges`:
/// its query does not run: ERROR: relation "challenge" does not exist``,
/// not which database it had connected to (from libpq's variables, say).
#[test]
fn errors_about_records_name_the_database_they_came_from() {
    let Some(backend) = Backend::postgres("errors_about_records_name_the_database") else {
        return;
    };
    let case = Case::on(backend).config(&challenge_config(""));
    let url = case.pg_url().expect("postgres").to_owned();
    let db = url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    // Connected through libpq's variables, as cron jobs often are.
    let config = std::fs::read_to_string(case.path("spark.toml"))
        .expect("config")
        .replace(&format!("url = \"{url}\""), "url = \"\"");
    let case = case.file("spark.toml", &config);
    for args in [
        &["check"][..],
        &["process-sources", "--as-of", AS_OF],
        &["dry-run", "--as-of", AS_OF],
    ] {
        let out = case
            .command()
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", "5432")
            .env("PGUSER", "postgres")
            .env("PGDATABASE", &db)
            .args(args)
            .output()
            .expect("run");
        let run = common::Run { output: out }.status(2);
        run.stderr_has(&[
            "source `challenges`",
            "challenge",
            &format!("postgres@127.0.0.1:5432/{db}"),
        ]);
    }
}

/// `mysql://...` was read as libpq key=value pairs ("is not followed by
/// `=`"), and `path = "mysql://..."` as a missing SQLite file. Now a MySQL
/// URL is MySQL's (a server that does not answer is named, without its
/// password), and one given as `path` says it goes in `url`.
#[test]
fn a_mysql_url_is_read_as_mysql() {
    for (line, says) in [
        (
            "url = \"mysql://spark:pw-s3cret@127.0.0.1:1/app\"",
            "spark@127.0.0.1:1/app",
        ),
        (
            "url = \"mariadb://spark@127.0.0.1:1/app\"",
            "spark@127.0.0.1:1/app",
        ),
        (
            "path = \"mysql://spark@db.internal/app\"",
            "a MySQL/MariaDB URL goes in `url`",
        ),
    ] {
        let case = Case::new().file(
            "spark.toml",
            &challenge_config("").replace("path = \"app.sqlite3\"", line),
        );
        for command in ["check", "process-sources"] {
            let run = case.run(&[command]).status(2).stderr_has(&[says]);
            assert!(!run.stderr().contains("followed by"), "{}", run.stderr());
            assert!(!run.stderr().contains("does not exist"), "{}", run.stderr());
            assert!(!run.stderr().contains("pw-s3cret"), "{}", run.stderr());
        }
    }
}

/// `listen` set and no trigger notifying the channel: `check` said nothing,
/// and watch woke on its interval only.
#[test]
fn check_warns_when_no_trigger_notifies_the_listen_channel() {
    let Some(backend) = Backend::postgres("check_warns_when_no_trigger_notifies") else {
        return;
    };
    let case = common::challenges_case_on(
        backend,
        "(1, 'Swim', 'a@x', 1, '2026-03-01', '2026-06-01')",
        "",
    );
    let config = std::fs::read_to_string(case.path("spark.toml"))
        .expect("config")
        .replace("lease = \"3s\"", "lease = \"3s\"\nlisten = \"spark_wake\"");
    let case = case.file("spark.toml", &config);
    let warned = |case: &Case| {
        let run = case.run(&["check"]).success();
        format!("{}{}", run.stdout(), run.stderr()).contains("no trigger")
    };
    assert!(warned(&case), "no warning without a trigger");
    case.pg_sql(
        "CREATE FUNCTION spark_wake() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_notify('spark_wake', ''); RETURN NULL; END $$;
         CREATE TRIGGER spark_wake AFTER INSERT OR UPDATE ON challenge
         FOR EACH STATEMENT EXECUTE FUNCTION spark_wake();",
    );
    assert!(!warned(&case), "a warning though the trigger is there");
}

#[test]
fn config_help_says_what_config_prints() {
    let out = Case::new().run(&["config", "--help"]).success().stdout();
    assert!(!out.contains("expanded"), "{out}");
    assert!(out.contains("${VAR}"), "{out}");
}
