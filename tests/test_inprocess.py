"""Issue 8: the lock holds in ordinary use inside one process.

Thread interleavings are forced through marathon's test seam (`marathon._hook`,
called at named points), not hoped for; a bounded churn runs on top. Each test
names the item of issue 8 it checks.
"""

import datetime
import logging
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from django.db import (
    InterfaceError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.backends.signals import connection_created
from django.db.utils import ConnectionDoesNotExist
from django.test import override_settings
from django.utils import timezone

import marathon
from marathon import (
    AlreadyRunning,
    LastRun,
    Lock,
    LockLost,
    Marathon,
    SingleRunner,
    lock_acquired,
    lock_lost,
)
from tests.processes import (
    DEADLINE,
    FAST,
    child_env,
    heartbeat_threads,
    start_python,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)


def row(name):
    return Lock.objects.using("default").filter(name=name).first()


def beaten(name, timeout=DEADLINE):
    """Wait until the heartbeat refreshes `name`'s row twice more; fail if it never does."""
    first = row(name).heartbeat_at
    wait_for(
        lambda: row(name) and row(name).heartbeat_at > first,
        timeout,
        "a heartbeat of %r" % name,
    )
    second = row(name).heartbeat_at
    wait_for(
        lambda: row(name) and row(name).heartbeat_at > second,
        timeout,
        "a second heartbeat of %r" % name,
    )
    return True


class Seam:
    """Stop the thread that reaches `point` until the test lets it go (once, or every time)."""

    def __init__(self, point, once=True, action=None):
        self.point = point
        self.once = once
        self.action = action  # called on the stopped thread before it goes on
        self.reached = threading.Event()
        self.go = threading.Event()
        self.facts = None
        self.fired = False

    def __call__(self, point, **facts):
        if point != self.point or (self.once and self.fired):
            return
        self.fired = True
        self.facts = facts
        self.thread = threading.current_thread()
        self.reached.set()
        assert self.go.wait(DEADLINE), "the test never let %s go" % self.point
        if self.action is not None:
            self.action()


@contextmanager
def seam(point, **kwargs):
    hook = Seam(point, **kwargs)
    marathon._hook = hook
    try:
        yield hook
    finally:
        marathon._hook = None
        hook.go.set()


@pytest.fixture(autouse=True)
def no_hook_left():
    yield
    marathon._hook = None


# ---- 1. The heartbeat thread cannot die for good ----


def test_release_between_due_and_beat_keeps_the_heartbeat_alive(caplog):
    """1.0.0's race: the beat became due with one hold, the hold was released before the
    beat read the holds, and min() of nothing killed the thread for good."""
    first = Marathon("due-then-released", **FAST)
    with seam("heartbeat.beat") as stopped:
        assert first.acquire()
        assert stopped.reached.wait(DEADLINE), "no beat became due"
        assert (
            first.release()
        )  # while the heartbeat stands between its snapshot and its UPDATE
        stopped.go.set()
    second = Marathon("after-the-race", **FAST)
    assert second.acquire()
    try:
        assert beaten("after-the-race")
        assert second.held and not second.lost
    finally:
        assert second.release()
    assert not first.lost  # a released hold is never reported lost
    assert "Lost the lock" not in caplog.text


def test_acquire_while_the_idle_heartbeat_decides_to_end_is_beaten(monkeypatch):
    """A hold registered while the idle heartbeat is about to end must not join a thread that leaves."""
    monkeypatch.setattr(marathon, "_LINGER", 0.05)
    lock = Marathon("before-the-end", **FAST)
    with seam("heartbeat.idle") as stopped:
        assert lock.acquire()
        assert lock.release()
        assert stopped.reached.wait(DEADLINE)
        threading.Event().wait(
            0.1
        )  # past the linger: the thread will decide to end when let go
        late = Marathon("joins-late", **FAST)
        assert late.acquire()
        stopped.go.set()
    try:
        assert beaten("joins-late")
    finally:
        assert late.release()


def test_releases_do_not_wake_the_idle_heartbeat_and_it_still_ends():
    """A wake for every release cost more than the release's statement: the heartbeat thread
    is woken only to close an open session, and still notices within _LINGER that it is idle."""
    idle = []

    def count(point, **facts):
        if point == "heartbeat.idle":
            idle.append(time.monotonic())

    slow = {"heartbeat": 30, "stale_after": 60}  # no beat, so no session to close
    marathon._hook = count
    for _ in range(50):
        with Marathon("no-wake", **slow):
            pass
        threading.Event().wait(0.01)  # time for a woken thread to run
    ended = time.monotonic()
    wait_for(lambda: not heartbeat_threads(), DEADLINE, "the idle heartbeat to end")
    marathon._hook = None
    during = [t for t in idle if t < ended]
    assert len(during) <= 10, "%d wakes in 50 releases" % len(during)


def test_a_heartbeat_thread_that_cannot_start_leaves_no_row():
    def refuse():
        raise RuntimeError("can't start new thread")

    wait_for(
        lambda: not heartbeat_threads(), DEADLINE, "earlier heartbeat threads to end"
    )
    with seam("heartbeat.start", action=refuse) as stopped:
        stopped.go.set()
        with pytest.raises(RuntimeError, match="can't start new thread"):
            Marathon("no-thread", **FAST).acquire()
    assert row("no-thread") is None
    lock = Marathon("no-thread", **FAST)
    assert lock.acquire()  # the registry is clean: the next acquire starts a thread
    try:
        assert beaten("no-thread")
    finally:
        assert lock.release()


def test_a_heartbeat_thread_that_dies_hands_its_holds_on(monkeypatch):
    """Even an exception nobody expects (here SystemExit in the thread) leaves no hold unbeaten."""
    died = []
    monkeypatch.setattr(
        threading, "excepthook", died.append, raising=False
    )  # Python 3.8+ reports it there

    def die():
        raise SystemExit("the heartbeat thread dies")

    lock = Marathon("orphan", **FAST)
    with seam("heartbeat.beat", action=die) as stopped:
        assert lock.acquire()
        assert stopped.reached.wait(DEADLINE)
        stopped.go.set()
        stopped.thread.join(DEADLINE)
        assert not stopped.thread.is_alive()
    try:
        assert beaten("orphan")
        assert lock.held and not lock.lost
    finally:
        assert lock.release()


def test_churn_of_many_threads_leaves_every_hold_beaten():
    """Bounded stress on top of the forced interleavings: 1.0.0 died within 10-25 s of this."""
    previous = sys.getswitchinterval()
    stop = threading.Event()
    errors = []

    def churn(index):
        try:
            while not stop.is_set():
                # A short heartbeat churns the thread; a long stale_after keeps a
                # slow answer on a loaded machine from being (rightly) refused late.
                lock = Marathon("churn-%d" % index, heartbeat=0.02, stale_after=30)
                if lock.acquire():
                    threading.Event().wait(0.02)  # about one heartbeat
                    lock.release()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def busy():
        while not stop.is_set():
            sum(range(1000))

    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=churn, args=(i,)) for i in range(3)] + [
        threading.Thread(target=busy)
    ]
    try:
        for thread in threads:
            thread.start()
        threading.Event().wait(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(DEADLINE)
        sys.setswitchinterval(previous)
    assert errors == []
    lock = Marathon("after-churn", **FAST)
    assert lock.acquire()
    try:
        assert beaten("after-churn")
    finally:
        assert lock.release()


# ---- 2. Nothing after the insert leaves a row behind ----


def test_a_raising_lock_acquired_receiver_leaves_no_row():
    def receiver(sender, name, **kwargs):
        raise RuntimeError("metrics are down")

    lock_acquired.connect(receiver)
    try:
        with pytest.raises(RuntimeError, match="metrics are down"):
            with Marathon("bad-receiver", **FAST):
                pytest.fail("the block must not run")  # pragma: no cover
    finally:
        lock_acquired.disconnect(receiver)
    assert row("bad-receiver") is None
    with Marathon("bad-receiver", **FAST):  # free again, and in this process too
        pass


def test_an_interrupt_right_after_the_insert_leaves_no_row():
    def interrupt():
        raise KeyboardInterrupt

    with seam("acquire.taken", action=interrupt) as stopped:
        stopped.go.set()
        with pytest.raises(KeyboardInterrupt):
            Marathon("interrupted", **FAST).acquire()
    assert row("interrupted") is None


# ---- 3. No user code on the heartbeat's schedule ----


@pytest.mark.parametrize("slow", ["on_lost", "lock_lost", "log handler"])
def test_a_slow_loss_handler_does_not_stall_other_locks(slow):
    """A 5 s on_lost let another process take over a second, healthy lock in 1.0.0."""
    entered, leave = threading.Event(), threading.Event()

    def block(*args, **kwargs):
        entered.set()
        leave.wait(DEADLINE)

    class Handler(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                block()

    handler = Handler()
    on_lost = block if slow == "on_lost" else None
    if slow == "lock_lost":
        lock_lost.connect(block)
    if slow == "log handler":
        logging.getLogger("marathon").addHandler(handler)
    doomed = Marathon("doomed", on_lost=on_lost, **FAST)
    healthy = Marathon("healthy", **FAST)
    try:
        assert doomed.acquire() and healthy.acquire()
        Lock.objects.using("default").filter(
            name="doomed"
        ).delete()  # an operator releases it
        assert entered.wait(DEADLINE), "the loss was never reported"
        assert doomed.lost
        assert beaten("healthy")  # while the handler is still blocked
        assert healthy.held and not healthy.lost
    finally:
        leave.set()
        lock_lost.disconnect(block)
        logging.getLogger("marathon").removeHandler(handler)
        healthy.release()


# ---- 6. Takeover is judged by the holder's stale_after ----


def _planted(name, age, stale_after):
    """A row as a live holder leaves it: its last heartbeat `age` seconds ago, by this host's clock."""
    then = timezone.now() - datetime.timedelta(seconds=age)
    lock = Lock(
        name=name,
        owner="elsewhere:1",
        token="t" * 32,
        heartbeat_at=then,
        stale_after=stale_after,
    )
    lock.save(using="default")
    Lock.objects.using("default").filter(pk=lock.pk).update(locked_at=then)
    return lock


def test_a_shorter_stale_after_does_not_take_over_a_live_holder():
    _planted("rolling-deploy", age=3, stale_after=30)
    with pytest.raises(AlreadyRunning) as raised:
        with Marathon("rolling-deploy", heartbeat=0.5, stale_after=1):
            pass
    assert raised.value.owner == "elsewhere:1"
    assert row("rolling-deploy").owner == "elsewhere:1"


def test_a_row_stale_by_its_own_stale_after_is_taken_over():
    _planted("truly-stale", age=3, stale_after=2)
    with Marathon("truly-stale", heartbeat=10, stale_after=60) as lock:
        assert row("truly-stale").id == lock.fence
        assert row("truly-stale").stale_after == 60


def test_operators_judge_a_row_by_its_own_stale_after():
    _planted("long-lived", age=3, stale_after=30)
    _planted("short-lived", age=3, stale_after=2)
    with override_settings(MARATHON_STALE_AFTER=1):
        queryset = marathon._with_state(
            Lock.objects.using("default").order_by("name"), connection.vendor
        )
        states = {lock.name: marathon._state(lock, 1) for lock in queryset}
        assert states == {"long-lived": "running", "short-lived": "stale"}
        stale = [lock for lock in queryset if marathon._state(lock, 1) == "stale"]
        released = marathon._release_stale("default", stale, 1)
    assert [lock.name for lock in released] == ["short-lived"]
    assert row("long-lived") is not None


def test_a_deadlock_in_release_stale_repeats_one_delete_not_the_list(capsys):
    """InnoDB rolls back one statement of a deadlock and asks for it again. The operator's
    release repeats that DELETE only: repeating the list would find the rows already
    deleted gone and report them not released."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL/MariaDB only: InnoDB's deadlock (1213)")
    for name in ("dead-a", "dead-b", "dead-c"):
        _planted(name, age=3, stale_after=2)
    deletes = []

    def deadlock_once(execute, sql, params, many, context):
        if sql.startswith("DELETE"):
            deletes.append(sql)
            if len(deletes) == 2:  # the second row's, before it is sent
                raise OperationalError(1213, "Deadlock found when trying to get lock")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(deadlock_once):
        code = marathon._main(["release", "--stale"])
    out = capsys.readouterr().out
    assert len(deletes) == 4  # three rows, one of them twice
    assert code == 0 and "Released 3 lock(s)" in out, out
    assert not Lock.objects.filter(name__startswith="dead-").exists()


# ---- 7. The holder knows of a loss before anyone can take over ----


def test_the_loss_deadline_leaves_half_an_interval_before_staleness():
    lock = Marathon("deadline", heartbeat=1, stale_after=2)
    assert lock.acquire()
    try:
        hold = lock._hold
        assert hold.deadline == pytest.approx(hold.confirmed + 2 - 0.5)
    finally:
        lock.release()


# ---- 9. MARATHON_DATABASE everywhere ----


def test_lock_objects_and_0_1_forms_use_marathon_database():
    with override_settings(MARATHON_DATABASE="nowhere"):
        with pytest.raises(ConnectionDoesNotExist):
            Lock.objects.get_or_create(name="elsewhere")

        class Job(SingleRunner):
            lock_name = "elsewhere"

        with pytest.raises(ConnectionDoesNotExist):
            Job().is_locked()
        with pytest.raises(ConnectionDoesNotExist):
            Lock(name="elsewhere").save()
    with override_settings(MARATHON_DATABASE="default"):
        lock, created = Lock.objects.get_or_create(name="here")
        assert created and lock.pk


# ---- 10. A lost reply is recognised ----


def dropping(after, statements=None):
    """An execute wrapper: the first statement for which after(sql) is true runs, then its
    connection is closed under it, as a dropped connection does: the server committed, the
    reply is lost. `statements` (a list) gets every statement sent."""
    dropped = []

    def wrapper(execute, sql, params, many, context):
        if statements is not None:
            statements.append(sql)
        result = execute(sql, params, many, context)
        if not dropped and after(sql):
            dropped.append(sql)
            context["connection"].connection.close()
            raise InterfaceError("connection already closed")
        return result

    wrapper.dropped = dropped
    return wrapper


def ours(sql):
    return "marathon_" in sql


def acquires(sql):
    """The statement that inserts the lock's row (not SQLite's SELECT before it)."""
    return "marathon_acquire" in sql or (
        sql.startswith("INSERT") and "marathon_lock" in sql
    )


def releases(sql):
    return "marathon_release" in sql or sql.startswith("DELETE")


@pytest.fixture
def drops():
    """Skips where no connection can be dropped. (PyMySQL 1.0, whose ping() reconnects by
    default, runs them too: marathon pings without reconnecting.)"""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no connection to drop")


@pytest.mark.parametrize("fresh", [False, True], ids=["open", "fresh"])
def test_an_acquire_whose_reply_was_lost_recognises_its_own_row(drops, fresh):
    """The acquire commits, the connection drops before the reply: it is sent again on a new
    connection and finds our token. Also on a connection that the acquire opened itself (a new
    thread, a request after CONN_MAX_AGE=0, a command), where 1.1's first cut gave up and left
    the row behind, blocking the name for stale_after."""
    if fresh:
        connection.close()
    else:
        connection.ensure_connection()
    lock = Marathon("lost-reply", **FAST)
    wrapper = dropping(ours)  # not Django's own set-up of a new connection (MySQL)
    with connection.execute_wrapper(wrapper):
        assert lock.acquire()
    try:
        assert wrapper.dropped
        assert row("lost-reply").id == lock.fence
        assert lock.held
    finally:
        assert lock.release()
    assert row("lost-reply") is None


@pytest.mark.parametrize("min_interval", [None, 60], ids=["plain", "min_interval"])
def test_a_release_whose_reply_was_lost_is_not_a_loss(drops, caplog, min_interval):
    """The DELETE commits, the connection drops before the reply: sent again on a new
    connection, it finds the row gone, and knows it was ours (before the hold's deadline nobody
    could take it over): no LockLost, no lock_lost, and the run is recorded ok."""
    losses = []
    receiver = lambda sender, **kwargs: losses.append(kwargs["name"])  # noqa: E731
    lock_lost.connect(receiver, weak=False)
    connection.ensure_connection()
    wrapper = dropping(releases)
    try:
        with connection.execute_wrapper(wrapper):
            with Marathon("lost-release-reply", min_interval=min_interval, **FAST):
                pass
    finally:
        lock_lost.disconnect(receiver)
    assert wrapper.dropped and row("lost-release-reply") is None
    assert not losses, losses
    assert "Lost the lock" not in caplog.text
    assert "found its row gone" in caplog.text
    if min_interval:
        last = LastRun.objects.using("default").get(name="lost-release-reply")
        assert last.outcome == "ok"


def test_a_release_whose_connection_died_before_it_is_sent_again(drops, caplog):
    """The connection is dead before the DELETE reaches the server: the DELETE is sent again
    on a new connection, deletes the row, and the release is clean, without the warning."""
    connection.ensure_connection()
    lock = Marathon("dead-before-release", **FAST)
    assert lock.acquire()
    connection.connection.close()  # the server restarted, or an idle timeout
    assert lock.release()
    assert row("dead-before-release") is None
    assert "found its row gone" not in caplog.text


def test_a_release_that_finds_its_row_deleted_by_an_operator_is_a_loss(drops):
    """Only a release that was sent again reads a missing row as its own: one sent once that
    finds its row gone (an operator released it) is a loss, as before."""
    lock = Marathon("operator-deleted", **FAST)
    assert lock.acquire()
    Lock.objects.using("default").filter(name="operator-deleted").delete()
    assert not lock.release()
    assert lock.lost


def test_an_acquire_inside_a_transaction_whose_reply_was_lost_recognises_its_own_row(
    drops,
):
    """Inside atomic() the statement runs on marathon's own connection: a lost reply there is
    sent again too."""
    wrapper = dropping(ours)

    def on_connect(sender, connection, **kwargs):
        if threading.current_thread() is main:
            connection.execute_wrappers.append(wrapper)

    main = threading.current_thread()
    connection_created.connect(on_connect, weak=False)
    lock = Marathon("lost-reply-atomic", **FAST)
    try:
        with transaction.atomic():
            assert lock.acquire()
            assert wrapper.dropped
    finally:
        connection_created.disconnect(on_connect)
    try:
        assert row("lost-reply-atomic").id == lock.fence
    finally:
        assert lock.release()


STALE = "2000-01-01T00:00:00Z"


def test_a_release_sent_again_that_finds_a_takeover_after_its_deadline_is_a_loss(
    drops, caplog
):
    """The first DELETE never reaches the server: the connection hangs (a partition) until
    the unbeaten row is stale and another host takes it over, then dies. The DELETE sent
    again finds the row gone after the hold's deadline: that is a loss, not our release."""
    a = Marathon("late-retry", **FAST)
    b = Marathon("late-retry", **FAST)
    assert a.acquire()
    losses = []
    receiver = lambda sender, **kwargs: losses.append(kwargs["fence"])  # noqa: E731
    lock_lost.connect(receiver, weak=False)
    taken = []

    def take_over():
        try:
            taken.append(b.acquire(wait=DEADLINE))
        finally:
            connections.close_all()

    first = []

    def hang_then_die(execute, sql, params, many, context):
        if not first and releases(sql):
            first.append(sql)
            other = threading.Thread(target=take_over)
            other.start()
            other.join(DEADLINE)
            context["connection"].connection.close()
            raise InterfaceError("connection already closed")
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(hang_then_die):
            released = a.release()
        assert taken == [True], "B never took the stale row over"
        try:
            assert not released
            wait_for(lambda: losses == [a.fence], DEADLINE, "lock_lost for A")
            assert "found its row gone" not in caplog.text
        finally:
            assert b.release()
    finally:
        lock_lost.disconnect(receiver)


def test_an_operators_release_whose_reply_was_lost_is_an_error_not_a_miscount(
    drops, capsys, caplog
):
    """An operator's DELETE is sent once: sent again, it could not tell the row its lost reply
    deleted from one the holder released meanwhile, and would report it not released."""
    for name in ("stale-a", "stale-b"):
        Lock.objects.create(name=name, owner="web1:42", heartbeat_at=STALE)
    wrapper = dropping(lambda sql: sql.startswith("DELETE"))
    with connection.execute_wrapper(wrapper):
        code = marathon._main(["release", "--stale"])
    out, err = capsys.readouterr()
    assert wrapper.dropped
    assert code == 3 and "Released" not in out, (code, out, err)
    assert "error" in err


def test_an_acquire_answered_after_its_loss_deadline_is_not_taken(drops):
    """The INSERT commits, its reply comes later than stale_after - heartbeat / 2 (a stalled
    database, a lost reply sent again): another host may take the row over at once, so the
    row is deleted again and the attempt fails, as one against a busy database does."""
    stalled = []

    def stall_after_commit(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not stalled and ours(sql):
            stalled.append(sql)
            threading.Event().wait(FAST["stale_after"])
            context["connection"].connection.close()
            raise InterfaceError("connection already closed")
        return result

    connection.ensure_connection()
    lock = Marathon("stale-on-arrival", **FAST)
    with connection.execute_wrapper(stall_after_commit):
        with pytest.raises(OperationalError, match="past the lock's loss deadline"):
            lock.acquire()
    assert stalled and not lock.held
    assert row("stale-on-arrival") is None
    assert lock.acquire()  # the next attempt, answered in time, takes it
    assert lock.release()


def stalling(after, then=None):
    """An execute wrapper: the first statement for which after(sql) is true commits, and its
    answer comes FAST's stale_after later (a database that stalled). `then(sql)`, if given,
    may raise for the statements that follow, before they are sent, as a failing database
    does."""
    stalled = []

    def wrapper(execute, sql, params, many, context):
        if stalled and then is not None:
            then(sql)  # before it reaches the database
        result = execute(sql, params, many, context)
        if not stalled and after(sql):
            stalled.append(sql)
            threading.Event().wait(FAST["stale_after"] + 0.3)
        return result

    wrapper.stalled = stalled
    return wrapper


def test_a_row_a_late_attempt_could_not_delete_is_not_adopted_by_the_next(drops):
    """Attempt 1 is answered late and its DELETE of the row fails. Attempt 2 (wait > 0) must not
    take that row, already stale, for its own: each attempt has a token of its own, so the
    row is a stranger's, taken over once stale, and no two holders overlap."""
    failed = []

    def fail_the_delete(sql):
        if not failed and releases(sql):
            failed.append(sql)
            raise OperationalError("canceling statement due to lock timeout")

    a = Marathon("late-adopted", **FAST)
    b = Marathon("late-adopted", **FAST)
    wrapper = stalling(acquires, fail_the_delete)
    with seam("heartbeat.beat"):  # a heartbeat too slow to tell A of a takeover
        try:
            with connection.execute_wrapper(wrapper):
                assert a.acquire(wait=DEADLINE)
            assert wrapper.stalled and failed
            assert not (b.acquire() and a.held), "A and B hold the lock at once"
        finally:
            a.release()
            b.release()


def test_a_row_an_earlier_attempt_left_is_deleted_not_taken_over(drops, caplog):
    """The row attempt 1 left (answered late, its DELETE failed) is the acquisition's own, not
    an abandoned run: attempt 2 deletes it before it inserts. So lock_acquired says
    took_over=False, no takeover is logged, and no 'abandoned' run is recorded."""
    failed, seen = [], []

    def fail_the_delete(sql):
        if not failed and releases(sql):
            failed.append(sql)
            raise OperationalError("canceling statement due to lock timeout")

    def receiver(sender, took_over, **kwargs):
        seen.append(took_over)

    lock = Marathon("late-left", min_interval=60, **FAST)
    wrapper = stalling(acquires, fail_the_delete)
    lock_acquired.connect(receiver, weak=False)
    try:
        with connection.execute_wrapper(wrapper):
            assert lock.acquire(wait=DEADLINE)
        assert wrapper.stalled and failed
        assert seen == [False]
        assert "Took over" not in caplog.text
        assert Lock.objects.filter(name="late-left").count() == 1
    finally:
        lock_acquired.disconnect(receiver)
        assert lock.release()
    assert [run.outcome for run in LastRun.objects.filter(name="late-left")] == ["ok"]


def test_an_attempt_sent_again_keeps_its_own_row(drops):
    """With a min_interval the last-run SELECT follows the insert; its connection dies, so the
    attempt is sent again. The send again must find and keep the row the first committed: were
    it to delete it and insert anew, a contender could take the name in between."""
    name = "resend-keeps"
    b = Marathon(name, min_interval=60, **FAST)
    got = []

    def b_acquires():
        try:
            got.append(b.acquire())
        finally:
            connections.close_all()

    dropped = dropping(
        lambda sql: "marathon_lastrun" in sql and sql.startswith("SELECT")
    )

    def wrapper(execute, sql, params, many, context):
        result = dropped(execute, sql, params, many, context)
        if dropped.dropped and not got and releases(sql):  # a gap: B tries now
            other = threading.Thread(target=b_acquires)
            other.start()
            other.join(DEADLINE)
        return result

    a = Marathon(name, min_interval=60, **FAST)
    connection.ensure_connection()
    try:
        with connection.execute_wrapper(wrapper):
            assert a.acquire(), (
                "A's own send again deleted its row, and B took the name"
            )
        assert dropped.dropped and not got
    finally:
        a.release()
        b.release()


def test_a_standby_deletes_the_row_of_an_insert_whose_reply_was_lost(drops, caplog):
    """The insert commits, its reply is lost, and the send again on a new connection fails (a
    server restarting): the attempt fails without knowing its row. A standby waits on, and
    its next attempt deletes that row by its token, instead of waiting for it to go stale and
    taking it over as an abandoned run of its own host."""
    name = "standby-lost-insert"
    Lock.objects.create(
        name=name,
        owner="web1:42",
        heartbeat_at=timezone.now(),
        token="dead" * 8,
        stale_after=60,
    )
    seen, state = [], {"acquires": 0, "freed": False, "fail_next": False}

    def receiver(sender, took_over, **kwargs):
        seen.append(took_over)

    def free_the_name():
        try:
            Lock.objects.filter(name=name, token="dead" * 8).delete()
        finally:
            connections.close_all()

    def wrapper(execute, sql, params, many, context):
        if state["fail_next"] and ours(sql):
            state["fail_next"] = False
            raise OperationalError("the database system is starting up")
        result = execute(sql, params, many, context)
        if acquires(sql):
            state["acquires"] += 1
            if (
                state["acquires"] == 2
            ):  # inserted; the reply is lost; the send again fails
                state["fail_next"] = True
                context["connection"].connection.close()
                raise InterfaceError("connection already closed")
        if not state["freed"] and (
            "marathon_acquire" in sql or sql.startswith("SELECT id, owner")
        ):  # attempt 1 found the holder, which leaves now
            state["freed"] = True
            other = threading.Thread(target=free_the_name)
            other.start()
            other.join(DEADLINE)
        return result

    connection.ensure_connection()
    lock = Marathon(name, **FAST)
    lock_acquired.connect(receiver, weak=False)
    try:
        with connection.execute_wrapper(wrapper):
            assert marathon._acquire_unless_signalled(lock, DEADLINE, []).fence
        assert state["acquires"] >= 3
        assert seen == [False]
        assert "Took over" not in caplog.text
        assert Lock.objects.filter(name=name).count() == 1
    finally:
        lock_acquired.disconnect(receiver)
        assert lock.release()


def test_a_row_left_by_an_attempt_that_met_a_busy_sqlite_is_not_adopted(
    monkeypatch, caplog
):
    """The same without an injected fault: with a min_interval the INSERT commits, then another
    connection holds SQLite's write lock past the busy timeout, so the last-run SELECT fails;
    the next attempt within `wait` must not take the left row for its own, and deletes it
    rather than take it over as an abandoned run."""
    import sqlite3

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock")
    connection.close()
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {"timeout": 0.5})
    locked, blockers = threading.Event(), []

    def block():
        other = sqlite3.connect(
            connection.settings_dict["NAME"], isolation_level=None, timeout=5
        )
        try:
            other.execute("BEGIN EXCLUSIVE")
            locked.set()
            threading.Event().wait(FAST["stale_after"] + 0.3)
            other.execute("COMMIT")
        finally:
            other.close()

    def wrapper(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not blockers and acquires(sql):
            blockers.append(threading.Thread(target=block))
            blockers[0].start()
            assert locked.wait(DEADLINE)
        return result

    a = Marathon("busy-adopted", min_interval=60, **FAST)
    b = Marathon("busy-adopted", min_interval=60, **FAST)
    with seam("heartbeat.beat"):
        try:
            with connection.execute_wrapper(wrapper):
                assert a.acquire(wait=DEADLINE)
            blockers[0].join(DEADLINE)
            assert "Took over" not in caplog.text
            assert not (b.acquire() and a.held), "A and B hold the lock at once"
        finally:
            a.release()
            b.release()
            connection.close()


def test_a_standby_logs_answers_too_late_once_however_late(caplog):
    """A standby (python -m marathon run --wait) logs each kind of failed attempt once; an
    acquire answered too late says how late, which differs from attempt to attempt."""
    stalls = iter([0.35, 0.45, 0.55])

    def stall_every_acquire(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if acquires(sql):
            threading.Event().wait(next(stalls, 0.75))
        return result

    lock = Marathon("late-standby", heartbeat=0.1, stale_after=0.3)
    with connection.execute_wrapper(stall_every_acquire):
        with pytest.raises(OperationalError, match="loss deadline"):
            # three stalls and two pauses take 1.5 s; a loaded CI machine adds more
            marathon._acquire_unless_signalled(lock, 5.0, [])
    assert next(stalls, None) is None, "fewer than three attempts"
    waiting = [
        r.getMessage() for r in caplog.records if "an attempt failed" in r.getMessage()
    ]
    assert len(waiting) == 1, waiting
    assert row("late-standby") is None


def test_an_error_marathon_raises_is_never_its_own_cause(drops):
    """An error raised as it is (no advice to add) keeps its cause, the driver's error: one that
    is its own cause makes Django's error reporter (the DEBUG page, AdminEmailHandler) warn
    of a cycle."""
    import warnings

    from django.views.debug import ExceptionReporter

    with connection.execute_wrapper(stalling(acquires)):
        with pytest.raises(OperationalError, match="loss deadline") as caught:
            Marathon("late-cycle", **FAST).acquire()
    error = caught.value
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        ExceptionReporter(
            None, type(error), error, error.__traceback__
        ).get_traceback_text()
    assert error.__cause__ is not error
    assert not [w for w in warned if "Cycle" in str(w.message)]


@pytest.mark.parametrize("fault", ["lost", "late"])
def test_a_takeover_whose_answer_was_lost_or_late_still_says_took_over(drops, fault):
    """The stale row is deleted, ours inserted, and then the answer is lost (the send that finds
    our row must still say so), or comes past the loss deadline (the attempt deletes its row
    again, and the next attempt of the acquisition finds the name free). Either way this
    acquisition abandoned a run: lock_acquired says took_over=True."""
    Lock.objects.create(
        name="took-" + fault, owner="web1:42", heartbeat_at=STALE, token="dead" * 8
    )
    seen, deleted = [], []

    def receiver(sender, took_over, **kwargs):
        seen.append(took_over)

    def after_the_takeover(sql):
        if sql.startswith("DELETE"):
            deleted.append(sql)
            return False
        return bool(deleted) and acquires(sql)

    lock_acquired.connect(receiver, weak=False)
    connection.ensure_connection()
    lock = Marathon("took-" + fault, **FAST)
    wrapper = (dropping if fault == "lost" else stalling)(after_the_takeover)
    try:
        with connection.execute_wrapper(wrapper):
            assert lock.acquire(wait=DEADLINE)
        assert deleted and (wrapper.dropped if fault == "lost" else wrapper.stalled)
        assert seen == [True]
    finally:
        lock_acquired.disconnect(receiver)
        assert lock.release()


@pytest.mark.parametrize("how", ["acquire", "standby"])
def test_took_over_is_not_said_after_a_live_holder_ran_in_between(how):
    """A deletes the stale row, and B takes the free name before A's insert. A waits while B
    runs and releases cleanly, then takes the lock: its predecessor is B, which did not
    crash, so took_over is False; also for the supervisor's standby, whose wait may last
    hours."""
    name = "took-then-live-" + how
    Lock.objects.create(
        name=name, owner="web1:42", heartbeat_at=STALE, token="dead" * 8
    )
    seen = []
    b_has_it = threading.Event()

    def receiver(sender, took_over, **kwargs):
        seen.append((threading.current_thread().name, took_over))

    def run_b():
        try:
            b = Marathon(name, **FAST)
            assert b.acquire()
            b_has_it.set()
            threading.Event().wait(0.5)  # B's run, which ends well
            assert b.release()
        finally:
            connections.close_all()

    b_thread = threading.Thread(target=run_b, name="B")

    def start_b_after_the_takeover(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        is_takeover = sql.startswith("DELETE") and "token" not in sql
        if is_takeover and not b_has_it.is_set():
            b_thread.start()  # B inserts into the name A just freed
            assert b_has_it.wait(DEADLINE)
        return result

    lock_acquired.connect(receiver, weak=False)
    a = Marathon(name, **FAST)
    try:
        with connection.execute_wrapper(start_b_after_the_takeover):
            if how == "acquire":
                assert a.acquire(wait=DEADLINE)
            else:
                assert marathon._acquire_unless_signalled(a, DEADLINE, []).fence
        b_thread.join(DEADLINE)
        assert seen == [("B", False), ("MainThread", False)]
    finally:
        lock_acquired.disconnect(receiver)
        a.release()


# ---- 11. Smaller ----


def test_submodule_imports_give_marathon_itself():
    import marathon.apps as apps_module
    import marathon.commands as commands_module
    import marathon.models as models_module

    assert models_module is marathon and models_module.Lock is Lock
    assert (
        apps_module is marathon
        and apps_module.MarathonConfig is marathon.MarathonConfig
    )
    assert commands_module.SingleRunnerCommand is marathon.SingleRunnerCommand


def test_mysql_charset_is_what_django_connects_with():
    if connection.vendor != "mysql":
        pytest.skip("MySQL/MariaDB only")
    settings_dict = dict(connection.settings_dict, OPTIONS={})
    silent = type(connections["default"])(settings_dict, "default")
    charset = silent.get_connection_params().get("charset")
    if charset == "utf8mb4":  # Django 4.2+ connects with utf8mb4 when OPTIONS is silent
        marathon._check_name_for(silent, "emoji-\U0001f600")
    else:
        with pytest.raises(ValueError, match="utf8mb4"):
            marathon._check_name_for(silent, "emoji-\U0001f600")


def test_release_inside_the_with_block_is_not_a_loss():
    with Marathon("early-release", **FAST) as lock:
        assert lock.release()
        assert not lock.held
    assert row("early-release") is None


def test_heartbeat_chunks_a_large_number_of_locks(monkeypatch):
    """Two parameters per lock: tens of thousands of locks would pass the driver's limit in one UPDATE."""
    if connection.vendor == "postgresql":
        pytest.skip("PostgreSQL sends two arrays, whatever the number of locks")
    monkeypatch.setattr(marathon, "_BEAT_CHUNK", 3)
    locks = [Marathon("chunk-%d" % i, **FAST) for i in range(10)]
    for lock in locks:
        assert lock.acquire()
    try:
        for i in (0, 4, 9):
            assert beaten("chunk-%d" % i)
        assert all(lock.held for lock in locks)
    finally:
        for lock in locks:
            assert lock.release()


def test_lost_is_reported_as_lock_lost_on_leaving_the_block():
    with pytest.raises(LockLost):
        with Marathon("deleted-under-us", **FAST) as lock:
            Lock.objects.using("default").filter(name="deleted-under-us").delete()
            wait_for(lambda: lock.lost, DEADLINE, "the loss")


# ---- What the adversarial review found ----


def test_a_release_deferred_past_a_closed_connection_still_happens():
    """close_old_connections() inside atomic() left the deferred release parked for ever, beaten."""
    from django.db import close_old_connections, transaction

    with transaction.atomic():
        with Marathon("closed-in-transaction", **FAST):
            pass
        connection.close()  # as close_old_connections() does for a broken connection
    close_old_connections()
    wait_for(
        lambda: row("closed-in-transaction") is None, DEADLINE, "the deferred release"
    )


def test_a_release_discarded_by_the_garbage_collector_still_happens(monkeypatch):
    """A finalizer run by the cyclic collector must not take locks: the heartbeat sees to it."""
    from django.db import transaction

    monkeypatch.setattr(
        marathon, "_collecting", True
    )  # as if the collector discarded it
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            with Marathon("collected", **FAST):
                pass
            raise RuntimeError("roll back")
    monkeypatch.setattr(marathon, "_collecting", False)
    assert row("collected") is not None  # nothing ran during the "collection"
    wait_for(
        lambda: row("collected") is None,
        DEADLINE,
        "the heartbeat to have the release run",
    )


def test_autocommit_false_in_databases_still_commits_every_lock_statement():
    code = (
        "import json, django; django.setup()\n"
        "from marathon import Marathon\n"
        "lock = Marathon('manual-transactions', heartbeat=0.2, stale_after=2)\n"
        "print(json.dumps(lock.acquire()))\n"
        "import sys; sys.stdout.flush(); sys.stdin.readline()\n"
        "print(json.dumps([lock.held, lock.release()]))\n"
    )
    child = start_python(
        ["-c", code], env=child_env(MARATHON_TEST_AUTOCOMMIT="0"), stdin=subprocess.PIPE
    )
    try:
        assert child.stdout.readline().strip() == "true"
        assert (
            row("manual-transactions") is not None
        )  # committed: another process sees it
        wait_for(
            lambda: (
                row("manual-transactions").heartbeat_at
                > row("manual-transactions").locked_at
            ),
            DEADLINE,
            "a beat",
        )
        out, err = child.communicate("go\n", timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert out.strip() == "[true, true]"
    assert row("manual-transactions") is None


def test_a_hold_taken_while_a_beat_hangs_is_lost_by_its_own_deadline():
    """The beat waited only for its own snapshot's deadlines; a hold taken meanwhile went unjudged."""
    long = Marathon("long-stale", heartbeat=0.2, stale_after=60)
    with seam("session.refresh") as stuck:
        assert long.acquire()
        assert stuck.reached.wait(DEADLINE), "no beat"
        short = Marathon("short-stale", heartbeat=0.2, stale_after=1)
        assert short.acquire()
        taken = time.monotonic()
        wait_for(lambda: short.lost, DEADLINE, "the short hold to be lost")
        assert (
            time.monotonic() - taken < 1.0 + 0.5
        )  # by its deadline, not the long hold's
        assert not long.lost
        stuck.go.set()
    assert long.release()
    assert not short.release()


def test_a_loss_found_by_the_release_is_reported_as_a_loss():
    reported = []

    def receiver(sender, name, **kwargs):
        reported.append(name)

    lock_lost.connect(receiver)
    called = threading.Event()
    try:
        with pytest.raises(LockLost):
            with Marathon(
                "gone-at-release",
                on_lost=lambda lock: called.set(),
                heartbeat=5,
                stale_after=60,
            ):
                Lock.objects.using("default").filter(name="gone-at-release").delete()
        assert called.wait(DEADLINE)
        wait_for(lambda: reported == ["gone-at-release"], DEADLINE, "lock_lost")
    finally:
        lock_lost.disconnect(receiver)


def test_an_on_lost_that_exits_does_not_end_the_reports():
    seen = []

    def leave(lock):
        seen.append(lock.name)
        raise SystemExit("a callback that exits")

    first = Marathon("exits-a", on_lost=leave, **FAST)
    second = Marathon("exits-b", on_lost=leave, **FAST)
    assert first.acquire() and second.acquire()
    Lock.objects.using("default").filter(name__startswith="exits-").delete()
    wait_for(lambda: sorted(seen) == ["exits-a", "exits-b"], DEADLINE, "both reports")


def test_a_paused_holder_knows_at_its_deadline():
    """held and check() look at the deadline themselves: a paused process may not hear the heartbeat."""
    lock = Marathon("paused", heartbeat=0.2, stale_after=1)
    with seam("session.refresh") as stuck:  # the heartbeat cannot confirm it
        assert lock.acquire()
        wait_for(lambda: not lock.held, DEADLINE, "held to turn False at the deadline")
        with pytest.raises(LockLost):
            lock.check()
        stuck.go.set()
    lock.release()
