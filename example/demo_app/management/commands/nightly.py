"""`python manage.py nightly`: a job that must never run twice at once."""

import os
import time

from django.core.management.base import BaseCommand

from marathon import SingleRunnerCommand


class Command(SingleRunnerCommand, BaseCommand):
    help = "Pretend to build the nightly report, one step at a time. Runs alone."
    # The lock is named after the command: "nightly". Set lock_name to change it.

    def add_arguments(self, parser):
        parser.add_argument(
            "--steps", type=int, default=5, help="how many steps (default 5)"
        )
        parser.add_argument(
            "--pause", type=float, default=0.5, help="seconds per step (default 0.5)"
        )

    def handle(self, *args, **options):
        # handle() runs only once this process holds the lock.
        self.stdout.write("Nightly report started in pid %d." % os.getpid())
        for step in range(1, options["steps"] + 1):
            time.sleep(options["pause"])
            self.stdout.write("step %d of %d done" % (step, options["steps"]))
        self.stdout.write(self.style.SUCCESS("Nightly report finished."))
