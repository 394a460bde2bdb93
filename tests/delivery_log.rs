//! The delivery log an operator needs, on both backends: the history
//! (`deliveries --state done`, `show KEY`, kept for `keep_history` and
//! pruned), orphans (`deliveries --orphaned`, `reassign`, `discard
//! --handler`), `discard` with who/when/why, and `replay` to one handler.

mod common;

use common::{Backend, Case, challenges_case_on};

const AS_OF: &str = "2026-03-10";

/// Two challenges (3 events: created 1 and 2, inactivity_2d 1), the `log`
/// jsonl handler, and `extra`.
fn case(backend: Backend, extra: &str) -> Case {
    challenges_case_on(
        backend,
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30'), (2, 'b', 'b@x', 1, '2026-03-09', '2026-03-30')",
        extra,
    )
}

/// A command handler `cmd` on created events, failing for challenge 2
/// while `fail` exists in the case's folder.
const CMD: &str = r#"
[[handlers]]
name = "cmd"
group = "created"
kind = "command"
max_attempts = 2
command = ["sh", "-c", "test \"$SPARK_EVENT_KEY\" != challenge_created_2 || test ! -e fail"]
"#;

fn set_handler_name(case: &Case, from: &str, to: &str) {
    let path = case.path("spark.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&format!("name = \"{from}\""), &format!("name = \"{to}\""));
    std::fs::write(&path, text).unwrap();
}

