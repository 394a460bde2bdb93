#!/usr/bin/env python3
"""A Django shop moves from django-spark to spark, as the README's "Moving
from django-spark" says, against real Django 3.2.25 + django-spark 0.3.0 on
the PostgreSQL test server.

Usage: takeover.py SPARK_BIN

Needs python3 with venv and pip (PyPI reachable the first time: the venv is
kept at $SPARK_DJANGO_VENV, default /tmp/spark-django-venv, and made again
when requirements.txt changes), psql, and PostgreSQL at $PGHOST:$PGPORT
(default 127.0.0.1:5432) as $PGUSER (default postgres) with CREATEDB and
CREATEROLE. Exit 0 when every step holds, 1 (saying which) otherwise.

1. Django first: `manage.py migrate` makes spark_event, `manage.py
   process_spark_sources` records and delivers django-spark's keys (repr
   contexts); then new challenges arrive. A DBA runs `spark migrate` and
   the grants `spark migrate --print-grants` prints; spark runs as that
   role: it dispatches the new challenges' events only (none of
   django-spark's keys again), a second run nothing, and Django's Event
   model reads spark's rows back. A challenge saved through the ORM while
   both run is dispatched once, by whichever records it first.
2. spark first: spark makes spark_event with Django's DDL; `manage.py
   migrate` then fails until `manage.py migrate spark 0002 --fake`, which
   `spark check` suggests; after it Django's own run dispatches nothing
   spark already did.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.environ.get("SPARK_DJANGO_VENV", "/tmp/spark-django-venv")
AS_OF = "2026-03-10"
PG = {
    "PGHOST": os.environ.get("PGHOST", "127.0.0.1"),
    "PGPORT": os.environ.get("PGPORT", "5432"),
    "PGUSER": os.environ.get("PGUSER", "postgres"),
}
QUERY = ("SELECT c.*, (SELECT count(*) FROM donation d WHERE d.challenge_id = c.id) "
         "AS donation_count FROM challenge c")


class Failed(Exception):
    pass


def check(ok, what):
    if not ok:
        raise Failed(what)
    print(f"ok: {what}", flush=True)


def venv_python():
    req = os.path.join(HERE, "requirements.txt")
    stamp = os.path.join(VENV, ".requirements.txt")
    wanted = open(req).read()
    if not (os.path.exists(os.path.join(VENV, "bin", "python"))
            and os.path.exists(stamp) and open(stamp).read() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "--quiet",
                        "--disable-pip-version-check", "-r", req], check=True)
        with open(stamp, "w") as f:
            f.write(wanted)
    return os.path.join(VENV, "bin", "python")


def psql(db, sql, user=None):
    env = dict(os.environ, **PG, PGOPTIONS="-c client_min_messages=warning")
    if user:
        env["PGUSER"] = user
    out = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                         check=True, capture_output=True, text=True, env=env)
    return out.stdout.strip()


class Shop:
    """One database, the Django project on it, and spark's config for it."""

    def __init__(self, name, work):
        self.db = name
        self.work = work
        psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        psql("postgres", f'CREATE DATABASE "{name}"')
        psql(name, """
            CREATE TABLE challenge (id serial PRIMARY KEY, title text NOT NULL,
              user_email text NOT NULL, is_active boolean NOT NULL,
              start_date date NOT NULL, end_date date NOT NULL);
            CREATE TABLE donation (id serial PRIMARY KEY,
              challenge_id integer NOT NULL REFERENCES challenge(id), amount integer NOT NULL);""")
        self.django_out = os.path.join(work, f"{name}-django.jsonl")
        self.spark_out = os.path.join(work, f"{name}-spark.jsonl")

    def add_challenges(self, first, last):
        psql(self.db, f"""
            INSERT INTO challenge (id, title, user_email, is_active, start_date, end_date)
            SELECT i, 'challenge ' || i, 'u' || i || '@example.org', i % 5 <> 0,
                   DATE '{AS_OF}' - (i % 9), DATE '{AS_OF}' + (i % 7) - 3
            FROM generate_series({first}, {last}) AS i;
            SELECT setval('challenge_id_seq', {last});""")

    def manage(self, *args, ok=True):
        env = dict(os.environ, **PG, SPARK_DJANGO_DB=self.db, SPARK_DJANGO_OUT=self.django_out,
                   SPARK_DJANGO_TODAY=AS_OF, PYTHONDONTWRITEBYTECODE="1")
        done = subprocess.run([PYTHON, os.path.join(HERE, "manage.py"), *args],
                              capture_output=True, text=True, env=env)
        if ok and done.returncode != 0:
            raise Failed(f"manage.py {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
        return done

    def config(self, user="postgres"):
        path = os.path.join(self.work, f"{self.db}-{user}.toml")
        with open(path, "w") as f:
            f.write(f"""
[database]
url = "postgresql://{user}@{PG['PGHOST']}:{PG['PGPORT']}/{self.db}"

[[sources]]
name = "challenges"
function = "challenge_events"
query = "{QUERY}"

[[handlers]]
name = "log"
group = "^challenge"
kind = "jsonl"
path = "{self.spark_out}"

[[handlers]]
name = "notify"
group = "^challenge_ended$"
kind = "command"
command = ["/bin/true"]
""")
        return path

    def spark(self, *args, user="postgres", ok=True):
        done = subprocess.run([SPARK, "--config", self.config(user), *args],
                              capture_output=True, text=True, env=dict(os.environ, **PG))
        if ok and done.returncode != 0:
            raise Failed(f"spark {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def keys(self, path):
        if not os.path.exists(path):
            return []
        return [json.loads(line)["key"] for line in open(path) if line.strip()]


def django_first(work):
    shop = Shop(f"spark_takeover_{os.getpid()}_a", work)
    shop.add_challenges(1, 40)
    shop.manage("migrate", "--verbosity", "0")
    shop.manage("process_spark_sources")
    old = shop.keys(shop.django_out)
    check(len(old) > 40, f"django-spark recorded and delivered its keys ({len(old)})")
    repr_contexts = psql(shop.db, "SELECT count(*) FROM spark_event WHERE context LIKE '{''challenge'': <%'")
    check(int(repr_contexts) == len(old), "django-spark stored repr() contexts")
    shop.add_challenges(41, 60)

    # A DBA makes spark's tables and gives spark's role exactly what it prints.
    role = f"spark_app_{os.getpid()}"
    psql("postgres", f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN")
    try:
        shop.spark("migrate")
        grants = shop.spark("migrate", "--print-grants", role).stdout
        psql(shop.db, grants + f"\nGRANT SELECT ON challenge, donation TO {role};")
        shop.spark("check", user=role)
        first = shop.spark("process-sources", "--as-of", AS_OF, user=role)
        new = shop.keys(shop.spark_out)
        check(not set(new) & set(old), "spark dispatched none of django-spark's keys again")
        check(new and all(int(k.rsplit("_", 1)[1]) > 40 for k in new),
              f"spark dispatched the new challenges' events only ({len(new)}): {first.stdout.strip()}")
        check(len(new) == len(set(new)), "each once")
        again = shop.spark("process-sources", "--as-of", AS_OF, user=role)
        check(" 0 new," in again.stdout, f"a second run dispatches nothing: {again.stdout.strip()}")
        check(shop.keys(shop.spark_out) == new, "and delivers nothing")
        # Django reads spark's rows through its Event model.
        read = shop.manage("shell", "-c", (
            "import json; from spark.models import Event; "
            f"rows = Event.objects.filter(key__in={sorted(new)!r}); "
            "print(json.dumps([[e.key, e.group, e.created_at is not None, "
            "isinstance(json.loads(e.context), dict)] for e in rows]))"))
        rows = json.loads(read.stdout.strip().splitlines()[-1])
        check(len(rows) == len(new) and all(r[2] and r[3] for r in rows),
              f"Django's Event model reads spark's {len(rows)} rows (created_at, JSON context)")
        # A save through the ORM while both run: dispatched once, by one of them.
        shop.manage("shell", "-c", (
            "from datetime import date; from shop.models import Challenge; "
            "Challenge.objects.create(id=61, title='saved', user_email='s@example.org', "
            f"is_active=True, start_date=date.fromisoformat('{AS_OF}'), "
            f"end_date=date.fromisoformat('{AS_OF}'))"))
        shop.spark("process-sources", "--as-of", AS_OF, user=role)
        both = shop.keys(shop.django_out) + shop.keys(shop.spark_out)
        saved = [k for k in both if k.endswith("_61")]
        check(sorted(saved) == sorted(set(saved)) and "challenge_created_61" in saved,
              f"a challenge saved through Django is dispatched once ({len(saved)} events)")
    finally:
        psql("postgres", f'DROP DATABASE IF EXISTS "{shop.db}" WITH (FORCE)')
        psql("postgres", f"DROP ROLE IF EXISTS {role}")


def spark_first(work):
    shop = Shop(f"spark_takeover_{os.getpid()}_b", work)
    try:
        shop.add_challenges(1, 30)
        shop.spark("process-sources", "--as-of", AS_OF)
        done = shop.spark_out and shop.keys(shop.spark_out)
        check(len(done) > 30, f"spark made spark_event and dispatched ({len(done)})")
        failed = shop.manage("migrate", "--verbosity", "0", ok=False)
        check(failed.returncode != 0 and "already exists" in failed.stderr,
              "Django's migrate fails on the table spark made")
        told = shop.spark("check")
        check("migrate spark 0002 --fake" in told.stdout + told.stderr,
              "spark check says to fake django-spark's migrations")
        shop.manage("migrate", "spark", "0002", "--fake", "--verbosity", "0")
        shop.manage("migrate", "--verbosity", "0")
        shop.manage("process_spark_sources")
        check(shop.keys(shop.django_out) == [],
              "after faking them, Django's own run dispatches nothing spark did")
    finally:
        psql("postgres", f'DROP DATABASE IF EXISTS "{shop.db}" WITH (FORCE)')


def main():
    global PYTHON, SPARK
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    SPARK = os.path.abspath(sys.argv[1])
    PYTHON = venv_python()
    with tempfile.TemporaryDirectory(prefix="spark-takeover-") as work:
        try:
            django_first(work)
            spark_first(work)
        except (Failed, subprocess.CalledProcessError) as e:
            print(f"FAILED: {e}", file=sys.stderr)
            if isinstance(e, subprocess.CalledProcessError):
                print(e.stderr, file=sys.stderr)
            sys.exit(1)
    print("takeover: every step held")


if __name__ == "__main__":
    main()
