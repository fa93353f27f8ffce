"""The same checks as usersuite_jobs/tests.py, written for pytest-django (`db`, `transactional_db`).

pytest runs the tests in this file's order; the transactional ones come last,
so that the database is torn down right after a heartbeat ran.
"""

import io
import threading
import time

import django
import pytest
from django.core.management import call_command

from marathon import AlreadyRunning, Lock, Marathon
from usersuite_jobs.models import Note

needs_django_32 = pytest.mark.skipif(
    django.VERSION < (3, 2),
    reason="Django < 3.2 does not mark TestCase's transactions, so marathon cannot tell them from the user's own",
)


@pytest.fixture
def db(db):
    """pytest-django's `db`, where marathon can tell its transaction from the user's own.

    Django 4.1+ marks the test's atomic blocks. Django 3.2 marks only a
    TestCase's class (in its setUpClass), which pytest-django 4.6+ skips for
    the `db` fixture: there the test's transaction looks like the user's.
    """
    from django.db import transaction

    if django.VERSION < (4, 1) and getattr(
        transaction.Atomic, "_ensure_durability", True
    ):
        pytest.skip(
            "pytest-django skips TestCase.setUpClass, where Django < 4.1 marks a test's transaction"
        )
    return db


def run_job():
    out, err = io.StringIO(), io.StringIO()
    call_command("run_job", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@needs_django_32
def test_a_released_lock_can_be_taken_again_in_the_same_test(db):
    Note.objects.create(text="the user's own write")
    with Marathon("job") as lock:
        assert lock.held
    with Marathon("job") as lock:
        assert lock.held
    assert Note.objects.count() == 1


@needs_django_32
def test_b_takes_a_lock_and_never_releases_it(db):
    assert Marathon("leaky").acquire()


@needs_django_32
def test_c_the_lock_of_the_previous_test_did_not_leak(db):
    assert not Lock.objects.filter(name="leaky").exists()
    with Marathon("leaky") as lock:
        assert lock.held


@needs_django_32
def test_d_the_command_runs_its_handle(db):
    out, err = run_job()
    assert "run_job handled" in out
    assert err == ""
    assert Note.objects.filter(text="written by run_job").exists()


@needs_django_32
def test_e_a_lock_held_by_someone_else(db):
    Lock.objects.create(name="job", owner="other-host:1")
    with pytest.raises(AlreadyRunning) as caught:
        with Marathon("job"):
            pytest.fail("ran while someone else held the lock")
    assert caught.value.owner == "other-host:1"
    out, err = run_job()
    assert "run_job handled" not in out
    assert "already running" in err and "other-host:1" in err
    assert not Note.objects.exists()


def test_f_the_command_runs_its_handle(transactional_db):
    out, err = run_job()
    assert "run_job handled" in out
    assert not Lock.objects.exists()


def test_g_a_lock_held_across_two_heartbeats(transactional_db):
    with Marathon("slow", heartbeat=0.2, stale_after=1) as lock:
        beats = {Lock.objects.get(name="slow").heartbeat_at}
        deadline = time.monotonic() + 5
        while len(beats) < 3:  # the acquire's own time and two heartbeats
            assert time.monotonic() < deadline, "no two heartbeats within 5 s"
            threading.Event().wait(0.05)
            beats.add(Lock.objects.get(name="slow").heartbeat_at)
        assert lock.held
    assert not Lock.objects.filter(name="slow").exists()
