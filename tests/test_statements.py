"""What each lock operation costs the database, in statements (issue 4).

Counted twice: on the wire, by an execute_wrapper on the connection the
operation uses (it also records whether the connection was in autocommit, so
no driver-issued BEGIN can hide), and on the server where that is cheap and
touches nothing global:

- SQLite: sqlite3's trace callback on the raw connection (every statement the
  library runs, BEGIN and COMMIT included);
- MariaDB/MySQL: the session's own status counters (Questions, Com_begin,
  Com_commit, Com_savepoint, ...);
- PostgreSQL: pg_stat_database.xact_commit of the test database, flushed with
  pg_stat_force_next_flush() (15+). In autocommit one statement is one
  transaction, so the delta counts statements; for the heartbeat,
  pg_stat_user_tables.n_tup_upd of marathon_lock counts the rows it refreshed.
"""

import contextlib
import re
import sys
import threading
import time

import pytest
from django.db import connection, connections
from django.db.backends.signals import connection_created

from marathon import Marathon

pytestmark = pytest.mark.django_db(transaction=True)

_TRANSACTION_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|START\s+TRANSACTION|END)\b", re.I
)
_MYSQL_COUNTERS = (
    "Questions",
    "Com_begin",
    "Com_commit",
    "Com_rollback",
    "Com_savepoint",
    "Com_release_savepoint",
    "Com_rollback_to_savepoint",
)
_SLOW = {"heartbeat": 30, "stale_after": 60}  # no heartbeat during a measurement


def _targets():
    """Most statements allowed for (acquire, failed attempt, release) on this database."""
    if connection.vendor == "mysql":
        return 2, 2, 1
    if connection.vendor == "sqlite":
        return 2, 1, 1  # it reads first: an attempt on a held lock must not write
    return 1, 1, 1


# ---- Counting ----


class _Wire:
    """An execute_wrapper: every statement sent, and the state it was sent in."""

    def __init__(self):
        self.sql = []
        self.params = []
        self.rowcounts = []
        self.times = []
        self.outside_transactions = True

    def __call__(self, execute, sql, params, many, context):
        db = context["connection"]
        if not db.get_autocommit() or db.in_atomic_block:
            self.outside_transactions = (
                False  # the driver would send a BEGIN we do not see
            )
        if db.vendor == "sqlite" and db.connection.in_transaction:
            self.outside_transactions = False
        self.times.append(time.monotonic())
        self.sql.append(sql)
        self.params.append(list(params or ()))
        self.rowcounts.append(None)  # stays None if the statement fails
        result = execute(sql, params, many, context)
        self.rowcounts[-1] = context["cursor"].rowcount
        return result

    def transaction_control(self):
        return [sql for sql in self.sql if _TRANSACTION_CONTROL.match(sql)]


class _Server:
    """Statements the server ran for one connection; `statements` is None where unknown."""

    statements = None
    transaction_control = 0  # BEGIN/COMMIT/SAVEPOINT... seen by the server
    errors = 0


def _pg_stats(db):
    """A connection to the maintenance database, so reading statistics adds none to ours."""
    wrapper = type(connections[db.alias])  # not the proxy `connection`
    return wrapper(dict(db.settings_dict, NAME="postgres"), alias=db.alias)


