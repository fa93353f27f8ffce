"""A command that runs at most once per period: lock_min_interval."""

from django.core.management.base import BaseCommand

from marathon import SingleRunnerCommand


class Command(SingleRunnerCommand, BaseCommand):
    lock_min_interval = 60
    lock_held_exit_code = 75

    def add_arguments(self, parser):
        parser.add_argument("--fail", action="store_true")

    def handle(self, *args, **options):
        if options["fail"]:
            raise RuntimeError("the nightly run failed")
        self.stdout.write("Ran the nightly job.")
