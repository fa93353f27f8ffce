"""The real processes of the tests: starting them, coordinating with them, watching them.

The parent side starts children (`start_child`, `start_python`,
`run_command`, ...), coordinates with them through files (`touch`,
`wait_for_file`) and watches the database and threads they share
(`db_now`, `server_connections`, `heartbeat_threads`), with the timings the
test modules share (`FAST`, `DEADLINE`). The child side is at the end:
children run `python -m tests.processes ACTION ...` (or a management
command) with the environment of `child_env()`: they import the same `tests`
and `marathon` as pytest does and use the test database pytest-django made.
"""

import datetime
import json
import os
import subprocess
import sys
import threading
import time

import marathon
import tests

TESTS_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))
MARATHON_DIR = os.path.dirname(os.path.abspath(marathon.__file__))
DEADLINE = 10.0  # seconds: the longest any coordination step may take
# The timing of a lock that should beat and go stale quickly: Marathon(name,
# **FAST). stale_after leaves slack for a loaded CI machine.
FAST = {"heartbeat": 0.2, "stale_after": 2.0}
# marathon_lock's columns, sorted, as the latest migration leaves them.
LOCK_COLUMNS = [
    "heartbeat_at",
    "id",
    "locked_at",
    "name",
    "owner",
    "stale_after",
    "token",
]

_pause = threading.Event().wait  # works under libfaketime, unlike time.sleep


def child_env(**extra):
    """The environment of a child process that talks to the test database."""
    env = dict(os.environ)
    paths = [TESTS_PARENT, MARATHON_DIR]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["MARATHON_TEST_CHILD"] = "1"
    env.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    env.update(extra)
    return env


def start_child(*args, **kwargs):
    """Start `python -m tests.processes *args`; stdout/stderr are pipes."""
    return start_python(
        ["-m", "tests.processes"] + [str(arg) for arg in args], **kwargs
    )


def start_python(args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable] + list(args),
        env=env or child_env(),
        cwd=TESTS_PARENT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        **kwargs,
    )


def run_python(args, env=None, timeout=30):
    """Run python with args to the end; return (returncode, stdout, stderr)."""
    process = start_python(args, env=env)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError("child timed out:\n%s\n%s" % (out, err)) from None
    return process.returncode, out, err


def run_command(*args, **kwargs):
    """Run `python -m django ARGS` (what django-admin runs); (returncode, stdout, stderr)."""
    return run_python(["-m", "django"] + [str(arg) for arg in args], **kwargs)


def start_command(*args):
    return start_python(["-m", "django"] + [str(arg) for arg in args])


def run_coroutine(coroutine):
    """Run a coroutine on a loop of its own, closed after (Python 3.6 has no asyncio.run)."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def wait_for(predicate, timeout=DEADLINE, what="condition", process=None, every=0.02):
    """Poll predicate every `every` seconds until true or the deadline; fail with `what` if
    it never is. A short `every` when the moment it becomes true is measured."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(
                "child ended (%s) before %s:\n%s\n%s"
                % (process.returncode, what, out, err)
            )
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        _pause(every)


def wait_for_file(path, process=None, timeout=DEADLINE):
    wait_for(
        lambda: os.path.exists(path),
        timeout=timeout,
        what="file %s" % path,
        process=process,
    )
    with open(path) as file:
        return file.read()


def touch(path, content=""):
    """Write a file atomically (rename), so a poller never reads it half written."""
    with open(path + ".tmp", "w") as file:
        file.write(content)
    os.rename(path + ".tmp", path)


def finish(process, timeout=DEADLINE):
    """Wait for a child; return (returncode, stdout, stderr)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError("child did not end:\n%s\n%s" % (out, err)) from None
    return process.returncode, out, err


def db_now(using="default"):
    """The database's clock, as an aware UTC datetime (what heartbeats use)."""
    from django.db import connections
    from django.utils.dateparse import parse_datetime

    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            {
                "postgresql": "SELECT statement_timestamp()",
                "mysql": "SELECT UTC_TIMESTAMP(6)",
                "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
            }[connection.vendor]
        )
        value = cursor.fetchone()[0]
    if isinstance(value, str):
        value = parse_datetime(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def heartbeat_threads():
    return [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("marathon-heartbeat-")
    ]


def server_connections():
    """How many sessions the server has open on the test database (None on SQLite)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
    elif connection.vendor == "mysql":
        sql = (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()"
        )
    else:
        return None
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pg_stat_clear_snapshot()"
            )  # else a transaction sees one snapshot
        cursor.execute(sql)
        return cursor.fetchone()[0]


# ---- The child side ----


def _child(action, *args):
    import django

    django.setup()
    from django.db import connection, transaction

    from marathon import AlreadyRunning, Marathon

    if action == "hold":
        # hold NAME READY RELEASE HEARTBEAT STALE_AFTER: hold until RELEASE exists.
        name, ready, release, heartbeat, stale_after = args
        lock = Marathon(
            name, heartbeat=float(heartbeat), stale_after=float(stale_after)
        )
        assert lock.acquire(), "child could not acquire %r" % name
        touch(
            ready,
            json.dumps({"fence": lock.fence, "owner": lock.owner, "pid": os.getpid()}),
        )
        wait_for(lambda: os.path.exists(release), timeout=60, what="release file")
        print(json.dumps({"released": lock.release(), "lost": lock.lost}))
    elif action == "try":
        # try NAME WAIT: one acquire; report it and the holder; release.
        name, wait = args
        try:
            with Marathon(name, wait=float(wait)) as lock:
                result = {"acquired": True, "fence": lock.fence}
        except AlreadyRunning as error:
            result = {
                "acquired": False,
                "fence": None,
                "owner": error.owner,
                "message": str(error),
            }
        print(json.dumps(result))
    elif action == "interval":
        # interval NAME MIN_INTERVAL OUTCOME: one run with a min_interval, ending
        # as OUTCOME says (ok, error); reports whether it ran, or why not.
        from marathon import RanRecently

        name, min_interval, outcome = args
        try:
            with Marathon(name, min_interval=float(min_interval)) as lock:
                result = {"ran": True, "fence": lock.fence, "owner": lock.owner}
                if outcome == "error":
                    raise RuntimeError("the run failed")
        except RanRecently as error:
            result = {
                "ran": False,
                "owner": error.owner,
                "finished_at": error.finished_at.isoformat(),
                "message": str(error),
            }
        except RuntimeError:
            pass
        print(json.dumps(result))
    elif action == "count":
        # count NAME: how many rows carry NAME, as this process sees them.
        from marathon import Lock

        print(json.dumps({"count": Lock.objects.filter(name=args[0]).count()}))
    elif action == "hold-in-atomic":
        # hold-in-atomic NAME READY RELEASE: acquire inside atomic(), then roll back.
        name, ready, release = args
        lock = Marathon(name, heartbeat=0.2, stale_after=2.0)
        try:
            with transaction.atomic():
                assert lock.acquire()
                touch(ready, json.dumps({"fence": lock.fence}))
                wait_for(
                    lambda: os.path.exists(release), timeout=60, what="release file"
                )
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        print(json.dumps({"held": lock.held, "released": lock.release()}))
    else:
        raise SystemExit("unknown action %r" % action)
    connection.close()


if __name__ == "__main__":
    _child(*sys.argv[1:])
