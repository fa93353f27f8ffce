"""0.1's style: a lock_name and run_task() instead of handle()."""

from django.core.management.base import BaseCommand
from marathon.commands import SingleRunnerCommand

from . import _options


class Command(SingleRunnerCommand, BaseCommand):
    lock_name = "legacy-task"

    def add_arguments(self, parser):
        _options.add_arguments(parser)

    def run_task(self, *args, **options):
        _options.run(self, self.lock_name, options)
