#!/usr/bin/env python3
"""What a kill -9 costs on PostgreSQL: the dead worker's claims wait out their lease.

Usage: kill_lease_pg.py SPARK_BIN [--events 2000] [--delay-ms 20]
                        [--leases 60,30,15,10] [--kill-at 2] [--reps 3]

For each lease: a fresh database (on PG_URL, default
postgresql://postgres@127.0.0.1:5432/test) with EVENTS/2 challenges, a
loopback webhook answering each POST after DELAY ms, one `spark
process-sources` and three `spark deliver --linger 90s` sharing the backlog.
Once without a kill (the baseline), once with one delivery worker killed
(SIGKILL) KILL_AT seconds in. The time is from the start to the server's
last answer; the cost of the kill is the difference. Every key must arrive
(repeats are allowed only for the killed worker's calls in flight).

Prints one line per run and a Markdown table of medians; exit 1 if a key was
lost.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from handlers import Counter, http_server as serve
from scaleout_pg import db_url, psql


def run(spark, admin, lease, events, delay, kill_at):
    name = f"spark_kill_{os.getpid()}_{lease}_{int(time.time() * 1000) % 100000}"
    psql(admin, f'DROP DATABASE IF EXISTS "{name}"')
    psql(admin, f'CREATE DATABASE "{name}"')
    url = db_url(admin, name)
    psql(url, f"""
        CREATE TABLE challenge (id integer PRIMARY KEY, title text NOT NULL, user_email text NOT NULL,
          is_active integer NOT NULL, start_date date NOT NULL, end_date date NOT NULL);
        CREATE TABLE donation (id serial PRIMARY KEY, challenge_id integer NOT NULL, amount integer NOT NULL);
        INSERT INTO challenge SELECT i, 'challenge ' || i, 'u' || i || '@x', 1, DATE '2026-01-01', DATE '2026-06-01'
          FROM generate_series(1, {events // 2}) AS i;""")
    counter = Counter()
    server = serve(counter, delay)
    work = tempfile.mkdtemp(prefix="spark-kill-")
    try:
        config = os.path.join(work, "spark.toml")
        with open(config, "w") as f:
            f.write(f"""
[database]
url = {json.dumps(url)}
lease = "{lease}s"

[[sources]]
name = "challenges"
function = "challenge_events"
query = "SELECT c.*, (SELECT count(*) FROM donation d WHERE d.challenge_id = c.id) AS donation_count FROM challenge c"

[[handlers]]
name = "hook"
group = "^challenge"
kind = "webhook"
url = "http://127.0.0.1:{server.server_port}/hook"
""")
        started = time.monotonic()
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs = [subprocess.Popen([spark, "--config", config, "-q", "process-sources",
                                   "--as-of", "2026-03-10"], **quiet)]
        procs += [subprocess.Popen([spark, "--config", config, "-q", "deliver", "--linger", "90s"],
                                   **quiet) for _ in range(3)]
        if kill_at is not None:
            time.sleep(kill_at)
            procs[1].send_signal(signal.SIGKILL)
        for p in procs:
            p.wait()
        seconds = counter.last - started
        lost = events - len(counter.keys)
        repeated = sum(counter.keys.values()) - len(counter.keys)
        return seconds, lost, repeated
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spark")
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--leases", default="60,30,15,10")
    ap.add_argument("--kill-at", type=float, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    admin = os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    spark = os.path.abspath(args.spark)
    rows, failed = [], False
    for lease in [int(x) for x in args.leases.split(",")]:
        base, killed, repeats = [], [], []
        for _ in range(args.reps):
            for kill_at, into in ((None, base), (args.kill_at, killed)):
                seconds, lost, repeated = run(spark, admin, lease, args.events,
                                              args.delay_ms / 1000, kill_at)
                into.append(seconds)
                if kill_at is not None:
                    repeats.append(repeated)
                failed |= lost != 0
                print(f"lease={lease}s kill={kill_at is not None} seconds={seconds:.2f} "
                      f"lost={lost} repeated={repeated}", flush=True)
        b, k = statistics.median(base), statistics.median(killed)
        rows.append((lease, b, k, k - b, max(repeats)))
    print()
    print("| lease | no kill (s) | one worker killed (s) | cost of the kill (s) | repeats (most) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for lease, b, k, cost, rep in rows:
        print(f"| {lease}s | {b:.2f} | {k:.2f} | {cost:.2f} | {rep} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
