//! Memory stays bounded by the batch, not by the data: batches are cut by
//! bytes as well as by count, so rows of megabytes do not pile up. A test of
//! its own, because it measures the peak memory of the spark process it
//! starts (with wait4), which nothing else in this binary may disturb.

mod common;

use common::Case;

/// Peak resident memory of a finished child, in bytes, and its exit status.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std cannot see
fn run_measured(case: &Case, args: &[&str]) -> (i32, u64) {
    let child = std::process::Command::new(case.command().get_program())
        .current_dir(case.dir.path())
        .args(["--config", "spark.toml"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers to locals.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    // ru_maxrss is in KiB on Linux.
    (code, usage.ru_maxrss as u64 * 1024)
}

#[test]
fn big_rows_do_not_pile_up_in_memory() {
    const ROW: usize = 2 << 20;
    const ROWS: usize = 150;
    let case = Case::new()
        .db(&format!(
            "CREATE TABLE doc (id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {ROWS})
             INSERT INTO doc SELECT i, printf('%.*c', {ROW}, 'x') FROM c;"
        ))
        .config(
            r#"
[database]
path = "app.sqlite3"

[[sources]]
name = "docs"
table = "doc"
group = "doc"

[[handlers]]
name = "log"
group = "doc"
kind = "jsonl"
path = "events.jsonl"
"#,
        );
    let (code, peak) = run_measured(&case, &["process-sources"]);
    assert_eq!(code, 0);
    assert_eq!(case.lines("events.jsonl").len(), ROWS);
    let bound = (64 << 20) + 12 * ROW as u64;
    eprintln!("peak RSS {} MiB", peak >> 20);
    assert!(
        peak < bound,
        "peak RSS {} MiB for {ROWS} rows of {} MiB (bound {} MiB)",
        peak >> 20,
        ROW >> 20,
        bound >> 20
    );
}
