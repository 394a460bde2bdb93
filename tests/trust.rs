//! Trust: rows written by the application's end users are hostile, and the
//! operator makes ordinary slips. Each test is an attack or a slip that an
//! earlier build fell for (see SECURITY.md): recipients added by data,
//! writes through planted links, crash recovery cutting another file, one
//! file under two spellings, a command holding spark past its timeout,
//! webhook redirects, terminal escapes, secrets in output and in command
//! environments, world-readable files, invalid UTF-8 colliding into one key,
//! keys too long for a file name, and the slips in the list.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::servers::{Hook, Smtp};
use common::{Case, Run, challenges_case};
use mail_parser::MessageParser;

const AS_OF: &str = "2026-03-10";

/// People who signed up, mailed a welcome by a generator over `person`.
fn people_case(rows: &str, handler: &str) -> Case {
    Case::new()
        .db(&format!(
            "CREATE TABLE person (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
             INSERT INTO person VALUES {rows};"
        ))
        .config(&format!(
            r#"
[database]
path = "app.sqlite3"

[delivery]
backoff = "0s"

[[sources]]
name = "people"
table = "person"
group = "welcome"

[[handlers]]
name = "welcome-mail"
group = "^welcome$"
kind = "mail"
from = "Shop <shop@example.org>"
subject = "Welcome"
body = "Hello {{{{ email }}}}"
{handler}
"#
        ))
}

const HOSTILE_PEOPLE: &str = "(1, 'bob@example.org, evil@attacker.org'), \
     (2, '\"Doe, Jane\" <jane@example.com>'), \
     (3, 'ok@example.org')";

#[test]
fn a_rendered_recipient_never_adds_a_second_recipient_over_smtp() {
    let smtp = Smtp::start();
    let case = people_case(
        HOSTILE_PEOPLE,
        &format!(
            "to = [\"{{{{ email }}}}\", \"boss@example.org\"]\n{}",
            smtp.transport()
        ),
    );
    case.run(&["process-sources"])
        .status(1)
        .stderr_has(&["welcome_1", "exactly one mailbox"]);
    let mails = smtp.received();
    let envelopes: Vec<Vec<String>> = mails.iter().map(|m| m.to.clone()).collect();
    assert_eq!(
        envelopes,
        [
            vec!["jane@example.com", "boss@example.org"],
            vec!["ok@example.org", "boss@example.org"]
        ]
    );
    for m in &mails {
        assert!(!String::from_utf8_lossy(&m.data).contains("attacker"));
    }
    let jane = MessageParser::default().parse(&mails[0].data).unwrap();
    let to = jane.to().unwrap().first().unwrap();
    assert_eq!(to.name(), Some("Doe, Jane"));
    assert_eq!(to.address(), Some("jane@example.com"));
}

#[test]
fn a_rendered_recipient_never_adds_a_second_recipient_in_the_outbox() {
    let case = people_case(HOSTILE_PEOPLE, "to = \"{{ email }}\"\noutbox = \"outbox\"");
    case.run(&["process-sources"])
        .status(1)
        .stderr_has(&["welcome_1", "exactly one mailbox"]);
    let names = file_names(&case.path("outbox"));
    assert_eq!(names, ["welcome_2.eml", "welcome_3.eml"]);
    for name in &names {
        let text = std::fs::read_to_string(case.path("outbox").join(name)).unwrap();
        assert!(!text.contains("attacker"), "{text}");
    }
    // The failed key stays owed, with its error.
    let deliveries = case.deliveries();
    assert_eq!(deliveries.len(), 1);
    assert!(deliveries[0].1.contains("welcome_1"));
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_outbox_never_writes_through_a_planted_link() {
    let case = people_case(
        "(3, 'ok@example.org')",
        "to = \"{{ email }}\"\noutbox = \"outbox\"",
    )
    .file("victim.txt", "precious");
    std::fs::create_dir(case.path("outbox")).unwrap();
    symlink(
        case.path("victim.txt"),
        case.path("outbox/welcome_3.eml.tmp"),
    )
    .unwrap();
    case.run(&["process-sources"]).success();
    assert_eq!(
        std::fs::read_to_string(case.path("victim.txt")).unwrap(),
        "precious"
    );
    let eml = std::fs::symlink_metadata(case.path("outbox/welcome_3.eml")).unwrap();
    assert!(eml.file_type().is_file());
}

#[test]
fn the_metrics_file_never_writes_through_a_planted_link() {
    let case = challenges_case("(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')", "")
        .file("victim.txt", "precious");
    // The temporary names an earlier build used: `<file>.tmp-<pid>`, for
    // the pids the next processes will likely get.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last + 1..last + 400 {
        let _ = symlink(
            case.path("victim.txt"),
            case.path(&format!("spark.prom.tmp-{pid}")),
        );
    }
    case.run(&[
        "process-sources",
        "--as-of",
        AS_OF,
        "--metrics-file",
        "spark.prom",
    ])
    .success();
    assert_eq!(
        std::fs::read_to_string(case.path("victim.txt")).unwrap(),
        "precious"
    );
    let text = std::fs::read_to_string(case.path("spark.prom")).unwrap();
    assert!(text.contains("spark_last_run_success 1"));
}