on_every_backend! {
    fn every_call_is_in_the_history_and_show_tells_the_story(backend: Backend) {
        let case = case(backend, CMD);
        std::fs::write(case.path("fail"), "").unwrap();
        case.run(&["process-sources", "--as-of", AS_OF]).status(1);
        std::fs::remove_file(case.path("fail")).unwrap();
        case.let_leases_run_out();
        case.run(&["retry", "--all"]).success();

        let done = case
            .run(&["deliveries", "--state", "done", "--json"])
            .success()
            .json();
        let done: Vec<(String, String)> = done
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["handler"].as_str().unwrap().to_owned(), e["key"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(done.contains(&("cmd".into(), "challenge_created_1".into())));
        assert!(done.contains(&("cmd".into(), "challenge_created_2".into())));

        let show = case.run(&["show", "challenge_created_2", "--json"]).success().json();
        assert_eq!(show["group"], "challenge_created");
        assert_eq!(show["context"]["challenge"]["title"], "b");
        let handlers = show["handlers"].as_array().unwrap();
        let cmd = handlers.iter().find(|h| h["handler"] == "cmd").unwrap();
        assert_eq!(cmd["state"], "done");
        let attempts = cmd["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 3, "{attempts:?}");
        assert_eq!(attempts[0]["outcome"], "failed");
        assert_eq!(attempts[0]["attempt"], 1);
        assert!(attempts[0]["error"].as_str().unwrap().contains("exited with status 1"));
        assert!(attempts[0]["ms"].is_i64());
        // `retry` says who asked for it.
        assert_eq!(attempts[1]["outcome"], "retried");
        assert!(attempts[1]["by"].is_string(), "{attempts:?}");
        assert_eq!(attempts[2]["outcome"], "delivered");
        let log = handlers.iter().find(|h| h["handler"] == "log").unwrap();
        assert_eq!(log["state"], "done (in the file)");

        // Text, for a person.
        case.run(&["show", "challenge_created_2"])
            .success()
            .stdout_has(&["challenge_created_2 (group challenge_created)", "handler cmd: done", "failed", "delivered"]);
        case.run(&["show", "no_such_key"]).status(2).stderr_has(&["no such seen event"]);
    }

    fn the_history_is_pruned_after_keep_history(backend: Backend) {
        let case = case(backend, &format!("{CMD}\n"));
        let path = case.path("spark.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[delivery]\n", "[delivery]\nkeep_history = \"1s\"\n");
        std::fs::write(&path, text).unwrap();
        case.run(&["process-sources", "--as-of", AS_OF]).success();
        let n = |case: &Case| case.run(&["deliveries", "--state", "done", "--json"]).success().json().as_array().unwrap().len();
        assert_eq!(n(&case), 2);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        case.run(&["prune", "--older-than", "365d"])
            .success()
            .stdout_has(&["pruned 2 history entries"]);
        assert_eq!(n(&case), 0);
    }

    fn keep_history_zero_writes_none(backend: Backend) {
        let case = case(backend, CMD);
        let path = case.path("spark.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[delivery]\n", "[delivery]\nkeep_history = \"0s\"\n");
        std::fs::write(&path, text).unwrap();
        case.run(&["process-sources", "--as-of", AS_OF]).success();
        let json = case.run(&["deliveries", "--state", "done", "--json"]).success().json();
        assert_eq!(json.as_array().unwrap().len(), 0);
    }

    fn orphans_are_listed_reassigned_or_discarded(backend: Backend) {
        let case = case(backend, CMD);
        std::fs::write(case.path("fail"), "").unwrap();
        case.run(&["process-sources", "--as-of", AS_OF]).status(1);
        // The handler is renamed: what it was owed is orphaned.
        set_handler_name(&case, "cmd", "cmd2");
        let orphans = case.run(&["deliveries", "--orphaned", "--json"]).success().json();
        let orphans = orphans.as_array().unwrap();
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        assert_eq!(orphans[0]["handler"], "cmd");
        assert_eq!(orphans[0]["key"], "challenge_created_2");
        case.run(&["reassign", "cmd", "nope"]).status(2).stderr_has(&["no handler `nope`"]);
        case.run(&["reassign", "cmd", "cmd2"])
            .success()
            .stdout_has(&["handed 1 owed events", "to cmd2"]);
        assert_eq!(case.run(&["deliveries", "--orphaned", "--json"]).success().json().as_array().unwrap().len(), 0);
        let owed = case.run(&["deliveries", "--handler", "cmd2", "--json"]).success().json();
        assert_eq!(owed[0]["key"], "challenge_created_2");
        // It is delivered by its new handler.
        std::fs::remove_file(case.path("fail")).unwrap();
        case.let_leases_run_out();
        case.run(&["retry", "--all"]).success();
        assert_eq!(case.run(&["deliveries", "--json"]).success().json().as_array().unwrap().len(), 0);
        let show = case.run(&["show", "challenge_created_2", "--json"]).success().json();
        let cmd2 = show["handlers"].as_array().unwrap().iter().find(|h| h["handler"] == "cmd2").unwrap().clone();
        let outcomes: Vec<&str> = cmd2["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
        assert_eq!(outcomes, ["reassigned", "retried", "delivered"]);

        // A handler removed for good: its deliveries are discarded.
        std::fs::write(case.path("fail"), "").unwrap();
        case.run(&["forget", "challenge_created_2"]).success();
        case.run(&["process-sources", "--as-of", AS_OF]).status(1);
        set_handler_name(&case, "cmd2", "cmd3");
        case.run(&["discard", "--handler", "cmd2", "--reason", "handler removed"])
            .success()
            .stdout_has(&["discarded 1 owed deliveries (handler removed)"]);
        assert_eq!(case.run(&["deliveries", "--json"]).success().json().as_array().unwrap().len(), 0);
        let discarded = case.run(&["deliveries", "--state", "discarded", "--json"]).success().json();
        assert_eq!(discarded[0]["key"], "challenge_created_2");
        assert_eq!(discarded[0]["handler"], "cmd2");
        assert_eq!(discarded[0]["error"], "handler removed");
        assert!(discarded[0]["by"].as_str().is_some_and(|by| !by.is_empty()));
    }

    fn discard_takes_keys_or_dead_ones_and_leaves_the_rest(backend: Backend) {
        let case = case(backend, &format!("{CMD}\n[[handlers]]\nname = \"cmd-b\"\ngroup = \"created\"\nkind = \"command\"\nmax_attempts = 1\ncommand = [\"false\"]\n"));
        std::fs::write(case.path("fail"), "").unwrap();
        case.run(&["process-sources", "--as-of", AS_OF]).status(1);
        // cmd: created_2 failed (1 of 2 attempts); cmd-b: created_1 and _2 dead.
        case.run(&["discard"]).status(2).stderr_has(&["say which deliveries"]);
        case.run(&["discard", "--dead"]).success().stdout_has(&["discarded 2 owed deliveries"]);
        let left = case.run(&["deliveries", "--json"]).success().json();
        let left = left.as_array().unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0]["handler"], "cmd");
        case.run(&["discard", "--key", "challenge_created_2", "--reason", "customer asked"])
            .success()
            .stdout_has(&["discarded 1"]);
        assert_eq!(case.run(&["deliveries", "--json"]).success().json().as_array().unwrap().len(), 0);
        // Never delivered later.
        std::fs::remove_file(case.path("fail")).unwrap();
        case.let_leases_run_out();
        case.run(&["process-sources", "--as-of", AS_OF]).success().stdout_has(&["0 delivered"]);
    }

    fn replay_delivers_seen_events_to_one_handler_only(backend: Backend) {
        let case = case(backend, "");
        case.run(&["process-sources", "--as-of", AS_OF]).success();
        assert_eq!(case.jsonl_keys("events.jsonl").len(), 3);
        // A handler added later gets nothing of what was seen before...
        let path = case.path("spark.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[[handlers]]\nname = \"late\"\ngroup = \"created\"\nkind = \"jsonl\"\npath = \"late.jsonl\"\n");
        std::fs::write(&path, text).unwrap();
        case.run(&["process-sources", "--as-of", AS_OF]).success().stdout_has(&["0 new"]);
        assert!(case.jsonl_keys("late.jsonl").is_empty());
        // ... until it is replayed to it.
        let dry = case
            .run(&["replay", "--handler", "late", "--dry-run"])
            .success();
        dry.stdout_has(&["would replay 2 events to late", "1 of groups it does not receive", "challenge_created_1"]);
        assert!(case.jsonl_keys("late.jsonl").is_empty(), "a dry run changes nothing");
        case.run(&["replay", "--handler", "late"]).success().stdout_has(&["replayed 2 events to late"]);
        // Replaying again before delivery adds nothing twice.
        case.run(&["replay", "--handler", "late"]).success().stdout_has(&["replayed 0 events", "2 already owed"]);
        case.run(&["process-sources", "--as-of", AS_OF]).success();
        assert_eq!(
            common::sorted(&case.jsonl_keys("late.jsonl")),
            ["challenge_created_1", "challenge_created_2"]
        );
        // The other handler got nothing again.
        assert_eq!(case.jsonl_keys("events.jsonl").len(), 3);
        // `show` tells it is done, not that it was replayed.
        let show = case.run(&["show", "challenge_created_1", "--json"]).success().json();
        let late = show["handlers"].as_array().unwrap().iter().find(|h| h["handler"] == "late").unwrap().clone();
        assert_eq!(late["state"], "done (in the file)", "{late}");
        // One key, by name; a group filter.
        case.run(&["replay", "--handler", "late", "--key", "challenge_created_2"]).success().stdout_has(&["replayed 1"]);
        case.run(&["replay", "--handler", "late", "--key", "nope"]).status(2).stderr_has(&["no such seen event"]);
        case.run(&["replay", "--handler", "log", "--group", "inactivity", "--dry-run"])
            .success()
            .stdout_has(&["would replay 1 events to log"]);
        case.run(&["replay", "--handler", "nope"]).status(2).stderr_has(&["no handler of that name"]);
    }
}

/// Every operator command that writes takes the run lock (SQLite): with a
/// run holding it, each exits 3 and changes nothing; once it is let go,
/// they go ahead. `mark-seen` and `migrate` wrote without it.
#[test]
fn operator_commands_that_write_wait_for_the_run_lock() {
    let case = case(Backend::Sqlite, CMD);
    // spark's tables are not made yet: migrate has work to do.
    let lock = std::fs::File::create(case.path("app.sqlite3-spark.lock")).unwrap();
    lock.lock().unwrap();
    case.run(&["migrate"]).status(3);
    assert!(
        !case.tables().iter().any(|t| t.starts_with("spark_")),
        "{:?}",
        case.tables()
    );
    lock.unlock().unwrap();
    std::fs::write(case.path("fail"), "").unwrap();
    case.run(&["process-sources", "--as-of", AS_OF]).status(1);

    let before = (case.seen(), case.deliveries(), history_rows(&case));
    lock.lock().unwrap();
    for args in [
        &["mark-seen", "other_1"][..],
        &["forget", "challenge_created_1"],
        &["prune", "--older-than", "0s"],
        &["reassign", "cmd", "log"],
        &["discard", "--handler", "cmd"],
        &["replay", "--handler", "cmd", "--key", "challenge_created_1"],
        &["retry", "--all"],
    ] {
        let run = case.run(args).status(3);
        assert!(
            run.stderr().contains("another"),
            "{args:?}: {}",
            run.stderr()
        );
        assert_eq!(
            (case.seen(), case.deliveries(), history_rows(&case)),
            before,
            "{args:?} changed the store while another run held the lock"
        );
    }
    // Waiting for it: goes ahead once the run lets go.
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        lock.unlock().unwrap();
    });
    case.run(&["mark-seen", "other_1", "--wait", "10s"])
        .success();
    release.join().unwrap();
    assert!(case.seen().contains_key("other_1"));
}

fn history_rows(case: &Case) -> usize {
    case.query("SELECT count(*) FROM spark_history")[0][0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap()
}
