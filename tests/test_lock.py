"""The Marathon lock: acquire, release, wait, heartbeat, takeover, loss, transactions."""

import datetime
import json
import logging
import os
import signal
import threading
import time

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from marathon import AlreadyRunning, Lock, LockLost, Marathon, MarathonError
from tests.processes import (
    FAST,
    db_now,
    finish,
    heartbeat_threads,
    server_connections,
    start_child,
    touch,
    wait_for,
    wait_for_file,
)

pytestmark = pytest.mark.django_db(transaction=True)

SQLITE = connection.vendor == "sqlite"


def row(name):
    return Lock.objects.using("default").filter(name=name).first()


# ---- acquire and release ----


def test_with_block_holds_the_row_and_removes_it():
    with Marathon("nightly", **FAST) as lock:
        assert lock.held and not lock.lost
        found = row("nightly")
        assert found.owner == lock.owner and found.heartbeat_at is not None
        assert len(found.token) >= 32  # 128 bits as hex
    assert row("nightly") is None
    assert not lock.held


def test_already_running_carries_name_and_owner(holder):
    info = holder("report")
    with pytest.raises(AlreadyRunning) as caught:
        with Marathon("report", **FAST):
            pytest.fail("ran while held")
    error = caught.value
    assert isinstance(error, MarathonError)
    assert error.name == "report"
    assert error.owner == info["owner"] and error.owner.endswith(":%d" % info["pid"])
    assert "report" in str(error) and info["owner"] in str(error)
    # The holder's times: aware UTC, by the database's clock, shown as
    # TIME_ZONE's ("UTC" in the test settings; test_skip.py checks another zone).
    found = row("report")
    for value in (error.locked_at, error.heartbeat_at):
        assert value.utcoffset() == datetime.timedelta(0)
    assert abs(error.locked_at - found.locked_at) < datetime.timedelta(seconds=1)
    assert error.heartbeat_at >= error.locked_at
    assert error.locked_at.strftime("since %Y-%m-%d %H:%M:%S UTC") in str(error)


def test_acquire_returns_true_or_false_and_never_raises(holder):
    free = Marathon("free", **FAST)
    assert free.acquire() is True
    assert free.release() is True
    assert free.release() is False  # released already
    holder("busy")
    busy = Marathon("busy", **FAST)
    assert busy.acquire() is False
    assert not busy.held and busy.fence is None
    assert busy.release() is False


def test_acquire_twice_on_one_object_is_an_error():
    lock = Marathon("twice", **FAST)
    assert lock.acquire()
    try:
        with pytest.raises(MarathonError):
            lock.acquire()
    finally:
        assert lock.release()


def test_wait_polls_until_another_process_releases(holder):
    info = holder("queue")
    lock = Marathon("queue", wait=8, **FAST)
    assert lock.acquire(wait=0) is False
    started = threading.Event()

    def release_soon():
        started.wait(5)
        threading.Event().wait(
            0.3
        )  # let the waiter fail at least once (a pass does not depend on it)
        info["release"]()

    helper = threading.Thread(target=release_soon)
    helper.start()
    began = time.monotonic()
    started.set()
    try:
        assert lock.acquire() is True
        assert time.monotonic() - began < 8
        assert row("queue").owner == lock.owner
        code, out, err = finish(info["process"])
        assert code == 0, err
        assert json.loads(out) == {"released": True, "lost": False}
    finally:
        helper.join()
        lock.release()


def test_wait_gives_up_after_wait_seconds(holder):
    holder("long")
    began = time.monotonic()
    assert Marathon("long", wait=0.4, **FAST).acquire() is False
    assert 0.3 <= time.monotonic() - began < 3


def test_decorated_function_in_two_threads():
    entered, go_on = threading.Event(), threading.Event()
    results = []

    @Marathon("decorated", **FAST)
    def job():
        entered.set()
        assert go_on.wait(5)
        return "done"

    def first():
        try:
            results.append(job())
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(5)
        with pytest.raises(AlreadyRunning):
            job()
    finally:
        go_on.set()
        thread.join()
    assert results == ["done"]
    assert job() == "done"  # the first call released it
    assert row("decorated") is None