/// A run killed after writing its jsonl lines, before recording them.
fn crashed_jsonl_case() -> Case {
    let case = challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30'), (2, 'b', 'b@x', 1, '2026-03-01', '2026-03-30')",
        "",
    );
    let out = case
        .command()
        .env("SPARK_CRASH_AT", "jsonl-written:1")
        .args(["process-sources", "--as-of", AS_OF])
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "the crash point was not reached: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(case.lines("events.jsonl").len(), 4, "written, not recorded");
    case
}

#[test]
fn crash_recovery_never_cuts_a_file_that_replaced_the_sink() {
    let case = crashed_jsonl_case();
    std::fs::rename(case.path("events.jsonl"), case.path("events.jsonl.1")).unwrap();
    let unrelated = "an unrelated log line that must survive\n".repeat(10_000);
    std::fs::write(case.path("events.jsonl"), &unrelated).unwrap();
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(1)
        .stderr_has(&["handler `log`", "events.jsonl", "not the file"]);
    assert_eq!(
        std::fs::read_to_string(case.path("events.jsonl")).unwrap(),
        unrelated
    );
    assert_eq!(case.lines("events.jsonl.1").len(), 4);
    // Nothing was lost: the delivery is still owed.
    assert!(!case.deliveries().is_empty());
}

#[test]
fn crash_recovery_never_cuts_through_a_swapped_link() {
    let case = crashed_jsonl_case();
    let unrelated = "another file\n".repeat(1000);
    std::fs::write(case.path("other.log"), &unrelated).unwrap();
    std::fs::remove_file(case.path("events.jsonl")).unwrap();
    symlink(case.path("other.log"), case.path("events.jsonl")).unwrap();
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(1)
        .stderr_has(&["handler `log`", "events.jsonl"]);
    assert_eq!(
        std::fs::read_to_string(case.path("other.log")).unwrap(),
        unrelated
    );
}

