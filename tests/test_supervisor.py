"""Issue 12: `python -m marathon run NAME -- CMD`, one copy of a process across hosts.

Every supervisor is a real process, and so is every child; the children report
what happens to them (start, signals, end) in files, with CLOCK_MONOTONIC
times, which every process of this host shares.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection

from marathon import Lock
from tests.faultproxy import FaultProxy
from tests.processes import child_env, finish, start_python, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Stale sooner than tests.processes.FAST: the takeovers below wait for it.
HEARTBEAT, STALE_AFTER = 0.2, 1.0
TIMING = ["--heartbeat", str(HEARTBEAT), "--stale-after", str(STALE_AFTER)]

# The supervised child: reports to a JSON-lines file, then does what argv says:
# "sleep S", "wait-term" (until SIGTERM, then exit 0), "ignore-term" (never exits by itself).
CHILD = r"""
import json, os, signal, sys, threading, time
log, action = sys.argv[1], sys.argv[2:]
def report(event, **facts):
    facts.update(event=event, pid=os.getpid(), mono=time.clock_gettime(time.CLOCK_MONOTONIC))
    with open(log, "a") as file:
        file.write(json.dumps(facts) + "\n")
def on_signal(signum, frame):
    report("signal", signum=signum)
    if action[0] == "wait-term":
        sys.exit(0)
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, on_signal)
report("start")
if action[0] == "sleep":
    threading.Event().wait(float(action[1]))
else:
    while True:
        threading.Event().wait(0.05)
