"""Review 13: reproductions of findings. Each test FAILS on the code as reviewed."""

import pytest
from django.db import InterfaceError, connection

import marathon
from marathon import Lock, LockLost, Marathon, lock_lost
from tests.fixtures_lock import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {"heartbeat": 0.2, "stale_after": 2.0}
BOUND = 10.0


def row(name):
    return Lock.objects.using("default").filter(name=name).first()


@pytest.fixture(autouse=True)
def no_hook_left():
    yield
    marathon._hook = None


def test_a_release_whose_reply_was_lost_is_not_a_loss():
    """The DELETE commits, the connection drops before the reply: _run_here sends it again on a
    new connection, finds no row (it was ours, and is gone) and reports a loss: LockLost from
    the `with`, lock_lost sent, an ERROR logged, for a run that released cleanly. The acquire
    recognises its own row by its token; the release has no such check."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no connection to drop")
    dropped = []

    def drop_after_commit(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not dropped and ("marathon_release" in sql or sql.startswith("DELETE")):
            dropped.append(sql)
            context[
                "connection"
            ].connection.close()  # the server committed; the reply is lost
            raise InterfaceError("connection already closed")
        return result

    losses = []
    receiver = lambda sender, **kwargs: losses.append(kwargs["name"])  # noqa: E731
    lock_lost.connect(receiver, weak=False)
    connection.ensure_connection()
    try:
        with pytest.raises(LockLost):  # should not raise: the release succeeded
            with connection.execute_wrapper(drop_after_commit):
                with Marathon("lost-release-reply", **FAST):
                    pass
        assert dropped and row("lost-release-reply") is None
        wait_for(lambda: losses, BOUND, "the lock_lost signal")
    finally:
        lock_lost.disconnect(receiver)
    pytest.fail(
        "a clean release whose reply was lost ended in LockLost and lock_lost: %r"
        % losses
    )


def test_an_acquire_whose_reply_was_lost_on_a_fresh_connection_leaves_no_orphan_row():
    """Django's connection was closed (a fresh thread, a request after CONN_MAX_AGE=0, a command):
    _run_here opens it for the statement and, since `opened`, never retries. The INSERT committed,
    the reply was lost: acquire() raises and the row stays, with nobody beating or releasing it,
    blocking the name for stale_after."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no connection to drop")
    dropped = []

    def drop_after_commit(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not dropped:
            dropped.append(sql)
            context["connection"].connection.close()
            raise InterfaceError("connection already closed")
        return result

    connection.close()  # as Django leaves it between requests, and as a new thread finds it
    lock = Marathon("lost-reply-fresh", **FAST)
    try:
        with connection.execute_wrapper(drop_after_commit):
            taken = lock.acquire()
    except InterfaceError:
        orphan = row("lost-reply-fresh")
        pytest.fail(
            "acquire() raised and left an orphan row: %r" % (orphan and orphan.token,)
        )
    assert taken and lock.release()
