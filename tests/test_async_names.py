"""Issue 10: `async with Marathon`, aacquire/arelease, async decorators, and names filled from arguments.

Async tests run their own event loop (Python 3.6 has no asyncio.run); the
other holder is always a real process.
"""

import asyncio
import collections
import io
import json
import threading

import pytest
from django.core.management import call_command
from django.db import connection

import marathon
from marathon import AlreadyRunning, Lock, Marathon
from tests.processes import (
    DEADLINE,
    FAST,
    run_python,
)
from tests.processes import (
    run_coroutine as run,
)

pytestmark = pytest.mark.django_db(transaction=True)


def rows(name):
    return Lock.objects.using("default").filter(name=name).count()


def seen_from_another_process(name):
    """Whether another process finds `name` held (it tries once, at once)."""
    code, out, err = run_python(["-m", "tests.processes", "try", name, "0"])
    assert code == 0, err
    return not json.loads(out)["acquired"]


# ---- async with, aacquire, arelease ----


def test_async_with_holds_the_lock_across_awaits():
    async def job():
        loop = asyncio.get_event_loop()
        async with Marathon("async-held", **FAST) as lock:
            await asyncio.sleep(0.05)
            held_elsewhere = await loop.run_in_executor(
                None, seen_from_another_process, "async-held"
            )
            return lock.held, held_elsewhere, lock.fence

    held, held_elsewhere, fence = run(job())
    assert held and held_elsewhere and fence
    assert rows("async-held") == 0


def test_aacquire_and_arelease_mean_what_acquire_and_release_mean(holder):
    release_holder = holder("async-taken")["release"]

    async def job():
        lock = Marathon("async-taken", **FAST)
        first = await lock.aacquire()
        release_holder()
        second = await lock.aacquire(wait=DEADLINE)
        return first, second, await lock.arelease(), await lock.arelease()

    assert run(job()) == (False, True, True, False)


def test_async_with_raises_already_running_with_the_holder(holder):
    holder("async-busy")

    async def job():
        async with Marathon("async-busy", **FAST):
            pytest.fail("the block must not run")  # pragma: no cover

    with pytest.raises(AlreadyRunning) as raised:
        run(job())
    assert raised.value.owner and raised.value.name == "async-busy"


def test_the_event_loop_keeps_ticking_while_waiting(holder):
    release_holder = holder("async-wait")["release"]
    ticks = []

    async def ticker(stop):
        while not stop.is_set():
            ticks.append(1)
            await asyncio.sleep(0.01)

    async def job():
        stop = asyncio.Event()
        ticking = asyncio.ensure_future(ticker(stop))
        lock = Marathon("async-wait", wait=DEADLINE, **FAST)
        waiting = asyncio.ensure_future(lock.aacquire())
        await asyncio.sleep(0.5)
        before_release = len(ticks)
        release_holder()
        got = await waiting
        stop.set()
        await ticking
        await lock.arelease()
        return before_release, got

    before_release, got = run(job())
    assert got
    assert before_release >= 20  # about 50 ticks in 0.5 s; a blocked loop makes none


def test_a_task_cancelled_while_waiting_leaves_nothing_behind(holder):
    release_holder = holder("async-cancel-wait")["release"]

    async def job():
        lock = Marathon("async-cancel-wait", wait=DEADLINE, **FAST)
        waiting = asyncio.ensure_future(lock.aacquire())
        await asyncio.sleep(0.3)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return lock

    lock = run(job())
    release_holder()
    assert not lock.held
    assert (
        Lock.objects.using("default")
        .filter(name="async-cancel-wait", owner=lock.owner or "-")
        .count()
        == 0
    )


def test_a_task_cancelled_while_its_attempt_succeeds_releases_it():
    """The attempt runs in a thread that cannot be stopped: it takes the lock after the cancel."""
    lock = Marathon("async-cancel-attempt", **FAST)
    _cancel_while_the_attempt_runs(lock, times=1)
    assert not lock.held
    assert rows("async-cancel-attempt") == 0


def test_a_task_cancelled_inside_the_block_releases_the_lock():
    entered = []

    async def job():
        async with Marathon("async-cancel-block", **FAST):
            entered.append(rows_in_thread("async-cancel-block"))
            await asyncio.sleep(DEADLINE)

    async def main():
        task = asyncio.ensure_future(job())
        while not entered:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    def rows_in_thread(name):
        return name  # the block was entered

    run(main())
    assert rows("async-cancel-block") == 0


def test_async_decorator_takes_the_lock_for_each_call():
    events = collections.defaultdict(list)

    @Marathon("async-shop-{shop}", **FAST)
    async def sync_shop(shop, gate):
        events[shop].append("start")
        await gate.wait()
        events[shop].append("end")
        return shop

    async def main():
        gate = asyncio.Event()
        first = asyncio.ensure_future(sync_shop(1, gate))
        other_shop = asyncio.ensure_future(sync_shop(2, gate))
        while len(events) < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(AlreadyRunning):
            await sync_shop(1, gate)
        gate.set()
        return await first, await other_shop

    assert run(main()) == (1, 2)
    assert events == {1: ["start", "end"], 2: ["start", "end"]}
    assert rows("async-shop-1") == rows("async-shop-2") == 0


