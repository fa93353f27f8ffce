"""Settings of a small user project that uses marathon, run by tests/test_usersuite.py.

The database comes from MARATHON_TEST_DB, as in tests/settings.py. SQLite uses
Django's default test database: in memory, since NAME is a file (never
created). PostgreSQL and MariaDB use test databases of their own, named
test_marathon_usersuite_<env>_<runner> (USERSUITE_RUNNER: "django" for
`manage.py test`, "pytest" for pytest-django) unless USERSUITE_TEST_NAME
says, created and dropped by the test runner, so they never collide with the
suite's own.
"""

import importlib.util
import os
import re
import sys
import tempfile
import warnings

DB = os.environ.get("MARATHON_TEST_DB", "sqlite").lower()
DRIVER = os.environ.get("MARATHON_TEST_DRIVER", "").lower()  # as in tests/settings.py
RUNNER = os.environ.get("USERSUITE_RUNNER", "django")
ENV_NAME = (
    re.sub(r"[^a-z0-9_]+", "_", os.environ.get("TOX_ENV_NAME", "local").lower()).strip(
        "_"
    )[:30]
    or "local"
)
NAME = "marathon_usersuite_%s" % ENV_NAME  # never created: Django connects without it
TEST_NAME = os.environ.get("USERSUITE_TEST_NAME") or "test_marathon_usersuite_%s_%s" % (
    ENV_NAME,
    RUNNER,
)

if DB == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # A file name, so that the test database is Django's default: in memory.
            "NAME": os.path.join(tempfile.gettempdir(), NAME + ".sqlite3"),
        }
    }
elif DB == "postgres":
    if DRIVER == "psycopg2":
        sys.modules["psycopg"] = None  # as in tests/settings.py
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("MARATHON_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("MARATHON_PG_PORT", "5432"),
            "USER": os.environ.get("MARATHON_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("MARATHON_PG_PASSWORD", ""),
            "NAME": NAME,
            "TEST": {"NAME": TEST_NAME},
        }
    }
elif DB == "mysql":
    if DRIVER == "pymysql" or (
        not DRIVER and importlib.util.find_spec("MySQLdb") is None
    ):
        import pymysql

        # As in tests/settings.py: PyMySQL poses as mysqlclient (MySQLdb).
        pymysql.version_info = (2, 2, 1, "final", 0)
        pymysql.install_as_MySQLdb()
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "HOST": os.environ.get("MARATHON_MYSQL_HOST", "127.0.0.1"),
            "PORT": os.environ.get("MARATHON_MYSQL_PORT", "3306"),
            "USER": os.environ.get("MARATHON_MYSQL_USER", "root"),
            "PASSWORD": os.environ.get("MARATHON_MYSQL_PASSWORD", ""),
            "NAME": NAME,
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {
                "NAME": TEST_NAME,
                "CHARSET": "utf8mb4",
                "COLLATION": "utf8mb4_unicode_ci",
            },
        }
    }
else:
    raise RuntimeError(
        "MARATHON_TEST_DB must be sqlite, postgres or mysql, not %r" % DB
    )

SECRET_KEY = "usersuite-tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
INSTALLED_APPS = ["marathon", "usersuite_jobs"]
MIDDLEWARE = []

# Warnings are errors, as in the suite. A user project of its own, it keeps
# a copy of the suite's list (setup.cfg [tool:pytest] filterwarnings), as its
# pytest.ini does; tests/test_warnings.py fails if either copy drifts.
warnings.simplefilter("error")
warnings.filterwarnings("ignore", r"'cgi' is deprecated", DeprecationWarning)
warnings.filterwarnings(
    "ignore", r"distutils Version classes are deprecated", DeprecationWarning
)
