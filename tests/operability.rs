//! Operating spark: `check`, the metrics file, completions and the man page,
//! the scheduling examples, `${VAR}` in the config, `spark config`, and
//! output without escape sequences.

mod common;

use std::path::Path;
use std::process::Command as Process;

use common::{CHALLENGE_QUERY, Case, challenge_config, challenges_case};

fn challenges(extra: &str) -> Case {
    challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30'), (2, 'b', 'b@x', 1, '2026-03-09', '2026-03-30')",
        extra,
    )
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn check_passes_a_good_config_and_writes_nothing() {
    let case = challenges("");
    let (before, names) = (case.db_bytes(), files(case.dir.path()));
    case.run(&["check"])
        .success()
        .stdout_has(&["0 errors, 0 warnings"]);
    let json = case.run(&["check", "--json"]).success().json();
    assert_eq!(json["ok"], true);
    assert_eq!(case.db_bytes(), before);
    assert_eq!(files(case.dir.path()), names);
}

#[test]
fn check_reports_every_problem_at_once() {
    let case = challenges(
        r#"
[[sources]]
name = "orders"
function = "challenge_events"
table = "orders"

[[sources]]
name = "thin"
function = "challenge_events"
table = "challenge"

[[sources]]
name = "old"
function = "challenge_events"
table = "gone"
enabled = false

[[sources]]
name = "typo-variable"
table = "challenge"
group = "g"
conditions = [ { variable = "is_actve", op = "=", value = 1 } ]

[[handlers]]
name = "typo"
group = "^chalenge"
kind = "jsonl"
path = "typo.jsonl"

[[handlers]]
name = "pager"
group = "ended"
kind = "command"
command = ["./no-such-script.sh"]
"#,
    );
    let before = case.db_bytes();
    let run = case.run(&["check"]).status(2);
    let err = run.stderr();
    for expected in [
        "error: source `orders`: table `orders` does not exist",
        "error: source `thin`: column `donation_count`",
        "warning: source `old`: table `gone` does not exist",
        "(the source is disabled)",
        "warning: source `typo-variable`: condition `is_actve = 1`",
        "warning: handler `typo`: group regex `^chalenge` matches no group a source emits",
        "error: handler `pager`: command `./no-such-script.sh`",
        "warning: source `typo-variable`: group `g` has no handler",
    ] {
        assert!(err.contains(expected), "stderr lacks {expected:?}:\n{err}");
    }
    run.stdout_has(&["3 errors, 4 warnings"]);
    let json = case.run(&["check", "--json"]).status(2).json();
    assert_eq!(json["errors"].as_array().unwrap().len(), 3);
    assert_eq!(json["warnings"].as_array().unwrap().len(), 4);
    assert_eq!(case.db_bytes(), before);
}

#[test]
fn check_names_config_problems_with_their_lines() {
    // Problems the file alone shows: exit 2 before the database is opened.
    let case = challenges(
        r#"
[[handlers]]
name = "mail"
group = "ended"
kind = "mail"
outbox = "out"
to = "{{ challenge.user_email"
"#,
    );
    case.run(&["check"])
        .status(2)
        .stderr_has(&["spark.toml:", "handler `mail`", "template `to`"]);
}

#[test]
fn list_handlers_shows_the_groups_each_receives() {
    let case = challenges(
        r#"
[[handlers]]
name = "reminders"
group = "_2d$"
kind = "jsonl"
path = "r.jsonl"
"#,
    );
    case.run(&["list-handlers"])
        .success()
        .stdout_has(&["RECEIVES", "challenge_inactivity_2d, challenge_ends_2d"]);
    let json = case.run(&["list-handlers", "--json"]).success().json();
    assert_eq!(json[0]["receives"].as_array().unwrap().len(), 4);
}

fn scrape(path: &Path) -> prometheus_parse::Scrape {
    let text = std::fs::read_to_string(path).expect("metrics file");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

fn gauge(scrape: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {metric} {label:?}"));
    match sample.value {
        prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric}: not a gauge: {other:?}"),
    }
}

