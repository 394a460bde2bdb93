//! Incremental sources (`cursor`): a run reads only the records above the
//! source's high-water mark, full scans still happen when they must, the
//! mark moves with the batches it came from, and what is dispatched is what
//! a config without a cursor dispatches — on every backend.

mod common;

use common::*;

/// The column type Django gives a `DateTimeField` on each backend.
fn datetime_type(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "datetime",
        Backend::Postgres => "timestamp with time zone",
        Backend::Mysql => "datetime(6)",
    }
}

/// Posts with an amount and an `updated_at`, indexed as Django's
/// `db_index=True` makes it.
fn posts_schema(backend: Backend) -> String {
    format!(
        "CREATE TABLE post (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL, \
         seq INTEGER NOT NULL, updated_at {} NOT NULL, title TEXT NOT NULL);
         CREATE INDEX post_updated_at ON post (updated_at);
         CREATE INDEX post_seq ON post (seq);",
        datetime_type(backend)
    )
}

/// A config whose source `big` emits `big_<id>` for each post of 30 or
/// more, and `small` emits `small_<id>` for each under 10; with `cursor`
/// (a line like `cursor = "updated_at"`) under each.
fn posts_config(cursor: &str) -> String {
    format!(
        r#"
[database]
path = "app.sqlite3"

[delivery]
batch_size = 3

[[sources]]
name = "big"
table = "post"
group = "big"
{cursor}
conditions = [ {{ variable = "amount", op = ">=", value = 30 }} ]

[[sources]]
name = "small"
query = "SELECT id, amount, seq, updated_at FROM post WHERE amount < 10"
group = "small"
{cursor}

[[handlers]]
name = "log"
group = "."
kind = "jsonl"
path = "events.jsonl"
"#
    )
}

fn posts_case(backend: Backend, cursor: &str, rows: &str) -> Case {
    let case = Case::on(backend)
        .db(&posts_schema(backend))
        .config(&posts_config(cursor));
    if !rows.is_empty() {
        case.sql(&format!(
            "INSERT INTO post (id, amount, seq, updated_at, title) VALUES {rows};"
        ));
    }
    case
}

