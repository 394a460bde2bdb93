//! The core scenario of SPEC.md: records become events, each new key is
//! dispatched exactly once, and seen keys stay seen.

mod common;

use common::{Backend, CHALLENGE_SCHEMA, Case, challenge_config, sorted};

const AS_OF: &str = "2026-03-10";

/// Hand-picked challenges covering every branch of `challenge_events` for
/// today = 2026-03-10.
fn seed_case(backend: Backend, extra_config: &str) -> Case {
    Case::on(backend)
        .db(&format!(
            "{CHALLENGE_SCHEMA}
            INSERT INTO challenge VALUES
              (1, 'old, no donations', 'a@x', 1, '2026-03-01', '2026-03-30'),
              (2, 'old, two donations', 'b@x', 1, '2026-03-01', '2026-03-30'),
              (3, 'ends in two days', 'c@x', 1, '2026-03-09', '2026-03-12'),
              (4, 'ended', 'd@x', 1, '2026-02-01', '2026-03-05'),
              (5, 'inactive', 'e@x', 0, '2026-02-01', '2026-03-05'),
              (6, 'started two days ago', 'f@x', 1, '2026-03-08', '2026-03-13'),
              (7, 'ends today', 'g@x', 1, '2026-03-01', '2026-03-10');
            INSERT INTO donation (challenge_id, amount) VALUES (2, 1), (2, 2), (4, 1), (7, 1), (7, 2), (7, 3);"
        ))
        .config(&challenge_config(extra_config))
}

const SEED_KEYS: [&str; 12] = [
    "challenge_created_1",
    "challenge_inactivity_2d_1",
    "challenge_created_2",
    "challenge_created_3",
    "challenge_ends_2d_3",
    "challenge_created_4",
    "challenge_inactivity_2d_4",
    "challenge_ends_2d_4",
    "challenge_ended_4",
    "challenge_created_6",
    "challenge_created_7",
    "challenge_ends_2d_7",
];

/// Exactly the DDL Django 3.2 emits for django-spark 0.3.0's Event.
const DJANGO_DDL: &str = r#"
CREATE TABLE "spark_event" ("key" varchar(100) NOT NULL PRIMARY KEY, "group" varchar(50) NOT NULL, "created_at" datetime NOT NULL, "context" text NOT NULL);
CREATE INDEX "spark_event_group_95029792" ON "spark_event" ("group");
INSERT INTO spark_event VALUES
  ('challenge_created_1', 'challenge_created', '2026-03-01 10:00:00.123456', '{''challenge'': <Challenge: Challenge object (1)>}'),
  ('challenge_ended_4', 'challenge_ended', '2026-03-06 10:00:00', '{''challenge'': <Challenge: Challenge object (4)>}');
"#;

#[test]
fn django_spark_history_stays_seen_and_untouched() {
    let case = seed_case(Backend::Sqlite, "");
    case.sql(DJANGO_DDL);
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["10 new"]);
    let keys = case.jsonl_keys("events.jsonl");
    assert_eq!(keys.len(), 10);
    assert!(!keys.contains(&"challenge_created_1".to_owned()));
    assert!(!keys.contains(&"challenge_ended_4".to_owned()));

    let conn = rusqlite::Connection::open(case.path("app.sqlite3")).unwrap();
    let old: Vec<(String, String, String)> = conn
        .prepare("SELECT key, created_at, context FROM spark_event WHERE key IN ('challenge_created_1', 'challenge_ended_4') ORDER BY key")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        old,
        [
            (
                "challenge_created_1".to_owned(),
                "2026-03-01 10:00:00.123456".to_owned(),
                "{'challenge': <Challenge: Challenge object (1)>}".to_owned()
            ),
            (
                "challenge_ended_4".to_owned(),
                "2026-03-06 10:00:00".to_owned(),
                "{'challenge': <Challenge: Challenge object (4)>}".to_owned()
            ),
        ]
    );
    // spark's rows use the same format and JSON contexts.
    let (created_at, context): (String, String) = conn
        .query_row(
            "SELECT created_at, context FROM spark_event WHERE key = 'challenge_created_2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(created_at.len(), "2026-03-01 10:00:00.123456".len());
    let ctx: serde_json::Value = serde_json::from_str(&context).unwrap();
    assert_eq!(ctx["challenge"]["id"], 2);
    // The Django index is still the only one on the table.
    let indexes: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'spark_event' AND sql IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 1);
}

