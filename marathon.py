"""Run a task on one worker at a time, with your Django database as the lock.

Add ``"marathon"`` to ``INSTALLED_APPS`` and migrate, then::

    from marathon import Marathon, AlreadyRunning

    with Marathon("nightly-report"):      # raises AlreadyRunning if held elsewhere
        build_report()

    @Marathon("sync-stock", wait=30)      # each call takes the lock, waiting up to 30 s
    def sync_stock():
        ...

A lock is one row of the table ``marathon_lock``. While it is held, a thread
refreshes the row's heartbeat; a row whose heartbeat is older than the
``stale_after`` its holder stored in it belonged to a holder that died, and the
next acquire takes it over. All times come from the database's clock.

The sections, in the order they read:

- Defaults; exceptions, and the times they show; settings; lock names, and
  the templates a decorator fills from each call; system checks.
- The model: ``Lock``, one row per held lock, and ``LastRun``, the last run
  of each lock that has a ``min_interval``.
- The SQL: each lock operation as the fewest statements each database allows.
- Connections: which connection runs a lock statement (Django's, one of our
  own inside the caller's transaction, or the test's inside a TestCase), and a
  release deferred to the end of the caller's transaction.
- Test seams: named points where a test can stop a thread.
- Holds and the registry: one acquisition's state, and the one mutex that
  guards every hold of the process; reset in a forked child.
- The heartbeat: a thread per database that refreshes every hold, its session
  thread that owns the connection, and the reporter that runs logs, signals
  and callbacks off the heartbeat's schedule.
- ``Marathon``: acquire and release, sync and async; the context managers; the
  decorator.
- ``SingleRunnerCommand`` and the skip of a refused run (``lock_skipped``),
  and 0.1's ``SingleRunner``.
- The supervisor: ``python -m marathon run NAME -- CMD``.
- Operating: states, the admin and ``python -m marathon list|release``.
- The app config, then the import-system glue that makes this module the app.
"""

# ---- Imports ----

import asyncio
import atexit
import collections
import contextlib
import datetime
import functools
import gc
import inspect
import itertools
import logging
import os
import queue
import re
import secrets
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import types
import weakref
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Type,
    TypeVar,
    cast,
)

import django
from asgiref.sync import sync_to_async
from django.apps import AppConfig
from django.apps import apps as _apps  # private: `marathon.apps` is this module
from django.conf import settings
from django.core import checks
from django.core.management.base import CommandError, OutputWrapper
from django.db import (
    Error,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.db import models as _models  # private: `marathon.models` is this module
from django.db.models import Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.dispatch import Signal
from django.utils.dateparse import parse_datetime

import marathon_migrations

# Types of the public surface: these annotations run on Python 3.6, so every
# name that is newer than 3.6's `typing` exists for type checkers only, and the
# annotations that use one are strings. marathon-stubs/__init__.pyi repeats
# them for users' type checkers (see the section "Types" of README.rst).
if TYPE_CHECKING:
    from typing_extensions import Literal, ParamSpec

    _P = ParamSpec("_P")
    _OnHeld = Literal["raise", "skip"]
_R = TypeVar("_R")
_MarathonT = TypeVar("_MarathonT", bound="Marathon")

# ---- Public names ----

__all__ = [
    "AlreadyRunning",
    "LastRun",  # noqa: F822 - built on first access, see the glue at the end
    "Lock",  # noqa: F822 - likewise
    "LockLost",
    "Marathon",
    "MarathonError",
    "RanRecently",
    "SingleRunnerCommand",
    "lock_acquired",
    "lock_lost",
    "lock_released",
    "lock_skipped",
]
__version__ = "1.1.0.dev0"

# ---- Defaults ----

_DEFAULTS = {
    "MARATHON_HEARTBEAT": 10,  # seconds between two heartbeats of a held lock
    "MARATHON_STALE_AFTER": 60,  # seconds without a heartbeat before a lock may be taken over
    "MARATHON_DATABASE": None,  # None: the router's write database for Lock
}
_MAX_NAME_LENGTH = 255
_POLL_INTERVALS = (0.05, 0.1, 0.2, 0.5, 1.0)  # seconds between attempts while waiting
_LINGER = 1.0  # seconds an idle heartbeat or reporter thread waits for more work before it ends
_BEAT_CHUNK = 400  # locks per heartbeat UPDATE: two parameters each, below SQLite's old limit of 999
_FORK_WAIT = 10.0  # seconds a fork waits for marathon's SQLite statements in flight
_DEADLOCK_ATTEMPTS = 10  # times a lock statement is sent when InnoDB reports a deadlock
_SLICE = 0.05  # seconds between two looks at the deadlines while a heartbeat waits for its answer

logger = logging.getLogger("marathon")

# Sent so that projects can hook metrics or alerts, each with keyword arguments
# name (str), owner (str or None) and fence (int or None); the sender is
# Marathon, or for lock_skipped the command's class.
lock_acquired = Signal()  # also took_over (bool): the previous holder had died
lock_released = Signal()
lock_lost = Signal()  # sent from the reporter thread
# A refused run that skips quietly; also with reason, "held" or "ran recently".
lock_skipped = Signal()

# ---- Exceptions ----


class MarathonError(Exception):
    """Base class of the errors this module raises."""


class AlreadyRunning(MarathonError):
    """The lock is held by someone else; ``owner`` is ``host:pid`` (or None if unknown).

    ``locked_at`` and ``heartbeat_at`` are aware UTC datetimes by the
    database's clock, or None; the message shows them in the current time zone.
    """

    def __init__(
        self,
        name: str,
        owner: Optional[str] = None,
        locked_at: Optional[datetime.datetime] = None,
        heartbeat_at: Optional[datetime.datetime] = None,
    ) -> None:
        super().__init__(name, owner, locked_at, heartbeat_at)
        self.name = name
        self.owner = owner
        self.locked_at = locked_at
        self.heartbeat_at = heartbeat_at

    def __str__(self) -> str:
        holder = self.owner or "an unknown holder"
        if self.locked_at is None:  # the holder was gone before it could be read
            return "%r is already running: the lock is held by %s." % (
                self.name,
                holder,
            )
        if self.heartbeat_at:
            beat = "last heartbeat %s" % _for_people(self.heartbeat_at)
        else:
            beat = (
                "no heartbeat: a lock made by hand, released only by deleting its row"
            )
        return "%r is already running: the lock is held by %s since %s (%s)." % (
            self.name,
            holder,
            _for_people(self.locked_at),
            beat,
        )


class RanRecently(AlreadyRunning):
    """The lock's last successful run finished less than ``min_interval`` seconds ago.

    ``owner`` ran it; ``finished_at`` (an aware UTC datetime, by the database's
    clock) is when it finished; the next run may start ``min_interval`` seconds later.
    """

    def __init__(
        self,
        name: str,
        owner: Optional[str] = None,
        finished_at: Optional[datetime.datetime] = None,
        min_interval: Optional[float] = None,
    ) -> None:
        super().__init__(name, owner)
        self.args = (name, owner, finished_at, min_interval)
        self.finished_at = finished_at
        self.min_interval = min_interval

    def __str__(self) -> str:
        # Marathon always gives both; without them this fails, as it always has.
        next_start = self.finished_at + datetime.timedelta(seconds=self.min_interval)  # type: ignore[operator, arg-type]
        return (
            "%r ran recently: its last run, by %s, finished %s; the next may start %s (min_interval %s s)."
            % (
                self.name,
                self.owner or "an unknown holder",
                _for_people(self.finished_at),
                _for_people(next_start),
                self.min_interval,
            )
        )


class LockLost(MarathonError):
    """The lock was taken over or deleted while this process believed it held it."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return "Lost the lock %r: %s." % (self.name, self.reason)


# Times in the lock tables, as the exceptions and the tools show them.


def _aware(value, vendor, by_hand=False):
    """A time read from the lock tables, as an aware UTC datetime (None stays None).

    marathon writes the database's "now" in UTC. With USE_TZ = False Django
    hands over naive times: UTC as written on SQLite and MySQL, except those
    Django wrote itself in rows made by hand (local time), and local time on
    PostgreSQL, whose sessions Django then sets to TIME_ZONE.
    """
    from django.utils import timezone

    if isinstance(value, str):
        value = parse_datetime(value)
    if value is None:
        return None
    if timezone.is_naive(value):
        local = not settings.USE_TZ and (vendor == "postgresql" or by_hand)
        value = timezone.make_aware(
            value, timezone.get_default_timezone() if local else datetime.timezone.utc
        )
    return value.astimezone(datetime.timezone.utc)


def _for_people(value):
    """An aware datetime in the current time zone (TIME_ZONE unless activated), labelled."""
    from django.utils import timezone

    if value is None:
        return "an unknown time"
    value = timezone.localtime(value)
    return value.strftime("%Y-%m-%d %H:%M:%S ") + (
        value.tzname() or value.strftime("%z")
    )


# ---- Settings ----


def _setting(name):
    """Read a setting when it is used, so that override_settings works."""
    return getattr(settings, name, _DEFAULTS[name])


def _alias(using=None):
    """The database of the locks: `using`, else MARATHON_DATABASE, else the router's."""
    return using or _setting("MARATHON_DATABASE") or router.db_for_write(_model())


def _unsupported(connection):
    """What to say when the locks' database is of a vendor marathon has no SQL for."""
    return "Marathon supports PostgreSQL, MySQL/MariaDB and SQLite, not %r." % (
        connection.vendor
    )


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
                "lose the lock; got %r and %r."
                % (stale_label, heartbeat_label, stale_after, heartbeat),
            )
        )
    return errors


# ---- Lock names ----
# A name is stored exactly, code point by code point, on every database; the
# rules below are checked before any query, so a bad name never reaches one.


def _check_name(name):
    """Raise ValueError for a name no database can store the same way; before any query."""
    if not isinstance(name, str):
        raise ValueError("A lock name must be a str; got %r." % (name,))
    if not name:
        raise ValueError("A lock name must not be empty.")
    if len(name) > _MAX_NAME_LENGTH:
        raise ValueError(
            "A lock name must be at most %d characters; got %d."
            % (_MAX_NAME_LENGTH, len(name))
        )
    if "\x00" in name:
        raise ValueError(
            "A lock name must not contain NUL characters; got %r." % (name,)
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "A lock name must be valid Unicode (no lone surrogates); got %r." % (name,)
        ) from None


def _check_name_for(connection, name):
    """MySQL's utf8 (utf8mb3) connections cannot carry characters beyond U+FFFF."""
    if connection.vendor != "mysql" or all(ord(char) <= 0xFFFF for char in name):
        return
    charset = connection.get_connection_params().get(
        "charset", "utf8"
    )  # what Django connects with
    if charset != "utf8mb4":
        raise ValueError(
            "Lock name %r has characters beyond U+FFFF, which database %r cannot carry with "
            "charset %r: set OPTIONS['charset'] = 'utf8mb4' for it."
            % (name, connection.alias, charset)
        )


# A decorated function's lock name may be a template, filled from each
# call's arguments; the filled name obeys the rules above.