def test_decorated_function_with_wait_runs_both_calls_one_after_the_other():
    running, peak, calls = [0], [0], []
    mutex = threading.Lock()
    entered, go_on = threading.Event(), threading.Event()

    @Marathon("serial", wait=8, **FAST)
    def job(label):
        with mutex:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        entered.set()
        if label == "first":
            assert go_on.wait(5)
        with mutex:
            running[0] -= 1
            calls.append(label)

    def call(label):
        try:
            job(label)
        finally:
            connection.close()

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    go_on.set()
    first.join()
    second.join()
    assert calls == ["first", "second"]
    assert peak[0] == 1


# ---- held, lost, check, fence ----


def test_fence_increases_with_every_acquisition(holder):
    fences = []
    for _ in range(3):
        with Marathon("fenced", **FAST) as lock:
            fences.append(lock.fence)
    other = holder("fenced")["fence"]
    fences.append(other)
    assert all(isinstance(fence, int) for fence in fences)
    assert fences == sorted(set(fences)), fences


def test_fence_increases_across_a_takeover():
    stale = Lock.objects.create(
        name="taken",
        owner="dead:1",
        token="0" * 32,
        heartbeat_at=timezone.now() - datetime.timedelta(hours=1),
    )
    with Marathon("taken", **FAST) as lock:
        assert lock.fence > stale.pk
        assert row("taken").token != "0" * 32


# ---- heartbeat ----


def test_heartbeat_refreshes_heartbeat_at_with_the_database_clock():
    with Marathon("beating", **FAST):
        first = row("beating").heartbeat_at
        later = wait_for(
            lambda: (
                row("beating").heartbeat_at
                if row("beating").heartbeat_at > first
                else None
            ),
            timeout=3,
            what="a heartbeat",
        )
        assert abs((db_now() - later).total_seconds()) < 2


def test_setting_read_when_used_changes_the_heartbeat_of_a_new_acquire():
    lock = Marathon("configured")
    with override_settings(MARATHON_HEARTBEAT=0.1, MARATHON_STALE_AFTER=5):
        with lock:
            first = row("configured").heartbeat_at
            wait_for(
                lambda: row("configured").heartbeat_at > first,
                timeout=3,
                what="a 0.1 s heartbeat",
            )
    # A lingering heartbeat thread may beat once early for a new lock; start afresh.
    wait_for(
        lambda: not heartbeat_threads(), timeout=3, what="the heartbeat thread to end"
    )
    with override_settings(MARATHON_HEARTBEAT=5, MARATHON_STALE_AFTER=10):
        with lock:
            first = row("configured").heartbeat_at
            threading.Event().wait(0.5)
            assert row("configured").heartbeat_at == first


# ---- takeover ----


def test_takes_over_a_stale_lock():
    Lock.objects.create(
        name="stale",
        owner="dead:1",
        token="0" * 32,
        heartbeat_at=timezone.now() - datetime.timedelta(seconds=30),
    )
    lock = Marathon("stale", heartbeat=1, stale_after=10)
    assert lock.acquire()
    assert row("stale").owner == lock.owner
    assert lock.release()


def test_takes_over_from_a_killed_process(holder):
    info = holder("killed")
    os.kill(info["pid"], signal.SIGKILL)
    finish(info["process"])
    lock = Marathon("killed", wait=5, **FAST)
    assert lock.acquire()
    assert lock.fence > info["fence"]
    assert lock.release()


def test_never_takes_over_a_fresh_lock():
    Lock.objects.create(
        name="fresh", owner="alive:1", token="0" * 32, heartbeat_at=db_now()
    )
    assert Marathon("fresh", heartbeat=1, stale_after=30).acquire() is False
    assert row("fresh").owner == "alive:1"


def test_never_takes_over_a_lock_made_by_hand():
    Lock.objects.get_or_create(name="manual")
    Lock.objects.filter(name="manual").update(
        locked_at=timezone.now() - datetime.timedelta(days=1)
    )
    with pytest.raises(AlreadyRunning) as caught:
        with Marathon("manual", wait=0.6, **FAST):
            pass
    assert "no heartbeat" in str(caught.value)
    assert row("manual").heartbeat_at is None


# ---- loss ----


