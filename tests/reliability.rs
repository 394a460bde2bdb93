//! SPEC.md's guarantees under stress: failing handlers are retried with
//! backoff and given up after max_attempts; a run killed with SIGKILL at any
//! moment leaves nothing a later run does not finish; overlapping runs never
//! dispatch a key twice; an application holding the write lock makes spark
//! wait; at-most-once handlers are never called twice; SIGTERM stops cleanly.

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::time::Duration;

use common::{
    Backend, CHALLENGE_SCHEMA, Case, Lcg, challenge_config, challenges_case_on,
    many_challenges_keys, many_challenges_sql, sorted, wait_until,
};

const AS_OF: &str = "2026-03-10";

fn counts(items: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i.clone()).or_insert(0) += 1;
    }
    m
}

/// The key of each line of `called.txt` (lines are "KEY ATTEMPT").
fn called(case: &Case) -> Vec<String> {
    case.lines("called.txt")
        .into_iter()
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect()
}

/// `config` (from `challenge_config`) with `batch_size` set.
fn with_batch_size(config: &str, n: usize) -> String {
    config.replace("[delivery]\n", &format!("[delivery]\nbatch_size = {n}\n"))
}

/// `n` challenges (see `many_challenges_sql`) and a command handler `slow`
/// for `group` that runs the shell `script`.
fn with_command(backend: Backend, n: usize, group: &str, script: &str) -> Case {
    Case::on(backend)
        .db(&many_challenges_sql(n))
        .config(&challenge_config(&format!(
            "[[handlers]]\nname = \"slow\"\ngroup = \"{group}\"\nkind = \"command\"\ncommand = [\"./slow.sh\"]\n"
        )))
        .script("slow.sh", script)
}

fn two_challenges(backend: Backend, extra: &str) -> Case {
    challenges_case_on(
        backend,
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30'), (2, 'b', 'b@x', 1, '2026-03-01', '2026-03-30')",
        extra,
    )
}

const FLAKY: &str = r#"
[[handlers]]
name = "flaky"
group = "^challenge"
kind = "command"
command = ["./flaky.sh"]
"#;

