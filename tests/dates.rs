//! Relative dates in generator conditions: `today`, `today+3d`, `now-2h`,
//! resolved against `--as-of`, on date, datetime and ISO-text columns, for
//! every operator, on both backends; and the slips that are exit 2 at load.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Backend, Case};

/// The run's moment: `--as-of` (UTC).
const AS_OF: &str = "2026-03-10T12:00:00Z";

const DATES: [&str; 6] = [
    "2026-03-08",
    "2026-03-09",
    "2026-03-10",
    "2026-03-11",
    "2026-03-13",
    "2026-04-01",
];

/// Datetimes (UTC) around the run's moment.
const MOMENTS: [&str; 6] = [
    "2026-03-09 23:00:00",
    "2026-03-10 09:00:00",
    "2026-03-10 10:00:00",
    "2026-03-10 11:30:00",
    "2026-03-10 12:00:00",
    "2026-03-11 08:00:00",
];

const OPS: [(&str, &str); 6] = [
    ("lt", "<"),
    ("le", "<="),
    ("gt", ">"),
    ("ge", ">="),
    ("eq", "="),
    ("ne", "!="),
];

fn holds(op: &str, left: &str, right: &str) -> bool {
    match op {
        "<" => left < right,
        "<=" => left <= right,
        ">" => left > right,
        ">=" => left >= right,
        "=" => left == right,
        _ => left != right,
    }
}

/// `(group suffix, condition value, what it stands for at AS_OF)`, and
/// which part of a value it compares (10: the date, 19: the moment).
struct Reference {
    name: &'static str,
    value: &'static str,
    means: &'static str,
    width: usize,
}

const DATE_REFS: [Reference; 4] = [
    Reference {
        name: "today",
        value: "today",
        means: "2026-03-10",
        width: 10,
    },
    Reference {
        name: "plus3d",
        value: "today+3d",
        means: "2026-03-13",
        width: 10,
    },
    Reference {
        name: "minus1d",
        value: "today - 1d",
        means: "2026-03-09",
        width: 10,
    },
    Reference {
        name: "plus1w",
        value: "today+1w",
        means: "2026-03-17",
        width: 10,
    },
];

const MOMENT_REFS: [Reference; 4] = [
    Reference {
        name: "now",
        value: "now",
        means: "2026-03-10 12:00:00",
        width: 19,
    },
    Reference {
        name: "minus2h",
        value: "now-2h",
        means: "2026-03-10 10:00:00",
        width: 19,
    },
    Reference {
        name: "minus90m",
        value: "now-90m",
        means: "2026-03-10 10:30:00",
        width: 19,
    },
    // A date compared with a datetime column compares its date part.
    Reference {
        name: "today",
        value: "today",
        means: "2026-03-10",
        width: 10,
    },
];

fn schema(backend: Backend) -> String {
    let datetime = match backend {
        Backend::Sqlite => "datetime",
        Backend::Postgres => "timestamptz",
        Backend::Mysql => "datetime(6)",
    };
    let suffix = match backend {
        Backend::Sqlite | Backend::Mysql => "",
        Backend::Postgres => "+00",
    };
    let mut sql = format!(
        "CREATE TABLE invoice (id INTEGER PRIMARY KEY, due date, paid_at {datetime}, due_text text);\n"
    );
    for (i, (date, moment)) in DATES.iter().zip(MOMENTS).enumerate() {
        sql.push_str(&format!(
            "INSERT INTO invoice VALUES ({}, '{date}', '{moment}{suffix}', '{date}');\n",
            i + 1
        ));
    }
    // Text that is not a date never matches, whatever the operator.
    sql.push_str("INSERT INTO invoice VALUES (7, NULL, NULL, 'someday');\n");
    sql
}

/// One generator per (column, reference, operator), and what each must
/// yield, computed from the values.
fn sources_and_expected() -> (String, BTreeMap<String, BTreeSet<String>>) {
    let mut toml = String::new();
    let mut expected = BTreeMap::new();
    let columns: [(&str, &[Reference], &[&str]); 3] = [
        ("due", &DATE_REFS, &DATES),
        ("paid_at", &MOMENT_REFS, &MOMENTS),
        ("due_text", &DATE_REFS, &DATES),
    ];
    for (column, refs, values) in columns {
        for r in refs {
            for (op_name, op) in OPS {
                let group = format!("{column}_{}_{op_name}", r.name);
                toml.push_str(&format!(
                    "[[sources]]\nname = \"{group}\"\ntable = \"invoice\"\ngroup = \"{group}\"\n\
                     conditions = [ {{ variable = \"{column}\", op = \"{op}\", value = \"{}\" }} ]\n\n",
                    r.value
                ));
                let keys: BTreeSet<String> = values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| holds(op, &v[..r.width], r.means))
                    .map(|(i, _)| format!("{group}_{}", i + 1))
                    .collect();
                expected.insert(group, keys);
            }
        }
    }
    (toml, expected)
}