def _name_template(name, func):
    """A function of a call's (args, kwargs) that gives the lock's name for that call.

    A name without fields is the name. Fields name parameters of `func`, as
    str.format() fields (`{order.pk}`, `{items[0]}`); `{{` and `}}` are braces.
    """
    roots = _template_roots(name)
    if not roots:
        return lambda args, kwargs: name
    signature = inspect.signature(func)
    _check_roots(
        name, roots, signature.parameters, "%s() has no parameter" % func.__qualname__
    )

    def filled(args, kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return _filled(name, bound.arguments)

    return filled


def _template_roots(name):
    """The names that a lock name's fields start with: `shop` of `{shop.pk}`; none for a plain name."""
    try:
        fields = [
            field
            for _, field, _, _ in string.Formatter().parse(name)
            if field is not None
        ]
    except ValueError as exc:
        raise ValueError(
            "Lock name %r is not a valid template: %s." % (name, exc)
        ) from None
    return [re.match(r"[^.\[]*", field).group() for field in fields]


def _check_roots(name, roots, known, missing):
    for root in roots:
        if root not in known:
            raise ValueError(
                "Lock name %r has the field {%s}, but %s %r; there are: %s."
                % (name, root, missing, root, ", ".join(sorted(known)) or "none")
            )


def _filled(name: str, values: Dict[str, Any]) -> str:
    """The name with its fields filled; checked as every lock name is, before any query."""
    result = name.format(**values)
    _check_name(result)
    return result


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


class _LockManager(_models.Manager):
    """Lock.objects (and LastRun.objects) use MARATHON_DATABASE when it is set, so 0.1's
    get_or_create meets Marathon's rows."""

    def get_queryset(self):
        queryset = super().get_queryset()
        database = _setting("MARATHON_DATABASE")
        return queryset.using(database) if database else queryset


def _model():
    """Define Lock and LastRun once, and return Lock; Django allows model classes only after
    INSTALLED_APPS are imported."""
    model = globals().get("Lock")
    if model is not None:
        return model

    class Lock(_models.Model):
        """A held lock: one row per name. 0.1's fields first; later ones come from 0002 and 0004."""

        __qualname__ = "Lock"  # pickle finds it as marathon.Lock

        id = _models.BigAutoField(
            auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
        )
        name = _models.CharField(max_length=_MAX_NAME_LENGTH, unique=True)
        locked_at = _models.DateTimeField(auto_now_add=True)
        heartbeat_at = _models.DateTimeField(null=True, blank=True)
        owner = _models.CharField(max_length=255, blank=True, default="")
        token = _models.CharField(max_length=64, blank=True, default="", editable=False)
        # The holder's own stale_after: every takeover judges the row by it.
        # NULL for rows of 1.0.0 holders and rows made by hand.
        stale_after = _models.FloatField(null=True, blank=True)

        objects = _LockManager()

        class Meta:
            app_label = "marathon"

        def __str__(self):
            return self.name

        def save(self, *args, **kwargs):
            kwargs.setdefault("using", _setting("MARATHON_DATABASE"))
            return super().save(*args, **kwargs)

        def delete(self, *args, **kwargs):
            kwargs.setdefault("using", _setting("MARATHON_DATABASE"))
            return super().delete(*args, **kwargs)

    class LastRun(_models.Model):
        """The last run of each lock that has a min_interval: one row per name (migration 0005)."""

        __qualname__ = "LastRun"

        id = _models.BigAutoField(
            auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
        )
        OUTCOMES = [
            ("ok", "ok"),
            ("error", "error"),
            ("lost", "lost"),
            ("abandoned", "abandoned (taken over after its holder died)"),
        ]
        name = _models.CharField(max_length=_MAX_NAME_LENGTH, unique=True)
        started_at = _models.DateTimeField(null=True, blank=True)
        finished_at = _models.DateTimeField()
        owner = _models.CharField(max_length=255, blank=True, default="")
        fence = _models.BigIntegerField()
        outcome = _models.CharField(max_length=16, choices=OUTCOMES)
        duration = _models.FloatField(null=True, blank=True, help_text="seconds")

        objects = _LockManager()

        class Meta:
            app_label = "marathon"

        def __str__(self):
            return self.name

    globals()["Lock"] = Lock
    globals()["LastRun"] = LastRun
    return Lock


# ---- The SQL ----
# Each operation is the fewest statements the database allows, written so that
# a holder only ever writes a row that carries its own token. Times are the
# database's: "now" and a heartbeat's age in seconds (NULL for a lock made by
# hand, which is never stale). A row is stale when that age exceeds the
# stale_after its holder stored in it; rows of 1.0.0 holders store none, and
# are judged by the reader's.

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
_COLUMNS = "(name, locked_at, heartbeat_at, owner, token, stale_after) VALUES (%s, {now}, {now}, %s, %s, %s)"
_HOLDER_COLUMNS = "id, owner, locked_at, heartbeat_at, {age}, stale_after, token"
_STALE = "{age} > COALESCE(stale_after, %s)"

# What an attempt learns of the row that holds the name.
_Holder = collections.namedtuple(
    "_Holder", "id owner locked_at heartbeat_at age stale_after token"
)
# An attempt's outcome: the fence if taken, else the holder (None if it left
# meanwhile), or the error that another attempt may not meet (`failed`: a
# SQLite database too busy to answer, an answer that came too late), or the
# last run that finished too recently (a _LastRun). `took_over`: the stale
# holder this attempt deleted, if any.
_Outcome = collections.namedtuple("_Outcome", "fence holder failed last_run took_over")
_Outcome.__new__.__defaults__ = (None, None, None)
# A lock's last run as the min_interval check reads it; `age`: seconds since it finished.
_LastRun = collections.namedtuple("_LastRun", "outcome finished_at owner age")


def _sql(template, vendor):
    return template.format(
        now=_NOW[vendor], age=_AGE[vendor].format(column="heartbeat_at")
    )


# PostgreSQL: one call inserts, or else reports the holder; functions from
# migration 0004, whose plans PostgreSQL caches per session, and which wait at
# most 2 s for another transaction's row lock (SET lock_timeout).
_ACQUIRE_POSTGRESQL = "SELECT * FROM marathon_acquire(%s, %s, %s, %s::float8)"
_RELEASE_POSTGRESQL = "SELECT marathon_release(%s::bigint, %s)"
_BEAT_POSTGRESQL = "SELECT marathon_beat(%s::bigint[], %s::text[])"
# MySQL/MariaDB: insert if free; only if not, read the holder. SQLite reads
# first and inserts only if the name is free: any INSERT, even one that
# inserts nothing, waits for every reader to end, and a reader that then
# wants to write fails at once (SQLite's deadlock rule), so an attempt on a
# held lock must not write.
_INSERT_IF_FREE = {
    "mysql": _sql("INSERT IGNORE INTO marathon_lock " + _COLUMNS, "mysql"),
    "sqlite": _sql("INSERT OR IGNORE INTO marathon_lock " + _COLUMNS, "sqlite"),
}
_SELECT_HOLDER = {
    vendor: _sql(
        "SELECT " + _HOLDER_COLUMNS + " FROM marathon_lock WHERE name = %s", vendor
    )
    for vendor in _NOW
}
_SELECT_STALE = {
    vendor: _sql(
        "SELECT name, id FROM marathon_lock WHERE " + _STALE + " ORDER BY name", vendor
    )
    for vendor in _NOW
}
# Takeover deletes the row we found stale only if it is still stale by the
# database's clock and its holder's stale_after: a holder that beat meanwhile
# keeps its lock.
_DELETE_STALE = {
    vendor: _sql("DELETE FROM marathon_lock WHERE id = %s AND " + _STALE, vendor)
    for vendor in _NOW
}
_RELEASE = "DELETE FROM marathon_lock WHERE id = %s AND token = %s"

# A lock with a min_interval keeps its last run in marathon_lastrun: written
# before the lock's row is deleted, and only over the record of an older fence.
_RUN_COLUMNS = "(name, started_at, finished_at, owner, fence, outcome, duration)"
_RUN_UPSERT = dict.fromkeys(
    ("postgresql", "sqlite"),
    " ON CONFLICT (name) DO UPDATE SET started_at = excluded.started_at, "
    "finished_at = excluded.finished_at, owner = excluded.owner, fence = excluded.fence, "
    "outcome = excluded.outcome, duration = excluded.duration WHERE marathon_lastrun.fence <= excluded.fence",
)
_RUN_UPSERT["mysql"] = " ON DUPLICATE KEY UPDATE " + ", ".join(
    "marathon_lastrun.{0} = IF(marathon_lastrun.fence <= VALUES(fence), VALUES({0}), marathon_lastrun.{0})".format(
        column
    )
    for column in (
        "started_at",
        "finished_at",
        "owner",
        "outcome",
        "duration",
        "fence",
    )  # fence last
)


def _run_sql(select, vendor):
    return (
        "INSERT INTO marathon_lastrun "
        + _RUN_COLUMNS
        + " "
        + _sql(
            select.replace(
                "{locked_age}", "(%s)" % _AGE[vendor].format(column="locked_at")
            ),
            vendor,
        )
        + _RUN_UPSERT[vendor]
    )


# The run of the row's own holder, finished now (ok or error)...
_RECORD_OWN = {
    vendor: _run_sql(
        "SELECT name, locked_at, {now}, owner, id, %s, {locked_age} FROM marathon_lock WHERE id = %s AND token = %s",
        vendor,
    )
    for vendor in _NOW
}
# ...and of a stale holder about to be taken over: it was last alive at its last heartbeat.
_RECORD_ABANDONED = {
    vendor: _run_sql(
        "SELECT name, locked_at, heartbeat_at, owner, id, 'abandoned', {locked_age} - ({age}) "
        "FROM marathon_lock WHERE id = %s",
        vendor,
    )
    for vendor in _NOW
}
# The run of a holder whose row is gone: what it knows of itself.
_RECORD_LOST = {
    vendor: "INSERT INTO marathon_lastrun "
    + _RUN_COLUMNS
    + " VALUES (%s, NULL, "
    + _NOW[vendor]
    + ", %s, %s, 'lost', NULL)"
    + _RUN_UPSERT[vendor]
    for vendor in _NOW
}
_SELECT_LAST_RUN = {
    vendor: "SELECT outcome, finished_at, owner, "
    + _AGE[vendor].format(column="finished_at")
    + " FROM marathon_lastrun WHERE name = %s"
    for vendor in _NOW
}


def _beat_sql(vendor, count):
    """The heartbeat's UPDATE and its follow-up SELECT, for `count` locks (not PostgreSQL)."""
    marks = ", ".join(["%s"] * count)
    mine = "id IN (%s) AND token IN (%s)" % (marks, marks)
    update = "UPDATE marathon_lock SET heartbeat_at = %s WHERE %s" % (
        _NOW[vendor],
        mine,
    )
    return update, "SELECT id FROM marathon_lock WHERE " + mine


def _insert_or_read_holder(cursor, name, owner, token, stale_after):
    """One attempt to take the lock. A row that carries our token is ours: an earlier reply lost."""
    vendor = cursor.db.vendor
    if vendor == "postgresql":
        cursor.execute(_ACQUIRE_POSTGRESQL, [name, owner, token, stale_after])
        rows = cursor.fetchall()
        if not rows:
            return _Outcome(None, None)
        acquired, row = rows[0][0], _Holder(*rows[0][1:], token=None)
        return _Outcome(row.id, None) if acquired else _Outcome(None, row)
    if vendor == "sqlite":
        outcome = _read_holder(cursor, name, token)
        if outcome.fence is not None or outcome.holder is not None:
            return outcome
    cursor.execute(_INSERT_IF_FREE[vendor], [name, owner, token, stale_after])
    if cursor.rowcount == 1:
        return _Outcome(cursor.lastrowid, None)
    return _read_holder(cursor, name, token)


def _read_holder(cursor, name, token):
    cursor.execute(_SELECT_HOLDER[cursor.db.vendor], [name])
    row = cursor.fetchone()
    if row is None:
        return _Outcome(None, None)
    holder = _Holder(*row)
    return (
        _Outcome(holder.id, None) if holder.token == token else _Outcome(None, holder)
    )


class _Tries:
    """What the attempts of one acquisition share.

    `took`: the stale holders they took over; the last is the predecessor
    that lock_acquired names. `left`: the tokens of attempts that may have
    inserted a row they neither kept nor deleted: one that failed after its
    statements were sent (a reply lost, a statement after the insert that
    failed), or one answered too late whose delete failed. Such a row is no
    attempt's to adopt, but it is this acquisition's own: the next attempt
    deletes it before it inserts, rather than wait for it to go stale and
    take it over as an abandoned run. Tokens are each attempt's own, so no
    other holder's row is ever deleted.
    """

    __slots__ = ("took", "left")

    def __init__(self):
        self.took, self.left = [], []


def _take(cursor, name, owner, token, stale_after, min_interval, tries):
    """One round of an acquire: take the lock, then, with a min_interval, check its last run.

    The check comes after the lock is ours and the record is written before a
    holder deletes its row, so two hosts one after the other never both run
    inside one period. `tries` (a _Tries) is shared by the sends of one
    attempt and the attempts of one acquisition: this attempt's token stays
    in tries.left until _attempt knows what became of its row.
    """
    for left in tries.left:
        # This attempt's own token, sent again, keeps its row (see _sent_once).
        if left != token:
            _delete_left(cursor, name, left)
    tries.left[:] = [token]
    outcome = _take_or_take_over(
        cursor, name, owner, token, stale_after, min_interval, tries.took
    )
    if outcome.fence is None or min_interval is None:
        return outcome
    cursor.execute(_SELECT_LAST_RUN[cursor.db.vendor], [name])
    row = cursor.fetchone()
    if row is not None and row[0] == "ok" and row[3] < min_interval:
        _delete_own(cursor, outcome.fence, token)
        return _Outcome(None, None, last_run=_LastRun(*row))
    return outcome


def _delete_left(cursor, name, token):
    """Delete the row an earlier attempt of this acquisition may have left (see _Tries)."""
    # The holder's fence is set only if its row carries `token`.
    fence = _read_holder(cursor, name, token).fence
    if fence is not None:
        _delete_own(cursor, fence, token)


def _take_or_take_over(cursor, name, owner, token, stale_after, min_interval, took):
    """Insert; if the holder is stale by its own stale_after, delete it and insert again."""
    vendor = cursor.db.vendor
    outcome = _Outcome(None, None)
    for _ in range(3):  # a holder that leaves, or a takeover, earns another attempt
        outcome = _insert_or_read_holder(cursor, name, owner, token, stale_after)
        holder = outcome.holder
        if outcome.fence is not None:
            # A takeover whose reply was lost: the send that found our row says so too.
            return outcome._replace(took_over=took[-1] if took else None)
        if holder is None:
            continue  # the holder left between our statements
        limit = stale_after if holder.stale_after is None else holder.stale_after
        if holder.age is None or holder.age <= limit:
            # A live holder: the next one's predecessor is it, not any taken over before.
            del took[:]
            return outcome
        if min_interval is not None:
            cursor.execute(_RECORD_ABANDONED[vendor], [holder.id])
        if _rowcount(cursor, _DELETE_STALE[vendor], [holder.id, stale_after]) == 1:
            took.append(holder)
            logger.warning(
                "Took over the stale lock %r from %s: its last heartbeat was %.1f s ago (stale after %s s); "
                "its run was abandoned.",
                name,
                holder.owner,
                holder.age,
                limit,
            )
    return outcome


def _finish(cursor, fence, token, outcome):
    """Release: record the run (if `outcome`), then delete the row if it is still ours. True if it was."""
    if outcome is not None:
        cursor.execute(_RECORD_OWN[cursor.db.vendor], [outcome, fence, token])
    return _delete_own(cursor, fence, token)


def _record_lost(cursor, name, owner, fence):
    cursor.execute(_RECORD_LOST[cursor.db.vendor], [name, owner, fence])


def _delete_own(cursor, fence, token):
    """Release: delete the row only if it is still this holder's. True if it was."""
    if cursor.db.vendor == "postgresql":
        cursor.execute(_RELEASE_POSTGRESQL, [fence, token])
        return cursor.fetchone()[0] == 1
    return _rowcount(cursor, _RELEASE, [fence, token]) == 1


def _rowcount(cursor, sql, params):
    cursor.execute(sql, params)
    return cursor.rowcount


def _explained(exc, name, connection):
    """The database error `exc` of lock `name`, with what to do about it where we know: a new
    error caused by `exc`, or `exc` itself."""
    text = str(exc)
    if (
        connection.vendor == "sqlite"
        and "locked" in text
        and _in_transaction(connection)
    ):
        advice = (
            "SQLite lets one connection write at a time, and inside transaction.atomic() "
            "marathon's statements run on a connection of their own, which waits for your "
            "transaction to end once it has read or written: take the lock before atomic(), or "
            "use WAL journal mode so that readers do not block it"
        )
    elif connection.vendor == "sqlite" and "locked" in text:
        advice = (
            "another connection kept the SQLite database locked for longer than the busy timeout "
            "(OPTIONS['timeout']): SQLite lets one connection write at a time"
        )
    elif "lock timeout" in text or "Lock wait timeout" in text:
        advice = (
            "another transaction holds the lock's row and has not ended (a Lock row created, "
            "changed or deleted through the ORM inside transaction.atomic()?): marathon does not "
            "wait for it"
        )
    else:
        return exc
    error = OperationalError("Lock %r: %s (%s)." % (name, advice, text))
    error.__cause__ = exc
    return error


# ---- Connections ----
# A lock statement commits at once, whatever the caller's transaction does:
#
# - In autocommit it runs on Django's connection of this thread, which it
#   leaves as it found it: opened for the statement and closed again if it was
#   closed, so that a process that forks after taking a lock gives its
#   children no open connection to share.
# - Inside the caller's transaction it runs on a connection of our own,
#   closed again at once. A release there waits for the outermost transaction
#   to end, so that the next holder sees what this one wrote.
# - Inside a django.test.TestCase it runs in the test's own transaction,
#   which rolls it back with everything else the test wrote.


def _in_testcase(connection):
    """True inside the transaction of a django.test.TestCase (marked by Django 3.2+)."""
    if not connection.in_atomic_block:
        return False
    blocks = getattr(connection, "atomic_blocks", None)
    if blocks is not None:  # Django 4.1+
        return any(getattr(block, "_from_testcase", False) for block in blocks)
    return (
        getattr(transaction.Atomic, "_ensure_durability", True) is False
    )  # Django 3.2


def _in_transaction(connection):
    """Would a statement on `connection` wait for a commit? (AUTOCOMMIT = False in DATABASES too.)"""
    if connection.in_atomic_block or not connection.settings_dict["AUTOCOMMIT"]:
        return True
    return connection.connection is not None and not connection.get_autocommit()


def _own_connection(connection):
    """A connection of marathon's own to the same database, in autocommit whatever DATABASES says."""
    return type(connection)(
        dict(connection.settings_dict, AUTOCOMMIT=True), connection.alias
    )


def _close_own(connection):
    """Close one of our own connections. Django leaves an in-memory SQLite database open on
    close(), for the thread that owns it; ours is not that one, and Python 3.13 warns."""
    connection.close()
    if connection.connection is not None:
        connection.connection.close()
        connection.connection = None


def _run(alias, operation, *args, again=True):
    """Run operation(cursor, *args) where it commits at once (see above). `again`: the
    operation may run twice (see _sent_once)."""
    connection = connections[alias]
    for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
        try:
            with _fork_guard.statement(connection):
                return _run_here(connection, alias, operation, args, again)
        except OperationalError as exc:
            # InnoDB resolves a deadlock by rolling back one statement, and asks
            # for it again; each of ours is its own transaction, and safe to
            # repeat (an acquire recognises its own row, a release its token).
            deadlock = connection.vendor == "mysql" and exc.args[:1] == (1213,)
            if (
                not deadlock
                or attempt == _DEADLOCK_ATTEMPTS
                or _in_testcase(connection)
            ):
                raise
            _sleep(
                secrets.randbelow(50) / 1000
            )  # apart from the other party, which tries again too


def _run_here(connection, alias, operation, args, again):
    if _in_testcase(connection):
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            return operation(cursor, *args)
    if _in_transaction(connection):
        private = _own_connection(connection)
        try:
            return _sent_once(private, operation, args, again)
        finally:
            _close_own(private)
    opened = connection.connection is None
    try:
        return _sent_once(connection, operation, args, again)
    finally:
        if opened:
            connection.close()


def _sent_once(connection, operation, args, again):
    """operation(cursor, *args) on connection, once more on a new one if it died once the
    statement was sent (unless not `again`): the statement may have committed and only its
    reply been lost.

    A long task can outlive its connection too (a server restart, an idle
    timeout). A holder's operations may run twice: an acquire recognises its
    own row by its token, a release cannot delete another holder's row, a
    record is kept only over an older fence. An operator's release is sent
    once: it could not tell a row its lost reply deleted from one the holder
    released. The new connection is closed after, so that Django opens its own
    again when it next needs one.
    """
    try:
        with connection.cursor() as cursor:
            return operation(cursor, *args)
    except (OperationalError, InterfaceError):
        if not again or connection.connection is None or _usable(connection):
            raise  # it could not connect, or the statement failed, not the connection
        with contextlib.suppress(Error):
            connection.close()  # a dead connection may fail to close; it is closed all the same
    try:
        with connection.cursor() as cursor:
            return operation(cursor, *args)
    finally:
        connection.close()


def _usable(connection):
    """Django's is_usable(), but never reconnecting: PyMySQL's ping() reconnects by default
    before 1.1, which makes a dead connection look alive. (mysqlclient's never does, and
    warns if asked not to.)"""
    raw = connection.connection
    if connection.vendor != "mysql" or not type(raw).__module__.startswith("pymysql"):
        return connection.is_usable()
    try:
        raw.ping(False)
    except connection.Database.Error:
        return False
    return True


def _callers_transaction(alias):
    """The connection whose transaction a release waits for: the lock's database's if it is in
    atomic(), else the first of this thread's other connections that is (MARATHON_DATABASE may
    differ from the database the caller writes to). None outside transactions, and in a TestCase.

    One transaction only: with blocks open on several databases, the others
    are not waited for. A connection closed inside its block has no
    transaction left (the server rolled it back): it is returned only if no
    other connection's block is open, so that the release waits for that one
    rather than go out at once (see _closed_in_a_block for the run's outcome).
    """
    closed = None
    for connection in _in_blocks(alias):
        if _in_testcase(connection):
            return None
        if not connection.closed_in_transaction:
            return connection
        closed = closed or connection
    return closed


def _closed_in_a_block(alias):
    """True if one of this thread's connections was closed inside a block still open: the
    server rolled that transaction back, and a run whose work it held did not succeed."""
    return any(connection.closed_in_transaction for connection in _in_blocks(alias))


def _in_blocks(alias):
    """This thread's connections inside atomic(), alias's first; not one that Django left
    marked so after a close (see _left_in_atomic)."""
    for connection in [connections[alias]] + [
        connections[other] for other in connections if other != alias
    ]:
        if connection.in_atomic_block and not _left_in_atomic(connection):
            yield connection


def _left_in_atomic(connection):
    """Django's state once the outermost atomic() under manual transactions exits after its
    connection closed inside it: in_atomic_block stays set, though no block is open (no
    savepoint left, and no commit on exit: the block was not the transaction). Django 5.1+
    keeps it so for good in that thread (it refuses to connect inside a block); older versions
    reset it when they connect again. The caller's code runs outside atomic() there."""
    return (
        connection.closed_in_transaction
        and not connection.savepoint_ids
        and not connection.commit_on_exit
    )


def _at_transaction_end(connection, pending):
    """Run the release in `pending` once, when the caller's outermost transaction on
    `connection` ends, by commit or by rollback. Whoever pops it from the list runs it.

    on_commit() covers a commit. A rollback makes Django discard its on_commit
    callbacks, and with them the only reference to ours, whose finalizer then
    releases. A rollback to a savepoint discards them too while the
    transaction goes on: then it waits again for the outermost end. A close
    inside the transaction ends it too (see _at_close). Where none fires (the
    callback was discarded by the cyclic garbage collector, where no database
    work and no lock may be taken) the heartbeat notices that the
    transaction has ended (see _transaction_ended) and has the reporter run it.
    """

    def at_commit():
        _run_pending(pending)

    def discarded():
        if not pending or _collecting:
            return
        if connection.in_atomic_block and not connection.closed_in_transaction:
            _at_transaction_end(connection, pending)
        else:
            # Inside Django's rollback(), autocommit still off: no user code may use
            # the connection here. Or after a commit, autocommit back on, when an
            # earlier on_commit callback raised and Django dropped the rest: the
            # transaction committed, so the run did not roll back.
            _run_pending(
                pending, during_rollback=True, rolled_back=not connection.autocommit
            )

    if not connection.commit_on_exit:  # atomic() under manual transaction management
        _at_manual_end(connection, pending)
        return
    weakref.finalize(at_commit, discarded).atexit = False
    connection.on_commit(at_commit)
    _at_close(connection, pending, at_commit)


def _at_close(connection, pending, at_commit):
    """Run the release in `pending` as after a rollback if `connection` is closed inside the
    transaction it waits for: the server rolls the transaction back, and Django runs no
    on_commit callback, and discards none until it connects again (too late to tell what
    ended the transaction). A close in another transaction, or outside one, leaves the
    release to what ended its own.

    A release waits in the transaction whose on_commit list holds its callback
    `at_commit` (Django starts a new list whenever a transaction ends). It is
    referred to weakly, so that its finalizer still fires when Django drops it.
    """
    waiting = vars(connection).get("_marathon_closing")
    if waiting is None:
        waiting = connection._marathon_closing = []
        close = connection.close

        @functools.wraps(close)
        def close_then_release():
            inside = connection.in_atomic_block and not connection.closed_in_transaction
            callbacks = [item[1] for item in connection.run_on_commit] if inside else []
            try:
                close()  # discards our on_commit callbacks: they wait again (see above)
            finally:
                if inside and connection.closed_in_transaction:
                    for pending, callback in waiting[:]:
                        if any(callback() is other for other in callbacks):
                            _run_pending(
                                pending, during_rollback=True, rolled_back=True
                            )
                del callbacks[:]
                waiting[:] = [entry for entry in waiting if entry[0]]

        connection.close = close_then_release
    waiting[:] = [entry for entry in waiting if entry[0]]  # forget those that have run
    waiting.append((pending, weakref.ref(at_commit)))


def _at_manual_end(connection, pending):
    """_at_transaction_end() under manual transaction management (set_autocommit(False), or
    AUTOCOMMIT False in DATABASES), where the outermost atomic() is a savepoint and the
    transaction ends at the caller's commit() or rollback(). Django runs on_commit callbacks
    only once autocommit is turned back on, which may be never: so this connection's commit()
    and rollback() are watched, and the release runs once either has returned; close() while
    autocommit is off, which ends the transaction by rollback; and set_autocommit(True), which
    commits it on SQLite and MySQL (psycopg refuses it inside a transaction)."""
    waiting = vars(connection).get("_marathon_waiting")
    if waiting is None:
        waiting = connection._marathon_waiting = []
        for name in ("commit", "rollback"):
            end = getattr(connection, name)
            setattr(connection, name, _then_release(end, waiting, name == "rollback"))
        connection.close = _closed_then_release(connection, waiting)
        connection.set_autocommit = _autocommit_then_release(connection, waiting)
    waiting.append(pending)


def _autocommit_then_release(connection, waiting):
    """Under manual transaction management, connection.set_autocommit(), then, if it turned
    autocommit on, the releases that waited for the transaction it committed."""
    set_autocommit = connection.set_autocommit

    @functools.wraps(set_autocommit)
    def set_autocommit_then_release(autocommit, *args, **kwargs):
        try:
            set_autocommit(autocommit, *args, **kwargs)
        finally:
            # Autocommit is on, so the transaction committed, even if an
            # on_commit hook that Django ran after it raised.
            if autocommit and connection.autocommit:
                while waiting:
                    _run_pending(waiting.pop(0))

    return set_autocommit_then_release


def _closed_then_release(connection, waiting):
    """Under manual transaction management, connection.close(), then, if it closed the
    connection while a transaction was open, the releases that waited for its end."""
    close = connection.close

    @functools.wraps(close)
    def close_then_release():
        open_ = connection.connection is not None and not connection.autocommit
        try:
            close()
        finally:
            if open_ and (
                connection.connection is None or connection.closed_in_transaction
            ):
                while waiting:
                    _run_pending(waiting.pop(0), during_rollback=True, rolled_back=True)

    return close_then_release


def _then_release(end, waiting, rolled_back):
    """end (a connection's commit or rollback), then the releases that waited for it."""

    def release_waiting():
        while waiting:
            _run_pending(waiting.pop(0), rolled_back=rolled_back)

    @functools.wraps(end)
    def end_then_release():
        try:
            end()
        except BaseException:
            # A rollback that raised (a broken connection) ended the transaction all
            # the same; a commit that raised leaves it to the rollback that follows.
            if rolled_back:
                release_waiting()
            raise
        release_waiting()

    return end_then_release


def _run_pending(pending, **kwargs):
    """Run the release in `pending` if nobody has yet (list.pop is atomic)."""
    try:
        release = pending.pop()
    except IndexError:
        return
    release(**kwargs)


def _transaction_ended(connection):
    """Read from another thread, without I/O: has the transaction a deferred release waits for
    ended, committed or not? (During a commit in_atomic_block is already False while
    autocommit is not yet back on; a closed connection has no transaction.)"""
    return not connection.in_atomic_block and (
        connection.autocommit or connection.connection is None
    )


_collecting = (
    False  # True while the cyclic garbage collector runs (finalizers must not block)
)


def _note_collection(phase, info):
    global _collecting
    _collecting = phase == "start"


gc.callbacks.append(_note_collection)


# ---- Test seams ----
# Tests set _hook to a callable(point, **facts) to stop a thread at a named
# point, so that an interleaving they fear is forced rather than hoped for.
# Points: "acquire.taken" (the row is ours, nothing registered yet),
# "heartbeat.start" (a heartbeat thread is about to start),
# "heartbeat.beat" (on the heartbeat thread, with its snapshot of holds),
# "heartbeat.idle" (on the heartbeat thread, about to decide whether to end),
# "session.refresh" (on the session thread, before the heartbeat's statement).

_hook = None


def _at(point, **facts):
    hook = _hook
    if hook is not None:
        hook(point, **facts)


# ---- Holds and the registry ----

_HELD, _DEFERRED, _RELEASED, _LOST = "held", "release deferred", "released", "lost"

# A hold's times: the clock that goes on while the machine sleeps (Linux), so
# that a host that wakes from a suspend finds its deadlines passed.
_clock: Callable[[], float]
if hasattr(time, "CLOCK_BOOTTIME"):
    _clock = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
else:  # pragma: no cover - not Linux, or Python 3.6
    _clock = time.monotonic


class _Hold:
    """One acquisition of a lock. Its state is written only by the registry, under its mutex."""

    def __init__(self, marathon, plan, fence, confirmed, beaten):
        self.marathon = marathon
        self.alias = plan.alias
        self.fence = fence
        self.token = plan.token
        self.owner = plan.owner
        self.interval = plan.heartbeat
        self.loss_after = plan.loss_after
        self.min_interval = plan.min_interval
        self.acquired = self.confirmed = confirmed  # _clock() when the acquire was sent
        self.due = confirmed + plan.heartbeat  # when the next beat is due
        self.beaten = (
            beaten  # False inside a TestCase: its row is invisible to the heartbeat
        )
        self.pid = os.getpid()  # a forked child inherits the object, not the lock
        self.state = _HELD
        self.reason = None  # why it was lost
        self.row_gone = False  # lost because the database said its row was gone
        self.deferred = None  # (connection, pending release) while its release waits for a transaction

    @property
    def deadline(self):
        """Lost unless confirmed by then: before anyone can take it over, with half an interval to spare."""
        return self.confirmed + self.loss_after

    def mine(self):
        return self.pid == os.getpid()

    def overdue(self):
        """Past its deadline and not confirmed: another holder may take it over soon."""
        return self.beaten and _clock() >= self.deadline


class _Registry:
    """Every hold of this process, the threads that serve them, and the one mutex that guards both.

    A hold is registered with the heartbeat thread of its database. A thread
    that ends, or died, is replaced by the code that registers work with it,
    never trusted because it was started once. A forked child gets a new,
    empty registry (see _forget_parent).
    """

    def __init__(self):
        self.pid = os.getpid()
        self.mutex = threading.Lock()
        self.heartbeats = {}  # alias -> _Heartbeat
        self.reporter = None  # the _Reporter thread, while it runs
        self.closing = False  # the interpreter exits: no more reports

    def register(self, hold):
        """Have hold beaten; starts a heartbeat thread if its database has none that will."""
        with self.mutex:
            heartbeat = self.heartbeats.get(hold.alias)
            if heartbeat is None or heartbeat.ending or not heartbeat.is_alive():
                heartbeat = self._start_heartbeat(hold.alias, heartbeat)
            heartbeat.holds[hold.token] = hold
            heartbeat.idle_since = None
            if hold.due < heartbeat.until:
                heartbeat.wake.set()  # it would sleep through this hold's first beat

    def _start_heartbeat(self, alias, previous):
        """A new heartbeat thread for alias, adopting the holds of one that died. Under the mutex."""
        heartbeat = _Heartbeat(self, alias)
        _at("heartbeat.start", alias=alias)
        heartbeat.start()  # under the mutex: start() returns before run() takes it
        if previous is not None and not previous.ending:
            heartbeat.holds.update(previous.holds)  # it died: they must not go unbeaten
            previous.holds.clear()
        self.heartbeats[alias] = heartbeat
        return heartbeat

    def unregister(self, hold, state):
        """Move hold to _DEFERRED (still beaten) or _RELEASED; False if that is no longer its move."""
        with self.mutex:
            if not (
                hold.state == _HELD or (hold.state == _DEFERRED and state == _RELEASED)
            ):
                return False
            hold.state = state
            if state != _DEFERRED:
                self._forget(hold)
            return True

    def lose(self, hold, reason, row_gone=False):
        """Report hold lost, once; a hold released meanwhile is not. Never runs user code itself."""
        with self.mutex:
            if hold.state not in (_HELD, _DEFERRED):
                return
            hold.state = _LOST
            hold.reason = reason
            hold.row_gone = row_gone
            self._forget(hold)
            self._report(functools.partial(_report_loss, hold))

    def lost_at_release(self, hold, reason):
        """A release found the row gone: the hold was lost; report it as every loss is."""
        with self.mutex:
            if hold.state != _RELEASED:
                return
            hold.state = _LOST
            hold.reason = reason
            hold.row_gone = True
            self._report(functools.partial(_report_loss, hold))

    def report(self, job):
        with self.mutex:
            self._report(job)

    def _forget(self, hold):
        heartbeat = self.heartbeats.get(hold.alias)
        if (
            heartbeat is not None
            and heartbeat.holds.pop(hold.token, None) is not None
            and not heartbeat.holds
        ):
            heartbeat.idle_since = _clock()
            # Idle: it lingers from now. It is woken only to close its session's
            # connection at once; a wake for every release would cost more than
            # the release's own statement. Without one it notices that it is
            # idle at its next look (see _Heartbeat._wait). `session` is the
            # thread's own: read here without its mutex, a session it is just
            # starting is ended by the thread itself once it finds itself idle.
            if heartbeat.session is not None:
                heartbeat.wake.set()

    def _report(self, job):
        """Queue job for the reporter thread, starting one if none runs. Under the mutex."""
        if self.closing:
            return
        if self.reporter is None or not self.reporter.is_alive():
            reporter = _Reporter(self)
            reporter.start()
            self.reporter = reporter
        self.reporter.jobs.put(job)


_registry = _Registry()


def _at_exit():
    """Let the reporter finish what it is writing before the interpreter shuts down: a daemon
    thread caught holding stderr's lock at shutdown makes Python abort the process."""
    registry = _registry
    with registry.mutex:
        registry.closing = True
        reporter = registry.reporter
        if reporter is not None:
            reporter.jobs.put(None)
    if reporter is not None and reporter is not threading.current_thread():
        reporter.join(_LINGER)


atexit.register(_at_exit)


def _forget_parent():
    """In a forked child: a new registry. The parent's threads did not come along, and its
    mutex may have been held at the fork; its holds are the parent's (see _Hold.mine)."""
    global _registry
    _registry = _Registry()


class _ForkGuard:
    """A fork waits (at most _FORK_WAIT seconds) for marathon's SQLite statements in flight.

    SQLite keeps its file locks in a table of the process. A child forked in
    the middle of a statement inherits that table with the lock marked held by
    a connection that no longer runs, and its own connections to the same file
    wait on it for ever.
    """

    def __init__(self):
        self.idle = threading.Condition(threading.Lock())
        self.running = 0

    @contextlib.contextmanager
    def statement(self, connection):
        if connection.vendor != "sqlite":
            yield
            return
        with self.idle:
            self.running += 1
        try:
            yield
        finally:
            with self.idle:
                self.running -= 1
                self.idle.notify_all()

    def before_fork(self):
        self.idle.acquire()
        self.idle.wait_for(lambda: not self.running, _FORK_WAIT)

    def after_fork_in_parent(self):
        self.idle.release()

    def after_fork_in_child(self):
        self.running = 0  # statements in flight ran in threads the child does not have
        self.idle.release()


_fork_guard = _ForkGuard()

if hasattr(os, "register_at_fork"):  # Python 3.7+
    os.register_at_fork(
        before=_fork_guard.before_fork,
        after_in_parent=_fork_guard.after_fork_in_parent,
        after_in_child=_fork_guard.after_fork_in_child,
    )
    os.register_at_fork(after_in_child=_forget_parent)


def _registry_here():
    """The registry of this process (Python 3.6 has no register_at_fork: notice the fork here)."""
    registry = _registry
    if registry.pid != os.getpid():
        _forget_parent()
        registry = _registry
    return registry


# ---- The heartbeat ----


class _Heartbeat(threading.Thread):
    """One thread per process and database: refreshes all the holds registered with it.

    Every due beat is one UPDATE for all of them, sent by its _Session. A hold
    whose row is gone is lost; a database that fails or does not answer is
    retried every quarter interval until a hold's deadline, and then that hold
    is lost. It does nothing else: logs, signals and callbacks go to the
    reporter. With no hold left it ends its session at once, lingers briefly
    for the next acquire, then ends.
    """

    def __init__(self, registry, alias):
        super().__init__(name="marathon-heartbeat-%s" % alias, daemon=True)
        self.registry = registry
        self.alias = alias
        self.holds = {}  # token -> _Hold; guarded by registry.mutex
        self.until = float(
            "inf"
        )  # when the current sleep ends; guarded by registry.mutex
        self.idle_since = (
            None  # since when it has had no hold; guarded by registry.mutex
        )
        self.ending = False  # set under registry.mutex; register() then starts another
        self.wake = threading.Event()
        self.session = None  # this thread's own

    def run(self):
        try:
            while True:
                holds = self._wait()
                if holds is None:
                    return
                _at("heartbeat.beat", holds=holds)
                try:
                    self._beat(holds)
                except (
                    Exception
                ):  # never let a surprise stop the beats of every other lock
                    self.registry.report(
                        functools.partial(
                            logger.error,
                            "The heartbeat on %r failed.",
                            self.alias,
                            exc_info=sys.exc_info(),
                        )
                    )
        finally:
            self._end_session()
            with self.registry.mutex:
                if self.registry.heartbeats.get(self.alias) is self:
                    # It died: its holds get a thread of their own now, or, if
                    # none can start, from the next register(), which adopts
                    # them from a thread that is no longer alive.
                    with contextlib.suppress(RuntimeError):
                        self.registry._start_heartbeat(self.alias, self)

    def _wait(self):
        """Sleep until a beat is due; return a snapshot of the holds, or None once it has lingered idle."""
        while True:
            with self.registry.mutex:
                now = _clock()
                idle = not self.holds
                if not idle:
                    due = min(hold.due for hold in self.holds.values())
                    if due <= now:
                        self.until = float("inf")
                        return list(self.holds.values())
                    # It looks at least every _LINGER: a release does not wake it.
                    self.until = min(due, now + _LINGER)
                else:
                    self.idle_since = (
                        now if self.idle_since is None else self.idle_since
                    )
                    if now - self.idle_since >= _LINGER:
                        self.ending = True
                        if self.registry.heartbeats.get(self.alias) is self:
                            del self.registry.heartbeats[self.alias]
                        return None
                    self.until = self.idle_since + _LINGER
            if (
                idle
            ):  # its connection closes at once; the thread lingers for the next acquire
                self._end_session()
                _at("heartbeat.idle", alias=self.alias)
            self.wake.wait(self.until - now)
            self.wake.clear()  # state is read again after every wake, under the mutex

    def _beat(self, holds):
        sent = _clock()
        for hold in holds:
            if sent >= hold.deadline:
                self.registry.lose(
                    hold,
                    "the database could not be reached for %.1f s"
                    % (sent - hold.confirmed),
                )
        holds = [hold for hold in holds if sent < hold.deadline]
        if not holds:
            return
        if self.session is None:
            self.session = _Session(self.alias)
            self.session.start()
        answer = queue.Queue()
        self.session.jobs.put((holds, answer))
        alive, error = self._answer(answer, holds)
        now = _clock()
        snapshot = set(holds)
        with self.registry.mutex:  # holds taken while it waited are judged too
            judged = holds + [
                hold for hold in self.holds.values() if hold not in snapshot
            ]
        for hold in judged:
            if error is None and hold.fence in alive:
                hold.confirmed, hold.due = sent, sent + hold.interval
            elif error is None and hold in snapshot:
                self.registry.lose(
                    hold, "its row was deleted or taken over", row_gone=True
                )
            elif now >= hold.deadline:
                self.registry.lose(
                    hold,
                    "the database could not be reached for %.1f s"
                    % (now - hold.confirmed),
                )
            elif error is not None:
                hold.due = min(now + hold.interval / 4, hold.deadline)  # retry soon
        for hold in holds:  # a release waiting for a transaction that ended unseen
            if hold.state == _DEFERRED and _transaction_ended(hold.deferred[0]):
                self.registry.report(functools.partial(_run_pending, hold.deferred[1]))
        if error is not None:
            self.registry.report(
                functools.partial(
                    logger.warning,
                    "Heartbeat for %d lock(s) on %r failed: %s",
                    len(holds),
                    self.alias,
                    error,
                )
            )
        elif logger.isEnabledFor(logging.DEBUG):
            self.registry.report(
                functools.partial(
                    logger.debug,
                    "Heartbeat refreshed %d of %d lock(s) on %r.",
                    len(alive),
                    len(holds),
                    self.alias,
                )
            )

    def _answer(self, answer, holds):
        """The session's answer: (alive fences, None), or (None, error). It waits no longer than the
        first deadline of any registered hold, those taken while it waits included."""
        while True:
            with self.registry.mutex:
                first = min(
                    hold.deadline
                    for hold in itertools.chain(holds, self.holds.values())
                )
            try:
                return answer.get(timeout=max(min(first - _clock(), _SLICE), 0.001))
            except queue.Empty:
                if _clock() >= first:
                    self._end_session()  # a stuck session ends if its query ever returns
                    return None, "the database did not answer"

    def _end_session(self):
        if self.session is not None:
            self.session.jobs.put(None)
            self.session = None


class _Session(threading.Thread):
    """The heartbeat's database connection, in a thread of its own.

    A database that stops answering can block a query for as long as the
    socket stays open. The heartbeat must still report the loss in time, so it
    waits for its session only until a hold's deadline, and then leaves a
    stuck session behind (a daemon thread) and starts another.
    """

    def __init__(self, alias):
        super().__init__(name="marathon-session-%s" % alias, daemon=True)
        self.alias = alias
        self.jobs = queue.Queue()  # (holds, answer queue), or None to end
        self.connection = None  # its own, made in its thread

    def run(self):
        self.connection = _own_connection(connections[self.alias])
        try:
            for holds, answer in iter(self.jobs.get, None):
                try:
                    answer.put((self._refresh(holds), None))
                except (
                    Exception
                ) as exc:  # the database's errors vary; the heartbeat retries them all
                    answer.put((None, exc))
        finally:
            with contextlib.suppress(Exception):
                _close_own(self.connection)

    def _refresh(self, holds):
        """The fences whose rows it refreshed. Reconnects once."""
        connection = self.connection
        _at("session.refresh", holds=holds)
        for attempt in (1, 2):
            try:
                with _fork_guard.statement(connection), connection.cursor() as cursor:
                    if connection.vendor == "postgresql":
                        cursor.execute(
                            _BEAT_POSTGRESQL,
                            [[h.fence for h in holds], [h.token for h in holds]],
                        )
                        return {row[0] for row in cursor.fetchall()}
                    alive = set()
                    for start in range(0, len(holds), _BEAT_CHUNK):
                        alive |= self._refresh_chunk(
                            cursor, holds[start : start + _BEAT_CHUNK]
                        )
                    return alive
            except Exception:
                with contextlib.suppress(Exception):
                    connection.close()  # a dropped session: the next cursor reconnects
                if attempt == 2:
                    raise

    @staticmethod
    def _refresh_chunk(cursor, holds):
        """One UPDATE; a SELECT only if some row is gone."""
        update, select = _beat_sql(cursor.db.vendor, len(holds))
        params = [hold.fence for hold in holds] + [hold.token for hold in holds]
        cursor.execute(update, params)
        if cursor.rowcount == len(holds):
            return {hold.fence for hold in holds}
        cursor.execute(select, params)
        return {row[0] for row in cursor.fetchall()}


class _Reporter(threading.Thread):
    """Runs what the heartbeat has to say (logs, lock_lost, on_lost), so that no slow
    handler delays a beat. It ends after lingering with nothing to do."""

    def __init__(self, registry):
        super().__init__(name="marathon-reporter", daemon=True)
        self.registry = registry
        self.jobs = queue.Queue()

    def run(self):
        while True:
            try:
                job = self.jobs.get(timeout=_LINGER)
            except queue.Empty:
                with self.registry.mutex:
                    if self.jobs.empty():
                        self.registry.reporter = None
                        return
                continue
            if job is None:  # the interpreter exits (see _at_exit)
                return
            try:
                job()
            except (
                BaseException
            ):  # not even SystemExit from a callback may end the reports
                with contextlib.suppress(Exception):
                    logger.exception("A marathon report failed.")


def _report_loss(hold):
    """Log, signal and call back, on the reporter thread. Never raises."""
    marathon = hold.marathon
    logger.error(
        "Lost the lock %r (fence %s, owner %s): %s.",
        marathon.name,
        hold.fence,
        hold.owner,
        hold.reason,
    )
    try:
        lock_lost.send(Marathon, name=marathon.name, owner=hold.owner, fence=hold.fence)
        if marathon.on_lost is not None:
            marathon.on_lost(marathon)
    except BaseException:
        logger.exception(
            "The lock_lost handler or on_lost callback of %r failed.", marathon.name
        )


# ---- Marathon ----


class Marathon:
    """A lock named `name` in the database; a context manager and a decorator.

    ``wait``: seconds to keep trying before giving up (0: give up at once).
    ``heartbeat``/``stale_after``: seconds; None reads MARATHON_HEARTBEAT and
    MARATHON_STALE_AFTER. ``using``: the database alias; None reads
    MARATHON_DATABASE, else the router's write database for Lock. ``on_lost``:
    called with this Marathon, from marathon's reporter thread, if the lock is lost.
    ``min_interval``: seconds; the lock is refused (RanRecently) while its last
    successful run finished less than this long ago, by the database's clock.
    ``on_held``: what a decorated call does when refused: "raise" (the
    default), or "skip" (return None, log at INFO, send lock_skipped).
    """

    def __init__(
        self,
        name: str,
        *,
        wait: float = 0,
        heartbeat: Optional[float] = None,
        stale_after: Optional[float] = None,
        using: Optional[str] = None,
        on_lost: Optional[Callable[["Marathon"], object]] = None,
        min_interval: Optional[float] = None,
        on_held: "_OnHeld" = "raise",
    ) -> None:
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
        if min_interval is not None and _seconds_error("min_interval", min_interval):
            raise ValueError(_seconds_error("min_interval", min_interval))
        if on_held not in ("raise", "skip"):
            raise ValueError('on_held must be "raise" or "skip"; got %r.' % (on_held,))
        self.on_held = on_held
        self.min_interval = min_interval
        self.name = name
        self.wait = wait
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.using = using
        self.on_lost = on_lost
        self._hold: Optional[_Hold] = None  # the current acquisition

    def __repr__(self) -> str:
        return "<Marathon %r %s>" % (self.name, "held" if self.held else "not held")

    @staticmethod
    def _timing(heartbeat, stale_after):
        errors = _timing_errors(heartbeat, stale_after, "heartbeat", "stale_after")
        if errors:
            raise ValueError(errors[0][1])
        return heartbeat, stale_after

    # -- state --

    @property
    def held(self) -> bool:
        """True from a successful acquire until release, or until the lock is lost or its loss
        deadline has passed unconfirmed (a process that was paused knows before its heartbeat says)."""
        hold = self._hold
        return (
            hold is not None
            and hold.state == _HELD
            and hold.mine()
            and not hold.overdue()
        )

    @property
    def lost(self) -> bool:
        """True once the heartbeat found this holder's row deleted or taken over, or could not confirm it in time."""
        return self._hold is not None and self._hold.state == _LOST

    @property
    def fence(self) -> Optional[int]:
        """A number larger than every fence handed out before by this database."""
        return self._hold.fence if self._hold is not None else None

    @property
    def owner(self) -> Optional[str]:
        """host:pid of this holder, as other processes see it; None before the first acquire."""
        return self._hold.owner if self._hold is not None else None

    def check(self) -> None:
        """Raise LockLost if the lock was lost, or is past its loss deadline; a cheap call for long loops."""
        hold = self._hold
        if hold is None:
            return
        if hold.state == _LOST:
            raise LockLost(self.name, hold.reason)
        if hold.state == _HELD and hold.overdue():
            raise LockLost(
                self.name,
                "it was not confirmed for %.1f s" % (_clock() - hold.confirmed),
            )

    # -- acquire and release --

    def acquire(self, wait: Optional[float] = None) -> bool:
        """Take the lock; True if taken, False if another holder kept it for `wait` seconds."""
        return self._acquire(wait).fence is not None

    async def aacquire(self, wait: Optional[float] = None) -> bool:
        """acquire() for async code: the event loop runs on while it waits."""
        return (await self._aacquire(wait)).fence is not None

    def _acquire(self, wait):
        """Take the lock, or find who holds it: the last attempt's _Outcome."""
        plan, tries = self._plan(wait), _Tries()
        for pause in _pauses():
            outcome = self._attempt(plan, tries)
            delay = plan.retry_in(outcome, pause, self.name)
            if delay is None:
                return outcome
            _sleep(delay)

    async def _aacquire(self, wait):
        """_acquire() for async code: each attempt runs where Django allows database work."""
        plan, tries = self._plan(wait), _Tries()
        for pause in _pauses():
            outcome = await _in_thread_uncancelled(
                self._attempt, plan, tries, undo=functools.partial(self._release, None)
            )
            delay = plan.retry_in(outcome, pause, self.name)
            if delay is None:
                return outcome
            await asyncio.sleep(delay)

    def _plan(self, wait):
        """What every attempt of one acquisition needs; raises on bad settings before any query."""
        hold = self._hold
        if hold is not None and hold.state == _HELD and hold.mine():
            raise MarathonError(
                "%r is already held by this Marathon object; use one per holder." % self
            )
        heartbeat, stale_after = self._timing(
            _setting("MARATHON_HEARTBEAT")
            if self.heartbeat is None
            else self.heartbeat,
            _setting("MARATHON_STALE_AFTER")
            if self.stale_after is None
            else self.stale_after,
        )
        alias = _alias(self.using)
        connection = connections[alias]
        if connection.vendor not in _NOW:
            raise MarathonError(_unsupported(connection))
        _check_name_for(connection, self.name)
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        return _Plan(
            alias,
            connection.vendor,
            _owner(),
            None,  # each attempt's own (see _attempt)
            heartbeat,
            stale_after,
            self.min_interval,
            deadline,
        )

    def _attempt(self, plan, tries):
        """One attempt. If it takes the lock, the lock is held and beaten when it returns.

        Each attempt has a token of its own: a row that an earlier one left
        behind (answered too late, and its delete failed) is not this one's to
        adopt, however it carries the acquisition's owner. This attempt deletes
        it first (see _Tries); an acquisition that makes no further attempt
        leaves it to go stale, as a crashed holder's.
        """
        plan = plan._replace(token=secrets.token_hex(16))
        sent = _clock()
        try:
            outcome = _run(
                plan.alias,
                _take,
                self.name,
                plan.owner,
                plan.token,
                plan.stale_after,
                plan.min_interval,
                tries,
            )
        except OperationalError as exc:
            # tries.left keeps this attempt's token: it may have inserted.
            if plan.vendor != "sqlite" or "locked" not in str(exc):
                error = _explained(exc, self.name, connections[plan.alias])
                raise error from error.__cause__  # never its own cause
            # SQLite has one writer at a time and its busy timeout ran out:
            # retried until `wait` runs out, then raised, never taken for a holder.
            return _Outcome(None, None, exc)
        del tries.left[:]  # this attempt's row, if any, is kept or deleted
        if outcome.fence is None:
            return outcome
        waited = _clock() - sent
        if waited >= plan.loss_after and not _in_testcase(connections[plan.alias]):
            return self._answered_late(plan, outcome.fence, waited, tries)
        self._hold_taken(plan, outcome, sent)
        return outcome

    def _answered_late(self, plan, fence, waited, tries):
        """The row is ours, but its answer came after the hold's loss deadline (a database that
        stalled, a lost reply sent again): another host may take it over at any moment. It
        is deleted again, and the attempt failed."""
        try:
            _run(plan.alias, _delete_own, fence, plan.token)
        except Error:
            tries.left.append(plan.token)
        return _Outcome(
            None,
            None,
            OperationalError(
                "Lock %r: the database answered the acquire after %.1f s, past the lock's "
                "loss deadline (stale_after - heartbeat / 2 = %.1f s); it was not taken."
                % (self.name, waited, plan.loss_after)
            ),
        )

    def _hold_taken(self, plan, outcome, sent):
        beaten = not _in_testcase(connections[plan.alias])
        fence = outcome.fence
        hold = _Hold(self, plan, fence, sent, beaten)
        try:  # from here on the row is ours: nothing may leave it behind
            _at("acquire.taken", name=self.name, fence=fence)
            self._hold = hold
            if beaten:
                _registry_here().register(hold)
            logger.info(
                "Acquired the lock %r (fence %s, owner %s).",
                self.name,
                fence,
                plan.owner,
            )
            took_over = outcome.took_over is not None  # its previous run was abandoned
            lock_acquired.send(
                Marathon,
                name=self.name,
                owner=plan.owner,
                fence=fence,
                took_over=took_over,
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to see
                if _registry_here().unregister(hold, _RELEASED):
                    _run(hold.alias, _delete_own, fence, hold.token)
            raise

    def release(self) -> bool:
        """Delete this holder's row. True if it was still ours, False if the lock had been lost.

        Inside the caller's transaction the row is deleted when the outermost
        transaction ends, by commit or by rollback; True then means it was
        still ours when release() was called. With a min_interval this run
        counts as a success.
        """
        return self._release("ok")

    def _release(self, outcome: Optional[str]) -> bool:
        """release(), recording the run's outcome ("ok" or "error") for a lock with a min_interval."""
        hold = self._hold
        if hold is None or not hold.mine():
            return False  # never acquired, or acquired by the parent of this forked process
        transaction_ = _callers_transaction(hold.alias) if hold.beaten else None
        if transaction_ is not None and transaction_.closed_in_transaction:
            # Its connection was closed inside the transaction, which the server
            # rolled back: there is no end left to wait for.
            return self._release_now(hold, "error" if outcome == "ok" else outcome)
        if transaction_ is not None:
            if outcome == "ok" and _closed_in_a_block(hold.alias):
                outcome = "error"  # a transaction on another database was rolled back
            hold.deferred = (
                transaction_,
                [functools.partial(self._release_logged, hold, outcome)],
            )
            if not _registry_here().unregister(hold, _DEFERRED):
                self._record_loss(hold)
                return False
            _at_transaction_end(*hold.deferred)
            return True
        return self._release_now(hold, outcome)

    async def arelease(self) -> bool:
        """release() for async code."""
        return await _in_thread_uncancelled(self.release)

    def _release_now(
        self, hold: _Hold, outcome: Optional[str], during_rollback: bool = False
    ) -> bool:
        if not hold.mine():
            return False  # a deferred release inherited by a forked child: the parent's to make
        if not _registry_here().unregister(hold, _RELEASED):
            self._record_loss(hold)
            return False  # lost: its row is another holder's now, or ours but stale; not ours to touch
        recorded = outcome if hold.min_interval is not None else None
        sends = []  # one entry a send: _run may send it again

        def finish(cursor):
            sends.append(None)
            return _finish(cursor, hold.fence, hold.token, recorded)

        try:
            removed = _run(hold.alias, finish)
        except OperationalError as exc:
            error = _explained(exc, self.name, connections[hold.alias])
            raise error from error.__cause__
        if not removed and len(sends) > 1 and _clock() < hold.deadline:
            # Sent again (its connection died, or a deadlock), and the row was
            # gone before the hold's deadline, when nobody could take it over
            # yet: the first DELETE committed and its reply was lost. Only an
            # operator's release in that very moment is misread as ours.
            logger.warning(
                "The release of the lock %r was sent again and found its row gone: "
                "deleted by the first attempt, whose reply was lost.",
                self.name,
            )
            removed = True
        if not removed:
            _registry_here().lost_at_release(
                hold, "its row was deleted or taken over before the release"
            )
            return False
        logger.info(
            "Released the lock %r (fence %s, owner %s) after %.3f s.",
            self.name,
            hold.fence,
            hold.owner,
            _clock() - hold.acquired,
        )
        send = functools.partial(
            lock_released.send,
            Marathon,
            name=self.name,
            owner=hold.owner,
            fence=hold.fence,
        )
        if during_rollback:  # its receivers may query: not inside Django's rollback()
            _registry_here().report(send)
        else:
            send()
        return True

    def _record_loss(self, hold):
        """A lost run of a lock with a min_interval: recorded once, if the database said the row was gone."""
        if hold.min_interval is None or not hold.row_gone or not hold.mine():
            return
        hold.row_gone = False
        try:
            _run(hold.alias, _record_lost, self.name, hold.owner, hold.fence)
        except Exception:
            logger.exception("Could not record the lost run of %r.", self.name)

    def _release_logged(self, hold, outcome, during_rollback=False, rolled_back=False):
        """A release deferred to the end of a transaction: there, an error can only be logged.
        A run whose transaction rolled back did not succeed: its work is undone."""
        if rolled_back and outcome == "ok":
            outcome = "error"
        try:
            self._release_now(
                hold, outcome, during_rollback
            )  # a loss it finds is reported as every loss is
        except Exception:
            logger.exception(
                "The release of the lock %r at the end of a transaction failed.",
                self.name,
            )

    # -- context managers and decorator --

    def __enter__(self: _MarathonT) -> _MarathonT:
        outcome = self._acquire(None)
        if outcome.fence is None:
            raise self._refusal(outcome)
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[types.TracebackType],
    ) -> None:
        hold = cast(_Hold, self._hold)  # set by __enter__
        if hold.state in (_RELEASED, _DEFERRED) and hold.mine():
            return  # released inside the block
        if (
            not self._release("ok" if exc_type is None else "error")
            and exc_type is None
        ):
            raise LockLost(
                self.name,
                hold.reason or "its row was deleted or taken over before the release",
            )

    async def __aenter__(self: _MarathonT) -> _MarathonT:
        outcome = await self._aacquire(None)
        if outcome.fence is None:
            raise self._refusal(outcome)
        return self

    def _refusal(self, outcome):
        """The exception for an acquire that did not take the lock: AlreadyRunning or RanRecently."""
        vendor = connections[_alias(self.using)].vendor
        last_run, holder = outcome.last_run, outcome.holder
        if last_run is not None:
            return RanRecently(
                self.name,
                last_run.owner,
                _aware(last_run.finished_at, vendor),
                self.min_interval,
            )
        if holder is None:
            return AlreadyRunning(self.name)
        # No token: a row made by hand (on PostgreSQL, where no token is read, moot).
        by_hand = not holder.token
        return AlreadyRunning(
            self.name,
            holder.owner,
            _aware(holder.locked_at, vendor, by_hand),
            _aware(holder.heartbeat_at, vendor, by_hand),
        )

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[types.TracebackType],
    ) -> None:
        await _in_thread_uncancelled(self.__exit__, exc_type, exc, traceback)

    def __call__(self, func: "Callable[_P, _R]") -> "Callable[_P, _R]":
        """Decorate `func`: every call holds the lock, on an acquisition of its own, so threads
        and tasks may share it. `{param}` fields in the name are filled from each call's arguments.

        A call that is refused raises AlreadyRunning (or RanRecently); with
        on_held="skip" it returns None instead, logs at INFO and sends
        lock_skipped, which task queues count as a success.
        """
        on_held = self.on_held
        name_for = _name_template(self.name, func)

        def marathon_for(args, kwargs):
            return Marathon(
                name_for(args, kwargs),
                wait=self.wait,
                heartbeat=self.heartbeat,
                stale_after=self.stale_after,
                using=self.using,
                on_lost=self.on_lost,
                min_interval=self.min_interval,
                on_held=on_held,
            )

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_alone_async(*args, **kwargs):
                lock = marathon_for(args, kwargs)
                if on_held == "raise":
                    async with lock:
                        return await func(*args, **kwargs)
                outcome = await lock._aacquire(None)
                if (
                    outcome.fence is None
                ):  # _skipped and _Taken: in the section SingleRunnerCommand
                    await sync_to_async(_skipped, thread_sensitive=True)(
                        lock, outcome, Marathon
                    )
                    return None
                async with _Taken(lock):
                    return await func(*args, **kwargs)

            # a coroutine function's _R is a coroutine: that of run_alone_async
            return cast("Callable[_P, _R]", run_alone_async)

        @functools.wraps(func)
        def run_alone(*args, **kwargs):
            lock = marathon_for(args, kwargs)
            if on_held == "raise":
                with lock:
                    return func(*args, **kwargs)
            outcome = lock._acquire(None)
            if outcome.fence is None:
                _skipped(lock, outcome, Marathon)
                return None
            with _Taken(lock):
                return func(*args, **kwargs)

        return run_alone


