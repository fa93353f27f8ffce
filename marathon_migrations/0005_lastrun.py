from django.db import migrations, models


def exact_names_on_mysql(apps, schema_editor):
    """Names of last runs compare as lock names do (see 0002): code point by code point."""
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    if connection.mysql_is_mariadb:
        collation = "utf8mb4_nopad_bin"
    elif connection.mysql_version >= (8, 0):
        collation = "utf8mb4_0900_bin"
    else:
        collation = "utf8mb4_bin"
    schema_editor.execute(
        "ALTER TABLE marathon_lastrun MODIFY name VARCHAR(255) "
        "CHARACTER SET utf8mb4 COLLATE %s NOT NULL" % collation
    )


class Migration(migrations.Migration):
    dependencies = [
        ("marathon", "0004_stale_after"),
    ]

    operations = [
        migrations.CreateModel(
            name="LastRun",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                ("name", models.CharField(max_length=255, unique=True)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField()),
                ("owner", models.CharField(blank=True, default="", max_length=255)),
                ("fence", models.BigIntegerField()),
                (
                    "outcome",
                    models.CharField(
                        choices=[
                            ("ok", "ok"),
                            ("error", "error"),
                            ("lost", "lost"),
                            (
                                "abandoned",
                                "abandoned (taken over after its holder died)",
                            ),
                        ],
                        max_length=16,
                    ),
                ),
                (
                    "duration",
                    models.FloatField(blank=True, help_text="seconds", null=True),
                ),
            ],
        ),
        # DDL cannot be rolled back on MySQL, so Django refuses it inside a transaction.
        migrations.RunPython(
            exact_names_on_mysql, migrations.RunPython.noop, atomic=False
        ),
    ]
