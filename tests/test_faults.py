"""The faults of issue 3, produced for real: races, crashes, pauses, dropped and
unreachable databases, skewed clocks, signals, a busy SQLite, leaks, bad input.

Each test starts real processes (tests/worker.py, or the fault_hold command)
against the test database, and coordinates with them through pipes: the
children print JSON events (see tests/worker.py) and read commands. Times
that cross processes are CLOCK_MONOTONIC (one clock for the whole host) or
the database's own clock.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import marathon
from marathon import AlreadyRunning, Lock, Marathon

from .faultproxy import FaultProxy

pytestmark = pytest.mark.faults

ROOT = os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)  # holds the `tests` package
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
HEARTBEAT, STALE_AFTER = 0.5, 2.0  # the timing of every fault test below
TIMING = {"heartbeat": HEARTBEAT, "stale_after": STALE_AFTER}

# Age of a lock's heartbeat in seconds, by the database's clock.
AGE = {
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at)",
    "mysql": "TIMESTAMPDIFF(MICROSECOND, heartbeat_at, UTC_TIMESTAMP(6)) / 1000000.0",
    "sqlite": "(julianday('now') - julianday(heartbeat_at)) * 86400.0",
}


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# ---- Child processes ----


class Child:
    """A child process that prints JSON events, one a line."""

    def __init__(self, argv, env=None):
        self.stderr = tempfile.TemporaryFile()
        child_env = dict(os.environ)
        child_env.update(
            MARATHON_TEST_CHILD="1",
            DJANGO_SETTINGS_MODULE="tests.settings",
            PYTHONPATH=os.pathsep.join(
                [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
            ),
        )
        child_env.update(env or {})
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=child_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            universal_newlines=True,
            bufsize=1,
        )
        self.pid = self.process.pid
        self.events = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "noise", "line": line})
        self.events.put({"event": "eof"})

    def poll(self, event, timeout):
        """The next event named `event` within `timeout` seconds, else None."""
        deadline = now() + timeout
        while True:
            try:
                item = self.events.get(timeout=max(0, deadline - now()))
            except queue.Empty:
                return None
            self.seen.append(item)
            if item["event"] == event:
                return item
            if item["event"] == "eof":
                self.events.put(item)  # stays at the end for later calls
                return None

    def expect(self, event, timeout):
        item = self.poll(event, timeout)
        if item is None:
            pytest.fail(
                "%s: no %r event within %s s; saw %s; stderr:\n%s"
                % (self, event, timeout, self.seen, self.err())
            )
        return item

    def send(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def signal(self, signum):
        self.process.send_signal(signum)

    def wait(self, timeout=30):
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                "%s did not end within %s s; stderr:\n%s" % (self, timeout, self.err())
            )

    def err(self):
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")[-3000:]

    def __str__(self):
        return "child %s %s" % (self.pid, " ".join(self.process.args[2:4]))


@pytest.fixture
def spawn(transactional_db):
    """spawn(scenario, **params) starts tests/worker.py; every child is killed at the end."""
    children = []

    def start(scenario, env=None, **params):
        child = Child(
            [sys.executable, "-m", "tests.worker", scenario, json.dumps(params)], env
        )
        children.append(child)
        return child

    def command(*args):
        child = Child([sys.executable, "-m", "django"] + list(args))
        children.append(child)
        return child

    start.command = command
    start.children = children
    yield start
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
        child.process.wait(10)
        child.stderr.close()
        for pipe in (child.process.stdin, child.process.stdout):
            if pipe:
                pipe.close()


def started(child, timeout=60):
    """Wait for the child's Django to be up and check it imported this marathon.py."""
    event = child.expect("started", timeout)
    assert event["marathon_file"] == os.path.realpath(marathon.__file__)
    return event


def vendor():
    return connection.vendor


def lock_row(name):
    return (
        Lock.objects.filter(name=name)
        .values("id", "token", "owner", "locked_at", "heartbeat_at")
        .first()
    )


def heartbeat_age(name):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT %s FROM marathon_lock WHERE name = %%s" % AGE[vendor()], [name]
        )
        row = cursor.fetchone()
    return None if row is None else float(row[0])


