"""Migrations: a 0.1 database upgrades in place; names are exact; no model change lacks a migration."""

import io

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from marathon import AlreadyRunning, Lock, Marathon
from tests.processes import LOCK_COLUMNS, child_env, run_python

pytestmark = pytest.mark.django_db(transaction=True)


def latest():
    """The app's last migration, whatever it is: tests after these need the whole schema."""
    return MigrationLoader(connection).graph.leaf_nodes("marathon")[0]


def migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])


@pytest.fixture
def at_0_1():
    """The table as django-marathon 0.1 made it; migrated forward again afterwards."""
    migrate(("marathon", "0001_initial"))
    try:
        yield
    finally:
        migrate(latest())


def columns():
    with connection.cursor() as cursor:
        return sorted(
            c.name
            for c in connection.introspection.get_table_description(
                cursor, "marathon_lock"
            )
        )


def test_a_0_1_database_keeps_its_rows_and_they_are_manual_locks(at_0_1):
    assert columns() == ["id", "locked_at", "name"]
    with connection.cursor() as cursor:  # what 0.1's get_or_create wrote
        cursor.execute(
            "INSERT INTO marathon_lock (name, locked_at) VALUES (%s, %s)",
            ["old-task", connection.ops.adapt_datetimefield_value(timezone.now())],
        )
    migrate(latest())
    assert columns() == LOCK_COLUMNS
    old = Lock.objects.get(name="old-task")
    assert old.heartbeat_at is None and old.owner == "" and old.token == ""
    with pytest.raises(AlreadyRunning) as caught:
        with Marathon("old-task", heartbeat=0.1, stale_after=0.2):
            pass
    assert "no heartbeat" in str(caught.value)
    assert Lock.objects.get(name="old-task").pk == old.pk
    old.delete()  # 0.1's release still works
    with Marathon("old-task", heartbeat=0.2, stale_after=2.0):
        pass


def test_names_are_exact():
    names = ["Job", "job", "job ", "jöb", "job\U0001f3c3", "job\U0001f3c4"]
    locks = [Marathon(name, heartbeat=1, stale_after=10) for name in names]
    try:
        assert [lock.acquire() for lock in locks] == [True] * len(names)
        assert sorted(Lock.objects.values_list("name", flat=True)) == sorted(names)
        for name in names:
            assert Lock.objects.get(name=name).name == name
    finally:
        for lock in locks:
            lock.release()
    for name in names:
        _, created = Lock.objects.get_or_create(name=name)
        assert created
    assert Lock.objects.count() == len(names)


@pytest.mark.skipif(connection.vendor != "mysql", reason="MySQL/MariaDB only")
def test_name_column_is_binary_utf8mb4_on_mysql():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'marathon_lock' AND COLUMN_NAME = 'name'"
        )
        charset, collation = cursor.fetchone()
    assert charset == "utf8mb4"
    assert collation in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")


@pytest.mark.skipif(connection.vendor != "mysql", reason="MySQL/MariaDB only")
def test_migrating_back_restores_the_default_collation_on_mysql(at_0_1):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'marathon_lock' AND COLUMN_NAME = 'name'"
        )
        assert not cursor.fetchone()[0].endswith("_bin")


def test_makemigrations_finds_no_change():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db(transaction=False)
def test_a_model_change_without_migration_fails():
    """The check above can fail: the same check in a process whose Lock has one more field."""
    code = (
        "import django; django.setup()\n"
        "from django.db import models\n"
        "from marathon import Lock\n"
        "models.IntegerField(null=True).contribute_to_class(Lock, 'extra')\n"
        "from django.core.management import call_command\n"
        "call_command('makemigrations', '--check', '--dry-run')\n"
    )
    status, out, err = run_python(["-c", code], env=child_env())
    assert status == 1, (out, err)
    assert "extra" in out


# ---- What a DBA sees before migrating (issue 14) ----


def sqlmigrate(*args):
    out = io.StringIO()
    call_command("sqlmigrate", "marathon", *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize(
    "migration, created, dropped",
    [
        (
            "0003",
            ["marathon_acquire(lock_name text, lock_owner text, lock_token text)"],
            ["marathon_acquire(text"],
        ),
        (
            "0004",
            [
                "marathon_acquire(\n",
                "marathon_release(lock_id bigint",
                "marathon_beat(lock_ids bigint[]",
            ],
            [
                "marathon_acquire(text",
                "marathon_release(bigint",
                "marathon_beat(bigint[]",
            ],
        ),
    ],
)
def test_sqlmigrate_shows_the_postgresql_functions(migration, created, dropped):
    forwards, backwards = sqlmigrate(migration), sqlmigrate(migration, "--backwards")
    assert "CANNOT BE WRITTEN AS SQL" not in forwards + backwards
    assert "(PostgreSQL only)" in forwards
    if connection.vendor == "postgresql":
        for function in created:
            assert "CREATE OR REPLACE FUNCTION " + function in forwards
        for function in dropped:
            assert "DROP FUNCTION IF EXISTS " + function in backwards
    else:
        assert "FUNCTION" not in forwards + backwards
        assert (
            "-- Nothing to do on " in forwards and "-- Nothing to do on " in backwards
        )


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only")
def test_migrations_create_and_drop_the_functions_on_postgresql():
    def functions():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT oid::regprocedure::text FROM pg_proc WHERE proname LIKE 'marathon%' ORDER BY 1"
            )
            return [row[0] for row in cursor.fetchall()]

    try:
        migrate(("marathon", "0002_heartbeat"))
        assert functions() == []
        migrate(("marathon", "0003_postgresql_acquire"))
        assert functions() == ["marathon_acquire(text,text,text)"]
        migrate(("marathon", "0004_stale_after"))
        assert functions() == [
            "marathon_acquire(text,text,text)",
            "marathon_acquire(text,text,text,double precision)",
            "marathon_beat(bigint[],text[])",
            "marathon_release(bigint,text)",
        ]
    finally:
        migrate(latest())


def test_run_sql_on_serializes_for_squashmigrations():
    from django.db.migrations.writer import OperationWriter

    from marathon_migrations import RunSQLOn

    operation = RunSQLOn(
        "postgresql", ["SELECT 1"], ["SELECT 2"], description="Select one"
    )
    text, imports = OperationWriter(operation, indentation=0).serialize()
    assert text.startswith("marathon_migrations.RunSQLOn(") and imports == {
        "import marathon_migrations"
    }
    _, args, kwargs = operation.deconstruct()
    again = RunSQLOn(*args, **kwargs)
    assert (again.vendor, again.sql, again.reverse_sql, again.describe()) == (
        "postgresql",
        ["SELECT 1"],
        ["SELECT 2"],
        "Select one (PostgreSQL only)",
    )
