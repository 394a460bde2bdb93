#!/usr/bin/env python3
"""The console's pages, timed: N items (default 100,000) become N events;
every 20th is also owed to a webhook that refuses connections (max_attempts
1: dead). Then `spark serve` answers each page 30 times (median and max,
milliseconds, body size), beside the CLI command that reads the same data
(`events`, `deliveries --state dead`, `show KEY`; median of 10, the whole
process) as the reference measured in the same run.

Usage: python3 bench/console.py [--n N] [path/to/spark]   (a release build)

SQLite; figures are from one run on the machine it runs on."""

import argparse
import base64
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "bench-password-1234"

CONFIG = """
[database]
path = "app.sqlite3"

[delivery]
max_attempts = 1

[serve]
password_env = "SPARK_CONSOLE_PASSWORD"

[[sources]]
name = "items"
table = "item"
group = "item"
id = "id"

[[sources]]
name = "hooked"
table = "item"
group = "hooked"
id = "id"
conditions = [ { variable = "hooked", op = "=", value = 1 } ]

[[handlers]]
name = "log"
group = "."
kind = "jsonl"
path = "events.jsonl"

[[handlers]]
name = "hook"
group = "^hooked$"
kind = "webhook"
url = "http://127.0.0.1:9/refused"
timeout = "1s"
concurrency = 32
"""


def timed(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        size = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times), size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("spark", nargs="?", default=os.path.join(ROOT, "target/release/spark"))
    args = ap.parse_args()
    spark = os.path.abspath(args.spark)
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(os.path.join(d, "app.sqlite3"))
        db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, title TEXT NOT NULL, hooked INTEGER NOT NULL)")
        db.executemany("INSERT INTO item VALUES (?, ?, ?)",
                       ((i, f"item number {i}", int(i % 20 == 0)) for i in range(1, args.n + 1)))
        db.commit()
        db.close()
        with open(os.path.join(d, "spark.toml"), "w") as f:
            f.write(CONFIG)
        env = dict(os.environ, SPARK_CONSOLE_PASSWORD=PASSWORD)
        t = time.perf_counter()
        subprocess.run([spark, "-q", "process-sources"], cwd=d, env=env, stderr=subprocess.DEVNULL)
        print(f"dataset: {args.n} items, process-sources {time.perf_counter() - t:.1f} s")
        server = subprocess.Popen([spark, "serve", "--listen", "127.0.0.1:0"], cwd=d, env=env,
                                  stdout=subprocess.PIPE, text=True)
        try:
            url = server.stdout.readline().split()[3].rstrip("/")
            auth = "Basic " + base64.b64encode(f"spark:{PASSWORD}".encode()).decode()

            def get(path, json=False):
                def go():
                    req = urllib.request.Request(url + path, headers={"Authorization": auth})
                    if json:
                        req.add_header("Accept", "application/json")
                    with urllib.request.urlopen(req) as r:
                        return len(r.read())
                return go

            def cli(*argv):
                def go():
                    return len(subprocess.run([spark, "--config", "spark.toml", *argv], cwd=d, env=env,
                                              capture_output=True, check=True).stdout)
                return go

            key = f"hooked_{args.n // 2 // 20 * 20}"
            rows = [
                ("/static/spark.css", get("/static/spark.css"), None),
                ("/", get("/"), None),
                ("/ (JSON)", get("/", True), None),
                ("/events", get("/events"), cli("events")),
                ("/events?q=number 4242", get("/events?q=number%204242"),
                 cli("events", "--contains", "number 4242")),
                ("/deliveries?state=dead", get("/deliveries?state=dead"),
                 cli("deliveries", "--state", "dead")),
                (f"/events/{key}", get(f"/events/{key}"), cli("show", key)),
            ]
            print(f"{'page':34} {'median ms':>10} {'max ms':>8} {'bytes':>8}   CLI reference median ms (ratio)")
            for name, page, ref in rows:
                med, mx, size = timed(page, 30)
                line = f"{name:34} {med:10.2f} {mx:8.2f} {size:8}"
                if ref:
                    rmed, _, _ = timed(ref, 10)
                    line += f"   {rmed:8.2f} ({med / rmed:.2f}x)"
                print(line)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
