"""Django settings for the benchmark: one database, chosen by bench/run.py.

MARATHON_BENCH_DB is sqlite, postgres or mysql; MARATHON_BENCH_NAME is the
database that run.py creates and drops (a file path for SQLite).
"""

import os

DB = os.environ["MARATHON_BENCH_DB"]
NAME = os.environ["MARATHON_BENCH_NAME"]

if DB == "sqlite":
    _default = {"ENGINE": "django.db.backends.sqlite3", "NAME": NAME}
elif DB == "postgres":
    _default = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("MARATHON_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("MARATHON_PG_PORT", "5432"),
        "USER": os.environ.get("MARATHON_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("MARATHON_PG_PASSWORD", ""),
        "NAME": NAME,
    }
else:
    try:
        import MySQLdb  # noqa: F401  (mysqlclient, if installed)
    except ImportError:  # PyMySQL stands in; Django wants mysqlclient >= 2.2.1
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
INSTALLED_APPS = ["marathon"]
MIGRATION_MODULES = {"marathon": "marathon_migrations"}
SECRET_KEY = "django-marathon-bench-only"
USE_TZ = True
TIME_ZONE = "UTC"
DEBUG = False
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING = {"version": 1, "disable_existing_loggers": False}
