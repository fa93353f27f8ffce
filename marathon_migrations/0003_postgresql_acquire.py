from django.db import migrations

from marathon_migrations import RunSQLOn

# One acquire attempt on PostgreSQL: insert the lock, or else report who holds
# it. A function rather than one statement with a CTE: its plans are cached per
# session (the CTE was planned anew on every call, which cost more than the
# rest of the attempt), and, like the CTE, it never locks the holder's row.
# marathon.py calls it; the other databases need no function.
CREATE = """
CREATE OR REPLACE FUNCTION marathon_acquire(lock_name text, lock_owner text, lock_token text)
RETURNS TABLE (
    acquired boolean, fence bigint, holder text,
    held_since timestamptz, heartbeat timestamptz, age double precision
)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO marathon_lock AS l (name, locked_at, heartbeat_at, owner, token)
    VALUES (lock_name, statement_timestamp(), statement_timestamp(), lock_owner, lock_token)
    ON CONFLICT (name) DO NOTHING
    RETURNING l.id INTO fence;
    IF fence IS NOT NULL THEN
        acquired := true;
        RETURN NEXT;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT false, l.id, l.owner::text, l.locked_at, l.heartbeat_at,
           EXTRACT(EPOCH FROM statement_timestamp() - l.heartbeat_at)::double precision
    FROM marathon_lock AS l
    WHERE l.name = lock_name;
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS marathon_acquire(text, text, text)"


class Migration(migrations.Migration):
    dependencies = [
        ("marathon", "0002_heartbeat"),
    ]

    operations = [
        # SQL, not RunPython, so that sqlmigrate shows it for review.
        RunSQLOn(
            "postgresql",
            [CREATE],
            [DROP],
            description="Create the function marathon_acquire(text, text, text)",
        ),
    ]
