"""lock_held_exit_code: a skipped run exits with status 3."""

from django.core.management.base import BaseCommand

from marathon import SingleRunnerCommand

from . import _options


class Command(SingleRunnerCommand, BaseCommand):
    lock_held_exit_code = 3

    def add_arguments(self, parser):
        _options.add_arguments(parser)

    def handle(self, *args, **options):
        _options.run(self, "marathon_exit3", options)
