"""A run that finds its lock held (issue 14): the decorator's quiet skip, a command's skip
signal, and the times in the skip message, in the project's time zone."""

import asyncio
import datetime
import io
import logging
import re
import subprocess
import sys
import textwrap
import threading

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

import marathon
from marathon import AlreadyRunning, Lock, Marathon, lock_skipped
from tests.processes import FAST, child_env, db_now
from tests.processes import run_coroutine as run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def skips():
    """The lock_skipped signals sent during the test: (sender, name, reason, owner, fence)."""
    seen = []

    def record(sender, **kwargs):
        seen.append(
            (sender, kwargs["name"], kwargs["reason"], kwargs["owner"], kwargs["fence"])
        )

    lock_skipped.connect(record)
    yield seen
    lock_skipped.disconnect(record)


# ---- The decorator ----


def test_on_held_skip_returns_none_logs_at_info_and_signals(skips, caplog):
    calls = []
    skip_if_running = Marathon("sync-stock", **FAST, on_held="skip")

    @skip_if_running
    def sync_stock(shop):
        calls.append(shop)
        return "synced %s" % shop

    with Marathon("sync-stock", **FAST) as holder:
        with caplog.at_level(logging.INFO, logger="marathon"):
            assert sync_stock("north") is None
    assert calls == [] and skips == [
        (Marathon, "sync-stock", "held", holder.owner, holder.fence)
    ]
    (record,) = [r for r in caplog.records if r.getMessage().startswith("Skipped")]
    assert record.levelno == logging.INFO and holder.owner in record.getMessage()
    assert "'sync-stock' is already running" in record.getMessage()
    assert sync_stock("south") == "synced south"  # free: it runs, under the lock
    assert calls == ["south"] and len(skips) == 1 and not Lock.objects.exists()


def test_on_held_skip_skips_a_run_too_soon_after_the_last(skips):
    skip_if_too_soon = Marathon(
        "nightly-report", min_interval=60, **FAST, on_held="skip"
    )

    @skip_if_too_soon
    def nightly_report():
        return "built"

    assert nightly_report() == "built"
    assert nightly_report() is None
    assert [skip[1:4] for skip in skips] == [
        ("nightly-report", "ran recently", marathon._owner())
    ]


def test_on_held_skip_on_an_async_function(skips):
    skip_if_running = Marathon("async-sync", **FAST, on_held="skip")

    @skip_if_running
    async def sync_stock():
        await asyncio.sleep(0)
        return await sync_to_async(rows_closing)("async-sync")

    with Marathon("async-sync", **FAST) as holder:
        assert run(sync_stock()) is None
    assert skips == [(Marathon, "async-sync", "held", holder.owner, holder.fence)]
    assert run(sync_stock()) == 1  # free: it ran, holding the lock
    assert not Lock.objects.exists()


def rows_closing(name):
    """How many rows carry `name`, from asgiref's thread, whose connection must not outlive the test."""
    try:
        return Lock.objects.filter(name=name).count()
    finally:
        connection.close()


def test_on_held_skip_holds_the_lock_while_the_function_runs():
    skip_if_running = Marathon("inside", **FAST, on_held="skip")

    @skip_if_running
    def inside():
        row = Lock.objects.get(name="inside")
        with pytest.raises(AlreadyRunning):
            Marathon("inside").__enter__()
        return row.owner

    assert inside() == marathon._owner()
    assert not Lock.objects.exists()


def test_on_held_skip_still_raises_what_the_function_raises():
    skip_if_running = Marathon("failing", **FAST, on_held="skip")

    @skip_if_running
    def failing():
        raise KeyError("boom")

    with pytest.raises(KeyError):
        failing()
    assert not Lock.objects.exists()


def test_the_default_still_raises_already_running(skips):
    @Marathon("strict", **FAST)
    def strict():
        return "ran"

    with Marathon("strict", **FAST):
        with pytest.raises(AlreadyRunning):
            strict()
    assert skips == [] and strict() == "ran"


def test_on_held_must_be_raise_or_skip():
    with pytest.raises(
        ValueError, match='on_held must be "raise" or "skip"; got \'ignore\''
    ):
        Marathon("x", on_held="ignore")


# ---- Commands: a skip is told apart from a run ----


def test_a_skipped_command_sends_lock_skipped_with_its_class_a_run_does_not(skips):
    from tests.testapp.management.commands.marathon_readme import Command

    call_command("marathon_readme", stdout=io.StringIO())
    assert skips == []
    with Marathon("marathon_readme", **FAST) as holder:
        assert (
            call_command("marathon_readme", stdout=io.StringIO(), stderr=io.StringIO())
            is None
        )
    assert skips == [(Command, "marathon_readme", "held", holder.owner, holder.fence)]


def test_a_skip_with_an_exit_code_sends_lock_skipped_too(skips):
    with Marathon("marathon_exit3", **FAST) as holder:
        with pytest.raises(CommandError):
            call_command("marathon_exit3", stdout=io.StringIO())
    assert [skip[1:] for skip in skips] == [
        ("marathon_exit3", "held", holder.owner, holder.fence)
    ]


# ---- The skip message's times: the project's time zone, labelled ----

# A child with USE_TZ = False and TIME_ZONE = "Asia/Kolkata" (UTC+05:30) runs
# a command while this process holds the lock, then on a row it made by hand
# with get_or_create (whose times Django wrote, in local time), then a command
# with lock_min_interval twice, the second run too soon after the first.
CHILD = textwrap.dedent(
    """
    import io, sys
    import django
    django.setup()
    from django.core.management import CommandError, call_command
    from marathon import Lock

    def skip_message():
        err = io.StringIO()
        call_command("marathon_readme", stdout=io.StringIO(), stderr=err)
        return err.getvalue().strip()

    print(skip_message(), flush=True)
    sys.stdin.readline()  # the parent has released its lock
    Lock.objects.get_or_create(name="marathon_readme")
    print(skip_message(), flush=True)
    Lock.objects.filter(name="marathon_readme").delete()
    call_command("marathon_nightly", stdout=io.StringIO())  # lock_min_interval = 60
    try:
        call_command("marathon_nightly", stdout=io.StringIO())
    except CommandError as error:
        print(error, flush=True)
    """
)
IST = datetime.timezone(datetime.timedelta(hours=5, minutes=30))


def since(message):
    found = re.search(r" since (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+) ", message)
    assert found, message
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=IST
    ), found.group(2)


def test_skip_message_times_are_in_the_projects_time_zone_without_use_tz():
    env = child_env(DJANGO_SETTINGS_MODULE="tests.settings_ops")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    watchdog = threading.Timer(
        60, child.kill
    )  # a child that never answers fails the test, not the run
    watchdog.start()
    try:
        before = db_now().replace(microsecond=0)
        with Marathon("marathon_readme", **FAST):
            held = child.stdout.readline()
        child.stdin.write("\n")
        child.stdin.flush()
        by_hand = child.stdout.readline()
        too_soon = child.stdout.readline()
        after = db_now()
        _, err = child.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    for message in (held, by_hand):
        when, label = since(message)
        assert label == "IST", message  # not "UTC"
        assert before <= when <= after, (
            message,
            before.astimezone(IST),
            after.astimezone(IST),
        )
    assert re.search(r"last heartbeat \S+ \S+ IST\)", held)
    found = re.search(
        r" finished (\S+ \S+) IST; the next may start (\S+ \S+) IST ", too_soon
    )
    assert found, too_soon
    finished, next_start = (
        datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST)
        for text in found.groups()
    )
    assert before <= finished <= after and next_start - finished == datetime.timedelta(
        seconds=60
    ), too_soon