fn kill(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// Runs `process-sources` until one run completes, killing the first
/// `kills` runs at seeded random moments in `window` ms. Calls `after_kill`
/// after each kill. Returns the exit status of the completing run.
fn kill_loop(
    case: &Case,
    seed: u64,
    kills: usize,
    window: (u64, u64),
    mut after_kill: impl FnMut(),
) -> i32 {
    let mut rng = Lcg(seed);
    for _ in 0..kills {
        let mut child = case.spawn(&["process-sources", "--as-of", AS_OF, "-q"]);
        std::thread::sleep(Duration::from_millis(rng.range(window.0, window.1)));
        kill(&mut child);
        after_kill();
    }
    // The orphaned handler processes of killed runs finish on their own;
    // the killed runs' claims pass on when their leases run out.
    case.let_leases_run_out();
    let run = case.run(&["process-sources", "--as-of", AS_OF, "-q"]);
    run.code()
}

#[test]
fn a_second_run_without_wait_exits_3_and_changes_nothing() {
    let case = Case::new()
        .db(&many_challenges_sql(20))
        .config(&challenge_config(
            r#"
[[handlers]]
name = "slow"
group = "created"
kind = "command"
command = ["./slow.sh"]
"#,
        ))
        .script(
            "slow.sh",
            r#"cat > /dev/null
if [ "$SPARK_EVENT_KEY" = challenge_created_1 ]; then touch started; sleep 2; fi"#,
        );
    let first = case.spawn(&["process-sources", "--as-of", AS_OF]);
    wait_until("the first run to call its handler", || {
        case.path("started").exists()
    });
    let lines_before = case.lines("events.jsonl").len();
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(3)
        .stderr_has(&["another spark run", "--wait"]);
    case.run(&["process-sources", "--as-of", AS_OF, "-q"])
        .status(3);
    assert_eq!(case.lines("events.jsonl").len(), lines_before);
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(case.jsonl_keys("events.jsonl").len(), 40);
}

#[test]
fn an_application_holding_the_write_lock_makes_spark_wait() {
    let case = two_challenges(Backend::Sqlite, "");
    for round in 0..2 {
        // Round 0: the database is still in rollback-journal mode; round 1: WAL.
        let app = rusqlite::Connection::open(case.path("app.sqlite3")).unwrap();
        app.execute_batch(&format!(
            "BEGIN IMMEDIATE; INSERT INTO challenge VALUES ({id}, 'x', 'x@x', 1, '2026-03-01', '2026-03-30');",
            id = 10 + round
        ))
        .unwrap();
        let child = case.spawn(&["process-sources", "--as-of", AS_OF]);
        std::thread::sleep(Duration::from_millis(700));
        app.execute_batch("COMMIT").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    assert_eq!(case.jsonl_keys("events.jsonl").len(), 8);
}

on_every_backend! {
fn a_handler_failing_once_is_retried_and_delivered(backend: Backend) {
    let case = two_challenges(backend, FLAKY).script(
        "flaky.sh",
        r#"cat > /dev/null
echo "$SPARK_EVENT_KEY $SPARK_ATTEMPT" >> called.txt
if [ "$SPARK_EVENT_KEY" = challenge_created_2 ] && [ ! -f failed-once ]; then
  touch failed-once; echo "temporarily unavailable" >&2; exit 1
fi"#,
    );
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(1)
        .stderr_has(&["handler `flaky`", "challenge_created_2", "will be retried"]);
    let listed = case.run(&["deliveries", "--json"]).success().json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["key"], "challenge_created_2");
    assert_eq!(listed[0]["state"], "failed");
    assert_eq!(listed[0]["attempts"], 1);
    assert!(
        listed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("temporarily unavailable")
    );

    // backoff = "0s": the next run retries it first.
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["0 new", "1 delivered", "1 earlier deliveries retried"]);
    let calls = counts(&called(&case));
    assert_eq!(calls["challenge_created_2"], 2);
    assert!(
        case.lines("called.txt")
            .contains(&"challenge_created_2 2".to_owned())
    );
    for key in [
        "challenge_created_1",
        "challenge_inactivity_2d_1",
        "challenge_inactivity_2d_2",
    ] {
        assert_eq!(calls[key], 1, "{key}");
    }
    // The other handler got the event exactly once.
    assert_eq!(
        sorted(&case.jsonl_keys("events.jsonl")),
        sorted(&calls.keys().collect::<Vec<_>>())
    );
    assert!(case.deliveries().is_empty());
}

fn a_handler_failing_always_goes_dead_and_is_retried_by_hand(backend: Backend) {
    let case = two_challenges(backend, &format!("{FLAKY}max_attempts = 3\n")).script(
        "flaky.sh",
        r#"cat > /dev/null
echo "$SPARK_EVENT_KEY $SPARK_ATTEMPT" >> called.txt
if [ "$SPARK_EVENT_KEY" = challenge_created_1 ] && [ ! -f fixed ]; then echo "no such user" >&2; exit 1; fi"#,
    );
    let attempts = |case: &Case| {
        called(case)
            .iter()
            .filter(|k| *k == "challenge_created_1")
            .count()
    };
    case.run(&["process-sources", "--as-of", AS_OF]).status(1);
    case.run(&["process-sources", "--as-of", AS_OF]).status(1);
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(1)
        .stderr_has(&["attempt 3", "dead"]);
    assert_eq!(attempts(&case), 3);

    // Dead: not retried automatically, and listed.
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    assert_eq!(attempts(&case), 3);
    let dead = case
        .run(&["deliveries", "--state", "dead", "--json"])
        .success()
        .json();
    assert_eq!(dead[0]["key"], "challenge_created_1");
    assert_eq!(dead[0]["handler"], "flaky");
    assert_eq!(dead[0]["attempts"], 3);
    case.run(&["deliveries"]).success().stdout_has(&[
        "flaky",
        "challenge_created_1",
        "dead",
        "no such user",
    ]);

    // Retried by hand: still failing, then fixed.
    case.run(&["retry", "--dead"])
        .status(1)
        .stdout_has(&["retry: 1 deliveries, 0 delivered, 1 failed"]);
    assert_eq!(attempts(&case), 4);
    std::fs::write(case.path("fixed"), "").unwrap();
    case.run(&["retry", "--key", "challenge_created_1"])
        .success()
        .stdout_has(&["1 delivered"]);
    assert_eq!(attempts(&case), 5);
    assert!(case.deliveries().is_empty());
    case.run(&["retry"])
        .status(2)
        .stderr_has(&["--key", "--dead"]);
    case.run(&["retry", "--handler", "nope"])
        .status(2)
        .stderr_has(&["nope"]);
}

fn killed_runs_lose_nothing_and_repeat_at_most_one_call_per_kill(backend: Backend) {
    const N: usize = 150;
    let config = with_batch_size(
        &challenge_config(
            r#"
[[handlers]]
name = "slow"
group = "^challenge"
kind = "command"
command = ["./slow.sh"]
"#,
        ),
        40,
    );
    let case = Case::on(backend)
        .db(&many_challenges_sql(N))
        .config(&config)
        .script(
            "slow.sh",
            r#"cat > /dev/null
echo "$SPARK_EVENT_KEY $SPARK_ATTEMPT" >> called.txt
sleep 0.005"#,
        );
    let kills = 12;
    let code = kill_loop(&case, 7, kills, (100, 900), || {});
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(code, 0, "the last run completes");

    let expected = many_challenges_keys(N);
    let calls = called(&case);
    let per_key = counts(&calls);
    let mut delivered: Vec<String> = per_key.keys().cloned().collect();
    delivered.sort();
    assert_eq!(delivered, expected, "every event delivered at least once");
    let duplicates: usize = per_key.values().map(|c| c - 1).sum();
    assert!(
        duplicates <= kills,
        "{duplicates} duplicates after {kills} kills"
    );
    assert!(case.deliveries().is_empty(), "nothing left pending");
    // The jsonl handler holds each key exactly once.
    assert_eq!(sorted(&case.jsonl_keys("events.jsonl")), expected);
    eprintln!("command kill loop: {kills} kills, {duplicates} repeated calls");
}

fn killed_runs_leave_the_jsonl_file_exactly_once(backend: Backend) {
    const N: usize = 15_000;
    let config = with_batch_size(&challenge_config(""), 500);
    let case = Case::on(backend).db(&many_challenges_sql(N)).config(&config);
    let kills = 12;
    let (mut partial_lines, mut in_progress) = (0, 0);
    let code = kill_loop(&case, 11, kills, (30, 700), || {
        let text = std::fs::read(case.path("events.jsonl")).unwrap_or_default();
        if text.last().is_some_and(|b| *b != b'\n') {
            partial_lines += 1;
        }
        let has_deliveries = case
            .tables()
            .contains(&"spark_delivery".to_owned());
        let offsets = if has_deliveries {
            case.query("SELECT count(*) FROM spark_delivery WHERE file_offset IS NOT NULL")[0][0]
                .clone()
                .unwrap_or_default()
        } else {
            "0".to_owned()
        };
        if offsets != "0" {
            in_progress += 1;
        }
    });
    assert_eq!(code, 0);
    let keys = case.jsonl_keys("events.jsonl"); // every line whole JSON
    assert_eq!(keys.len(), 2 * N, "no line twice");
    assert_eq!(sorted(&keys), many_challenges_keys(N), "every key once");
    assert!(case.deliveries().is_empty());
    eprintln!(
        "jsonl kill loop: {kills} kills; {partial_lines} left a partial line, {in_progress} a delivery in progress"
    );
}

fn overlapping_runs_dispatch_each_key_once(backend: Backend) {
    const N: usize = 60;
    let case = with_command(
        backend,
        N,
        "created",
        r#"cat > /dev/null
echo "$SPARK_EVENT_KEY" >> called.txt
sleep 0.01"#,
    );
    let a = case.spawn(&["process-sources", "--as-of", AS_OF, "--wait", "60s"]);
    let b = case.spawn(&["process-sources", "--as-of", AS_OF, "--wait", "60s"]);
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        sorted(&case.jsonl_keys("events.jsonl")),
        many_challenges_keys(N)
    );
    let calls = case.lines("called.txt");
    assert_eq!(calls.len(), N, "each created event called once");
    assert_eq!(counts(&calls).len(), N);
}