# One acquisition's facts, fixed before its first attempt (but the token,
# which each attempt draws afresh).
class _Plan(
    collections.namedtuple(
        "_Plan", "alias vendor owner token heartbeat stale_after min_interval deadline"
    )
):
    @property
    def loss_after(self):
        """Seconds after its last confirmation when a hold counts as lost: before anyone can
        take it over, with half an interval to spare."""
        return self.stale_after - self.heartbeat / 2

    def retry_in(self, outcome, pause, name):
        """Seconds to wait before the next attempt, or None: `outcome` is the answer.

        A run too recent is the answer at once: `wait` waits for a holder, not for a period."""
        if outcome.fence is not None or outcome.last_run is not None:
            return None
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            return min(pause, remaining)
        if outcome.failed is not None:
            raise _explained(outcome.failed, name, connections[self.alias])
        return None


async def _in_thread_uncancelled(
    function: Callable[..., _R], *args: Any, undo: Optional[Callable[[], object]] = None
) -> _R:
    """Run function(*args) where Django allows database work from async code; see it through.

    A thread cannot be stopped halfway: if the awaiting task is cancelled, the
    call still finishes, and an acquisition it made is undone (`undo`) before
    the cancellation goes on.
    """
    call = await _seen_through(sync_to_async(function, thread_sensitive=True)(*args))
    if call.cancelled_here:
        if (
            undo is not None
            and not call.exception()
            and getattr(call.result(), "fence", None) is not None
        ):
            await _seen_through(sync_to_async(undo, thread_sensitive=True)())
        raise asyncio.CancelledError()
    return cast(_R, call.result())


