"""lock_wait: waits for the lock instead of skipping at once."""

from django.core.management.base import BaseCommand

from marathon import SingleRunnerCommand

from . import _options


class Command(SingleRunnerCommand, BaseCommand):
    lock_name = "waiting-task"
    lock_wait = 8

    def add_arguments(self, parser):
        _options.add_arguments(parser)

    def handle(self, *args, **options):
        _options.run(self, self.lock_name, options)
