//! Trust, round 3: attacks on what came after the first two rounds (see
//! SECURITY.md): durations too long to mean anything, hostile JSON values
//! on PostgreSQL, numbers that blow up a template, error text of
//! megabytes, address headers and `spark_mail` keys from the database,
//! dot segments in URLs, bodies of other content types, forged log lines,
//! secrets in child processes, loose file modes, plaintext SMTP
//! credentials, a drifted seen table. Each test failed on the code before
//! its fix.

mod common;

use common::{Backend, Case, challenges_case, challenges_case_on};

const AS_OF: &str = "2026-03-10";

/// Two challenges that each yield `challenge_created_N`.
const TWO: &str = "(1, 'one', 'a@x', 1, '2026-03-01', '2026-06-01'), \
                   (2, 'two', 'b@x', 1, '2026-03-01', '2026-06-01')";

on_every_backend! {
    /// `prune --older-than 99999999999d` once computed a cutoff after
    /// every event and deleted them all; the next run mailed everyone again.
    fn a_prune_too_far_back_is_refused_and_forgets_nothing(backend: Backend) {
        let case = challenges_case_on(backend, TWO, "");
        case.run(&["process-sources", "--as-of", AS_OF]).success();
        let seen = case.seen();
        assert!(!seen.is_empty());
        for age in ["99999999999d", "36501d", "9999999999999999s"] {
            case.run(&["prune", "--older-than", age])
                .status(2)
                .stderr_has(&["--older-than", age, "100 years"]);
            assert_eq!(case.seen(), seen, "prune --older-than {age} deleted events");
        }
        case.run(&["process-sources", "--as-of", AS_OF])
            .success()
            .stdout_has(&[" 0 new,"]);
    }
}

#[test]
fn keep_history_too_long_is_a_config_error_naming_it() {
    let case = challenges_case(TWO, "").config(&common::challenge_config("").replace(
        "backoff = \"0s\"",
        "backoff = \"0s\"\nkeep_history = \"99999999999d\"",
    ));
    case.run(&["check"])
        .status(2)
        .stderr_has(&["keep_history", "100 years", "spark.toml"]);
    case.run(&["prune", "--older-than", "1d"])
        .status(2)
        .stderr_has(&["keep_history"]);
    assert!(
        case.query("SELECT 1 FROM sqlite_master WHERE name = 'spark_event'")
            .is_empty()
    );
}

/// Each of these once panicked (exit 101: "overflow when adding duration
/// to instant", rusqlite's "too big") instead of naming the setting.
#[test]
fn huge_durations_are_exit_2_naming_the_setting() {
    let huge = "99999999999d";
    let settings: [(&str, &str, &str); 5] = [
        ("[database]", "busy_timeout", "busy_timeout = \"30d\""),
        (
            "[delivery]",
            "max_backoff",
            &format!("max_backoff = \"{huge}\""),
        ),
        ("[delivery]", "backoff", &format!("backoff = \"{huge}\"")),
        ("[[handlers]]", "timeout", ""),
        ("[[handlers]]", "connect_timeout", ""),
    ];
    for (section, field, line) in settings {
        let config = match section {
            "[database]" => common::challenge_config("").replace(
                "path = \"app.sqlite3\"",
                &format!("path = \"app.sqlite3\"\n{line}"),
            ),
            "[delivery]" => common::challenge_config("").replace("backoff = \"0s\"", line),
            _ if field == "timeout" => common::challenge_config(&format!(
                "[[handlers]]\nname = \"n\"\ngroup = \"x\"\nkind = \"command\"\ncommand = [\"/bin/true\"]\ntimeout = \"{huge}\"\n"
            )),
            _ => common::challenge_config(&format!(
                "[[handlers]]\nname = \"w\"\ngroup = \"x\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nconnect_timeout = \"{huge}\"\n"
            )),
        };
        let case = challenges_case(TWO, "").config(&config);
        case.run(&["process-sources", "--as-of", AS_OF])
            .status(2)
            .stderr_has(&[field, "spark.toml"]);
        assert!(
            case.query("SELECT 1 FROM sqlite_master WHERE name = 'spark_event'")
                .is_empty(),
            "{field}: something was written"
        );
    }
    let case = challenges_case(TWO, "");
    for args in [
        &["process-sources", "--wait", huge][..],
        &["deliver", "--linger", huge],
        &["watch", "--interval", huge],
        &["prune", "--older-than", huge],
    ] {
        case.run(args).status(2).stderr_has(&[args[1], "100 years"]);
    }
    // A number too large to count at all says the same, not the parser's
    // own words.
    for huge in ["99999999999999ms", "999999999999999999999999s"] {
        case.run(&["process-sources", "--wait", huge])
            .status(2)
            .stderr_has(&["--wait", "100 years"]);
    }
}

