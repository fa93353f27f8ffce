from django.db import migrations, models


def exact_names_on_mysql(apps, schema_editor):
    """Make lock names exact on MySQL/MariaDB, as they are on PostgreSQL and SQLite.

    Their default collations treat "Job", "job" and "job " as one name, and the
    utf8mb3 character set cannot store emoji. A binary, no-pad utf8mb4 collation
    compares names code point by code point.
    """
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    if connection.mysql_is_mariadb:
        collation = "utf8mb4_nopad_bin"
    elif connection.mysql_version >= (8, 0):
        collation = "utf8mb4_0900_bin"
    else:  # MySQL 5.7 has no binary no-pad collation: "job" and "job " stay one name
        collation = "utf8mb4_bin"
    schema_editor.execute(
        "ALTER TABLE marathon_lock MODIFY name VARCHAR(255) "
        "CHARACTER SET utf8mb4 COLLATE %s NOT NULL" % collation
    )


def default_names_on_mysql(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor == "mysql":
        schema_editor.execute(
            "ALTER TABLE marathon_lock MODIFY name VARCHAR(255) NOT NULL"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("marathon", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="lock",
            name="heartbeat_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="lock",
            name="owner",
            field=models.CharField(blank=True, default="", max_length=255),
        ),
        migrations.AddField(
            model_name="lock",
            name="token",
            field=models.CharField(
                blank=True, default="", editable=False, max_length=64
            ),
        ),
        # DDL cannot be rolled back on MySQL, so Django refuses it inside a transaction.
        migrations.RunPython(
            exact_names_on_mysql, default_names_on_mysql, atomic=False
        ),
    ]
