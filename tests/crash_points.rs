//! Guarantees 2 and 3 at the exact instants that matter: a debug build
//! killed with SIGKILL at a named crash point (see src/crashpoint.rs), then
//! run again, has delivered every event, the jsonl file holds every key
//! exactly once, and an at-least-once handler saw at most the one call that
//! was in flight again.

mod common;

use std::os::unix::process::ExitStatusExt;

use common::{Backend, Case, challenge_config, many_challenges_keys, many_challenges_sql, sorted};

const AS_OF: &str = "2026-03-10";
const N: usize = 400; // 800 events: 3 batches of 300
/// Enough batches that file deliveries are written several times, several
/// batches at a time.
const MANY: usize = 3000; // 6000 events: 20 batches

fn config(extra: &str) -> String {
    challenge_config(extra).replace("[delivery]\n", "[delivery]\nbatch_size = 300\n")
}

/// Runs process-sources with SPARK_CRASH_AT=`point`, asserts that it was
/// killed there, then runs it again to completion (on PostgreSQL, once the
/// dead run's leases ran out, when `leases` says its claims matter: a jsonl
/// file's deliveries pass to whoever holds the file next, at once).
fn crash_then_recover(case: &Case, point: &str, leases: bool) {
    let out = case
        .command()
        .env("SPARK_CRASH_AT", point)
        .args(["process-sources", "--as-of", AS_OF])
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{point}: not reached; {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if leases {
        case.let_leases_run_out();
    }
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    assert!(
        case.deliveries().is_empty(),
        "{point}: nothing left pending"
    );
}

const COMMAND: &str = r#"
[[handlers]]
name = "notify"
group = "^challenge"
kind = "command"
command = ["./notify.sh"]
"#;

const SCRIPT: &str = r#"cat > /dev/null
echo "$SPARK_EVENT_KEY" >> called.txt"#;

on_every_backend! {
fn jsonl_holds_every_key_exactly_once_whatever_the_crash_point(backend: Backend) {
    for point in [
        "batch-recorded",
        "jsonl-partial",
        "jsonl-written",
        "jsonl-synced",
    ] {
        for n in [1, 2, 3] {
            let case = Case::on(backend).db(&many_challenges_sql(MANY)).config(&config(""));
            crash_then_recover(&case, &format!("{point}:{n}"), false);
            assert_eq!(
                sorted(&case.jsonl_keys("events.jsonl")),
                many_challenges_keys(MANY),
                "{point}:{n}: every key exactly once"
            );
        }
    }
}

fn at_least_once_repeats_only_the_call_in_flight(backend: Backend) {
    for n in [1, 5, 350] {
        let case = Case::on(backend)
            .db(&many_challenges_sql(N))
            .config(&config(COMMAND))
            .script("notify.sh", SCRIPT);
        crash_then_recover(&case, &format!("call-returned:{n}"), true);
        let calls = case.lines("called.txt");
        assert_eq!(
            calls.len(),
            2 * N + 1,
            "call-returned:{n}: exactly one repeat"
        );
        let mut unique = calls.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique, many_challenges_keys(N));
        assert_eq!(
            sorted(&case.jsonl_keys("events.jsonl")),
            many_challenges_keys(N)
        );
    }
}

fn at_most_once_never_repeats_the_call_in_flight(backend: Backend) {
    let case = Case::on(backend)
        .db(&many_challenges_sql(N))
        .config(&config(&format!("{COMMAND}delivery = \"at-most-once\"\n")))
        .script("notify.sh", SCRIPT);
    let out = case
        .command()
        .env("SPARK_CRASH_AT", "call-returned:7")
        .args(["process-sources", "--as-of", AS_OF])
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    case.let_leases_run_out();
    // The interrupted call is dead, not repeated; everything else delivered.
    case.run(&["process-sources", "--as-of", AS_OF]).status(1);
    let calls = case.lines("called.txt");
    assert_eq!(calls.len(), 2 * N, "no call twice");
    assert_eq!(sorted(&calls), many_challenges_keys(N));
    let owed = case.deliveries();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].2, "dead");
}

fn a_crash_after_recording_loses_no_event(backend: Backend) {
    let case = Case::on(backend)
        .db(&many_challenges_sql(N))
        .config(&config(COMMAND))
        .script("notify.sh", SCRIPT);
    crash_then_recover(&case, "batch-recorded:2", true);
    let calls = case.lines("called.txt");
    assert_eq!(sorted(&calls), many_challenges_keys(N), "each exactly once");
}
}

on_every_backend! {
fn several_deliveries_written_at_once_are_cut_back_together(backend: Backend) {
    // Killed after writing four batches' lines at once, before recording
    // them done: four deliveries hold offsets into the file.
    let case = Case::on(backend).db(&many_challenges_sql(MANY)).config(&config(""));
    let out = case
        .command()
        .env("SPARK_CRASH_AT", "jsonl-written:1")
        .args(["process-sources", "--as-of", AS_OF])
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    let marked = case.query("SELECT count(*) FROM spark_delivery WHERE file_offset IS NOT NULL");
    assert_eq!(marked[0][0].as_deref(), Some("4"), "four deliveries written at once");
    // The first delivery's events are now stored differently (longer):
    // written again, they end elsewhere than the second delivery's offset.
    let note = "stored again, longer than before ".repeat(10);
    case.sql(&format!(
        "UPDATE spark_event SET context = '{{\"challenge\": {{\"id\": 1, \"note\": \"{note}\"}}}}' \
         WHERE \"key\" = 'challenge_created_1'"
    ));
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    assert_eq!(
        sorted(&case.jsonl_keys("events.jsonl")), // every line whole JSON
        many_challenges_keys(MANY),
        "every key exactly once"
    );
    assert!(case.deliveries().is_empty());
}
}