#[test]
fn a_huge_lease_or_connect_timeout_on_postgres_is_exit_2() {
    let Some(backend) = Backend::postgres("a_huge_lease_or_connect_timeout_on_postgres_is_exit_2")
    else {
        return;
    };
    let case = challenges_case_on(backend, TWO, "");
    let url = case.pg_url().expect("postgres").to_owned();
    for (line, field) in [
        (
            format!("url = \"{url}\"\nlease = \"99999999999d\""),
            "lease",
        ),
        (
            format!("url = \"{url}?connect_timeout=99999999999999\""),
            "connect_timeout",
        ),
    ] {
        let config = common::challenge_config("").replace("path = \"app.sqlite3\"", &line);
        let case = case_with_config(&case, &config);
        case.run(&["process-sources", "--as-of", AS_OF])
            .status(2)
            .stderr_has(&[field]);
    }
    assert!(!case.tables().contains(&"spark_event".to_owned()));
}

/// The same database with another config written over the case's.
fn case_with_config<'a>(case: &'a Case, config: &str) -> &'a Case {
    std::fs::write(case.path("spark.toml"), config).expect("write config");
    case
}

/// A `doc` table with a jsonb column `body`, mailed by a generator to a
/// command that keeps each call's stdin (`calls/N.json`) and fails its very
/// first call.
fn jsonb_case(backend: Backend, rows: &str) -> Case {
    let case = Case::on(backend)
        .script(
            "keep.sh",
            "n=$(ls calls | wc -l); cat > calls/$n.json; [ -f failed-once ] || { touch failed-once; exit 1; }",
        )
        .config(
            r#"
[database]
path = "app.sqlite3"

[delivery]
backoff = "0s"

[[sources]]
name = "docs"
table = "doc"
group = "doc"

[[handlers]]
name = "keep"
group = "^doc$"
kind = "command"
command = ["./keep.sh"]
"#,
        );
    std::fs::create_dir(case.path("calls")).expect("mkdir calls");
    case.pg_sql(&format!(
        "CREATE TABLE doc (id integer PRIMARY KEY, body jsonb); INSERT INTO doc VALUES {rows};"
    ));
    case
}

/// `n` arrays within each other around 1, as JSON text.
fn nested(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

/// A jsonb `{"amount": 1e400}` or one nested 128 deep once made every run
/// exit 2 "reading its records failed": no event for any row, for as long
/// as the row existed.
#[test]
fn one_hostile_json_value_is_one_bad_record_on_postgres() {
    let Some(backend) = Backend::postgres("one_hostile_json_value_is_one_bad_record_on_postgres")
    else {
        return;
    };
    let deep = nested(200);
    let case = jsonb_case(
        backend,
        &format!(
            "(1, '{{\"amount\": 1e400}}'), (2, '{deep}'), (3, '{{\"amount\": 5}}'), (4, '{}'), (5, '{}')",
            nested(64),
            nested(65),
        ),
    );
    let run = case.run(&["process-sources"]).status(1);
    let err = run.stderr();
    for (id, what) in [(1, "body"), (2, "nested"), (5, "nested")] {
        assert!(
            err.lines()
                .any(|l| l.contains("docs") && l.contains(&format!("{id}")) && l.contains(what)),
            "record {id} is not named as a bad record: {err}"
        );
    }
    let seen: Vec<String> = case.seen().into_keys().collect();
    assert_eq!(seen, ["doc_3", "doc_4"]);
}

/// A context read back from the store for a retry is the context that was
/// recorded, however deep the value in it (one nested 127 deep came back
/// as `{"text": "<json>"}`): a value is either read and read back whole, or
/// its record is a bad record.
#[test]
fn a_retried_delivery_gets_the_context_that_was_recorded() {
    let Some(backend) = Backend::postgres("a_retried_delivery_gets_the_context_that_was_recorded")
    else {
        return;
    };
    for depth in [64, 126, 127] {
        let case = jsonb_case(backend, &format!("(1, '{}')", nested(depth)));
        case.run(&["process-sources"]).status(1);
        case.run(&["process-sources"]);
        // Compared as text: serde_json reads no deeper than 128 levels.
        let calls: Vec<String> = (0..2)
            .filter_map(|n| std::fs::read_to_string(case.path(&format!("calls/{n}.json"))).ok())
            .collect();
        if depth == 64 {
            assert_eq!(calls.len(), 2, "depth {depth}: a call and its retry");
        }
        if !calls.is_empty() {
            assert_eq!(calls.len(), 2, "depth {depth}: a call and no retry");
            for call in &calls {
                assert!(
                    call.contains(&format!("\"body\":{}", nested(depth))),
                    "depth {depth}: the value did not arrive whole: {call:.200}"
                );
            }
        } else {
            assert!(calls.is_empty(), "depth {depth}: a call and no retry");
        }
    }
}

/// Notes with a number `n` from the database, mailed by two handlers whose
/// bodies hand `n` to a filter.
fn numbers_case(rows: &str) -> Case {
    Case::new()
        .db(&format!(
            "CREATE TABLE note (id INTEGER PRIMARY KEY, title TEXT NOT NULL, n INTEGER NOT NULL);
             INSERT INTO note VALUES {rows};"
        ))
        .config(
            r#"
[database]
path = "app.sqlite3"

[delivery]
backoff = "0s"

[[sources]]
name = "notes"
table = "note"
group = "note"

[[handlers]]
name = "indented"
group = "^note$"
kind = "mail"
from = "shop@example.org"
to = ["ops@example.org"]
subject = "Note"
body = "{{ title|indent(n) }}"
outbox = "indented"

[[handlers]]
name = "sliced"
group = "^note$"
kind = "mail"
from = "shop@example.org"
to = ["ops@example.org"]
subject = "Note"
body = "{{ title|slice(n) }}"
outbox = "sliced"
"#,
        )
}

/// `indent(9223372036854775807)` once aborted the process (a failed
/// allocation, past the panic hook) and `slice(n)` with a huge `n` hung
/// the run with the lock held: a render is bounded, and one that exceeds
/// the bound fails that key's delivery only.
#[test]
fn a_number_from_the_database_cannot_abort_or_hang_a_render() {
    let case = numbers_case(
        "(1, 'line one\nline two', 9223372036854775807), (2, 'ok', 2), (3, 'also', 4000000000)",
    );
    let run = case.run(&["process-sources"]).status(1);
    let err = run.stderr();
    for (handler, key) in [
        ("indented", "note_1"),
        ("sliced", "note_1"),
        ("sliced", "note_3"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("failed:") && l.contains(handler) && l.contains(key)),
            "{handler} {key} is not a failed delivery: {err}"
        );
    }
    for outbox in ["indented", "sliced"] {
        let names: Vec<String> = std::fs::read_dir(case.path(outbox))
            .expect("outbox")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.contains("note_2")),
            "{outbox}: {names:?}"
        );
        assert!(
            !names.iter().any(|n| n.contains("note_1")),
            "{outbox}: {names:?}"
        );
    }
}

