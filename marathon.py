"""Run a task on one worker at a time, with your Django database as the lock.

Add ``"marathon"`` to ``INSTALLED_APPS`` and migrate, then::

    from marathon import Marathon, AlreadyRunning

    with Marathon("nightly-report"):      # raises AlreadyRunning if held elsewhere
        build_report()

    @Marathon("sync-stock", wait=30)      # each call takes the lock, waiting up to 30 s
    def sync_stock():
        ...

A lock is one row of the table ``marathon_lock``. While it is held, a thread
refreshes the row's heartbeat; a row whose heartbeat is older than
``stale_after`` belonged to a holder that died, and the next acquire takes it
over. All times come from the database's clock.
"""

# ---- Imports ----

import contextlib
import functools
import logging
import os
import queue
import secrets
import signal
import socket
import sys
import threading
import time
import types

import django
from django.apps import AppConfig, apps
from django.conf import settings
from django.core import checks
from django.core.management.base import CommandError, OutputWrapper
from django.db import InterfaceError, OperationalError, connections, models, router
from django.db.models.expressions import RawSQL
from django.dispatch import Signal
from django.utils.dateparse import parse_datetime

import marathon_migrations

# ---- Public names ----

__all__ = [
    "AlreadyRunning",
    "Lock",
    "LockLost",
    "Marathon",
    "MarathonError",
    "SingleRunnerCommand",
    "lock_acquired",
    "lock_lost",
    "lock_released",
]
__version__ = "1.0.0"

# ---- Defaults ----

_DEFAULTS = {
    "MARATHON_HEARTBEAT": 10,  # seconds between two heartbeats of a held lock
    "MARATHON_STALE_AFTER": 60,  # seconds without a heartbeat before a lock may be taken over
    "MARATHON_DATABASE": None,  # None: the router's write database for Lock
}
_MAX_NAME_LENGTH = 255
_POLL_INTERVALS = (0.05, 0.1, 0.2, 0.5, 1.0)  # seconds between attempts while waiting
_LINGER = 1.0  # seconds an idle heartbeat thread waits for the next lock before it ends

logger = logging.getLogger("marathon")

# Sent with name, owner and fence, so that projects can hook metrics or alerts.
lock_acquired = Signal()
lock_released = Signal()
lock_lost = Signal()

# ---- Exceptions ----


class MarathonError(Exception):
    """Base class of the errors this module raises."""


class AlreadyRunning(MarathonError):
    """The lock is held by someone else; ``owner`` is ``host:pid`` (or None if unknown)."""

    def __init__(self, name, owner=None, locked_at=None, heartbeat_at=None):
        super().__init__(name, owner, locked_at, heartbeat_at)
        self.name = name
        self.owner = owner
        self.locked_at = locked_at
        self.heartbeat_at = heartbeat_at

    def __str__(self):
        holder = self.owner or "an unknown holder"
        since = " since %s" % _format_time(self.locked_at) if self.locked_at else ""
        if self.heartbeat_at:
            beat = "last heartbeat %s" % _format_time(self.heartbeat_at)
        else:
            beat = "no heartbeat: a lock made by hand, released only by deleting its row"
        return "%r is already running: the lock is held by %s%s (%s)." % (
            self.name,
            holder,
            since,
            beat,
        )


class LockLost(MarathonError):
    """The lock was taken over or deleted while this process believed it held it."""

    def __init__(self, name, reason):
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self):
        return "Lost the lock %r: %s." % (self.name, self.reason)


# ---- Settings ----


def _setting(name):
    """Read a setting when it is used, so that override_settings works."""
    return getattr(settings, name, _DEFAULTS[name])