async def _seen_through(coroutine):
    """Await `coroutine` to its end however often the awaiting task is cancelled meanwhile
    (anyio cancel scopes cancel again on every turn of the loop); the finished future,
    with `cancelled_here` set if a cancellation was held back."""
    call = asyncio.ensure_future(coroutine)
    call.cancelled_here = False
    while not call.done():
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            call.cancelled_here = True
        except Exception:
            pass  # the caller reads it from the future
    return call


def _pauses():
    """Pauses between attempts: quick at first, then at most a second, with jitter."""
    for pause in _POLL_INTERVALS:
        yield pause
    while True:
        yield _POLL_INTERVALS[-1] * (0.5 + secrets.randbelow(1000) / 1000)


# Event.wait, not time.sleep: it keeps working under libfaketime on Python 3.11+.
_sleep = threading.Event().wait

_owners: Dict[int, str] = {}  # pid -> owner: a forked child has its own


def _owner():
    """host:pid, for people."""
    pid = os.getpid()
    if pid not in _owners:
        _owners[pid] = ("%s:%d" % (socket.gethostname(), pid))[-255:]
    return _owners[pid]


# ---- SingleRunnerCommand ----
# A command, or a call decorated with on_held="skip", that is refused skips:
# it says why (who holds the lock, since when, when it last beat; or when the
# last run finished), with times in the project's time zone, logs at INFO and
# sends lock_skipped, so that a task queue counts no failure and callers can
# still tell a skip from a run.

