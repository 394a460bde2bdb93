#!/usr/bin/env python3
"""A Django shop moves from django-spark to spark, as the README's "Moving
from django-spark" says, against real Django 3.2.25 + django-spark 0.3.0 on
the PostgreSQL test server, and (with --mysql) on the MariaDB/MySQL one.

Usage: takeover.py SPARK_BIN [--mysql]

Needs python3 with venv and pip (PyPI reachable the first time: the venv is
kept at $SPARK_DJANGO_VENV, default /tmp/spark-django-venv, and made again
when requirements.txt changes), psql, and PostgreSQL at $PGHOST:$PGPORT
(default 127.0.0.1:5432) as $PGUSER (default postgres) with CREATEDB and
CREATEROLE; with --mysql, the mysql client and MariaDB/MySQL at
127.0.0.1:3306 as root without a password. Exit 0 when every step holds, 1
(saying which) otherwise.

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


def mysql(db, sql):
    args = ["mysql", "--protocol=tcp", "-h127.0.0.1", "-P3306", "-uroot", "-N", "-B",
            "--default-character-set=utf8mb4", "-e", sql]
    if db:
        args.insert(1, db)
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return out.stdout.strip()


class Postgres:
    """The PostgreSQL test server, as the shop's database."""
    engine = "postgresql"

    def sql(self, db, sql):
        return psql(db, sql)

    def create(self, name):
        psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        psql("postgres", f'CREATE DATABASE "{name}"')
        psql(name, """
            CREATE TABLE challenge (id serial PRIMARY KEY, title text NOT NULL,
              user_email text NOT NULL, is_active boolean NOT NULL,
              start_date date NOT NULL, end_date date NOT NULL);
            CREATE TABLE donation (id serial PRIMARY KEY,
              challenge_id integer NOT NULL REFERENCES challenge(id), amount integer NOT NULL);""")

    def drop(self, name):
        psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def add_challenges(self, db, first, last):
        psql(db, f"""
            INSERT INTO challenge (id, title, user_email, is_active, start_date, end_date)
            SELECT i, 'challenge ' || i, 'u' || i || '@example.org', i % 5 <> 0,
                   DATE '{AS_OF}' - (i % 9), DATE '{AS_OF}' + (i % 7) - 3
            FROM generate_series({first}, {last}) AS i;
            SELECT setval('challenge_id_seq', {last});""")

    def url(self, db, user):
        return f"postgresql://{user}@{PG['PGHOST']}:{PG['PGPORT']}/{db}"

    def admin(self):
        return PG["PGUSER"]

    def make_user(self, user):
        psql("postgres", f"DROP ROLE IF EXISTS {user}; CREATE ROLE {user} LOGIN")
        return user

    def drop_user(self, user):
        psql("postgres", f"DROP ROLE IF EXISTS {user}")

    def grant_sources(self, db, grantee):
        return f"GRANT SELECT ON challenge, donation TO {grantee};"


