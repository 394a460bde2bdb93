//! Declarative generators (django-spark's spark_generators): conditions,
//! types, records read once per record set, listing.

mod common;

use common::{Case, sorted};

const STUFF: &str = "
CREATE TABLE stuff (id INTEGER PRIMARY KEY, key_length INTEGER, label TEXT, score REAL, due date, done bool);
INSERT INTO stuff VALUES
  (1, 3, 'short', 1.5, '2026-01-10', 0),
  (2, 7, 'long', 2.5, '2026-02-10', 1),
  (3, 9, 'longer', 9.0, '2026-03-10', 0),
  (4, NULL, 'unknown', NULL, 'someday', NULL);
";

fn config(sources: &str) -> String {
    format!(
        r#"
[database]
path = "app.sqlite3"

{sources}

[[handlers]]
name = "log"
group = "."
kind = "jsonl"
path = "events.jsonl"
"#
    )
}

#[test]
fn a_generator_yields_an_event_per_matching_record() {
    let case = Case::new().db(STUFF).config(&config(
        r#"
[[sources]]
name = "long-keys"
table = "stuff"
group = "stuff_bla"
id = "id"
conditions = [ { variable = "key_length", op = ">", value = 5 } ]
"#,
    ));
    case.run(&["process-sources"])
        .success()
        .stdout_has(&["4 records", "2 events", "2 new"]);
    assert_eq!(
        case.jsonl_keys("events.jsonl"),
        ["stuff_bla_2", "stuff_bla_3"]
    );
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(case.path("events.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["group"], "stuff_bla");
    assert_eq!(
        line["context"]["label"], "long",
        "the context is the record"
    );
    case.run(&["process-sources"])
        .success()
        .stdout_has(&["0 new"]);
}

#[test]
fn every_type_compares_as_documented() {
    let case = Case::new().db(STUFF).config(&config(
        r#"
[[sources]]
name = "floats"
table = "stuff"
group = "score"
conditions = [ { variable = "score", op = ">=", value = 2.5 } ]

[[sources]]
name = "strings"
table = "stuff"
group = "label"
conditions = [ { variable = "label", op = "<", value = "m" } ]

[[sources]]
name = "dates"
table = "stuff"
group = "due"
conditions = [ { variable = "due", op = "<", value = 2026-02-11 } ]

[[sources]]
name = "booleans"
table = "stuff"
group = "done"
conditions = [ { variable = "done", op = "=", value = true } ]

[[sources]]
name = "two-conditions"
table = "stuff"
group = "both"
conditions = [
  { variable = "key_length", op = "!=", value = 7 },
  { variable = "label", op = "!=", value = "short" },
]

[[sources]]
name = "missing-column"
table = "stuff"
group = "never"
conditions = [ { variable = "no_such_column", op = "!=", value = 0 } ]
"#,
    ));
    case.run(&["process-sources"]).success();
    assert_eq!(
        sorted(&case.jsonl_keys("events.jsonl")),
        sorted(&[
            "score_2", // floats: 2.5 >= 2.5
            "score_3", // 9.0; a NULL score never matches
            "label_2", // strings byte by byte: "long" < "m"
            "label_3", // "longer" < "m"; "short" and "unknown" are not
            "due_1",   // dates: 2026-01-10 < 2026-02-11
            "due_2",   // 2026-02-10; "someday" is not a date: no match
            "done_2",  // booleans: 1 = true; NULL never matches
            "both_3",  // both conditions; record 4's NULL key_length never matches
        ])
    );
}

#[test]
fn generators_over_the_same_records_read_them_once() {
    let case = Case::new().db(STUFF).config(&config(
        r#"
[[sources]]
name = "a"
table = "stuff"
group = "a"

[[sources]]
name = "b"
table = "stuff"
group = "b"
conditions = [ { variable = "key_length", op = ">", value = 5 } ]

[[sources]]
name = "c"
query = "SELECT * FROM stuff WHERE id = 1"
group = "c"
"#,
    ));
    let run = case.run(&["process-sources", "-v", "--json"]).success();
    let reads: Vec<String> = run
        .stderr()
        .lines()
        .filter(|l| l.contains("reading records once"))
        .map(str::to_owned)
        .collect();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(reads[0].contains("sources=a, b"), "{reads:?}");
    assert!(reads[1].contains("sources=c"), "{reads:?}");
    let report = run.json();
    assert_eq!(report["sources"][0]["records"], 4);
    assert_eq!(report["sources"][1]["records"], 4);
    assert_eq!(report["sources"][1]["new"], 2);
    assert_eq!(report["sources"][2]["records"], 1);
    assert_eq!(case.jsonl_keys("events.jsonl").len(), 4 + 2 + 1);
}

#[test]
fn a_disabled_generator_does_not_run() {
    let case = Case::new().db(STUFF).config(&config(
        r#"
[[sources]]
name = "off"
table = "stuff"
group = "off"
enabled = false
"#,
    ));
    case.run(&["process-sources"])
        .success()
        .stdout_has(&["0 records"]);
    assert!(case.jsonl_keys("events.jsonl").is_empty());
    case.run(&["list-sources"])
        .success()
        .stdout_has(&["off", "no"]);
}

#[test]
fn list_sources_shows_conditions_readably() {
    let case = Case::new().db(STUFF).config(&config(
        r#"
[[sources]]
name = "long-keys"
table = "stuff"
group = "stuff_bla"
conditions = [
  { variable = "key_length", op = ">", value = 5 },
  { variable = "label", op = "=", value = "long" },
]
"#,
    ));
    case.run(&["list-sources"]).success().stdout_has(&[
        "long-keys",
        "generator (id: id)",
        "stuff_bla",
        "key_length > 5 and label = \"long\"",
    ]);
    let json = case.run(&["list-sources", "--json"]).success().json();
    assert_eq!(json[0]["kind"], "generator");
    assert_eq!(json[0]["conditions"][0], "key_length > 5");
}

#[test]
fn a_value_of_the_wrong_type_for_its_column_is_a_config_error() {
    let case = Case::new().db(STUFF).config(&config(
        r#"
[[sources]]
name = "typo"
table = "stuff"
group = "g"
conditions = [ { variable = "key_length", op = ">", value = "5" } ]
"#,
    ));
    let before = case.db_bytes();
    case.run(&["process-sources"]).status(2).stderr_has(&[
        "source `typo`",
        "condition `key_length > \"5\"`",
        "column `key_length`, declared INTEGER",
        "a string",
    ]);
    assert_eq!(case.db_bytes(), before);
}

#[test]
fn bad_generators_are_rejected_with_their_line() {
    for (source, expected) in [
        (
            "[[sources]]\nname = \"g\"\ntable = \"stuff\"\ngroup = \"g\"\nconditions = [ { variable = \"id\", op = \"=>\", value = 1 } ]",
            "unknown operator `=>`",
        ),
        (
            "[[sources]]\nname = \"g\"\ntable = \"stuff\"\ngroup = \"g\"\nfunction = \"challenge_events\"",
            "give either `function`",
        ),
        (
            "[[sources]]\nname = \"g\"\ntable = \"stuff\"\ngroup = \"g\"\nconditions = [ { variable = \"id\", op = \"=\", value = [1] } ]",
            "must be a number, a string, a date or a boolean",
        ),
        (
            "[[sources]]\nname = \"g\"\ntable = \"stuff\"\ngroup = \"g\"\nid = \"uuid\"",
            "column `uuid`",
        ),
    ] {
        let case = Case::new().db(STUFF).config(&config(source));
        case.run(&["process-sources"])
            .status(2)
            .stderr_has(&["`g`", expected]);
    }
}
