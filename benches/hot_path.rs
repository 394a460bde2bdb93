//! Criterion benchmarks of the per-record and per-event hot path: decoding
//! rows, running the example source, recording a batch (new and already
//! seen), routing groups to handlers, and formatting jsonl lines.
//!
//! `cargo bench` runs them; the whole-run comparison with django-spark and
//! the SQL floor is `bench/run.sh`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use jiff::civil::Date;
use rusqlite::Connection;
use spark::backend::sqlite::SqliteExecutor;
use spark::backend::sqlite::records::RecordReader;
use spark::config::Config;
use spark::handlers::Dispatch;
use spark::store::Store;
use spark::{Event, Registry, SourceCtx};

const QUERY: &str = "SELECT c.*, (SELECT count(*) FROM donation d WHERE d.challenge_id = c.id) AS donation_count FROM challenge c";

/// `n` challenges (ids 1..=n) with a donation every third one.
fn challenges(conn: &Connection, n: usize) {
    conn.execute_batch(&format!(
        "CREATE TABLE challenge (id INTEGER PRIMARY KEY, title TEXT NOT NULL, user_email TEXT NOT NULL,
           is_active INTEGER NOT NULL, start_date TEXT NOT NULL, end_date TEXT NOT NULL);
         CREATE TABLE donation (id INTEGER PRIMARY KEY, challenge_id INTEGER NOT NULL, amount INTEGER NOT NULL);
         CREATE INDEX donation_challenge_id ON donation(challenge_id);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n})
         INSERT INTO challenge SELECT i, 'Challenge ' || i, 'user' || i || '@example.org', 1,
           '2026-02-' || printf('%02d', 1 + i % 28), '2026-03-' || printf('%02d', 1 + i % 28) FROM c;
         INSERT INTO donation (challenge_id, amount) SELECT id, 10 FROM challenge WHERE id % 3 = 0;"
    ))
    .expect("dataset");
}

fn today() -> SourceCtx {
    SourceCtx::on(Date::constant(2026, 3, 10))
}

/// The events of the first `n` challenges, as the pipeline produces them.
fn events(n: usize) -> Vec<Event> {
    let conn = Connection::open_in_memory().expect("db");
    challenges(&conn, n);
    let registry = Registry::with_builtins();
    let source = registry.source("challenge_events").expect("builtin");
    let mut stmt = conn.prepare(QUERY).expect("query");
    let mut reader = RecordReader::new(&mut stmt).expect("reader");
    let ctx = today();
    let mut out = Vec::new();
    while let Some(record) = reader.next_record().expect("row") {
        out.extend(source.call(record, &ctx).expect("events"));
    }
    out
}

fn decode_and_source(c: &mut Criterion) {
    const N: usize = 10_000;
    let conn = Connection::open_in_memory().expect("db");
    challenges(&conn, N);
    let registry = Registry::with_builtins();
    let source = registry
        .source("challenge_events")
        .expect("builtin")
        .clone();
    let ctx = today();

    let mut group = c.benchmark_group("records");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("decode 10k rows", |b| {
        b.iter(|| {
            let mut stmt = conn.prepare_cached(QUERY).expect("query");
            let mut reader = RecordReader::new(&mut stmt).expect("reader");
            let mut n = 0;
            while let Some(record) = reader.next_record().expect("row") {
                n += black_box(record).columns().len();
            }
            n
        })
    });
    group.bench_function("decode + challenge_events, 10k rows", |b| {
        b.iter(|| {
            let mut stmt = conn.prepare_cached(QUERY).expect("query");
            let mut reader = RecordReader::new(&mut stmt).expect("reader");
            let mut n = 0;
            while let Some(record) = reader.next_record().expect("row") {
                n += source.call(record, &ctx).expect("events").len();
            }
            n
        })
    });
    group.finish();
}

fn record_batch(c: &mut Criterion) {
    let events = events(1_250); // about 2,000 events
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));

    let fresh = |name: &str| {
        let path = dir.path().join(name);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("sqlite3-wal"));
        Connection::open(&path)
            .expect("db")
            .execute_batch("CREATE TABLE x (a)")
            .expect("table");
        spark::store::machine::Machine::new(Box::new(
            SqliteExecutor::open(&path, "spark_event", Duration::from_secs(5)).expect("store"),
        ))
    };
    let plan = |mask: &[bool]| {
        vec![spark::store::PlannedDelivery {
            handler: "log".into(),
            events: (0..mask.len()).filter(|&i| mask[i]).collect(),
            file_mark: Some(spark::store::FileMark {
                offset: 0,
                file: None,
            }),
            file_sink: true,
            chunk: 10,
            in_flight: 1,
        }]
    };
    group.bench_function("record a batch of new events (lookup first)", |b| {
        b.iter_batched(
            || fresh("new.sqlite3"),
            |mut store| {
                store
                    .record_batch(&events, &[], &[], &mut |m| plan(m))
                    .expect("batch")
            },
            BatchSize::PerIteration,
        )
    });
    let contexts: Vec<Arc<str>> = events
        .iter()
        .map(|e| Arc::from(serde_json::to_string(&*e.context).expect("json")))
        .collect();
    group.bench_function("record a batch of new events (contexts prepared)", |b| {
        b.iter_batched(
            || fresh("prepared.sqlite3"),
            |mut store| {
                store
                    .record_batch(&events, &contexts, &[], &mut |m| plan(m))
                    .expect("batch")
            },
            BatchSize::PerIteration,
        )
    });
    let mut seen = fresh("seen.sqlite3");
    seen.record_batch(&events, &[], &[], &mut |_| Vec::new())
        .expect("batch");
    group.bench_function("filter a batch of seen events", |b| {
        b.iter(|| {
            seen.record_batch(&events, &[], &[], &mut |m| plan(m))
                .expect("batch")
        })
    });
    group.finish();
}

fn routing_and_lines(c: &mut Criterion) {
    let config = Config::parse(
        r#"
[database]
path = "app.sqlite3"
[[handlers]]
name = "log"
group = "^challenge"
kind = "jsonl"
path = "a.jsonl"
[[handlers]]
name = "reminders"
group = "_2d$"
kind = "jsonl"
path = "b.jsonl"
[[handlers]]
name = "ended"
group = "ended"
kind = "jsonl"
path = "c.jsonl"
"#,
        Path::new("spark.toml"),
        &Registry::with_builtins(),
    )
    .expect("config");
    let groups = [
        "challenge_created",
        "challenge_inactivity_2d",
        "challenge_ends_2d",
        "challenge_ended",
    ];
    c.bench_function("route 4 groups through 3 regexes", |b| {
        b.iter(|| {
            groups
                .iter()
                .map(|g| config.handlers_for(black_box(g)).count())
                .sum::<usize>()
        })
    });

    let events = events(250);
    let contexts: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(&*e.context).expect("json"))
        .collect();
    let mut group = c.benchmark_group("jsonl");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("format lines", |b| {
        let mut out = String::new();
        b.iter(|| {
            out.clear();
            for (e, ctx) in events.iter().zip(&contexts) {
                Dispatch {
                    event: e,
                    context_json: ctx,
                    seen_at: "2026-03-10 12:00:00.000000",
                }
                .write_json(&mut out);
                out.push('\n');
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, decode_and_source, record_batch, routing_and_lines);
criterion_main!(benches);
