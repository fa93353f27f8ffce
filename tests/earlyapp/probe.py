"""Run in a child process by tests/test_app.py: print what Django made of marathon, as JSON.

With the argument "migrate" it also makes its own database, migrates it, runs
`makemigrations --check` and `check`, and drops the database.
"""

import io
import json
import sys

import django

django.setup()

from django.apps import apps  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

facts = {}
config = apps.get_app_config("marathon")
# Before anything here touches marathon.Lock: did the app config build the model?
facts["models"] = sorted(model.__name__ for model in config.get_models())
facts["config"] = "%s.%s" % (type(config).__module__, type(config).__name__)
facts["verbose_name"] = str(config.verbose_name)
if "tests.earlyapp" in settings.INSTALLED_APPS:
    from tests.earlyapp import models as early

    facts["early_built_before"] = early.BUILT_BEFORE
    facts["early_is_registered"] = early.EARLY_LOCK is apps.get_model(
        "marathon", "Lock"
    )
    facts["early_last_run_is_registered"] = early.EARLY_LAST_RUN is apps.get_model(
        "marathon", "LastRun"
    )

if sys.argv[1:] == ["migrate"]:
    name = connection.creation._create_test_db(
        verbosity=0, autoclobber=True, keepdb=False
    )
    connection.close()
    connection.settings_dict["NAME"] = name
    try:
        out = io.StringIO()
        call_command("migrate", verbosity=1, stdout=out, stderr=out)
        facts["migrate"] = out.getvalue()
        facts["tables"] = sorted(connection.introspection.table_names())
        with connection.cursor() as cursor:
            description = (
                connection.introspection.get_table_description(cursor, "marathon_lock")
                if ("marathon_lock" in facts["tables"])
                else []
            )
        facts["columns"] = sorted(column.name for column in description)
        out = io.StringIO()
        try:
            call_command(
                "makemigrations", "--check", "--dry-run", stdout=out, stderr=out
            )
            facts["makemigrations_exit"] = 0
        except SystemExit as exit:
            facts["makemigrations_exit"] = exit.code
        facts["makemigrations"] = out.getvalue()
        out, err = io.StringIO(), io.StringIO()
        call_command("check", stdout=out, stderr=err)
        facts["check"] = out.getvalue() + err.getvalue()
    finally:
        connection.close()
        connection.creation._destroy_test_db(name, verbosity=0)
print(json.dumps(facts))