def needs_sessions():
    if vendor() == "sqlite":
        pytest.skip("SQLite has no server sessions to kill or network to cut")


def wait_for(predicate, timeout, message):
    deadline = now() + timeout
    while not predicate():
        if now() > deadline:
            pytest.fail(message)
        threading.Event().wait(0.05)


# ---- Race ----

CONTENDERS, ROUNDS = 16, 20
# Seconds a loser may take. A loser never waits for the holder (the winner
# keeps the lock until every loser has answered), but on SQLite every attempt
# is a write: 15 losers queue for the file's write lock, each commit syncing.
LOSER_BOUND = {"postgresql": 1.0, "mysql": 1.0, "sqlite": 3.0}


def test_race_one_winner_per_round_and_losers_return_at_once(spawn):
    children = [spawn("race", name="race", **TIMING) for _ in range(CONTENDERS)]
    for child in children:
        started(child)
        child.expect("ready", 60)
    intervals = []
    for number in range(ROUNDS):
        for (
            child
        ) in children:  # every contender blocks on its pipe: this is the barrier
            child.send("go")
        results = [(child, child.expect("round", 30)) for child in children]
        winners = [(child, result) for child, result in results if result["won"]]
        assert len(winners) == 1, "round %d: %d winners" % (number, len(winners))
        slow = [
            result["took"]
            for _, result in results
            if not result["won"] and result["took"] > LOSER_BOUND[vendor()]
        ]
        assert not slow, "round %d: losers waited %s s" % (number, slow)
        winner, result = winners[0]
        winner.send("release")
        released = winner.expect("released", 30)
        assert released["released"] is True
        intervals.append((result["start"], released["end"]))
    for child in children:
        child.process.stdin.close()
    for child in children:
        assert child.wait() == 0, child.err()
    intervals.sort()
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        assert end < start, "two holders at once: %s" % intervals


# ---- Crash ----


def test_crash_takeover_after_stale_after(spawn):
    holder = spawn("hold", name="crash", **TIMING)
    started(holder)
    holder.expect("held", 30)
    waiter = spawn("hold", name="crash", wait=30, **TIMING)
    started(waiter)
    waiter.expect("trying", 30)
    # For longer than stale_after the heartbeat keeps the lock: the waiter waits.
    assert waiter.poll("held", STALE_AFTER + 1.0) is None
    before = lock_row("crash")
    assert (before["heartbeat_at"] - before["locked_at"]).total_seconds() >= HEARTBEAT
    holder.process.kill()
    holder.wait()
    # A heartbeat sent just before the kill may still land: read until it is settled.
    last = lock_row("crash")["heartbeat_at"]
    wait_for(
        lambda: lock_row("crash")["heartbeat_at"] == last,
        2,
        "heartbeat_at moved after the kill",
    )
    assert last >= before["heartbeat_at"]
    held = waiter.expect("held", 30)
    taken = lock_row("crash")
    assert taken["token"] == held["token"]
    delay = (taken["locked_at"] - last).total_seconds()
    assert STALE_AFTER <= delay <= STALE_AFTER + HEARTBEAT + 1.5, delay
    waiter.send("release")
    assert waiter.expect("exit", 30)["exc"] is None


# ---- Pause ----


def test_pause_holder_learns_of_the_takeover_and_leaves_it_alone(spawn):
    holder = spawn("hold", name="pause", **TIMING)
    started(holder)
    holder.expect("held", 30)
    waiter = spawn("hold", name="pause", wait=30, **TIMING)
    started(waiter)
    waiter.expect("trying", 30)
    holder.signal(signal.SIGSTOP)
    stopped = now()
    held = waiter.expect("held", 30)
    assert held["mono"] - stopped >= STALE_AFTER - HEARTBEAT
    holder.signal(signal.SIGCONT)
    resumed = now()
    lost = holder.expect("on_lost", 10)
    assert lost["mono"] - resumed <= HEARTBEAT + 0.5
    assert lost["lost"] is True and lost["held"] is False
    holder.send("release")
    end = holder.expect("exit", 10)
    assert (
        end["exc"] == "LockLost" and end["lost"] is True and end["check"] == "LockLost"
    ), end
    assert holder.wait() == 0
    row = lock_row("pause")
    assert (
        row is not None
        and row["token"] == held["token"]
        and row["owner"] == held["owner"]
    )
    waiter.send("release")
    assert waiter.expect("exit", 30)["exc"] is None
    assert lock_row("pause") is None