#[test]
fn one_file_under_two_spellings_is_refused_at_load() {
    let jsonl = |name: &str, path: &str| {
        format!(
            "\n[[handlers]]\nname = \"{name}\"\ngroup = \"created\"\nkind = \"jsonl\"\npath = \"{path}\"\n"
        )
    };
    let outbox = |name: &str, dir: &str| {
        format!(
            "\n[[handlers]]\nname = \"{name}\"\ngroup = \"created\"\nkind = \"mail\"\nfrom = \"a@example.org\"\nto = \"b@example.org\"\nsubject = \"s\"\noutbox = \"{dir}\"\n"
        )
    };
    let variants: [&dyn Fn(&Path) -> String; 6] = [
        &|_| jsonl("a", "dup.jsonl") + &jsonl("b", "./dup.jsonl"),
        &|dir| jsonl("a", "dup.jsonl") + &jsonl("b", &dir.join("dup.jsonl").display().to_string()),
        &|_| jsonl("a", "out/dup.jsonl") + &jsonl("b", "link/dup.jsonl"),
        &|_| jsonl("a", "new/dup.jsonl") + &jsonl("b", "new/../new/dup.jsonl"),
        &|_| jsonl("a", "./events.jsonl"),
        &|_| outbox("a", "mails") + &outbox("b", "./mails/"),
    ];
    for variant in variants {
        let case = challenges_case("(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')", "");
        std::fs::create_dir(case.path("out")).unwrap();
        symlink(case.path("out"), case.path("link")).unwrap();
        let extra = variant(case.dir.path());
        let case = case.config(&common::challenge_config(&extra));
        let before = case.db_bytes();
        case.run(&["check"])
            .status(2)
            .stderr_has(&["also written by handler"]);
        case.run(&["process-sources", "--as-of", AS_OF])
            .status(2)
            .stderr_has(&["spark.toml:", "also written by handler"]);
        assert_eq!(case.db_bytes(), before, "{extra}");
        assert!(!case.path("events.jsonl").exists(), "{extra}");
    }
}

#[test]
fn a_handler_writing_into_the_database_file_is_refused() {
    let case = challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')",
        "\n[[handlers]]\nname = \"oops\"\ngroup = \"created\"\nkind = \"jsonl\"\npath = \"./app.sqlite3\"\n",
    );
    let before = case.db_bytes();
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(2)
        .stderr_has(&["handler `oops`", "database"]);
    assert_eq!(case.db_bytes(), before);
}

#[test]
fn the_command_timeout_bounds_the_whole_call() {
    let case = Case::new()
        .db("CREATE TABLE big (id INTEGER PRIMARY KEY, payload TEXT);
             INSERT INTO big VALUES (1, printf('%.*c', 200000, 'x'));")
        .config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "big"
table = "big"
group = "big"

[[handlers]]
name = "stubborn"
group = "big"
kind = "command"
command = ["./stubborn.sh"]
timeout = "2s"
"#,
        )
        // A background child keeps stdin open and never reads it.
        .script("stubborn.sh", "exec 3<&0\nsleep 60 <&3 &\nexit 0");
    let started = Instant::now();
    let mut child = case.spawn(&["process-sources"]);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            panic!("spark was held past its timeout by the command's background child");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timed out after 2s"), "{stderr}");
    // The run lock was let go: another run goes ahead.
    case.run(&["deliveries"]).success().stdout_has(&["big_1"]);
}

#[test]
fn a_webhook_redirect_is_a_failure_naming_its_location() {
    let hook = Hook::answering(|req, _| {
        if req.url == "/hooks/spark" {
            (
                301,
                vec![("Location".into(), "/elsewhere".into())],
                String::new(),
            )
        } else {
            (200, Vec::new(), String::new())
        }
    });
    let case = challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30')",
        &format!(
            "\n[[handlers]]\nname = \"hook\"\ngroup = \"created\"\nkind = \"webhook\"\nurl = \"{}\"\nheaders = {{ \"X-Private\" = \"p\" }}\n",
            hook.url
        ),
    );
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(1)
        .stderr_has(&["handler `hook`", "301", "/elsewhere"]);
    let urls: Vec<String> = hook.requests().iter().map(|r| r.url.clone()).collect();
    assert_eq!(urls, ["/hooks/spark"]);
    assert_eq!(case.deliveries().len(), 1);
}

