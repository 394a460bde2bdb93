"""Settings of the takeover test's Django project.

SPARK_DJANGO_DB    : the database name: PostgreSQL on 127.0.0.1:5432 as
                     postgres, trust auth, as on the test machine (PGHOST,
                     PGPORT, PGUSER override); or, with
SPARK_DJANGO_ENGINE=mysql, MariaDB/MySQL on 127.0.0.1:3306 as root
                     without a password (through PyMySQL).
SPARK_DJANGO_OUT   : the JSON-lines file django-spark's handler appends to.
"""
import os

SECRET_KEY = "spark-takeover-test-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = []
INSTALLED_APPS = ["spark", "shop"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["SPARK_DJANGO_DB"],
        "USER": os.environ.get("PGUSER", "postgres"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
    }
}
if os.environ.get("SPARK_DJANGO_ENGINE") == "mysql":
    import pymysql

    pymysql.install_as_MySQLdb()
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": os.environ["SPARK_DJANGO_DB"],
            "USER": "root",
            "HOST": "127.0.0.1",
            "PORT": "3306",
            "OPTIONS": {"charset": "utf8mb4"},
        }
    }
USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
