"""Fork (issue 8): a process that holds a lock and forks.

- A forked child does not hold its parent's lock: ``held`` is False, its
  ``release()`` returns False and deletes nothing, and it can take and
  release locks of its own without hanging. The parent keeps its lock.
- A fork never leaves the child with an internal mutex held (every child of
  many forks, made while a fast heartbeat runs, ends in time).
- Taking a lock leaves Django's connection in the state it found it (closed
  if it was closed), so that a task may fork workers (multiprocessing) after
  the lock is taken: they must not share the parent's database socket.

The forking processes are real ones (tests/fork_child.py), in a session of
their own so that a hung grandchild is killed with them.
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys

import pytest
from django.db import connection

from marathon import Lock, Marathon
from tests.processes import FAST, start_python

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
]


def run_fork_child(action, *args, **kwargs):
    """Run `python -m tests.fork_child ACTION ARGS` (bounded); assert it succeeded; return its JSON facts."""
    timeout = kwargs.pop("timeout", 60)
    process = start_python(
        ["-m", "tests.fork_child", action] + [str(arg) for arg in args],
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(
            process.pid, signal.SIGKILL
        )  # with its forked children, which hold our pipes
        out, err = process.communicate()
        pytest.fail("%s did not end within %s s:\n%s\n%s" % (action, timeout, out, err))
    assert process.returncode == 0, "%s failed (%s):\n%s\n%s" % (
        action,
        process.returncode,
        out,
        err,
    )
    return json.loads(out.strip().splitlines()[-1])


def describe(failure):
    """A failed child of the fork storm, for people: which, how, and its traceback if it had one."""
    facts = dict(failure.get("facts") or {})
    error = facts.pop("error", "")
    how = (
        "hung (killed after 10 s)"
        if failure.get("hung")
        else "ended with status %s" % failure.get("status")
    )
    return "child %s %s %s\n%s" % (
        failure["child"],
        how,
        json.dumps(facts) if facts else "",
        error,
    )


def test_forked_child_does_not_hold_its_parents_lock():
    """Fork while holding "p": in the child held is False, release() is False and deletes nothing, and
    the child takes and releases "c" within 10 s; the parent's row keeps its id and token, its
    heartbeat keeps going after the child exited, and its release returns True."""
    facts = run_fork_child("holder-forks")
    assert facts["child_exit"] == 0, "the child hung or failed: %s" % facts
    child = facts["child"]
    assert child["held"] is False, facts
    assert child["release"] is False, facts
    assert child["other"] == {"acquired": True, "released": True}, facts
    assert facts["row_kept"] is True, "the child touched the parent's row: %s" % facts
    assert facts["heartbeat_advances"] is True, facts
    assert facts["lost"] is False, facts
    assert facts["release"] is True, facts
    assert facts["c_left"] is False, facts
    assert not Lock.objects.exists()


def test_many_forks_while_the_heartbeat_runs_never_hang_a_child():
    """200 forks while a 0.01 s heartbeat runs for 20 held locks, each child taking and releasing a
    lock of its own: every child ends with status 0 within 10 s (a mutex copied while held would
    hang one; on SQLite, so would SQLite's own state copied in the middle of the heartbeat's
    statement), and the parent keeps its locks."""
    if sys.version_info < (3, 7) and connection.vendor == "sqlite":
        pytest.skip(
            "Python 3.6 has no os.register_at_fork: a fork there must not land in one of marathon's "
            "SQLite statements (see the README's Processes that fork)"
        )
    facts = run_fork_child("fork-storm", 200, 4, 20)
    assert facts["failures"] == [], "after %d forks, children failed:\n%s" % (
        facts["forks"],
        "\n".join(describe(failure) for failure in facts["failures"]),
    )
    assert facts["forks"] == 200, facts
    assert facts["lost"] == [] and facts["heartbeat_advances"] is True, facts
    assert facts["released"] == facts["holds"] == 20, facts
    assert not Lock.objects.exists()


def test_fork_while_the_heartbeat_thread_is_mid_beat():
    """With the heartbeat thread stopped at the seam "heartbeat.beat" (marathon._hook, just after it
    took its snapshot of the holds), a forked child takes and releases its own lock within 10 s; the
    parent's heartbeat resumes and its release returns True."""
    facts = run_fork_child("fork-mid-beat")
    assert facts["hook_called"] is True, (
        "marathon._hook was never called at 'heartbeat.beat': %s" % facts
    )
    assert facts["child_exit"] == 0, "the child hung or failed: %s" % facts
    assert facts["child"] == {"acquired": True, "released": True}, facts
    assert facts["heartbeat_advances"] is True, facts
    assert facts["release"] is True, facts


def test_taking_a_lock_leaves_a_closed_connection_closed():
    """acquire() and release() on a closed Django connection leave it closed (a fork after them is safe)."""
    connection.close()
    lock = Marathon("closed-connection", **FAST)
    assert lock.acquire() is True
    assert connection.connection is None, "acquire() left Django's connection open"
    assert lock.release() is True
    assert connection.connection is None, "release() left Django's connection open"
    with Marathon("closed-connection", **FAST):
        assert connection.connection is None, (
            "with Marathon(...) left Django's connection open"
        )
    assert connection.connection is None


def test_taking_a_lock_leaves_an_open_connection_open():
    """...and an open one open: the same connection, still usable."""
    connection.ensure_connection()
    raw = connection.connection
    with Marathon("open-connection", **FAST):
        assert connection.connection is raw
    assert connection.connection is raw
    assert not Lock.objects.filter(name="open-connection").exists()


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs the fork start method",
)
def test_command_that_forks_a_multiprocessing_pool_finishes():
    """A SingleRunnerCommand whose handle() runs a fork Pool of 2 workers, each making ORM and
    cursor queries at the same time: it ends within 30 s with the right results (the workers
    must not share a connection the lock left open in the parent)."""
    facts = run_fork_child("pool-command", timeout=30)
    results = facts["results"]
    assert results is not None, facts
    assert len({result["pid"] for result in results}) == 2, facts
    assert [(result["locks"], result["one"]) for result in results] == [
        (1, 1),
        (1, 1),
    ], facts
    assert not Lock.objects.exists()
