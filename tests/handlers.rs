//! Handler kinds driven for real: `command` runs a child process per event,
//! `jsonl` appends lines; failures are recorded and do not disturb the rest.

mod common;

use common::{Backend, Case, challenges_case_on, sorted};

const AS_OF: &str = "2026-03-10";

/// Three active challenges: six events (created + inactivity_2d each).
fn three_challenges(backend: Backend, extra: &str) -> Case {
    challenges_case_on(
        backend,
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30'), \
         (2, 'b', 'b@x', 1, '2026-03-01', '2026-03-30'), \
         (3, 'c', 'c@x', 1, '2026-03-01', '2026-03-30')",
        extra,
    )
}

/// A command handler that records every key it gets in `called.txt` and
/// fails (exit 3, with a message on stderr) for the key in `fail-key.txt`.
const RECORDING_SCRIPT: &str = r#"
read -r event
printf '%s %s\n' "$SPARK_EVENT_KEY" "$SPARK_ATTEMPT" >> called.txt
case "$event" in *'"key":"'"$SPARK_EVENT_KEY"'"'*) ;; *) echo "stdin lacks the key" >&2; exit 9;; esac
if [ -f fail-key.txt ] && [ "$SPARK_EVENT_KEY" = "$(cat fail-key.txt)" ]; then
  echo "mailbox full for $SPARK_EVENT_KEY" >&2
  exit 3
fi
"#;

const COMMAND_HANDLER: &str = r#"
[[handlers]]
name = "notify"
group = "^challenge"
kind = "command"
command = ["./notify.sh"]
timeout = "10s"
"#;

fn called(case: &Case) -> Vec<String> {
    std::fs::read_to_string(case.path("called.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect()
}

on_every_backend! {
fn command_handler_gets_each_event_on_stdin_once(backend: Backend) {
    let case = three_challenges(backend, COMMAND_HANDLER).script("notify.sh", RECORDING_SCRIPT);
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    let expected = [
        "challenge_created_1",
        "challenge_inactivity_2d_1",
        "challenge_created_2",
        "challenge_inactivity_2d_2",
        "challenge_created_3",
        "challenge_inactivity_2d_3",
    ];
    assert_eq!(sorted(&called(&case)), sorted(&expected));
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    assert_eq!(called(&case).len(), 6, "nothing twice");
}

fn failing_command_is_recorded_and_others_are_unaffected(backend: Backend) {
    let case = three_challenges(backend, COMMAND_HANDLER)
        .script("notify.sh", RECORDING_SCRIPT)
        .file("fail-key.txt", "challenge_created_2");
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(1)
        .stdout_has(&["6 new", "11 delivered", "1 failed"])
        .stderr_has(&[
            "handler `notify`",
            "challenge_created_2",
            "exited with status 3",
            "mailbox full for challenge_created_2",
        ]);
    // The jsonl handler got every event; the command every other event.
    assert_eq!(case.jsonl_keys("events.jsonl").len(), 6);
    assert_eq!(called(&case).len(), 6);
    let deliveries = case.deliveries();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    let (handler, keys, state, attempts, error) = &deliveries[0];
    assert_eq!(handler, "notify");
    assert_eq!(keys, "[\"challenge_created_2\"]");
    assert_eq!(state, "failed");
    assert_eq!(*attempts, 1);
    assert!(
        error.as_deref().unwrap().contains("mailbox full"),
        "{error:?}"
    );
}

fn failure_json_report_lists_the_failure(backend: Backend) {
    let case = three_challenges(backend, COMMAND_HANDLER)
        .script("notify.sh", RECORDING_SCRIPT)
        .file("fail-key.txt", "challenge_created_3");
    let run = case
        .run(&["process-sources", "--as-of", AS_OF, "--json"])
        .status(1);
    let report = run.json();
    assert_eq!(report["failed"], 1);
    assert_eq!(report["failures"][0]["key"], "challenge_created_3");
    assert_eq!(report["failures"][0]["handler"], "notify");
    let notify = report["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "notify")
        .unwrap();
    assert_eq!(notify["delivered"], 5);
}

fn command_timeout_is_a_failure(backend: Backend) {
    let case = three_challenges(backend, &COMMAND_HANDLER.replace("10s", "300ms"))
        .script("notify.sh", "cat > /dev/null; sleep 5");
    case.run(&[
        "process-sources",
        "--as-of",
        AS_OF,
        "--source",
        "challenges",
    ])
    .status(1)
    .stderr_has(&["timed out after 300ms"]);
    assert_eq!(case.deliveries().len(), 6);
}

fn missing_program_is_a_failure_not_a_crash(backend: Backend) {
    let case = three_challenges(backend, &COMMAND_HANDLER.replace("./notify.sh", "./missing.sh"));
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(1)
        .stderr_has(&["cannot run", "missing.sh"]);
    assert_eq!(case.jsonl_keys("events.jsonl").len(), 6);
}

fn unreadable_record_is_skipped_and_reported(backend: Backend) {
    let case = three_challenges(backend, "");
    case.sql("UPDATE challenge SET start_date = 'someday' WHERE id = 2");
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(1)
        .stdout_has(&["1 records skipped"])
        .stderr_has(&[
            "source `challenges`",
            "record 2",
            "column `start_date`",
            "\"someday\"",
        ]);
    assert_eq!(case.jsonl_keys("events.jsonl").len(), 4);
}

fn log_event_function_handler_logs_each_event(backend: Backend) {
    let case = three_challenges(
        backend,
        r#"
[[handlers]]
name = "trace"
group = "created"
kind = "function"
function = "log_event"
"#,
    );
    case.run(&["process-sources", "--as-of", AS_OF, "-v"])
        .success()
        .stderr_has(&["key=\"challenge_created_1\"", "key=\"challenge_created_3\""]);
}
}