def test_deleted_row_is_reported_lost_once(caplog):
    calls = []
    lock = Marathon("deleted", on_lost=calls.append, **FAST)
    with caplog.at_level(logging.ERROR, logger="marathon"):
        with pytest.raises(LockLost) as caught:
            with lock:
                Lock.objects.filter(name="deleted").delete()
                wait_for(lambda: lock.lost, timeout=3, what="loss")
                wait_for(
                    lambda: calls, timeout=3, what="on_lost"
                )  # called just after the flag is set
                assert not lock.held
                with pytest.raises(LockLost):
                    lock.check()
                threading.Event().wait(0.3)  # three more heartbeats: still one call
    assert calls == [lock]
    assert caught.value.name == "deleted"
    errors = [
        r for r in caplog.records if r.name == "marathon" and r.levelno == logging.ERROR
    ]
    assert len(errors) == 1 and "deleted" in errors[0].getMessage()


def test_lock_lost_is_not_raised_over_another_exception():
    lock = Marathon("two-errors", **FAST)
    with pytest.raises(KeyError):
        with lock:
            Lock.objects.filter(name="two-errors").delete()
            wait_for(lambda: lock.lost, timeout=3, what="loss")
            raise KeyError("mine")


def test_check_is_quiet_while_held():
    with Marathon("checked", **FAST) as lock:
        lock.check()
        assert lock.held and not lock.lost


def test_holder_never_touches_the_row_of_the_next_holder():
    old = Marathon(
        "handover", heartbeat=5, stale_after=10
    )  # its heartbeat will not notice in time
    assert old.acquire()
    Lock.objects.filter(name="handover").delete()
    new = Marathon("handover", **FAST)
    assert new.acquire()
    token = row("handover").token
    assert old.release() is False
    assert row("handover").token == token and new.held
    assert new.release() is True


# ---- transactions ----


def test_acquire_in_atomic_is_visible_to_another_process_at_once():
    lock = Marathon("in-atomic", **FAST)
    with transaction.atomic():
        assert lock.acquire()
        child = start_child("try", "in-atomic", 0)
        code, out, err = finish(child)
        assert code == 0, err
        seen = json.loads(out)
        assert seen["acquired"] is False and seen["owner"] == lock.owner
        transaction.set_rollback(True)
    assert row("in-atomic") is not None  # the rollback did not undo the acquire
    assert lock.held
    assert lock.release()


def test_release_in_atomic_is_not_undone_by_a_rollback():
    lock = Marathon("release-atomic", **FAST)
    assert lock.acquire()
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            if (
                not SQLITE
            ):  # on SQLite even a read here would block the release's commit
                Lock.objects.create(name="written-in-atomic")
            assert lock.release()
            raise RuntimeError
    assert row("release-atomic") is None
    assert row("written-in-atomic") is None


@pytest.mark.skipif(
    SQLITE,
    reason="SQLite has one writer: a transaction that read or wrote blocks the lock's own connection",
)
def test_acquire_after_a_write_in_atomic_is_still_independent():
    lock = Marathon("after-write", **FAST)
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            Lock.objects.create(name="written-in-atomic")
            assert lock.acquire()
            child = start_child("count", "after-write")
            code, out, err = finish(child)
            assert code == 0, err
            assert json.loads(out)["count"] == 1
            raise RuntimeError
    assert row("written-in-atomic") is None and row("after-write") is not None
    assert lock.release()


def test_acquire_in_atomic_of_another_process_survives_its_rollback(tmp_path):
    ready, release = str(tmp_path / "ready"), str(tmp_path / "release")
    child = start_child("hold-in-atomic", "child-atomic", ready, release)
    wait_for_file(ready, process=child)
    assert row("child-atomic") is not None  # committed, though its transaction is open
    touch(release)
    code, out, err = finish(child)
    assert code == 0, err
    assert json.loads(out) == {"held": True, "released": True}
    assert row("child-atomic") is None


# ---- names ----


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize("name", [None, b"job", 7, "", "x" * 256, "a\x00b", "\ud800"])
def test_bad_names_raise_value_error_before_any_query(name, django_assert_num_queries):
    with django_assert_num_queries(0):
        with pytest.raises(ValueError):
            Marathon(name)


