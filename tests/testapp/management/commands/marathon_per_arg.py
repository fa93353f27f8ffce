"""A lock per argument: get_lock_name()."""

from django.core.management.base import BaseCommand

from marathon import SingleRunnerCommand

from . import _options


class Command(SingleRunnerCommand, BaseCommand):
    def add_arguments(self, parser):
        parser.add_argument("shop")
        _options.add_arguments(parser)

    def get_lock_name(self, *args, **options):
        return "sync-%s" % options["shop"]

    def handle(self, *args, **options):
        _options.run(self, self.get_lock_name(**options), options)