report("end")
"""


def events(path):
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def supervise(name, *child_args, options=(), env=None, **kwargs):
    """Start `python -m marathon run NAME [options] -- python -c CHILD child_args...`."""
    args = (
        ["-m", "marathon", "run", name]
        + list(options)
        + ["--", sys.executable, "-c", CHILD]
    )
    return start_python(args + [str(arg) for arg in child_args], env=env, **kwargs)


def lock_row(name):
    return Lock.objects.using("default").filter(name=name).first()


def heartbeat_age(name):
    sql = {
        "postgresql": "SELECT EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at) FROM marathon_lock WHERE name = %s",
        "mysql": "SELECT TIMESTAMPDIFF(MICROSECOND, heartbeat_at, UTC_TIMESTAMP(6)) / 1e6 FROM marathon_lock WHERE name = %s",
        "sqlite": "SELECT (julianday('now') - julianday(heartbeat_at)) * 86400.0 FROM marathon_lock WHERE name = %s",
    }[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(sql, [name])
        row = cursor.fetchone()
    return None if row is None else float(row[0])


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# ---- Status and stdio pass through ----


def test_exit_status_and_stdio_pass_through():
    code = "import sys; line = sys.stdin.readline(); print('out:' + line.strip()); print('err!', file=sys.stderr); sys.exit(3)"
    process = start_python(
        ["-m", "marathon", "run", "io"] + TIMING + ["--", sys.executable, "-c", code],
        stdin=subprocess.PIPE,
    )
    out, err = process.communicate("hello\n", timeout=60)
    assert process.returncode == 3, err
    assert out == "out:hello\n"
    assert (
        "err!" in err
        and "got the lock 'io'" in err
        and "waiting for the lock 'io'" in err
    )
    assert lock_row("io") is None


def test_a_child_killed_by_a_signal_gives_128_plus_the_signal():
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    process = start_python(
        ["-m", "marathon", "run", "killed"]
        + TIMING
        + ["--", sys.executable, "-c", code]
    )
    status, out, err = finish(process, timeout=60)
    assert status == 128 + signal.SIGKILL, err
    assert lock_row("killed") is None


def test_missing_command_is_a_usage_error():
    status, out, err = finish(
        start_python(["-m", "marathon", "run", "nothing"]), timeout=60
    )
    assert status == 2 and "after --" in err


# ---- Two supervisors ----


def test_two_supervisors_never_run_two_children_and_the_standby_follows(tmp_path):
    log = str(tmp_path / "children.jsonl")
    first = supervise("beat", log, "sleep", 1.5, options=TIMING)
    wait_for(lambda: events(log), 30, "the first child", process=first)
    second = supervise("beat", log, "sleep", 0.2, options=TIMING)
    status, _, err = finish(first, timeout=60)
    assert status == 0, err
    status, _, err = finish(second, timeout=60)
    assert status == 0, err
    starts = [e for e in events(log) if e["event"] == "start"]
    ends = [e for e in events(log) if e["event"] == "end"]
    assert len(starts) == len(ends) == 2
    assert (
        ends[0]["pid"] == starts[0]["pid"] and starts[1]["mono"] >= ends[0]["mono"]
    )  # never overlapped
    assert "waiting for the lock 'beat'" in err


def test_the_standby_takes_over_from_a_killed_supervisor_and_its_child_dies(tmp_path):
    log = str(tmp_path / "children.jsonl")
    first = supervise("beat-kill", log, "wait-term", options=TIMING)
    wait_for(lambda: events(log), 30, "the first child", process=first)
    first_child = events(log)[0]["pid"]
    second = supervise("beat-kill", log, "sleep", 0.1, options=TIMING)
    killed = now()
    first.kill()
    finish(first)
    wait_for(
        lambda: not _alive(first_child),
        5,
        "the orphaned child to die with its supervisor",
    )
    status, _, err = finish(second, timeout=60)
    assert status == 0, err
    second_start = [e for e in events(log) if e["event"] == "start"][1]
    # Taken over once stale by the database's clock: within stale_after and a few
    # beats, and the start-up of the second supervisor and of its child (two
    # Pythons, each measured by coverage in CI: up to seconds on a busy machine).
    assert second_start["mono"] - killed <= STALE_AFTER + 4 * HEARTBEAT + 5.0
    assert second_start["mono"] - killed >= STALE_AFTER - HEARTBEAT


def _alive(pid):
    try:
        os.kill(pid, 0)
        with open("/proc/%d/stat" % pid) as file:  # a zombie is dead
            return file.read().split(")")[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):  # it may go while we look
        return False


def test_wait_zero_gives_up_at_once_naming_the_holder(tmp_path):
    log = str(tmp_path / "children.jsonl")
    holder = supervise("busy", log, "wait-term", options=TIMING)
    try:
        wait_for(lambda: events(log), 30, "the holder's child", process=holder)
        status, out, err = finish(
            supervise("busy", log, "sleep", 0, options=TIMING + ["--wait", "0"]),
            timeout=60,
        )
        assert status == 75, err
        assert "already running" in err and lock_row("busy").owner in err
        assert len(events(log)) == 1  # the second child never started
    finally:
        holder.send_signal(signal.SIGTERM)
        finish(holder)


def test_wait_n_waits_that_long(tmp_path):
    log = str(tmp_path / "children.jsonl")
    holder = supervise("busy-n", log, "wait-term", options=TIMING)
    try:
        wait_for(lambda: events(log), 30, "the holder's child", process=holder)
        started = now()
        status, _, err = finish(
            supervise("busy-n", log, "sleep", 0, options=TIMING + ["--wait", "1"]),
            timeout=60,
        )
        assert status == 75, err
        assert now() - started >= 1.0
    finally:
        holder.send_signal(signal.SIGTERM)
        finish(holder)


# ---- Signals ----


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_go_to_the_child_and_its_status_comes_back(tmp_path, signum):
    log = str(tmp_path / "children.jsonl")
    # A long stale_after: this is about signals, not about a loss on a loaded machine.
    process = supervise(
        "signalled",
        log,
        "wait-term",
        options=["--heartbeat", "0.2", "--stale-after", "5"],
    )
    wait_for(lambda: events(log), 30, "the child", process=process)
    process.send_signal(signum)
    status, _, err = finish(process, timeout=60)
    assert status == 0, err  # the child's own status: it exits 0 on the signal
    assert [e["signum"] for e in events(log) if e["event"] == "signal"] == [signum]
    assert lock_row("signalled") is None


# ---- A lost lock stops the child ----


def test_an_operator_release_stops_the_child(tmp_path):
    log = str(tmp_path / "children.jsonl")
    process = supervise("released", log, "wait-term", options=TIMING)
    wait_for(lambda: events(log), 30, "the child", process=process)
    Lock.objects.using("default").filter(name="released").delete()
    status, _, err = finish(process, timeout=60)
    assert status == 70, err
    assert "lost the lock 'released'" in err
    assert [e["signum"] for e in events(log) if e["event"] == "signal"] == [
        signal.SIGTERM
    ]


@pytest.mark.parametrize("child", ["wait-term", "ignore-term"])
def test_an_unreachable_database_stops_the_child_before_a_takeover_is_possible(
    tmp_path, child
):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no network to cut")
    settings_dict = connection.settings_dict
    prefix = "MARATHON_PG_" if connection.vendor == "postgresql" else "MARATHON_MYSQL_"
    proxy = FaultProxy(settings_dict["HOST"] or "127.0.0.1", settings_dict["PORT"])
    log = str(tmp_path / "children.jsonl")
    process = None
    try:
        env = child_env(
            **{prefix + "HOST": "127.0.0.1", prefix + "PORT": str(proxy.port)}
        )
        process = supervise("cut-off", log, child, options=TIMING, env=env)
        wait_for(lambda: events(log), 30, "the child", process=process)
        child_pid = events(log)[0]["pid"]
        wait_for(
            lambda: (heartbeat_age("cut-off") or 9) < HEARTBEAT,
            10,
            "a heartbeat through the proxy",
        )
        proxy.blackhole()
        wait_for(
            lambda: not _alive(child_pid),
            STALE_AFTER + 5,
            "the child to be stopped",
            every=0.001,  # seen dead within a millisecond: the age below is of its death
        )
        age_when_dead = heartbeat_age("cut-off")  # by the database's clock
        assert age_when_dead is not None and age_when_dead < STALE_AFTER, age_when_dead
        status, _, err = finish(process, timeout=60)
        assert status == 70, err
        assert "lost the lock 'cut-off'" in err
    finally:
        proxy.close()
        if process is not None and process.poll() is None:  # no supervisor left behind
            process.kill()
            process.communicate()


def test_a_command_that_cannot_run_exits_127():
    process = start_python(
        ["-m", "marathon", "run", "missing"] + TIMING + ["--", "no-such-command-here"]
    )
    status, _, err = finish(process, timeout=60)
    assert status == 127, err
    assert "cannot run no-such-command-here" in err
    assert lock_row("missing") is None


def test_the_child_gets_sigpipe_and_sigxfsz_as_a_shell_would():
    """Python ignores both at startup, and exec keeps ignored signals: the wrapper restores them."""
    process = start_python(
        ["-m", "marathon", "run", "signals"]
        + TIMING
        + ["--", "sh", "-c", "grep SigIgn /proc/self/status"]
    )
    status, out, err = finish(process, timeout=60)
    assert status == 0, err
    ignored = int(out.split()[-1], 16)
    assert (
        ignored & (1 << (signal.SIGPIPE - 1)) == 0
        and ignored & (1 << (signal.SIGXFSZ - 1)) == 0
    ), out


# ---- A standby outlives a database that fails for a while ----


@pytest.fixture
def outage():
    """start() makes every new connection fail as the database would while it restarts (refused
    on PostgreSQL and MariaDB; on SQLite busy: another connection writes); end() ends it."""
    import sqlite3

    settings = connection.settings_dict
    saved = {"PORT": settings.get("PORT"), "OPTIONS": dict(settings.get("OPTIONS", {}))}
    other = []

    def start():
        if connection.vendor == "sqlite":
            settings.setdefault("OPTIONS", {})["timeout"] = 0.2
            db = sqlite3.connect(settings["NAME"], isolation_level=None, timeout=0)
            db.execute("BEGIN IMMEDIATE")
            other.append(db)
        else:
            settings["PORT"] = 1  # nothing listens there: connection refused
        connection.close()  # a restart drops it; SQLite's new timeout applies to new ones

    def end():
        settings["PORT"], settings["OPTIONS"] = saved["PORT"], dict(saved["OPTIONS"])
        while other:
            db = other.pop()
            db.execute("ROLLBACK")
            db.close()

    yield start, end
    end()
    connection.close()


def test_a_standby_waits_through_a_database_outage(outage, monkeypatch, capsys):
    """The standby polls with attempts of its own: an attempt that meets a busy SQLite or a
    database that refuses connections is logged, and the wait goes on (it died there)."""
    import marathon
    from marathon import Marathon

    start, end = outage
    holder = Marathon("standby-outage", heartbeat=HEARTBEAT, stale_after=10)
    assert holder.acquire()
    pauses = []

    def sleep(seconds):  # the standby's pauses between attempts, on this thread
        pauses.append(seconds)
        if len(pauses) == 1:  # its first attempt found the lock held
            # free: on SQLite the next attempt writes (a held lock is only read)
            assert holder.release()
            start()
        elif len(pauses) == 3:  # two attempts failed
            end()

    monkeypatch.setattr(marathon, "_sleep", sleep)
    status = marathon._supervise(
        "standby-outage", ["true"], heartbeat=HEARTBEAT, stale_after=STALE_AFTER
    )
    assert status == 0 and len(pauses) == 3
    assert "still waiting" in capsys.readouterr().err
    assert lock_row("standby-outage") is None


def test_a_standby_stops_when_a_lock_acquired_receiver_fails(monkeypatch):
    """The error came after the lock was taken, not from the database: the attempt released the
    lock, and each retry would take it, send lock_acquired and drop it again."""
    from django.db import OperationalError

    import marathon
    from marathon import Marathon, lock_acquired

    holder = Marathon("standby-receiver", heartbeat=HEARTBEAT, stale_after=10)
    assert holder.acquire()
    calls, pauses = [], []

    def receiver(sender, name, **kwargs):
        if name == "standby-receiver":
            calls.append(name)
            raise OperationalError("the metrics database is down")

    def sleep(seconds):
        pauses.append(seconds)
        if len(pauses) == 1:  # the first attempt found the lock held
            assert holder.release()
        assert len(pauses) < 5, "the standby retried %d times" % len(calls)

    lock_acquired.connect(receiver, weak=False)
    monkeypatch.setattr(marathon, "_sleep", sleep)
    try:
        with pytest.raises(OperationalError, match="metrics database"):
            marathon._supervise(
                "standby-receiver", ["true"], heartbeat=HEARTBEAT, stale_after=10
            )
    finally:
        lock_acquired.disconnect(receiver)
    assert calls == ["standby-receiver"] and len(pauses) == 1
    assert lock_row("standby-receiver") is None


def test_a_standby_that_never_reached_the_database_fails_at_once(outage):
    """The first attempt fails (wrong settings, no server): that is no outage to wait through."""
    from django.db import OperationalError

    import marathon

    if connection.vendor == "sqlite":
        pytest.skip("a busy SQLite did answer: the standby waits (above)")
    start, end = outage
    start()
    connection.close()
    with pytest.raises(OperationalError):
        marathon._supervise("standby-unreachable", ["true"], wait=None)


def test_a_standby_that_gives_up_on_a_row_lock_explains_it_once(monkeypatch):
    """Each attempt waits 2 s for the row a transaction inserted and keeps uncommitted, then
    fails with PostgreSQL's lock timeout, which the attempt explains; at the deadline the
    standby raises that error as it is, not explained twice."""
    import threading

    from django.db import OperationalError, connections, transaction

    import marathon
    from marathon import Marathon

    if connection.vendor != "postgresql":
        pytest.skip("only PostgreSQL's lock statements give up on a row lock (2 s)")
    holder = Marathon("standby-row-lock", heartbeat=HEARTBEAT, stale_after=10)
    assert holder.acquire()
    inserted, done = threading.Event(), threading.Event()

    def insert_and_keep():  # an ORM create in a transaction that does not end
        try:
            with transaction.atomic():
                Lock.objects.create(name="standby-row-lock")
                inserted.set()
                done.wait(30)
        finally:
            connections.close_all()

    other = threading.Thread(target=insert_and_keep)

    def sleep(seconds):
        if not other.is_alive() and not inserted.is_set():  # the lock was found held
            assert holder.release()
            other.start()
            assert inserted.wait(10)

    monkeypatch.setattr(marathon, "_sleep", sleep)
    try:
        with pytest.raises(OperationalError) as caught:
            marathon._supervise(
                "standby-row-lock",
                ["true"],
                wait=3,
                heartbeat=HEARTBEAT,
                stale_after=10,
            )
    finally:
        done.set()
        if other.is_alive() or inserted.is_set():
            other.join(30)
    message = str(caught.value)
    assert message.count("another transaction holds the lock's row") == 1, message
