//! Guarantee 4: bad input gets a clear error naming what is wrong, exit
//! status 2, and changes nothing: no database created, no partial writes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{CHALLENGE_QUERY, CHALLENGE_SCHEMA, Case, challenge_config};

fn files(dir: &Path) -> BTreeSet<String> {
    walk(dir, dir)
}

fn walk(root: &Path, dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(root, &path));
        } else {
            out.insert(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
    out
}

/// Runs `args` on a case whose config is `config` and checks: exit 2, stderr
/// names every part of `names`, and no file was created or changed.
fn rejects(case: Case, args: &[&str], names: &[&str]) {
    let before_files = files(case.dir.path());
    let db = case.path("app.sqlite3");
    let before_db = std::fs::read(&db).ok();
    case.run(args).status(2).stderr_has(names);
    assert_eq!(
        files(case.dir.path()),
        before_files,
        "no file created or removed"
    );
    assert_eq!(
        std::fs::read(&db).ok(),
        before_db,
        "database byte-identical"
    );
}

fn challenges() -> Case {
    Case::new().db(CHALLENGE_SCHEMA)
}

#[test]
fn invalid_toml_names_file_and_line() {
    rejects(
        challenges().config("[database]\npath = \"app.sqlite3\"\n[[sources]\n"),
        &["process-sources"],
        &["spark.toml:3:", "error:"],
    );
}

#[test]
fn unknown_key_names_the_key_and_line() {
    let config = challenge_config("").replace("kind = \"jsonl\"", "kind = \"jsonl\"\npaht = \"x\"");
    rejects(
        challenges().config(&config),
        &["process-sources"],
        &["unknown field `paht`", "spark.toml:"],
    );
}

#[test]
fn bad_regex_names_the_handler() {
    rejects(
        challenges().config(&challenge_config("").replace("^challenge", "^(challenge")),
        &["process-sources"],
        &["handler `log`", "invalid group regex `^(challenge`"],
    );
}

#[test]
fn unknown_function_names_the_source_and_the_known_ones() {
    rejects(
        challenges().config(&challenge_config("").replace("challenge_events", "challange_events")),
        &["process-sources"],
        &[
            "source `challenges`",
            "unknown function `challange_events`",
            "known: challenge_events",
        ],
    );
}

#[test]
fn unknown_handler_kind_is_named() {
    rejects(
        challenges().config(&challenge_config("").replace("\"jsonl\"", "\"pigeon\"")),
        &["process-sources"],
        &["handler `log`", "unknown kind `pigeon`"],
    );
}

#[test]
fn missing_table_names_source_and_table() {
    let config = challenge_config("").replace(
        &format!("query = \"{CHALLENGE_QUERY}\""),
        "table = \"challenges\"",
    );
    rejects(
        challenges().config(&config),
        &["process-sources"],
        &["source `challenges`", "table `challenges` does not exist"],
    );
}

#[test]
fn missing_column_names_source_and_column() {
    let config = challenge_config("").replace(
        &format!("query = \"{CHALLENGE_QUERY}\""),
        "table = \"challenge\"",
    );
    rejects(
        challenges().config(&config),
        &["process-sources"],
        &[
            "source `challenges`",
            "column `donation_count`",
            "challenge_events",
        ],
    );
}

#[test]
fn query_that_does_not_compile_names_the_source() {
    let config =
        challenge_config("").replace("FROM challenge c", "FROM challenge c WHERE nope = 1");
    rejects(
        challenges().config(&config),
        &["process-sources"],
        &[
            "source `challenges`",
            "query does not run",
            "no such column: nope",
        ],
    );
}

#[test]
fn bad_where_condition_names_the_source() {
    let config = challenge_config("").replace(
        &format!("query = \"{CHALLENGE_QUERY}\""),
        "table = \"challenge\"\nwhere = \"is_active = \"",
    );
    rejects(
        challenges().config(&config),
        &["process-sources"],
        &["source `challenges`", "`where` condition does not run"],
    );
}

#[test]
fn missing_database_is_not_created() {
    let case = Case::new().config(&challenge_config(""));
    rejects(
        case,
        &["process-sources"],
        &["app.sqlite3 does not exist", "never creates"],
    );
}

#[test]
fn file_that_is_not_a_database_stays_byte_identical() {
    let case = Case::new()
        .file("app.sqlite3", "name,email\nana,ana@example.org\n")
        .config(&challenge_config(""));
    rejects(
        case,
        &["process-sources"],
        &["app.sqlite3 is not a SQLite database"],
    );
}

#[test]
fn seen_table_of_the_wrong_shape_is_refused() {
    let case = challenges().config(&challenge_config(""));
    case.sql("CREATE TABLE spark_event (key TEXT PRIMARY KEY, payload TEXT)");
    rejects(
        case,
        &["process-sources"],
        &["seen table `spark_event`", "column `group` is missing"],
    );
}

#[test]
fn bad_durations_and_numbers_are_named() {
    let config =
        challenge_config("").replace("backoff = \"0s\"", "backoff = \"soon\"\nmax_attempts = -1");
    rejects(
        challenges().config(&config),
        &["process-sources"],
        &[
            "[delivery]: `backoff` = \"soon\" is not a duration",
            "`max_attempts` must be",
        ],
    );
}

#[test]
fn bad_as_of_date_is_refused() {
    rejects(
        challenges().config(&challenge_config("")),
        &["process-sources", "--as-of", "2026-02-30"],
        &["--as-of \"2026-02-30\"", "YYYY-MM-DD"],
    );
}

#[test]
fn missing_config_file_is_named() {
    rejects(
        challenges(),
        &["process-sources"],
        &["no config file at spark.toml"],
    );
}

#[test]
fn unknown_command_line_option_exits_2() {
    rejects(
        challenges().config(&challenge_config("")),
        &["process-sources", "--frobnicate"],
        &["--frobnicate"],
    );
}

#[test]
fn dry_run_and_mark_seen_reject_bad_input_too() {
    let case = Case::new()
        .file("app.sqlite3", "not a database")
        .config(&challenge_config(""));
    rejects(case, &["dry-run"], &["not a SQLite database"]);
    let case = Case::new()
        .file("app.sqlite3", "not a database")
        .config(&challenge_config(""));
    rejects(case, &["mark-seen", "k"], &["not a SQLite database"]);
}

#[test]
fn several_problems_are_reported_at_once() {
    let config = challenge_config("")
        .replace("^challenge", "(")
        .replace("challenge_events", "nope");
    rejects(
        challenges().config(&config),
        &["process-sources"],
        &["unknown function `nope`", "invalid group regex"],
    );
}

#[test]
fn bad_as_of_datetime_is_refused() {
    for bad in ["2026-03-10T25:00", "2026-03-10Tnoon", "tomorrow"] {
        rejects(
            challenges().config(&challenge_config("")),
            &["process-sources", "--as-of", bad],
            &["--as-of", "YYYY-MM-DD"],
        );
    }
}

#[test]
fn bad_new_settings_are_refused_naming_them() {
    let with = |database: &str, delivery: &str| {
        challenge_config("")
            .replace("path = \"app.sqlite3\"", database)
            .replace("backoff = \"0s\"", delivery)
    };
    rejects(
        challenges().config(&with(
            "path = \"app.sqlite3\"\nlisten = \"wake\"",
            "backoff = \"0s\"",
        )),
        &["process-sources"],
        &["[database]", "`listen`", "SQLite"],
    );
    rejects(
        challenges().config(&with(
            "url = \"postgresql://postgres@127.0.0.1:5432/test\"\nlisten = \"wake; DROP TABLE x\"",
            "backoff = \"0s\"",
        )),
        &["process-sources"],
        &["`listen`", "is not a channel name"],
    );
    rejects(
        challenges().config(&with(
            "path = \"app.sqlite3\"",
            "keep_history = \"forever\"",
        )),
        &["process-sources"],
        &["[delivery]", "`keep_history`", "not a duration"],
    );
    rejects(
        challenges().config(&challenge_config("strict_templates = \"yes\"")),
        &["process-sources"],
        &["strict_templates"],
    );
}

#[test]
fn bad_arguments_of_the_new_commands_are_refused() {
    let case = || challenges().config(&challenge_config(""));
    rejects(
        case(),
        &["replay", "--handler", "log", "--since", "last week"],
        &["--since", "YYYY-MM-DD"],
    );
    rejects(
        case(),
        &["replay", "--handler", "nope"],
        &["replay --handler nope", "no handler"],
    );
    rejects(
        case(),
        &["replay", "--handler", "log", "--group", "("],
        &["--group"],
    );
    rejects(
        case(),
        &["deliveries", "--state", "gone"],
        &["--state", "gone"],
    );
    rejects(
        case(),
        &["deliveries", "--state", "done", "--state", "dead"],
        &["cannot be mixed"],
    );
    rejects(case(), &["discard"], &["say which deliveries"]);
    rejects(
        case(),
        &["reassign", "old", "missing"],
        &["no handler `missing`"],
    );
    rejects(case(), &["watch", "--interval", "soon"], &["--interval"]);
    rejects(case(), &["show", "no_such_key"], &["no such seen event"]);
}