# Sent with the lock's name, the reason ("held" or "ran recently"), and the
# owner and fence of the holder, or the owner of the last run and no fence;
# the sender is the command's class, or Marathon for a decorated function.


def _skipped(lock, outcome, sender):
    """Log and signal that `lock` was refused (`outcome`); return why, for people."""
    message = str(lock._refusal(outcome))
    logger.info("Skipped a run: %s", message)
    if outcome.last_run is not None:
        reason, owner, fence = "ran recently", outcome.last_run.owner, None
    elif outcome.holder is not None:
        reason, owner, fence = "held", outcome.holder.owner, outcome.holder.id
    else:
        reason, owner, fence = "held", None, None
    lock_skipped.send(sender, name=lock.name, reason=reason, owner=owner, fence=fence)
    return message


class _Taken:
    """A lock taken already, as a context manager (sync or async) that leaves it: releases, or raises LockLost."""

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        return self.lock

    def __exit__(self, *exc_info):
        return self.lock.__exit__(*exc_info)

    async def __aenter__(self):
        return self.lock

    async def __aexit__(self, *exc_info):
        return await self.lock.__aexit__(*exc_info)


class SingleRunnerCommand:
    """Mix into a management command: its execution holds a lock, so runs never overlap.

    The lock is named `lock_name`, else the command's name; override
    get_lock_name() for a lock per argument. A run that finds the lock held
    (or, with `lock_min_interval`, finds that the last run finished too
    recently) writes why to stderr, sends lock_skipped and exits with
    `lock_held_exit_code`. While handle() runs, `self.lock` is the Marathon it holds.
    """

    lock_name: Optional[str] = None
    lock_wait: float = 0
    lock_held_exit_code: int = 0
    lock_min_interval: Optional[float] = None
    lock: Optional[Marathon] = None  # the Marathon that this run holds, while it runs

    def get_lock_name(self, *args: Any, **options: Any) -> str:
        """`lock_name` with its `{option}` fields filled from this run's options, else the command's name."""
        if not self.lock_name:
            return self.__module__.rpartition(".")[2]
        roots = _template_roots(self.lock_name)
        if not roots:
            return self.lock_name
        _check_roots(self.lock_name, roots, options, "the command has no option")
        return _filled(self.lock_name, options)

    def execute(self, *args: Any, **options: Any) -> Optional[str]:
        lock = Marathon(
            self.get_lock_name(*args, **options),
            wait=self.lock_wait,
            min_interval=self.lock_min_interval,
        )
        outcome = lock._acquire(None)
        if outcome.fence is None:
            message = "%s Skipped this run." % _skipped(lock, outcome, type(self))
            if self.lock_held_exit_code:
                raise CommandError(message, returncode=self.lock_held_exit_code)
            if options.get("stderr"):  # as BaseCommand.execute() would have set it
                self.stderr = OutputWrapper(options["stderr"])
            self.stderr.write(message)
            return None
        self.lock = lock  # handle() may call self.lock.check() and use self.lock.fence
        with contextlib.ExitStack() as stack:
            stack.push(
                lock
            )  # taken above; on the way out it releases, or raises LockLost
            stack.enter_context(_exit_on_signals())
            # a mixin: BaseCommand.execute() comes after it in the command's MRO
            return super().execute(*args, **options)  # type: ignore[misc, no-any-return]

    def handle(self, *args: Any, **options: Any) -> Optional[str]:
        """0.1's style: commands that define run_task() instead of handle()."""
        return self.run_task(*args, **options)

    def run_task(self, *args: Any, **options: Any) -> Optional[str]:
        raise NotImplementedError(
            "Define handle() (or run_task()) in %s." % type(self).__name__
        )