fn an_at_most_once_handler_killed_mid_call_is_never_called_again(backend: Backend) {
    let case = two_challenges(
        backend,
        r#"
[[handlers]]
name = "once"
group = "^challenge"
kind = "command"
command = ["./once.sh"]
delivery = "at-most-once"
"#,
    )
    .script(
        "once.sh",
        r#"cat > /dev/null
echo "$SPARK_EVENT_KEY" >> called.txt
if [ "$SPARK_EVENT_KEY" = challenge_created_2 ] && [ ! -f let-through ]; then
  echo $$ > hanging.pid
  sleep 30
fi"#,
    );
    let mut child = case.spawn(&["process-sources", "--as-of", AS_OF]);
    wait_until("the handler to hang", || case.path("hanging.pid").exists());
    kill(&mut child);
    let pid: i32 = std::fs::read_to_string(case.path("hanging.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the orphaned handler process, no memory involved.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::fs::write(case.path("let-through"), "").unwrap();
    case.let_leases_run_out();

    case.run(&["process-sources", "--as-of", AS_OF])
        .status(1)
        .stdout_has(&["1 at-most-once deliveries interrupted"]);
    let calls = counts(&called(&case));
    assert_eq!(calls["challenge_created_2"], 1, "never called twice");
    assert_eq!(calls.len(), 4, "the other events were delivered");
    assert!(calls.values().all(|c| *c == 1));
    let dead = case.run(&["deliveries", "--json"]).success().json();
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead:#}");
    assert_eq!(dead[0]["key"], "challenge_created_2");
    assert_eq!(dead[0]["state"], "dead");
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
}

fn sigterm_finishes_the_call_in_progress_and_stops_cleanly(backend: Backend) {
    const N: usize = 30;
    let case = with_command(
        backend,
        N,
        "^challenge",
        r#"cat > /dev/null
sleep 0.05
echo "$SPARK_EVENT_KEY" >> called.txt"#,
    );
    let child = case.spawn(&["process-sources", "--as-of", AS_OF]);
    wait_until("a few calls", || case.lines("called.txt").len() >= 3);
    // SAFETY: kill(2) on our own child process, no memory involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    let done = case.lines("called.txt").len();
    assert!(done < 2 * N, "stopped before the end");

    case.run(&["process-sources", "--as-of", AS_OF]).success();
    let calls = case.lines("called.txt");
    assert_eq!(
        sorted(&calls),
        many_challenges_keys(N),
        "each event exactly once"
    );
    assert!(case.deliveries().is_empty());
}

fn skip_backfill_marks_current_events_seen_without_dispatching(backend: Backend) {
    let case = two_challenges(backend, "");
    case.run(&["skip-backfill", "--as-of", AS_OF])
        .success()
        .stdout_has(&["4 new recorded as seen without dispatching"]);
    assert!(!case.path("events.jsonl").exists());
    assert_eq!(case.seen().len(), 4);
    assert!(case.deliveries().is_empty());
    // Only what is new from now on is dispatched.
    case.sql("INSERT INTO challenge VALUES (3, 'c', 'c@x', 1, '2026-03-09', '2026-03-30')");
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["1 new"]);
    assert_eq!(case.jsonl_keys("events.jsonl"), ["challenge_created_3"]);
}

fn forget_lets_a_key_fire_again(backend: Backend) {
    let case = two_challenges(backend, "");
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    case.run(&["forget", "challenge_created_1", "nope_1"])
        .success()
        .stdout_has(&["forgot 1 keys", "not seen, nothing to forget: nope_1"]);
    case.run(&["process-sources", "--as-of", AS_OF])
        .success()
        .stdout_has(&["1 new"]);
    let keys = case.jsonl_keys("events.jsonl");
    assert_eq!(keys.len(), 5);
    assert_eq!(keys[4], "challenge_created_1");
}

fn forget_drops_what_was_owed_for_the_key(backend: Backend) {
    let case = two_challenges(
        backend,
        r#"
[[handlers]]
name = "broken"
group = "created"
kind = "command"
command = ["false"]
"#,
    );
    case.run(&["process-sources", "--as-of", AS_OF]).status(1);
    assert_eq!(case.deliveries().len(), 2);
    let report = case
        .run(&["forget", "challenge_created_1", "--json"])
        .success()
        .json();
    assert_eq!(report["deliveries_dropped"], 1);
    assert_eq!(case.deliveries().len(), 1);
}

fn events_lists_and_filters_seen_events(backend: Backend) {
    let case = two_challenges(backend, "");
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    case.sql(
        "INSERT INTO spark_event VALUES ('legacy_9', 'legacy', '2020-01-01 00:00:00', '{''x'': 1}')",
    );
    let all = case.run(&["events", "--json"]).success().json();
    assert_eq!(all.as_array().unwrap().len(), 5);
    assert_eq!(all[4]["key"], "legacy_9", "newest first");
    assert_eq!(
        all[4]["context"], "{'x': 1}",
        "non-JSON context shown as text"
    );
    assert!(all[0]["context"]["challenge"]["id"].as_i64().is_some());

    let created = case
        .run(&["events", "--group", "created$", "--json"])
        .success()
        .json();
    assert_eq!(created.as_array().unwrap().len(), 2);
    let by_prefix = case
        .run(&["events", "--key-prefix", "challenge_inactivity", "--json"])
        .success()
        .json();
    assert_eq!(by_prefix.as_array().unwrap().len(), 2);
    let old = case
        .run(&["events", "--until", "2021-01-01", "--json"])
        .success()
        .json();
    assert_eq!(old.as_array().unwrap().len(), 1);
    let recent = case
        .run(&["events", "--since", "2021-01-01", "--limit", "3", "--json"])
        .success()
        .json();
    assert_eq!(recent.as_array().unwrap().len(), 3);
    case.run(&["events"])
        .success()
        .stdout_has(&["KEY", "GROUP", "CREATED_AT", "legacy_9"]);
    case.run(&["events", "--since", "yesterday"]).status(2);
}

fn prune_deletes_old_events_but_keeps_undelivered_ones(backend: Backend) {
    let case = two_challenges(
        backend,
        r#"
[[handlers]]
name = "broken"
group = "created"
kind = "command"
command = ["sh", "-c", "test \"$SPARK_EVENT_KEY\" != challenge_created_1"]
"#,
    );
    case.run(&["process-sources", "--as-of", AS_OF]).status(1);
    // Age everything.
    case.sql("UPDATE spark_event SET created_at = '2020-01-01 00:00:00'");
    case.sql("INSERT INTO spark_event VALUES ('fresh_1', 'fresh', '2999-01-01 00:00:00', '{}')");
    let dry = case
        .run(&["prune", "--older-than", "30d", "--dry-run", "--json"])
        .success()
        .json();
    assert_eq!(dry["pruned"], 3);
    assert_eq!(dry["kept_undelivered"], 1);
    assert_eq!(case.seen().len(), 5);
    case.run(&["prune", "--older-than", "30d"])
        .success()
        .stdout_has(&["pruned 3 events", "kept 1"]);
    let left: Vec<String> = case.seen().into_keys().collect();
    assert_eq!(left, ["challenge_created_1", "fresh_1"]);
}

fn listings_on_a_fresh_database_write_nothing(backend: Backend) {
    let case = Case::on(backend)
        .db(CHALLENGE_SCHEMA)
        .config(&challenge_config(""));
    let before = case.db_bytes();
    case.run(&["events"]).success();
    case.run(&["deliveries"])
        .success()
        .stdout_has(&["no deliveries"]);
    case.run(&["retry", "--all"]).success();
    case.run(&["forget", "x_1"]).success();
    case.run(&["prune", "--older-than", "1d"]).success();
    assert_eq!(case.db_bytes(), before);
    assert_eq!(case.tables(), ["challenge", "donation"]);
}
}

on_every_backend! {
fn deliver_works_off_what_is_due_without_reading_the_sources(backend: Backend) {
    let case = two_challenges(backend, FLAKY).script(
        "flaky.sh",
        r#"cat > /dev/null
echo "$SPARK_EVENT_KEY $SPARK_ATTEMPT" >> called.txt
if [ ! -f fixed ]; then echo "down" >&2; exit 1; fi"#,
    );
    case.run(&["process-sources", "--as-of", AS_OF]).status(1);
    assert_eq!(called(&case).len(), 4);
    // A new record: `deliver` reads no source, so it is not dispatched.
    case.sql("INSERT INTO challenge VALUES (3, 'c', 'c@x', 1, '2026-03-09', '2026-03-30')");
    std::fs::write(case.path("fixed"), "").unwrap();
    case.run(&["deliver"])
        .success()
        .stdout_has(&["deliver: 4 deliveries, 4 delivered, 0 failed"]);
    assert_eq!(called(&case).len(), 8);
    assert!(case.deliveries().is_empty());
    assert_eq!(case.seen().len(), 4, "no source was read");
    case.run(&["deliver", "--json"]).success();
}
}