/// People with a `name` the test chooses, each posted to a webhook whose
/// URL path holds the name; `extra` goes into the handler.
fn hook_case(rows: &str, url: &str, extra: &str) -> Case {
    Case::new()
        .db(&format!(
            "CREATE TABLE person (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
             INSERT INTO person VALUES {rows};"
        ))
        .config(&format!(
            r#"
[database]
path = "app.sqlite3"

[delivery]
backoff = "0s"
max_attempts = 1

[[sources]]
name = "people"
table = "person"
group = "person"

[[handlers]]
name = "hook"
group = "^person$"
kind = "webhook"
url = "{url}"
{extra}
"#
        ))
}

/// A 1 MB value in a URL path once made a 3 MB `last_error` and 6 MB of
/// stderr per attempt: errors are cut to a few KiB everywhere.
#[test]
fn error_text_is_bounded_in_the_store_the_history_logs_and_output() {
    let hook = common::servers::Hook::start();
    hook.status.store(500, std::sync::atomic::Ordering::SeqCst);
    let case = hook_case(
        "(1, printf('%.*c', 1048576, 'x'))",
        // A port nothing listens on: the error names the whole URL.
        "http://127.0.0.1:9/p/{{ name }}",
        "",
    );
    let run = case.run(&["-v", "process-sources"]).status(1);
    assert!(
        run.stderr().len() < 32 * 1024,
        "stderr of {} bytes",
        run.stderr().len()
    );
    let run = case
        .run(&["--json", "deliveries", "--state", "dead"])
        .success();
    let json = run.json();
    let error = json[0]["last_error"].as_str().expect("an error");
    assert!(error.len() <= 4200, "last_error of {} bytes", error.len());
    assert!(error.contains("[cut: "), "{error:.100}");
    for row in case
        .query("SELECT last_error FROM spark_delivery UNION ALL SELECT error FROM spark_history")
    {
        let text = row[0].clone().unwrap_or_default();
        assert!(text.len() <= 4200, "a stored error of {} bytes", text.len());
    }
    let run = case.run(&["deliveries", "--state", "dead"]).success();
    assert!(
        run.stdout().len() < 32 * 1024,
        "deliveries: {} bytes",
        run.stdout().len()
    );
}

/// A record whose id is a megabyte and whose date is not one is named in
/// a line of bounded length.
#[test]
fn a_bad_record_is_named_in_bounded_text() {
    let case = Case::new()
        .db(
            "CREATE TABLE challenge (id TEXT PRIMARY KEY, title TEXT, user_email TEXT,
                is_active INTEGER, start_date TEXT, end_date TEXT, donation_count INTEGER);
             INSERT INTO challenge VALUES (printf('%.*c', 1048576, 'i'), 't', 'e', 1,
                printf('%.*c', 1048576, 'd'), '2026-01-01', 0);",
        )
        .config(&common::challenge_config("").replace(
            &format!("query = \"{}\"", common::CHALLENGE_QUERY),
            "table = \"challenge\"",
        ));
    let run = case.run(&["process-sources", "--as-of", AS_OF]).status(1);
    assert!(run.stderr().contains("skipped"), "{}", run.stderr());
    assert!(
        run.stderr().len() < 32 * 1024,
        "stderr of {} bytes",
        run.stderr().len()
    );
    let run = case
        .run(&["--json", "process-sources", "--as-of", AS_OF])
        .status(1);
    assert!(
        run.stdout().len() < 32 * 1024,
        "stdout of {} bytes",
        run.stdout().len()
    );
}