on_every_backend! {
fn seed_scenario_dispatches_every_branch_exactly_once(backend: Backend) {
    let case = seed_case(backend, "");
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&[
            "7 records",
            "12 events",
            "12 new",
            "12 delivered",
            "0 failed",
        ]);
    let keys = case.jsonl_keys("events.jsonl");
    assert_eq!(sorted(&keys), sorted(&SEED_KEYS), "each key once, no other");

    let seen = case.seen();
    assert_eq!(seen.len(), 12);
    for key in SEED_KEYS {
        let group = key.rsplit_once('_').map(|(g, _)| g).unwrap();
        assert_eq!(seen.get(key).map(String::as_str), Some(group), "{key}");
    }
    assert!(case.deliveries().is_empty(), "every delivery finished");

    // A second run finds nothing new and writes nothing more.
    let before = std::fs::read(case.path("events.jsonl")).unwrap();
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["0 new", "0 delivered"]);
    assert_eq!(std::fs::read(case.path("events.jsonl")).unwrap(), before);
}

fn jsonl_lines_carry_key_group_context_and_time(backend: Backend) {
    let case = seed_case(backend, "");
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    let text = std::fs::read_to_string(case.path("events.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["key"], "challenge_created_1");
    assert_eq!(first["group"], "challenge_created");
    assert_eq!(first["context"]["challenge"]["title"], "old, no donations");
    assert_eq!(first["context"]["challenge"]["donation_count"], 0);
    assert!(first["seen_at"].as_str().unwrap().starts_with("20"));
}

fn a_later_day_dispatches_only_the_new_branches(backend: Backend) {
    let case = seed_case(backend, "");
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    // Three days later challenges 3 and 6 started more than two days ago
    // with no donations, 6 ends today, and 3 and 7 have ended.
    case.run(&["process-sources", "--as-of", "2026-03-13"])
        .success()
        .stdout_has(&["5 new"]);
    let keys = case.jsonl_keys("events.jsonl");
    assert_eq!(
        sorted(&keys[12..]),
        sorted(&[
            "challenge_ended_3",
            "challenge_inactivity_2d_3",
            "challenge_inactivity_2d_6",
            "challenge_ends_2d_6",
            "challenge_ended_7"
        ])
    );
}

fn dry_run_writes_nothing_and_lists_what_would_be_dispatched(backend: Backend) {
    let case = seed_case(backend, "");
    let before = case.db_bytes();
    let run = case
        .run(&["dry-run", "--as-of", AS_OF])
        .success()
        .stdout_has(&["challenge_ended_4 -> log", "12 new", "nothing was written"]);
    assert_eq!(
        run.stdout().lines().filter(|l| l.contains(" -> ")).count(),
        12
    );
    assert_eq!(case.db_bytes(), before, "database byte-identical");
    assert!(!case.path("events.jsonl").exists(), "no handler output");
    assert_eq!(
        case.tables(),
        ["challenge", "donation"],
        "not even the schema"
    );

    // After a real run, a dry run finds nothing new.
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    let before = case.db_bytes();
    case.run(&["dry-run", "--as-of", AS_OF])
        .success()
        .stdout_has(&["0 new"]);
    assert_eq!(case.db_bytes(), before);
}

fn dry_run_json_is_one_document(backend: Backend) {
    let case = seed_case(backend, "");
    let run = case.run(&["dry-run", "--as-of", AS_OF, "--json"]).success();
    let doc = run.json();
    assert_eq!(doc["events"].as_array().unwrap().len(), 12);
    assert_eq!(doc["events"][0]["handlers"][0], "log");
    assert_eq!(doc["summary"]["new"], 12);
}

fn handler_groups_use_search_semantics(backend: Backend) {
    let case = seed_case(
        backend,
        r#"
[[handlers]]
name = "ended"
group = "ended"
kind = "jsonl"
path = "ended.jsonl"

[[handlers]]
name = "anchored"
group = "^ended"
kind = "jsonl"
path = "anchored.jsonl"

[[handlers]]
name = "reminders"
group = "_2d$"
kind = "jsonl"
path = "reminders.jsonl"
"#,
    );
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    assert_eq!(case.jsonl_keys("ended.jsonl"), ["challenge_ended_4"]);
    assert!(case.jsonl_keys("anchored.jsonl").is_empty());
    assert_eq!(
        sorted(&case.jsonl_keys("reminders.jsonl")),
        sorted(&[
            "challenge_inactivity_2d_1",
            "challenge_ends_2d_3",
            "challenge_inactivity_2d_4",
            "challenge_ends_2d_4",
            "challenge_ends_2d_7"
        ])
    );
    // Every matching handler got the event, the first handler included.
    assert_eq!(case.jsonl_keys("events.jsonl").len(), 12);
}

fn mark_seen_suppresses_a_key(backend: Backend) {
    let case = seed_case(backend, "");
    case.run(&["mark-seen", "challenge_ended_4"])
        .success()
        .stdout_has(&["marked challenge_ended_4 as seen"]);
    assert_eq!(
        case.seen().get("challenge_ended_4").map(String::as_str),
        Some("challenge_ended")
    );
    case.run(&["mark-seen", "challenge_ended_4", "--group", "other"])
        .success()
        .stdout_has(&["already seen"]);
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["11 new"]);
    let keys = case.jsonl_keys("events.jsonl");
    assert_eq!(keys.len(), 11);
    assert!(!keys.contains(&"challenge_ended_4".to_owned()));
}

fn mark_seen_json_and_explicit_group(backend: Backend) {
    let case = seed_case(backend, "");
    let run = case
        .run(&["mark-seen", "weird-key", "--group", "g", "--json"])
        .success();
    assert_eq!(run.json()["new"], true);
    assert_eq!(case.seen().get("weird-key").map(String::as_str), Some("g"));
}

fn source_option_restricts_the_run(backend: Backend) {
    let case = seed_case(
        backend,
        r#"
[[sources]]
name = "active-only"
function = "challenge_events"
query = "SELECT c.*, 0 AS donation_count FROM challenge c WHERE id = 6"
"#,
    );
    case.run(&[
        "process-sources",
        "--as-of",
        AS_OF,
        "--source",
        "active-only",
    ])
    .success()
    .stdout_has(&["1 records", "1 new"]);
    assert_eq!(case.jsonl_keys("events.jsonl"), ["challenge_created_6"]);
    case.run(&["process-sources", "--source", "nope"])
        .status(2)
        .stderr_has(&["--source nope", "active-only", "challenges"]);
}

fn table_and_where_read_records(backend: Backend) {
    let case = Case::on(backend)
        .db(&format!(
            "{CHALLENGE_SCHEMA}
            CREATE VIEW challenge_with_count AS SELECT c.*, 0 AS donation_count FROM challenge c;
            INSERT INTO challenge VALUES
              (1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30'),
              (2, 'b', 'b@x', 1, '2026-03-09', '2026-03-30');"
        ))
        .config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "one"
function = "challenge_events"
table = "challenge_with_count"
where = "id = 2"

[[handlers]]
name = "log"
group = "."
kind = "jsonl"
path = "out/events.jsonl"
"#,
        );
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    assert_eq!(case.jsonl_keys("out/events.jsonl"), ["challenge_created_2"]);
}
}