/// Each source's (records read, scan) of a `--json` run (or dry run).
fn scans(run: &Run) -> Vec<(String, u64, String)> {
    let json = run.json();
    let report = if json["summary"].is_object() {
        &json["summary"]
    } else {
        &json
    };
    report["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["records"].as_u64().unwrap_or_default(),
                s["scan"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

fn scan_of<'a>(scans: &'a [(String, u64, String)], name: &str) -> (u64, &'a str) {
    let s = scans.iter().find(|s| s.0 == name).expect("source");
    (s.1, s.2.as_str())
}

const OLD_POSTS: &str = "(1, 50, 1, '2025-01-01 10:00:00', 'a'), (2, 5, 2, '2025-02-01 10:00:00', 'b'), \
     (3, 20, 3, '2025-03-01 10:00:00', 'c'), (4, 20, 4, '2025-04-01 10:00:00', 'd'), \
     (5, 40, 5, '2025-06-01 10:00:00', 'e')";

on_every_backend! {
    fn a_run_reads_only_what_changed_since_the_mark(backend: Backend) {
        let case = posts_case(backend, "cursor = \"updated_at\"", OLD_POSTS);
        // The first run has no mark: it reads everything.
        let first = case.run(&["--json", "process-sources"]).success();
        let s = scans(&first);
        assert_eq!(scan_of(&s, "big"), (5, "full"));
        assert_eq!(scan_of(&s, "small"), (1, "full"));
        assert_eq!(sorted(&case.jsonl_keys("events.jsonl")), sorted(&["big_1", "big_5", "small_2"]));

        // Nothing changed: only the newest post (at the mark, less the
        // lookback) is read again.
        let idle = case.run(&["--json", "process-sources"]).success();
        let s = scans(&idle);
        assert_eq!(scan_of(&s, "big"), (1, "incremental"));
        assert_eq!(scan_of(&s, "small"), (1, "incremental"));

        // A new post and a changed one: read, and dispatched.
        case.sql(
            "INSERT INTO post (id, amount, seq, updated_at, title) VALUES (6, 31, 6, '2025-07-01 10:00:00', 'f');
             UPDATE post SET amount = 35, seq = 7, updated_at = '2025-07-01 10:00:01' WHERE id = 3;
             UPDATE post SET amount = 1, seq = 8, updated_at = '2025-07-01 10:00:02' WHERE id = 4;",
        );
        let changed = case.run(&["--json", "process-sources"]).success();
        let s = scans(&changed);
        assert_eq!(scan_of(&s, "big"), (4, "incremental"), "post 5 at the mark, then 6, 3 and 4");
        assert_eq!(scan_of(&s, "small"), (2, "incremental"), "post 2 at the mark, then 4");
        let keys = case.jsonl_keys("events.jsonl");
        assert_eq!(
            sorted(&keys),
            sorted(&["big_1", "big_5", "small_2", "big_6", "big_3", "small_4"]),
            "each key once"
        );

        // --full reads everything, finds nothing new.
        let full = case.run(&["--json", "process-sources", "--full"]).success();
        let s = scans(&full);
        assert_eq!(scan_of(&s, "big"), (6, "full"));
        assert_eq!(full.json()["new"], 0);
        assert_eq!(case.jsonl_keys("events.jsonl").len(), 6);
    }

    fn a_query_source_with_an_integer_cursor_reads_the_new_rows(backend: Backend) {
        let case = posts_case(backend, "cursor = \"seq\"", OLD_POSTS);
        case.run(&["process-sources"]).success();
        case.sql(
            "INSERT INTO post (id, amount, seq, updated_at, title) VALUES (6, 2, 6, '2020-01-01 00:00:00', 'f'), (7, 3, 7, '2020-01-01 00:00:00', 'g');",
        );
        let run = case.run(&["--json", "process-sources"]).success();
        let s = scans(&run);
        // Integers have no lookback: the mark (5) and what is above it.
        assert_eq!(scan_of(&s, "big"), (3, "incremental"));
        assert_eq!(scan_of(&s, "small"), (3, "incremental"));
        assert_eq!(
            sorted(&case.jsonl_keys("events.jsonl")),
            sorted(&["big_1", "big_5", "small_2", "small_6", "small_7"])
        );
    }

    fn a_changed_definition_or_date_reads_everything_again(backend: Backend) {
        let case = posts_case(backend, "cursor = \"updated_at\"", OLD_POSTS);
        case.run(&["process-sources"]).success();
        // A post below the mark that the old condition did not take.
        let lowered = posts_config("cursor = \"updated_at\"").replace("value = 30", "value = 20");
        let case = case.config(&lowered);
        let run = case.run(&["--json", "process-sources"]).success();
        let s = scans(&run);
        assert_eq!(scan_of(&s, "big"), (5, "full"), "a new condition: all read");
        assert_eq!(scan_of(&s, "small"), (1, "incremental"), "its own definition did not change");
        assert!(case.jsonl_keys("events.jsonl").contains(&"big_3".to_owned()));
        assert!(case.jsonl_keys("events.jsonl").contains(&"big_4".to_owned()));
        // Then incremental again.
        let run = case.run(&["--json", "process-sources"]).success();
        assert_eq!(scan_of(&scans(&run), "big").1, "incremental");
        // Another as-of date: rules that change with the date alone.
        let run = case
            .run(&["--json", "process-sources", "--as-of", "2031-01-01"])
            .success();
        assert_eq!(scan_of(&scans(&run), "big"), (5, "full"));
    }

    fn a_forgotten_key_fires_again_on_the_next_run(backend: Backend) {
        let case = posts_case(backend, "cursor = \"updated_at\"", OLD_POSTS);
        case.run(&["process-sources"]).success();
        case.run(&["forget", "big_1"]).success();
        let run = case.run(&["--json", "process-sources"]).success();
        assert_eq!(scan_of(&scans(&run), "big").1, "full");
        assert_eq!(run.json()["new"], 1);
        let keys = case.jsonl_keys("events.jsonl");
        assert_eq!(keys.iter().filter(|k| *k == "big_1").count(), 2);
    }

    fn list_sources_and_dry_runs_show_the_cursor(backend: Backend) {
        let case = posts_case(backend, "cursor = \"updated_at\"", OLD_POSTS);
        // Before any run: no mark, no full scan yet.
        case.run(&["list-sources"])
            .success()
            .stdout_has(&["CURSOR", "MARK", "LAST FULL SCAN", "updated_at"]);
        let dry = case.run(&["--json", "dry-run"]).success();
        assert_eq!(scan_of(&scans(&dry), "big"), (5, "full"));
        assert!(!case.tables().iter().any(|t| t == "spark_cursor"), "a dry run writes nothing");
        case.run(&["process-sources"]).success();
        let listed = case.run(&["--json", "list-sources"]).success().json();
        let big = &listed.as_array().expect("sources")[0];
        assert_eq!(big["cursor"]["column"], "updated_at");
        let mark = big["cursor"]["mark"].as_str().expect("a mark");
        assert!(mark.starts_with("2025-06-01") && mark.contains("10:00:00"), "{mark}");
        assert!(big["cursor"]["last_full_scan"].is_string());
        assert_eq!(big["cursor"]["config_changed"], false);
        case.run(&["list-sources"]).success().stdout_has(&["2025-06-01"]);

        case.sql("INSERT INTO post (id, amount, seq, updated_at, title) VALUES (6, 99, 6, '2025-08-01 00:00:00', 'f');");
        let before = case.query("SELECT mark FROM spark_cursor ORDER BY source");
        let dry = case.run(&["--json", "dry-run"]).success();
        assert_eq!(scan_of(&scans(&dry), "big"), (2, "incremental"));
        assert_eq!(dry.json()["summary"]["new"], 1);
        let dry = case.run(&["--json", "dry-run", "--full"]).success();
        assert_eq!(scan_of(&scans(&dry), "big"), (6, "full"));
        assert_eq!(dry.json()["summary"]["new"], 1);
        assert_eq!(case.query("SELECT mark FROM spark_cursor ORDER BY source"), before);
    }

    fn a_cursor_the_records_lack_or_that_cannot_grow_is_exit_2(backend: Backend) {
        for (cursor, names) in [
            ("cursor = \"changed\"", vec!["source `big`", "`changed`", "cursor"]),
            ("cursor = \"title\"", vec!["source `big`", "`title`", "do not grow"]),
        ] {
            let case = posts_case(backend, cursor, OLD_POSTS);
            let run = case.run(&["process-sources"]).status(2).stderr_has(&names);
            assert!(run.stdout().is_empty());
            assert!(case.jsonl_keys("events.jsonl").is_empty());
            assert!(!case.tables().iter().any(|t| t.starts_with("spark")), "nothing written");
            case.run(&["check"]).status(2).stderr_has(&names);
        }
    }
}

on_every_backend! {
    fn the_mark_moves_with_the_batch_it_came_from(backend: Backend) {
        // A run killed after its second batch: what was recorded stays
        // recorded with its mark; the next run dispatches the rest, each
        // key once.
        let case = posts_case(backend, "cursor = \"seq\"", "");
        case.run(&["process-sources"]).success();
        let rows: Vec<String> = (1..=20)
            .map(|i| format!("({i}, 50, {i}, '2025-01-01 00:00:00', 't')"))
            .collect();
        case.sql(&format!(
            "INSERT INTO post (id, amount, seq, updated_at, title) VALUES {};",
            rows.join(", ")
        ));
        let killed = case
            .command()
            .args(["process-sources"])
            .env("SPARK_CRASH_AT", "batch-recorded:2")
            .output()
            .expect("run");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed.status), Some(9));
        let marks = case.query("SELECT mark FROM spark_cursor WHERE source = 'big'");
        let mark: i64 = marks[0][0].as_deref().expect("a mark").parse().expect("an integer");
        assert!((3..=6).contains(&mark), "the mark of the records recorded: {mark}");
        case.let_leases_run_out();
        let run = case.run(&["--json", "process-sources"]).success();
        assert_eq!(scan_of(&scans(&run), "big").1, "incremental");
        let expected: Vec<String> = (1..=20).map(|i| format!("big_{i}")).collect();
        assert_eq!(sorted(&case.seen().into_keys().collect::<Vec<_>>()), sorted(&expected));
        let keys = case.jsonl_keys("events.jsonl");
        for key in &expected {
            assert_eq!(keys.iter().filter(|k| *k == key).count(), 1, "{key} once");
        }
    }

    fn hostile_cursor_values_never_reach_sql_nor_stall_the_mark(backend: Backend) {
        let case = posts_case(backend, "cursor = \"updated_at\"", OLD_POSTS);
        // A date far ahead (a wrong clock, a hostile value) moves no mark.
        case.sql("UPDATE post SET updated_at = '9999-12-31 23:59:59' WHERE id = 2;");
        case.run(&["process-sources"]).success();
        case.sql("INSERT INTO post (id, amount, seq, updated_at, title) VALUES (6, 77, 6, '2025-09-01 00:00:00', 'x');");
        let run = case.run(&["--json", "process-sources"]).success();
        assert_eq!(scan_of(&scans(&run), "big"), (3, "incremental"), "post 5 at the mark, 6, and 2 dated 9999");
        assert!(case.jsonl_keys("events.jsonl").contains(&"big_6".to_owned()));
    }
}