/// Keys that try to hide or forge log lines: a bidirectional override
/// (once written as `\u{202e}`, which is not JSON), a quote, a line
/// break, and a key that reads as a second field.
const FORGING_KEYS: &str = "('evil\u{202e}txt', 'n'), ('a\"b\\c', 'n'), ('x\ny', 'n'), \
                            ('1 outcome=\"delivered\"', 'n')";

/// People, each event logged by the built-in `log_event` function.
const LOGGED_PEOPLE: &str = r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "people"
table = "person"
group = "person"

[[handlers]]
name = "trace"
group = "^person$"
kind = "function"
function = "log_event"
"#;

#[test]
fn json_logs_are_json_whatever_the_keys_hold() {
    let case = Case::new()
        .db(&format!(
            "CREATE TABLE person (id TEXT PRIMARY KEY, name TEXT NOT NULL);
             INSERT INTO person VALUES {};",
            FORGING_KEYS
        ))
        .config(LOGGED_PEOPLE);
    let run = case
        .run(&["-v", "--log-format", "json", "process-sources"])
        .success();
    let err = run.stderr();
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 4, "{err}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(!line.contains('\u{202e}'), "a raw override: {line}");
        if let Some(key) = v["key"].as_str() {
            assert!(key.starts_with("person_"), "{line}");
        }
    }
    assert!(err.contains(r"evil\u202etxt"), "{err}");
}

