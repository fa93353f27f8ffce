import json
import os
import platform

import django
import pytest

from tests.processes import (
    FAST,
    finish,
    start_child,
    start_command,
    touch,
    wait_for_file,
)

# --- Database server check and report header ---------------------------------

_server = {}  # filled by pytest_sessionstart, shown by pytest_report_header


def _server_version():
    """Return (vendor, version) of the default database, without needing the
    (not yet created) test database."""
    from django.db import connection

    if connection.vendor == "sqlite":
        import sqlite3

        return "sqlite", "SQLite %s (file)" % sqlite3.sqlite_version
    with connection._nodb_cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            return "postgresql", "PostgreSQL " + cursor.fetchone()[0]
        cursor.execute("SELECT VERSION()")
        return connection.vendor, cursor.fetchone()[0]


def _driver():
    """(name, version) of the driver Django uses for the default database, as
    tests/settings.py names it in MARATHON_TEST_DRIVER."""
    from django.db import connection

    module = connection.Database  # PyMySQL installed as MySQLdb is still pymysql
    name = module.__name__.split(".")[0]  # sqlite3.dbapi2 is sqlite3
    if name == "psycopg":
        return name, "%s (%s)" % (module.__version__, module.pq.__impl__)
    if name == "psycopg2":
        return name, module.__version__.split()[0]
    if name == "MySQLdb":
        return "mysqlclient", ".".join(str(n) for n in module.version_info[:3])
    if name == "pymysql":  # its version_info poses as mysqlclient's
        return name, ".".join(str(n) for n in module.VERSION[:3])
    return name, platform.python_version()  # sqlite3 comes with Python


def _db_unblocked(config):
    """pytest-django blocks database access outside tests; lift it here."""
    try:  # pytest-django >= 4.8
        from pytest_django.plugin import blocking_manager_key

        return config.stash[blocking_manager_key].unblock()
    except ImportError:  # older pytest-django (Python 3.6, 3.7)
        from pytest_django.plugin import _blocking_manager

        return _blocking_manager.unblock()


def pytest_configure(config):
    # Child processes apply the very warning filters pytest applies (one list:
    # setup.cfg's filterwarnings); tests/settings.py reads them from here.
    os.environ["MARATHON_TEST_WARNINGS"] = json.dumps(config.getini("filterwarnings"))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    from django.db import connection

    from tests import settings

    _server["driver"] = "%s %s" % _driver()
    if settings.DRIVER and _driver()[0] != settings.DRIVER:
        raise pytest.UsageError(
            "MARATHON_TEST_DRIVER is %s, but Django uses %s"
            % (settings.DRIVER, _server["driver"])
        )
    try:
        with _db_unblocked(session.config):
            _server["vendor"], _server["version"] = _server_version()
    except Exception as exc:
        where = "%s at %s:%s" % (
            connection.vendor,
            connection.settings_dict["HOST"],
            connection.settings_dict["PORT"],
        )
        if os.environ.get("CI"):
            raise pytest.UsageError(
                "%s is not reachable (CI is set, so this is an error): %s"
                % (where, exc)
            ) from exc
        pytest.exit(
            "%s is not reachable; its tests are skipped "
            "(set CI=1 to make this an error)" % where,
            returncode=0,
        )


def pytest_report_header(config):
    return "database: %s, %s; driver %s; Django %s; Python %s (%s)" % (
        _server.get("vendor", "?"),
        _server.get("version", "?"),
        _server.get("driver", "?"),
        django.get_version(),
        platform.python_version(),
        platform.python_implementation(),
    )


# --- Fixtures shared by the test modules -------------------------------------


@pytest.fixture
def holder(tmp_path):
    """Start a child process that holds a lock until the test lets it go.

    holder(name, heartbeat=..., stale_after=...) waits until the child holds
    `name` and returns what it reported ("fence", "owner", "pid"), with its
    "process" and a "release" function. A child still holding at the end is
    released; every child is waited for.
    """
    children = []

    def start(name, heartbeat=FAST["heartbeat"], stale_after=FAST["stale_after"]):
        ready, release = (
            str(tmp_path / ("hold-ready-%d" % len(children))),
            str(tmp_path / ("hold-release-%d" % len(children))),
        )
        child = start_child("hold", name, ready, release, heartbeat, stale_after)
        children.append((child, release))
        info = json.loads(wait_for_file(ready, process=child))
        info.update(process=child, release=lambda: touch(release))
        return info

    yield start
    for child, release in children:
        if child.poll() is None:
            touch(release)
        # Closed if the test waited for it already: Python 3.6 cannot
        # communicate() twice.
        if not child.stdout.closed:
            finish(child)


@pytest.fixture
def running(tmp_path):
    """Start a management command as a process and wait until its handle() runs.

    running(command, *args) passes the command --ready and --wait-for files
    (tests/testapp's commands take them) and returns (process, the facts it
    wrote when ready, a function that lets it end). A command still running at
    the end is let go; every process is waited for.
    """
    started = []

    def start(name, *args):
        ready, release = (
            str(tmp_path / ("run-ready-%d" % len(started))),
            str(tmp_path / ("run-release-%d" % len(started))),
        )
        process = start_command(name, "--ready", ready, "--wait-for", release, *args)
        started.append((process, release))
        seen = json.loads(wait_for_file(ready, process=process))
        return process, seen, lambda: touch(release)

    yield start
    for process, release in started:
        if process.poll() is None:
            touch(release)
        if not process.stdout.closed:  # else the test waited for it
            finish(process)
