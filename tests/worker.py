"""Child processes for tests/test_faults.py.

Run as ``python -m tests.worker SCENARIO 'JSON-PARAMS'`` with
MARATHON_TEST_CHILD=1, so that tests/settings.py points at the test database.
The child writes one JSON object per line to stdout (events the test waits
for) and reads one command per line from stdin. Times are CLOCK_MONOTONIC,
which is one clock for every process of a Linux host, so the test can compare
them with its own.
"""

import json
import os
import queue
import sys
import threading
import time
import types

_out = threading.Lock()


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def emit(event, **facts):
    facts["event"] = event
    line = json.dumps(facts, sort_keys=True)
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def commands():
    """Lines from stdin in a queue; "eof" when the test closes the pipe."""
    lines = queue.Queue()

    def read():
        for line in sys.stdin:
            lines.put(line.strip())
        lines.put("eof")

    threading.Thread(target=read, name="worker-stdin", daemon=True).start()
    return lines


def backend_id():
    """The server's id of this thread's database session (None on SQLite)."""
    from django.db import connection

    query = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
    if connection.vendor not in query:
        return None
    with connection.cursor() as cursor:
        cursor.execute(query[connection.vendor])
        return cursor.fetchone()[0]


def timing(params):
    return {key: params[key] for key in ("heartbeat", "stale_after") if key in params}


# ---- Scenarios ----


def hold(params):
    """Take a lock (waiting params["wait"]), report it, hold it until told to release.

    Reports on_lost as it happens; with exit_on_lost, leaves the with block at
    once when the lock is lost. Ends with an "exit" event naming what the with
    block raised.
    """
    from marathon import AlreadyRunning, Marathon

    lines = commands()

    def on_lost(lock):
        emit("on_lost", mono=now(), lost=lock.lost, held=lock.held)
        lines.put("lost")

    lock = Marathon(
        params["name"], wait=params.get("wait", 0), on_lost=on_lost, **timing(params)
    )
    emit("trying", mono=now(), backend=backend_id(), pid=os.getpid())
    started = now()
    facts = {}
    try:
        with lock:
            emit(
                "held",
                mono=now(),
                waited=now() - started,
                token=lock._hold.token,
                owner=lock.owner,
                fence=lock.fence,
                time=time.time(),
            )
            while True:
                command = lines.get()
                if command == "status":
                    emit("status", lost=lock.lost, held=lock.held)
                elif command in ("release", "eof") or (
                    command == "lost" and params.get("exit_on_lost")
                ):
                    break
            facts = {"lost": lock.lost, "held": lock.held}
            try:
                lock.check()
                facts["check"] = None
            except Exception as exc:
                facts["check"] = type(exc).__name__
    except AlreadyRunning as exc:
        emit("exit", exc="AlreadyRunning", waited=now() - started, owner=exc.owner)
    except Exception as exc:
        emit("exit", exc=type(exc).__name__, message=str(exc), mono=now(), **facts)
    else:
        emit("exit", exc=None, mono=now(), **facts)


def attempt(params):
    """Try a lock `tries` times (each waiting params["wait"]), pausing `every` s between tries."""
    from marathon import Marathon

    results = []
    for _ in range(params.get("tries", 1)):
        lock = Marathon(params["name"], wait=params.get("wait", 0), **timing(params))
        started = now()
        got = lock.acquire()
        results.append({"got": got, "took": now() - started})
        if got:
            lock.release()
        threading.Event().wait(params.get("every", 0))
    emit("attempts", results=results, time=time.time())


def race(params):
    """One contender of the race: each "go" line is a round, tried once with wait=0.

    A winner reports its start under the lock, holds the lock until the test
    says "release", then reports its end (taken before the release).
    """
    from marathon import Marathon

    emit("ready", pid=os.getpid())
    for line in sys.stdin:
        if line.strip() != "go":
            break
        lock = Marathon(params["name"], **timing(params))
        started = now()
        won = lock.acquire()
        took = now() - started
        if not won:
            emit("round", won=False, took=took)
            continue
        emit("round", won=True, took=took, start=now())
        sys.stdin.readline()  # "release"
        end = now()
        released = lock.release()
        emit("released", end=end, released=released)


def contention(params):
    """Acquire and release shared and private names for `seconds`; report what escaped."""
    import random

    from marathon import AlreadyRunning, Marathon

    names = [params["shared"], "%s-%d" % (params["shared"], os.getpid())]
    counts = {"cycles": 0, "timeouts": 0}
    errors = []
    sys.stdin.readline()  # the start line: every process starts together
    deadline = now() + params["seconds"]
    while now() < deadline:
        try:
            with Marathon(random.choice(names), wait=params["wait"]):
                pass
            counts["cycles"] += 1
        except AlreadyRunning:
            counts["timeouts"] += 1
        except Exception as exc:
            errors.append("%s: %s" % (type(exc).__name__, exc))
            if len(errors) > 20:
                break
    emit("done", errors=errors, **counts)


def _connections():
    """Sessions of the test database counted on the server (SQLite: open files of it)."""
    from django.db import connection

    if connection.vendor == "sqlite":
        path = os.path.realpath(connection.settings_dict["NAME"])
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink("/proc/self/fd/" + fd) == path:
                    count += 1
            except OSError:
                pass
        return count
    query = {
        "postgresql": "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()",
        "mysql": "SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE()",
    }[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchone()[0]


def leaks(params):
    """Many acquire/release cycles; report threads and connections before and after."""
    from django.db import connection, transaction

    from marathon import Marathon

    def settle(threads):
        """Wait (bounded) for the heartbeat thread to linger and end; return (threads, connections)."""
        deadline = now() + params.get("settle", 5)
        while True:
            current = len(threading.enumerate())
            if current <= threads or now() > deadline:
                return current, _connections()
            threading.Event().wait(0.05)

    threads = len(threading.enumerate())
    connection.ensure_connection()
    with Marathon(params["name"]):
        pass
    threads_before, connections_before = settle(threads)
    for _ in range(params["cycles"] - 1):
        with Marathon(params["name"]):
            pass
    threads_after, connections_after = settle(threads)
    for _ in range(params["atomic_cycles"]):
        with transaction.atomic():
            with Marathon(params["name"]):
                pass
    threads_atomic, connections_atomic = settle(threads)
    emit(
        "leaks",
        threads=[threads, threads_before, threads_after, threads_atomic],
        connections=[connections_before, connections_after, connections_atomic],
        names=[thread.name for thread in threading.enumerate()],
    )


def check(params):
    """`manage.py check` with tests.settings plus the given settings."""
    from django.core.management import execute_from_command_line

    module = types.ModuleType("fault_settings")
    exec("from tests.settings import *", module.__dict__)
    module.__dict__.update(params["settings"])
    sys.modules["fault_settings"] = module
    os.environ["DJANGO_SETTINGS_MODULE"] = "fault_settings"
    execute_from_command_line(["manage.py", "check"])


SCENARIOS = {
    "hold": hold,
    "attempt": attempt,
    "race": race,
    "contention": contention,
    "leaks": leaks,
    "check": check,
}


def main():
    scenario, params = (
        sys.argv[1],
        json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}"),
    )
    if scenario == "check":
        return check(params)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    import marathon

    emit(
        "started",
        marathon_file=os.path.realpath(marathon.__file__),
        pid=os.getpid(),
        time=time.time(),
    )
    SCENARIOS[scenario](params)


if __name__ == "__main__":
    main()