on_every_backend! {
    fn relative_dates_compare_as_dates_for_every_operator(backend: Backend) {
        let (sources, expected) = sources_and_expected();
        let case = Case::on(backend).db(&schema(backend)).config(&format!(
            "[database]\npath = \"app.sqlite3\"\n\n{sources}\
             [[handlers]]\nname = \"log\"\ngroup = \".\"\nkind = \"jsonl\"\npath = \"events.jsonl\"\n"
        ));
        case.run(&["check"]).success();
        case.run(&["process-sources", "--as-of", AS_OF]).success();
        let mut got: BTreeMap<String, BTreeSet<String>> =
            expected.keys().map(|g| (g.clone(), BTreeSet::new())).collect();
        for key in case.jsonl_keys("events.jsonl") {
            let group = key.rsplit_once('_').unwrap().0.to_owned();
            got.entry(group).or_default().insert(key);
        }
        for (group, want) in &expected {
            assert_eq!(&got[group], want, "{group}");
        }
        // Not every generator matched everything or nothing.
        assert!(expected.values().any(|k| k.len() == 1));
        assert!(expected.values().any(|k| k.len() == 5));
    }

    fn as_of_moves_today_for_generators(backend: Backend) {
        let case = Case::on(backend).db(&schema(backend)).config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "overdue"
table = "invoice"
group = "overdue"
conditions = [ { variable = "due", op = "<", value = "today" } ]

[[handlers]]
name = "log"
group = "."
kind = "jsonl"
path = "events.jsonl"
"#,
        );
        case.run(&["dry-run", "--as-of", "2026-03-09", "--json"]).success();
        case.run(&["process-sources", "--as-of", "2026-03-10"])
            .success()
            .stdout_has(&["2 new"]);
        // The next day one more invoice is overdue; nothing twice.
        case.run(&["process-sources", "--as-of", "2026-03-11"])
            .success()
            .stdout_has(&["1 new"]);
        assert_eq!(
            case.jsonl_keys("events.jsonl"),
            ["overdue_1", "overdue_2", "overdue_3"]
        );
    }
}

#[test]
fn an_invoice_due_in_five_days_is_not_overdue_today() {
    // The report: `value = "today"` compared as text, so every date was
    // "before" it.
    let case = Case::new()
        .db(
            "CREATE TABLE invoice (id INTEGER PRIMARY KEY, due_date date);
             INSERT INTO invoice VALUES (1, date('now', 'localtime', '+5 days')),
                                        (2, date('now', 'localtime', '-1 day'));",
        )
        .config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "overdue"
table = "invoice"
group = "invoice_overdue"
conditions = [ { variable = "due_date", op = "<", value = "today" } ]

[[handlers]]
name = "log"
group = "."
kind = "jsonl"
path = "events.jsonl"
"#,
        );
    case.run(&["process-sources"]).success();
    assert_eq!(case.jsonl_keys("events.jsonl"), ["invoice_overdue_2"]);
}

fn one_condition(column_type: &str, value: &str) -> Case {
    Case::new()
        .db(&format!(
            "CREATE TABLE invoice (id INTEGER PRIMARY KEY, due {column_type});
             INSERT INTO invoice VALUES (1, '2026-03-01');"
        ))
        .config(&format!(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "overdue"
table = "invoice"
group = "overdue"
conditions = [
  {{ variable = "due", op = "<", value = {value} }},
]

[[handlers]]
name = "log"
group = "."
kind = "jsonl"
path = "events.jsonl"
"#
        ))
}

#[test]
fn a_literal_that_is_not_a_date_against_a_date_column_is_exit_2_with_the_line() {
    for (column_type, value) in [
        ("date", "\"tomorrow\""),
        ("datetime", "\"2026-13-01\""),
        ("date", "5"),
        ("timestamp", "true"),
    ] {
        let case = one_condition(column_type, value);
        for command in ["check", "process-sources"] {
            case.run(&[command]).status(2).stderr_has(&[
                "spark.toml:10:",
                "source `overdue`",
                "column `due`",
                "could never match",
            ]);
        }
        assert!(!common::exists(&case.path("events.jsonl")));
        assert!(
            !case.tables().iter().any(|t| t == "spark_event"),
            "nothing written"
        );
    }
}

#[test]
fn a_relative_value_written_wrong_is_exit_2_at_load() {
    for value in ["\"today+3\"", "\"today+3h\"", "\"now+2x\"", "\"today-\""] {
        let case = one_condition("date", value);
        case.run(&["check"]).status(2).stderr_has(&[
            "spark.toml:10:",
            "is not a relative value",
            "today+3d",
        ]);
    }
}

#[test]
fn dates_written_quoted_or_as_datetimes_compare_as_dates() {
    for (value, matches) in [
        ("\"2026-03-02\"", true),
        ("2026-03-02", true),
        ("\"2026-03-01\"", false),
        ("\"2026-03-01 00:00:01\"", true),
        ("2026-03-01T00:00:00Z", false),
        ("\"nowhere\"", true), // text compares as text
    ] {
        let case = one_condition("text", value);
        case.run(&["process-sources"]).success();
        assert_eq!(
            case.jsonl_keys("events.jsonl").len() == 1,
            matches,
            "due '2026-03-01' < {value}"
        );
    }
}
