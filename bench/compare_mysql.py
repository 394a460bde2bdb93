#!/usr/bin/env python3
"""compare_pg.sh's twin on MySQL/MariaDB: the SQL floor against spark, each
on a fresh database of its own, run 1 (every event new) and run 2 (none).

Usage: compare_mysql.py SPARK_BIN N [--seed 1] [--reps 1]

The dataset is ../shared/bench/make_dataset.py's (N challenges and their
donations, dates around today), loaded into each contender's database with
the mysql client (date columns as `date`, as Django's DateField makes
them). The floor is one transaction of set-based SQL: the example source's
rules over every challenge at once, inserting the keys not seen yet into
spark_event (created with the DDL Django makes) and reading back the ones
it inserted; spark runs `process-sources` with a jsonl handler, as
compare.sh does. Both key sets must be equal, and run 2 must dispatch
nothing. MySQL comes from MYSQL_URL (default mysql://root@127.0.0.1:3306,
no password): the user creates and drops the databases.

Prints one line per run, then a table: seconds, ratios to the floor, and
spark's max RSS.
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
from datetime import date
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench"))

# What Django 3.2 makes for spark.Event on MySQL (sqlmigrate spark 0001 and
# 0002, the result in one statement), made idempotent.
DDL = """CREATE TABLE IF NOT EXISTS `spark_event` (`key` varchar(100) NOT NULL PRIMARY KEY,
  `group` varchar(50) NOT NULL, `created_at` datetime(6) NOT NULL, `context` longtext NOT NULL,
  KEY `spark_event_group_95029792` (`group`));"""

# events_from_challenge's rules, set-based (see floor_pg.py); the run's own
# created_at tells the keys it inserted.
FLOOR = """
START TRANSACTION;
SET @today = DATE '{today}', @mark = '{mark}';
INSERT INTO spark_event (`key`, `group`, `created_at`, `context`)
WITH a AS (SELECT id, start_date, end_date FROM challenge WHERE is_active <> 0),
ev (grp, id) AS (
  SELECT 'challenge_created', a.id FROM a
  UNION ALL
  SELECT 'challenge_inactivity_2d', a.id FROM a
   WHERE a.start_date < @today - INTERVAL 2 DAY
     AND (SELECT count(*) FROM donation d WHERE d.challenge_id = a.id) < 2
  UNION ALL
  SELECT 'challenge_ends_2d', a.id FROM a WHERE a.end_date <= @today + INTERVAL 2 DAY
  UNION ALL
  SELECT 'challenge_ended', a.id FROM a WHERE a.end_date < @today
)
SELECT CONCAT(ev.grp, '_', ev.id), ev.grp, @mark,
       CONCAT('{{''challenge'': <Challenge: Challenge object (', ev.id, ')>}}')
  FROM ev
 WHERE NOT EXISTS (SELECT 1 FROM spark_event s WHERE s.`key` = CONCAT(ev.grp, '_', ev.id));
SELECT `key`, `group` FROM spark_event WHERE created_at = @mark;
COMMIT;
"""


def server():
    u = urlsplit(os.environ.get("MYSQL_URL", "mysql://root@127.0.0.1:3306"))
    return u.hostname or "127.0.0.1", str(u.port or 3306), u.username or "root", u.password or ""


def mysql(db, sql=None, script=None, out=None):
    host, port, user, password = server()
    args = ["mysql", "--protocol=tcp", f"-h{host}", f"-P{port}", f"-u{user}", "-N", "-B",
            "--default-character-set=utf8mb4"]
    env = dict(os.environ, MYSQL_PWD=password) if password else os.environ
    if db:
        args.append(db)
    if sql is not None:
        args += ["-e", sql]
    stdin = open(script) if script else None
    try:
        done = subprocess.run(args, stdin=stdin, check=True, text=True, env=env,
                              stdout=out or subprocess.PIPE)
    finally:
        if stdin:
            stdin.close()
    return done.stdout


def dataset_sql(sqlite_path, out_path):
    """The dataset as MySQL statements: the schema, rows 1,000 per INSERT."""
    import sqlite3
    db = sqlite3.connect(sqlite_path)
    with open(out_path, "w") as f:
        f.write("""CREATE TABLE challenge (id integer PRIMARY KEY, title longtext NOT NULL,
  user_email longtext NOT NULL, is_active integer NOT NULL, start_date date NOT NULL,
  end_date date NOT NULL) CHARACTER SET utf8mb4;
CREATE TABLE donation (id integer PRIMARY KEY, challenge_id integer NOT NULL,
  amount integer NOT NULL) CHARACTER SET utf8mb4;