def _seconds_error(label, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return "%s must be a positive number of seconds; got %r." % (label, value)
    return None


def _timing_errors(heartbeat, stale_after, heartbeat_label, stale_label):
    """Every problem with a heartbeat/stale_after pair, as (check id, message)."""
    errors = []
    for check_id, label, value in (
        ("marathon.E001", heartbeat_label, heartbeat),
        ("marathon.E002", stale_label, stale_after),
    ):
        message = _seconds_error(label, value)
        if message:
            errors.append((check_id, message))
    if not errors and stale_after < 2 * heartbeat:
        errors.append(
            (
                "marathon.E003",
                "%s must be at least twice %s, so that one late heartbeat does not "
                "lose the lock; got %r and %r." % (stale_label, heartbeat_label, stale_after, heartbeat),
            )
        )
    return errors


def _check_name(name):
    """Raise ValueError for a name no database can store the same way; before any query."""
    if not isinstance(name, str):
        raise ValueError("A lock name must be a str; got %r." % (name,))
    if not name:
        raise ValueError("A lock name must not be empty.")
    if len(name) > _MAX_NAME_LENGTH:
        raise ValueError(
            "A lock name must be at most %d characters; got %d." % (_MAX_NAME_LENGTH, len(name))
        )
    if "\x00" in name:
        raise ValueError("A lock name must not contain NUL characters; got %r." % (name,))
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("A lock name must be valid Unicode (no lone surrogates); got %r." % (name,))


# ---- System checks ----


def _check_settings(app_configs=None, **kwargs):
    errors = [
        checks.Error(message, id=check_id)
        for check_id, message in _timing_errors(
            _setting("MARATHON_HEARTBEAT"),
            _setting("MARATHON_STALE_AFTER"),
            "MARATHON_HEARTBEAT",
            "MARATHON_STALE_AFTER",
        )
    ]
    database = _setting("MARATHON_DATABASE")
    if database is not None and database not in settings.DATABASES:
        errors.append(
            checks.Error(
                "MARATHON_DATABASE must be None or a key of DATABASES (%s); got %r."
                % (", ".join(sorted(settings.DATABASES)), database),
                id="marathon.E004",
            )
        )
    return errors


# ---- The model ----


def _model():
    """Define Lock once; Django allows model classes only after INSTALLED_APPS are imported."""
    model = globals().get("Lock")
    if model is not None:
        return model

    class Lock(models.Model):
        """A held lock: one row per name. 0.1's fields first; later ones come from 0002."""

        __qualname__ = "Lock"  # pickle finds it as marathon.Lock

        id = models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")
        name = models.CharField(max_length=_MAX_NAME_LENGTH, unique=True)
        locked_at = models.DateTimeField(auto_now_add=True)
        heartbeat_at = models.DateTimeField(null=True, blank=True)
        owner = models.CharField(max_length=255, blank=True, default="")
        token = models.CharField(max_length=64, blank=True, default="", editable=False)

        class Meta:
            app_label = "marathon"

        def __str__(self):
            return self.name

    globals()["Lock"] = Lock
    return Lock


# ---- The SQL ----
# Each operation is the fewest statements the database allows, written so that
# a holder only ever writes a row that carries its own token. Times are the
# database's: "now" and a heartbeat's age in seconds (NULL for a lock made by
# hand, which is never stale).

_NOW = {
    "postgresql": "statement_timestamp()",
    "sqlite": "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')",
    "mysql": "UTC_TIMESTAMP(6)",
}
_AGE = {  # seconds since {column}
    "postgresql": "EXTRACT(EPOCH FROM statement_timestamp() - {column})",
    "sqlite": "(julianday('now') - julianday({column})) * 86400.0",
    "mysql": "TIMESTAMPDIFF(MICROSECOND, {column}, UTC_TIMESTAMP(6)) / 1000000.0",
}
_COLUMNS = "(name, locked_at, heartbeat_at, owner, token) VALUES (%s, {now}, {now}, %s, %s)"
_HOLDER = "id, owner, locked_at, heartbeat_at, {age}"


def _sql(template, vendor):
    return template.format(now=_NOW[vendor], age=_AGE[vendor].format(column="heartbeat_at"))


# PostgreSQL: one call inserts, or else reports the holder (acquired, id, owner,
# locked_at, heartbeat_at, age): a function from migration 0003, whose plans
# PostgreSQL caches per session. No row comes back if the holder left meanwhile.
_ACQUIRE_POSTGRESQL = "SELECT * FROM marathon_acquire(%s, %s, %s)"
# SQLite 3.35+: on conflict the no-op update makes RETURNING give the holder's row.
_ACQUIRE_SQLITE = _sql(
    "INSERT INTO marathon_lock " + _COLUMNS + " ON CONFLICT (name) DO UPDATE SET name = excluded.name "
    "RETURNING token = %s, " + _HOLDER,
    "sqlite",
)
# MySQL/MariaDB, and older SQLite: insert if free; only if not, read the holder.
_INSERT_IF_FREE = {
    "mysql": _sql("INSERT IGNORE INTO marathon_lock " + _COLUMNS, "mysql"),
    "sqlite": _sql("INSERT OR IGNORE INTO marathon_lock " + _COLUMNS, "sqlite"),
}
_SELECT_HOLDER = {
    vendor: _sql("SELECT " + _HOLDER + " FROM marathon_lock WHERE name = %s", vendor)
    for vendor in _NOW
}
_SELECT_STALE = {
    vendor: _sql("SELECT name, id FROM marathon_lock WHERE {age} > %s ORDER BY name", vendor)
    for vendor in _NOW
}
# Takeover deletes the row we found stale only if it is still stale by the
# database's clock: a holder that beat meanwhile keeps its lock.
_DELETE_STALE = {
    vendor: _sql("DELETE FROM marathon_lock WHERE id = %s AND {age} > %s", vendor)
    for vendor in _NOW
}
_RELEASE = "DELETE FROM marathon_lock WHERE id = %s AND token = %s"


def _beat_sql(vendor, count):
    """The heartbeat's UPDATE and its follow-up SELECT, for `count` locks."""
    marks = ", ".join(["%s"] * count)
    mine = "id IN (%s) AND token IN (%s)" % (marks, marks)
    update = "UPDATE marathon_lock SET heartbeat_at = %s WHERE %s" % (_NOW[vendor], mine)
    return update, "SELECT id FROM marathon_lock WHERE " + mine


def _attempt(cursor, vendor, name, owner, token):
    """Try once. Return (fence, None) if acquired, else (None, holder row or None)."""
    if vendor == "postgresql":
        cursor.execute(_ACQUIRE_POSTGRESQL, [name, owner, token])
        rows = cursor.fetchall()
        if rows and rows[0][0]:
            return rows[0][1], None
        return None, rows[0][1:] if rows else None
    if vendor == "sqlite" and cursor.db.Database.sqlite_version_info >= (3, 35):
        cursor.execute(_ACQUIRE_SQLITE, [name, owner, token, token])
        row = cursor.fetchall()[0]  # fetch all: SQLite commits when the statement ends
        return (row[1], None) if row[0] else (None, row[1:])
    cursor.execute(_INSERT_IF_FREE[vendor], [name, owner, token])
    if cursor.rowcount == 1:
        return cursor.lastrowid, None
    cursor.execute(_SELECT_HOLDER[vendor], [name])
    row = cursor.fetchone()
    return None, row


def _on_cursor(alias, operation, *args):
    """Run operation(cursor, *args) on a cursor whose statements commit at once.

    Outside a transaction that is Django's own connection for this thread. Inside
    one it is a connection of our own, closed again at once, so that a rollback
    undoes neither an acquire nor a release. A long task can outlive Django's
    connection (a server restart, an idle timeout): then the operation runs once
    more on a new one, so that a release is not lost to a dead session.
    """
    connection = connections[alias]
    if connection.in_atomic_block or not connection.get_autocommit():
        private = type(connection)(connection.settings_dict, alias)
        try:
            with private.cursor() as cursor:
                return operation(cursor, *args)
        finally:
            private.close()
    try:
        with connection.cursor() as cursor:
            return operation(cursor, *args)
    except (OperationalError, InterfaceError):
        if connection.is_usable():
            raise
        connection.close()
    with connection.cursor() as cursor:
        return operation(cursor, *args)


def _check_mysql_name(connection, name):
    """MySQL's utf8 (utf8mb3) connections cannot carry characters beyond U+FFFF."""
    charset = connection.settings_dict.get("OPTIONS", {}).get("charset", "utf8")
    if charset != "utf8mb4" and any(ord(char) > 0xFFFF for char in name):
        raise ValueError(
            "Lock name %r has characters beyond U+FFFF, which database %r cannot carry: "
            "set OPTIONS['charset'] = 'utf8mb4' for it." % (name, connection.alias)
        )


def _rowcount(cursor, sql, params):
    cursor.execute(sql, params)
    return cursor.rowcount


def _format_time(value):
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is None:
        return "an unknown time"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC" if value.utcoffset() is None else "%Y-%m-%d %H:%M:%S %Z")


_owners = {}  # pid -> owner: a forked child has its own


def _owner():
    """host:pid, for people."""
    pid = os.getpid()
    if pid not in _owners:
        _owners[pid] = ("%s:%d" % (socket.gethostname(), pid))[-255:]
    return _owners[pid]


# ---- The heartbeat ----


class _Hold:
    """One acquisition of a lock: what the heartbeat refreshes and reports on."""

    def __init__(self, marathon, alias, fence, token, owner, interval, stale_after):
        self.marathon = marathon
        self.alias = alias
        self.fence = fence
        self.token = token
        self.owner = owner
        self.interval = interval
        self.stale_after = stale_after
        self.acquired = self.confirmed = time.monotonic()
        self.released = self.lost = False  # each set once, under _Heartbeat._mutex
        self.reason = None

    def lose(self, reason):
        """Report the loss once: flag, log, signal, callback. Never raises."""
        with _Heartbeat._mutex:
            if self.released or self.lost:
                return
            self.reason = reason
            self.lost = True
        _Heartbeat.unregister(self)
        marathon = self.marathon
        logger.error("Lost the lock %r (fence %s, owner %s): %s.", marathon.name, self.fence, self.owner, reason)
        try:
            lock_lost.send(Marathon, name=marathon.name, owner=self.owner, fence=self.fence)
            if marathon.on_lost is not None:
                marathon.on_lost(marathon)
        except Exception:
            logger.exception("The lock_lost handler or on_lost callback of %r failed.", marathon.name)


class _Heartbeat(threading.Thread):
    """One thread per process and database: refreshes all the locks it holds there.

    Every due beat is one UPDATE for all of them, sent by its _Session. A lock
    whose row is gone is reported lost; a database that fails or does not
    answer is retried until a lock would have gone stale, then that lock is
    reported lost. With no lock left the thread lingers briefly for the next
    acquire, then ends, and so does its session.
    """

    _threads = {}  # alias -> _Heartbeat of this process
    _mutex = threading.Lock()

    def __init__(self, alias):
        super().__init__(name="marathon-heartbeat-%s" % alias, daemon=True)
        self.alias = alias
        self.pid = os.getpid()
        self.holds = {}  # token -> _Hold; guarded by _mutex
        self.due = float("inf")  # monotonic time of the next beat
        self.until = float("inf")  # when the thread's current sleep ends
        self.idle_since = None  # since when it has held no lock
        self.wake = threading.Event()
        self.session = None

    @classmethod
    def register(cls, hold):
        with cls._mutex:
            thread = cls._threads.get(hold.alias)
            start = thread is None or thread.pid != os.getpid()  # a forked child starts its own
            if start:
                thread = cls._threads[hold.alias] = cls(hold.alias)
            thread.holds[hold.token] = hold
            thread.idle_since = None
            thread.due = min(thread.due, hold.acquired + hold.interval)
            wake = thread.due < thread.until  # only if it would sleep through this beat
        if start:
            thread.start()
        elif wake:
            thread.wake.set()

    @classmethod
    def unregister(cls, hold, released=False):
        with cls._mutex:
            hold.released = hold.released or released
            thread = cls._threads.get(hold.alias)
            if thread is None or thread.holds.pop(hold.token, None) is None:
                return
            if not thread.holds:
                thread.idle_since = time.monotonic()
                if thread.until > thread.idle_since + _LINGER:
                    thread.wake.set()  # linger from now, not from the next beat

    def run(self):
        try:
            while self._wait():
                self._beat()
        finally:
            if self.session is not None:
                self.session.jobs.put(None)

    def _wait(self):
        """Sleep until the next beat is due; False once it has lingered with no lock."""
        while True:
            with self._mutex:
                now = time.monotonic()
                if self.holds:
                    if self.due <= now:
                        return True
                    self.until = self.due
                else:
                    self.idle_since = now if self.idle_since is None else self.idle_since
                    if now - self.idle_since >= _LINGER:
                        del self._threads[self.alias]
                        return False
                    self.due = float("inf")
                    self.until = self.idle_since + _LINGER
            self.wake.wait(self.until - now)  # state is read again after every wake
            self.wake.clear()

    def _beat(self):
        with self._mutex:
            holds = list(self.holds.values())
        started = time.monotonic()
        if self.session is None:
            self.session = _Session(self.alias)
            self.session.start()
        answer = queue.Queue()
        self.session.jobs.put((holds, answer))
        try:  # wait no longer than the first of these locks stays fresh
            alive, error = answer.get(timeout=max(min(h.confirmed + h.stale_after for h in holds) - started, 0.1))
        except queue.Empty:
            alive, error = None, "the database did not answer"
            self.session.jobs.put(None)  # it ends if its query ever returns
            self.session = None
        if error is not None:
            logger.warning("Heartbeat for %d lock(s) on %r failed: %s", len(holds), self.alias, error)
            now = time.monotonic()
            for hold in holds:
                if now - hold.confirmed > hold.stale_after:
                    hold.lose("the database could not be reached for %.1f s" % (now - hold.confirmed))
            retry = 4  # soon
        else:
            for hold in holds:
                if hold.fence in alive:
                    hold.confirmed = started
                else:
                    hold.lose("its row was deleted or taken over")
            retry = 1
            logger.debug("Heartbeat refreshed %d of %d lock(s) on %r.", len(alive), len(holds), self.alias)
        with self._mutex:  # locks taken during the beat count too
            intervals = [hold.interval for hold in self.holds.values()]
            self.due = started + min(intervals) / retry if intervals else float("inf")



class _Session(threading.Thread):
    """The heartbeat's database connection, in a thread of its own.

    A database that stops answering can block a query for as long as the
    socket stays open. The heartbeat must still report the loss in time, so it
    waits for its session only until a lock would go stale, and then leaves a
    stuck session behind (a daemon thread) and starts another.
    """

    def __init__(self, alias):
        super().__init__(name="marathon-session-%s" % alias, daemon=True)
        self.alias = alias
        self.jobs = queue.Queue()  # (holds, answer queue), or None to end

    def run(self):
        try:
            for holds, answer in iter(self.jobs.get, None):
                try:
                    answer.put((self._refresh(holds), None))
                except Exception as exc:  # the database's errors vary; the heartbeat retries them all
                    answer.put((None, exc))
        finally:
            connections[self.alias].close()

    def _refresh(self, holds):
        """One UPDATE for every lock; a SELECT only if some row is gone. Reconnects once."""
        connection = connections[self.alias]
        update, select = _beat_sql(connection.vendor, len(holds))
        params = [hold.fence for hold in holds] + [hold.token for hold in holds]
        for attempt in (1, 2):
            try:
                with connection.cursor() as cursor:
                    cursor.execute(update, params)
                    if cursor.rowcount == len(holds):
                        return {hold.fence for hold in holds}
                    cursor.execute(select, params)
                    return {row[0] for row in cursor.fetchall()}
            except Exception:
                with contextlib.suppress(Exception):
                    connection.close()  # a dropped session: the next cursor reconnects
                if attempt == 2:
                    raise


# ---- Marathon ----


class Marathon:
    """A lock named `name` in the database; a context manager and a decorator.

    ``wait``: seconds to keep trying before giving up (0: give up at once).
    ``heartbeat``/``stale_after``: seconds; None reads MARATHON_HEARTBEAT and
    MARATHON_STALE_AFTER. ``using``: the database alias; None reads
    MARATHON_DATABASE, else the router's write database for Lock. ``on_lost``:
    called with this Marathon, from the heartbeat thread, if the lock is lost.
    """

    def __init__(self, name, *, wait=0, heartbeat=None, stale_after=None, using=None, on_lost=None):
        _check_name(name)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
            raise ValueError("wait must be a number of seconds >= 0; got %r." % (wait,))
        for label, value in (("heartbeat", heartbeat), ("stale_after", stale_after)):
            if value is not None and _seconds_error(label, value):
                raise ValueError(_seconds_error(label, value))
        if heartbeat is not None and stale_after is not None:
            self._timing(heartbeat, stale_after)
        if on_lost is not None and not callable(on_lost):
            raise ValueError("on_lost must be callable; got %r." % (on_lost,))
        self.name = name
        self.wait = wait
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.using = using
        self.on_lost = on_lost
        self._hold = None
        self._holder = None

    def __repr__(self):
        return "<Marathon %r %s>" % (self.name, "held" if self.held else "not held")

    @staticmethod
    def _timing(heartbeat, stale_after):
        errors = _timing_errors(heartbeat, stale_after, "heartbeat", "stale_after")
        if errors:
            raise ValueError(errors[0][1])
        return heartbeat, stale_after

    # -- state --

    @property
    def held(self):
        """True from a successful acquire until release, or until the lock is lost."""
        hold = self._hold
        return hold is not None and not hold.released and not hold.lost

    @property
    def lost(self):
        """True once the heartbeat found this holder's row deleted or taken over."""
        return self._hold is not None and self._hold.lost

    @property
    def fence(self):
        """A number larger than every fence handed out before by this database."""
        return self._hold.fence if self._hold is not None else None

    @property
    def owner(self):
        return self._hold.owner if self._hold is not None else None

    def check(self):
        """Raise LockLost if the lock was lost; a cheap call for long loops."""
        if self.lost:
            raise LockLost(self.name, self._hold.reason)

    # -- acquire and release --

    def acquire(self, wait=None):
        """Take the lock; True if taken, False if another holder kept it for `wait` seconds."""
        if self.held:
            raise MarathonError("%r is already held by this Marathon object; use one per holder." % self)
        heartbeat, stale_after = self._timing(
            _setting("MARATHON_HEARTBEAT") if self.heartbeat is None else self.heartbeat,
            _setting("MARATHON_STALE_AFTER") if self.stale_after is None else self.stale_after,
        )
        alias = self.using or _setting("MARATHON_DATABASE") or router.db_for_write(_model())
        vendor = connections[alias].vendor
        if vendor not in _NOW:
            raise MarathonError("Marathon supports PostgreSQL, MySQL/MariaDB and SQLite, not %r." % vendor)
        if vendor == "mysql":
            _check_mysql_name(connections[alias], self.name)
        owner, token = _owner(), secrets.token_hex(16)
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        for pause in _pauses():
            fence = self._try(alias, vendor, owner, token, stale_after)
            if fence is not None:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _sleep(min(pause, remaining))
        self._hold = hold = _Hold(self, alias, fence, token, owner, heartbeat, stale_after)
        _Heartbeat.register(hold)
        logger.info("Acquired the lock %r (fence %s, owner %s).", self.name, fence, owner)
        lock_acquired.send(Marathon, name=self.name, owner=owner, fence=fence)
        return True

    def _try(self, alias, vendor, owner, token, stale_after):
        """One round: insert, or take over a stale holder and insert. Returns the fence or None."""
        try:
            return _on_cursor(alias, self._attempts, vendor, owner, token, stale_after)
        except OperationalError as exc:
            if vendor != "sqlite" or "locked" not in str(exc):
                raise
            # SQLite has one writer at a time; its busy timeout ran out. Like a
            # held lock, that is retried until `wait` runs out.
            self._holder = None
            return None

    def _attempts(self, cursor, vendor, owner, token, stale_after):
        for _ in range(3):  # a holder that leaves, or a takeover, earns another attempt
            fence, holder = _attempt(cursor, vendor, self.name, owner, token)
            self._holder = holder
            if fence is not None:
                return fence
            if holder is None:
                continue  # the holder left between our statements
            stale_id, stale_owner, _, _, age = holder
            if age is None or age <= stale_after:
                return None
            if _rowcount(cursor, _DELETE_STALE[vendor], [stale_id, stale_after]) == 1:
                logger.warning(
                    "Took over the stale lock %r from %s: its last heartbeat was %.1f s ago (stale after %s s).",
                    self.name,
                    stale_owner,
                    age,
                    stale_after,
                )
        return None

    def release(self):
        """Delete this holder's row. True if it was still ours, False if the lock had been lost."""
        hold = self._hold
        if hold is None or hold.released:
            return False
        _Heartbeat.unregister(hold, released=True)
        if hold.lost:
            return False  # its row is another holder's now, or ours but stale: not ours to touch
        removed = _on_cursor(hold.alias, _rowcount, _RELEASE, [hold.fence, hold.token]) == 1
        if removed:
            logger.info(
                "Released the lock %r (fence %s, owner %s) after %.3f s.",
                self.name,
                hold.fence,
                hold.owner,
                time.monotonic() - hold.acquired,
            )
            lock_released.send(Marathon, name=self.name, owner=hold.owner, fence=hold.fence)
        else:
            hold.reason = "its row was deleted or taken over before the release"
        return removed

    def _already_running(self):
        holder = self._holder
        if holder is None:
            return AlreadyRunning(self.name)
        return AlreadyRunning(self.name, holder[1], holder[2], holder[3])

    # -- context manager and decorator --

    def __enter__(self):
        if not self.acquire():
            raise self._already_running()
        return self

    def __exit__(self, exc_type, exc, traceback):
        if not self.release() and exc_type is None:
            raise LockLost(self.name, self._hold.reason)

    def __call__(self, func):
        """Decorate `func`: every call holds the lock; a fresh Marathon per call, so threads may share it."""

        @functools.wraps(func)
        def run_alone(*args, **kwargs):
            with Marathon(
                self.name,
                wait=self.wait,
                heartbeat=self.heartbeat,
                stale_after=self.stale_after,
                using=self.using,
                on_lost=self.on_lost,
            ):
                return func(*args, **kwargs)

        return run_alone


def _pauses():
    """Pauses between attempts: quick at first, then at most a second, with jitter."""
    for pause in _POLL_INTERVALS:
        yield pause
    while True:
        yield _POLL_INTERVALS[-1] * (0.5 + secrets.randbelow(1000) / 1000)


# Event.wait, not time.sleep: it keeps working under libfaketime on Python 3.11+.
_sleep = threading.Event().wait


# ---- SingleRunnerCommand ----


class SingleRunnerCommand:
    """Mix into a management command: its execution holds a lock, so runs never overlap.

    The lock is named `lock_name`, else the command's name; override
    get_lock_name() for a lock per argument. A run that finds the lock held
    writes who holds it to stderr and exits with `lock_held_exit_code`.
    """

    lock_name = None
    lock_wait = 0
    lock_held_exit_code = 0

    def get_lock_name(self, *args, **options):
        return self.lock_name or self.__module__.rpartition(".")[2]

    def execute(self, *args, **options):
        lock = Marathon(self.get_lock_name(*args, **options), wait=self.lock_wait)
        if not lock.acquire():
            message = "%s Skipped this run." % lock._already_running()
            if self.lock_held_exit_code:
                raise CommandError(message, returncode=self.lock_held_exit_code)
            if options.get("stderr"):  # as BaseCommand.execute() would have set it
                self.stderr = OutputWrapper(options["stderr"])
            self.stderr.write(message)
            return None
        try:
            with _exit_on_signals():
                result = super().execute(*args, **options)
        except BaseException:
            lock.__exit__(*sys.exc_info())  # releases; the exception goes on
            raise
        lock.__exit__(None, None, None)  # releases, or raises LockLost
        return result

    def handle(self, *args, **options):
        """0.1's style: commands that define run_task() instead of handle()."""
        return self.run_task(*args, **options)

    def run_task(self, *args, **options):
        raise NotImplementedError("Define handle() (or run_task()) in %s." % type(self).__name__)


@contextlib.contextmanager
def _exit_on_signals():
    """Turn SIGTERM and SIGINT into SystemExit(128 + signal), so the lock is released on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return

    def exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = {signum: signal.signal(signum, exit) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class SingleRunner:
    """0.1's mixin, kept for its users: a lock made by hand with get_or_create, no heartbeat."""

    lock_name = None

    def is_locked(self):
        """Take the lock if free and return False; return True if someone holds it."""
        if not self.lock_name:
            raise NotImplementedError("lock_name must be set")
        _, created = _model().objects.get_or_create(name=self.lock_name)
        return not created

    def release_lock(self):
        _model().objects.filter(name=self.lock_name).delete()


# ---- Operating: states, the admin and the shell tool ----


def _with_state(queryset, vendor):
    """Annotate each lock with its heartbeat's and its own age in seconds, by the database's clock."""
    return queryset.annotate(
        heartbeat_age=RawSQL(_AGE[vendor].format(column="heartbeat_at"), []),
        held_for=RawSQL(_AGE[vendor].format(column="locked_at"), []),
    )


def _state(lock, stale_after):
    if lock.heartbeat_age is None:
        return "manual"
    return "stale" if lock.heartbeat_age > stale_after else "running"


def _release_stale(cursor, stale_after):
    """Delete every stale lock, each only if it is still stale. Returns their names."""
    cursor.execute(_SELECT_STALE[cursor.db.vendor], [stale_after])
    return [
        name
        for name, stale_id in cursor.fetchall()
        if _rowcount(cursor, _DELETE_STALE[cursor.db.vendor], [stale_id, stale_after]) == 1
    ]


def _register_admin(site):
    from django.contrib import admin

    class StateFilter(admin.SimpleListFilter):
        title = "state"
        parameter_name = "state"

        def lookups(self, request, model_admin):
            return [("running", "running"), ("stale", "stale"), ("manual", "manual (no heartbeat)")]

        def queryset(self, request, queryset):
            stale_after = _setting("MARATHON_STALE_AFTER")
            return {
                "running": lambda: queryset.filter(heartbeat_age__lte=stale_after),
                "stale": lambda: queryset.filter(heartbeat_age__gt=stale_after),
                "manual": lambda: queryset.filter(heartbeat_at__isnull=True),
            }.get(self.value(), lambda: queryset)()

    class LockAdmin(admin.ModelAdmin):
        list_display = ("name", "state", "owner", "locked_at", "heartbeat_at")
        list_filter = (StateFilter,)
        search_fields = ("name", "owner")
        readonly_fields = ("locked_at", "heartbeat_at", "owner")
        actions = ["release_locks"]

        def get_queryset(self, request):
            queryset = super().get_queryset(request)
            return _with_state(queryset, connections[queryset.db].vendor)

        def state(self, lock):
            return _state(lock, _setting("MARATHON_STALE_AFTER"))

        def release_locks(self, request, queryset):
            names = sorted(lock.name for lock in queryset)
            queryset.delete()
            logger.warning("%s released the lock(s) %s in the admin.", request.user, ", ".join(map(repr, names)))
            self.message_user(request, "Released %d lock(s): %s." % (len(names), ", ".join(names)))

        release_locks.short_description = "Release selected locks"
        release_locks.allowed_permissions = ("delete",)

    site.register(_model(), LockAdmin)


_USAGE = """\
python -m marathon [--database ALIAS] list
python -m marathon [--database ALIAS] release NAME [NAME ...]
python -m marathon [--database ALIAS] release --stale

Lists the locks (name, state, owner, held for, last heartbeat) or releases
some. Needs DJANGO_SETTINGS_MODULE, as django-admin does. Exit status: 0 if
something was listed or released, 1 if nothing was, 2 on bad usage."""


def _main(argv):
    """The shell tool: list locks, release them by name or all stale ones."""
    args = list(argv)
    alias = None
    if args[:1] == ["--database"] and len(args) > 1:
        alias, args = args[1], args[2:]
    if not args or args[0] not in ("list", "release") or (args[0] == "release" and len(args) < 2):
        print(_USAGE, file=sys.stderr)
        return 2
    django.setup()
    alias = alias or _setting("MARATHON_DATABASE") or router.db_for_write(_model())
    stale_after = _setting("MARATHON_STALE_AFTER")
    if args[0] == "release":
        if args[1:] == ["--stale"]:
            names = _on_cursor(alias, _release_stale, stale_after)
        else:
            names = [name for name in args[1:] if _model().objects.using(alias).filter(name=name).delete()[0]]
        print("Released %d lock(s)%s" % (len(names), ": " + ", ".join(names) if names else "."))
        return 0 if names else 1
    locks = list(_with_state(_model().objects.using(alias).order_by("name"), connections[alias].vendor))
    rows = [("NAME", "STATE", "OWNER", "HELD FOR", "LAST HEARTBEAT")] + [
        (
            lock.name,
            _state(lock, stale_after),
            lock.owner or "-",
            "%.0f s" % lock.held_for,
            "-" if lock.heartbeat_age is None else "%.1f s ago" % lock.heartbeat_age,
        )
        for lock in locks
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0 if locks else 1


# ---- The app config ----


class MarathonConfig(AppConfig):
    name = "marathon"
    verbose_name = "Marathon Single Runner"
    default_auto_field = "django.db.models.BigAutoField"
    # A module has no folder of its own; this one holds no templates, fixtures
    # or commands, so Django finds none of those in site-packages.
    path = os.path.dirname(os.path.abspath(marathon_migrations.__file__))

    def import_models(self):
        _model()
        super().import_models()

    def ready(self):
        checks.register(_check_settings)
        if apps.is_installed("django.contrib.admin"):
            from django.contrib import admin

            _register_admin(admin.site)


# ---- Import-system glue ----
# Django expects an app to be a package with submodules; these lines let this
# one module be the app `marathon`. Each is pinned by a test in tests/test_app.py.


class _Module(types.ModuleType):
    def __getattr__(self, name):
        # `from marathon.models import Lock` in an app listed before marathon
        # runs before MarathonConfig.import_models(): build the model on demand.
        if name == "Lock":
            return _model()
        raise AttributeError("module %r has no attribute %r" % (self.__name__, name))


sys.modules[__name__].__class__ = _Module  # one mechanism on every Python (PEP 562 needs 3.7)
__path__ = []  # without it Django ignores MarathonConfig: it only looks for apps in packages
for _submodule in ("apps", "models", "commands", "mixins"):  # 0.1's import paths
    sys.modules["%s.%s" % (__name__, _submodule)] = sys.modules[__name__]
sys.modules[__name__ + ".migrations"] = marathon_migrations  # where Django looks for migrations
if django.VERSION < (3, 2):
    default_app_config = "marathon.MarathonConfig"  # 3.2+ finds it in marathon.apps, and warns
if __name__ == "__main__":  # python -m marathon: run the shell tool in the real module, not in __main__
    import marathon

    sys.exit(marathon._main(sys.argv[1:]))