#[test]
fn text_log_values_from_the_database_are_quoted_and_cannot_forge_a_field() {
    let case = Case::new()
        .db(
            "CREATE TABLE person (id TEXT PRIMARY KEY, name TEXT NOT NULL);
             INSERT INTO person VALUES ('1 outcome=\"failed\"', 'n'), ('2\u{202e}', 'm');",
        )
        .config(LOGGED_PEOPLE);
    let run = case.run(&["-v", "process-sources"]).success();
    let err = run.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("delivery key=") && l.contains("person_1"))
        .unwrap_or_else(|| panic!("no log line for person_1: {err}"));
    assert!(
        line.contains(r#"key="person_1 outcome=\"failed\"""#)
            && line.contains("outcome=\"delivered\""),
        "the key is not one quoted value: {line}"
    );
    let rest = line.replace(r#"key="person_1 outcome=\"failed\"""#, "");
    assert_eq!(rest.matches(" outcome=").count(), 1, "{line}");
    assert!(!err.contains('\u{202e}'), "{err}");
}

/// Orders whose `spark_mail` is a jsonb column (a value the application's
/// users may write), mailed by a generator into `outbox`; `extra` goes
/// into the handler.
fn spark_mail_case(backend: Backend, spark_mail: &str, extra: &str) -> Case {
    let case = Case::on(backend);
    case.pg_sql(&format!(
        "CREATE TABLE shop_order (id integer PRIMARY KEY, spark_mail jsonb);
         INSERT INTO shop_order VALUES (1, '{}'), (2, NULL);",
        spark_mail.replace('\'', "''")
    ));
    case.config(&format!(
        r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "orders"
table = "shop_order"
group = "order_shipped"

[[handlers]]
name = "mail"
group = "^order"
kind = "mail"
from = "Shop <shop@example.org>"
to = "customer@example.org"
subject = "Shipped"
body = "Body"
outbox = "outbox"
{extra}
"#
    ))
}

/// A `spark_mail` column with `bcc` and `from` once added a recipient and
/// forged the sender: from records, only the keys the handler lists count.
#[test]
fn spark_mail_from_a_record_cannot_add_a_recipient_or_set_the_sender() {
    let Some(backend) = Backend::postgres("spark_mail_from_a_record_cannot_add_a_recipient") else {
        return;
    };
    let hostile = r#"{"bcc": ["attacker@evil.example"], "from": "CEO <ceo@example.org>"}"#;
    for extra in ["", r#"spark_mail_from_records = ["subject", "to"]"#] {
        let case = spark_mail_case(backend, hostile, extra);
        case.run(&["process-sources"]).status(1).stderr_has(&[
            "order_shipped_1",
            "came from the database",
            "spark_mail_from_records",
        ]);
        assert!(
            !case.path("outbox/order_shipped_1.eml").exists(),
            "{extra:?}"
        );
        let other = std::fs::read_to_string(case.path("outbox/order_shipped_2.eml"))
            .expect("the other order's mail");
        assert!(!other.contains("attacker"), "{other}");
    }
    // The keys the handler lists are taken.
    let case = spark_mail_case(
        backend,
        r#"{"subject": "Your boots", "to": ["ana@example.org"]}"#,
        r#"spark_mail_from_records = ["subject", "to"]"#,
    );
    case.run(&["process-sources"]).success();
    let mail = std::fs::read_to_string(case.path("outbox/order_shipped_1.eml")).expect("a mail");
    assert!(mail.contains("Subject: Your boots"), "{mail}");
    assert!(mail.contains("To: ana@example.org"), "{mail}");
}

/// Header fields that name an address or route mail, from a jsonb column:
/// once written to the `.eml` (and mailed by `sendmail -t` pickups).
#[test]
fn spark_mail_headers_never_name_an_address_or_route_mail() {
    let Some(backend) = Backend::postgres("spark_mail_headers_never_name_an_address") else {
        return;
    };
    for header in [
        "Resent-To",
        "Resent-Bcc",
        "Resent-From",
        "Disposition-Notification-To",
        "Return-Receipt-To",
        "Errors-To",
        "X-Original-To",
        "X-Envelope-From",
        "Apparently-To",
        "Delivered-To",
        "Sender",
        "List-Post",
        "List-Unsubscribe",
    ] {
        let case = spark_mail_case(
            backend,
            &format!(r#"{{"headers": {{"{header}": "<mailto:attacker@evil.example>"}}}}"#),
            r#"spark_mail_from_records = ["headers"]"#,
        );
        case.run(&["process-sources"])
            .status(1)
            .stderr_has(&["order_shipped_1", header]);
        assert!(
            !case.path("outbox/order_shipped_1.eml").exists(),
            "{header}"
        );
    }
    let case = spark_mail_case(
        backend,
        r#"{"headers": {"X-Campaign": "spring", "List-Unsubscribe": "<https://example.org/u/1>"}}"#,
        r#"spark_mail_from_records = ["headers"]"#,
    );
    case.run(&["process-sources"]).success();
    let mail = std::fs::read_to_string(case.path("outbox/order_shipped_1.eml")).expect("a mail");
    assert!(mail.contains("X-Campaign: spring"), "{mail}");
}

#[test]
fn spark_mail_from_records_takes_only_spark_mail_keys() {
    let case = challenges_case(TWO, "")
        .config(&common::challenge_config(
            "[[handlers]]\nname = \"m\"\ngroup = \"x\"\nkind = \"mail\"\nfrom = \"a@x.org\"\noutbox = \"o\"\nspark_mail_from_records = [\"to\", \"attachments\"]\n",
        ));
    case.run(&["check"]).status(2).stderr_has(&[
        "spark_mail_from_records",
        "attachments",
        "spark.toml",
    ]);
}

/// People whose `name` fills a path segment of a webhook URL, through a
/// server that records what arrives.
fn templated_url_case(rows: &str, path: &str) -> (common::servers::Hook, Case) {
    let hook = common::servers::Hook::start();
    let case = hook_case(rows, &format!("{}{path}", hook.base), "");
    (hook, case)
}

/// A value `..` or `.` once reached the receiver as `/api/users/../notify`.
#[test]
fn dot_segments_from_the_database_never_reach_the_receiver() {
    let (hook, case) = templated_url_case(
        "(1, '..'), (2, '.'), (3, 'a.b'), (4, '...'), (5, '%2e%2E')",
        "/api/users/{{ name }}/notify",
    );
    case.run(&["process-sources"])
        .status(1)
        .stderr_has(&["person_1", "person_2", "segment"]);
    let mut urls: Vec<String> = hook.requests().into_iter().map(|r| r.url).collect();
    urls.sort();
    assert_eq!(
        urls,
        [
            "/api/users/%252e%252E/notify",
            "/api/users/.../notify",
            "/api/users/a.b/notify",
        ]
    );
    // A dot the template writes beside a value makes no dot segment either.
    let (hook, case) = templated_url_case("(1, '.'), (2, 'x')", "/api/users/.{{ name }}/notify");
    case.run(&["process-sources"])
        .status(1)
        .stderr_has(&["person_1", "segment"]);
    let urls: Vec<String> = hook.requests().into_iter().map(|r| r.url).collect();
    assert_eq!(urls, ["/api/users/.x/notify"]);
}

/// Values were JSON-escaped only for `application/json`: with `text/json`
/// (or any `+json`) a value broke out of its string, and a form body let a
/// value add fields.
#[test]
fn body_values_are_escaped_for_the_declared_content_type() {
    let hostile = r#"x", "admin": true, "y": "&role=admin"#;
    let rows = format!("(1, '{hostile}')");
    for content_type in [
        "text/json",
        "application/vnd.api+json",
        "application/json; charset=utf-8",
    ] {
        let hook = common::servers::Hook::start();
        let case = hook_case(
            &rows,
            &hook.url,
            &format!(
                "content_type = \"{content_type}\"\nbody = '{{\"name\": \"{{{{ name }}}}\"}}'"
            ),
        );
        case.run(&["process-sources"]).success();
        let body = &hook.requests()[0].body;
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"name": hostile}),
            "{content_type}: {body}"
        );
    }
    let hook = common::servers::Hook::start();
    let case = hook_case(
        &rows,
        &hook.url,
        "content_type = \"application/x-www-form-urlencoded\"\nbody = \"a=1&name={{ name }}\"",
    );
    case.run(&["process-sources"]).success();
    let body = &hook.requests()[0].body;
    let fields: Vec<&str> = body.split('&').collect();
    assert_eq!(fields.len(), 2, "a value added a field: {body}");
    assert!(fields[1].starts_with("name=x%22"), "{body}");
    // A type spark cannot escape for takes no template.
    let case = hook_case(
        &rows,
        &hook.url,
        "content_type = \"application/xml\"\nbody = \"<a>{{ name }}</a>\"",
    );
    case.run(&["check"])
        .status(2)
        .stderr_has(&["content_type", "application/xml", "spark.toml"]);
    // Without a template it is sent as written.
    let case = hook_case(
        &rows,
        &hook.url,
        "content_type = \"application/xml\"\nbody = \"<ping/>\"",
    );
    case.run(&["process-sources"]).success();
}

