from django.db import migrations, models

from marathon_migrations import RunSQLOn

# PostgreSQL functions for the three statements a holder sends. Each waits at
# most LOCK_TIMEOUT for another transaction's lock on a row (PostgreSQL would
# otherwise wait forever, for instance behind a Lock row that a transaction
# created through the ORM and has not committed). 0003's marathon_acquire
# with three arguments stays, for 1.0.0 processes during a rolling upgrade.
LOCK_TIMEOUT = "2s"

ACQUIRE = """
CREATE OR REPLACE FUNCTION marathon_acquire(
    lock_name text, lock_owner text, lock_token text, lock_stale_after double precision
)
RETURNS TABLE (
    acquired boolean, fence bigint, holder text, held_since timestamptz,
    heartbeat timestamptz, age double precision, holder_stale_after double precision
)
LANGUAGE plpgsql SET lock_timeout = '%(timeout)s' AS $$
BEGIN
    INSERT INTO marathon_lock AS l (name, locked_at, heartbeat_at, owner, token, stale_after)
    VALUES (lock_name, statement_timestamp(), statement_timestamp(), lock_owner, lock_token,
            lock_stale_after)
    ON CONFLICT (name) DO NOTHING
    RETURNING l.id INTO fence;
    IF fence IS NOT NULL THEN
        acquired := true;
        RETURN NEXT;
        RETURN;
    END IF;
    -- A row with our token is ours: the reply to an earlier attempt was lost.
    RETURN QUERY
    SELECT l.token = lock_token, l.id, l.owner::text, l.locked_at, l.heartbeat_at,
           EXTRACT(EPOCH FROM statement_timestamp() - l.heartbeat_at)::double precision,
           l.stale_after
    FROM marathon_lock AS l
    WHERE l.name = lock_name;
END
$$
"""

RELEASE = """
CREATE OR REPLACE FUNCTION marathon_release(lock_id bigint, lock_token text)
RETURNS integer
LANGUAGE plpgsql SET lock_timeout = '%(timeout)s' AS $$
DECLARE
    deleted integer;
BEGIN
    DELETE FROM marathon_lock WHERE id = lock_id AND token = lock_token;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$
"""

BEAT = """
CREATE OR REPLACE FUNCTION marathon_beat(lock_ids bigint[], lock_tokens text[])
RETURNS SETOF bigint
LANGUAGE sql SET lock_timeout = '%(timeout)s' AS $$
    UPDATE marathon_lock AS l SET heartbeat_at = statement_timestamp()
    FROM unnest(lock_ids, lock_tokens) AS mine(id, token)
    WHERE l.id = mine.id AND l.token = mine.token
    RETURNING l.id
$$
"""

DROP = [
    "DROP FUNCTION IF EXISTS marathon_acquire(text, text, text, double precision)",
    "DROP FUNCTION IF EXISTS marathon_release(bigint, text)",
    "DROP FUNCTION IF EXISTS marathon_beat(bigint[], text[])",
]


class Migration(migrations.Migration):
    dependencies = [
        ("marathon", "0003_postgresql_acquire"),
    ]

    operations = [
        migrations.AddField(
            model_name="lock",
            name="stale_after",
            field=models.FloatField(blank=True, null=True),
        ),
        # SQL, not RunPython, so that sqlmigrate shows it for review.
        RunSQLOn(
            "postgresql",
            [sql % {"timeout": LOCK_TIMEOUT} for sql in (ACQUIRE, RELEASE, BEAT)],
            DROP,
            description="Create the functions marathon_acquire(), marathon_release() and marathon_beat()",
        ),
    ]