@contextlib.contextmanager
def _exit_on_signals():
    """Turn SIGTERM and SIGINT into SystemExit(128 + signal), so the lock is released on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return

    def exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = {
        signum: signal.signal(signum, exit)
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
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


# ---- The supervisor: python -m marathon run NAME -- CMD ----
# One copy of a long-running process across hosts (a Celery beat, a consumer):
# every host starts the supervisor; one takes the lock and runs the command as
# its child, the others wait. The lock is a lease: if it is lost, the child is
# stopped before another host can take it over.

_EXIT_HELD = 75  # EX_TEMPFAIL: --wait ran out while another host held the lock
_EXIT_LOST = 70  # EX_SOFTWARE: the lock was lost while the child ran
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _supervise(name, command, wait=None, heartbeat=None, stale_after=None, using=None):
    """Hold `name` while `command` runs as a child with our stdio; return the exit status.

    The child's status is ours (128 + the signal if a signal ended it). While
    waiting for the lock, SIGTERM, SIGINT or SIGHUP end the wait; while the
    child runs they are passed on to it. A lost lock stops the child: SIGTERM
    when the loss is reported (half an interval before anyone can take the
    lock over), SIGKILL a quarter interval later.
    """
    lost = threading.Event()
    lock = Marathon(
        name,
        wait=float("inf") if wait is None else wait,
        heartbeat=heartbeat,
        stale_after=stale_after,
        using=using,
        on_lost=lambda marathon: lost.set(),
    )
    received = []
    previous = {
        signum: signal.signal(signum, lambda signum, frame: received.append(signum))
        for signum in _FORWARDED
    }
    try:
        logger.info("Waiting for the lock %r to run %s.", name, command)
        print(
            "marathon: waiting for the lock %r..." % name, file=sys.stderr, flush=True
        )
        outcome = _acquire_unless_signalled(lock, wait, received)
        if outcome is None:
            return 128 + received[0]
        if outcome.fence is None:
            print("marathon: %s" % lock._refusal(outcome), file=sys.stderr, flush=True)
            return _EXIT_HELD
        print(
            "marathon: got the lock %r (fence %s); starting %s"
            % (name, lock.fence, command),
            file=sys.stderr,
            flush=True,
        )
        stopped = [False]
        try:
            status = _run_child(lock, command, lost, received, stopped)
        finally:
            if (
                stopped[0] or not lock.release()
            ):  # lost, by the heartbeat, its deadline or the release
                reason = lock._hold.reason or "it was not confirmed in time"
                print(
                    "marathon: lost the lock %r: %s; the child was stopped."
                    % (name, reason),
                    file=sys.stderr,
                )
                status = _EXIT_LOST
            else:
                logger.info("Released the lock %r after its child exited.", name)
        return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _acquire_unless_signalled(lock, wait, received):
    """Acquire, polling so that a signal ends a long wait; None if one did.

    A standby may wait for hours: once the database has answered, an error of
    an attempt's statement (a busy SQLite, a server restarting) is logged and
    the wait goes on. An error before it ever answered is raised: the settings
    are wrong. So is one raised after the lock was taken (by a lock_acquired
    receiver): the attempt released the lock, and another would only repeat it.
    """
    deadline = float("inf") if wait is None else time.monotonic() + wait
    answered, failing, tries = False, None, _Tries()
    for pause in _pauses():
        if received:
            return None
        hold = lock._hold
        try:
            outcome = lock._attempt(lock._plan(0), tries)
            error, answered = outcome.failed, True  # a busy SQLite answered too
        except (OperationalError, InterfaceError) as exc:
            if not answered or lock._hold is not hold:  # see above
                raise
            outcome, error = None, exc
        if error is None:
            if failing is not None:
                logger.info(
                    "The database answers again; still waiting for %r.", lock.name
                )
            failing = None
        elif failing != _kind(error):  # once per kind of error, not per attempt
            failing = _kind(error)
            logger.warning(
                "Waiting for %r: an attempt failed (%s); retrying.", lock.name, error
            )
            print("marathon: %s; still waiting." % error, file=sys.stderr, flush=True)
        if outcome is not None and outcome.fence is not None and received:
            # told to stop while the attempt ran
            lock.release()
            return None
        if outcome is not None and outcome.fence is not None:
            return outcome
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if outcome is None:
                raise error  # the attempt's own, explained there
            if error is not None:  # a busy SQLite, or an answer too late
                raise _explained(error, lock.name, connections[_alias(lock.using)])
            return outcome
        _sleep(min(pause, remaining))


def _kind(error):
    """An error's text without its figures (an answer too late says how late)."""
    return re.sub(r"\d+(\.\d+)?", "#", str(error))