def _pg_read(stats, sql, params):
    with stats.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _pg_xacts(db, stats):
    """Flush this session's statistics, then read the test database's transaction counts."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT pg_stat_force_next_flush()"
        )  # flushed before the reply arrives
    return _pg_read(
        stats,
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s",
        [db.settings_dict["NAME"]],
    )


def _pg_backend_pid(raw):
    return raw.info.backend_pid if hasattr(raw, "info") else raw.get_backend_pid()


def _pg_wait_alone(db, stats, pids=None):
    """Wait until no other session uses the test database (or none of `pids`)."""
    deadline = time.monotonic() + 15
    mine = _pg_backend_pid(db.connection)
    while True:
        if pids is None:
            others = _pg_read(
                stats,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                [db.settings_dict["NAME"], mine],
            )[0]
        else:
            others = _pg_read(
                stats,
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                [list(pids)],
            )[0]
        if not others:
            return
        assert time.monotonic() < deadline, "other sessions still use the test database"
        time.sleep(0.05)


@contextlib.contextmanager
def _counted(db):
    """Count what `db` sends inside the block: yields (wire, server)."""
    db.ensure_connection()
    server = _Server()
    wire = _Wire()
    if db.vendor == "sqlite":
        traced = []
        db.connection.set_trace_callback(
            lambda sql: traced.append(sql)
        )  # Python 3.6 needs a hashable callback
        try:
            with db.execute_wrapper(wire):
                yield wire, server
        finally:
            db.connection.set_trace_callback(None)
        server.statements = len(traced)
        server.transaction_control = len(
            [sql for sql in traced if _TRANSACTION_CONTROL.match(sql)]
        )
    elif db.vendor == "mysql":

        def status():
            with db.cursor() as cursor:
                cursor.execute(
                    "SHOW SESSION STATUS WHERE Variable_name IN (%s)"
                    % ", ".join("'%s'" % name for name in _MYSQL_COUNTERS)
                )
                return {name: int(value) for name, value in cursor.fetchall()}

        before = status()
        with db.execute_wrapper(wire):
            yield wire, server
        after = status()
        delta = {name: after[name] - before[name] for name in _MYSQL_COUNTERS}
        server.statements = delta.pop("Questions") - 1  # the second SHOW counts itself
        server.transaction_control = sum(delta.values())
    else:
        stats = _pg_stats(db)
        try:
            if db.pg_version < 150000:  # no pg_stat_force_next_flush()
                with db.execute_wrapper(wire):
                    yield wire, server
                return
            _pg_wait_alone(db, stats)
            commits, rollbacks = _pg_xacts(db, stats)
            with db.execute_wrapper(wire):
                yield wire, server
            after_commits, after_rollbacks = _pg_xacts(db, stats)
        finally:
            stats.close()
        # Autocommit: one transaction per statement; the flush is one more.
        server.statements = after_commits - commits - 1
        server.errors = after_rollbacks - rollbacks


def _measure(operation, prepare=lambda: None, cleanup=lambda: None):
    """Count `operation`; repeat up to 3 times while the server saw more than the wire.

    Only other sessions' transactions (autovacuum) can add to PostgreSQL's
    counts, never remove: the smallest of three is the operation's own.
    """
    for _ in range(3):
        prepare()
        with _counted(connection) as (wire, server):
            result = operation()
        cleanup()
        if server.statements is None or server.statements <= len(wire.sql):
            break
    return result, wire, server


def _assert_costs(wire, server, most):
    assert 1 <= len(wire.sql) <= most, wire.sql
    assert wire.transaction_control() == []
    assert wire.outside_transactions, "a statement was sent inside a transaction"
    if server.statements is not None:
        assert server.statements == len(wire.sql), (server.statements, wire.sql)
    assert server.transaction_control == 0
    assert server.errors == 0


# ---- Acquire, failed attempt, release ----


def test_acquire_of_a_free_lock():
    locks = []

    def acquire():
        lock = Marathon("free", **_SLOW)
        locks.append(lock)
        return lock.acquire()

    acquired, wire, server = _measure(acquire, cleanup=lambda: locks[-1].release())
    assert acquired is True
    _assert_costs(wire, server, _targets()[0])


def test_failed_attempt_on_a_held_lock():
    holder = Marathon("held", **_SLOW)
    assert holder.acquire()
    try:
        acquired, wire, server = _measure(lambda: Marathon("held", **_SLOW).acquire())
    finally:
        holder.release()
    assert acquired is False
    _assert_costs(wire, server, _targets()[1])


def test_release():
    locks = []

    def prepare():
        locks.append(Marathon("release", **_SLOW))
        assert locks[-1].acquire()

    released, wire, server = _measure(lambda: locks[-1].release(), prepare=prepare)
    assert released is True
    _assert_costs(wire, server, _targets()[2])
    if (
        connection.vendor == "postgresql"
    ):  # a function that bounds its wait for row locks
        assert wire.sql[0].lstrip().startswith("SELECT marathon_release(")
    else:
        assert wire.sql[0].lstrip().upper().startswith("DELETE")


def test_a_lock_with_min_interval_costs_one_more_statement_each_way():
    """It reads its last run after the insert, and records the run before the delete."""
    locks = []

    def acquire():
        lock = Marathon("periodic", min_interval=0.001, **_SLOW)
        locks.append(lock)
        return lock.acquire()

    acquired, wire, server = _measure(acquire, cleanup=lambda: locks[-1].release())
    assert acquired is True
    _assert_costs(wire, server, _targets()[0] + 1)
    assert "marathon_lastrun" in wire.sql[-1]

    def prepare():
        locks.append(Marathon("periodic", min_interval=0.001, **_SLOW))
        assert locks[-1].acquire()

    released, wire, server = _measure(lambda: locks[-1].release(), prepare=prepare)
    assert released is True
    _assert_costs(wire, server, _targets()[2] + 1)
    assert "marathon_lastrun" in wire.sql[0]


def test_decorator_costs_an_acquire_and_a_release():
    @Marathon("decorated", **_SLOW)
    def task():
        return "done"

    result, wire, server = _measure(task)
    assert result == "done"
    _assert_costs(wire, server, _targets()[0] + _targets()[2])


# ---- The heartbeat ----


def _heartbeat_threads():
    return [t for t in threading.enumerate() if t.name.startswith("marathon-heartbeat")]


def _marathon_threads():
    """The heartbeat thread and the session thread that holds its connection."""
    return [t for t in threading.enumerate() if t.name.startswith("marathon-")]


def _wait_heartbeat_threads_gone():
    deadline = time.monotonic() + 15
    for thread in _marathon_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    assert _marathon_threads() == [], "a heartbeat or session thread did not end"


@pytest.mark.parametrize("count", [1, 10, 100])
def test_one_heartbeat_statement_per_beat_however_many_locks(count):
    """Every beat is one UPDATE for all locks held, sent by one thread."""
    _wait_heartbeat_threads_gone()
    vendor = connection.vendor
    interval = 0.2
    beats = _Wire()
    traced = []
    enough = threading.Event()
    window = []  # monotonic times: every lock held, release begins

    def full_beats():
        """Beats sent while every lock was held; the first may have been prepared before."""
        start = window[0] if window else float("inf")
        end = window[1] if len(window) > 1 else float("inf")
        return [i for i, t in enumerate(beats.times) if start < t < end][1:]

    def counter(execute, sql, params, many, context):
        result = beats(execute, sql, params, many, context)
        if len(full_beats()) >= 3:
            enough.set()
        return result

    def on_connect(sender, connection, **kwargs):
        if not threading.current_thread().name.startswith("marathon-session"):
            return
        connection.execute_wrappers.append(counter)
        if vendor == "sqlite":
            connection.connection.set_trace_callback(
                lambda sql: traced.append(sql)
            )  # Python 3.6 needs a hashable callback

    # Counted on the heartbeat's own connection (and by SQLite's trace): the
    # PostgreSQL table statistics (n_tup_upd) arrive too late under load to
    # cross-check a single test.
    connection_created.connect(on_connect, weak=False)
    try:
        locks = [
            Marathon("beat-%d" % i, heartbeat=interval, stale_after=5)
            for i in range(count)
        ]
        for lock in locks:
            assert lock.acquire()
        window.append(time.monotonic())
        assert len(_heartbeat_threads()) == 1
        assert enough.wait(15), "no three heartbeats within 15 s: %r" % beats.sql
        assert len(_heartbeat_threads()) == 1
        window.append(time.monotonic())
        for lock in locks:
            assert lock.release()
        _wait_heartbeat_threads_gone()  # it ends without locks, closing its connection
    finally:
        connection_created.disconnect(on_connect)

    assert beats.transaction_control() == []
    assert beats.outside_transactions
    # Until the release began every beat was one UPDATE that found all its rows
    # (a beat racing the release may find rows gone and read which remain).
    # On PostgreSQL the UPDATE is in marathon_beat(), which takes the ids and
    # tokens as two arrays and returns the ids it refreshed.
    before = [i for i, t in enumerate(beats.times) if t < window[1]]
    kinds = [
        beats.sql[i].split()[0].upper()
        + ("" if vendor != "postgresql" else beats.sql[i].split()[1][:13])
        for i in before
    ]
    expected = "SELECTmarathon_beat" if vendor == "postgresql" else "UPDATE"
    assert set(kinds) == {expected}, [
        (kinds[i], beats.rowcounts[i], len(beats.params[i])) for i in before
    ]

    def locks_sent(i):
        params = beats.params[i]
        return len(params[0]) if vendor == "postgresql" else len(params) // 2

    assert all(beats.rowcounts[i] == locks_sent(i) for i in before)
    full = full_beats()
    assert len(full) >= 3
    for i in full:
        assert locks_sent(i) == count  # every lock's id and token
        assert beats.rowcounts[i] == count
    # Beats are an interval apart, not one statement per lock in a burst.
    assert beats.times[full[2]] - beats.times[full[0]] >= interval
    if vendor == "sqlite":
        assert traced and len(traced) == len(beats.sql), (traced, beats.sql)


def test_acquire_release_cycles_keep_one_heartbeat_thread():
    """A process that keeps taking locks keeps its heartbeat thread.

    1,000 cycles, and for at least 3 s (several times the thread's idle
    linger), so that a thread that ends while locks keep coming shows up.
    """
    _wait_heartbeat_threads_gone()
    started = []
    previous = getattr(threading, "_trace_hook", None)

    def hook(frame, event, arg):  # runs first thing in every new thread
        started.append(threading.current_thread().name)
        sys.settrace(previous)
        return previous(frame, event, arg) if previous else None

    threading.settrace(hook)
    cycles, begun = 0, time.monotonic()
    try:
        while cycles < 1000 or time.monotonic() - begun < 3:
            lock = Marathon("cycle", **_SLOW)
            assert lock.acquire()
            assert lock.release()
            cycles += 1
            if cycles >= 200 and time.monotonic() - begun > 6:
                break  # a slow disk (SQLite syncs every commit)
    finally:
        threading.settrace(previous)
    heartbeats = [name for name in started if name.startswith("marathon-heartbeat")]
    assert 1 <= len(heartbeats) <= 2, (
        "%d heartbeat threads started in %d cycles over %.1f s"
        % (
            len(heartbeats),
            cycles,
            time.monotonic() - begun,
        )
    )
