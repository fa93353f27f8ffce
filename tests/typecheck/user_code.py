"""A user's code, as marathon's types should look to it.

Checked, never run: `tox -e types` type-checks it with mypy --strict and
pyright in strict mode against the installed package (marathon-stubs). Each
assert_type() fails if the name it looks at were Any. pytest does not collect
it (not a test_*.py file) and nothing imports it.
"""

import datetime
from typing import Any, List, Optional

from django.core.management.base import BaseCommand, CommandParser
from django.dispatch import Signal, receiver
from marathon.commands import SingleRunnerCommand as CommandOf01
from marathon.mixins import SingleRunner
from marathon.models import Lock as LockOf01
from typing_extensions import assert_type

from marathon import (
    AlreadyRunning,
    LastRun,
    Lock,
    LockLost,
    Marathon,
    MarathonError,
    RanRecently,
    SingleRunnerCommand,
    lock_acquired,
    lock_lost,
    lock_released,
    lock_skipped,
)

# ---- Marathon: the object, the context managers, the decorator ----


def notify(lock: Marathon) -> None:
    assert_type(lock.name, str)


lock = Marathon("import-feed", wait=2.5, on_lost=notify, min_interval=3600)
assert_type(lock, Marathon)
assert_type(lock.name, str)
assert_type(lock.wait, float)
assert_type(lock.using, Optional[str])
assert_type(lock.min_interval, Optional[float])
assert_type(lock.acquire(), bool)
assert_type(lock.acquire(wait=1), bool)
assert_type(lock.held, bool)
assert_type(lock.lost, bool)
assert_type(lock.fence, Optional[int])
assert_type(lock.owner, Optional[str])
assert_type(lock.check(), None)
assert_type(lock.release(), bool)

with Marathon("search-index", wait=60) as held:
    assert_type(held, Marathon)


class NamedMarathon(Marathon):
    pass


with NamedMarathon("subclass") as sub:
    assert_type(sub, NamedMarathon)


@Marathon("sync-shop-{shop_id}", on_held="skip")
def sync(shop_id: int, full: bool = False) -> List[str]:
    return []


assert_type(sync(1), List[str])
assert_type(sync(2, full=True), List[str])


@Marathon("refresh-{feed}", wait=5)
async def refresh(feed: str) -> int:
    return len(feed)


async def main() -> None:
    assert_type(await refresh("news"), int)
    async with Marathon("nightly-report") as taken:
        assert_type(taken, Marathon)
    assert_type(await lock.aacquire(), bool)
    assert_type(await lock.arelease(), bool)


# ---- The exceptions ----

try:
    with Marathon("nightly"):
        pass
except RanRecently as skipped:
    assert_type(skipped.name, str)
    assert_type(skipped.owner, Optional[str])
    assert_type(skipped.finished_at, Optional[datetime.datetime])
    assert_type(skipped.min_interval, Optional[float])
except AlreadyRunning as error:
    assert_type(error.name, str)
    assert_type(error.owner, Optional[str])
    assert_type(error.locked_at, Optional[datetime.datetime])
    assert_type(error.heartbeat_at, Optional[datetime.datetime])
except LockLost as lost:
    assert_type(lost.name, str)
    assert_type(lost.reason, str)
except MarathonError as other:
    assert_type(other, MarathonError)

# ---- A management command ----


class Command(SingleRunnerCommand, BaseCommand):
    help = "Sync one shop's stock."
    lock_name = "sync-shop-{shop}"
    lock_wait = 30
    lock_held_exit_code = 75
    lock_min_interval = 60.0

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--shop", type=int, required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        assert_type(self.lock, Optional[Marathon])
        assert_type(self.get_lock_name(**options), str)
        if self.lock is not None:
            assert_type(self.lock.fence, Optional[int])


class OldCommand(CommandOf01, BaseCommand):
    lock_name = "cleanup"

    def run_task(self, *args: Any, **options: Any) -> None:
        assert_type(self.get_lock_name(), str)


class OldMixin(SingleRunner):
    lock_name = "old"


assert_type(OldMixin().is_locked(), bool)
assert_type(OldMixin().release_lock(), None)

# ---- Signals ----

assert_type(lock_acquired, Signal)
assert_type(lock_released, Signal)
assert_type(lock_lost, Signal)
assert_type(lock_skipped, Signal)


@receiver(lock_lost)
def page_someone(
    sender: type,
    name: str,
    owner: Optional[str],
    fence: Optional[int],
    **kwargs: object,
) -> None:
    print("ALERT: %s lost the lock %r (fence %s)" % (owner, name, fence))


# ---- The models ----

row = Lock.objects.get(name="nightly")
assert_type(row, Lock)
assert_type(row.id, int)
assert_type(row.name, str)
assert_type(row.locked_at, datetime.datetime)
assert_type(row.heartbeat_at, Optional[datetime.datetime])
assert_type(row.owner, str)
assert_type(row.stale_after, Optional[float])
made, created = LockOf01.objects.get_or_create(name="my-unique-task-lock")
assert_type(made, LockOf01)
assert_type(created, bool)

last = LastRun.objects.filter(outcome="ok").first()
assert_type(last, Optional[LastRun])
if last is not None:
    assert_type(last.finished_at, datetime.datetime)
    assert_type(last.started_at, Optional[datetime.datetime])
    assert_type(last.fence, int)
    assert_type(last.outcome, str)
    assert_type(last.duration, Optional[float])
