"""Processes that fork while they hold a lock, for tests/test_fork.py.

Run as ``python -m tests.fork_child ACTION`` with the environment of
``tests.processes.child_env()`` (the test database). Each action prints
one JSON object on its last line of stdout: the facts the test asserts. A
forked child reports to its parent through a pipe and always ends with
os._exit(), so that it never runs the parent's cleanup; the parent waits
for it at most CHILD_TIMEOUT seconds, then kills it and says so.
"""

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings

CHILD_TIMEOUT = 10.0  # seconds a forked child may take to take and release its own lock


def _pause(seconds):
    threading.Event().wait(seconds)


def _fork(child):
    """Fork; the child runs child() -> (exit code, facts) and writes the facts to a pipe.

    Returns (pid, read end of the pipe) in the parent; never returns in the child.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            code, facts = child()
        except BaseException:
            code, facts = 1, {"error": traceback.format_exc()}
        try:
            os.write(write, json.dumps(facts, default=str).encode())
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def _reap(pid, read, timeout=CHILD_TIMEOUT):
    """Wait (bounded) for a forked child; return its exit code (None if killed at the deadline) and facts."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        _pause(0.01)
    chunks = []
    while True:
        chunk = os.read(read, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    if status is None:
        code = None
    elif os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
    else:
        code = -os.WTERMSIG(status)
    raw = b"".join(chunks).decode()
    return code, json.loads(raw) if raw else {}


def _row(name):
    """The lock row's (id, token, heartbeat_at), or None."""
    from marathon import Lock

    return (
        Lock.objects.filter(name=name)
        .values_list("id", "token", "heartbeat_at")
        .first()
    )


def _take_and_release(name):
    """What a forked child does: take and release a lock of its own. Returns (exit code, facts)."""
    from django.db import connection

    from marathon import Marathon

    # stale_after leaves room for an acquire that waits on a busy SQLite: a
    # holder counts from the moment it sent the acquire, and would otherwise
    # find itself past its loss deadline before its first beat.
    other = Marathon(name, heartbeat=0.2, stale_after=5)
    acquired = other.acquire()
    released = other.release() if acquired else None
    connection.close()
    facts = {"acquired": acquired, "released": released}
    if acquired and not released:  # why, for the failure message
        facts.update(state=other._hold.state, reason=other._hold.reason)
    return (0 if acquired and released else 2), facts


def _heartbeat_advances(name, timeout=5.0):
    """Whether the row's heartbeat_at moves within `timeout` seconds (read on Django's connection)."""
    first = _row(name)[2]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _pause(0.05)
        row = _row(name)
        if row is not None and row[2] > first:
            return True
    return False


# ---- Actions ----


def holder_forks():
    """Hold "p" and fork. The child must not see it as its own; the parent keeps it."""
    from django.db import connection

    from marathon import Marathon

    lock = Marathon("p", heartbeat=0.2, stale_after=1)
    assert lock.acquire(), "could not take 'p'"
    before = _row("p")
    connection.close()  # fork with no open connection of our own (test_fork checks the lock's own separately)

    def child():
        facts = {"held": lock.held}
        facts["release"] = lock.release()
        code, facts["other"] = _take_and_release("c")
        return code, facts

    pid, read = _fork(child)
    code, facts = _reap(pid, read)
    after = _row("p")
    return {
        "child_exit": code,
        "child": facts,
        "row_kept": after is not None and after[:2] == before[:2],
        "heartbeat_advances": after is not None and _heartbeat_advances("p"),
        "lost": lock.lost,
        "release": lock.release(),
        "c_left": _row("c") is not None,
    }


def _slow_down(frame, event, arg):
    """A trace function that slows down marathon's own code (each of its lines) in the traced threads."""
    if frame.f_code.co_filename != _slow_down.file:
        return None  # other code (Django's, the driver's) runs at full speed
    for _ in range(1000):
        pass
    return _slow_down


def fork_storm(forks="200", concurrency="4", holds="20"):
    """Hold `holds` locks with a 0.01 s heartbeat and fork `forks` times; each child takes and releases its own lock.

    Forking while the heartbeat thread holds an internal mutex would leave it
    held forever in the child; every child must end, with status 0, within
    CHILD_TIMEOUT. Stops at the first child that does not. Such a mutex is
    held only briefly, so the odds of a fork landing there are raised: more
    locks make each beat's work longer, threads switch often, and marathon's
    own code runs slowed down (traced) in the heartbeat's threads.
    """
    from django.db import connection

    import marathon
    from marathon import Marathon

    forks, concurrency, holds = int(forks), int(concurrency), int(holds)
    _slow_down.file = marathon.__file__
    sys.setswitchinterval(1e-5)
    threading.settrace(_slow_down)  # the threads started from here on: the heartbeat's
    locks = [
        Marathon(
            "storm" if index == 0 else "storm-held-%d" % index,
            heartbeat=0.01,
            stale_after=5,
        )
        for index in range(holds)
    ]
    for lock in locks:
        assert lock.acquire(), "could not take %r" % lock.name
    assert _heartbeat_advances("storm"), "the heartbeat does not run"
    connection.close()
    # Only the heartbeat's threads are traced, not ours nor the children's.
    threading.settrace(None)
    running, failures, started = {}, [], 0
    while (started < forks or running) and not failures:
        while started < forks and len(running) < concurrency:
            index = started
            name = "storm-%d" % index
            running[_fork(lambda name=name: _take_and_release(name))] = (
                index,
                time.monotonic(),
            )
            started += 1
        for (pid, read), (index, since) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done and time.monotonic() - since < CHILD_TIMEOUT:
                continue
            if not done:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                failures.append({"child": index, "hung": True})
            elif not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
                raw = os.read(read, 65536).decode()
                failures.append(
                    {
                        "child": index,
                        "status": status,
                        "facts": json.loads(raw) if raw else {},
                    }
                )
            os.close(read)
            del running[(pid, read)]
        _pause(0.005)
    for pid, read in running:  # after a failure: end the others
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
    heartbeat_advances = _heartbeat_advances("storm")
    return {
        "forks": started,
        "failures": failures,
        "lost": [other.name for other in locks if other.lost],
        "heartbeat_advances": heartbeat_advances,
        "released": sum(other.release() for other in locks),
        "holds": holds,
    }


def fork_mid_beat():
    """Fork while the heartbeat thread is stopped at the seam point "heartbeat.beat" (marathon._hook)."""
    from django.db import connection

    import marathon
    from marathon import Marathon

    at_beat, go_on = threading.Event(), threading.Event()
    points = []

    def hook(point, **facts):
        points.append(point)
        if point == "heartbeat.beat" and not at_beat.is_set():
            at_beat.set()
            go_on.wait(CHILD_TIMEOUT + 5)

    marathon._hook = hook
    lock = Marathon("mid-beat", heartbeat=0.05, stale_after=5)
    assert lock.acquire(), "could not take 'mid-beat'"
    connection.close()
    if not at_beat.wait(5):
        go_on.set()
        return {
            "hook_called": False,
            "points": sorted(set(points)),
            "release": lock.release(),
        }

    def child():
        marathon._hook = (
            None  # the child's own heartbeat must not stop at the parent's seam
        )
        return _take_and_release("mid-beat-child")

    pid, read = _fork(child)
    code, facts = _reap(pid, read)
    go_on.set()
    marathon._hook = None
    return {
        "hook_called": True,
        "child_exit": code,
        "child": facts,
        "heartbeat_advances": _heartbeat_advances("mid-beat"),
        "release": lock.release(),
    }


# ---- The user's case: a command that starts a multiprocessing pool ----

_barrier = None


def _pool_start(barrier):
    global _barrier
    _barrier = barrier


def _pool_query(index):
    """In a pool worker: two queries on Django's connection, both workers at once."""
    from django.db import connection

    from marathon import Lock

    _barrier.wait(
        CHILD_TIMEOUT
    )  # both workers query at the same time, as a real pool would
    count = Lock.objects.count()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        one = cursor.fetchone()[0]
    return {"pid": os.getpid(), "locks": count, "one": one}


def _pool_command():
    from django.core.management.base import BaseCommand

    from marathon import SingleRunnerCommand

    class Command(SingleRunnerCommand, BaseCommand):
        lock_name = "pool-job"

        def handle(self, *args, **options):
            context = multiprocessing.get_context("fork")
            barrier = context.Barrier(2)
            pool = context.Pool(2, initializer=_pool_start, initargs=(barrier,))
            try:
                results = pool.map(_pool_query, range(2), chunksize=1)
            finally:
                pool.terminate()
                pool.join()
            self.stdout.write("RESULTS " + json.dumps(results))

    return Command()


def pool_command():
    """Run the command (no query before it, as in a fresh `manage.py` process); report what the pool saw."""
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command(_pool_command(), stdout=out)
    lines = [
        line for line in out.getvalue().splitlines() if line.startswith("RESULTS ")
    ]
    return {"results": json.loads(lines[0][len("RESULTS ") :]) if lines else None}


def main():
    import django

    django.setup()
    # Python 3.12+ warns when a process with threads forks: here that is the point.
    warnings.filterwarnings(
        "ignore", r"This process .*is multi-threaded", DeprecationWarning
    )
    from django.db import connection

    action, args = sys.argv[1], sys.argv[2:]
    result = {
        "holder-forks": holder_forks,
        "fork-storm": fork_storm,
        "fork-mid-beat": fork_mid_beat,
        "pool-command": pool_command,
    }[action](*args)
    connection.close()
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
