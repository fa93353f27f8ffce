"""A run that finds its lock held (issue 14): the times in the skip message, in the project's time zone."""
import datetime
import re
import subprocess
import sys
import textwrap
import threading

import pytest

from marathon import Marathon
from tests.fixtures_lock import child_env, db_now

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {"heartbeat": 0.2, "stale_after": 2.0}


# ---- The skip message's times: the project's time zone, labelled ----

# A child with USE_TZ = False and TIME_ZONE = "Asia/Kolkata" (UTC+05:30) runs
# a command while this process holds the lock, then on a row it made by hand
# with get_or_create (whose times Django wrote, in local time), then a command
# with lock_min_interval twice, the second run too soon after the first.
CHILD = textwrap.dedent(
    """
    import io, sys
    import django
    django.setup()
    from django.core.management import CommandError, call_command
    from marathon import Lock

    def skip_message():
        err = io.StringIO()
        call_command("marathon_readme", stdout=io.StringIO(), stderr=err)
        return err.getvalue().strip()

    print(skip_message(), flush=True)
    sys.stdin.readline()  # the parent has released its lock
    Lock.objects.get_or_create(name="marathon_readme")
    print(skip_message(), flush=True)
    Lock.objects.filter(name="marathon_readme").delete()
    call_command("marathon_nightly", stdout=io.StringIO())  # lock_min_interval = 60
    try:
        call_command("marathon_nightly", stdout=io.StringIO())
    except CommandError as error:
        print(error, flush=True)
    """
)
IST = datetime.timezone(datetime.timedelta(hours=5, minutes=30))


def since(message):
    found = re.search(r" since (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+) ", message)
    assert found, message
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST), found.group(2)


def test_skip_message_times_are_in_the_projects_time_zone_without_use_tz():
    env = child_env(DJANGO_SETTINGS_MODULE="tests.settings_ops")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    watchdog = threading.Timer(60, child.kill)  # a child that never answers fails the test, not the run
    watchdog.start()
    try:
        before = db_now().replace(microsecond=0)
        with Marathon("marathon_readme", **FAST):
            held = child.stdout.readline()
        child.stdin.write("\n")
        child.stdin.flush()
        by_hand = child.stdout.readline()
        too_soon = child.stdout.readline()
        after = db_now()
        _, err = child.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    for message in (held, by_hand):
        when, label = since(message)
        assert label == "IST", message  # not "UTC"
        assert before <= when <= after, (message, before.astimezone(IST), after.astimezone(IST))
    assert re.search(r"last heartbeat \S+ \S+ IST\)", held)
    found = re.search(r" finished (\S+ \S+) IST; the next may start (\S+ \S+) IST ", too_soon)
    assert found, too_soon
    finished, next_start = (
        datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST) for text in found.groups()
    )
    assert before <= finished <= after and next_start - finished == datetime.timedelta(seconds=60), too_soon
