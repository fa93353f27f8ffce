"""Locks and the caller's transactions (issue 8): the contract, tested from outside.

- An acquire inside ``transaction.atomic()`` commits at once.
- A release inside an atomic block takes effect when the OUTERMOST
  transaction ends, whether it commits or rolls back; a savepoint that rolls
  back does not release early. So the work done under the lock is committed
  before anyone else can take the lock: no lost update.
- A database error is never reported as a held lock (no ``False``, no
  ``AlreadyRunning``), and an uncommitted lock row of another transaction
  never blocks an acquire for long (PostgreSQL).

Other processes are real ones (tests/transactions_child.py), on the test
database, so that "another process sees" means what it says.
"""

import contextlib
import json
import sqlite3

import pytest
from django.db import Error, OperationalError, connection, transaction

from marathon import Lock, Marathon
from tests.processes import FAST, finish, start_python, touch, wait_for, wait_for_file
from tests.transactions_child import COUNTER_TABLE

pytestmark = pytest.mark.django_db(transaction=True)

SQLITE = connection.vendor == "sqlite"
POSTGRESQL = connection.vendor == "postgresql"
CHILD_TIMEOUT = 30  # seconds: a child that takes longer has hung


def start(*args):
    """Start `python -m tests.transactions_child ARGS` on the test database."""
    return start_python(["-m", "tests.transactions_child"] + [str(arg) for arg in args])


def outcome(process, timeout=CHILD_TIMEOUT):
    """Wait for a child (bounded); assert it succeeded; return the JSON facts it printed."""
    code, out, err = finish(process, timeout=timeout)
    assert code == 0, "child failed (%s):\n%s\n%s" % (code, out, err)
    return json.loads(out.strip().splitlines()[-1])


def outcomes(*processes):
    """Wait for every child (bounded; one that hangs is killed); assert each succeeded; return their facts."""
    results = []
    for process in processes:
        try:
            results.append(finish(process, timeout=CHILD_TIMEOUT))
        except AssertionError as exc:  # it did not end: killed
            results.append((None, "", str(exc)))
    for code, out, err in results:
        assert code == 0, "child failed (%s):\n%s\n%s" % (code, out, err)
    return [json.loads(out.strip().splitlines()[-1]) for code, out, err in results]


def seen_by_another_process(name):
    """What a `with Marathon(name)` in another process gets right now (it never waits)."""
    return outcome(start("try", name))


def row_exists(name):
    return Lock.objects.filter(name=name).exists()


class Rollback(Exception):
    pass


@pytest.fixture
def short_busy_timeout():
    """SQLite's busy timeout (Django's OPTIONS["timeout"], 5 s by default) at 1 s for new connections."""
    options = connection.settings_dict.setdefault("OPTIONS", {})
    missing = object()
    before = options.get("timeout", missing)
    options["timeout"] = 1
    connection.close()  # reopens with the short timeout
    yield
    connection.close()
    if before is missing:
        del options["timeout"]
    else:
        options["timeout"] = before


# ---- 1. An acquire inside atomic() commits at once ----


def test_acquire_inside_atomic_is_committed_at_once():
    """Another process sees the lock held while the acquiring block is still open; a rollback keeps it."""
    lock = Marathon("acquired-in-atomic", **FAST)
    with pytest.raises(Rollback):
        with transaction.atomic():
            assert lock.acquire() is True
            seen = seen_by_another_process("acquired-in-atomic")
            assert seen["outcome"] == "AlreadyRunning", seen
            assert seen["owner"] == lock.owner
            raise Rollback
    assert row_exists("acquired-in-atomic")  # the rollback did not undo the acquire
    assert lock.held
    assert lock.release() is True
    assert not row_exists("acquired-in-atomic")


# ---- 2. A release inside atomic() takes effect when the outermost transaction ends ----


def test_release_inside_atomic_waits_for_the_commit_of_the_outermost_block():
    """After `with Marathon` exits inside atomic(), others still find the lock held until the block commits."""
    with transaction.atomic():
        with Marathon("release-at-commit", **FAST) as lock:
            pass
        seen = seen_by_another_process("release-at-commit")
        assert seen["outcome"] == "AlreadyRunning", (
            "released before the transaction ended: %s" % seen
        )
        assert seen["owner"] == lock.owner
    assert not row_exists("release-at-commit")  # the commit released it
    assert seen_by_another_process("release-at-commit")["outcome"] == "acquired"