/// `headers = { "X Bad\r\n..." = "v" }` passed load and `check`, and every
/// delivery failed later.
#[test]
fn an_invalid_header_name_is_exit_2_at_load() {
    let hook = common::servers::Hook::start();
    for headers in [
        r#"headers = { "X Bad" = "v" }"#,
        r#"headers = { "X-A\r\nX-B" = "v" }"#,
        r#"headers = { "" = "v" }"#,
        r#"headers = { "X-Ä" = "v" }"#,
        r#"header_env = { "X:Y" = "HOME" }"#,
    ] {
        let case = hook_case("(1, 'n')", &hook.url, headers);
        for command in ["check", "process-sources"] {
            case.run(&[command]).status(2).stderr_has(&[
                "handler `hook`",
                "not an HTTP header name",
                "spark.toml",
            ]);
        }
        assert!(
            case.query("SELECT 1 FROM sqlite_master WHERE name = 'spark_event'")
                .is_empty()
        );
    }
    assert!(hook.requests().is_empty());
}

/// A command handler once saw `PGPASSWORD`, the `${VAR}` holding the
/// database URL's password and another handler's `${SLACK_WEBHOOK_URL}`.
#[test]
fn commands_see_no_variable_the_config_expands_nor_database_passwords() {
    let case = challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30')",
        r#"
[[handlers]]
name = "chat"
group = "never"
kind = "webhook"
url = "${SLACK_WEBHOOK_URL}"

[[handlers]]
name = "dump"
group = "created"
kind = "command"
command = ["./dump.sh"]
env = { PASSED = "${PASS_ME}" }
"#,
    )
    .script("dump.sh", "env > env.txt");
    let mut cmd = case.command();
    cmd.env(
        "SLACK_WEBHOOK_URL",
        "https://hooks.example.org/services/T0/B0/sl4ck",
    )
    .env("PGPASSWORD", "pg-pa55word")
    .env("PGPASSFILE", "/etc/spark/pgpass-file")
    .env("MYSQL_PWD", "my-pa55word")
    .env("PASS_ME", "passed-on-purpose")
    .env("UNRELATED", "stays");
    let out = cmd
        .args(["process-sources", "--as-of", AS_OF])
        .output()
        .expect("run");
    common::Run { output: out }.success();
    let env = std::fs::read_to_string(case.path("env.txt")).expect("the command ran");
    for leaked in ["sl4ck", "pg-pa55word", "pgpass-file", "my-pa55word"] {
        assert!(
            !env.contains(leaked),
            "{leaked} was handed to the command:\n{env}"
        );
    }
    assert!(env.contains("PASSED=passed-on-purpose"), "{env}");
    assert!(env.contains("UNRELATED=stays"), "{env}");
    assert!(!env.contains("PASS_ME="), "{env}");
}

/// `spark config` once printed a percent-encoded database password as it
/// was written (`s%40cr3t...`).
#[test]
fn a_percent_encoded_database_password_is_masked_in_every_spelling() {
    let case = Case::new().file(
        "spark.toml",
        &common::challenge_config("").replace(
            "path = \"app.sqlite3\"",
            "url = \"postgresql://spark:s%40cr3t%2Fpw%3A1@127.0.0.1:1/app\"",
        ),
    );
    for args in [
        &["config"][..],
        &["--json", "config"],
        &["check"],
        &["events"],
    ] {
        let run = case.run(args);
        let all = format!("{}{}", run.stdout(), run.stderr());
        for spelling in ["s%40cr3t%2Fpw%3A1", "s@cr3t/pw:1", "s%40cr3t%2fpw%3a1"] {
            assert!(
                !all.contains(spelling),
                "{args:?} printed {spelling}:\n{all}"
            );
        }
    }
    let printed = case.run(&["config"]).success().stdout();
    assert!(
        printed.contains("postgresql://spark:***@127.0.0.1:1/app"),
        "{printed}"
    );
}