def _run_child(lock, command, lost, received, stopped):
    """Run the child while the lock is held; stop it if the lock is lost (then stopped[0] is
    True). Its exit status."""
    hold = lock._hold
    child = subprocess.Popen(_child_command(command))
    logger.info(
        "Started %s as pid %d under the lock %r (fence %s).",
        command,
        child.pid,
        lock.name,
        lock.fence,
    )
    grace, killed_at = hold.interval / 4, None
    while child.poll() is None:
        while received:
            child.send_signal(received.pop(0))
        if (
            lost.is_set() or not lock.held
        ) and killed_at is None:  # held: its own deadline too
            child.terminate()
            stopped[0], killed_at = True, time.monotonic() + grace
        if killed_at is not None and time.monotonic() >= killed_at:
            child.kill()
        lost.wait(0.01 if killed_at is not None else 0.05)
    status = child.returncode if child.returncode >= 0 else 128 - child.returncode
    logger.info("%s (pid %d) exited with status %d.", command, child.pid, status)
    return status


# On Linux the child is started through this small exec wrapper, which asks the
# kernel for SIGKILL when its parent (the supervisor) dies, even by SIGKILL,
# then becomes the command. A wrapper rather than a preexec_fn: forking a
# process that runs threads (the heartbeat) must not run Python in the child.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as Python found them: exec keeps ignored signals\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(%d)  # the supervisor died before prctl: nobody would stop us\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as error:\n"
    "    print('marathon: cannot run %%s: %%s' %% (sys.argv[2], error.strerror), file=sys.stderr)\n"
    "    sys.exit(127)\n" % _EXIT_LOST
)


def _child_command(command):
    """The command as started: on Linux through the wrapper above. Elsewhere there is no
    such signal, and a SIGKILLed supervisor's child runs on (its lock goes stale as for any crash)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid())] + list(command)


# ---- Operating: states, the admin and the shell tool ----
# What an operator needs to see of each lock, by the database's clock: its
# state, how long it has been held, how long ago it beat, the stale_after it is
# judged by, and its fence. The admin and `python -m marathon` only read and
# release: a release deletes the row it showed, by its id, so a holder that
# took the name over since keeps its lock; and it is logged, with who asked,
# on the logger "marathon".


def _with_state(queryset, vendor):
    """Annotate each lock with its heartbeat's and its own age in seconds, by the database's clock."""
    return queryset.annotate(
        heartbeat_age=RawSQL(_AGE[vendor].format(column="heartbeat_at"), []),
        held_for=RawSQL(_AGE[vendor].format(column="locked_at"), []),
    )


def _with_run_age(queryset, vendor):
    """Annotate each last run with the seconds since it finished, by the database's clock."""
    return queryset.annotate(
        finished_age=RawSQL(_AGE[vendor].format(column="finished_at"), [])
    )


def _state(lock, stale_after):
    """running, stale or manual; judged by the holder's stored stale_after, else by `stale_after`."""
    if lock.heartbeat_age is None:
        return "manual"
    limit = stale_after if lock.stale_after is None else lock.stale_after
    return "stale" if lock.heartbeat_age > limit else "running"


# A lock annotated by _with_state, as text for people.
_Shown = collections.namedtuple(
    "_Shown", "name state owner held_for last_heartbeat stale_after fence"
)


def _shown(lock, stale_after):
    return _Shown(
        name=lock.name,
        state=_state(lock, stale_after),
        owner=lock.owner or "-",
        held_for=_duration(lock.held_for),
        last_heartbeat="never"
        if lock.heartbeat_age is None
        else _duration(lock.heartbeat_age) + " ago",
        stale_after=(
            "%g s (setting)" % stale_after
            if lock.stale_after is None
            else "%g s" % lock.stale_after
        ),
        fence=str(lock.pk),
    )


def _duration(seconds):
    """Seconds for people: '2.1 s', '4 min 05 s', '3 h 02 min', '2 d 05 h'."""
    seconds = max(
        seconds, 0.0
    )  # SQLite's clock is each process's: a fresh beat can look a hair in the future
    if seconds < 60:
        return "%.1f s" % seconds
    seconds = int(seconds)
    for size, unit, part, part_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "min"),
        (60, "min", 1, "s"),
    ):
        if seconds >= size:
            return "%d %s %02d %s" % (
                seconds // size,
                unit,
                seconds % size // part,
                part_unit,
            )


def _described(lock, stale_after):
    """A lock in a log line: 'name' (state, held by owner, fence N)."""
    return "%r (%s, held by %s, fence %s)" % (
        lock.name,
        _state(lock, stale_after),
        lock.owner or "an unknown holder",
        lock.pk,
    )


def _release_shown(queryset, locks):
    """Delete each of `locks` by its id, from `queryset`'s database. Returns those deleted."""
    return [lock for lock in locks if queryset.filter(pk=lock.pk).delete()[0]]


def _release_stale(alias, locks, stale_after):
    """Delete each of `locks` only if it is still stale. Returns those deleted.

    Each DELETE is a _run of its own, sent once (see _sent_once): a deadlock
    that InnoDB resolves by rolling one back repeats that one, not the rows
    already deleted, which a repeat would find gone and not count.
    """
    sql = _DELETE_STALE[connections[alias].vendor]
    return [
        lock
        for lock in locks
        if _run(alias, _rowcount, sql, [lock.pk, stale_after], again=False) == 1
    ]


def _log_release(who, how, locks, stale_after):
    logger.warning(
        "%s released %d lock(s) %s: %s.",
        who,
        len(locks),
        how,
        ", ".join(_described(lock, stale_after) for lock in locks),
    )


# The admin's confirmation page: which of the selected locks run, and who holds them.
_CONFIRM_RELEASE = """{% extends "admin/base_site.html" %}
{% block bodyclass %}{{ block.super }} marathon-release-confirmation{% endblock %}
{% block breadcrumbs %}<div class="breadcrumbs"><a href="{{ index_url }}">Home</a>
&rsaquo; <a href="{{ app_url }}">{{ opts.app_config.verbose_name }}</a>
&rsaquo; <a href="{{ changelist_url }}">{{ opts.verbose_name_plural|capfirst }}</a> &rsaquo; {{ title }}</div>
{% endblock %}
{% block content %}
{% if running %}
<p class="errornote" id="running">{{ running|length }} of these locks {{ running|length|pluralize:"is,are" }} running:
{% for lock in running %}<strong>{{ lock.name }}</strong>, held by {{ lock.owner }}{% if not forloop.last %};
{% endif %}{% endfor %}. Releasing does not stop a holder: another run may start at once, while the holder
goes on until its next heartbeat finds the lock lost.</p>
{% endif %}
<p>Release {{ locks|length }} lock{{ locks|length|pluralize }}? A lock that another holder takes in the meantime is
left alone.</p>
<table id="locks">
<thead><tr><th>Name</th><th>State</th><th>Owner</th><th>Held for</th><th>Last heartbeat</th><th>Stale after</th>
<th>Fence</th></tr></thead>
<tbody>{% for lock in locks %}
<tr class="{{ lock.state }}"><td>{{ lock.name }}</td><td>{{ lock.state }}</td><td>{{ lock.owner }}</td>
<td>{{ lock.held_for }}</td><td>{{ lock.last_heartbeat }}</td><td>{{ lock.stale_after }}</td>
<td>{{ lock.fence }}</td></tr>{% endfor %}
</tbody>
</table>
<form method="post">{% csrf_token %}
{% for lock in locks %}<input type="hidden" name="{{ checkbox_name }}" value="{{ lock.fence }}">
{% endfor %}<input type="hidden" name="action" value="release_locks">
<input type="hidden" name="post" value="yes">
<input type="submit" value="Yes, release {{ locks|length|pluralize:'it,them' }}">
<a href="{{ changelist_url }}" class="button cancel-link">No, take me back</a>
</form>
{% endblock %}
"""


def _register_admin(site):
    from django.contrib import admin
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
    from django.contrib.auth import get_permission_codename
    from django.template.loader import get_template
    from django.template.response import TemplateResponse
    from django.urls import reverse
    from django.utils.html import format_html

    class StateFilter(admin.SimpleListFilter):
        title = "state"
        parameter_name = "state"

        def lookups(self, request, model_admin):
            return [
                ("running", "running"),
                ("stale", "stale"),
                ("manual", "manual (no heartbeat)"),
            ]

        def queryset(self, request, queryset):
            limit = Coalesce(
                "stale_after", Value(float(_setting("MARATHON_STALE_AFTER")))
            )
            return {
                "running": lambda: queryset.filter(heartbeat_age__lte=limit),
                "stale": lambda: queryset.filter(heartbeat_age__gt=limit),
                "manual": lambda: queryset.filter(heartbeat_at__isnull=True),
            }.get(self.value(), lambda: queryset)()

    def column(description, order=None):
        """What @admin.display (Django 3.2+) does."""

        def describe(method):
            method.short_description = description
            if order:
                method.admin_order_field = order
            return method

        return describe

    class ReadOnly:
        """Rows are written by their holders only: renaming a held lock would let a second
        holder take the old name; a row added here has no heartbeat; Django's delete would
        release without the log and the confirmation; a last run is a record."""

        def has_add_permission(self, request, *args):
            return False

        def has_change_permission(self, request, obj=None):
            return False

        def has_delete_permission(self, request, obj=None):
            return False

    class LockAdmin(ReadOnly, admin.ModelAdmin):
        """Read-only: a lock's row belongs to its holder. Releasing is the one action, confirmed and logged."""

        list_display = (
            "name",
            "state",
            "holder",
            "held_for",
            "last_heartbeat",
            "holder_stale_after",
            "fence",
        )
        list_filter = (StateFilter,)
        search_fields = ("name", "owner")
        ordering = ("name",)
        fields = readonly_fields = (
            "name",
            "state",
            "holder",
            "fence",
            "held_since",
            "held_for",
            "last_heartbeat",
            "holder_stale_after",
        )
        actions = ["release_locks"]

        def get_queryset(self, request):
            queryset = super().get_queryset(request)
            return _with_state(queryset, connections[queryset.db].vendor)

        def has_release_permission(self, request):
            """Releasing needs the delete permission on locks."""
            codename = get_permission_codename("delete", self.opts)
            return request.user.has_perm("%s.%s" % (self.opts.app_label, codename))

        def _shown(self, lock):
            return _shown(lock, _setting("MARATHON_STALE_AFTER"))

        def _time(self, lock, value):
            return _for_people(
                _aware(
                    value, connections[lock._state.db].vendor, by_hand=not lock.token
                )
            )

        @column("state")
        def state(self, lock):
            return self._shown(lock).state

        @column("owner", "owner")
        def holder(self, lock):
            return self._shown(lock).owner

        @column("fence", "id")
        def fence(self, lock):
            return lock.pk

        @column("held since", "locked_at")
        def held_since(self, lock):
            return self._time(lock, lock.locked_at)

        @column("held for", "held_for")
        def held_for(self, lock):
            return format_html(
                '<span title="since {}">{}</span>',
                self._time(lock, lock.locked_at),
                self._shown(lock).held_for,
            )

        @column("last heartbeat", "heartbeat_age")
        def last_heartbeat(self, lock):
            if lock.heartbeat_at is None:
                return "never"
            return format_html(
                '<span title="at {}">{}</span>',
                self._time(lock, lock.heartbeat_at),
                self._shown(lock).last_heartbeat,
            )

        @column("stale after", "stale_after")
        def holder_stale_after(self, lock):
            return self._shown(lock).stale_after

        @column("Release selected locks")
        def release_locks(self, request, queryset):
            """Show which selected locks are running and who holds them; release on confirmation."""
            stale_after = _setting("MARATHON_STALE_AFTER")
            locks = list(queryset.order_by("name"))
            if request.POST.get("post") != "yes":
                return self._confirm_release(
                    request, [_shown(lock, stale_after) for lock in locks]
                )
            released = _release_shown(_model().objects.all(), locks)
            if released:
                _log_release(
                    request.user.get_username(), "in the admin", released, stale_after
                )
            gone = len(request.POST.getlist(ACTION_CHECKBOX_NAME)) - len(released)
            self.message_user(
                request,
                "Released %d lock(s)%s%s"
                % (
                    len(released),
                    ": %s." % ", ".join(lock.name for lock in released)
                    if released
                    else ".",
                    " %d selected lock(s) were gone already: released, or taken over by a holder that keeps it."
                    % gone
                    if gone
                    else "",
                ),
            )
            return None

        release_locks.allowed_permissions = ("release",)

        def _confirm_release(self, request, locks):
            changelist = reverse(
                "admin:%s_%s_changelist" % (self.opts.app_label, self.opts.model_name),
                current_app=self.admin_site.name,
            )
            context = dict(
                self.admin_site.each_context(request),
                title="Release locks",
                opts=self.opts,
                locks=locks,
                running=[lock for lock in locks if lock.state == "running"],
                checkbox_name=ACTION_CHECKBOX_NAME,
                changelist_url=changelist,
                index_url=reverse("admin:index", current_app=self.admin_site.name),
                app_url=reverse(
                    "admin:app_list",
                    args=(self.opts.app_label,),
                    current_app=self.admin_site.name,
                ),
            )
            # From a string, with the engine that renders the admin: this module has no template folder.
            template = get_template("admin/base_site.html").backend.from_string(
                _CONFIRM_RELEASE
            )
            return TemplateResponse(request, template, context)

    class LastRunAdmin(ReadOnly, admin.ModelAdmin):
        """Read-only: the last run of each lock that has a min_interval, as its holders wrote it."""

        list_display = ("name", "outcome", "finished", "took", "owner", "fence")
        list_filter = ("outcome",)
        search_fields = ("name", "owner")
        ordering = ("name",)
        fields = readonly_fields = (
            "name",
            "outcome",
            "started",
            "finished",
            "took",
            "owner",
            "fence",
        )

        def get_queryset(self, request):
            queryset = super().get_queryset(request)
            return _with_run_age(queryset, connections[queryset.db].vendor)

        def _time(self, run, value):
            return _for_people(_aware(value, connections[run._state.db].vendor))

        @column("started", "started_at")
        def started(self, run):
            return (
                "unknown" if run.started_at is None else self._time(run, run.started_at)
            )

        @column("finished", "finished_age")
        def finished(self, run):
            return format_html(
                '<span title="at {}">{} ago</span>',
                self._time(run, run.finished_at),
                _duration(run.finished_age),
            )

        @column("duration", "duration")
        def took(self, run):
            return "unknown" if run.duration is None else _duration(run.duration)

    site.register(_model(), LockAdmin)
    site.register(globals()["LastRun"], LastRunAdmin)


