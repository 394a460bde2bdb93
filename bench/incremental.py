#!/usr/bin/env python3
"""Incremental sources, measured on N challenges (default 1,000,000):

  - process-sources that finds nothing new: a full run-2 (no cursor) against
    an incremental one (`cursor = "id"`), medians of 5, as a ratio;
  - spark watch with the cursor: a challenge committed by another process
    -> its line in the handler's file, median and max of 20 rounds
    (--interval 1h: only the database's change wakes it);
  - the same watch idle between changes: its CPU time (utime + stime from
    /proc) over 30 seconds.

Usage: python3 bench/incremental.py [--pg URL] [--n N] [path/to/spark]

SQLite by default; with --pg, a PostgreSQL database URL (the tables are
made there, with a NOTIFY trigger for watch's LISTEN, and dropped after).
The dataset is ../shared/bench/make_dataset.py's. Figures are from one run
on the machine it runs on."""

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from common import challenge_config, lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")

def size(path):
    """The file's size: polled instead of counting its million lines."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def timed(cmd, cwd):
    start = time.monotonic()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Sqlite:
    name = "SQLite"

    def __init__(self, folder, dataset):
        self.path = os.path.join(folder, "app.sqlite3")
        os.replace(dataset, self.path)
        self.database = 'path = "app.sqlite3"'

    def insert(self, i):
        # The client's connect, insert and commit are counted.
        with sqlite3.connect(self.path) as c:
            c.execute("INSERT INTO challenge VALUES (?, 'x', 'x@x', 1, date('now'), "
                      "date('now', '+30 days'))", (i,))

    def close(self):
        pass


class Postgres:
    name = "PostgreSQL"

    def __init__(self, folder, dataset, url):
        self.url = url
        self.client = None
        script = os.path.join(folder, "load.sql")
        self.psql("DROP TABLE IF EXISTS donation, challenge, spark_event, spark_delivery, "
                  "spark_history, spark_lock, spark_meta, spark_cursor CASCADE")
        subprocess.run([sys.executable, os.path.join(SHARED, "dataset_to_pg.py"), dataset, script],
                       check=True)
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                        "-d", url, "-f", script], check=True)
        self.psql("""CREATE OR REPLACE FUNCTION spark_wake() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN PERFORM pg_notify('spark_wake', ''); RETURN NULL; END $$;
                     CREATE TRIGGER spark_wake AFTER INSERT OR UPDATE ON challenge
                     FOR EACH STATEMENT EXECUTE FUNCTION spark_wake(); ANALYZE""")
        self.database = f'url = "{url}"\nlisten = "spark_wake"'

    def psql(self, sql):
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url, "-c", sql],
                       check=True, stdout=subprocess.DEVNULL)

    def insert(self, i):
        # Through one psql session kept open: its start-up (~40 ms) is not
        # counted.
        if self.client is None:
            self.client = subprocess.Popen(["psql", "-X", "-q", "-d", self.url],
                                           stdin=subprocess.PIPE, text=True)
        self.client.stdin.write(f"INSERT INTO challenge VALUES ({i}, 'x', 'x@x', 1, "
                                "CURRENT_DATE, CURRENT_DATE + 30);\n")
        self.client.stdin.flush()

    def close(self):
        if self.client is not None:
            self.client.stdin.close()
            self.client.wait()
        self.psql("DROP TABLE IF EXISTS donation, challenge, spark_event, spark_delivery, "
                  "spark_history, spark_lock, spark_meta, spark_cursor CASCADE; "
                  "DROP FUNCTION IF EXISTS spark_wake()")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("spark", nargs="?", default=os.path.join(ROOT, "target/release/spark"))
    args = ap.parse_args()
    spark = os.path.abspath(args.spark)
    with tempfile.TemporaryDirectory() as folder:
        dataset = os.path.join(folder, "dataset.sqlite3")
        subprocess.run([sys.executable, os.path.join(SHARED, "make_dataset.py"), str(args.n),
                        dataset], check=True, stdout=subprocess.DEVNULL)
        db = Postgres(folder, dataset, args.pg) if args.pg else Sqlite(folder, dataset)
        try:
            run(db, folder, spark, args.n)
        finally:
            db.close()


def run(db, folder, spark, n):
    toml = os.path.join(folder, "spark.toml")
    plain = os.path.join(folder, "plain.toml")
    with open(toml, "w") as f:
        f.write(challenge_config(db.database, 'cursor = "id"'))
    with open(plain, "w") as f:
        f.write(challenge_config(db.database, ""))
    first = timed([spark, "--config", "spark.toml", "-q", "process-sources"], folder)
    print(f"{db.name}, {n:,} challenges: run 1 (all new, full) {first:.2f} s, "
          f"{lines(os.path.join(folder, 'events.jsonl')):,} events")
    full = [timed([spark, "--config", "plain.toml", "-q", "process-sources"], folder)
            for _ in range(5)]
    forced = [timed([spark, "--config", "spark.toml", "-q", "process-sources", "--full"], folder)
              for _ in range(5)]
    incremental = [timed([spark, "--config", "spark.toml", "-q", "process-sources"], folder)
                   for _ in range(5)]
    f, c, i = statistics.median(full), statistics.median(forced), statistics.median(incremental)
    print(f"  nothing new, medians of 5: full run-2 without cursor {f*1000:.0f} ms, "
          f"--full with cursor {c*1000:.0f} ms, incremental {i*1000:.1f} ms "
          f"= {100*i/f:.2f}% of the full run")

    events = os.path.join(folder, "events.jsonl")
    child = subprocess.Popen([spark, "--config", "spark.toml", "-q", "watch",
                              "--interval", "1h"], cwd=folder)
    try:
        # Its first cycle: incremental (the runs above left a mark).
        time.sleep(3)
        seen = []
        for r in range(20):
            before = size(events)
            # An idle watch: its last cycle (and the one its own writes
            # woke) is over; cycles start at most once a second.
            time.sleep(2.5)
            start = time.monotonic()
            db.insert(n + 1000 + r)
            while size(events) <= before:
                time.sleep(0.001)
            seen.append(time.monotonic() - start)
        time.sleep(2)
        cpu0 = cpu_seconds(child.pid)
        time.sleep(30)
        idle = cpu_seconds(child.pid) - cpu0
    finally:
        child.terminate()
        child.wait()
    print(f"  watch with the cursor, committed -> handled, 20 rounds: median "
          f"{statistics.median(seen)*1000:.0f} ms, max {max(seen)*1000:.0f} ms, "
          f"min {min(seen)*1000:.0f} ms")
    print(f"  watch idle for 30 s: {idle:.2f} s of CPU (utime+stime)")


if __name__ == "__main__":
    main()