/// `events` and `deliveries` once exited 2 because a `${HOOK_TOKEN}` in an
/// unrelated webhook URL was unset: a handler's variables are needed only
/// by the commands that deliver (and `check`).
#[test]
fn listings_need_no_variable_of_a_handler() {
    let case = challenges_case(
        TWO,
        r#"
[[handlers]]
name = "chat"
group = "never"
kind = "webhook"
url = "https://hooks.example.org/${HOOK_TOKEN}"

[[handlers]]
name = "whole"
group = "never"
kind = "webhook"
url = "${WHOLE_URL}"
"#,
    );
    let with_token = |args: &[&str]| {
        let out = case
            .command()
            .env("HOOK_TOKEN", "t0ken-value")
            .env("WHOLE_URL", "https://hooks.example.org/x")
            .args(args)
            .output()
            .expect("run");
        common::Run { output: out }
    };
    with_token(&["process-sources", "--as-of", AS_OF]).success();
    for args in [
        &["events"][..],
        &["deliveries"],
        &["list-handlers"],
        &["list-sources"],
        &["show", "challenge_created_1"],
        &["config"],
        &["dry-run", "--as-of", AS_OF],
    ] {
        case.run(args).success();
    }
    for args in [
        &["check"][..],
        &["process-sources"],
        &["deliver"],
        &["retry", "--all"],
    ] {
        case.run(args).status(2).stderr_has(&[
            "HOOK_TOKEN",
            "WHOLE_URL",
            "handler `chat`",
            "not set",
        ]);
    }
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The run lock file was created 0666 under `umask 000`.
#[test]
fn the_run_lock_file_is_private_whatever_the_umask() {
    let case = challenges_case(TWO, "");
    let bin = assert_cmd::cargo::cargo_bin("spark");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec '{}' -q --config spark.toml process-sources --as-of {AS_OF}",
            bin.display()
        ))
        .current_dir(case.path(""))
        .status()
        .expect("run");
    assert!(status.success());
    assert_eq!(mode_of(&case.path("app.sqlite3-spark.lock")), 0o600);
    assert_eq!(mode_of(&case.path("events.jsonl")), 0o600);
}

/// `mode = "0666"` was accepted silently.
#[test]
fn file_modes_that_let_others_write_are_refused_and_world_readable_ones_warned() {
    for mode in ["0666", "0777", "0620", "0602"] {
        let case = challenges_case(TWO, &format!("mode = \"{mode}\""));
        case.run(&["process-sources", "--as-of", AS_OF])
            .status(2)
            .stderr_has(&["handler `log`", "mode", mode, "write"]);
        assert!(!case.path("events.jsonl").exists());
    }
    let case = challenges_case(TWO, "mode = \"0644\"");
    let run = case.run(&["check"]).success();
    assert!(
        run.stderr().contains("0644") || run.stdout().contains("0644"),
        "no warning for a world-readable mode: {}{}",
        run.stdout(),
        run.stderr()
    );
    challenges_case(TWO, "mode = \"0640\"")
        .run(&["process-sources", "--as-of", AS_OF])
        .success();
}

/// SMTP credentials with `smtp_security = "none"` went out as AUTH PLAIN in
/// the clear, and `check` said nothing.
#[test]
fn smtp_credentials_in_the_clear_are_refused_off_loopback() {
    let mail = |host: &str, extra: &str| {
        challenges_case(
            TWO,
            &format!(
                "[[handlers]]\nname = \"m\"\ngroup = \"x\"\nkind = \"mail\"\nfrom = \"a@x.org\"\nto = \"b@x.org\"\n\
                 smtp_host = \"{host}\"\nsmtp_security = \"none\"\nsmtp_user = \"spark\"\n{extra}"
            ),
        )
    };
    for host in ["192.0.2.1", "smtp.example.org"] {
        mail(host, "").run(&["check"]).status(2).stderr_has(&[
            "handler `m`",
            "in the clear",
            host,
            "smtp_allow_plaintext_auth",
        ]);
    }
    for host in ["127.0.0.1", "localhost", "::1"] {
        mail(host, "").run(&["check"]).success();
    }
    let run = mail("192.0.2.1", "smtp_allow_plaintext_auth = true")
        .run(&["check"])
        .success();
    assert!(
        format!("{}{}", run.stdout(), run.stderr()).contains("in the clear"),
        "check says nothing: {}{}",
        run.stdout(),
        run.stderr()
    );
}

/// A seen table not made by Django's migration: `context` as jsonb once
/// passed `check`, failed `process-sources` mid-run and made `events` and
/// `show` panic ("error deserializing column 3").
#[test]
fn a_seen_table_whose_context_is_jsonb_is_refused_by_name_without_a_panic() {
    let Some(backend) = Backend::postgres("a_seen_table_whose_context_is_jsonb") else {
        return;
    };
    let case = challenges_case_on(backend, TWO, "");
    case.pg_sql(
        "CREATE TABLE spark_event (key varchar(100) PRIMARY KEY, \"group\" varchar(50) NOT NULL,
             created_at timestamptz NOT NULL, context jsonb);
         INSERT INTO spark_event VALUES ('old_1', 'old', now(), '{\"a\": 1}');",
    );
    let before = case.db_bytes();
    for args in [
        &["check"][..],
        &["process-sources", "--as-of", AS_OF],
        &["events"],
        &["show", "old_1"],
        &["mark-seen", "x_1"],
    ] {
        let run = case
            .run(args)
            .status(2)
            .stderr_has(&["spark_event", "context", "jsonb"]);
        assert!(!run.stderr().contains("panicked"), "{}", run.stderr());
    }
    assert_eq!(case.db_bytes(), before, "something was written");
}