def test_release_inside_atomic_takes_effect_at_a_rollback_too():
    """A rollback of the outermost block must not leave the row held: the lock is free afterwards."""
    with pytest.raises(Rollback):
        with transaction.atomic():
            with Marathon("release-at-rollback", **FAST) as lock:
                pass
            seen = seen_by_another_process("release-at-rollback")
            assert seen["outcome"] == "AlreadyRunning", (
                "released before the transaction ended: %s" % seen
            )
            assert seen["owner"] == lock.owner
            raise Rollback
    assert not row_exists("release-at-rollback")
    assert seen_by_another_process("release-at-rollback")["outcome"] == "acquired"


def test_savepoint_rolled_back_after_the_release_does_not_release_early():
    """A nested atomic() that rolls back after the release: still held until the outermost block ends."""
    with transaction.atomic():
        with pytest.raises(Rollback):
            with transaction.atomic():  # a savepoint
                with Marathon("release-in-savepoint", **FAST) as lock:
                    pass
                raise Rollback
        seen = seen_by_another_process("release-in-savepoint")
        assert seen["outcome"] == "AlreadyRunning", (
            "released when the savepoint rolled back: %s" % seen
        )
        assert seen["owner"] == lock.owner
    assert not row_exists(
        "release-in-savepoint"
    )  # ...and released when the outermost block ended


@pytest.fixture
def manual_transactions():
    """set_autocommit(False): the caller commits or rolls back by hand (as AUTOCOMMIT False in DATABASES)."""
    transaction.set_autocommit(False)
    yield
    transaction.rollback()
    transaction.set_autocommit(True)


@pytest.fixture
def released():
    """The names lock_released was sent for, in order."""
    from marathon import lock_released

    names = []
    receiver = lambda sender, name, **kwargs: names.append(name)  # noqa: E731
    lock_released.connect(receiver, weak=False)
    yield names
    lock_released.disconnect(receiver)


@pytest.mark.parametrize("end", ["commit", "rollback", "commit, then autocommit"])
def test_release_inside_atomic_under_manual_transactions_waits_for_commit_or_rollback(
    manual_transactions, released, end
):
    """The outermost atomic() is then a savepoint: the transaction ends at commit() or rollback(),
    and the release with it, although Django runs on_commit callbacks only when autocommit comes back."""
    name = "manual-" + end.split(",")[0]
    with transaction.atomic():
        with Marathon(name, **FAST) as lock:
            pass
    seen = seen_by_another_process(name)
    assert seen["outcome"] == "AlreadyRunning", (
        "released before the transaction ended: %s" % seen
    )
    assert seen["owner"] == lock.owner and released == []
    getattr(transaction, end.split(",")[0])()
    assert released == [name]  # by commit() or rollback() itself, no later
    assert seen_by_another_process(name)["outcome"] == "acquired"
    if end == "commit, then autocommit":  # where Django runs on_commit callbacks
        transaction.set_autocommit(True)
        assert released == [name]  # not twice


def test_a_rollback_that_raises_still_ends_the_wait(manual_transactions, released):
    """The connection broke, so rollback() raised: the transaction is over all the same (the
    server dropped it), and the release that waited for it is sent, on a connection of its own."""
    with transaction.atomic():
        with Marathon("manual-broken", **FAST):
            pass
    assert released == []
    connection.connection.close()  # the session dies under Django's feet
    with pytest.raises(Error):  # InterfaceError or OperationalError, by driver
        transaction.rollback()
    assert released == ["manual-broken"]
    assert seen_by_another_process("manual-broken")["outcome"] == "acquired"
    with contextlib.suppress(Error):  # PyMySQL will not close twice
        connection.close()


def test_release_outside_atomic_under_manual_transactions_is_sent_at_once(
    manual_transactions, released
):
    """Without atomic() there is no block whose end it could wait for (Django's on_commit() refuses
    too), and a program that never commits would keep the lock until it went stale."""
    with Marathon("manual-no-atomic", **FAST):
        pass
    assert released == ["manual-no-atomic"]
    assert seen_by_another_process("manual-no-atomic")["outcome"] == "acquired"


# ---- 3. No lost update ----


@pytest.fixture
def counter_table(transactional_db):
    """A raw table `marathon_test_counter` with one row (id 1, value 0), committed; dropped afterwards."""
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS %s" % COUNTER_TABLE)
        cursor.execute(
            "CREATE TABLE %s (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)"
            % COUNTER_TABLE
        )
        cursor.execute("INSERT INTO %s (id, value) VALUES (1, 0)" % COUNTER_TABLE)
    yield COUNTER_TABLE
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS %s" % COUNTER_TABLE)


