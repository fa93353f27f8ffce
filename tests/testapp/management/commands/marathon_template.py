"""A lock per option, without get_lock_name(): lock_name = "sync-shop-{shop}"."""

from django.core.management.base import BaseCommand

from marathon import SingleRunnerCommand

from . import _options


class Command(SingleRunnerCommand, BaseCommand):
    lock_name = "sync-shop-{shop}"

    def add_arguments(self, parser):
        parser.add_argument("--shop", type=int, required=True)
        _options.add_arguments(parser)

    def handle(self, *args, **options):
        _options.run(self, self.lock.name, options)
