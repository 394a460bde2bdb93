#!/usr/bin/env python3
"""spark watch, measured: how soon a row committed by another process
reaches its handler (with --interval 30s), and max RSS after 100, 1,000
and 10,000 cycles. Usage: python3 bench/watch.py [path/to/spark]

Builds a copy of the demo database in a temporary folder; prints a table.
Figures are from one run on the machine it runs on."""

import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from common import challenge_config, lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARK = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/spark")

CONFIG = challenge_config('path = "app.sqlite3"\ncreate_from = "demo.sql"')


def setup(folder):
    with open(os.path.join(ROOT, "config/demo.sql")) as f:
        demo = f.read()
    with open(os.path.join(folder, "demo.sql"), "w") as f:
        f.write(demo)
    with open(os.path.join(folder, "spark.toml"), "w") as f:
        f.write(CONFIG)


def latency(rounds=20):
    with tempfile.TemporaryDirectory() as folder:
        setup(folder)
        events = os.path.join(folder, "events.jsonl")
        child = subprocess.Popen(
            [SPARK, "--config", "spark.toml", "-q", "watch", "--interval", "30s"],
            cwd=folder,
        )
        try:
            while lines(events) == 0:
                time.sleep(0.01)
            time.sleep(1.0)
            db = sqlite3.connect(os.path.join(folder, "app.sqlite3"), timeout=10)
            seen = []
            for i in range(rounds):
                before = lines(events)
                # An idle spark: the last cycle (and the one its own writes
                # woke) is over; cycles start at most once a second.
                time.sleep(2.5)
                start = time.monotonic()
                db.execute(
                    "INSERT INTO challenge (id, title, user_email, is_active, start_date, end_date) "
                    "VALUES (?, 'x', 'x@x', 1, date('now'), date('now', '+30 days'))",
                    (1000 + i,),
                )
                db.commit()
                while lines(events) <= before:
                    time.sleep(0.001)
                seen.append(time.monotonic() - start)
            return seen
        finally:
            child.terminate()
            child.wait()


def max_rss(cycles):
    with tempfile.TemporaryDirectory() as folder:
        setup(folder)
        out = subprocess.run(
            ["/usr/bin/time", "-f", "%M", SPARK, "--config", "spark.toml", "-q",
             "watch", "--interval", "0s", "--cycles", str(cycles)],
            cwd=folder, capture_output=True, text=True, check=True,
        )
        return int(out.stderr.strip().splitlines()[-1]) / 1024


def main():
    seen = latency()
    print(f"latency, row committed -> handled, {len(seen)} rounds, --interval 30s:")
    print(f"  median {statistics.median(seen)*1000:.0f} ms, max {max(seen)*1000:.0f} ms, "
          f"min {min(seen)*1000:.0f} ms")
    print("max RSS after N cycles (--interval 0s):")
    for n in (100, 1000, 10000):
        start = time.monotonic()
        rss = max_rss(n)
        print(f"  {n:>6} cycles: {rss:.1f} MiB ({time.monotonic() - start:.1f} s)")


if __name__ == "__main__":
    main()