#[test]
fn check_json_reports_an_unreadable_config_file_too() {
    let case = challenges("");
    std::fs::write(case.path("spark.toml"), "[database\npath = 1").unwrap();
    let run = case.run(&["check", "--json"]).status(2);
    let json = run.json();
    assert_eq!(json["ok"], false);
    let errors = json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{json}");
    assert!(
        errors[0].as_str().unwrap().contains("spark.toml:1:"),
        "{json}"
    );
    // And a file that is not there.
    std::fs::remove_file(case.path("spark.toml")).unwrap();
    let json = case.run(&["check", "--json"]).status(2).json();
    assert!(
        json["errors"][0]
            .as_str()
            .unwrap()
            .contains("no config file")
    );
}

#[test]
fn check_reports_config_and_database_errors_together() {
    let case = challenges(
        r#"
[[handlers]]
name = "bad-regex"
group = "(unclosed"
kind = "jsonl"
path = "other.jsonl"

[[sources]]
name = "ghosts"
table = "no_such_table"
group = "ghost"
"#,
    );
    let (before, names) = (case.db_bytes(), files(case.dir.path()));
    let json = case.run(&["check", "--json"]).status(2).json();
    let errors: Vec<&str> = json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(errors.iter().any(|e| e.contains("bad-regex")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("no_such_table")),
        "{errors:?}"
    );
    case.run(&["check"])
        .status(2)
        .stderr_has(&["bad-regex", "no_such_table"]);
    assert_eq!(case.db_bytes(), before, "nothing written");
    assert_eq!(files(case.dir.path()), names);
}

#[test]
fn verbosity_logs_a_line_per_delivery_and_per_batch_in_text_or_json() {
    let case = challenges(
        r#"
[[handlers]]
name = "cmd"
group = "created"
kind = "command"
command = ["sh", "-c", "test \"$SPARK_EVENT_KEY\" != challenge_created_2"]
"#,
    );
    let quiet = case
        .run(&["process-sources", "--as-of", "2026-03-10"])
        .status(1);
    assert!(
        !quiet.stderr().contains("delivery key="),
        "{}",
        quiet.stderr()
    );
    case.run(&[
        "forget",
        "challenge_created_1",
        "challenge_created_2",
        "challenge_inactivity_2d_1",
    ])
    .success();

    let v = case
        .run(&["process-sources", "--as-of", "2026-03-10", "-v"])
        .status(1);
    let stderr = v.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" delivery key="))
        .collect();
    assert_eq!(lines.len(), 2, "one line per call: {}", v.stderr());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("key=\"challenge_created_1\"")
                && l.contains("handler=cmd")
                && l.contains("outcome=\"delivered\"")
                && l.contains("attempt=1")
                && l.contains("ms=")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("key=\"challenge_created_2\"") && l.contains("outcome=\"failed\""))
    );
    assert!(
        v.stderr().contains("file write handler=log events=3"),
        "{}",
        v.stderr()
    );
    assert!(!v.stderr().contains("DEBUG batch"), "{}", v.stderr());
    case.run(&[
        "forget",
        "challenge_created_1",
        "challenge_created_2",
        "challenge_inactivity_2d_1",
    ])
    .success();

    let vv = case
        .run(&[
            "process-sources",
            "--as-of",
            "2026-03-10",
            "-vv",
            "--log-format",
            "json",
        ])
        .status(1);
    let logs: Vec<serde_json::Value> = vv
        .stderr()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let calls: Vec<&serde_json::Value> =
        logs.iter().filter(|l| l["message"] == "delivery").collect();
    assert_eq!(calls.len(), 2, "{logs:?}");
    let failed = calls.iter().find(|l| l["outcome"] == "failed").unwrap();
    assert_eq!(failed["key"], "challenge_created_2");
    assert_eq!(failed["handler"], "cmd");
    assert_eq!(failed["attempt"], 1);
    assert!(failed["ms"].is_u64() && failed["timestamp"].is_string());
    assert!(
        logs.iter()
            .any(|l| l["message"] == "batch" && l["events"] == 3),
        "{logs:?}"
    );
}