# ---- Dropped connection ----


def heartbeat_sessions(main_session):
    """Sessions of the test database other than ours and the child's main one."""
    with connection.cursor() as cursor:
        if vendor() == "postgresql":
            cursor.execute(
                "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND pid <> %s",
                [main_session],
            )
        else:
            cursor.execute(
                "SELECT id, info FROM information_schema.processlist WHERE db = DATABASE() "
                "AND id <> CONNECTION_ID() AND id <> %s",
                [main_session],
            )
        return cursor.fetchall()


def test_dropped_heartbeat_session_reconnects(spawn):
    needs_sessions()
    holder = spawn("hold", name="drop", **TIMING)
    started(holder)
    main_session = holder.expect("trying", 30)["backend"]
    holder.expect("held", 30)
    killed = set()
    for _ in range(3):
        sessions = []
        wait_for(
            lambda sessions=sessions: (
                sessions.extend(
                    s for s in heartbeat_sessions(main_session) if s[0] not in killed
                )
                or sessions
            ),
            5,
            "no heartbeat session appeared",
        )
        assert len(sessions) == 1, sessions
        session, query = sessions[0]
        if vendor() == "postgresql":
            assert query.startswith("SELECT marathon_beat("), query
        with connection.cursor() as cursor:
            if vendor() == "postgresql":
                cursor.execute("SELECT pg_terminate_backend(%s)", [session])
            else:
                cursor.execute("KILL %s" % int(session))
        killed.add(session)
        cut = now()
        wait_for(
            lambda cut=cut: heartbeat_age("drop") < now() - cut - 0.05,
            STALE_AFTER,
            "no heartbeat after the session was killed",
        )
    # Held on for longer than stale_after after the last kill, with fresh heartbeats.
    assert holder.poll("on_lost", STALE_AFTER + 1.0) is None
    assert heartbeat_age("drop") < 2 * HEARTBEAT
    holder.send("status")
    assert holder.expect("status", 10) == {
        "event": "status",
        "lost": False,
        "held": True,
    }
    holder.send("release")
    assert holder.expect("exit", 10)["exc"] is None
    assert lock_row("drop") is None


def server_address():
    settings_dict = connection.settings_dict
    prefix = "MARATHON_PG_" if vendor() == "postgresql" else "MARATHON_MYSQL_"
    return prefix, settings_dict["HOST"] or "127.0.0.1", settings_dict["PORT"]


@pytest.mark.parametrize("fault", ["reset", "blackhole"])
def test_unreachable_database_ends_in_a_reported_loss(spawn, fault):
    needs_sessions()
    prefix, host, port = server_address()
    proxy = FaultProxy(host, port)
    try:
        holder = spawn(
            "hold",
            env={prefix + "HOST": "127.0.0.1", prefix + "PORT": str(proxy.port)},
            name="unreachable",
            exit_on_lost=True,
            **TIMING,
        )
        started(holder)
        holder.expect("held", 30)
        wait_for(
            lambda: proxy.accepted >= 2,
            5,
            "the heartbeat never connected through the proxy",
        )
        wait_for(
            lambda: heartbeat_age("unreachable") < HEARTBEAT,
            5,
            "no heartbeat through the proxy",
        )
        cut = now()
        if fault == "reset":
            proxy.cut()
        else:
            proxy.blackhole()
        lost = holder.poll("on_lost", STALE_AFTER + 2 * HEARTBEAT + 5)
        # Known before anyone can take over: the row is not yet stale when the
        # loss is reported (issue 8 item 7: a deadline of stale_after - heartbeat/2
        # after the last confirmed beat, which came before the cut).
        age_at_loss = heartbeat_age("unreachable")
        assert lost is not None, "no loss reported; stderr:\n%s" % holder.err()
        assert age_at_loss < STALE_AFTER, (age_at_loss, lost["mono"] - cut)
        assert lost["mono"] - cut <= STALE_AFTER - HEARTBEAT / 2 + 0.5
        end = holder.expect("exit", 30)
        assert end["exc"] == "LockLost", end
        assert holder.wait() == 0
    finally:
        proxy.close()


