from django.db import models


class Note(models.Model):
    """The user's own model: written by the tests and by the `run_job` command."""

    text = models.CharField(max_length=100)

    class Meta:
        app_label = "usersuite_jobs"

    def __str__(self):
        return self.text