#[test]
fn control_characters_from_the_database_are_escaped_in_text_output() {
    let case = Case::new()
        .db("CREATE TABLE t (id TEXT PRIMARY KEY, note TEXT);
             INSERT INTO t VALUES ('x' || char(27) || '[31mred' || char(7) || char(13) || char(10) || 'y',
                                   'nul' || char(0) || 'here' || char(27) || ']0;title' || char(7));")
        .config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "notes"
table = "t"
group = "note"

[[handlers]]
name = "broken"
group = "note"
kind = "command"
command = ["false"]
"#,
        );
    let runs = [
        case.run(&["dry-run"]),
        case.run(&["process-sources"]).status(1),
        case.run(&["events"]).success(),
        case.run(&["deliveries"]).success(),
        case.run(&["retry", "--all"]).status(1),
    ];
    for run in &runs {
        for stream in [&run.output.stdout, &run.output.stderr] {
            for byte in [0x1bu8, 0x07, 0x00, b'\r'] {
                assert!(
                    !stream.contains(&byte),
                    "byte {byte:#x} printed raw in {:?}",
                    String::from_utf8_lossy(stream)
                );
            }
        }
    }
    assert!(
        runs[2].stdout().contains(r"note_x\x1b[31mred\x07\r\ny"),
        "{}",
        runs[2].stdout()
    );
    assert!(runs[3].stdout().contains(r"note_x\x1b[31mred\x07\r\ny"));
    assert!(runs[1].stderr().contains(r"note_x\x1b[31mred\x07\r\ny"));
}

/// Secrets given the ways a config can give them, all distinct and
/// unlikely to appear by chance.
const SECRETS: &[(&str, &str)] = &[
    ("HOOK_PASS", "pw-from-env-1x"),
    ("API_TOKEN", "tok-from-env-2x"),
    ("HOOK_AUTH", "Bearer hdr-secret-3x"),
    ("HOOK_SECRET", "sign-secret-4x"),
    ("SMTP_PASS", "smtp-pass-5x"),
    ("OUT_DIR", "outdir-6x"),
];
const LITERAL_SECRET: &str = "literal-pw-7x";

fn secrets_case() -> Case {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')",
        &format!(
            r#"
[[handlers]]
name = "hook"
group = "created"
kind = "webhook"
url = "http://user:${{HOOK_PASS}}@127.0.0.1:{closed}/x?token=${{API_TOKEN}}"
header_env = {{ "Authorization" = "HOOK_AUTH" }}
signing_secret_env = "HOOK_SECRET"
timeout = "2s"

[[handlers]]
name = "hook2"
group = "created"
kind = "webhook"
url = "http://admin:{LITERAL_SECRET}@127.0.0.1:{closed}/y?key=abc"
timeout = "2s"

[[handlers]]
name = "mailer"
group = "created"
kind = "mail"
from = "a@example.org"
to = "b@example.org"
subject = "s"
transport = "smtp"
smtp_host = "127.0.0.1"
smtp_port = {closed}
smtp_security = "none"
smtp_user = "u"
smtp_password_env = "SMTP_PASS"
timeout = "2s"

[[handlers]]
name = "out"
group = "created"
kind = "jsonl"
path = "${{OUT_DIR}}/events.jsonl"
"#
        ),
    )
}

fn run_with_secrets(case: &Case, args: &[&str]) -> Run {
    let mut cmd = case.command();
    for (var, value) in SECRETS {
        cmd.env(var, value);
    }
    Run {
        output: cmd.args(args).output().unwrap(),
    }
}

/// Every text of every table of the database.
fn all_table_text(case: &Case) -> String {
    let conn = rusqlite::Connection::open(case.path("app.sqlite3")).unwrap();
    let mut text = String::new();
    for table in case.tables() {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..n {
                if let Ok(rusqlite::types::ValueRef::Text(t)) = row.get_ref(i) {
                    text.push_str(&String::from_utf8_lossy(t));
                    text.push('\n');
                }
            }
        }
    }
    text
}

