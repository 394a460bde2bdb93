#!/usr/bin/env python3
"""Scale-out of delivery on PostgreSQL (or MySQL/MariaDB): N spark workers
share one backlog.

Usage: scaleout_pg.py SPARK_BIN [--events 4000] [--delay-ms 20] [--workers 1,2,4,8]
                      [--mysql]

For each worker count W: a fresh PostgreSQL database (on PG_URL, default
postgresql://postgres@127.0.0.1:5432/test, whose role needs CREATEDB; with
--mysql, a MariaDB/MySQL database on 127.0.0.1:3306 as root) holds
EVENTS/2 challenges (each yields challenge_created and
challenge_inactivity_2d), and a loopback HTTP server answers each POST after
DELAY ms, on a thread per request, counting what each Idempotency-Key (event
key) received. W `spark process-sources` processes start at once (they race
over the records: each key is recorded once, by whichever reads it first;
then all of them claim and deliver chunks). The time is from the start to
the server's last answer; events/s = EVENTS / time. Every key must be
received exactly once (no worker is killed here).

Prints one line per W and a table; exit 1 if a key was lost or repeated.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

# The loopback webhook server and its counter, shared with handlers.py.
from handlers import Counter, http_server as serve


def psql(url, sql):
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                   check=True, stdout=subprocess.DEVNULL, env=env)


def db_url(admin, name):
    u = urlsplit(admin)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def mysql(db, sql):
    args = ["mysql", "--protocol=tcp", "-h127.0.0.1", "-P3306", "-uroot", "-e", sql]
    if db:
        args.insert(1, db)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def make_db(admin, name, n, my):
    """A fresh database of n challenges; its URL."""
    if my:
        mysql(None, f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        mysql(name, f"""
            CREATE TABLE challenge (id integer PRIMARY KEY, title text NOT NULL, user_email text NOT NULL,
              is_active integer NOT NULL, start_date date NOT NULL, end_date date NOT NULL);
            CREATE TABLE donation (id integer AUTO_INCREMENT PRIMARY KEY, challenge_id integer NOT NULL,
              amount integer NOT NULL);
            SET SESSION max_recursive_iterations = {n + 1};
            INSERT INTO challenge WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})
              SELECT i, CONCAT('challenge ', i), CONCAT('u', i, '@x'), 1, DATE '2026-01-01', DATE '2026-06-01'
              FROM s;""")
        return f"mysql://root@127.0.0.1:3306/{name}"
    psql(admin, f'DROP DATABASE IF EXISTS "{name}"')
    psql(admin, f'CREATE DATABASE "{name}"')
    url = db_url(admin, name)
    psql(url, f"""
        CREATE TABLE challenge (id integer PRIMARY KEY, title text NOT NULL, user_email text NOT NULL,
          is_active integer NOT NULL, start_date date NOT NULL, end_date date NOT NULL);
        CREATE TABLE donation (id serial PRIMARY KEY, challenge_id integer NOT NULL, amount integer NOT NULL);
        INSERT INTO challenge SELECT i, 'challenge ' || i, 'u' || i || '@x', 1, DATE '2026-01-01', DATE '2026-06-01'
          FROM generate_series(1, {n}) AS i;""")
    psql(url, "VACUUM ANALYZE")
    return url


def drop_db(admin, name, my):
    if my:
        mysql(None, f"DROP DATABASE IF EXISTS `{name}`")
    else:
        psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(spark, admin, workers, events, delay, my=False):
    name = f"spark_scaleout_{os.getpid()}_{workers}"
    url = make_db(admin, name, events // 2, my)
    counter = Counter()
    server = serve(counter, delay)
    work = tempfile.mkdtemp(prefix="spark-scaleout-")
    try:
        config = os.path.join(work, "spark.toml")
        with open(config, "w") as f:
            f.write(f"""
[database]
url = {json.dumps(url)}

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
        procs = [subprocess.Popen([spark, "--config", config, "-q", "process-sources",
                                   "--as-of", "2026-03-10"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(workers)]
        codes = []
        for p in procs:
            out, err = p.communicate()
            codes.append(p.returncode)
            if p.returncode != 0:
                sys.stderr.write(err.decode(errors="replace"))
        seconds = counter.last - started
        received = sum(counter.keys.values())
        unique = len(counter.keys)
        repeated = received - unique
        ok = unique == events and repeated == 0 and all(c == 0 for c in codes)
        return seconds, unique, repeated, ok
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        drop_db(admin, name, my)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spark")
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--mysql", action="store_true", help="on MariaDB/MySQL at 127.0.0.1:3306")
    args = ap.parse_args()
    admin = os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    rows = []
    failed = False
    for w in [int(x) for x in args.workers.split(",")]:
        seconds, unique, repeated, ok = run(os.path.abspath(args.spark), admin, w,
                                            args.events, args.delay_ms / 1000, args.mysql)
        rate = args.events / seconds
        rows.append((w, seconds, rate, unique, repeated, ok))
        print(f"workers={w} seconds={seconds:.2f} events_per_s={rate:.1f} "
              f"keys={unique} repeated={repeated} ok={ok}", flush=True)
        failed |= not ok
    base = rows[0][2]
    print()
    print("| workers | seconds | events/s | vs 1 worker | keys received once |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for w, seconds, rate, unique, repeated, ok in rows:
        print(f"| {w} | {seconds:.2f} | {rate:.1f} | {rate / base:.2f}x | "
              f"{'yes' if ok else f'no ({unique} keys, {repeated} repeats)'} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
