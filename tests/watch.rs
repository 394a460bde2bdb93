//! `spark watch`: a row committed by another process is handled without a
//! second run, the run lock is held, retries come on their schedule, SIGTERM
//! stops cleanly with the call in flight recorded, SIGHUP reloads the config
//! (an invalid one is refused and the old one kept), metrics per cycle, and
//! PostgreSQL's LISTEN.

mod common;

use std::process::Child;

use common::{Backend, CHALLENGE_SCHEMA, Case, challenge_config, wait_until};

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child process, no memory involved.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn stop(child: Child) -> (Option<i32>, String, String) {
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn challenge(id: u32) -> String {
    format!(
        "INSERT INTO challenge VALUES ({id}, 't{id}', 'u{id}@x', 1, date('now', '-1 days'), date('now', '+30 days'));"
    )
}

fn pg_challenge(id: u32) -> String {
    format!(
        "INSERT INTO challenge VALUES ({id}, 't{id}', 'u{id}@x', 1, (current_date - 1)::text, (current_date + 30)::text);"
    )
}

fn watch_case(extra: &str) -> Case {
    Case::new()
        .db(&format!("{CHALLENGE_SCHEMA}\n{}", challenge(1)))
        .config(&challenge_config(extra))
}

#[test]
fn a_row_committed_elsewhere_is_handled_without_another_run() {
    let case = watch_case("");
    let child = case.spawn(&["watch", "--interval", "30s", "--metrics-file", "spark.prom"]);
    wait_until("the first cycle", || {
        case.jsonl_keys("events.jsonl").len() == 1
    });
    // A cron run beside it is locked out, quietly under -q.
    let cron = case.run(&["-q", "process-sources"]).status(3);
    assert_eq!(cron.stderr(), "");
    // Another process commits a row: handled well before the interval.
    case.sql(&challenge(2));
    wait_until("the new row handled", || {
        case.jsonl_keys("events.jsonl").len() == 2
    });
    assert!(
        std::fs::read_to_string(case.path("spark.prom"))
            .unwrap()
            .contains("spark_events_new")
    );
    let (code, stdout, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    // One line per cycle that did something, none for idle ones.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() <= 3, "{stdout}");
    assert!(lines.iter().all(|l| l.starts_with("watch: ")), "{stdout}");
    assert!(lines.iter().any(|l| l.contains("1 new")), "{stdout}");
    // Nothing twice.
    assert_eq!(
        case.jsonl_keys("events.jsonl"),
        ["challenge_created_1", "challenge_created_2"]
    );
}

#[test]
fn a_failed_delivery_is_retried_on_its_schedule_not_the_interval() {
    let case = watch_case(
        r#"
[[handlers]]
name = "flaky"
group = "created"
kind = "command"
command = ["sh", "-c", "test ! -e fail"]
backoff = "1s"
"#,
    );
    std::fs::write(case.path("fail"), "").unwrap();
    let child = case.spawn(&["watch", "--interval", "1h"]);
    wait_until("the first attempt", || {
        case.run(&["deliveries", "--json"])
            .json()
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    std::fs::remove_file(case.path("fail")).unwrap();
    wait_until("the retry", || {
        case.run(&["deliveries", "--json"])
            .json()
            .as_array()
            .is_some_and(|a| a.is_empty())
    });
    let (code, _, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn sigterm_finishes_the_call_in_flight_and_records_it() {
    let case = watch_case(
        r#"
[[handlers]]
name = "slow"
group = "created"
kind = "command"
command = ["sh", "-c", "touch started; sleep 2; echo $SPARK_EVENT_KEY >> called.txt"]
"#,
    );
    let child = case.spawn(&["watch", "--interval", "30s"]);
    wait_until("the call in flight", || case.path("started").exists());
    let (code, _, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(case.lines("called.txt"), ["challenge_created_1"]);
    // Recorded: nothing owed, nothing called twice.
    assert_eq!(
        case.run(&["deliveries", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    case.run(&["process-sources"]).success();
    assert_eq!(case.lines("called.txt").len(), 1);
}

#[test]
fn sighup_reloads_the_config_and_refuses_a_bad_one() {
    let case = watch_case("");
    let child = case.spawn(&["watch", "--interval", "30s"]);
    wait_until("the first cycle", || {
        case.jsonl_keys("events.jsonl").len() == 1
    });
    // A broken config: refused, the old one stays.
    let good = std::fs::read_to_string(case.path("spark.toml")).unwrap();
    std::fs::write(case.path("spark.toml"), "this is not toml").unwrap();
    signal(&child, libc::SIGHUP);
    case.sql(&challenge(2));
    wait_until("the old config still working", || {
        case.jsonl_keys("events.jsonl").len() == 2
    });
    // A good new one: a handler added.
    let mut new = good.clone();
    new.push_str("\n[[handlers]]\nname = \"second\"\ngroup = \"created\"\nkind = \"jsonl\"\npath = \"second.jsonl\"\n");
    std::fs::write(case.path("spark.toml"), new).unwrap();
    signal(&child, libc::SIGHUP);
    std::thread::sleep(std::time::Duration::from_millis(300));
    case.sql(&challenge(3));
    wait_until("the new handler at work", || {
        case.jsonl_keys("second.jsonl") == ["challenge_created_3"]
    });
    let (code, _, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the config was not reloaded, the old one stays in use"),
        "{stderr}"
    );
    assert!(stderr.contains("spark.toml:1:"), "{stderr}");
    assert!(stderr.contains("config reloaded"), "{stderr}");
}

#[test]
fn watch_prunes_the_history() {
    let case = watch_case(
        r#"
[[handlers]]
name = "cmd"
group = "created"
kind = "command"
command = ["true"]
"#,
    );
    let path = case.path("spark.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[delivery]\n", "[delivery]\nkeep_history = \"1s\"\n");
    std::fs::write(&path, text).unwrap();
    let done = |case: &Case| -> Vec<String> {
        case.run(&["deliveries", "--state", "done", "--json"])
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_owned())
            .collect()
    };
    let child = case.spawn(&["watch", "--interval", "30s"]);
    wait_until("the first call in the history", || {
        done(&case) == ["challenge_created_1"]
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    case.sql(&challenge(2));
    wait_until("the old entry pruned", || {
        done(&case) == ["challenge_created_2"]
    });
    let (code, _, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn an_invalid_config_at_start_is_exit_2() {
    let case = watch_case("");
    std::fs::write(case.path("spark.toml"), "[database]\n").unwrap();
    case.run(&["watch"]).status(2).stderr_has(&["spark.toml"]);
    let case = watch_case("");
    case.run(&["watch", "--interval", "soon"])
        .status(2)
        .stderr_has(&["--interval"]);
}

#[test]
fn postgres_listen_wakes_it() {
    let Some(backend) = Backend::postgres("postgres_listen_wakes_it") else {
        return;
    };
    let case = Case::on(backend).db(&format!("{CHALLENGE_SCHEMA}\n{}", pg_challenge(1)));
    let case = case.config(&challenge_config("").replace(
        "path = \"app.sqlite3\"",
        "path = \"app.sqlite3\"\nlisten = \"spark_wake\"",
    ));
    case.pg_sql(
        "CREATE FUNCTION spark_wake() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_notify('spark_wake', ''); RETURN NULL; END $$;
         CREATE TRIGGER spark_wake AFTER INSERT OR UPDATE ON challenge
         FOR EACH STATEMENT EXECUTE FUNCTION spark_wake();",
    );
    let child = case.spawn(&["watch", "--interval", "1h"]);
    wait_until("the first cycle", || {
        case.jsonl_keys("events.jsonl").len() == 1
    });
    case.pg_sql(&pg_challenge(2));
    wait_until("the notified row handled", || {
        case.jsonl_keys("events.jsonl").len() == 2
    });
    let (code, _, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}

/// MySQL has no LISTEN: watch polls the server's counters, and a row
/// another connection commits is handled without another run, the interval
/// an hour away (how soon: bench/watch_mysql.py).
#[test]
fn mysql_watch_sees_a_commit_without_another_run() {
    let Some(backend) = Backend::mysql("mysql_watch_sees_a_commit_without_another_run") else {
        return;
    };
    let row = |id: u32| {
        format!(
            "INSERT INTO challenge VALUES ({id}, 't{id}', 'u{id}@x', 1, \
             CAST(CURRENT_DATE - INTERVAL 1 DAY AS CHAR), CAST(CURRENT_DATE + INTERVAL 30 DAY AS CHAR));"
        )
    };
    let case = Case::on(backend)
        .db(&format!("{CHALLENGE_SCHEMA}\n{}", row(1)))
        .config(&challenge_config(""));
    let child = case.spawn(&["watch", "--interval", "1h"]);
    wait_until("the first cycle", || {
        case.jsonl_keys("events.jsonl").len() == 1
    });
    // Let watch settle into waiting, then commit elsewhere, in a
    // transaction of its own.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    case.my_sql(&format!("START TRANSACTION; {} COMMIT;", row(2)));
    wait_until("the committed row handled", || {
        case.jsonl_keys("events.jsonl").len() == 2
    });
    let (code, _, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}
