"""The README's style: SingleRunnerCommand mixed into BaseCommand, handle() overridden."""

from django.core.management.base import BaseCommand
from marathon.commands import SingleRunnerCommand

from . import _options


class Command(SingleRunnerCommand, BaseCommand):
    help = "Your command description here"

    def add_arguments(self, parser):
        _options.add_arguments(parser)

    def handle(self, *args, **options):
        _options.run(self, "marathon_readme", options)