_EPILOG = """\
exit status: 0 if a lock was listed or released, 1 if none was, 2 for a
usage or settings error, 3 if the database failed; for run, see run --help.

Every release is logged on the logger "marathon" with who ran it (user@host).
Needs the project's settings, as django-admin does: DJANGO_SETTINGS_MODULE
names them, and PYTHONPATH holds the project if it is not the current directory."""


def _parser():
    """The parser of `python -m marathon`, and those of its commands release and run."""
    import argparse

    database = argparse.ArgumentParser(
        add_help=False
    )  # accepted before and after the command
    database.add_argument(
        "--database",
        metavar="ALIAS",
        default=argparse.SUPPRESS,
        help="the database of the locks (default: MARATHON_DATABASE, else the router's)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m marathon",
        description="List the locks of django-marathon, release some, or run a command under one.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[database],
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True  # the keyword needs Python 3.7
    commands.add_parser(
        "list",
        help="list the locks: name, state, owner, held for, last heartbeat, stale after, fence",
        description="List the locks, by the database's clock.",
        parents=[database],
        allow_abbrev=False,
    )
    release = commands.add_parser(
        "release",
        help="release locks by name, or every stale one",
        description="Release locks by name (a lock's holder finds it lost at its next heartbeat), "
        "or with --stale every stale lock, each only if it is still stale.",
        parents=[database],
        allow_abbrev=False,
    )
    release.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="a lock's name (after -- if it starts with -)",
    )
    release.add_argument(
        "--stale", action="store_true", help="release every stale lock instead"
    )
    run = commands.add_parser(
        "run",
        help="run a command while holding a lock: one copy of it across hosts",
        description="Run CMD as a child while holding the lock NAME. Exit status: CMD's (128 + the signal "
        "if one ended it, 127 if it cannot be run), 75 if --wait ran out, 70 if the lock was lost.",
        usage="python -m marathon run NAME [--wait S] [--heartbeat S] [--stale-after S] [--database ALIAS] "
        "-- CMD [ARGS...]",
        parents=[database],
        allow_abbrev=False,
    )
    run.add_argument("name", metavar="NAME")
    run.add_argument(
        "--wait",
        type=float,
        default=None,
        help="seconds to wait for the lock (default: for ever)",
    )
    run.add_argument("--heartbeat", type=float, default=None)
    run.add_argument("--stale-after", type=float, default=None)
    return parser, release, run


def _main(argv):
    """The shell tool: `python -m marathon list|release|run`. Returns the exit status."""
    parser, release, run = _parser()
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    command = argv[
        split + 1 :
    ]  # run's CMD; elsewhere `--` only ends the options (release -- -name)
    try:
        args = parser.parse_args(argv[:split])
        if args.command != "run":
            args = parser.parse_args(argv)
        elif not command:
            run.error("the command to run comes after --")
        if args.command == "release" and args.stale and args.names:
            release.error(
                "--stale releases every stale lock and takes no names; got %s"
                % " ".join(args.names)
            )
        if args.command == "release" and not args.stale and not args.names:
            release.error("name the locks to release, or give --stale")
    except SystemExit as exit:  # argparse printed the help (0) or a usage error (2)
        return exit.code
    try:
        _setup()
        alias = _alias(getattr(args, "database", None))
        if alias not in settings.DATABASES:
            raise CommandError(
                "no database %r in DATABASES (%s)."
                % (alias, ", ".join(sorted(settings.DATABASES))),
                returncode=2,
            )
        if connections[alias].vendor not in _NOW:  # one line, not a KeyError later
            raise CommandError(_unsupported(connections[alias]), returncode=2)
        if (
            args.command == "run"
        ):  # its exit status is the child's: see the section on the supervisor
            return _supervise(
                args.name, command, args.wait, args.heartbeat, args.stale_after, alias
            )
        try:
            if args.command == "list":
                return _list(alias)
            return _release(alias, args.names, args.stale)
        except Error as exc:
            raise CommandError(_database_failed(alias, exc), returncode=3) from exc
        finally:
            with contextlib.suppress(Error):  # a dead connection may fail to close
                connections[alias].close()
    except CommandError as error:
        print("python -m marathon: error: %s" % error, file=sys.stderr)
        return error.returncode


def _setup():
    """django.setup() with the project's settings, or CommandError(returncode=2) saying what is missing."""
    from django.core.exceptions import ImproperlyConfigured

    module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not module:
        raise CommandError(
            "DJANGO_SETTINGS_MODULE is not set: name your settings module, as for django-admin "
            "(DJANGO_SETTINGS_MODULE=mysite.settings python -m marathon ...).",
            returncode=2,
        )
    try:
        django.setup()
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        hint = ""
        if missing and (module + ".").startswith(missing + "."):
            hint = " Is the directory that holds it on PYTHONPATH (or the current directory)?"
        raise CommandError(
            "cannot import the settings %r: %s.%s" % (module, exc, hint), returncode=2
        ) from exc
    except ImproperlyConfigured as exc:
        raise CommandError(
            "the settings %r are not usable: %s" % (module, exc), returncode=2
        ) from exc
    if not _apps.is_installed("marathon"):
        raise CommandError(
            "'marathon' is not in INSTALLED_APPS of the settings %r." % module,
            returncode=2,
        )


def _database_failed(alias, exc):
    """One line: which database failed, and how."""
    connection = connections[alias]
    where = connection.settings_dict.get("NAME") or ""
    if connection.settings_dict.get("HOST"):
        where = "%s at %s:%s" % (
            where,
            connection.settings_dict["HOST"],
            connection.settings_dict.get("PORT") or "",
        )
    text = next(
        (line.strip() for line in str(exc).splitlines() if line.strip()),
        type(exc).__name__,
    )
    hint = (
        " (has `manage.py migrate` created the table marathon_lock?)"
        if "marathon_lock" in text
        else ""
    )
    return "database %r (%s %s) failed: %s%s" % (
        alias,
        connection.vendor,
        where,
        text,
        hint,
    )


def _locks(alias):
    return list(
        _with_state(
            _model().objects.using(alias).order_by("name"), connections[alias].vendor
        )
    )


def _list(alias):
    stale_after = _setting("MARATHON_STALE_AFTER")
    locks = _locks(alias)
    _print_table(
        [
            (
                "NAME",
                "STATE",
                "OWNER",
                "HELD FOR",
                "LAST HEARTBEAT",
                "STALE AFTER",
                "FENCE",
            )
        ]
        + [_shown(lock, stale_after) for lock in locks]
    )
    _model()
    runs = _with_run_age(
        globals()["LastRun"].objects.using(alias).order_by("name"),
        connections[alias].vendor,
    )
    rows = [
        (
            run.name,
            run.outcome,
            _duration(run.finished_age) + " ago",
            "unknown" if run.duration is None else _duration(run.duration),
            run.owner or "-",
            str(run.fence),
        )
        for run in runs
    ]
    if rows:  # the last runs of the locks with a min_interval
        print()
        _print_table(
            [("LAST RUN OF", "OUTCOME", "FINISHED", "DURATION", "BY", "FENCE")] + rows
        )
    return 0 if locks else 1


def _print_table(rows):
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _release(alias, names, stale):
    stale_after = _setting("MARATHON_STALE_AFTER")
    if stale:
        candidates = [
            lock for lock in _locks(alias) if _state(lock, stale_after) == "stale"
        ]
        released = _release_stale(alias, candidates, stale_after)
    else:
        found = {
            lock.name: lock
            for lock in _with_state(
                _model().objects.using(alias).filter(name__in=names),
                connections[alias].vendor,
            )
        }
        for name in names:
            if name not in found:
                print("No lock named %r." % name, file=sys.stderr)
        chosen = [found[name] for name in dict.fromkeys(names) if name in found]
        released = _release_shown(_model().objects.using(alias), chosen)
    if released:
        _log_release(_operator(), "with python -m marathon", released, stale_after)
    print(
        "Released %d lock(s)%s"
        % (
            len(released),
            ": " + ", ".join(lock.name for lock in released) if released else ".",
        )
    )
    for lock in released:
        if _state(lock, stale_after) == "running":
            print(
                "%r was running, held by %s: it goes on until its next heartbeat finds the lock lost."
                % (lock.name, lock.owner or "an unknown holder")
            )
    return 0 if released else 1


def _operator():
    """Who runs this process, for the log: user@host, and whom sudo ran it for."""
    import getpass

    try:
        user = getpass.getuser()
    except (
        Exception
    ):  # no name for this uid (a container); Python 3.13 raises OSError, older KeyError
        user = "uid %s" % (os.getuid() if hasattr(os, "getuid") else "?")
    sudo = os.environ.get("SUDO_USER")
    return "%s@%s%s" % (
        user,
        socket.gethostname(),
        " (sudo from %s)" % sudo if sudo and sudo != user else "",
    )


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
        if _apps.is_installed("django.contrib.admin"):
            from django.contrib import admin

            _register_admin(admin.site)


# ---- Import-system glue ----
# Django expects an app to be a package with submodules; these lines let this
# one module be the app `marathon`. Each is pinned by a test in tests/test_app.py.


_SUBMODULES = ("apps", "models", "commands", "mixins")  # 0.1's import paths


class _Module(types.ModuleType):
    def __getattr__(self, name):
        # `from marathon.models import Lock` in an app listed before marathon
        # runs before MarathonConfig.import_models(): build the model on demand.
        if name == "Lock":
            return _model()
        if name == "LastRun":
            _model()
            return globals()["LastRun"]
        # `import marathon.models as m` reads the attribute `models` of marathon
        # (Python 3.6 without falling back to sys.modules).
        if name in _SUBMODULES:
            return self
        raise AttributeError("module %r has no attribute %r" % (self.__name__, name))


sys.modules[
    __name__
].__class__ = _Module  # one mechanism on every Python (PEP 562 needs 3.7)
__path__: List[
    str
] = []  # without it Django ignores MarathonConfig: it only looks for apps in packages
for _submodule in _SUBMODULES:
    sys.modules["%s.%s" % (__name__, _submodule)] = sys.modules[__name__]
sys.modules[__name__ + ".migrations"] = (
    marathon_migrations  # where Django looks for migrations
)
if django.VERSION < (3, 2):
    default_app_config = (
        "marathon.MarathonConfig"  # 3.2+ finds it in marathon.apps, and warns
    )
if (
    __name__ == "__main__"
):  # python -m marathon: run the shell tool in the real module, not in __main__
    import marathon

    sys.exit(marathon._main(sys.argv[1:]))
