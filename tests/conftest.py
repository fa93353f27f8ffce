import os
import platform

import django
import pytest

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
