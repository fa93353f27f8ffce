# Types of django-marathon for users' type checkers: the stub-only package of
# PEP 561 for the module marathon.py, which cannot carry py.typed. The types
# repeat marathon.py's annotations; `tox -e types` fails if the two disagree
# (tests/typecheck/compare_stub.py) or if this stub disagrees with the running
# module (mypy's stubtest).

import datetime
import types
from typing import Any, Callable, ClassVar, Literal, TypeVar

from django.apps import AppConfig
from django.db import models
from django.db.models.expressions import Combinable
from django.dispatch import Signal
from typing_extensions import ParamSpec, Self

__all__ = [
    "AlreadyRunning",
    "LastRun",
    "Lock",
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
__version__: str

_P = ParamSpec("_P")
_R = TypeVar("_R")
_MarathonT = TypeVar("_MarathonT", bound=Marathon)
_OnHeld = Literal["raise", "skip"]
_ModelT = TypeVar("_ModelT", bound=models.Model)

# ---- Signals ----
# Receivers get keyword arguments name (str), owner (str | None) and fence
# (int | None); lock_acquired also took_over (bool), lock_skipped also reason
# ("held" or "ran recently"). The sender is Marathon, or for lock_skipped the
# command's class.

lock_acquired: Signal
lock_released: Signal
lock_lost: Signal
lock_skipped: Signal

# ---- Exceptions ----

class MarathonError(Exception): ...

class AlreadyRunning(MarathonError):
    name: str
    owner: str | None
    locked_at: datetime.datetime | None
    heartbeat_at: datetime.datetime | None
    def __init__(
        self,
        name: str,
        owner: str | None = None,
        locked_at: datetime.datetime | None = None,
        heartbeat_at: datetime.datetime | None = None,
    ) -> None: ...

class RanRecently(AlreadyRunning):
    finished_at: datetime.datetime | None
    min_interval: float | None
    def __init__(
        self,
        name: str,
        owner: str | None = None,
        finished_at: datetime.datetime | None = None,
        min_interval: float | None = None,
    ) -> None: ...

class LockLost(MarathonError):
    name: str
    reason: str
    def __init__(self, name: str, reason: str) -> None: ...

# ---- The models (built on first access at run time) ----

class _LockManager(models.Manager[_ModelT]): ...

class Lock(models.Model):
    id: models.BigAutoField[int | str | Combinable, int]
    name: models.CharField[str | int | Combinable, str]
    locked_at: models.DateTimeField[
        str | datetime.datetime | datetime.date | Combinable, datetime.datetime
    ]
    heartbeat_at: models.DateTimeField[
        str | datetime.datetime | datetime.date | Combinable | None,
        datetime.datetime | None,
    ]
    owner: models.CharField[str | int | Combinable, str]
    token: models.CharField[str | int | Combinable, str]
    stale_after: models.FloatField[float | int | str | Combinable | None, float | None]
    objects: ClassVar[_LockManager[Self]]
    def save(self, *args: Any, **kwargs: Any) -> None: ...

class LastRun(models.Model):
    OUTCOMES: list[tuple[str, str]]
    id: models.BigAutoField[int | str | Combinable, int]
    name: models.CharField[str | int | Combinable, str]
    started_at: models.DateTimeField[
        str | datetime.datetime | datetime.date | Combinable | None,
        datetime.datetime | None,
    ]
    finished_at: models.DateTimeField[
        str | datetime.datetime | datetime.date | Combinable, datetime.datetime
    ]
    owner: models.CharField[str | int | Combinable, str]
    fence: models.BigIntegerField[float | int | str | Combinable, int]
    outcome: models.CharField[str | int | Combinable, str]
    duration: models.FloatField[float | int | str | Combinable | None, float | None]
    objects: ClassVar[_LockManager[Self]]

# ---- Marathon ----

class Marathon:
    name: str
    wait: float
    heartbeat: float | None
    stale_after: float | None
    using: str | None
    on_lost: Callable[[Marathon], object] | None
    min_interval: float | None
    on_held: _OnHeld
    def __init__(
        self,
        name: str,
        *,
        wait: float = 0,
        heartbeat: float | None = None,
        stale_after: float | None = None,
        using: str | None = None,
        on_lost: Callable[[Marathon], object] | None = None,
        min_interval: float | None = None,
        on_held: _OnHeld = "raise",
    ) -> None: ...
    @property
    def held(self) -> bool: ...
    @property
    def lost(self) -> bool: ...
    @property
    def fence(self) -> int | None: ...
    @property
    def owner(self) -> str | None: ...
    def check(self) -> None: ...
    def acquire(self, wait: float | None = None) -> bool: ...
    async def aacquire(self, wait: float | None = None) -> bool: ...
    def release(self) -> bool: ...
    async def arelease(self) -> bool: ...
    def __enter__(self: _MarathonT) -> _MarathonT: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None: ...
    async def __aenter__(self: _MarathonT) -> _MarathonT: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None: ...
    # With on_held="skip" a refused call returns None (an async function's
    # coroutine returns None), which this type does not say.
    def __call__(self, func: Callable[_P, _R]) -> Callable[_P, _R]: ...

# ---- SingleRunnerCommand (mixed into a BaseCommand, before it) ----

class SingleRunnerCommand:
    lock_name: str | None
    lock_wait: float
    lock_held_exit_code: int
    lock_min_interval: float | None
    lock: Marathon | None
    def get_lock_name(self, *args: Any, **options: Any) -> str: ...
    def execute(self, *args: Any, **options: Any) -> str | None: ...
    def handle(self, *args: Any, **options: Any) -> str | None: ...
    def run_task(self, *args: Any, **options: Any) -> str | None: ...

# ---- 0.1's names, outside __all__ ----

class SingleRunner:
    lock_name: str | None
    def is_locked(self) -> bool: ...
    def release_lock(self) -> None: ...

class MarathonConfig(AppConfig): ...