class Mysql:
    """The MariaDB/MySQL test server, as the shop's database."""
    engine = "mysql"
    password = "takeover-Pw-9"

    def sql(self, db, sql):
        return mysql(db, sql)

    def create(self, name):
        mysql(None, f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        mysql(name, """
            CREATE TABLE challenge (id integer AUTO_INCREMENT PRIMARY KEY, title longtext NOT NULL,
              user_email longtext NOT NULL, is_active bool NOT NULL,
              start_date date NOT NULL, end_date date NOT NULL);
            CREATE TABLE donation (id integer AUTO_INCREMENT PRIMARY KEY,
              challenge_id integer NOT NULL REFERENCES challenge(id), amount integer NOT NULL);""")

    def drop(self, name):
        mysql(None, f"DROP DATABASE IF EXISTS `{name}`")

    def add_challenges(self, db, first, last):
        mysql(db, f"""
            INSERT INTO challenge (id, title, user_email, is_active, start_date, end_date)
            WITH RECURSIVE s(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM s WHERE i < {last})
            SELECT i, CONCAT('challenge ', i), CONCAT('u', i, '@example.org'), i % 5 <> 0,
                   DATE '{AS_OF}' - INTERVAL (i % 9) DAY, DATE '{AS_OF}' + INTERVAL ((i % 7) - 3) DAY
            FROM s;""")

    def url(self, db, user):
        return f"mysql://{user}@127.0.0.1:3306/{db}"

    def admin(self):
        return "root"

    def make_user(self, user):
        mysql(None, f"DROP USER IF EXISTS '{user}'@'%'; "
                    f"CREATE USER '{user}'@'%' IDENTIFIED BY '{self.password}'")
        return f"'{user}'@'%'"

    def drop_user(self, user):
        mysql(None, f"DROP USER IF EXISTS '{user}'@'%'")

    def grant_sources(self, db, grantee):
        return (f"GRANT SELECT ON `{db}`.`challenge` TO {grantee}; "
                f"GRANT SELECT ON `{db}`.`donation` TO {grantee};")


class Shop:
    """One database, the Django project on it, and spark's config for it."""

    def __init__(self, name, work):
        self.db = name
        self.work = work
        DB.create(name)
        self.django_out = os.path.join(work, f"{name}-django.jsonl")
        self.spark_out = os.path.join(work, f"{name}-spark.jsonl")

    def add_challenges(self, first, last):
        DB.add_challenges(self.db, first, last)

    def manage(self, *args, ok=True):
        env = dict(os.environ, **PG, SPARK_DJANGO_DB=self.db, SPARK_DJANGO_OUT=self.django_out,
                   SPARK_DJANGO_TODAY=AS_OF, SPARK_DJANGO_ENGINE=DB.engine,
                   PYTHONDONTWRITEBYTECODE="1")
        done = subprocess.run([PYTHON, os.path.join(HERE, "manage.py"), *args],
                              capture_output=True, text=True, env=env)
        if ok and done.returncode != 0:
            raise Failed(f"manage.py {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
        return done

    def config(self, user=None):
        user = user or DB.admin()
        path = os.path.join(self.work, f"{self.db}-{user}.toml")
        password = 'password_env = "SPARK_DB_PASSWORD"' if user != DB.admin() and DB.engine == "mysql" else ""
        with open(path, "w") as f:
            f.write(f"""
[database]
url = "{DB.url(self.db, user)}"
{password}

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

    def spark(self, *args, user=None, ok=True):
        env = dict(os.environ, **PG, SPARK_DB_PASSWORD=getattr(DB, "password", ""))
        done = subprocess.run([SPARK, "--config", self.config(user), *args],
                              capture_output=True, text=True, env=env)
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
    repr_contexts = DB.sql(shop.db, "SELECT count(*) FROM spark_event WHERE context LIKE '{''challenge'': <%'")
    check(int(repr_contexts) == len(old), "django-spark stored repr() contexts")
    shop.add_challenges(41, 60)

    # A DBA makes spark's tables and gives spark's role exactly what it prints.
    role = f"spark_app_{os.getpid()}"
    grantee = DB.make_user(role)
    try:
        shop.spark("migrate")
        grants = shop.spark("migrate", "--print-grants", grantee).stdout
        DB.sql(shop.db, grants + "\n" + DB.grant_sources(shop.db, grantee))
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
        DB.drop(shop.db)
        DB.drop_user(role)


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
        DB.drop(shop.db)


def main():
    global PYTHON, SPARK, DB
    args = [a for a in sys.argv[1:] if a != "--mysql"]
    if len(args) != 1:
        sys.exit(__doc__)
    DB = Mysql() if "--mysql" in sys.argv[1:] else Postgres()
    SPARK = os.path.abspath(args[0])
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
    print(f"takeover on {DB.engine}: every step held")


if __name__ == "__main__":
    main()