#[test]
fn text_in_an_undeclared_cursor_column_is_never_a_mark() {
    // A query's expression has no declared type: its values are judged
    // one by one, and text that is not a date (here SQL) moves nothing.
    let case = Case::new()
        .db("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO t VALUES (1, '2026-01-01''; DROP TABLE t; --'), (2, 'x');")
        .config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "t"
query = "SELECT id, v || '' AS c FROM t"
cursor = "c"
group = "t"

[[handlers]]
name = "log"
group = "."
kind = "jsonl"
path = "events.jsonl"
"#,
        );
    case.run(&["process-sources"]).success();
    case.run(&["process-sources"]).success();
    assert_eq!(
        case.query("SELECT mark FROM spark_cursor"),
        vec![vec![None]]
    );
    assert_eq!(
        case.query("SELECT count(*) FROM t"),
        vec![vec![Some("2".into())]]
    );
    assert_eq!(
        sorted(&case.jsonl_keys("events.jsonl")),
        sorted(&["t_1", "t_2"])
    );
}

#[test]
fn lookback_and_rescan_without_a_cursor_are_config_errors() {
    let case = posts_case(Backend::Sqlite, "rescan = \"10m\"", OLD_POSTS);
    case.run(&["process-sources"]).status(2).stderr_has(&[
        "spark.toml",
        "rescan",
        "without `cursor`",
    ]);
    let case = posts_case(
        Backend::Sqlite,
        "cursor = \"updated_at\"\ncursor_lookback = \"soon\"",
        OLD_POSTS,
    );
    case.run(&["process-sources"])
        .status(2)
        .stderr_has(&["spark.toml", "cursor_lookback"]);
    assert!(!case.path("events.jsonl").exists());
}

