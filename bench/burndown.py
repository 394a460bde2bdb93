#!/usr/bin/env python3
"""Burn-down: how fast spark delivers when the handler is fast.

Usage: burndown.py SPARK_BIN [--challenges 50000] [--reps 3]
                   [--backends sqlite,postgres] [--concurrency 1,32]
                   [--keep-history 0s]

The shared benchmark's dataset (../shared/bench/make_dataset.py: CHALLENGES
challenges and their donations, dates around today) goes through one `spark
process-sources` run (run 1: every event new) with, in turn:

- a `jsonl` handler for every challenge event (written in batches: the
  reference, the store's own speed),
- the no-op compiled-in `function` handler `log_event` (`-q`: it logs
  nothing), one call per event, at each CONCURRENCY.

Each on a fresh copy of the data: an SQLite file, or a PostgreSQL database
of its own (on PG_URL, default postgresql://postgres@127.0.0.1:5432/test;
the dataset loaded with ../shared/bench/dataset_to_pg.py). Prints one line
per run and a Markdown table of medians: seconds, the ratio to the jsonl run
of the same backend, and deliveries per second.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench"))
QUERY = ("SELECT c.*, (SELECT count(*) FROM donation d WHERE d.challenge_id = c.id) "
         "AS donation_count FROM challenge c")


def psql(url, sql=None, script=None):
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]
    args += ["-c", sql] if sql else ["--single-transaction", "-f", script]
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=env)


def db_url(admin, name):
    u = urlsplit(admin)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def handler(kind, concurrency):
    if kind == "jsonl":
        return 'name = "log"\ngroup = "^challenge"\nkind = "jsonl"\npath = "events.jsonl"\n'
    return (f'name = "noop"\ngroup = "^challenge"\nkind = "function"\n'
            f'function = "log_event"\nconcurrency = {concurrency}\n')


def run(spark, work, backend, dataset, pg_script, admin, kind, concurrency, keep_history=None):
    run_dir = tempfile.mkdtemp(dir=work)
    database = None
    try:
        if backend == "sqlite":
            shutil.copy(dataset, os.path.join(run_dir, "app.sqlite3"))
            db_line = 'path = "app.sqlite3"'
        else:
            database = f"spark_burndown_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
            psql(admin, f'CREATE DATABASE "{database}"')
            url = db_url(admin, database)
            psql(url, script=pg_script)
            psql(url, "VACUUM ANALYZE")
            db_line = f"url = {json.dumps(url)}"
        delivery = f'\n[delivery]\nkeep_history = "{keep_history}"\n' if keep_history else ""
        with open(os.path.join(run_dir, "spark.toml"), "w") as f:
            f.write(f"""
[database]
{db_line}
{delivery}
[[sources]]
name = "challenges"
function = "challenge_events"
query = {json.dumps(QUERY)}

[[handlers]]
{handler(kind, concurrency)}""")
        started = time.monotonic()
        done = subprocess.run([spark, "--config", "spark.toml", "--json", "process-sources"],
                              cwd=run_dir, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            sys.exit(f"spark failed ({done.returncode}): {done.stderr}")
        report = json.loads(done.stdout)
        return seconds, report["delivered"] if kind != "jsonl" else report["new"]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if database:
            psql(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spark")
    ap.add_argument("--challenges", type=int, default=50000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--keep-history", default=None,
                    help='[delivery] keep_history for every run (e.g. "0s": no history)')
    args = ap.parse_args()
    spark = os.path.abspath(args.spark)
    admin = os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    work = tempfile.mkdtemp(prefix="spark-burndown-")
    rows = []
    try:
        dataset = os.path.join(work, "dataset.sqlite3")
        subprocess.run([sys.executable, os.path.join(SHARED, "make_dataset.py"),
                        str(args.challenges), dataset], check=True)
        pg_script = os.path.join(work, "dataset.sql")
        subprocess.run([sys.executable, os.path.join(SHARED, "dataset_to_pg.py"),
                        dataset, pg_script], check=True)
        settings = [("jsonl", 1)] + [("function", int(c)) for c in args.concurrency.split(",")]
        for backend in args.backends.split(","):
            reference = None
            for kind, c in settings:
                times, events = [], 0
                for _ in range(args.reps):
                    seconds, events = run(spark, work, backend, dataset, pg_script, admin, kind, c,
                                          args.keep_history)
                    times.append(seconds)
                    print(f"backend={backend} handler={kind} concurrency={c} "
                          f"seconds={seconds:.2f} events={events}", flush=True)
                median = statistics.median(times)
                reference = reference or median
                rows.append((backend, kind, c, median, min(times), max(times),
                             median / reference, events / median))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| backend | handler | concurrency | seconds (median, min-max) | vs jsonl | deliveries/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for backend, kind, c, median, lo, hi, ratio, rate in rows:
        print(f"| {backend} | {kind} | {c if kind != 'jsonl' else '-'} | "
              f"{median:.2f} ({lo:.2f}-{hi:.2f}) | {ratio:.1f}x | {rate:,.0f} |")


if __name__ == "__main__":
    main()