# ---- names filled from arguments ----


def test_a_name_field_gives_a_lock_per_argument():
    inside = threading.Event()
    leave = threading.Event()

    @Marathon("sync-shop-{shop_id}", **FAST)
    def sync(shop_id, block=False):
        if block:
            inside.set()
            leave.wait(DEADLINE)
        return (
            Lock.objects.using("default").filter(name="sync-shop-%s" % shop_id).exists()
        )

    def in_thread():
        try:
            sync(1, block=True)
        finally:
            connection.close()  # this thread's own

    first = threading.Thread(target=in_thread)
    first.start()
    try:
        assert inside.wait(DEADLINE)
        assert sync(2) is True  # another shop runs side by side
        with pytest.raises(AlreadyRunning):
            sync(1)  # the same shop excludes
    finally:
        leave.set()
        first.join(DEADLINE)


def test_fields_use_attributes_indexes_defaults_and_literal_braces():
    names = []

    @Marathon("order-{order.pk}-{items[0]}-{region}-{{x}}", **FAST)
    def ship(order, items, region="eu"):
        names.append(
            Lock.objects.using("default").filter(name__startswith="order-").get().name
        )

    ship(collections.namedtuple("Order", "pk")(7), ["a"])
    ship(order=collections.namedtuple("Order", "pk")(8), items=("b",), region="us")
    assert names == ["order-7-a-eu-{x}", "order-8-b-us-{x}"]


def test_a_name_without_fields_is_the_name_as_before():
    @Marathon("plain {{braces}} stay", **FAST)
    def job():
        return Lock.objects.using("default").get().name

    assert job() == "plain {{braces}} stay"


def test_a_field_that_names_no_parameter_fails_at_decoration():
    with pytest.raises(ValueError, match=r"\{shop\}.*no parameter 'shop'"):

        @Marathon("sync-{shop}")
        def sync(shop_id):
            pass  # pragma: no cover

    with pytest.raises(ValueError, match="not a valid template"):

        @Marathon("sync-{shop_id")
        def sync2(shop_id):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    "value, message", [("", "empty"), ("x" * 300, "at most 255"), ("a\x00b", "NUL")]
)
def test_a_filled_name_that_breaks_the_rules_fails_before_any_query(
    value, message, django_assert_num_queries
):
    @Marathon("{value}", **FAST)
    def job(value):
        pytest.fail("must not run")  # pragma: no cover

    with django_assert_num_queries(0):
        with pytest.raises(ValueError, match=message):
            job(value)


# ---- SingleRunnerCommand.lock_name from options ----


def test_command_lock_name_is_filled_from_options(running):
    out, err = io.StringIO(), io.StringIO()
    call_command("marathon_template", "--shop", "3", stdout=out, stderr=err)
    facts = json.loads(
        [line for line in out.getvalue().splitlines() if line.startswith("FACTS ")][0][
            6:
        ]
    )
    assert facts["lock"] == "sync-shop-3" and facts["row"] is True
    # Another shop runs while shop 3 is held (until the test ends); shop 3 itself skips.
    running("marathon_template", "--shop", "3")
    out, err = io.StringIO(), io.StringIO()
    call_command("marathon_template", "--shop", "4", stdout=out, stderr=err)
    assert "Task completed." in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    call_command("marathon_template", "--shop", "3", stdout=out, stderr=err)
    assert (
        "already running" in err.getvalue() and "Task completed." not in out.getvalue()
    )


# ---- What the second review found ----


def _cancel_while_the_attempt_runs(lock, times):
    """Cancel the task `times` times while its attempt is stopped in its thread, just after the insert."""
    reached, go = threading.Event(), threading.Event()

    def hook(point, **facts):
        if point == "acquire.taken":
            reached.set()
            go.wait(DEADLINE)

    async def job():
        attempt = asyncio.ensure_future(lock.aacquire())
        loop = asyncio.get_event_loop()
        assert await loop.run_in_executor(None, reached.wait, DEADLINE)
        for _ in range(times):  # anyio's cancel scopes cancel again and again
            attempt.cancel()
            await asyncio.sleep(0)
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await attempt

    marathon._hook = hook
    try:
        run(job())
    finally:
        marathon._hook = None
        go.set()


def test_a_task_cancelled_twice_while_its_attempt_succeeds_releases_it():
    lock = Marathon("async-cancel-twice", **FAST)
    _cancel_while_the_attempt_runs(lock, times=2)
    assert not lock.held
    assert rows("async-cancel-twice") == 0


def test_a_cancelled_acquire_is_no_run_for_min_interval():
    from marathon import LastRun

    lock = Marathon("async-cancel-period", min_interval=3600, **FAST)
    _cancel_while_the_attempt_runs(lock, times=2)
    assert rows("async-cancel-period") == 0
    assert (
        not LastRun.objects.using("default")
        .filter(name="async-cancel-period", outcome="ok")
        .exists()
    )
    assert Marathon("async-cancel-period", min_interval=3600, **FAST).acquire()