""")
        for table, columns in [("challenge", 6), ("donation", 3)]:
            rows = db.execute(f"SELECT * FROM {table}")
            while True:
                chunk = rows.fetchmany(1000)
                if not chunk:
                    break
                values = ",".join(
                    "(" + ",".join(literal(v) for v in row) + ")" for row in chunk)
                f.write(f"INSERT INTO {table} VALUES {values};\n")
        f.write("CREATE INDEX donation_challenge_id ON donation (challenge_id);\n")
        f.write("ANALYZE TABLE challenge, donation;\n")


def literal(v):
    if v is None:
        return "NULL"
    if isinstance(v, (int, float)):
        return str(v)
    return "'" + str(v).replace("\\", "\\\\").replace("'", "''") + "'"


def rss_of(path):
    try:
        for line in open(path):
            if line.startswith("max_rss_kib="):
                return int(line.split("=")[1])
    except OSError:
        pass
    return None


def run_floor(db, out):
    mark = f"2001-01-01 00:00:00.{int(time.time() * 1e6) % 1000000:06d}"
    sql = FLOOR.format(today=date.today().isoformat(), mark=mark)
    t0 = time.monotonic()
    rows = mysql(db, DDL + sql)
    seconds = time.monotonic() - t0
    with open(out, "w") as f:
        for line in rows.splitlines():
            key, group = line.split("\t")
            f.write(json.dumps({"key": key, "group": group}) + "\n")
    return seconds, len(rows.splitlines())


def run_spark(spark, work, db, run):
    host, port, user, password = server()
    out = os.path.join(work, f"spark{run}.jsonl")
    if os.path.exists(out):
        os.remove(out)
    cfg = os.path.join(work, "spark.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[database]
url = "mysql://{user}@{host}:{port}/{db}"
password_env = "SPARK_BENCH_PASSWORD"

[[sources]]
name = "challenges"
function = "challenge_events"
query = "SELECT c.*, (SELECT count(*) FROM donation d WHERE d.challenge_id = c.id) AS donation_count FROM challenge c"

[[handlers]]
name = "bench-log"
group = "^challenge"
kind = "jsonl"
path = {json.dumps(out)}
""")
    rss = os.path.join(work, f"spark{run}.rss")
    t0 = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-f", "max_rss_kib=%M", "-o", rss,
                           spark, "--config", cfg, "process-sources"],
                          capture_output=True, text=True,
                          env=dict(os.environ, SPARK_BENCH_PASSWORD=password))
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"spark run {run} failed ({done.returncode}): {done.stdout}{done.stderr}")
    lines = sum(1 for _ in open(out)) if os.path.exists(out) else 0
    return seconds, lines, rss_of(rss)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spark")
    ap.add_argument("n", type=int)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    spark = os.path.abspath(args.spark)
    work = tempfile.mkdtemp(prefix=f"spark-bench-mysql-{args.n}-")
    version = mysql(None, "SELECT VERSION()").strip()
    results = {"floor": {1: [], 2: []}, "spark": {1: [], 2: []}}
    rss = []
    ok = True
    try:
        dataset = os.path.join(work, "dataset.sqlite3")
        subprocess.run([sys.executable, os.path.join(SHARED, "make_dataset.py"), str(args.n),
                        dataset, "--seed", str(args.seed)], check=True)
        script = os.path.join(work, "dataset.sql")
        dataset_sql(dataset, script)
        for rep in range(args.reps):
            dbs = {c: f"spark_bench_{args.n}_{os.getpid()}_{rep}_{c}" for c in ("floor", "spark")}
            try:
                for db in dbs.values():
                    mysql(None, f"DROP DATABASE IF EXISTS `{db}`; "
                                f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
                    mysql(db, script=script)
                for run in (1, 2):
                    s, events = run_floor(dbs["floor"], os.path.join(work, f"floor{run}.jsonl"))
                    results["floor"][run].append(s)
                    print(f"floor run {run}: {s:.3f} s, {events} events", flush=True)
                    if run == 2 and events:
                        print(f"FAIL: the floor's run 2 inserted {events} keys")
                        ok = False
                for run in (1, 2):
                    s, events, kib = run_spark(spark, work, dbs["spark"], run)
                    results["spark"][run].append(s)
                    rss.append(kib)
                    print(f"spark run {run}: {s:.3f} s, {events} events, max RSS {kib} KiB",
                          flush=True)
                    if run == 2 and events:
                        print(f"FAIL: spark's run 2 dispatched {events} events")
                        ok = False
                verified = subprocess.run(
                    [sys.executable, os.path.join(SHARED, "verify.py"),
                     os.path.join(work, "floor1.jsonl"), f"spark={os.path.join(work, 'spark1.jsonl')}"])
                ok = ok and verified.returncode == 0
            finally:
                for db in dbs.values():
                    mysql(None, f"DROP DATABASE IF EXISTS `{db}`")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {c: {r: statistics.median(v) for r, v in runs.items()} for c, runs in results.items()}
    print()
    print(f"N={args.n} challenges, seed={args.seed}, {version}, medians of {args.reps}")
    print("| contender | run 1 s | run 2 s | vs floor run 1 | vs floor run 2 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for c in ("floor", "spark"):
        print(f"| {c} | {med[c][1]:.3f} | {med[c][2]:.3f} | "
              f"{med[c][1] / med['floor'][1]:.2f}x | {med[c][2] / med['floor'][2]:.2f}x |")
    kib = [k for k in rss if k]
    if kib:
        print(f"spark max RSS: {max(kib) / 1024:.1f} MiB")
    print("OK: key sets identical, no second-run dispatches" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
