//! PostgreSQL restarted in the middle of a run: the run fails with a clear
//! error (exit 2), the next one finishes, and nothing is lost. A test binary
//! of its own: restarting the server would break any other test running
//! beside it. It restarts the local cluster with `pg_ctlcluster` (the test
//! machines' PostgreSQL); where that is not possible it is skipped, saying
//! so (under CI, it fails).

mod common;

use common::{
    Backend, Case, challenge_config, many_challenges_keys, many_challenges_sql, wait_until,
};
use std::process::Command;

const AS_OF: &str = "2026-03-10";

/// Restarts the local PostgreSQL cluster; `Err` says why it could not.
fn restart_postgres() -> Result<(), String> {
    let versions =
        std::fs::read_dir("/etc/postgresql").map_err(|e| format!("/etc/postgresql: {e}"))?;
    for version in versions {
        let version = version.map_err(|e| e.to_string())?.file_name();
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect"])
            .arg(&version)
            .args(["main", "restart", "-m", "fast"])
            .status()
            .map_err(|e| format!("pg_ctlcluster: {e}"))?;
        if !status.success() {
            return Err(format!("pg_ctlcluster {version:?} main restart: {status}"));
        }
    }
    Ok(())
}

fn server_answers() -> bool {
    postgres::Client::connect(&common::test_server_url(), postgres::NoTls).is_ok()
}

#[test]
fn a_run_interrupted_by_a_postgres_restart_fails_clearly_and_the_next_finishes() {
    const N: usize = 100; // 200 events
    let Some(backend) = Backend::postgres("a_run_interrupted_by_a_postgres_restart") else {
        return;
    };
    let case = Case::on(backend)
        .db(&many_challenges_sql(N))
        .config(&challenge_config(
            "[[handlers]]\nname = \"slow\"\ngroup = \"^challenge\"\nkind = \"command\"\ncommand = [\"./slow.sh\"]\n",
        ))
        .script(
            "slow.sh",
            "cat > /dev/null\necho \"$SPARK_EVENT_KEY\" >> called.txt\nsleep 0.02",
        );
    let run = case.spawn(&["process-sources", "--as-of", AS_OF]);
    wait_until("some calls", || case.lines("called.txt").len() >= 20);
    let restarted = restart_postgres();
    let out = run.wait_with_output().unwrap();
    if let Err(why) = restarted {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot restart PostgreSQL: {why}"
        );
        eprintln!("skipped: cannot restart PostgreSQL here ({why})");
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: database"),
        "a clear error: {stderr}"
    );
    wait_until("PostgreSQL to be back", server_answers);
    let done = case.lines("called.txt").len();
    assert!(done < 2 * N, "the restart came in the middle of the run");

    case.let_leases_run_out();
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    let expected = many_challenges_keys(N);
    let mut calls = case.lines("called.txt");
    calls.sort();
    let repeats = calls.len() - {
        let mut unique = calls.clone();
        unique.dedup();
        assert_eq!(unique, expected, "every event delivered");
        unique.len()
    };
    assert!(repeats <= 1, "{repeats} calls repeated");
    let mut logged = case.jsonl_keys("events.jsonl");
    logged.sort();
    assert_eq!(logged, expected, "the jsonl file holds each key once");
    assert!(case.deliveries().is_empty(), "nothing left owed");
}