# ---- Clock skew ----


@pytest.mark.parametrize("skew", ["+1h", "-1h"])
def test_clock_skew_neither_steals_nor_loses(spawn, skew):
    if vendor() == "sqlite":
        pytest.skip(
            "SQLite's clock is each process's clock: a process an hour off sees every "
            "lock (its own included) as an hour old; all holders must share one host clock"
        )
    if not os.path.exists(FAKETIME):
        pytest.skip("libfaketime is not installed (%s)" % FAKETIME)
    skewed = {
        "LD_PRELOAD": FAKETIME,
        "FAKETIME": skew,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    # A fresh lock of a normal process, tried by a skewed one for longer than stale_after;
    # a lock of a skewed process, held for over 2 * stale_after while a normal process tries it.
    holder = spawn("hold", name="fresh", **TIMING)
    skewed_holder = spawn("hold", env=skewed, name="skewed", **TIMING)
    offsets = {}
    for child in (holder, skewed_holder):
        offsets[child] = started(child)["time"] - time.time()
        child.expect("held", 30)
    thief = spawn("attempt", env=skewed, name="fresh", wait=STALE_AFTER + 1.0, **TIMING)
    prober = spawn(
        "attempt", name="skewed", tries=10, every=(2 * STALE_AFTER + 0.5) / 10, **TIMING
    )
    for child in (thief, prober):
        offsets[child] = started(child)["time"] - time.time()
    hour = 3600 if skew.startswith("+") else -3600
    for child, expected in (
        (holder, 0),
        (skewed_holder, hour),
        (thief, hour),
        (prober, 0),
    ):
        assert abs(offsets[child] - expected) < 60, "the clock of %s is %+.0f s off" % (
            child,
            offsets[child],
        )
    assert [r["got"] for r in thief.expect("attempts", 30)["results"]] == [False]
    assert [r["got"] for r in prober.expect("attempts", 60)["results"]] == [False] * 10
    for child in (holder, skewed_holder):
        child.send("status")
        assert child.expect("status", 10) == {
            "event": "status",
            "lost": False,
            "held": True,
        }
        child.send("release")
        assert child.expect("exit", 10)["exc"] is None


# ---- Termination ----


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_signal_releases_the_command_lock_to_a_waiter(spawn, signum):
    holder = spawn.command("fault_hold")
    holder.expect("started", 60)
    waiter = spawn.command("fault_hold", "--lock-wait", "30")
    waiter.expect("waiting", 60)
    assert waiter.poll("started", 1.0) is None  # it waits on the lock
    holder.signal(signum)
    sent = now()
    got = waiter.expect("started", 10)
    assert got["mono"] - sent < 2.0
    assert holder.wait() == 128 + signum, holder.err()
    waiter.signal(signal.SIGTERM)
    assert waiter.wait() == 128 + signal.SIGTERM, waiter.err()
    assert lock_row("fault-hold") is None


# ---- SQLite under contention ----


def test_busy_sqlite_never_escapes(spawn):
    if vendor() != "sqlite":
        pytest.skip("a SQLite fault: only SQLite returns 'database is locked'")
    children = [
        spawn("contention", shared="busy", seconds=4, wait=5) for _ in range(CONTENDERS)
    ]
    for child in children:
        started(child)
    for child in children:
        child.send("go")
    for child in children:
        done = child.expect("done", 60)
        # A process may time out (AlreadyRunning) on the shared name; no database error may escape.
        assert done["errors"] == [] and done["cycles"] + done["timeouts"] > 0, done
        assert child.wait() == 0, child.err()


def test_busy_sqlite_is_retried_within_wait(spawn):
    """A writer that keeps SQLite busy for longer than its busy timeout (5 s) only delays the acquire."""
    if vendor() != "sqlite":
        pytest.skip("a SQLite fault: only SQLite returns 'database is locked'")
    import sqlite3

    busy_for = 6.5  # past Python's default busy timeout of 5 s
    writer = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    try:
        writer.execute(
            "BEGIN IMMEDIATE"
        )  # the write lock, as a long write transaction holds it
        child = spawn("attempt", name="busy-wait", wait=busy_for + 5)
        started(child)  # Django is up (no query yet); its acquire comes next
        threading.Event().wait(busy_for)  # the fault's duration, not a hope
        writer.execute("COMMIT")
        results = child.expect("attempts", 30)["results"]
        assert [r["got"] for r in results] == [True], child.err()
        assert (
            results[0]["took"] > 5.0
        )  # the busy timeout ran out at least once: retried
        assert child.wait() == 0, child.err()
    finally:
        writer.close()


# ---- Leaks ----


# 1000 cycles: the child has 60 s to start and 200 s to report; it may take both.
@pytest.mark.timeout(300)
def test_no_threads_or_connections_leak(spawn):
    child = spawn("leaks", name="leaks", cycles=1000, atomic_cycles=100)
    started(child)
    report = child.expect("leaks", 200)
    threads, connections_ = report["threads"], report["connections"]
    assert threads == [threads[0]] * 4, report
    assert connections_ == [connections_[0]] * 3, report
    assert child.wait() == 0


# ---- Bad input ----

CHARACTERS = st.integers(0, 0x10FFFF).map(
    chr
)  # every code point: controls, surrogates, emoji
NAMES = st.one_of(
    st.text(max_size=300),
    st.lists(CHARACTERS, max_size=20).map("".join),
    st.tuples(
        st.sampled_from(["é", "😀", "日", "a", "\x01", " ", "\u0301"]),
        st.integers(250, 257),
    ).map(lambda pair: pair[0] * pair[1]),
    st.binary(max_size=5),
    st.none(),
    st.integers(),
)


def invalid(name):
    """Why no database can hold `name` the same way (None if every one can)."""
    if not isinstance(name, str):
        return "not a str"
    if not 1 <= len(name) <= 255:
        return "length"
    if "\x00" in name:
        return "NUL"
    if any(0xD800 <= ord(char) <= 0xDFFF for char in name):
        return "surrogate"
    return None


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=NAMES)
@example(name="é" * 255)
@example(name="😀" * 255)
@example(name="😀" * 256)
@example(name="\x00")
@example(name="a\ud800")
@example(name="")
@example(name=" trailing ")
@example(name="\x01\x1f\x7f\n\t")
def test_fuzzed_names_work_or_raise_value_error_before_any_query(
    transactional_db, name
):
    if invalid(name):
        with CaptureQueriesContext(connection) as queries:
            with pytest.raises(ValueError):
                Marathon(name).acquire()
        assert len(queries) == 0, queries.captured_queries
        return
    first = Marathon(name)
    assert first.acquire()
    try:
        with pytest.raises(AlreadyRunning) as raised:
            with Marathon(name):
                pass  # pragma: no cover
        assert raised.value.name == name
        row = Lock.objects.get(pk=first.fence)
        assert row.name == name
        assert [r.pk for r in Lock.objects.filter(name=name)] == [first.fence]
    finally:
        assert first.release()
    assert not Lock.objects.filter(pk=first.fence).exists()


@pytest.mark.parametrize(
    "bad, check_id",
    [
        ({"MARATHON_HEARTBEAT": "x"}, "marathon.E001"),
        ({"MARATHON_STALE_AFTER": 0}, "marathon.E002"),
        ({"MARATHON_HEARTBEAT": 10, "MARATHON_STALE_AFTER": 15}, "marathon.E003"),
        ({"MARATHON_DATABASE": "nope"}, "marathon.E004"),
        ({"MARATHON_HEARTBEAT": 1, "MARATHON_STALE_AFTER": 2}, None),
    ],
)
def test_bad_setting_fails_manage_py_check(bad, check_id):
    pythonpath = [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.worker", "check", json.dumps({"settings": bad})],
        cwd=ROOT,
        env=dict(
            os.environ, MARATHON_TEST_CHILD="1", PYTHONPATH=os.pathsep.join(pythonpath)
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    out, err = process.communicate(timeout=60)
    if check_id is None:
        assert process.returncode == 0 and "marathon." not in err, out + err
    else:
        assert process.returncode != 0, out + err
        assert check_id in err, err