#[test]
fn secrets_never_appear_in_output_logs_tables_or_metrics() {
    let case = secrets_case();
    std::fs::create_dir(case.path("outdir-6x")).unwrap();
    let mut seen = String::new();
    let mut record = |run: Run| {
        seen.push_str(&run.stdout());
        seen.push_str(&run.stderr());
        run
    };
    record(run_with_secrets(
        &case,
        &[
            "process-sources",
            "--as-of",
            AS_OF,
            "-vv",
            "--metrics-file",
            "spark.prom",
        ],
    ))
    .status(1);
    record(run_with_secrets(
        &case,
        &["process-sources", "--as-of", AS_OF, "--json"],
    ))
    .status(1);
    for args in [
        vec!["list-handlers"],
        vec!["list-handlers", "--json"],
        vec!["deliveries"],
        vec!["deliveries", "--json"],
        vec!["config"],
        vec!["config", "--json"],
        vec!["check"],
        vec!["check", "--json"],
        vec!["events", "--json"],
        vec!["dry-run", "-v"],
    ] {
        record(run_with_secrets(&case, &args));
    }
    record(run_with_secrets(&case, &["retry", "--all", "-v"])).status(1);
    seen.push_str(&std::fs::read_to_string(case.path("spark.prom")).unwrap());
    seen.push_str(&all_table_text(&case));
    assert!(seen.contains("handler `hook`"), "the runs did run: {seen}");
    assert!(seen.contains("***"), "{seen}");
    for (var, value) in SECRETS {
        assert!(
            !seen.contains(value),
            "{var}'s value {value:?} leaked:\n{seen}"
        );
    }
    assert!(
        !seen.contains(LITERAL_SECRET),
        "a URL's password leaked:\n{seen}"
    );
}

#[test]
fn config_errors_never_echo_a_secret() {
    let case = challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')",
        r#"
[[handlers]]
name = "hook"
group = "created"
kind = "webhook"
url = "${BAD_URL}"
"#,
    );
    let run = Run {
        output: case
            .command()
            .env("BAD_URL", "ftp://x:pw-in-url-8x@h/")
            .args(["process-sources"])
            .output()
            .unwrap(),
    }
    .status(2)
    .stderr_has(&["handler `hook`", "`url`"]);
    assert!(!run.stderr().contains("pw-in-url-8x"), "{}", run.stderr());
}

#[test]
fn commands_get_no_secrets_read_for_other_handlers() {
    let hook = Hook::start();
    let case = challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30')",
        &format!(
            r#"
[[handlers]]
name = "hook"
group = "created"
kind = "webhook"
url = "{}?token=${{API_TOKEN}}"
header_env = {{ "Authorization" = "HOOK_AUTH" }}
signing_secret_env = "HOOK_SECRET"

[[handlers]]
name = "dump"
group = "created"
kind = "command"
command = ["./dump.sh"]
env = {{ MY_TOKEN = "${{MY_TOKEN}}", PLAIN = "yes" }}
"#,
            hook.url
        ),
    )
    .script("dump.sh", "env > env.txt");
    let mut cmd = case.command();
    for (var, value) in SECRETS {
        cmd.env(var, value);
    }
    let out = cmd
        .env("MY_TOKEN", "mine-9x")
        .args(["process-sources", "--as-of", AS_OF])
        .output()
        .unwrap();
    Run { output: out }.success();
    let env = std::fs::read_to_string(case.path("env.txt")).unwrap();
    for (var, value) in SECRETS
        .iter()
        .filter(|(v, _)| ["API_TOKEN", "HOOK_AUTH", "HOOK_SECRET"].contains(v))
    {
        assert!(
            !env.contains(value),
            "{var} was handed to the command:\n{env}"
        );
    }
    assert!(env.contains("MY_TOKEN=mine-9x"), "{env}");
    assert!(env.contains("PLAIN=yes"), "{env}");
    assert!(env.contains("PATH="), "{env}");
    assert!(env.contains("SPARK_EVENT_KEY=challenge_created_1"), "{env}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn files_holding_event_data_are_readable_by_their_owner_only() {
    let case = Case::new()
        .file(
            "schema.sql",
            "CREATE TABLE person (id INTEGER PRIMARY KEY, email TEXT); INSERT INTO person VALUES (1, 'a@example.org');",
        )
        .config(
            r#"
[database]
path = "data/app.sqlite3"
create_from = "schema.sql"

[[sources]]
name = "people"
table = "person"
group = "welcome"

[[handlers]]
name = "log"
group = "welcome"
kind = "jsonl"
path = "var/events.jsonl"

[[handlers]]
name = "shared-log"
group = "welcome"
kind = "jsonl"
path = "var/shared.jsonl"
mode = "0640"

[[handlers]]
name = "mail"
group = "welcome"
kind = "mail"
from = "a@example.org"
to = "{{ email }}"
subject = "hi"
outbox = "outbox"
"#,
        );
    let out = case.command().args(["process-sources"]).output().unwrap();
    Run { output: out }.success();
    assert_eq!(mode(&case.path("data/app.sqlite3")), 0o600);
    assert_eq!(mode(&case.path("var/events.jsonl")), 0o600);
    assert_eq!(mode(&case.path("var/shared.jsonl")), 0o640);
    assert_eq!(mode(&case.path("outbox/welcome_1.eml")), 0o600);
    assert_eq!(
        mode(&case.path("outbox")) & 0o077,
        0,
        "the outbox folder is private"
    );
}