@pytest.mark.parametrize("name", ["x" * 255, "nightly 🏃‍♀️ run", "ünïcødé", "名前"])
def test_long_and_unicode_names_work(name):
    with Marathon(name, **FAST):
        assert Lock.objects.get(name=name).name == name
    assert not Lock.objects.filter(name=name).exists()


# ---- validation of arguments and settings ----


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"wait": -1},
        {"wait": True},
        {"wait": "1"},
        {"heartbeat": 0},
        {"heartbeat": -1},
        {"heartbeat": True},
        {"heartbeat": "1"},
        {"stale_after": 0},
        {"stale_after": False},
        {"stale_after": []},
        {"heartbeat": 1, "stale_after": 1.5},
        {"on_lost": "not callable"},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        Marathon("args", **kwargs)


@pytest.mark.parametrize(
    "overrides",
    [
        {"MARATHON_HEARTBEAT": "10"},
        {"MARATHON_HEARTBEAT": 0},
        {"MARATHON_STALE_AFTER": -5},
        {"MARATHON_HEARTBEAT": 10, "MARATHON_STALE_AFTER": 15},
    ],
)
def test_bad_settings_raise_value_error_when_used(overrides):
    lock = Marathon("settings")  # settings are not read yet
    with override_settings(**overrides):
        with pytest.raises(ValueError):
            lock.acquire()
    assert row("settings") is None


def test_database_comes_from_using_then_the_setting():
    from django.db.utils import ConnectionDoesNotExist

    with override_settings(MARATHON_DATABASE="nowhere"):
        with pytest.raises(ConnectionDoesNotExist):
            Marathon("db", **FAST).acquire()
        with Marathon("db", using="default", **FAST):
            assert row("db") is not None
    with override_settings(MARATHON_DATABASE="default"):
        with Marathon("db", **FAST):
            assert row("db") is not None
    with pytest.raises(ConnectionDoesNotExist):
        Marathon("db", using="nowhere", **FAST).acquire()


# ---- threads and connections ----


def only_our_session():
    """Wait until this test's connection is the server's only session on the test database.

    Sessions of ended processes leave the server's list a moment after they close.
    """
    connection.ensure_connection()
    if server_connections() is not None:
        wait_for(
            lambda: server_connections() == 1, timeout=3, what="other sessions to end"
        )
        return True
    return False


def test_heartbeat_thread_and_its_connection_end_after_release():
    wait_for(
        lambda: not heartbeat_threads(),
        timeout=3,
        what="earlier heartbeat threads to end",
    )
    counted = only_our_session()
    lock = Marathon("tidy", **FAST)
    assert lock.acquire()
    first = row("tidy").heartbeat_at
    wait_for(lambda: row("tidy").heartbeat_at > first, timeout=3, what="a heartbeat")
    assert len(heartbeat_threads()) == 1
    if counted:
        assert server_connections() == 2  # the heartbeat's own connection
    assert lock.release()
    wait_for(
        lambda: not heartbeat_threads(), timeout=3, what="the heartbeat thread to end"
    )
    if counted:
        wait_for(
            lambda: server_connections() == 1,
            timeout=3,
            what="the heartbeat connection to close",
        )


def test_one_heartbeat_thread_serves_several_locks():
    with Marathon("many-1", **FAST), Marathon("many-2", **FAST), Marathon(
        "many-3", **FAST
    ):
        assert len(heartbeat_threads()) == 1


@pytest.mark.skipif(SQLITE, reason="SQLite has no server sessions to count")
def test_acquire_and_release_in_atomic_leave_no_connection_open():
    wait_for(
        lambda: not heartbeat_threads(),
        timeout=3,
        what="earlier heartbeat threads to end",
    )
    only_our_session()
    lock = Marathon("private", heartbeat=5, stale_after=10)
    with transaction.atomic():
        assert lock.acquire()  # on a private connection, closed at once
        wait_for(
            lambda: server_connections() == 1,
            timeout=3,
            what="the acquire's connection to close",
        )
        assert lock.release()
        wait_for(
            lambda: server_connections() == 1,
            timeout=3,
            what="the release's connection to close",
        )
