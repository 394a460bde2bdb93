#!/usr/bin/env python3
"""spark watch on MySQL/MariaDB, measured: how soon a row another
connection commits reaches its handler (--interval 1h, so only the server's
counters can wake it). Usage: python3 bench/watch_mysql.py [path/to/spark]

Makes a database of its own on 127.0.0.1:3306 (as root, no password),
commits a row every few seconds through the mysql client, and prints the
median and the worst of 20 rounds. The time runs from starting the client
(its own start-up included: an upper bound) to the line in the handler's
file. Figures are from one run on the machine it runs on."""

import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import challenge_config, lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARK = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/spark")
DB = f"spark_watch_{os.getpid()}"


def mysql(sql, db=DB):
    subprocess.run(["mysql", "--protocol=tcp", "-h127.0.0.1", "-P3306", "-uroot", db, "-e", sql],
                   check=True)


def main(rounds=20):
    mysql(f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB} CHARACTER SET utf8mb4", db="")
    try:
        mysql("""CREATE TABLE challenge (id integer PRIMARY KEY, title text NOT NULL,
                   user_email text NOT NULL, is_active integer NOT NULL, start_date date NOT NULL,
                   end_date date NOT NULL);
                 CREATE TABLE donation (id integer PRIMARY KEY, challenge_id integer NOT NULL,
                   amount integer NOT NULL);
                 INSERT INTO challenge VALUES (1, 'x', 'x@x', 1, CURRENT_DATE, CURRENT_DATE + INTERVAL 30 DAY);""")
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "spark.toml"), "w") as f:
                f.write(challenge_config(f'url = "mysql://root@127.0.0.1:3306/{DB}"'))
            events = os.path.join(folder, "events.jsonl")
            child = subprocess.Popen([SPARK, "--config", "spark.toml", "-q", "watch",
                                      "--interval", "1h"], cwd=folder)
            try:
                while lines(events) == 0:
                    time.sleep(0.01)
                seen = []
                for i in range(rounds):
                    before = lines(events)
                    # An idle watch: its last cycle is over (cycles start at
                    # most once a second).
                    time.sleep(2.5)
                    start = time.monotonic()
                    mysql(f"INSERT INTO challenge VALUES ({100 + i}, 'x', 'x@x', 1, CURRENT_DATE, "
                          "CURRENT_DATE + INTERVAL 30 DAY)")
                    while lines(events) <= before:
                        time.sleep(0.001)
                    seen.append(time.monotonic() - start)
            finally:
                child.terminate()
                child.wait()
    finally:
        mysql(f"DROP DATABASE IF EXISTS {DB}", db="")
    print(f"watch on MySQL, row committed -> handled, {len(seen)} rounds, --interval 1h:")
    print(f"  median {statistics.median(seen)*1000:.0f} ms, max {max(seen)*1000:.0f} ms, "
          f"min {min(seen)*1000:.0f} ms")


if __name__ == "__main__":
    main()
