"""Django settings for the django-marathon test suite.

The database comes from MARATHON_TEST_DB: "sqlite" (default), "postgres" or
"mysql" (MariaDB/MySQL), and its driver from MARATHON_TEST_DRIVER (below).
Names are unique per tox env so parallel envs never collide, and only
databases named *marathon* are ever created or dropped.

Child processes started by the tests import these settings with
MARATHON_TEST_CHILD=1: they then use the TEST database that pytest-django
created, as their default database.
"""

import importlib.util
import json
import os
import re
import sys
import tempfile
import warnings

BASE_DIR = os.path.dirname(os.path.abspath(__file__))

# --- Which database, and names unique per tox env --------------------------

DB = os.environ.get("MARATHON_TEST_DB", "sqlite").lower()
if DB not in ("sqlite", "postgres", "mysql"):
    raise RuntimeError(
        "MARATHON_TEST_DB must be sqlite, postgres or mysql, not %r" % DB
    )
CHILD = os.environ.get("MARATHON_TEST_CHILD") == "1"

# MARATHON_TEST_DRIVER, set by tox.ini, names the driver an env tests, and
# tests/conftest.py stops the run if Django uses another. Unset, it is the one
# Django would pick among those installed: psycopg (3) before psycopg2,
# mysqlclient before PyMySQL.
DRIVERS = {
    "sqlite": ("sqlite3",),
    "postgres": ("psycopg", "psycopg2"),
    "mysql": ("mysqlclient", "pymysql"),
}
DRIVER = os.environ.get("MARATHON_TEST_DRIVER", "").lower()
if DRIVER and DRIVER not in DRIVERS[DB]:
    raise RuntimeError(
        "MARATHON_TEST_DRIVER must be one of %s for %s, not %r"
        % (", ".join(DRIVERS[DB]), DB, DRIVER)
    )

# MARATHON_TEST_ID, if set, prefixes the tox env's name: two checkouts can
# then run the same tox env against one database server at once.
ENV_NAME = (
    re.sub(
        r"[^a-z0-9_]+",
        "_",
        (
            os.environ.get("MARATHON_TEST_ID", "")
            + "_"
            + os.environ.get("TOX_ENV_NAME", "local")
        ).lower(),
    ).strip("_")[:40]
    or "local"
)
NAME = "marathon_%s" % ENV_NAME  # never created: Django connects without it
TEST_NAME = "test_marathon_%s" % ENV_NAME  # created and dropped by the tests

if DB == "sqlite":
    # A file database (not :memory:) so child processes can share it.
    _tmp = (
        os.path.join(os.environ["TOX_ENV_DIR"], "tmp")
        if os.environ.get("TOX_ENV_DIR")
        else tempfile.gettempdir()
    )
    _default = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_tmp, NAME + ".sqlite3"),
        "TEST": {"NAME": os.path.join(_tmp, TEST_NAME + ".sqlite3")},
    }
elif DB == "postgres":
    if DRIVER == "psycopg2":
        # Django 4.2+ imports psycopg (3) if it can: hide it, so a venv
        # holding both drivers tests psycopg2.
        sys.modules["psycopg"] = None
    _default = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("MARATHON_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("MARATHON_PG_PORT", "5432"),
        "USER": os.environ.get("MARATHON_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("MARATHON_PG_PASSWORD", ""),
        "NAME": NAME,
        "TEST": {"NAME": TEST_NAME},
    }
else:
    if DRIVER == "pymysql" or (
        not DRIVER and importlib.util.find_spec("MySQLdb") is None
    ):
        import pymysql

        # PyMySQL is pure Python and poses as mysqlclient (MySQLdb), which
        # needs libmariadb-dev to build. Django 5.1+ refuses a MySQLdb older
        # than 2.2.1 and reads the version from version_info, so PyMySQL
        # claims 2.2.1.
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
        "TEST": {
            "NAME": TEST_NAME,
            "CHARSET": "utf8mb4",
            "COLLATION": "utf8mb4_unicode_ci",
        },
    }


def apply_warning_filters(lines):
    """Apply pytest's `filterwarnings` lines (action:message:category:module:lineno)
    as pytest applies its ini list: in order, so a later line wins; message and
    module are regular expressions; an empty category means Warning."""
    import builtins
    import importlib

    for line in lines:
        parts = [part.strip() for part in line.split(":")]
        if len(parts) > 5:
            raise ValueError("too many fields in warning filter %r" % line)
        action, message, category, module, lineno = parts + [""] * (5 - len(parts))
        if not category:
            category = Warning
        elif "." in category:
            where, _, name = category.rpartition(".")
            category = getattr(importlib.import_module(where), name)
        else:
            category = getattr(builtins, category)
        warnings.filterwarnings(
            action, message, category, module, int(lineno) if lineno else 0
        )


if CHILD:
    # A child process talks to the database pytest-django created...
    _default["NAME"] = _default["TEST"]["NAME"]
    # ...and applies the warning filters pytest applies: setup.cfg's
    # [tool:pytest] filterwarnings, the one list, which conftest.py passes on
    # to every child in MARATHON_TEST_WARNINGS (JSON).
    if "MARATHON_TEST_WARNINGS" not in os.environ:
        raise RuntimeError(
            "MARATHON_TEST_WARNINGS is not set: start child processes from the "
            "tests (by hand: MARATHON_TEST_WARNINGS='[\"error\"]')"
        )
    apply_warning_filters(json.loads(os.environ["MARATHON_TEST_WARNINGS"]))

if os.environ.get("MARATHON_TEST_AUTOCOMMIT") == "0":
    _default["AUTOCOMMIT"] = False  # a project that manages its transactions by hand

DATABASES = {"default": _default}

# --- Django -----------------------------------------------------------------

SECRET_KEY = "django-marathon-tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the admin's CSS and JavaScript, for test_browser.py's live server
    "marathon",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

STATIC_URL = "/static/"

# Django's default logging, stated so tests can rely on it.
LOGGING = {"version": 1, "disable_existing_loggers": False}