#[test]
fn invalid_utf8_is_a_bad_record_never_a_collision() {
    let case = Case::new()
        .db("CREATE TABLE t (id TEXT, note TEXT);
             INSERT INTO t VALUES (CAST(X'61FF' AS TEXT), 'one'), (CAST(X'61FE' AS TEXT), 'two'), ('ok', 'three');")
        .config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "notes"
table = "t"
group = "g"

[[handlers]]
name = "log"
group = "g"
kind = "jsonl"
path = "events.jsonl"
"#,
        );
    case.run(&["process-sources"])
        .status(1)
        .stdout_has(&["2 records skipped"])
        .stderr_has(&["source `notes`", "column `id`", "not valid UTF-8"]);
    assert_eq!(case.jsonl_keys("events.jsonl"), ["g_ok"]);
    assert_eq!(case.seen().keys().collect::<Vec<_>>(), ["g_ok"]);
}

#[test]
fn long_keys_get_bounded_outbox_names_and_keep_the_key_in_a_header() {
    let cjk = "漢".repeat(27);
    let case = people_case(
        "(1, 'a@example.org')",
        "to = \"{{ email }}\"\noutbox = \"outbox\"",
    );
    let config = std::fs::read_to_string(case.path("spark.toml"))
        .unwrap()
        .replace(
            "table = \"person\"",
            "query = \"SELECT id || '-' || ?1 AS id, email FROM person\"",
        );
    let case = case.config(&config.replace("?1", &format!("'{cjk}'")));
    case.run(&["process-sources"]).success();
    let names = file_names(&case.path("outbox"));
    assert_eq!(names.len(), 1);
    assert!(
        names[0].len() <= 255 && names[0].ends_with(".eml"),
        "{}",
        names[0]
    );
    let bytes = std::fs::read(case.path("outbox").join(&names[0])).unwrap();
    let mail = MessageParser::default()
        .header_text(mail_parser::HeaderName::Other("X-Spark-Key".into()))
        .parse(&bytes)
        .unwrap();
    let key = mail
        .header("X-Spark-Key")
        .and_then(|h| h.as_text())
        .expect("X-Spark-Key");
    assert_eq!(key, format!("welcome_1-{cjk}"));
    for line in String::from_utf8_lossy(&bytes).lines() {
        assert!(line.len() <= 998, "a header line of {} bytes", line.len());
    }
}

#[test]
fn keys_longer_than_the_seen_tables_column_are_bad_records() {
    let case = Case::new()
        .db(&format!(
            "CREATE TABLE t (id TEXT); INSERT INTO t VALUES ('{}'), ('short');",
            "k".repeat(120)
        ))
        .config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "things"
table = "t"
group = "g"

[[handlers]]
name = "log"
group = "g"
kind = "jsonl"
path = "events.jsonl"
"#,
        );
    case.run(&["process-sources"]).status(1).stderr_has(&[
        "source `things`",
        "122 characters",
        "100",
    ]);
    assert_eq!(case.jsonl_keys("events.jsonl"), ["g_short"]);
}

