"""A SingleRunnerCommand that holds its lock until a signal ends it (tests/test_faults.py).

Prints JSON lines: "waiting" before it tries the lock, "started" once it
holds it (handle() runs), with CLOCK_MONOTONIC times.
"""

import json
import threading
import time

from django.core.management.base import BaseCommand

from marathon import SingleRunnerCommand


class Command(SingleRunnerCommand, BaseCommand):
    lock_name = "fault-hold"
    lock_held_exit_code = 3

    def add_arguments(self, parser):
        parser.add_argument("--lock-wait", type=float, default=0)

    def _say(self, event):
        self.stdout.write(
            json.dumps(
                {"event": event, "mono": time.clock_gettime(time.CLOCK_MONOTONIC)}
            )
        )
        self.stdout.flush()

    def execute(self, *args, **options):
        self.lock_wait = options["lock_wait"]
        self._say("waiting")
        return super().execute(*args, **options)

    def handle(self, *args, **options):
        self._say("started")
        idle = threading.Event()
        while not idle.wait(0.2):  # a signal handler runs between two waits
            pass
