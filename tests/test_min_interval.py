"""Issue 11: at most once per period, judged by the database's clock, and each lock's last run.

Every run below is a real process (tests/processes.py's "interval" action)
unless the test needs the lock object itself.
"""

import datetime
import json
import os
import re
import signal

import pytest
from django.db import connection
from django.utils.dateparse import parse_datetime

from marathon import (
    AlreadyRunning,
    LastRun,
    Lock,
    LockLost,
    Marathon,
    RanRecently,
    lock_acquired,
    lock_released,
)
from tests.processes import (
    child_env,
    finish,
    run_command,
    run_python,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def run_once(name, min_interval=60, outcome="ok", env=None):
    code, out, err = run_python(
        ["-m", "tests.processes", "interval", name, str(min_interval), outcome],
        env=env,
    )
    assert code == 0, err
    return json.loads(out)


def last_run(name):
    return LastRun.objects.using("default").filter(name=name).first()


def test_a_second_host_inside_the_interval_skips_with_ran_recently():
    first = run_once("nightly")
    second = run_once("nightly")
    assert first["ran"] and not second["ran"]
    assert second["owner"] == first["owner"]
    record = last_run("nightly")
    assert (
        record.outcome == "ok"
        and record.owner == first["owner"]
        and record.fence == first["fence"]
    )
    assert record.duration is not None and record.duration >= 0
    assert parse_datetime(second["finished_at"]) == record.finished_at
    assert (
        "'nightly' ran recently" in second["message"]
        and first["owner"] in second["message"]
    )
    assert "the next may start" in second["message"]
    assert (
        not Lock.objects.using("default").filter(name="nightly").exists()
    )  # the refused acquire left nothing


def test_after_the_interval_the_next_run_runs():
    assert run_once("short-period", min_interval=1)["ran"]
    wait_for(
        lambda: _age(last_run("short-period")) > 1.0,
        5,
        "the period to pass by the database's clock",
    )
    assert run_once("short-period", min_interval=1)["ran"]


def _age(record):
    with connection.cursor() as cursor:
        cursor.execute(
            {
                "postgresql": "SELECT EXTRACT(EPOCH FROM statement_timestamp() - finished_at) FROM marathon_lastrun WHERE id = %s",
                "mysql": "SELECT TIMESTAMPDIFF(MICROSECOND, finished_at, UTC_TIMESTAMP(6)) / 1e6 FROM marathon_lastrun WHERE id = %s",
                "sqlite": "SELECT (julianday('now') - julianday(finished_at)) * 86400.0 FROM marathon_lastrun WHERE id = %s",
            }[connection.vendor],
            [record.pk],
        )
        return float(cursor.fetchone()[0])


def test_a_failed_run_does_not_count():
    run_once("flaky", outcome="error")  # it ran and raised
    assert last_run("flaky").outcome == "error"
    assert run_once("flaky")["ran"]
    assert last_run("flaky").outcome == "ok"


def test_a_lost_run_does_not_count():
    lock = Marathon("lost-run", heartbeat=0.2, stale_after=2, min_interval=60)
    with pytest.raises(LockLost):
        with lock:
            Lock.objects.using("default").filter(name="lost-run").delete()
            wait_for(lambda: lock.lost, 10, "the loss")
    assert last_run("lost-run").outcome == "lost"
    assert run_once("lost-run")["ran"]


@pytest.mark.parametrize("manual", [False, True], ids=["atomic", "manual-transactions"])
def test_a_run_whose_transaction_rolled_back_does_not_count(manual):
    """Its release waited for the caller's transaction, which then rolled back: its work is undone
    (an ATOMIC_REQUESTS view that fails after the block), so the next run may run at once."""
    from django.db import transaction

    class Failed(Exception):
        pass

    transaction.set_autocommit(not manual)
    try:
        with pytest.raises(Failed):
            with transaction.atomic():
                with Marathon(
                    "undone", heartbeat=0.2, stale_after=2, min_interval=3600
                ):
                    pass
                raise Failed
        if manual:  # the outermost atomic() was a savepoint: the transaction ends here
            transaction.rollback()
    finally:
        transaction.set_autocommit(True)
    assert Lock.objects.filter(name="undone").first() is None
    assert last_run("undone").outcome == "error"
    assert run_once("undone")["ran"]


@pytest.mark.parametrize("manual", [False, True], ids=["atomic", "manual-transactions"])
def test_a_run_whose_connection_closed_in_its_transaction_does_not_count(manual):
    """The connection was closed before the caller's transaction ended (Django's close()): the
    server rolled the transaction back, so the run's work is undone, and the release that
    waited for it runs as the close returns, recorded as an error. (Django would run no
    on_commit callback, and discard them only once it connects again.)"""
    from django.db import transaction

    released = []
    receiver = lambda sender, name, **kwargs: released.append(name)  # noqa: E731
    lock_released.connect(receiver, weak=False)
    lock = Marathon("closed-undone", heartbeat=0.2, stale_after=2, min_interval=3600)
    transaction.set_autocommit(not manual)
    try:
        with transaction.atomic():
            with lock:
                pass
            if not manual:
                connection.close()  # inside the block: the server rolls back
        if manual:  # the transaction goes on after the block, until it is closed
            connection.close()
        wait_for(lambda: released, 10, "the release")
    finally:
        lock_released.disconnect(receiver)
        transaction.set_autocommit(True)
    assert Lock.objects.filter(name="closed-undone").first() is None
    assert last_run("closed-undone").outcome == "error"
    assert run_once("closed-undone")["ran"]


@pytest.mark.parametrize("noticed_by", ["finalizer", "heartbeat"])
def test_a_committed_run_counts_when_its_connection_is_closed_after(noticed_by):
    """The transaction committed but an earlier on_commit callback raised, so Django dropped
    ours; the connection is closed only then. The run committed: it counts, whichever of the
    finalizer and the heartbeat sends its release."""
    from django.db import transaction

    class Failed(Exception):
        pass

    def fails():
        raise Failed

    name = "closed-after-" + noticed_by
    kept = []
    try:  # not pytest.raises: its traceback would keep Django's list of callbacks alive
        with transaction.atomic():
            transaction.on_commit(fails)
            with Marathon(name, heartbeat=0.2, stale_after=2, min_interval=3600):
                pass
    except Failed as exc:
        connection.close()  # after the commit
        if noticed_by == "heartbeat":
            kept.append(exc)  # held by a handler: the callback is not discarded yet
    wait_for(lambda: Lock.objects.filter(name=name).first() is None, 10, "the release")
    del kept[:]
    assert last_run(name).outcome == "ok"
    assert not run_once(name)["ran"]


def test_a_close_in_a_later_transaction_keeps_an_earlier_committed_run():
    """A release can outlive its transaction (an earlier on_commit callback raised, and the
    exception is kept): a close inside a later, unrelated transaction does not end it."""
    from django.db import transaction

    class Failed(Exception):
        pass

    def fails():
        raise Failed

    name = "later-close"
    kept = []
    try:
        with transaction.atomic():
            transaction.on_commit(fails)
            with Marathon(name, heartbeat=5, stale_after=30, min_interval=3600):
                Lock.objects.create(name=name + "-witness")
    except Failed as exc:
        kept.append(exc)
    with transaction.atomic():  # an unrelated, later transaction
        connection.close()
    assert Lock.objects.filter(name=name + "-witness").exists()  # the first committed
    wait_for(lambda: not Lock.objects.filter(name=name).exists(), 15, "the release")
    del kept[:]
    assert last_run(name).outcome == "ok"


@pytest.mark.parametrize("then", ["close", "close-later", "rollback-later"])
def test_autocommit_turned_back_on_keeps_a_committed_run(then):
    """Manual transactions: set_autocommit(True) commits the run's transaction (SQLite,
    MySQL; psycopg refuses inside a transaction). A close that follows
    (close_old_connections()), or a later transaction that ends by close or rollback, must
    not count the committed run as rolled back."""
    from django.db import transaction

    if connection.vendor == "postgresql":
        pytest.skip("psycopg refuses to turn autocommit on inside a transaction")
    name = "autocommit-" + then
    lock = Marathon(name, heartbeat=5, stale_after=30, min_interval=3600)
    transaction.set_autocommit(False)
    try:
        with transaction.atomic():
            with lock:
                Lock.objects.create(name=name + "-witness")
    finally:
        transaction.set_autocommit(True)  # commits the run's work
    if then == "close":
        connection.close()
    else:
        transaction.set_autocommit(False)  # a later, unrelated transaction
        try:
            Lock.objects.filter(name="unrelated").exists()
            if then == "close-later":
                connection.close()
            else:
                transaction.rollback()
        finally:
            transaction.set_autocommit(True)
    assert Lock.objects.filter(name=name + "-witness").exists()
    wait_for(lambda: not Lock.objects.filter(name=name).exists(), 15, "the release")
    assert last_run(name).outcome == "ok"


def test_a_close_before_the_release_in_its_transaction_does_not_count():
    """The connection is closed inside the block, before the lock is released: the server
    rolled the transaction back, so the release has no end to wait for. It is sent at once,
    and the run does not count. (Under manual transactions Django's connection stays in
    its atomic block after such a close, unusable until the process ends; marathon releases
    at once there too.)"""
    from django.db import close_old_connections, transaction

    name = "closed-before"
    lock = Marathon(name, heartbeat=0.2, stale_after=2, min_interval=3600)
    with transaction.atomic():
        with lock:
            Lock.objects.create(name=name + "-witness")
            close_old_connections()  # closes inside atomic(): autocommit is off
        assert lock._hold.state == "released"  # at once, not at some later end
    assert not Lock.objects.filter(name=name + "-witness").exists()  # undone
    assert not Lock.objects.filter(name=name).exists()
    assert last_run(name).outcome == "error"
    assert run_once(name)["ran"]


def test_a_hook_that_raises_in_set_autocommit_keeps_a_committed_run():
    """Manual transactions: set_autocommit(True) commits, then runs the on_commit hooks Django
    kept, and one raises. The run committed all the same: a later transaction's rollback must
    not count it as rolled back."""
    from django.db import transaction

    if connection.vendor == "postgresql":
        pytest.skip("psycopg refuses to turn autocommit on inside a transaction")
    name = "hook-in-autocommit"
    lock = Marathon(name, heartbeat=5, stale_after=30, min_interval=3600)

    def bad():
        raise RuntimeError("hook")

    transaction.set_autocommit(False)
    try:
        with transaction.atomic():
            transaction.on_commit(bad)
        transaction.commit()  # Django keeps the hook until autocommit is turned on
        with transaction.atomic():
            with lock:
                Lock.objects.create(name=name + "-witness")
        with pytest.raises(RuntimeError):
            transaction.set_autocommit(True)  # commits, then the hook raises
        transaction.set_autocommit(False)  # a later, unrelated transaction
        Lock.objects.filter(name="unrelated").exists()
        transaction.rollback()
    finally:
        transaction.set_autocommit(True)
    assert Lock.objects.filter(name=name + "-witness").exists()  # the run committed
    wait_for(lambda: not Lock.objects.filter(name=name).exists(), 15, "the release")
    assert last_run(name).outcome == "ok"


def test_a_committed_run_counts_when_an_earlier_on_commit_callback_raises():
    """Django stops at a callback that raises and drops the rest, ours among them: the
    transaction committed all the same, so the run counts."""
    from django.db import transaction

    class Failed(Exception):
        pass

    def fails():
        raise Failed

    try:  # not pytest.raises: its traceback would keep Django's list of callbacks alive
        with transaction.atomic():
            transaction.on_commit(fails)
            with Marathon(
                "hook-failed", heartbeat=0.2, stale_after=2, min_interval=3600
            ):
                pass
    except Failed:
        pass
    wait_for(
        lambda: Lock.objects.filter(name="hook-failed").first() is None,
        10,
        "the release of a run whose on_commit neighbour raised",
    )
    assert last_run("hook-failed").outcome == "ok"
    assert not run_once("hook-failed")["ran"]


def test_a_run_whose_transaction_committed_counts():
    from django.db import transaction

    with transaction.atomic():
        with Marathon("committed", heartbeat=0.2, stale_after=2, min_interval=3600):
            pass
    assert last_run("committed").outcome == "ok"
    assert not run_once("committed")["ran"]


def test_an_abandoned_run_does_not_count_and_the_taker_knows(holder):
    facts = holder("crashed", heartbeat=0.2, stale_after=1.0)
    os.kill(facts["pid"], signal.SIGKILL)
    finish(facts["process"])  # reaped, its pipes closed
    took = []

    def receiver(sender, name, took_over, **kwargs):
        took.append((name, took_over))

    lock_acquired.connect(receiver)
    try:
        with Marathon(
            "crashed", wait=10, heartbeat=0.2, stale_after=1.0, min_interval=60
        ) as lock:
            record = last_run("crashed")
            assert (
                record.outcome == "abandoned"
                and record.owner == facts["owner"]
                and record.fence == facts["fence"]
            )
            assert lock.fence > facts["fence"]
    finally:
        lock_acquired.disconnect(receiver)
    assert took == [("crashed", True)]
    assert last_run("crashed").outcome == "ok"


def test_acquire_returns_false_at_once_and_wait_does_not_wait_for_a_period():
    assert run_once("no-waiting")["ran"]
    lock = Marathon("no-waiting", wait=30, min_interval=60)
    started = datetime.datetime.now()
    assert lock.acquire() is False
    assert (datetime.datetime.now() - started).total_seconds() < 5
    with pytest.raises(RanRecently) as raised:
        with Marathon("no-waiting", min_interval=60):
            pass  # pragma: no cover
    assert isinstance(raised.value, AlreadyRunning)
    assert raised.value.finished_at.utcoffset() == datetime.timedelta(0)


def test_a_lock_without_min_interval_ignores_earlier_runs():
    assert run_once("mixed")["ran"]
    with Marathon("mixed") as lock:
        assert lock.held


def test_hosts_racing_for_one_period_run_once():
    """Four processes try the same period together, again and again: one run in all."""
    code = (
        "import json, time\n"
        "import django; django.setup()\n"
        "from marathon import Marathon, AlreadyRunning\n"
        "ran = 0\n"
        "end = time.monotonic() + 3\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        with Marathon('race-period', min_interval=60):\n"
        "            ran += 1\n"
        "    except AlreadyRunning:\n"
        "        pass\n"
        "print(json.dumps(ran))\n"
    )
    from tests.processes import start_python

    children = [start_python(["-c", code]) for _ in range(4)]
    runs = []
    for child in children:
        status, out, err = finish(child, timeout=60)
        assert status == 0, err
        runs.append(json.loads(out))
    assert sum(runs) == 1, runs


@pytest.mark.parametrize("skews", [("+1h", "-1h"), ("-1h", "+1h")])
def test_skewed_clocks_get_the_same_answers(skews):
    if connection.vendor == "sqlite":
        pytest.skip(
            "SQLite's clock is each process's clock: hosts must share one (see the README)"
        )
    if not os.path.exists(FAKETIME):
        pytest.skip("libfaketime is not installed (%s)" % FAKETIME)

    def skewed(skew):
        return child_env(
            LD_PRELOAD=FAKETIME, FAKETIME=skew, FAKETIME_DONT_FAKE_MONOTONIC="1"
        )

    name = "skewed-%s" % skews[0]
    assert run_once(name, env=skewed(skews[0]))["ran"]
    assert not run_once(name, env=skewed(skews[1]))["ran"]
    assert not run_once(name)["ran"]
    assert run_once(name + "-short", min_interval=1, env=skewed(skews[0]))["ran"]
    wait_for(
        lambda: _age(last_run(name + "-short")) > 1.0,
        5,
        "the period to pass by the database's clock",
    )
    assert run_once(name + "-short", min_interval=1, env=skewed(skews[1]))["ran"]


def test_command_with_lock_min_interval_skips_a_second_run():
    code, out, err = run_command("marathon_nightly")
    assert code == 0 and "Ran the nightly job." in out, err
    code, out, err = run_command("marathon_nightly")
    assert code == 75, (out, err)
    assert "'marathon_nightly' ran recently" in err and "Skipped this run." in err
    assert "Ran the nightly job." not in out


def test_a_failed_command_run_does_not_count():
    code, out, err = run_command("marathon_nightly", "--fail")
    assert code != 0 and "the nightly run failed" in err
    assert last_run("marathon_nightly").outcome == "error"
    code, out, err = run_command("marathon_nightly")
    assert code == 0, err


def test_min_interval_must_be_positive():
    with pytest.raises(
        ValueError, match="min_interval must be a positive number of seconds"
    ):
        Marathon("x", min_interval=0)


# ---- Shown to operators ----


def test_the_admin_lists_each_names_last_run(client):
    from django.contrib.auth.models import User

    first = run_once("shown-in-admin")
    run_once("failed-in-admin", outcome="error")
    client.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    page = client.get("/admin/marathon/lastrun/").content.decode()
    texts = [
        re.sub(r"<[^>]+>", " ", row)
        for row in re.findall(
            r"<tr[^>]*>((?:(?!</tr>).)*field-outcome(?:(?!</tr>).)*)</tr>", page, re.S
        )
    ]
    rows = {text.split()[0]: text for text in texts}
    assert set(rows) == {"shown-in-admin", "failed-in-admin"}
    assert (
        "ok" in rows["shown-in-admin"].split()
        and first["owner"] in rows["shown-in-admin"]
    )
    assert re.search(r"\d+\.\d s ago", rows["shown-in-admin"]) and re.search(
        r"\b\d+\.\d s\b", rows["shown-in-admin"]
    )
    assert "error" in rows["failed-in-admin"].split()
    assert (
        client.get("/admin/marathon/lastrun/add/").status_code == 403
    )  # written by holders only


def test_the_shell_lists_last_runs_beside_the_locks(capsys):
    import marathon

    first = run_once("shown-in-shell")
    assert marathon._main(["list"]) == 1  # no lock is held
    out = capsys.readouterr().out.splitlines()
    table = out[out.index("") + 1 :]
    assert table[0].split() == [
        "LAST",
        "RUN",
        "OF",
        "OUTCOME",
        "FINISHED",
        "DURATION",
        "BY",
        "FENCE",
    ]
    row = table[1].split()
    assert (
        row[0:2] == ["shown-in-shell", "ok"]
        and first["owner"] in row
        and row[-1] == str(first["fence"])
    )
    assert re.search(r"\d+\.\d s ago", table[1])
