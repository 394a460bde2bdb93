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