#[test]
fn orphaned_deliveries_are_reported_and_exit_1() {
    let case = challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-09', '2026-03-30')",
        "\n[[handlers]]\nname = \"notify\"\ngroup = \"created\"\nkind = \"command\"\ncommand = [\"false\"]\n",
    );
    case.run(&["process-sources", "--as-of", AS_OF]).status(1);
    let renamed = std::fs::read_to_string(case.path("spark.toml"))
        .unwrap()
        .replace("name = \"notify\"", "name = \"notify-v2\"")
        .replace("command = [\"false\"]", "command = [\"true\"]");
    let case = case.config(&renamed);
    let run = case
        .run(&["-q", "process-sources", "--as-of", AS_OF])
        .status(1)
        .stderr_has(&["orphaned", "`notify`", "challenge_created_1"]);
    assert!(run.stdout().is_empty());
    case.run(&["check"])
        .status(1)
        .stderr_has(&["orphaned", "`notify`"]);
}

#[test]
fn check_warns_about_a_group_no_handler_receives() {
    let case = challenges_case("(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')", "");
    let config = std::fs::read_to_string(case.path("spark.toml"))
        .unwrap()
        .replace(
            "group = \"^challenge\"",
            "group = \"^challenge_(created|ended)$\"",
        );
    let case = case.config(&config);
    let run = case.run(&["check"]).success();
    for group in ["challenge_inactivity_2d", "challenge_ends_2d"] {
        assert!(
            run.stderr().contains(&format!("group `{group}`"))
                && run.stderr().contains("source `challenges`"),
            "{}",
            run.stderr()
        );
    }
    assert!(run.stderr().contains("no handler"), "{}", run.stderr());
}

#[test]
fn a_locked_out_quiet_run_is_silent() {
    let case = challenges_case("(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')", "");
    let lock = std::fs::File::create(case.path("app.sqlite3-spark.lock")).unwrap();
    lock.lock().unwrap();
    let run = case.run(&["-q", "process-sources"]).status(3);
    assert_eq!(run.stderr(), "");
    assert_eq!(run.stdout(), "");
    case.run(&["process-sources"])
        .status(3)
        .stderr_has(&["another spark run"]);
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let case = challenges_case("(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')", "");
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    for args in [
        &["events"][..],
        &["events", "--json"],
        &["dry-run", "--as-of", "2026-04-10"],
        &["list-handlers"],
        &["deliveries"],
        &["config"],
    ] {
        let mut child = std::process::Command::new(case.command().get_program())
            .current_dir(case.dir.path())
            .env("NO_COLOR", "1")
            .args(["--config", "spark.toml"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("internal error"), "{args:?}: {stderr}");
    }
}

#[test]
fn read_only_commands_need_no_delivery_secrets() {
    let case = challenges_case(
        "(1, 'a', 'a@x', 1, '2026-03-01', '2026-03-30')",
        r#"
[[handlers]]
name = "hook"
group = "nothing-matches"
kind = "webhook"
url = "http://127.0.0.1:9/x"
header_env = { "Authorization" = "UNSET_AUTH_VAR" }
signing_secret_env = "UNSET_SECRET_VAR"

[[handlers]]
name = "mail"
group = "created"
kind = "mail"
from = "a@example.org"
to = "x@example.org"
subject = "hi"
outbox = "outbox"
"#,
    );
    let before = case.db_bytes();
    case.run(&["process-sources", "--as-of", AS_OF])
        .status(2)
        .stderr_has(&["handler `hook`", "UNSET_SECRET_VAR", "not set"]);
    assert_eq!(case.db_bytes(), before);
    case.run(&["check"])
        .status(2)
        .stderr_has(&["handler `hook`", "UNSET_AUTH_VAR"]);
    case.run(&["mark-seen", "challenge_created_1"]).success();
    for args in [
        &["events"][..],
        &["deliveries"],
        &["list-handlers"],
        &["list-sources"],
        &["config"],
        &["dry-run", "--as-of", AS_OF],
        &["preview-mail", "mail", "--key", "challenge_created_1"],
    ] {
        case.run(args).success();
    }
}