/// A NULL context (a nullable column) reads as an empty context.
#[test]
fn a_null_context_reads_as_an_empty_one() {
    let Some(backend) = Backend::postgres("a_null_context_reads_as_an_empty_one") else {
        return;
    };
    let case = challenges_case_on(backend, TWO, "");
    case.pg_sql(
        "CREATE TABLE spark_event (key varchar(100) PRIMARY KEY, \"group\" varchar(50) NOT NULL,
             created_at timestamptz NOT NULL, context text);
         INSERT INTO spark_event VALUES ('old_1', 'old', now(), NULL);",
    );
    case.run(&["check"]).success();
    let events = case.run(&["--json", "events"]).success().json();
    assert_eq!(events[0]["key"], "old_1");
    assert_eq!(events[0]["context"], serde_json::json!({}));
    case.run(&["show", "old_1"]).success();
    case.run(&["process-sources", "--as-of", AS_OF]).success();
}

on_every_backend! {
    /// `mark-seen` on SQLite accepted a 200-character key that PostgreSQL
    /// refused: one limit everywhere, django-spark's `key varchar(100)`.
    fn mark_seen_holds_keys_to_the_seen_tables_limits(backend: Backend) {
        let case = challenges_case_on(backend, TWO, "");
        let long = "k".repeat(200);
        case.run(&["mark-seen", &long])
            .status(2)
            .stderr_has(&["200 characters", "100"]);
        case.run(&["mark-seen", "ok_1", "--group", &"g".repeat(51)])
            .status(2)
            .stderr_has(&["group", "50"]);
        case.run(&["mark-seen", &format!("k_{}", "x".repeat(98))]).success();
        case.run(&["process-sources", "--as-of", AS_OF]).success();
        case.run(&["mark-seen", &long]).status(2);
        assert!(!case.seen().contains_key(&long));
    }
}

/// Display names that once made header lines of 81-101 characters though
/// every word was short: words that need encoding (not ASCII) or quoting,
/// beside the address.
#[test]
fn every_header_line_stays_within_78_characters_whatever_the_name() {
    let word = |c: &str, n: usize| c.repeat(n);
    let names = [
        format!("{} {}", word("ü", 40), word("é", 40)),
        format!("{} {} {}", word("ü", 30), word("x", 40), word("ü", 30)),
        format!("{} {}", word("日", 40), word("本", 40)),
        format!("{}{}", word("x", 20), word(" y", 100)),
        word("Dr. Jane ", 30),
    ];
    for name in names {
        let case = Case::new()
            .db(&format!(
                "CREATE TABLE shop_order (id INTEGER PRIMARY KEY, email TEXT, name TEXT);
                 INSERT INTO shop_order VALUES (1, 'ana@example.org', '{}');",
                name.replace('\'', "''")
            ))
            .config(
                r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "orders"
table = "shop_order"
group = "order_shipped"

[[handlers]]
name = "mail"
group = "^order"
kind = "mail"
from = "{{ name }} <shop@example.org>"
to = ["{{ name }} <{{ email }}>", "{{ name }} <audit@example.org>"]
reply_to = "{{ name }} <reply@example.org>"
subject = "{{ name }}"
body = "Body"
outbox = "outbox"
"#,
            );
        case.run(&["process-sources"]).success();
        let bytes = std::fs::read(case.path("outbox/order_shipped_1.eml")).expect("a mail");
        let raw = String::from_utf8_lossy(&bytes);
        let headers = raw.split("\r\n\r\n").next().unwrap_or_default();
        for line in headers.split("\r\n") {
            assert!(
                line.len() <= 78,
                "{name:?}: a line of {}: {line}",
                line.len()
            );
        }
        let mail = mail_parser::MessageParser::default()
            .parse(&bytes)
            .expect("a mail");
        let from = mail.from().and_then(|a| a.first()).expect("from");
        assert_eq!(from.name(), Some(name.trim()), "{raw}");
        let to: Vec<_> = mail.to().expect("to").iter().collect();
        assert_eq!(to.len(), 2, "{raw}");
        assert_eq!(to[1].name(), Some(name.trim()), "{raw}");
    }
}

/// `batch_size = 4294967295` asked for 240 GB up front and aborted.
#[test]
fn a_huge_batch_size_is_exit_2_not_an_abort() {
    for size in ["4294967295", "100001"] {
        let case = challenges_case(TWO, "").config(&common::challenge_config("").replace(
            "backoff = \"0s\"",
            &format!("backoff = \"0s\"\nbatch_size = {size}"),
        ));
        case.run(&["process-sources", "--as-of", AS_OF])
            .status(2)
            .stderr_has(&["batch_size", "100000", size]);
    }
}
