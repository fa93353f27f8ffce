"""Benchmark django-marathon against the bare database driver.

    python bench/run.py                     # SQLite (file), PostgreSQL, MariaDB
    MARATHON_BENCH_DBS=sqlite python bench/run.py

Servers and users as for the tests (MARATHON_PG_*, MARATHON_MYSQL_*). Each
database and driver (DRIVERS) runs in a child process that creates its own
database (marathon_bench_<pid>, or a SQLite file in a temporary directory),
migrates, measures and drops it. Django and the raw subject use the same
driver. Subjects are interleaved in rounds so that drift cancels; each figure
is the median of the rounds.
"""

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROUNDS = 7
SLOT = float(
    os.environ.get("MARATHON_BENCH_SLOT", "0.5")
)  # seconds per subject per round
COUNT_OPS = 20  # operations per statement count
HOLD = 3.0  # seconds the heartbeat is watched
TRIALS = 3  # SIGKILL takeovers
NOW = {
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
    "postgresql": "statement_timestamp()",
    "mysql": "UTC_TIMESTAMP(6)",
}


# Each database's drivers, measured one per child process (Django 4.2+ uses
# psycopg 3 whenever it can import it), and the label of each column.
DRIVERS = {
    "sqlite": ["sqlite3"],
    "postgres": ["psycopg2", "psycopg"],
    "mysql": ["pymysql", "mysqlclient"],
}
LABELS = {
    "sqlite3": "SQLite (file)",
    "psycopg2": "PostgreSQL, psycopg2",
    "psycopg": "PostgreSQL, psycopg 3",
    "pymysql": "MariaDB, PyMySQL",
    "mysqlclient": "MariaDB, mysqlclient",
}


# ---- The parent: one child per database and driver, then the table ----


