"""Operating locks: the admin, the shell tool, signals and log lines (issue 5)."""
import logging
import os
import subprocess
import sys

import pytest
from django.contrib.auth.models import Permission, User

import marathon
import tests
from marathon import AlreadyRunning, Marathon
from marathon.models import Lock

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/marathon/lock/"


def make_locks():
    """One lock per state: running (ours), stale (an old heartbeat), manual (no heartbeat)."""
    running = Marathon("running-job", heartbeat=5, stale_after=60)
    assert running.acquire()
    Lock.objects.create(name="stale-job", owner="web1:42", heartbeat_at="2000-01-01T00:00:00Z")
    Lock.objects.get_or_create(name="manual-job")
    return running


def names():
    return sorted(Lock.objects.values_list("name", flat=True))


# ---- The admin ----


@pytest.fixture
def staff(client):
    def login(*codenames):
        user = User.objects.create_user("ops", password="x", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="marathon", codename__in=codenames))
        client.force_login(user)
        return client

    return login


def test_admin_lists_name_owner_times_and_state(staff):
    running = make_locks()
    try:
        page = staff("view_lock").get(CHANGELIST).content.decode()
    finally:
        running.release()
    for text in ("running-job", running.owner, "stale-job", "web1:42", "manual-job"):
        assert text in page
    for state in ("running", "stale", "manual"):
        assert '<td class="field-state">%s</td>' % state in page


@pytest.mark.parametrize("state, expected", [("running", "running-job"), ("stale", "stale-job"), ("manual", "manual-job")])
def test_admin_filters_by_state(staff, state, expected):
    running = make_locks()
    try:
        page = staff("view_lock").get(CHANGELIST, {"state": state}).content.decode()
    finally:
        running.release()
    shown = [name for name in ("running-job", "stale-job", "manual-job") if "field-name" in page and ">%s<" % name in page]
    assert shown == [expected]


def test_admin_release_action_deletes_and_logs_who(staff, caplog):
    running = make_locks()
    client = staff("view_lock", "delete_lock")
    pks = list(Lock.objects.filter(name__in=["stale-job", "manual-job"]).values_list("pk", flat=True))
    with caplog.at_level(logging.WARNING, logger="marathon"):
        response = client.post(CHANGELIST, {"action": "release_locks", "_selected_action": pks})
    assert response.status_code == 302
    assert names() == ["running-job"]
    assert any("ops released the lock(s) 'manual-job', 'stale-job'" in r.getMessage() for r in caplog.records)
    assert running.release()


def test_admin_release_action_needs_the_delete_permission(staff):
    running = make_locks()
    client = staff("view_lock", "change_lock")
    assert "release_locks" not in client.get(CHANGELIST).content.decode()
    pks = list(Lock.objects.values_list("pk", flat=True))
    client.post(CHANGELIST, {"action": "release_locks", "_selected_action": pks})
    assert names() == ["manual-job", "running-job", "stale-job"]
    assert running.release()


# ---- The shell tool ----


def shell(*args):
    env = dict(os.environ, MARATHON_TEST_CHILD="1", DJANGO_SETTINGS_MODULE="tests.settings")
    root = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, os.path.dirname(os.path.abspath(marathon.__file__))])
    process = subprocess.Popen(
        [sys.executable, "-m", "marathon"] + list(args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_shell_lists_locks_as_a_table():
    running = make_locks()
    try:
        code, out, err = shell("list")
    finally:
        running.release()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "OWNER", "HELD", "FOR", "LAST", "HEARTBEAT"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["running-job"][1:3] == ["running", running.owner]
    assert rows["stale-job"][1:3] == ["stale", "web1:42"]
    assert rows["manual-job"][1:3] == ["manual", "-"]


def test_shell_says_nothing_listed_in_its_exit_status():
    code, out, err = shell("list")
    assert (code, out.split()) == (1, ["NAME", "STATE", "OWNER", "HELD", "FOR", "LAST", "HEARTBEAT"])


def test_shell_releases_stale_locks_only():
    running = make_locks()
    try:
        assert shell("release", "--stale")[:2] == (0, "Released 1 lock(s): stale-job\n")
        assert names() == ["manual-job", "running-job"]
        assert shell("release", "--stale")[:2] == (1, "Released 0 lock(s).\n")
    finally:
        running.release()


def test_shell_releases_by_name():
    make_locks().release()
    assert shell("release", "manual-job", "no-such-job")[:2] == (0, "Released 1 lock(s): manual-job\n")
    assert shell("release", "no-such-job")[0] == 1
    assert names() == ["stale-job"]


def test_shell_usage_errors_exit_2():
    code, out, err = shell("release")
    assert code == 2 and "python -m marathon" in err


# ---- Signals and log lines ----


def test_signals_carry_name_owner_and_fence():
    seen = []

    def record(signal, **kwargs):
        seen.append((signal, kwargs["name"], kwargs["owner"], kwargs["fence"]))

    for signal in (marathon.lock_acquired, marathon.lock_released, marathon.lock_lost):
        signal.connect(record)
    try:
        with Marathon("signalled") as held:
            pass
        lost = Marathon("lost-one", heartbeat=0.2, stale_after=2.0)
        lost.acquire()
        Lock.objects.filter(name="lost-one").delete()
        # lock_lost is sent just after the flag is set: wait for the signal itself
        assert _wait_for(lambda: any(s is marathon.lock_lost for s, _, _, _ in seen))
        assert lost.lost
    finally:
        for signal in (marathon.lock_acquired, marathon.lock_released, marathon.lock_lost):
            signal.disconnect(record)
    assert seen[:2] == [
        (marathon.lock_acquired, "signalled", held.owner, held.fence),
        (marathon.lock_released, "signalled", held.owner, held.fence),
    ]
    assert seen[2:] == [
        (marathon.lock_acquired, "lost-one", lost.owner, lost.fence),
        (marathon.lock_lost, "lost-one", lost.owner, lost.fence),
    ]


def test_log_lines_by_level(caplog):
    Lock.objects.create(name="old", owner="web1:42", heartbeat_at="2000-01-01T00:00:00Z")
    with caplog.at_level(logging.DEBUG, logger="marathon"):
        with Marathon("old", heartbeat=0.2, stale_after=2.0) as held:
            assert _wait_for(lambda: any(r.levelno == logging.DEBUG for r in caplog.records))
    by_level = {}
    for record in caplog.records:
        by_level.setdefault(record.levelname, []).append(record.getMessage())
    assert any("web1:42" in m and "old" in m and "ago" in m for m in by_level["WARNING"])  # whose, how stale
    assert any("Acquired" in m and held.owner in m for m in by_level["INFO"])
    assert any("Released" in m and " s." in m for m in by_level["INFO"])  # how long it was held
    assert any("Heartbeat" in m for m in by_level["DEBUG"])
    assert "ERROR" not in by_level


def test_already_running_says_name_holder_since_and_heartbeat():
    with Marathon("busy") as held:
        with pytest.raises(AlreadyRunning) as caught:
            Marathon("busy").__enter__()
    message = str(caught.value)
    assert caught.value.name == "busy" and caught.value.owner == held.owner
    assert "'busy'" in message and held.owner in message and " since " in message and "last heartbeat" in message


def _wait_for(condition, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