#[test]
fn dead_and_orphaned_deliveries_are_gauges() {
    let case = challenges(
        r#"
[[handlers]]
name = "broken"
group = "created"
kind = "command"
max_attempts = 1
command = ["false"]
"#,
    );
    let run = |case: &Case| {
        case.run(&[
            "process-sources",
            "--as-of",
            "2026-03-10",
            "--metrics-file",
            "spark.prom",
        ])
    };
    run(&case).status(1);
    let s = scrape(&case.path("spark.prom"));
    assert_eq!(
        gauge(&s, "spark_dead_events", Some(("handler", "broken"))),
        2.0
    );
    // The handler is renamed: what it was owed is orphaned.
    let path = case.path("spark.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("name = \"broken\"", "name = \"renamed\"");
    std::fs::write(&path, text).unwrap();
    run(&case).status(1);
    let s = scrape(&case.path("spark.prom"));
    assert_eq!(
        gauge(&s, "spark_orphaned_events", Some(("handler", "broken"))),
        2.0
    );
}

#[test]
fn the_metrics_file_parses_and_carries_the_run() {
    let case = challenges(
        r#"
[[handlers]]
name = "broken"
group = "created"
kind = "command"
command = ["sh", "-c", "test \"$SPARK_EVENT_KEY\" != challenge_created_2"]
"#,
    );
    let metrics = case.path("spark.prom");
    case.run(&[
        "process-sources",
        "--as-of",
        "2026-03-10",
        "--metrics-file",
        "spark.prom",
    ])
    .status(1);
    let s = scrape(&metrics);
    for (metric, label, expected) in [
        ("spark_last_run_success", None, 0.0),
        ("spark_last_run_exit_status", None, 1.0),
        ("spark_records_read", Some(("source", "challenges")), 2.0),
        ("spark_events_new", Some(("source", "challenges")), 3.0),
        ("spark_deliveries_done", Some(("handler", "log")), 3.0),
        ("spark_deliveries_done", Some(("handler", "broken")), 1.0),
        ("spark_deliveries_failed", Some(("handler", "broken")), 1.0),
        (
            "spark_deliveries_outstanding",
            Some(("state", "failed")),
            1.0,
        ),
    ] {
        assert_eq!(gauge(&s, metric, label), expected, "{metric} {label:?}");
    }
    let started = gauge(&s, "spark_last_run_start_timestamp_seconds", None);
    let ended = gauge(&s, "spark_last_run_end_timestamp_seconds", None);
    assert!(started > 1.7e9 && ended >= started);
    assert!(
        !s.samples
            .iter()
            .any(|x| x.metric == "spark_last_success_timestamp_seconds"),
        "never succeeded yet"
    );

    // The broken handler is fixed: success, and the success time appears.
    let fixed = case.path("spark.toml");
    let text = std::fs::read_to_string(&fixed).unwrap().replace(
        "[\"sh\", \"-c\", \"test \\\"$SPARK_EVENT_KEY\\\" != challenge_created_2\"]",
        "[\"true\"]",
    );
    std::fs::write(&fixed, text).unwrap();
    case.run(&[
        "process-sources",
        "--as-of",
        "2026-03-10",
        "--metrics-file",
        "spark.prom",
    ])
    .success();
    let s = scrape(&metrics);
    assert_eq!(gauge(&s, "spark_last_run_success", None), 1.0);
    let success = gauge(&s, "spark_last_success_timestamp_seconds", None);

    // A run with an unusable config still writes metrics, keeping the last success.
    std::fs::write(&fixed, "this is not toml").unwrap();
    case.run(&["process-sources", "--metrics-file", "spark.prom"])
        .status(2);
    let s = scrape(&metrics);
    assert_eq!(gauge(&s, "spark_last_run_success", None), 0.0);
    assert_eq!(gauge(&s, "spark_last_run_exit_status", None), 2.0);
    assert_eq!(
        gauge(&s, "spark_last_success_timestamp_seconds", None),
        success
    );
    let leftovers: Vec<String> = files(case.dir.path())
        .into_iter()
        .filter(|f| f.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn completions_know_handler_and_source_names_and_states() {
    let case = challenges(
        r#"
[[handlers]]
name = "log-two"
group = "created"
kind = "jsonl"
path = "two.jsonl"
"#,
    );
    let complete = |index: &str, words: &[&str]| -> Vec<String> {
        let output = case
            .command()
            .env("COMPLETE", "bash")
            .env("_CLAP_COMPLETE_INDEX", index)
            .env("_CLAP_IFS", "\n")
            .env("SPARK_CONFIG", "spark.toml")
            .arg("--")
            .args(words)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        complete("3", &["spark", "retry", "--handler", ""]),
        ["log", "log-two"]
    );
    assert_eq!(
        complete("3", &["spark", "retry", "--handler", "log-"]),
        ["log-two"]
    );
    assert_eq!(
        complete("2", &["spark", "preview-mail", "l"]),
        ["log", "log-two"]
    );
    assert_eq!(
        complete("3", &["spark", "process-sources", "--source", ""]),
        ["challenges"]
    );
    let states = complete("3", &["spark", "deliveries", "--state", ""]);
    for state in [
        "pending",
        "failed",
        "dead",
        "in_flight",
        "done",
        "discarded",
    ] {
        assert!(states.contains(&state.to_owned()), "{states:?}");
    }
    // The script itself, for `source <(COMPLETE=bash spark)`.
    let script = case.command().env("COMPLETE", "bash").output().unwrap();
    let script = String::from_utf8_lossy(&script.stdout);
    assert!(script.contains("complete -o nospace"), "{script}");
}

#[test]
fn bash_completions_are_valid_bash() {
    let case = Case::new();
    let run = case.run(&["completions", "bash"]).success();
    let script = case.path("spark.bash");
    std::fs::write(&script, run.stdout()).unwrap();
    let status = Process::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(run.stdout().contains("process-sources"));
}

#[test]
fn the_man_page_renders() {
    let case = Case::new();
    let run = case.run(&["man"]).success();
    let roff = run.stdout().replace("\\-", "-");
    assert!(roff.contains(".TH"));
    for section in [
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "COMMANDS",
    ] {
        assert!(
            roff.contains(&format!(".SH \"{section}\""))
                || roff.contains(&format!(".SH {section}")),
            "{section}"
        );
    }
    // One page: it names no other page that is not there.
    assert!(
        !roff.contains("spark-process-sources(1)") && !roff.contains("(1)\\fR"),
        "{roff}"
    );
    // Every command is in it, with its options.
    for command in [
        "process-sources",
        "watch",
        "show",
        "replay",
        "discard",
        "reassign",
    ] {
        assert!(roff.contains(&format!("spark {command}")), "{command}");
    }
    assert!(roff.contains("--interval"));
    let page = case.path("spark.1");
    std::fs::write(&page, &roff).unwrap();

    // With --dir: a page per command, and every reference resolves.
    case.run(&["man", "--dir", "man1"]).success();
    let pages: Vec<String> = std::fs::read_dir(case.path("man1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(pages.contains(&"spark.1".to_owned()));
    assert!(pages.contains(&"spark-watch.1".to_owned()));
    let main = std::fs::read_to_string(case.path("man1/spark.1"))
        .unwrap()
        .replace("\\-", "-");
    let refs = regex::Regex::new(r"spark-([a-z-]+)").unwrap();
    let mut found = 0;
    for r in refs.captures_iter(&main) {
        found += 1;
        assert!(
            pages.contains(&format!("spark-{}.1", &r[1])),
            "dangling spark-{}(1)",
            &r[1]
        );
    }
    assert!(found >= 20, "{found} references");

    if Process::new("groff").arg("--version").output().is_err() {
        eprintln!("groff is not installed: only the roff source was checked");
        return;
    }
    for page in [
        page,
        case.path("man1/spark.1"),
        case.path("man1/spark-replay.1"),
    ] {
        let out = Process::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .arg(&page)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("spark"), "{text}");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/systemd");
    let bin = assert_cmd::cargo::cargo_bin("spark");
    let service = std::fs::read_to_string(root.join("spark.service"))
        .unwrap()
        .replace("/usr/local/bin/spark", &bin.display().to_string());
    let timer = std::fs::read_to_string(root.join("spark.timer")).unwrap();
    let worker = std::fs::read_to_string(root.join("spark-deliver@.service"))
        .unwrap()
        .replace("/usr/local/bin/spark", &bin.display().to_string());
    let watch = std::fs::read_to_string(root.join("spark-watch.service"))
        .unwrap()
        .replace("/usr/local/bin/spark", &bin.display().to_string());
    assert!(timer.contains("Persistent=true"));
    assert!(service.contains("Type=oneshot"));
    assert!(worker.contains(" deliver --linger "));
    assert!(watch.contains("Type=simple") && watch.contains(" watch --interval "));
    assert!(watch.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    std::fs::write(dir.path().join("spark.service"), &service).unwrap();
    std::fs::write(dir.path().join("spark.timer"), &timer).unwrap();
    std::fs::write(dir.path().join("spark-deliver@.service"), &worker).unwrap();
    std::fs::write(dir.path().join("spark-watch.service"), &watch).unwrap();
    let analyze = Process::new("systemd-analyze")
        .args([
            "verify",
            "--man=no",
            "./spark.service",
            "./spark.timer",
            "./spark-deliver@1.service",
            "./spark-watch.service",
        ])
        .current_dir(dir.path())
        .output();
    match analyze {
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && err.trim().is_empty(), "{err}");
        }
        Err(_) => {
            // No systemd here: check the shape at least.
            for (text, sections) in [
                (&service, ["[Unit]", "[Service]"]),
                (&timer, ["[Unit]", "[Timer]"]),
                (&worker, ["[Unit]", "[Service]"]),
                (&watch, ["[Unit]", "[Service]"]),
            ] {
                for section in sections {
                    assert!(text.contains(section), "{section}");
                }
            }
        }
    }
}

#[test]
fn the_cron_line_is_well_formed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/spark.cron");
    let text = std::fs::read_to_string(path).unwrap();
    let jobs: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.contains('='))
        .collect();
    assert_eq!(jobs.len(), 1);
    let fields: Vec<&str> = jobs[0].split_whitespace().collect();
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    for (field, (lo, hi)) in fields[..5].iter().zip(ranges) {
        for part in field.split(',') {
            let (range, step) = part.split_once('/').unwrap_or((part, "1"));
            assert!(step.parse::<u32>().is_ok_and(|s| s > 0), "{field}");
            if range != "*" {
                for n in range.split('-') {
                    let n: u32 = n.parse().unwrap_or_else(|_| panic!("{field}"));
                    assert!((lo..=hi).contains(&n), "{field}");
                }
            }
        }
    }
    assert_eq!(fields[5], "spark", "the /etc/cron.d user field");
    let command = fields[6..].join(" ");
    assert!(command.contains("-q process-sources"), "{command}");
    // The command line itself is accepted by spark's parser.
    let case = challenges("");
    let metrics = case.path("spark.prom").display().to_string();
    let args: Vec<&str> = fields[7..]
        .iter()
        .map(|a| {
            if a.ends_with(".prom") {
                metrics.as_str()
            } else {
                a
            }
        })
        .collect();
    let mut cmd = case.command();
    cmd.args(&args).assert().success().stdout("").stderr("");
    assert!(case.path("spark.prom").exists());
}

#[test]
fn variables_in_the_config_come_from_the_environment() {
    let case = challenges("").config(
        &challenge_config("")
            .replace(
                "path = \"app.sqlite3\"",
                "path = \"${APP_DIR}/app.sqlite3\"",
            )
            .replace(
                "path = \"events.jsonl\"",
                "path = \"${OUT}/events-$${literal}.jsonl\"",
            ),
    );
    let run = |env: &[(&str, &str)]| {
        let mut cmd = case.command();
        cmd.env_remove("APP_DIR").env_remove("OUT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        common::Run {
            output: cmd
                .args(["process-sources", "--as-of", "2026-03-10"])
                .output()
                .unwrap(),
        }
    };
    run(&[("OUT", "x")])
        .status(2)
        .stderr_has(&["spark.toml:3:", "${APP_DIR}", "not set"]);
    std::fs::create_dir(case.path("outbox-dir")).unwrap();
    run(&[("APP_DIR", "."), ("OUT", "out")]).success();
    assert_eq!(case.jsonl_keys("out/events-${literal}.jsonl").len(), 3);
}

#[test]
fn spark_config_prints_the_effective_config_with_secrets_masked() {
    let case = challenges(
        r#"
[[handlers]]
name = "hook"
group = "ended"
kind = "webhook"
url = "https://hooks.example.org/x?token=${API_TOKEN}"
header_env = { "Authorization" = "HOOK_AUTH" }
"#,
    );
    let output = case
        .command()
        .env("API_TOKEN", "t0p-s3cret")
        .env("HOOK_AUTH", "Bearer abc123")
        .args(["config"])
        .output()
        .unwrap();
    let run = common::Run { output }.success();
    let out = run.stdout();
    assert!(
        !out.contains("t0p-s3cret") && !out.contains("abc123"),
        "{out}"
    );
    // Written back the way the file says it, so that it can be fed back.
    assert!(out.contains("token=${API_TOKEN}"), "{out}");
    assert!(out.contains("Authorization = \"HOOK_AUTH\""), "{out}");
    assert!(out.contains(CHALLENGE_QUERY.split_whitespace().next().unwrap()));
    // The TOML printed is itself a TOML document.
    let parsed: toml::Table = toml::from_str(out.trim_start_matches(|c| c != '\n')).unwrap();
    assert!(parsed.contains_key("handlers"));
}

#[test]
fn spark_config_output_can_be_fed_back_as_the_same_config() {
    let case = challenges(
        r#"
[[handlers]]
name = "hook"
group = "ended"
kind = "webhook"
url = "https://hooks.example.org/x?token=${API_TOKEN}"
method = "PUT"
headers = { "X-Source" = "spark", "X-Group" = "{{ spark_event.group }}" }
header_env = { "Authorization" = "HOOK_AUTH" }
signing_secret_env = "HOOK_SECRET"
body = '{"text": "literal $${not a var} {{ challenge.title }}"}'

[[handlers]]
name = "mail-inline"
group = "created"
kind = "mail"
from = "Shop <shop@example.org>"
to = ["{{ challenge.user_email }}", "audit@example.org"]
outbox = "${OUTBOX_DIR}"
strict_templates = true
html = "<p>{{ challenge.title }}</p>"
[handlers.templates]
challenge_created = "Hi\n\n{{ challenge.title|date('Y') }}"
"challenge_created.html" = "<b>{{ challenge.title }}</b>"

[[handlers]]
name = "mail-smtp"
group = "ends"
kind = "mail"
templates = "mails"
from = "a@example.org"
to = "b@example.org"
smtp_host = "smtp.example.org"
smtp_user = "spark"
smtp_password_env = "SMTP_PASSWORD"
smtp_pool = false

[[sources]]
name = "overdue"
table = "challenge"
group = "overdue"
conditions = [
  { variable = "end_date", op = "<", value = "today-3d" },
  { variable = "end_date", op = ">=", value = 2026-01-01 },
  { variable = "title", op = "!=", value = "x" },
  { variable = "is_active", op = "=", value = 1 },
]
"#,
    );
    std::fs::create_dir(case.path("mails")).unwrap();
    std::fs::create_dir(case.path("outbox-dir")).unwrap();
    // `[delivery] keep_history` and the console's `[serve]` too.
    let text = std::fs::read_to_string(case.path("spark.toml"))
        .unwrap()
        .replace(
            "backoff = \"0s\"",
            "backoff = \"0s\"\nkeep_history = \"7d\"",
        );
    std::fs::write(
        case.path("spark.toml"),
        format!("{text}\n[serve]\nlisten = \"[::1]:9000\"\nuser = \"ops\"\npassword_env = \"CONSOLE_PASSWORD\"\n"),
    )
    .unwrap();
    let env = [
        ("API_TOKEN", "t0p-s3cret"),
        ("HOOK_AUTH", "Bearer abc123"),
        ("HOOK_SECRET", "whsec"),
        ("SMTP_PASSWORD", "pw-123456"),
        ("OUTBOX_DIR", "outbox-dir"),
    ];
    let spark = |file: &str| {
        let mut cmd = std::process::Command::new(case.command().get_program());
        cmd.current_dir(case.dir.path()).args(["--config", file]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    };
    let config_of = |file: &str| {
        let output = spark(file).arg("config").output().unwrap();
        let run = common::Run { output }.success();
        let out = run.stdout();
        out[out.find('\n').unwrap() + 1..].to_owned()
    };
    let first = config_of("spark.toml");
    for (_, secret) in &env[..4] {
        assert!(!first.contains(secret), "{secret}: {first}");
    }
    std::fs::write(case.path("again.toml"), &first).unwrap();
    let second = config_of("again.toml");
    assert_eq!(first, second, "the printed config reads back as itself");
    // And it is a config spark accepts as it is.
    let out = spark("again.toml").arg("check").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same keys as the file: no quotes around header values, *_env
    // keys naming variables, templates as written.
    let parsed: toml::Table = toml::from_str(&first).unwrap();
    assert_eq!(parsed["delivery"]["keep_history"].as_str(), Some("7days"));
    assert_eq!(parsed["serve"]["listen"].as_str(), Some("[::1]:9000"));
    assert_eq!(parsed["serve"]["user"].as_str(), Some("ops"));
    assert_eq!(
        parsed["serve"]["password_env"].as_str(),
        Some("CONSOLE_PASSWORD")
    );
    let handlers = parsed["handlers"].as_array().unwrap();
    let hook = handlers
        .iter()
        .find(|h| h["name"].as_str() == Some("hook"))
        .unwrap();
    assert_eq!(hook["headers"]["X-Source"].as_str(), Some("spark"));
    assert_eq!(
        hook["header_env"]["Authorization"].as_str(),
        Some("HOOK_AUTH")
    );
    assert_eq!(hook["signing_secret_env"].as_str(), Some("HOOK_SECRET"));
    assert_eq!(
        hook["body"].as_str(),
        Some("{\"text\": \"literal $${not a var} {{ challenge.title }}\"}")
    );
    let inline = handlers
        .iter()
        .find(|h| h["name"].as_str() == Some("mail-inline"))
        .unwrap();
    assert!(
        inline["outbox"]
            .as_str()
            .unwrap()
            .ends_with("/${OUTBOX_DIR}")
    );
    assert!(inline["templates"]["challenge_created.html"].is_str());
    let smtp = handlers
        .iter()
        .find(|h| h["name"].as_str() == Some("mail-smtp"))
        .unwrap();
    assert_eq!(smtp["smtp_password_env"].as_str(), Some("SMTP_PASSWORD"));
    assert!(smtp["templates"].as_str().unwrap().ends_with("/mails"));
}

#[test]
fn output_has_no_escape_sequences_when_not_a_terminal() {
    let case = challenges(
        r#"
[[handlers]]
name = "broken"
group = "created"
kind = "command"
command = ["false"]
"#,
    );
    for args in [
        vec!["process-sources", "--as-of", "2026-03-10", "-vv"],
        vec!["deliveries"],
        vec!["list-handlers"],
        vec!["check"],
        vec!["events"],
    ] {
        for no_color in [true, false] {
            let mut cmd = case.command();
            if !no_color {
                cmd.env_remove("NO_COLOR");
            }
            let out = cmd.args(&args).output().unwrap();
            for stream in [&out.stdout, &out.stderr] {
                assert!(
                    !stream.contains(&0x1b),
                    "{args:?}: escape sequence in {}",
                    String::from_utf8_lossy(stream)
                );
            }
        }
    }
}

/// `spark config` writes back every option a handler was given, for every
/// kind: a config that sets each option of each kind (every field of the
/// kinds' option structs, so that a new option fails here until it is
/// written back) prints each of them. (`spark_mail_from_records` and
/// `smtp_allow_plaintext_auth` were dropped.)
#[test]
fn spark_config_writes_back_every_option_of_every_kind() {
    let case = challenges(
        r#"
[[handlers]]
name = "file"
group = "created"
kind = "jsonl"
path = "file.jsonl"
mode = "0640"

[[handlers]]
name = "cmd"
group = "created"
kind = "command"
command = ["true"]
timeout = "5s"
env = { A = "1" }

[[handlers]]
name = "fn"
group = "created"
kind = "function"
function = "log_event"

[[handlers]]
name = "hook"
group = "created"
kind = "webhook"
url = "https://hooks.example.org/x"
method = "PUT"
body = '{"a": "{{ spark_event.key }}"}'
content_type = "application/json"
strict_templates = true
headers = { "X-Source" = "spark" }
header_env = { "Authorization" = "HOOK_AUTH" }
signing_secret_env = "HOOK_SECRET"
timeout = "5s"
connect_timeout = "2s"

[[handlers]]
name = "outbox"
group = "created"
kind = "mail"
templates = { challenge_created = "Hi\n\nthere" }
html = "<p>hi</p>"
strict_templates = true
from = "a@example.org"
to = "b@example.org"
cc = "c@example.org"
bcc = "d@example.org"
reply_to = "e@example.org"
subject = "s"
body = "b"
transport = "outbox"
outbox = "out"
mode = "0640"
spark_mail_from_records = ["subject"]

[[handlers]]
name = "relay"
group = "created"
kind = "mail"
templates = "mails"
transport = "smtp"
smtp_host = "relay.example.org"
smtp_port = 2525
smtp_security = "none"
smtp_user = "spark"
smtp_password_env = "SMTP_PASSWORD"
smtp_pool = false
smtp_allow_plaintext_auth = true
timeout = "9s"

[[handlers]]
name = "tls-relay"
group = "created"
kind = "mail"
templates = "mails"
smtp_host = "relay.example.org"
smtp_security = "tls"
smtp_ca_file = "ca.pem"
"#,
    );
    std::fs::create_dir(case.path("mails")).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(case.path("ca.pem"), made.cert.pem()).unwrap();
    let given: toml::Table =
        toml::from_str(&std::fs::read_to_string(case.path("spark.toml")).unwrap()).unwrap();
    let printed = case.run(&["--json", "config"]).success().json();
    let printed = printed["handlers"].as_array().unwrap();
    let mut set: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for handler in given["handlers"].as_array().unwrap() {
        let handler = handler.as_table().unwrap();
        let name = handler["name"].as_str().unwrap();
        let kind = handler["kind"].as_str().unwrap();
        let out = printed
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("{name} printed"));
        for key in handler.keys() {
            assert!(
                out.get(key).is_some(),
                "handler {name}: `{key}` was given but `spark config` did not write it back: {out}"
            );
            set.entry(kind.to_owned()).or_default().insert(key.clone());
        }
    }
    for kind in spark::handlers::KINDS {
        let fields = (kind.fields)();
        assert!(!fields.is_empty(), "{}", kind.name);
        for field in fields {
            assert!(
                set[kind.name].contains(*field),
                "kind {}: option `{field}` is not exercised by this test: add it",
                kind.name
            );
        }
    }
}

#[test]
fn spark_config_writes_back_every_option_of_a_source() {
    let case = challenges(
        r#"
[[sources]]
name = "gen"
table = "challenge"
where = "is_active = 1"
group = "challenge_gen"
id = "id"
enabled = false
conditions = [ { variable = "id", op = ">", value = 1 } ]
cursor = "id"
cursor_lookback = "5m"
rescan = "2h"
"#,
    );
    let given: toml::Table =
        toml::from_str(&std::fs::read_to_string(case.path("spark.toml")).unwrap()).unwrap();
    let printed = case.run(&["--json", "config"]).success().json();
    let mut exercised = std::collections::BTreeSet::new();
    for source in given["sources"].as_array().unwrap() {
        let source = source.as_table().unwrap();
        let name = source["name"].as_str().unwrap();
        let out = printed["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} printed"));
        for key in source.keys() {
            assert!(
                out.get(key).is_some(),
                "source {name}: `{key}` was given but `spark config` did not write it back: {out}"
            );
            exercised.insert(key.clone());
        }
    }
    for field in spark::config::source_fields() {
        assert!(
            exercised.contains(*field),
            "source option `{field}` is not exercised by this test: add it"
        );
    }
    // And what it writes reads back as the same config.
    let text = case.run(&["config"]).success().stdout();
    let case = case.file("spark.toml", &text);
    let reprinted = case.run(&["--json", "config"]).success().json();
    assert_eq!(reprinted["sources"], printed["sources"]);
}
