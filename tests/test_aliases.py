"""python -m marathon with settings of other shapes: locks on a database other than
"default" (its --database), a database marathon does not support, and settings it
cannot use.

The child processes use tests/settings_aliases.py: there "default" is an empty
database with no tables, "locks" is the test database (this process's
default) and "unsupported" is Django's dummy backend. What reaches "default"
fails, so each test also shows which alias a command used.
"""

import os
import sys

import pytest

from marathon import Lock, Marathon
from tests.processes import FAST, child_env, run_python

pytestmark = pytest.mark.django_db(transaction=True)

STALE = "2000-01-01T00:00:00Z"
UNSUPPORTED = "Marathon supports PostgreSQL, MySQL/MariaDB and SQLite, not 'unknown'."


@pytest.fixture
def env(tmp_path):
    return child_env(
        DJANGO_SETTINGS_MODULE="tests.settings_aliases",
        MARATHON_EMPTY_DB=str(tmp_path / "empty.sqlite3"),
    )


def shell(env, *args):
    """Run `python -m marathon ARGS` with the aliases' settings; (returncode, stdout, stderr)."""
    return run_python(["-m", "marathon"] + list(args), env=env, timeout=60)


def names():
    return sorted(Lock.objects.values_list("name", flat=True))


def listed(out):
    """The lock names of `list`'s table (its first column, under the header)."""
    return sorted(line.split()[0] for line in out.splitlines()[1:] if line.strip())


def test_list_and_release_use_the_database_option(env):
    Lock.objects.create(name="stale-job", owner="web1:42", heartbeat_at=STALE)
    Lock.objects.create(name="other-job", owner="web2:7", heartbeat_at=STALE)

    code, out, err = shell(env, "list")  # the default database has no locks table
    assert (code, out) == (3, ""), err
    assert err.startswith("python -m marathon: error: database 'default' ("), err

    code, out, err = shell(env, "--database", "locks", "list")
    assert code == 0, err
    assert listed(out) == ["other-job", "stale-job"]

    code, out, err = shell(env, "release", "stale-job", "--database", "locks")
    assert (code, out) == (0, "Released 1 lock(s): stale-job\n"), err
    assert names() == ["other-job"]

    code, out, err = shell(env, "release", "--stale", "--database", "locks")
    assert (code, out) == (0, "Released 1 lock(s): other-job\n"), err
    assert names() == []


def test_run_takes_the_lock_on_the_database_option(env):
    command = ["--", sys.executable, "-c", "raise SystemExit(5)"]
    with Marathon("held-job", **FAST) as held:
        code, _, err = shell(
            env, "run", "held-job", "--wait", "0", "--database", "locks", *command
        )
        assert code == 75, err  # the lock is held there: --wait ran out
        assert held.owner in err
    code, _, err = shell(
        env, "run", "held-job", "--wait", "0", "--database", "locks", *command
    )
    assert code == 5, err  # free now: the command ran, and its status is the run's
    assert names() == []


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--database", "unsupported"],
        ["release", "--stale", "--database", "unsupported"],
        ["release", "some-job", "--database", "unsupported"],
        ["run", "some-job", "--database", "unsupported", "--", sys.executable, "-V"],
    ],
)
def test_shell_refuses_an_unsupported_database_in_one_line(env, args):
    code, out, err = shell(env, *args)
    assert (code, out, err) == (2, "", "python -m marathon: error: %s\n" % UNSUPPORTED)


def test_a_lock_on_an_unsupported_database_raises_before_any_query(env):
    code, out, err = run_python(
        [
            "-c",
            "import django; django.setup()\n"
            "from marathon import Marathon, MarathonError\n"
            "try:\n"
            "    Marathon('some-job', using='unsupported').acquire()\n"
            "except MarathonError as error:\n"
            "    print(error)\n",
        ],
        env=env,
    )
    assert (code, out) == (0, UNSUPPORTED + "\n"), err


CHILD = (
    "import django; django.setup()\n"
    "from django.db import connections, transaction\n"
    "from marathon import LastRun, Lock, Marathon\n"
)


def run_child(env, body):
    """Run CHILD + body in a child with the aliases' settings; its stdout (it must exit 0)."""
    code, out, err = run_python(["-c", CHILD + body], env=env)
    assert code == 0, err
    return out


def test_a_closed_manual_atomic_is_no_transaction_of_a_lock_elsewhere(env):
    """Under manual transactions, a connection closed inside the outermost atomic() stays
    marked in_atomic_block after the block (for good on Django 5.1+). A lock on another
    database, taken and released after, is outside any transaction: its run counts."""
    out = run_child(
        env,
        "transaction.set_autocommit(False)\n"
        "with transaction.atomic():\n"
        "    connections['default'].close()\n"
        "assert connections['default'].in_atomic_block\n"
        "with Marathon('after-a-close', using='locks', min_interval=3600):\n"
        "    pass\n"
        "print(LastRun.objects.using('locks').get(name='after-a-close').outcome)\n",
    )
    assert out == "ok\n"


@pytest.mark.parametrize(
    "close",
    [
        "with transaction.atomic():\n"
        "    connections['default'].close()\n"
        "    with transaction.atomic(using='other'):\n",
        "transaction.set_autocommit(False)\n"
        "with transaction.atomic():\n"
        "    connections['default'].close()\n"
        "with transaction.atomic():\n"  # entered again on the closed connection
        "    with transaction.atomic(using='other'):\n",
    ],
    ids=["closed-in-its-block", "manual-entered-again"],
)
def test_a_connection_closed_in_its_block_does_not_hide_another_transaction(env, close):
    """A release waits for the transaction still open on another database ("other"), however
    a connection closed inside its block ("default") comes first: that one has no transaction
    left to wait for, the other one has. The run counts as rolled back all the same."""
    out = run_child(
        env,
        "def held():\n"
        "    return Lock.objects.using('locks').filter(name='waits').exists()\n"
        + close
        + "        with Marathon('waits', using='locks', min_interval=3600):\n"
        "            pass\n"
        "        print(held())\n"
        "print(held())\n"
        "print(LastRun.objects.using('locks').get(name='waits').outcome)\n",
    )
    assert out == "True\nFalse\nerror\n"


# ---- settings python -m marathon cannot use: one line each, status 2 ----


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            "from tests.settings import *\nINSTALLED_APPS = INSTALLED_APPS + ['marathon']\n",
            "python -m marathon: error: the settings 'projectsettings' are not usable: "
            "Application labels aren't unique, duplicates: marathon\n",
        ),
        (
            "from tests.settings import *\n"
            "INSTALLED_APPS = [app for app in INSTALLED_APPS if app != 'marathon']\n",
            "python -m marathon: error: 'marathon' is not in INSTALLED_APPS of the "
            "settings 'projectsettings'.\n",
        ),
        (
            "import nosuchmodule_of_the_project\n",
            "python -m marathon: error: cannot import the settings 'projectsettings': "
            "No module named 'nosuchmodule_of_the_project'.\n",  # no PYTHONPATH hint
        ),
    ],
    ids=["not-usable", "no-marathon", "broken-import"],
)
def test_shell_says_in_one_line_why_the_settings_cannot_be_used(
    tmp_path, body, expected
):
    (tmp_path / "projectsettings.py").write_text(body)
    env = child_env(DJANGO_SETTINGS_MODULE="projectsettings")
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    code, out, err = shell(env, "list")
    assert (code, out, err) == (2, "", expected)
