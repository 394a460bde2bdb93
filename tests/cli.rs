//! The command line's manners: quiet on success, JSON when asked, config
//! lookup, global options anywhere, listings.

mod common;

use assert_cmd::Command;
use common::{Case, challenges_case};

fn case(extra: &str) -> Case {
    challenges_case("(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')", extra)
}

#[test]
fn quiet_prints_nothing_on_success() {
    let c = case("");
    let run = c
        .run(&["-q", "process-sources", "--as-of", "2026-03-10"])
        .success();
    assert_eq!(run.stdout(), "");
    assert_eq!(run.stderr(), "");
    assert_eq!(c.jsonl_keys("events.jsonl").len(), 2);
}

#[test]
fn quiet_still_reports_failures_on_stderr() {
    let c = case(
        r#"
[[handlers]]
name = "broken"
group = "created"
kind = "command"
command = ["false"]
"#,
    );
    let run = c
        .run(&["process-sources", "--as-of", "2026-03-10", "-q"])
        .status(1)
        .stderr_has(&["1 failed", "handler `broken`", "exited with status 1"]);
    assert_eq!(run.stdout(), "");
}

#[test]
fn global_options_go_before_or_after_the_command() {
    let c = case("");
    let run = c
        .run(&["process-sources", "--json", "--as-of", "2026-03-10"])
        .success();
    assert_eq!(run.json()["new"], 2);
    let run = c
        .run(&["--json", "process-sources", "--as-of", "2026-03-10"])
        .success();
    assert_eq!(run.json()["new"], 0);
}

#[test]
fn config_comes_from_spark_config_then_the_current_folder() {
    let c = case("");
    std::fs::rename(c.path("spark.toml"), c.path("elsewhere.toml")).unwrap();
    // No --config, no $SPARK_CONFIG, no ./spark.toml.
    Command::new(assert_cmd::cargo::cargo_bin("spark"))
        .current_dir(c.dir.path())
        .env_remove("SPARK_CONFIG")
        .arg("list-handlers")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("no config file at spark.toml"));
    Command::new(assert_cmd::cargo::cargo_bin("spark"))
        .current_dir(c.dir.path())
        .env("SPARK_CONFIG", "elsewhere.toml")
        .arg("list-handlers")
        .assert()
        .success()
        .stdout(predicates::str::contains("log"));
    std::fs::rename(c.path("elsewhere.toml"), c.path("spark.toml")).unwrap();
    Command::new(assert_cmd::cargo::cargo_bin("spark"))
        .current_dir(c.dir.path())
        .env_remove("SPARK_CONFIG")
        .arg("list-handlers")
        .assert()
        .success();
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let c = case("");
    std::fs::create_dir(c.path("run")).unwrap();
    Command::new(assert_cmd::cargo::cargo_bin("spark"))
        .current_dir(c.path("run"))
        .args(["--config", "../spark.toml", "-q", "process-sources"])
        .assert()
        .success();
    assert!(c.path("events.jsonl").exists());
    assert!(!c.path("run/events.jsonl").exists());
}

#[test]
fn list_handlers_shows_name_kind_and_regex() {
    let c = case(
        r#"
[[handlers]]
name = "notify"
group = "_2d$"
kind = "command"
command = ["./notify.sh", "--channel", "ops"]
timeout = "30s"
delivery = "at-most-once"
"#,
    );
    c.run(&["list-handlers"]).success().stdout_has(&[
        "NAME",
        "log",
        "jsonl",
        "^challenge",
        "notify",
        "command",
        "_2d$",
        "at-most-once",
    ]);
    let run = c.run(&["list-handlers", "--json"]).success();
    let list = run.json();
    assert_eq!(list[1]["name"], "notify");
    assert_eq!(list[1]["kind"], "command");
    assert_eq!(list[1]["group"], "_2d$");
    assert_eq!(list[1]["delivery"], "at-most-once");
}

#[test]
fn list_sources_shows_function_and_records() {
    let c = case("");
    c.run(&["list-sources"]).success().stdout_has(&[
        "challenges",
        "function challenge_events",
        "query SELECT",
    ]);
    let run = c.run(&["list-sources", "--json"]).success();
    assert_eq!(run.json()[0]["function"], "challenge_events");
    assert_eq!(run.json()[0]["emits"][3], "challenge_ended");
}

#[test]
fn listings_and_dry_run_never_write() {
    let c = case("");
    let before = c.db_bytes();
    c.run(&["list-handlers"]).success();
    c.run(&["list-sources"]).success();
    c.run(&["dry-run"]).success();
    assert_eq!(c.db_bytes(), before);
    assert_eq!(c.tables(), ["challenge", "donation"]);
}

#[test]
fn help_and_version() {
    Command::new(assert_cmd::cargo::cargo_bin("spark"))
        .arg("--help")
        .assert()
        .success()
        .stdout(predicates::str::contains("process-sources"));
    Command::new(assert_cmd::cargo::cargo_bin("spark"))
        .arg("--version")
        .assert()
        .success();
    Command::new(assert_cmd::cargo::cargo_bin("spark"))
        .assert()
        .code(2);
}