#[test]
fn check_warns_of_a_cursor_column_no_index_serves() {
    let case = posts_case(Backend::Sqlite, "cursor = \"updated_at\"", OLD_POSTS);
    case.run(&["check"]).success();
    assert!(!case.run(&["check"]).stderr().contains("no index"));
    case.sql("DROP INDEX post_updated_at;");
    case.run(&["check"])
        .success()
        .stderr_has(&["source `big`", "no index", "updated_at"]);
    // `id INTEGER PRIMARY KEY` is the rowid: served.
    let case = posts_case(Backend::Sqlite, "cursor = \"id\"", OLD_POSTS);
    assert!(!case.run(&["check"]).stderr().contains("no index"));
    // A run does not say it again and again: `check` does.
    let run = case.run(&["process-sources"]).success();
    assert!(!run.stderr().contains("no index"), "{}", run.stderr());
}

/// `2025-01-01 00:00:00` plus `s` seconds (under four weeks).
fn moment(s: u64) -> String {
    format!(
        "2025-01-{:02} {:02}:{:02}:{:02}",
        1 + s / 86_400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// One generated history: SQL steps, each followed by a run of both configs.
struct History {
    steps: Vec<String>,
    /// Whether a step wrote an `updated_at` older than the lookback reaches
    /// (only a full scan finds such a change).
    beyond_lookback: Vec<bool>,
}

/// Inserts and updates, interleaved at random: rows sharing a cursor
/// value, changes committed late (within the lookback, and with
/// `late_beyond`, beyond it), rows whose condition flips both ways.
fn history(seed: u64, steps: usize, late_beyond: bool) -> History {
    let mut rng = Lcg(seed);
    let mut clock = 0u64;
    let mut seq = 0u64;
    let mut ids = 0u64;
    let mut out = History {
        steps: Vec::new(),
        beyond_lookback: Vec::new(),
    };
    for _ in 0..steps {
        let mut sql = String::new();
        let mut beyond = false;
        for _ in 0..rng.range(1, 5) {
            clock += rng.range(0, 4);
            // Values shared by rows, also across runs: the bound includes
            // the mark.
            seq += rng.range(0, 2);
            let amount = rng.range(0, 60);
            let insert = ids == 0 || rng.range(0, 3) == 0;
            let at = match rng.range(0, 6) {
                0 => clock.saturating_sub(rng.range(0, 16)),
                1 if late_beyond => {
                    beyond = true;
                    clock.saturating_sub(600)
                }
                _ => clock,
            };
            if insert {
                for _ in 0..rng.range(1, 4) {
                    ids += 1;
                    sql.push_str(&format!(
                        "INSERT INTO post (id, amount, seq, updated_at, title) VALUES ({ids}, {amount}, {seq}, '{}', 't');\n",
                        moment(at + 3600)
                    ));
                }
            } else {
                let id = rng.range(1, ids + 1);
                sql.push_str(&format!(
                    "UPDATE post SET amount = {amount}, seq = {seq}, updated_at = '{}' WHERE id = {id};\n",
                    moment(at + 3600)
                ));
            }
        }
        out.steps.push(sql);
        out.beyond_lookback.push(beyond);
    }
    out
}

/// Every key of a case's jsonl, checking that none came twice.
fn dispatched_once(case: &Case, what: &str) -> Vec<String> {
    let keys = case.jsonl_keys("events.jsonl");
    let unique = sorted(&keys);
    let mut deduped = unique.clone();
    deduped.dedup();
    assert_eq!(unique, deduped, "{what}: a key dispatched twice");
    unique
}

/// Runs a history against a config with `cursor` and one without, on the
/// same data: the cursor's keys are always among the plain config's, the
/// same whenever no change was written beyond the lookback, and the same
/// after a full scan in any case; no key is dispatched twice.
fn cursor_matches_plain(backend: Backend, cursor: &str, seed: u64, late_beyond: bool) {
    let incremental = posts_case(backend, cursor, "");
    let plain = posts_case(backend, "", "");
    let h = history(seed, 12, late_beyond);
    let mut missed_possible = false;
    for (step, sql) in h.steps.iter().enumerate() {
        incremental.sql(sql);
        plain.sql(sql);
        incremental.run(&["process-sources"]).success();
        plain.run(&["process-sources"]).success();
        missed_possible |= h.beyond_lookback[step];
        let got = dispatched_once(&incremental, "with a cursor");
        let want = dispatched_once(&plain, "without");
        let what = format!(
            "{cursor}, seed {seed}, after step {step}:\n{}",
            h.steps[..=step].join("")
        );
        assert!(
            got.iter().all(|k| want.contains(k)),
            "{what}: dispatched what the plain config did not"
        );
        if !missed_possible {
            assert_eq!(got, want, "{what}");
        }
    }
    incremental.run(&["process-sources", "--full"]).success();
    assert_eq!(
        dispatched_once(&incremental, "with a cursor"),
        dispatched_once(&plain, "without"),
        "{cursor}, seed {seed}: after a full scan"
    );
}

on_every_backend! {
    fn a_cursor_dispatches_what_no_cursor_dispatches_for_any_interleaving(backend: Backend) {
        for seed in [1, 2, 3] {
            cursor_matches_plain(backend, "cursor = \"updated_at\"", seed, false);
            cursor_matches_plain(backend, "cursor = \"seq\"", seed + 100, false);
        }
        // Changes dated beyond the lookback: found by the full scan.
        cursor_matches_plain(backend, "cursor = \"updated_at\"", 7, true);
    }
}

#[test]
fn an_incremental_run_that_finds_nothing_new_writes_nothing() {
    // An idle `watch` woken by its own write would otherwise run a cycle
    // every second, for ever.
    let case = posts_case(Backend::Sqlite, "cursor = \"updated_at\"", OLD_POSTS);
    case.run(&["process-sources"]).success();
    let watcher = rusqlite::Connection::open(case.path("app.sqlite3")).expect("open");
    let version = || -> i64 {
        watcher
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .expect("data_version")
    };
    let before = version();
    let run = case.run(&["--json", "process-sources"]).success();
    assert_eq!(scan_of(&scans(&run), "big"), (1, "incremental"));
    assert_eq!(version(), before, "an idle run committed something");
    case.sql("INSERT INTO post (id, amount, seq, updated_at, title) VALUES (6, 99, 6, '2025-08-01 00:00:00', 'f');");
    let moved = version();
    case.run(&["process-sources"]).success();
    assert_ne!(version(), moved, "the new event and its mark are written");
}

#[test]
fn watch_reads_what_changed_and_stays_idle_after() {
    let case = posts_case(Backend::Sqlite, "cursor = \"updated_at\"", OLD_POSTS);
    let mut child = case.spawn(&["watch", "--interval", "1h", "--metrics-file", "spark.prom"]);
    wait_until("the first cycle", || {
        case.jsonl_keys("events.jsonl").len() == 3
    });
    case.sql("INSERT INTO post (id, amount, seq, updated_at, title) VALUES (6, 99, 6, '2025-08-01 00:00:00', 'f');");
    wait_until("the new row handled", || {
        case.jsonl_keys("events.jsonl").len() == 4
    });
    // Its own write wakes one more cycle; after that, nothing wakes it.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let metrics = || std::fs::read_to_string(case.path("spark.prom")).unwrap_or_default();
    let settled = metrics();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(metrics(), settled, "an idle watch ran cycles");
    // SAFETY: kill(2) on our own child process, no memory involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    let marks = case.query("SELECT mark FROM spark_cursor WHERE source = 'big'");
    assert!(
        marks[0][0]
            .as_deref()
            .is_some_and(|m| m.starts_with("2025-08-01")),
        "{marks:?}"
    );
}