def main():
    # "postgres" measures each of its drivers; "postgres:psycopg" just one.
    subjects = [
        (db, [driver] if driver else DRIVERS[db])
        for db, _, driver in (
            item.strip().partition(":")
            for item in os.environ.get(
                "MARATHON_BENCH_DBS", "sqlite,postgres,mysql"
            ).split(",")
            if item.strip()
        )
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for db, drivers in subjects:
            for driver in drivers:
                name = (
                    os.path.join(tmp, "bench.sqlite3")
                    if db == "sqlite"
                    else "marathon_bench_%d" % os.getpid()
                )
                print("Measuring %s ..." % LABELS[driver], file=sys.stderr, flush=True)
                output = subprocess.check_output(
                    [sys.executable, os.path.abspath(__file__), "--child"],
                    env=_env(db, name, driver),
                    universal_newlines=True,
                )
                results.append(json.loads(output.strip().splitlines()[-1]))
    print(_table(results))


def _env(db, name, driver):
    env = dict(
        os.environ,
        MARATHON_BENCH_DB=db,
        MARATHON_BENCH_NAME=name,
        MARATHON_BENCH_DRIVER=driver,
    )
    env["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    return env


def _cpu():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _table(results):
    import django

    labels = [r["label"] for r in results]
    rows = [("Acquire + release (median of %d rounds)" % ROUNDS, labels)]

    def add(title, values):
        rows.append((title, values))

    for cycles, regime in (
        ("cycles", "durable commits"),
        ("cycles_unflushed", "commits not flushed"),
    ):
        add("Cycles/s, %s:" % regime, ["" for r in results])
        for key, title in (
            ("raw", "  raw driver: INSERT + DELETE"),
            ("unprepared", "  raw driver, client-side binding (Django's default)"),
            ("django", "  Django cursor: INSERT + DELETE"),
            ("marathon", "  Marathon: with Marathon(name)"),
            ("prepared", "  Marathon, server-side binding, prepared"),
            ("seed", "  0.1 pattern: get_or_create + delete"),
        ):
            if not any(key in r[cycles] for r in results):
                continue
            add(
                title,
                [
                    "%.0f (%.0f%%)"
                    % (r[cycles][key], 100.0 * r[cycles][key] / r[cycles]["raw"])
                    if key in r[cycles]
                    else ""
                    for r in results
                ],
            )
    add(
        "Statements (server) per acquire",
        [_num(r["statements"]["acquire"]) for r in results],
    )
    add("... per failed attempt", [_num(r["statements"]["failed"]) for r in results])
    add("... per release", [_num(r["statements"]["release"]) for r in results])
    add("... per 0.1-pattern cycle", [_num(r["statements"]["seed"]) for r in results])
    add("... counted by", [r["counted_by"] for r in results])
    for count in ("1", "10", "100"):
        add(
            "Heartbeat, %s lock(s): statements/s, threads (heartbeat + session)"
            % count,
            [
                "%.1f/s (Django saw %.1f/s), %d"
                % (h["per_second"], h["wire_per_second"], h["threads"])
                for h in (r["heartbeat"][count] for r in results)
            ],
        )
    add(
        "SIGKILL to takeover, stale_after=2 (s)",
        [", ".join("%.1f" % t for t in r["takeover"]) for r in results],
    )
    add("Server", [r["server"] for r in results])
    head = "Machine: %s, %d cores; Python %s; Django %s." % (
        _cpu(),
        os.cpu_count() or 0,
        platform.python_version(),
        django.get_version(),
    )
    return (
        head + "\n\n" + _grid(rows) + "\nRatios are to the raw driver; heartbeat=0.5 s."
    )


def _num(value):
    return ("%.2f" % value).rstrip("0").rstrip(".")


def _grid(rows):
    """A reStructuredText grid table."""
    lines = [[title] + list(values) for title, values in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [rule]
    for n, line in enumerate(lines):
        out.append(
            "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |"
        )
        out.append(rule.replace("-", "=") if n == 0 else rule)
    return "\n".join(out) + "\n"


# ---- The child: one database ----


def child():
    db, name = os.environ["MARATHON_BENCH_DB"], os.environ["MARATHON_BENCH_NAME"]
    _create(db, name)
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        result = _measure_all(db)
        from django.db import connections

        connections.close_all()
    finally:
        _drop(db, name)
    print(json.dumps(result))


def _server_connection(db, name=None):
    """A bare connection of the measured driver, in autocommit, with its default
    cursor (to the server if name is None)."""
    driver = os.environ["MARATHON_BENCH_DRIVER"]
    if db == "sqlite":
        import sqlite3

        return sqlite3.connect(name, isolation_level=None)
    if db == "postgres":
        module = __import__(driver)  # psycopg2 or psycopg
        connection = module.connect(
            host=os.environ.get("MARATHON_PG_HOST", "127.0.0.1"),
            port=os.environ.get("MARATHON_PG_PORT", "5432"),
            user=os.environ.get("MARATHON_PG_USER", "postgres"),
            password=os.environ.get("MARATHON_PG_PASSWORD", ""),
            dbname=name or "postgres",
        )
        connection.autocommit = True
        return connection
    if driver == "mysqlclient":
        import MySQLdb as module
    else:
        import pymysql as module
    return module.connect(
        host=os.environ.get("MARATHON_MYSQL_HOST", "127.0.0.1"),
        port=int(os.environ.get("MARATHON_MYSQL_PORT", "3306")),
        user=os.environ.get("MARATHON_MYSQL_USER", "root"),
        password=os.environ.get("MARATHON_MYSQL_PASSWORD", ""),
        charset="utf8mb4",
        autocommit=True,
        **({"database": name} if name else {}),
    )


def _create(db, name):
    if db == "sqlite":
        return
    connection = _server_connection(db)
    with connection.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS %s" % name)
        cursor.execute(
            "CREATE DATABASE %s" % name
            + (" CHARACTER SET utf8mb4" if db == "mysql" else "")
        )
    connection.close()


def _drop(db, name):
    if db == "sqlite":
        return
    connection = _server_connection(db)
    with connection.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS %s" % name)
    connection.close()


def _measure_all(db):
    from django.db import connection

    from marathon import Marathon

    driver = os.environ["MARATHON_BENCH_DRIVER"]
    module = {"mysqlclient": "MySQLdb"}.get(driver, driver)
    assert connection.Database.__name__.split(".")[0] == module, (
        connection.Database,
        driver,
    )
    result = {"label": LABELS[driver]}
    result["server"] = _server_version(db)
    result["cycles"] = _cycles(db)
    with _unflushed_commits(db):
        result["cycles_unflushed"] = _cycles(db)
    counter = _Counter(db)
    result["counted_by"] = counter.method
    slow = {"heartbeat": 30, "stale_after": 60}

    locks = [Marathon("count-%d" % i, **slow) for i in range(COUNT_OPS)]
    acquire = counter.count(lambda: [lock.acquire() for lock in locks])
    release = counter.count(lambda: [lock.release() for lock in locks])
    holder = Marathon("count-held", **slow)
    holder.acquire()
    failed = counter.count(
        lambda: [Marathon("count-held", **slow).acquire() for _ in range(COUNT_OPS)]
    )
    holder.release()
    from marathon import Lock

    def seed():
        for _ in range(COUNT_OPS):
            Lock.objects.get_or_create(name="seed-count")
            Lock.objects.filter(name="seed-count").delete()

    seed_count = counter.count(seed)
    result["statements"] = {
        "acquire": acquire / COUNT_OPS,
        "release": release / COUNT_OPS,
        "failed": failed / COUNT_OPS,
        "seed": seed_count / COUNT_OPS,
    }
    result["heartbeat"] = {
        str(n): _heartbeat(counter, n, result["statements"]) for n in (1, 10, 100)
    }
    connection.close()
    result["takeover"] = [_takeover() for _ in range(TRIALS)]
    counter.close()
    return result


@contextlib.contextmanager
def _unflushed_commits(db):
    """Commits that do not wait for the disk, so that the cycles measure CPU, not fsync.

    PostgreSQL and SQLite set it per session, on the raw and on Django's
    connection. MariaDB has only a global setting: it is changed for the
    measurement and restored after.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        if db == "postgres":
            cursor.execute("SET synchronous_commit TO off")
            _SESSION_SETUP[:] = ["SET synchronous_commit TO off"]
        elif db == "sqlite":
            cursor.execute("PRAGMA synchronous = OFF")
            _SESSION_SETUP[:] = ["PRAGMA synchronous = OFF"]
        else:
            cursor.execute("SELECT @@GLOBAL.innodb_flush_log_at_trx_commit")
            previous = cursor.fetchone()[0]
            cursor.execute("SET GLOBAL innodb_flush_log_at_trx_commit = 0")
    try:
        yield
    finally:
        _SESSION_SETUP[:] = []
        with connection.cursor() as cursor:
            if db == "postgres":
                cursor.execute("SET synchronous_commit TO DEFAULT")
            elif db == "sqlite":
                cursor.execute("PRAGMA synchronous = FULL")
            else:
                cursor.execute(
                    "SET GLOBAL innodb_flush_log_at_trx_commit = %s", [previous]
                )


_SESSION_SETUP = []  # statements for the raw connection of the current measurement


def _server_version(db):
    from django.db import connection

    if db == "sqlite":
        import sqlite3

        return "SQLite %s" % sqlite3.sqlite_version
    with connection.cursor() as cursor:
        cursor.execute(
            "SHOW server_version" if db == "postgres" else "SELECT VERSION()"
        )
        version = cursor.fetchone()[0]
    return ("PostgreSQL %s" if db == "postgres" else "MariaDB %s") % version.split()[
        0
    ].split("-MariaDB")[0]


# ---- Cycles per second ----


def _cycles(db):
    from django.db import connection, connections

    from marathon import Lock, Marathon

    name = os.environ["MARATHON_BENCH_NAME"]
    raw = _server_connection(db, name)
    insert = "INSERT INTO marathon_lock (name, locked_at, heartbeat_at, owner, token) VALUES (%s, {0}, {0}, %s, %s)"
    delete = "DELETE FROM marathon_lock WHERE name = %s AND token = %s"
    now = NOW[connection.vendor]
    if db == "sqlite":  # sqlite3 takes ?, Django takes %s and %% for %
        raw_insert, raw_delete = (
            insert.replace("%s", "?").format(now),
            delete.replace("%s", "?"),
        )
        django_insert = insert.format(now.replace("%", "%%"))
    else:
        raw_insert = django_insert = insert.format(now)
        raw_delete = delete
    owner, token = "bench:%d" % os.getpid(), "0" * 32
    raw_cursor = raw.cursor()
    for statement in _SESSION_SETUP:
        raw_cursor.execute(statement)

    def raw_cycle():
        raw_cursor.execute(raw_insert, ("raw", owner, token))
        raw_cursor.execute(raw_delete, ("raw", token))

    def django_cycle():
        with connection.cursor() as cursor:
            cursor.execute(django_insert, ["django", owner, token])
            cursor.execute(delete, ["django", token])

    def marathon_cycle():
        with Marathon("marathon"):
            pass

    def seed_cycle():
        Lock.objects.get_or_create(name="seed")
        Lock.objects.filter(name="seed").delete()

    subjects = {"raw": raw_cycle}
    if os.environ["MARATHON_BENCH_DRIVER"] == "psycopg":
        # psycopg 3 binds parameters on the server and prepares a statement once
        # it has run five times; Django binds on the client and prepares
        # nothing (safe behind PgBouncer), as marathon does through it.
        import psycopg

        client_cursor = psycopg.ClientCursor(raw)

        def unprepared_cycle():
            client_cursor.execute(raw_insert, ("unprepared", owner, token))
            client_cursor.execute(raw_delete, ("unprepared", token))

        subjects["unprepared"] = unprepared_cycle
    subjects.update(
        {
            "django": django_cycle,
            "marathon": marathon_cycle,
            "seed": seed_cycle,
        }
    )
    if "prepared" in connections:  # psycopg 3 (bench/settings.py)
        prepared = connections["prepared"]
        with prepared.cursor() as cursor:  # kept open, as Django's connection is
            for statement in _SESSION_SETUP:
                cursor.execute(statement)

        def prepared_cycle():
            with Marathon("prepared", using="prepared"):
                pass

        subjects["prepared"] = prepared_cycle
    for cycle in subjects.values():  # warm up, and prove each works
        for _ in range(20):
            cycle()
    rates = {key: [] for key in subjects}
    keys = list(subjects)
    for round_ in range(ROUNDS):
        for key in (
            keys[round_ % len(keys) :] + keys[: round_ % len(keys)]
        ):  # rotate the order
            cycle, n = subjects[key], 0
            started = time.perf_counter()
            deadline = started + SLOT
            while True:
                cycle()
                n += 1
                if n % 10 == 0 and time.perf_counter() >= deadline:
                    break
            rates[key].append(n / (time.perf_counter() - started))
    raw_cursor.close()
    raw.close()
    if "prepared" in connections:
        connections["prepared"].close()
    return {key: statistics.median(values) for key, values in rates.items()}


# ---- Counting statements on the server ----


class _Counter:
    """Counts what the server receives from this process's connections.

    SQLite: sqlite3's trace callback. PostgreSQL: pg_stat_database.xact_commit
    of the bench database (in autocommit one statement is one transaction),
    flushed with pg_stat_force_next_flush(). MariaDB: the general log, written
    to a table only while counting, filtered by connection id.
    """

    def __init__(self, db):
        from django.db import connection
        from django.db.backends.signals import connection_created

        self.db = db
        self.traced = []
        self.heartbeat_ids = []
        self.wire = []  # heartbeat statements seen by Django, to compare
        self.heartbeat_traced = []
        connection.ensure_connection()
        if db == "sqlite":
            self.method = "trace callback"
            connection.connection.set_trace_callback(
                lambda sql: self.traced.append(sql)
            )  # Python 3.6 needs a hashable callback
        elif db == "postgres":
            self.method = "xact_commit"
            self.stats = _server_connection(db)
        else:
            self.method = "general log"
            self.admin = _server_connection(db)
        connection_created.connect(self._on_connect, weak=False)

    def _on_connect(self, sender, connection, **kwargs):
        if not threading.current_thread().name.startswith("marathon-session"):
            return  # the heartbeat's statements go through its session thread
        raw = connection.connection
        connection.execute_wrappers.append(self._wire)
        if self.db == "sqlite":
            raw.set_trace_callback(lambda sql: self.heartbeat_traced.append(sql))
        elif self.db == "postgres":
            self.heartbeat_ids.append(
                raw.get_backend_pid()
                if hasattr(raw, "get_backend_pid")
                else raw.info.backend_pid
            )  # psycopg2, psycopg 3
        else:
            self.heartbeat_ids.append(raw.thread_id())

    def _wire(self, execute, sql, params, many, context):
        self.wire.append(sql)
        return execute(sql, params, many, context)

    def _pg_commits(self, flush=True):
        from django.db import connection

        if flush:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_stat_force_next_flush()")
        with self.stats.cursor() as cursor:
            cursor.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                [connection.settings_dict["NAME"]],
            )
            return cursor.fetchone()[0]

    def _pg_wait_gone(self):
        deadline = time.monotonic() + 10
        with self.stats.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                    [self.heartbeat_ids],
                )
                if not cursor.fetchone()[0]:
                    break
                time.sleep(0.05)
        time.sleep(0.2)  # the session's last statistics are flushed as it exits

    def count(self, operation, heartbeat=False):
        """Statements the server received while `operation` ran.

        With heartbeat=True: only the heartbeat thread's, once it has ended
        (the main connection's are subtracted on PostgreSQL, where the
        statistics are per database).
        """
        from django.db import connection

        if self.db == "sqlite":
            del self.traced[:], self.heartbeat_traced[:]
            operation()
            if heartbeat:
                _wait_heartbeat_threads_gone()
                return len(self.heartbeat_traced)
            return len(self.traced)
        if self.db == "postgres":
            before = self._pg_commits()
            operation()
            if heartbeat:
                _wait_heartbeat_threads_gone()
                if self.heartbeat_ids:
                    self._pg_wait_gone()
            return self._pg_commits() - before - 1  # the second flush is one more
        with connection.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            main_id = cursor.fetchone()[0]
        with self.admin.cursor() as cursor:
            cursor.execute("SELECT @@global.general_log, @@global.log_output, NOW(6)")
            general_log, log_output, since = cursor.fetchone()
            cursor.execute("SET GLOBAL log_output = 'TABLE'")
            cursor.execute("SET GLOBAL general_log = 1")
            try:
                operation()
                if heartbeat:
                    _wait_heartbeat_threads_gone()
            finally:
                cursor.execute("SET GLOBAL general_log = %s", [general_log])
                cursor.execute("SET GLOBAL log_output = %s", [log_output])
            cursor.execute(
                "SELECT thread_id, argument FROM mysql.general_log"
                " WHERE event_time >= %s AND command_type IN ('Query', 'Execute')",
                [since],
            )
            logged = cursor.fetchall()
        if not heartbeat:
            return len([1 for thread_id, sql in logged if thread_id == main_id])
        # The heartbeat connection's set-up (SET NAMES ...) is not the heartbeat.
        return len(
            [
                1
                for thread_id, sql in logged
                if thread_id in self.heartbeat_ids and b"marathon_lock" in _bytes(sql)
            ]
        )

    def close(self):
        from django.db.backends.signals import connection_created

        connection_created.disconnect(self._on_connect)
        if self.db == "postgres":
            self.stats.close()
        elif self.db == "mysql":
            self.admin.close()


def _bytes(value):
    return value.encode() if isinstance(value, str) else bytes(value)


def _heartbeat_threads():
    """The heartbeat thread and its session thread."""
    return [t for t in threading.enumerate() if t.name.startswith("marathon-")]


def _wait_heartbeat_threads_gone():
    for thread in _heartbeat_threads():
        thread.join(10)


def _heartbeat(counter, count, statements):
    """Statements per second of the heartbeat while holding `count` locks; and its threads."""
    from marathon import Marathon

    _wait_heartbeat_threads_gone()
    del counter.heartbeat_ids[:]
    locks = [
        Marathon("beat-%d" % i, heartbeat=0.5, stale_after=5) for i in range(count)
    ]
    threads = []

    span = []

    def hold():
        started = time.monotonic()
        for lock in locks:
            lock.acquire()
        held = time.monotonic()
        while time.monotonic() - held < HOLD:
            threads.append(len(_heartbeat_threads()))
            time.sleep(0.1)
        for lock in locks:
            lock.release()
        span.append(time.monotonic() - started)

    del counter.wire[:]
    total = counter.count(hold, heartbeat=True)
    if counter.db == "postgres":  # the main connection's acquires and releases
        total -= count * (statements["acquire"] + statements["release"])
    # The thread beats from the first acquire to the last release.
    return {
        "per_second": total / span[0],
        "wire_per_second": len(counter.wire) / span[0],
        "threads": max(threads),
    }


# ---- Takeover after SIGKILL ----

_HOLDER = """
import sys, threading, django
django.setup()
from marathon import Marathon
lock = Marathon("victim", heartbeat=0.5, stale_after=2)
assert lock.acquire()
print("held", flush=True)
threading.Event().wait()
"""


def _takeover():
    from marathon import Marathon

    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER],
        stdout=subprocess.PIPE,
        env=_env(
            os.environ["MARATHON_BENCH_DB"],
            os.environ["MARATHON_BENCH_NAME"],
            os.environ["MARATHON_BENCH_DRIVER"],
        ),
        universal_newlines=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(0.6)  # let it beat at least once
        killed = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        lock = Marathon("victim", heartbeat=0.5, stale_after=2, wait=30)
        assert lock.acquire()
        taken = time.monotonic() - killed
        lock.release()
        return taken
    finally:
        holder.kill()
        holder.wait()


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        main()
