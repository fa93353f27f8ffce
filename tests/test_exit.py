"""A process that exits just after releasing its last lock leaves no database connection open (issue 14).

With psycopg 3, an open connection collected at exit prints "ResourceWarning:
... was deleted while still open"; so does sqlite3 from Python 3.13 on
("unclosed database"). The heartbeat's connection belongs to its session
thread, which closes it when it ends.
"""

import sys
import textwrap

import pytest
from django.db import connection

from tests.processes import child_env, run_python

pytestmark = pytest.mark.django_db(transaction=True)

CHILD = textwrap.dedent(
    """
    import threading, time
    import django
    django.setup()
    from django.db import connection
    from marathon import Lock, Marathon

    lock = Marathon("exit-soon", heartbeat=0.1, stale_after=5)
    assert lock.acquire()
    deadline = time.monotonic() + 10
    row = Lock.objects.get(name="exit-soon")
    while Lock.objects.filter(pk=row.pk, heartbeat_at__gt=row.heartbeat_at).count() == 0:  # until it has beaten
        assert time.monotonic() < deadline, "no heartbeat"
        threading.Event().wait(0.02)
    connection.close()  # this thread's: the heartbeat's session has one of its own
    assert lock.release()
    """
)

# The drivers that warn about a connection left open; psycopg2 and PyMySQL do not.
WARNS = (
    connection.vendor == "postgresql" and connection.Database.__name__ == "psycopg"
) or (connection.vendor == "sqlite" and sys.version_info >= (3, 13))


KNOWN = (
    "Known (issue 14): after the last release the heartbeat thread still sleeps its linger (1 s) "
    "before it ends its session, and nothing at exit closes the session's connection."
)


def test_exit_right_after_a_release_leaves_no_connection_open():
    code, out, err = run_python(
        ["-W", "error::ResourceWarning", "-c", CHILD], env=child_env()
    )
    assert code == 0, err
    if WARNS and "ResourceWarning" in err:
        pytest.xfail(KNOWN)  # passes once the heartbeat closes its connection in time
    assert "ResourceWarning" not in err, err