def test_two_workers_in_transactions_never_lose_an_update(counter_table, tmp_path):
    """Two processes, each in atomic() as under ATOMIC_REQUESTS, take the lock first thing, read, add 1.

    The second may only read once the first's transaction has committed, so
    the counter ends at 2. (With a release that commits at once, the second
    reads the old value while the first has not committed yet: it ends at 1.)
    On SQLite this is the supported order too (acquire before any read), and
    the second's attempts while the first holds the lock must not keep the
    first from writing and committing its transaction.
    """
    facts = outcomes(start("counter", "a", tmp_path), start("counter", "b", tmp_path))
    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM %s WHERE id = 1" % counter_table)
        value = cursor.fetchone()[0]
    assert value == 2, "lost update: %s" % facts
    assert facts[0]["b_read_before_commit"] is False, facts
    assert [fact["read"] for fact in facts] == [0, 1], facts


@pytest.mark.skipif(not SQLITE, reason="SQLite only: one writer at a time")
def test_sqlite_acquire_after_a_read_in_atomic_says_what_to_do(short_busy_timeout):
    """On SQLite an acquire inside an atomic block that has already read cannot commit.

    It must raise OperationalError that tells how to fix it (take the lock
    before or outside atomic(), or WAL mode): never a silent False, never
    AlreadyRunning (nobody holds the lock).
    """
    for attempt in ("acquire", "with"):
        with transaction.atomic():
            assert (
                Lock.objects.count() == 0
            )  # a read: this transaction now holds SQLite's shared lock
            with pytest.raises(OperationalError) as caught:
                if attempt == "acquire":
                    Marathon("after-a-read", **FAST).acquire()
                else:
                    with Marathon("after-a-read", **FAST):
                        pass
        message = str(caught.value)
        assert "atomic" in message or "WAL" in message, message
    assert not row_exists("after-a-read")


# ---- 4. An uncommitted lock row never blocks (PostgreSQL) ----


@pytest.mark.skipif(
    not POSTGRESQL, reason="PostgreSQL only (bounded by its lock_timeout)"
)
def test_uncommitted_lock_row_of_another_transaction_does_not_block(tmp_path):
    """A Lock row created through the ORM in a transaction that has not committed: another process's
    `with Marathon(same name)` returns within seconds (AlreadyRunning, or OperationalError naming the
    problem) while that transaction is still open; it never waits for it to end."""
    ready, release = str(tmp_path / "ready"), str(tmp_path / "release")
    holder = start("uncommitted", "uncommitted-row", ready, release)
    try:
        wait_for_file(ready, process=holder)
        trying = start("try", "uncommitted-row")
        code, out, err = finish(
            trying, timeout=15
        )  # a child that blocks is killed and fails here
        assert code == 0, "child failed (%s):\n%s\n%s" % (code, out, err)
        seen = json.loads(out.strip().splitlines()[-1])
        assert holder.poll() is None, "the uncommitted transaction ended too early"
        assert seen["took"] < 10, seen
        assert seen["outcome"] in ("AlreadyRunning", "OperationalError"), seen
        if seen["outcome"] == "OperationalError":
            assert "lock" in seen["message"].lower(), seen
    finally:
        touch(release)
        assert outcome(holder) == {"rolled_back": True}
    assert not row_exists("uncommitted-row")


# ---- 5. A database error is never reported as a held lock ----


@pytest.mark.skipif(
    not SQLITE, reason="SQLite only: a write lock held by another connection"
)
def test_sqlite_busy_database_raises_operational_error_not_held(short_busy_timeout):
    """With another connection holding SQLite's write lock, an acquire raises OperationalError:
    it does not return False and does not raise AlreadyRunning (nobody holds the lock)."""
    other = sqlite3.connect(
        connection.settings_dict["NAME"], isolation_level=None, timeout=0
    )
    try:
        other.execute("BEGIN IMMEDIATE")  # SQLite's one write lock, until ROLLBACK
        with pytest.raises(OperationalError):
            Marathon("busy-db", **FAST).acquire()
        with pytest.raises(OperationalError):
            with Marathon("busy-db", **FAST):
                pytest.fail("ran without the lock")
    finally:
        other.execute("ROLLBACK")
        other.close()
    with Marathon("busy-db", **FAST) as lock:  # nothing was left behind
        assert lock.held
    assert not row_exists("busy-db")


def test_a_lock_released_receiver_that_queries_does_not_break_a_rollback():
    """The release at a rollback runs inside Django's rollback(): receivers run later, elsewhere."""
    from marathon import lock_released

    counted = []

    def receiver(sender, name, **kwargs):
        counted.append(Lock.objects.count())
        connection.close()  # its thread's own connection

    lock_released.connect(receiver)
    try:
        with pytest.raises(
            ZeroDivisionError
        ):  # the caller's own error, not one of the receiver's
            with transaction.atomic():
                with Marathon("rolled-back-receiver", **FAST):
                    pass
                raise ZeroDivisionError
        assert not row_exists("rolled-back-receiver")
        wait_for(lambda: counted, 10, "the lock_released receiver")
    finally:
        lock_released.disconnect(receiver)
