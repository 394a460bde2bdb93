//! A small builder over assert_cmd for scenario tests: a temp folder with a
//! real SQLite database and a config, the real `spark` binary run in it, and
//! helpers to read back what it wrote.
#![allow(dead_code)]

pub mod servers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use rusqlite::Connection;
use tempfile::TempDir;

/// Challenges and donations, like ../shared/bench/make_dataset.py makes.
pub const CHALLENGE_SCHEMA: &str = "
CREATE TABLE challenge (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, user_email TEXT NOT NULL,
    is_active INTEGER NOT NULL, start_date TEXT NOT NULL, end_date TEXT NOT NULL);
CREATE TABLE donation (
    id INTEGER PRIMARY KEY, challenge_id INTEGER NOT NULL REFERENCES challenge(id),
    amount INTEGER NOT NULL);
";

/// The source query of the SPEC's example.
pub const CHALLENGE_QUERY: &str = "SELECT c.*, (SELECT count(*) FROM donation d WHERE d.challenge_id = c.id) AS donation_count FROM challenge c";

/// A config with the challenge source and one jsonl handler `log` for every
/// challenge event, writing `events.jsonl`. `extra` is appended.
pub fn challenge_config(extra: &str) -> String {
    format!(
        r#"
[database]
path = "app.sqlite3"

[delivery]
backoff = "0s"

[[sources]]
name = "challenges"
function = "challenge_events"
query = "{CHALLENGE_QUERY}"

[[handlers]]
name = "log"
group = "^challenge"
kind = "jsonl"
path = "events.jsonl"
{extra}"#
    )
}

/// A case whose database holds the challenges `rows` (SQL `VALUES` tuples:
/// id, title, user_email, is_active, start_date, end_date) and whose config
/// is `challenge_config(extra)`.
pub fn challenges_case(rows: &str, extra: &str) -> Case {
    Case::new()
        .db(&format!(
            "{CHALLENGE_SCHEMA}\nINSERT INTO challenge VALUES {rows};"
        ))
        .config(&challenge_config(extra))
}

pub struct Case {
    pub dir: TempDir,
    bin: PathBuf,
}

impl Case {
    pub fn new() -> Case {
        Case {
            dir: tempfile::tempdir().expect("temp dir"),
            bin: assert_cmd::cargo::cargo_bin("spark"),
        }
    }

    /// Runs a different binary (e.g. an example) instead of `spark`.
    pub fn binary(mut self, bin: PathBuf) -> Case {
        self.bin = bin;
        self
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Creates `app.sqlite3` and runs `sql` in it.
    pub fn db(self, sql: &str) -> Case {
        self.sql(sql);
        self
    }

    /// Runs `sql` in `app.sqlite3` (creating it if needed).
    pub fn sql(&self, sql: &str) {
        let conn = Connection::open(self.path("app.sqlite3")).expect("open db");
        conn.execute_batch(sql).expect("run sql");
    }

    pub fn config(self, toml: &str) -> Case {
        self.file("spark.toml", toml)
    }

    pub fn file(self, rel: &str, content: &str) -> Case {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write file");
        self
    }

    /// A shell script, made executable.
    pub fn script(self, rel: &str, body: &str) -> Case {
        let case = self.file(rel, &format!("#!/bin/sh\n{body}\n"));
        let path = case.path(rel);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        case
    }

    /// A command ready to run in the case's folder with `--config spark.toml`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self.dir.path())
            .env_remove("SPARK_CONFIG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg("spark.toml");
        cmd
    }

    /// Starts spark with `args` in the background (stdout and stderr captured).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(&self.bin)
            .current_dir(self.dir.path())
            .env_remove("SPARK_CONFIG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg("spark.toml")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn spark")
    }

    /// Lines of a text file in the case's folder (empty if missing).
    pub fn lines(&self, rel: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(rel))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs spark with `args` and returns what it did.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command().args(args).output().expect("run spark");
        Run { output }
    }

    /// The `key` of every line of a jsonl file (in file order; empty if the
    /// file does not exist). Every line must be whole JSON.
    pub fn jsonl_keys(&self, rel: &str) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(self.path(rel)) else {
            return Vec::new();
        };
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{rel}: not JSON ({e}): {line:?}"));
                v["key"].as_str().expect("key").to_owned()
            })
            .collect()
    }

    /// Seen keys and their groups.
    pub fn seen(&self) -> BTreeMap<String, String> {
        let conn = Connection::open(self.path("app.sqlite3")).expect("open db");
        let mut stmt = conn
            .prepare("SELECT key, \"group\" FROM spark_event")
            .expect("spark_event");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// Rows of `spark_delivery` as (handler, keys, state, attempts, last_error).
    pub fn deliveries(&self) -> Vec<(String, String, String, i64, Option<String>)> {
        let conn = Connection::open(self.path("app.sqlite3")).expect("open db");
        let mut stmt = conn
            .prepare(
                "SELECT handler, keys, state, attempts, last_error FROM spark_delivery ORDER BY id",
            )
            .expect("spark_delivery");
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    /// The database's bytes, to show that a command left it untouched.
    pub fn db_bytes(&self) -> Vec<u8> {
        std::fs::read(self.path("app.sqlite3")).expect("read db")
    }

    /// Names of the tables in the database.
    pub fn tables(&self) -> Vec<String> {
        let conn = Connection::open(self.path("app.sqlite3")).expect("open db");
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .expect("tables");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }
}

/// What one run of spark did.
pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    fn describe(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
    /// Asserts the exit status and returns the run.
    pub fn status(self, code: i32) -> Run {
        assert_eq!(self.code(), code, "{}", self.describe());
        self
    }
    pub fn success(self) -> Run {
        self.status(0)
    }
    /// Asserts that stderr mentions every one of `parts`.
    pub fn stderr_has(self, parts: &[&str]) -> Run {
        let err = self.stderr();
        for part in parts {
            assert!(
                err.contains(part),
                "stderr lacks {part:?}\n{}",
                self.describe()
            );
        }
        self
    }
    pub fn stdout_has(self, parts: &[&str]) -> Run {
        let out = self.stdout();
        for part in parts {
            assert!(
                out.contains(part),
                "stdout lacks {part:?}\n{}",
                self.describe()
            );
        }
        self
    }
    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
    }
}

/// Waits (up to 30 s) until `cond` holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A small deterministic random number generator (for kill times).
pub struct Lcg(pub u64);

impl Lcg {
    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

/// `n` active challenges that started long before 2026-03-10 with no
/// donations: each yields `challenge_created_N` and `challenge_inactivity_2d_N`.
pub fn many_challenges_sql(n: usize) -> String {
    format!(
        "{CHALLENGE_SCHEMA}
        WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n})
        INSERT INTO challenge SELECT i, 'challenge ' || i, 'u' || i || '@x', 1, '2026-01-01', '2026-06-01' FROM c;"
    )
}

/// The keys `many_challenges_sql(n)` yields.
pub fn many_challenges_keys(n: usize) -> Vec<String> {
    let mut keys = Vec::with_capacity(2 * n);
    for i in 1..=n {
        keys.push(format!("challenge_created_{i}"));
        keys.push(format!("challenge_inactivity_2d_{i}"));
    }
    keys.sort();
    keys
}

/// Sorted copy, for comparing key sets.
pub fn sorted<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.as_ref().to_owned()).collect();
    v.sort();
    v
}

/// Whether a path exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}
