"""A user's own tests of code that takes marathon locks, run by `manage.py test`.

What a user may expect of marathon in Django's TestCase (each test in a
transaction that is rolled back) and TransactionTestCase (real commits):
locks work as in production, nothing leaks from one test to the next, and
the test database tears down cleanly. tests/test_usersuite.py runs this.
"""

import io
import threading
import time
import unittest

import django
from django.core.management import call_command
from django.test import TestCase, TransactionTestCase

from marathon import AlreadyRunning, Lock, Marathon
from usersuite_jobs.models import Note

needs_django_32 = unittest.skipIf(
    django.VERSION < (3, 2),
    "Django < 3.2 does not mark TestCase's transactions, so marathon cannot tell them from the user's own",
)


def run_job():
    """call_command("run_job"); returns (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command("run_job", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@needs_django_32
class JobTests(TestCase):
    """Inside TestCase's transaction. The tests run in alphabetical order."""

    def test_a_released_lock_can_be_taken_again_in_the_same_test(self):
        Note.objects.create(text="the user's own write")
        with Marathon("job") as lock:
            self.assertTrue(lock.held)
        with Marathon("job") as lock:
            self.assertTrue(lock.held)
        self.assertEqual(Note.objects.count(), 1)

    def test_b_takes_a_lock_and_never_releases_it(self):
        self.assertTrue(Marathon("leaky").acquire())

    def test_c_the_lock_of_the_previous_test_did_not_leak(self):
        self.assertFalse(Lock.objects.filter(name="leaky").exists())
        with Marathon("leaky") as lock:
            self.assertTrue(lock.held)

    def test_d_the_command_runs_its_handle(self):
        out, err = run_job()
        self.assertIn("run_job handled", out)
        self.assertEqual(err, "")
        self.assertTrue(Note.objects.filter(text="written by run_job").exists())

    def test_e_a_lock_held_by_someone_else(self):
        Lock.objects.create(name="job", owner="other-host:1")
        with self.assertRaises(AlreadyRunning) as caught:
            with Marathon("job"):
                self.fail("ran while someone else held the lock")
        self.assertEqual(caught.exception.owner, "other-host:1")
        out, err = run_job()
        self.assertNotIn("run_job handled", out)
        self.assertIn("already running", err)
        self.assertIn("other-host:1", err)
        self.assertFalse(Note.objects.exists())


class HeartbeatTests(TransactionTestCase):
    """Real commits: the heartbeat runs, and the database still tears down cleanly right after it."""

    def test_a_the_command_runs_its_handle(self):
        out, err = run_job()
        self.assertIn("run_job handled", out)
        self.assertFalse(Lock.objects.exists())

    def test_b_a_lock_held_across_two_heartbeats(self):
        with Marathon("slow", heartbeat=0.2, stale_after=1) as lock:
            beats = {Lock.objects.get(name="slow").heartbeat_at}
            deadline = time.monotonic() + 5
            while len(beats) < 3:  # the acquire's own time and two heartbeats
                self.assertLess(
                    time.monotonic(), deadline, "no two heartbeats within 5 s"
                )
                threading.Event().wait(0.05)
                beats.add(Lock.objects.get(name="slow").heartbeat_at)
            self.assertTrue(lock.held)
        self.assertFalse(Lock.objects.filter(name="slow").exists())
