"""Users' own test suites (issue 8): marathon inside Django's TestCase and pytest-django.

tests/usersuite/ is a small user project: INSTALLED_APPS has "marathon" and
an app with a model of its own, a SingleRunnerCommand (`run_job`) and tests
that use marathon as a user would (usersuite_jobs/tests.py for
`manage.py test`, usersuite_jobs/pytest_checks.py for pytest-django). Here
each runner runs that project in a subprocess, on the database of
MARATHON_TEST_DB (SQLite: Django's default in-memory test database), with a
bound on its time. The contract: every user test passes, and the test
database is torn down cleanly (exit status 0; no "being accessed by other
users" from PostgreSQL, no "database table is locked" from SQLite).
"""

import hashlib
import os
import subprocess
import sys

import django
import pytest
from django.db import connection

import marathon
from tests.processes import MARATHON_DIR
from tests.settings import ENV_NAME

USERSUITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "usersuite")
TIMEOUT = 60  # seconds for one run of the user's suite; a normal run takes a few
BAD_NEWS = ("being accessed by other users", "database table is locked")
# The user tests in TestCase need Django 3.2+, and with pytest-django's `db` Django 4.1+
# (or an old pytest-django that still runs TestCase.setUpClass); they skip before.
TESTCASE_TESTS, TRANSACTION_TESTS = 5, 2


def usersuite_database_name(runner):
    """test_marathon_usersuite_<env>_<runner>, in at most 63 characters (MariaDB
    refuses a name over 64, PostgreSQL cuts it at 63): a long env name keeps its
    start and a hash of the whole."""
    name = "test_marathon_usersuite_%s_%s" % (ENV_NAME, runner)
    if len(name) <= 63:
        return name
    digest = hashlib.sha1(ENV_NAME.encode()).hexdigest()[:8]
    keep = 63 - len("test_marathon_usersuite___") - len(digest) - len(runner)
    return "test_marathon_usersuite_%s_%s_%s" % (ENV_NAME[:keep], digest, runner)


def usersuite_env(runner):
    """The environment of the user's project: its own settings, and the marathon this run imports."""
    env = dict(os.environ)
    env.pop("MARATHON_TEST_CHILD", None)
    paths = [MARATHON_DIR] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        DJANGO_SETTINGS_MODULE="usersuite_site.settings",
        USERSUITE_RUNNER=runner,
        USERSUITE_TEST_NAME=usersuite_database_name(runner),
        PYTHONDONTWRITEBYTECODE="1",  # leave no __pycache__ in the source tree
    )
    return env


def run_usersuite(runner, args):
    """Run python ARGS in tests/usersuite; return (returncode, stdout and stderr together)."""
    process = subprocess.Popen(
        [sys.executable] + args,
        cwd=USERSUITE,
        env=usersuite_env(runner),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(
            "the user's suite (%s) did not end within %d s:\n%s"
            % (runner, TIMEOUT, output)
        )
    return process.returncode, output


@pytest.fixture
def leftovers_dropped(django_db_blocker):
    """After the run, drop the user project's test database if a failed run left it (only that one)."""
    yield
    if connection.vendor == "sqlite":
        return  # in memory: gone with the process
    with django_db_blocker.unblock():
        for runner in ("django", "pytest"):
            sql = "DROP DATABASE IF EXISTS %s" % connection.ops.quote_name(
                usersuite_database_name(runner)
            )
            with connection._nodb_cursor() as cursor:
                if connection.vendor == "postgresql":
                    cursor.execute("SHOW server_version_num")
                    if int(cursor.fetchone()[0]) >= 130000:
                        sql += " WITH (FORCE)"  # a killed run may leave a session behind for a moment
                cursor.execute(sql)


def test_usersuite_imports_the_same_marathon():
    """The user's project runs with the marathon this test run imports (the checkout, or the installed one)."""
    code, output = run_usersuite(
        "django", ["-c", "import marathon; print(marathon.__file__)"]
    )
    assert code == 0, output
    assert os.path.realpath(output.strip().splitlines()[-1]) == os.path.realpath(
        marathon.__file__
    )


def test_manage_py_test_passes_and_tears_down_cleanly(leftovers_dropped):
    """`manage.py test`: TestCase and TransactionTestCase tests that take locks pass; clean teardown."""
    code, output = run_usersuite(
        "django", ["manage.py", "test", "usersuite_jobs", "--noinput", "-v", "2"]
    )
    assert code == 0, output
    for bad in BAD_NEWS:
        assert bad not in output, output
    assert "Ran %d tests" % (TESTCASE_TESTS + TRANSACTION_TESTS) in output, output
    if django.VERSION >= (3, 2):
        assert "skipped" not in output, output  # every TestCase test really ran


def test_pytest_django_passes_and_tears_down_cleanly(leftovers_dropped):
    """pytest-django (`db` and `transactional_db`): the same tests pass; clean teardown."""
    code, output = run_usersuite(
        "pytest",
        [
            "-m",
            "pytest",
            "-c",
            "pytest.ini",
            "--rootdir",
            ".",
            "--confcutdir",
            ".",
            "-p",
            "no:cacheprovider",
            "-v",
            "usersuite_jobs",
        ],
    )
    assert code == 0, output
    for bad in BAD_NEWS:
        assert bad not in output, output
    all_passed = "%d passed" % (TESTCASE_TESTS + TRANSACTION_TESTS)
    testcase_skipped = "%d passed, %d skipped" % (TRANSACTION_TESTS, TESTCASE_TESTS)
    if django.VERSION >= (4, 1):
        assert all_passed in output, output
    elif django.VERSION >= (
        3,
        2,
    ):  # pytest-django 4.6+ leaves Django 3.2 no mark on the test's transaction
        assert all_passed in output or testcase_skipped in output, output
    else:
        assert testcase_skipped in output, output
