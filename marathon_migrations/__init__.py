"""The migrations of the app ``marathon`` (marathon.py), and the operation they share.

``RunSQLOn`` is ``RunSQL`` for one database vendor. A migration that only
PostgreSQL needs (its functions) says so with it, rather than with RunPython,
so that ``manage.py sqlmigrate`` shows the SQL a DBA is about to apply; on
the other databases it runs nothing, and sqlmigrate says so.
"""

from django.db import migrations

_VENDORS = {
    "postgresql": "PostgreSQL",
    "mysql": "MySQL/MariaDB",
    "sqlite": "SQLite",
    "oracle": "Oracle",
}


class RunSQLOn(migrations.RunSQL):
    """RunSQL that runs on databases of one vendor ("postgresql", "mysql", ...) and nowhere else."""

    def __init__(self, vendor, sql, reverse_sql=None, description=None, **kwargs):
        self.vendor = vendor
        self.description = description
        super().__init__(sql, reverse_sql, **kwargs)

    def deconstruct(self):
        name, args, kwargs = super().deconstruct()
        kwargs["vendor"] = self.vendor
        if self.description is not None:
            kwargs["description"] = self.description
        return name, args, kwargs

    def describe(self):
        return "%s (%s only)" % (
            self.description or "Raw SQL operation",
            _VENDORS.get(self.vendor, self.vendor),
        )

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if self._here(schema_editor):
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self._here(schema_editor):
            super().database_backwards(app_label, schema_editor, from_state, to_state)

    def _here(self, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor == self.vendor:
            return True
        if schema_editor.collect_sql:  # sqlmigrate: say why there is nothing to show
            schema_editor.collected_sql.append(
                "-- Nothing to do on %s." % _VENDORS.get(vendor, vendor)
            )
        return False
