"""The user's nightly job: a SingleRunnerCommand under the lock "job"."""

from django.core.management.base import BaseCommand

from marathon import SingleRunnerCommand
from usersuite_jobs.models import Note


class Command(SingleRunnerCommand, BaseCommand):
    lock_name = "job"

    def handle(self, *args, **options):
        Note.objects.create(text="written by run_job")
        self.stdout.write("run_job handled")
