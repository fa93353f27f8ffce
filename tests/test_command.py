"""SingleRunnerCommand: commands in tests/testapp/management/commands/, in process and as real processes."""

import io
import json
import os
import signal
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from marathon import Lock, Marathon
from tests.processes import (
    FAST,
    finish,
    run_command,
)

pytestmark = pytest.mark.django_db(transaction=True)


def call(name, *args):
    """call_command in this process; returns (result, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    result = call_command(name, *args, stdout=out, stderr=err)
    return result, out.getvalue(), err.getvalue()


def facts(stdout):
    line = [line for line in stdout.splitlines() if line.startswith("FACTS ")][0]
    return json.loads(line[len("FACTS ") :])


# ---- the lock wraps the run ----


def test_readme_style_handle_runs_under_the_lock_named_after_the_command():
    _, out, err = call("marathon_readme")
    seen = facts(out)
    assert seen["row"] is True and seen["lock"] == "marathon_readme"
    assert "Task completed." in out and err == ""
    assert not Lock.objects.exists()


def test_0_1_style_lock_name_and_run_task():
    _, out, _ = call("marathon_task")
    seen = facts(out)
    assert seen["row"] is True and seen["lock"] == "legacy-task"
    assert not Lock.objects.exists()


def test_heartbeat_runs_while_the_command_runs():
    with override_settings(MARATHON_HEARTBEAT=0.1, MARATHON_STALE_AFTER=5):
        _, out, _ = call("marathon_readme", "--until-heartbeat")
    assert "heartbeat moved" in out


def test_lock_per_argument():
    with Marathon("sync-north", **FAST):
        _, out, err = call("marathon_per_arg", "north")
        assert "Starting task" not in out and "sync-north" in err
        _, out, err = call("marathon_per_arg", "south")
        assert facts(out)["lock"] == "sync-south" and facts(out)["row"] is True
    assert not Lock.objects.exists()


def test_held_lock_skips_handle_and_says_who_holds_it_since_when():
    with Marathon("marathon_readme", **FAST) as lock:
        result, out, err = call("marathon_readme")
        assert result is None
        assert "Starting task" not in out
        assert "marathon_readme" in err and "already running" in err
        assert lock.owner in err and " since " in err
        assert Lock.objects.get(name="marathon_readme").owner == lock.owner


def test_held_lock_with_exit_code_raises_command_error_in_process():
    with Marathon("marathon_exit3", **FAST):
        with pytest.raises(CommandError) as caught:
            call("marathon_exit3")
    assert caught.value.returncode == 3
    assert "already running" in str(caught.value)


def test_lock_wait_waits_for_the_holder(holder):
    held = holder("waiting-task", heartbeat=0.1, stale_after=5)
    releaser = threading.Timer(
        0.3, held["release"]
    )  # the command must be waiting by then, or not: it passes
    releaser.start()
    try:
        _, out, err = call("marathon_wait")
    finally:
        releaser.join()
        finish(held["process"])
    assert facts(out)["row"] is True and "Task completed." in out, err


def test_exception_in_handle_propagates_and_releases():
    with pytest.raises(RuntimeError):
        call("marathon_readme", "--fail")
    assert not Lock.objects.exists()


# ---- real processes: exit codes and signals ----


def test_second_run_is_skipped_with_status_0_while_the_first_runs(running):
    first, seen, release = running("marathon_readme")
    assert seen["row"] is True
    row = Lock.objects.get(name="marathon_readme")
    assert row.owner.endswith(":%d" % first.pid) and row.heartbeat_at is not None
    code, out, err = run_command("marathon_readme")
    assert code == 0
    assert "Starting task" not in out
    assert (
        "marathon_readme" in err
        and "already running" in err
        and row.owner in err
        and " since " in err
    )
    release()
    code, out, err = finish(first)
    assert code == 0, err
    assert "Task completed." in out
    assert not Lock.objects.exists()


def test_second_run_exits_with_lock_held_exit_code(running):
    first, _, release = running("marathon_exit3")
    code, out, err = run_command("marathon_exit3")
    assert code == 3
    assert (
        "marathon_exit3" in err
        and "already running" in err
        and "Starting task" not in out
    )
    release()
    assert finish(first)[0] == 0


def test_free_lock_runs_with_status_0_and_failure_is_non_zero():
    code, out, err = run_command("marathon_task")
    assert code == 0, err
    assert facts(out)["row"] is True
    code, out, err = run_command("marathon_readme", "--fail")
    assert code != 0
    assert "the task failed" in err
    assert not Lock.objects.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_releases_the_lock_and_exits_non_zero(running, signum):
    process, seen, _ = running("marathon_readme")
    assert Lock.objects.filter(name="marathon_readme").exists()
    os.kill(process.pid, signum)
    code, out, err = finish(process)
    assert code != 0, (out, err)
    assert "Task completed." not in out
    assert not Lock.objects.exists()


# ---- a command with no task ----


def test_a_command_with_neither_handle_nor_run_task_says_so_and_releases():
    from django.core.management.base import BaseCommand

    from marathon import SingleRunnerCommand, lock_acquired

    class Command(SingleRunnerCommand, BaseCommand):
        lock_name = "no-task"

    taken = []

    def record(sender, **kwargs):
        taken.append(kwargs["name"])

    lock_acquired.connect(record)
    try:
        with pytest.raises(NotImplementedError) as raised:
            call_command(Command(), stdout=io.StringIO(), stderr=io.StringIO())
    finally:
        lock_acquired.disconnect(record)
    assert str(raised.value) == "Define handle() (or run_task()) in Command."
    assert taken == ["no-task"]  # it ran under the lock...
    assert not Lock.objects.exists()  # ...and released it on the way out


def test_a_command_called_from_a_thread_runs_under_the_lock_and_leaves_signals_alone():
    """Only the main thread may set signal handlers: from another thread (a view's
    call_command, a scheduler's worker) the command runs without them."""
    from django.db import connections

    before = signal.getsignal(signal.SIGTERM)
    result = {}

    def run():
        try:
            result["call"] = call("marathon_readme")
        except BaseException as error:
            result["error"] = error
        finally:
            connections.close_all()  # this thread's connections

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and "error" not in result, result
    _, out, err = result["call"]
    assert facts(out)["row"] is True and err == ""
    assert signal.getsignal(signal.SIGTERM) is before
    assert not Lock.objects.exists()
