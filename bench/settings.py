"""Django settings for the benchmark: one database, chosen by bench/run.py.

MARATHON_BENCH_DB is sqlite, postgres or mysql; MARATHON_BENCH_NAME is the
database that run.py creates and drops (a file path for SQLite);
MARATHON_BENCH_DRIVER the driver Django must use (run.py's DRIVERS).
"""

import os
import sys

DB = os.environ["MARATHON_BENCH_DB"]
NAME = os.environ["MARATHON_BENCH_NAME"]
DRIVER = os.environ["MARATHON_BENCH_DRIVER"]

if DB == "sqlite":
    _default = {"ENGINE": "django.db.backends.sqlite3", "NAME": NAME}
elif DB == "postgres":
    if DRIVER == "psycopg2":  # Django 4.2+ would use psycopg 3 if it could import it
        sys.modules["psycopg"] = None
    else:
        import psycopg  # noqa: F401  (fails here, not later, if it is missing)
    _default = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("MARATHON_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("MARATHON_PG_PORT", "5432"),
        "USER": os.environ.get("MARATHON_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("MARATHON_PG_PASSWORD", ""),
        "NAME": NAME,
    }
else:
    if DRIVER == "mysqlclient":
        import MySQLdb  # noqa: F401
    else:  # PyMySQL poses as mysqlclient; Django wants mysqlclient >= 2.2.1
        import pymysql

        pymysql.version_info = (2, 2, 1, "final", 0)
        pymysql.install_as_MySQLdb()
    _default = {
        "ENGINE": "django.db.backends.mysql",
        "HOST": os.environ.get("MARATHON_MYSQL_HOST", "127.0.0.1"),
        "PORT": os.environ.get("MARATHON_MYSQL_PORT", "3306"),
        "USER": os.environ.get("MARATHON_MYSQL_USER", "root"),
        "PASSWORD": os.environ.get("MARATHON_MYSQL_PASSWORD", ""),
        "NAME": NAME,
        "OPTIONS": {"charset": "utf8mb4"},
    }

DATABASES = {"default": _default}
if DRIVER == "psycopg":
    # The same database through psycopg 3 as its raw driver works by default:
    # parameters bound on the server, a statement prepared once it has run
    # five times (Django binds on the client and prepares nothing).
    DATABASES["prepared"] = dict(
        _default, OPTIONS={"server_side_binding": True, "prepare_threshold": 5}
    )
INSTALLED_APPS = ["marathon"]
MIGRATION_MODULES = {"marathon": "marathon_migrations"}
SECRET_KEY = "django-marathon-bench-only"
USE_TZ = True
TIME_ZONE = "UTC"
DEBUG = False
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING = {"version": 1, "disable_existing_loggers": False}
