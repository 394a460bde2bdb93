//! Several spark processes sharing one backlog (PostgreSQL, MySQL): scanners racing
//! over the same records record each key once and deliver it once; workers
//! killed with SIGKILL again and again lose nothing and repeat at most one
//! call per kill; a worker whose connection is cut during a slow call lets
//! its claim go when the lease runs out, and another worker delivers.
//! Against the real test server (skipped without one, unless CI), counting
//! at a real loopback HTTP server what each event key received.

mod common;

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::servers::Hook;
use common::{
    Backend, Case, Lcg, challenge_config, many_challenges_keys, many_challenges_sql, wait_until,
};

const AS_OF: &str = "2026-03-10";

/// `n` challenges, every event posted to `hook` (besides the jsonl `log`).
fn hook_case(backend: Backend, n: usize, hook: &Hook) -> Case {
    Case::on(backend)
        .db(&many_challenges_sql(n))
        .config(&challenge_config(&format!(
            r#"
[[handlers]]
name = "hook"
group = "^challenge"
kind = "webhook"
url = "{}"
timeout = "20s"
"#,
            hook.url
        )))
}

fn spawn_all(case: &Case, n: usize, args: &[&str]) -> Vec<Child> {
    (0..n).map(|_| case.spawn(args)).collect()
}

fn wait_all(children: Vec<Child>) -> Vec<i32> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().status.code().unwrap_or(-1))
        .collect()
}

fn scanners_race(backend: Backend, workers: usize) {
    const N: usize = 1500; // 3,000 events
    let hook = Hook::slow(Duration::ZERO, |_| {});
    let case = hook_case(backend, N, &hook);
    let codes = wait_all(spawn_all(
        &case,
        workers,
        &["process-sources", "--as-of", AS_OF, "-q"],
    ));
    assert!(codes.iter().all(|c| *c == 0), "exit statuses {codes:?}");
    let expected = many_challenges_keys(N);
    let seen: Vec<String> = case.seen().into_keys().collect();
    assert_eq!(seen, expected, "every key recorded, once");
    // The jsonl file is one host's: one process held it; what the others
    // recorded for it waits for the next run here.
    case.run(&["process-sources", "--as-of", AS_OF]).success();
    let per_key = hook.per_key();
    let mut keys: Vec<String> = per_key.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, expected, "every key posted");
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "posted more than once: {twice:?}");
    let mut logged = case.jsonl_keys("events.jsonl");
    logged.sort();
    assert_eq!(logged, expected, "the jsonl file holds each key once");
    assert!(case.deliveries().is_empty(), "nothing left owed");
}

on_shared_backends! {
fn two_scanners_racing_record_and_deliver_each_key_once(backend: Backend) {
    scanners_race(backend, 2);
}

fn four_scanners_racing_record_and_deliver_each_key_once(backend: Backend) {
    scanners_race(backend, 4);
}

fn four_workers_killed_again_and_again_lose_nothing(backend: Backend) {
    const N: usize = 200; // 400 events, posted at 5 ms each
    let hook = Hook::slow(Duration::from_millis(5), |_| {});
    let case = hook_case(backend, N, &hook);
    let mut rng = Lcg(23);
    let mut kills = 0;
    let started = Instant::now();
    // Four workers, each killed at a random moment and started again, for
    // a few seconds: scanners and delivery workers mixed.
    let mut workers: Vec<Child> = (0..4usize)
        .map(|i| {
            if i.is_multiple_of(2) {
                case.spawn(&["process-sources", "--as-of", AS_OF, "-q"])
            } else {
                case.spawn(&["deliver", "--linger", "2s", "-q"])
            }
        })
        .collect();
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(rng.range(100, 400)));
        let i = rng.range(0, 4) as usize;
        let _ = workers[i].kill();
        let _ = workers[i].wait();
        kills += 1;
        workers[i] = if i.is_multiple_of(2) {
            case.spawn(&["process-sources", "--as-of", AS_OF, "-q"])
        } else {
            case.spawn(&["deliver", "--linger", "2s", "-q"])
        };
    }
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
        kills += 1;
    }
    // The dead workers' claims pass on when their leases run out.
    case.let_leases_run_out();
    case.run(&["process-sources", "--as-of", AS_OF, "-q"])
        .success();
    let expected = many_challenges_keys(N);
    let per_key = hook.per_key();
    let mut keys: Vec<String> = per_key.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, expected, "every key posted at least once");
    let repeats: usize = per_key.values().map(|n| n - 1).sum();
    assert!(
        repeats <= kills,
        "{repeats} repeated posts after {kills} kills"
    );
    let mut logged = case.jsonl_keys("events.jsonl");
    logged.sort();
    assert_eq!(
        logged, expected,
        "the jsonl file holds each key exactly once"
    );
    assert!(case.deliveries().is_empty(), "nothing left owed");
    eprintln!("four workers: {kills} kills, {repeats} repeated posts");
}

fn a_workers_cut_connection_passes_its_claim_on_when_the_lease_runs_out(backend: Backend) {
    // The first post hangs for 8 s: the worker making it is mid-call.
    let first = Arc::new(AtomicBool::new(true));
    let hanging = Arc::new(AtomicBool::new(false));
    let (f, h) = (first.clone(), hanging.clone());
    let hook = Hook::slow(Duration::ZERO, move |_| {
        if f.swap(false, Ordering::SeqCst) {
            h.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(8));
        }
    });
    // Three challenges: three `created` events, one chunk for the hook.
    let case = Case::on(backend)
        .db(&many_challenges_sql(3))
        .config(&challenge_config(&format!(
            "[[handlers]]\nname = \"hook\"\ngroup = \"created\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"20s\"\n",
            hook.url
        )));
    let a = case.spawn(&["process-sources", "--as-of", AS_OF]);
    wait_until("worker A to be in its slow call", || {
        hanging.load(Ordering::SeqCst)
    });
    // Cut A's connection, as a network failure would.
    if backend == Backend::Mysql {
        for row in case.query(
            "SELECT ID FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
        ) {
            if let Some(id) = &row[0] {
                case.my_sql(&format!("KILL {id}"));
            }
        }
    } else {
        case.pg_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        );
    }
    let cut_at = Instant::now();
    // Worker B takes A's claim over once its lease has run out.
    let b = case.run(&["deliver", "--linger", "5s"]).success();
    assert!(b.stdout().contains("3 delivered"), "{}", b.stdout());
    let out_a = a.wait_with_output().unwrap();
    let stderr_a = String::from_utf8_lossy(&out_a.stderr);
    assert_eq!(
        out_a.status.code(),
        Some(2),
        "A fails when its call returns: {stderr_a}"
    );
    let requests = hook.requests();
    let b_first = requests
        .iter()
        .map(|r| r.received)
        .filter(|t| *t > cut_at)
        .min()
        .expect("B posted");
    // The lease (renewed every third of it until the cut) had to run out.
    let waited = b_first - cut_at;
    assert!(
        waited >= common::LEASE * 2 / 3 - Duration::from_millis(200),
        "B took the claim after {waited:?}, before A's lease ran out"
    );
    let per_key = hook.per_key();
    let mut keys: Vec<String> = per_key.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "challenge_created_1",
            "challenge_created_2",
            "challenge_created_3"
        ],
        "B delivered what A had claimed"
    );
    let repeats: usize = per_key.values().map(|n| n - 1).sum();
    assert!(
        repeats <= 1,
        "at most the call in flight repeated: {per_key:?}"
    );
    assert!(case.deliveries().is_empty(), "nothing left owed");
}
}
