"""Child processes for tests/test_transactions.py.

Run as ``python -m tests.transactions_child ACTION ARGS...`` with the
environment of ``tests.processes.child_env()``, so that the child uses the
test database pytest-django made. Every action prints one JSON object on its
last line of stdout: the facts the test asserts. Only the public API of
marathon is used here, so these children hold for any implementation.
"""

import json
import os
import sys
import threading
import time

from tests.processes import touch, wait_for

COUNTER_TABLE = "marathon_test_counter"


def try_lock(name):
    """One `with Marathon(name)`, never waiting: did it get the lock, who holds it, or what failed."""
    from django.db import OperationalError

    from marathon import AlreadyRunning, Marathon

    started = time.monotonic()
    try:
        with Marathon(name):
            result = {"outcome": "acquired"}
    except AlreadyRunning as exc:
        result = {"outcome": "AlreadyRunning", "owner": exc.owner}
    except OperationalError as exc:
        result = {"outcome": "OperationalError", "message": str(exc)}
    result["took"] = time.monotonic() - started
    return result


def counter_worker(role, workdir):
    """One worker of the lost-update test, in a transaction as under ATOMIC_REQUESTS.

    Both workers: enter atomic(); take "counter" (waiting up to 10 s) as the
    first thing in the transaction; read the counter; write it + 1; leave the
    with block; some more work; commit. Files in `workdir` order them:

    - "a" takes the lock, reads, touches a-holding, and writes only once b
      says it is trying the lock (b-trying). After its with block it waits up
      to 2 s for b-read: b can only have read by then if the lock let b in
      before a's transaction ended (the bug this test is about).
    - "b" waits for a-holding, touches b-trying, then does the same and
      touches b-read once it has read.
    """
    from django.db import connection, transaction

    from marathon import Marathon

    def path(name):
        return os.path.join(workdir, name)

    facts = {"role": role}
    if role == "b":
        wait_for(lambda: os.path.exists(path("a-holding")), what="a-holding")
        touch(path("b-trying"))
    with transaction.atomic():
        with Marathon("counter", wait=10):
            with connection.cursor() as cursor:
                cursor.execute("SELECT value FROM %s WHERE id = 1" % COUNTER_TABLE)
                value = cursor.fetchone()[0]
            facts["read"] = value
            if role == "a":
                touch(path("a-holding"))
                wait_for(lambda: os.path.exists(path("b-trying")), what="b-trying")
            else:
                touch(path("b-read"))
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE %s SET value = %%s WHERE id = 1" % COUNTER_TABLE,
                    [value + 1],
                )
        if role == "a":  # "some more work" after the lock, before the commit
            deadline = time.monotonic() + 2.0
            while not os.path.exists(path("b-read")) and time.monotonic() < deadline:
                threading.Event().wait(0.02)
            facts["b_read_before_commit"] = os.path.exists(path("b-read"))
    return facts


def uncommitted_lock(name, ready, release):
    """Create the Lock row `name` through the ORM in a transaction, and keep it open (uncommitted) until told."""
    from django.db import transaction

    from marathon import Lock

    class RollBack(Exception):
        pass

    try:
        with transaction.atomic():
            Lock.objects.create(name=name, owner="uncommitted:1")
            touch(ready)
            wait_for(lambda: os.path.exists(release), timeout=60, what="release file")
            raise RollBack
    except RollBack:
        pass
    return {"rolled_back": True}


def main():
    import django

    django.setup()
    from django.db import connection

    action, args = sys.argv[1], sys.argv[2:]
    result = {
        "try": try_lock,
        "counter": counter_worker,
        "uncommitted": uncommitted_lock,
    }[action](*args)
    connection.close()
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
