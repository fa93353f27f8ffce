"""Operating locks: the admin, the shell tool, signals and log lines (issues 5 and 14).

The admin in a real browser is in test_browser.py; here it is driven by
Django's test client, which is faster and runs in every env.
"""

import getpass
import logging
import re
import socket
import subprocess
import sys

import pytest
from django.contrib.auth.models import Permission, User
from marathon.models import Lock

import marathon
from marathon import AlreadyRunning, Marathon
from tests.processes import TESTS_PARENT, child_env

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/marathon/lock/"
STALE = "2000-01-01T00:00:00Z"


def make_locks():
    """One lock per state: running (ours), stale (an old heartbeat), manual (no heartbeat).

    Log users in first: on SQLite a write transaction that reads first (Django's
    default, deferred) fails at once with "database is locked" when the running
    lock's heartbeat writes meanwhile (see the README's SQLite notes)."""
    running = Marathon(
        "running-job", heartbeat=0.2, stale_after=45
    )  # beats often: a release is seen at once
    assert running.acquire()
    Lock.objects.create(name="stale-job", owner="web1:42", heartbeat_at=STALE)
    Lock.objects.get_or_create(name="manual-job")
    return running


def names():
    return sorted(Lock.objects.values_list("name", flat=True))


def pk(name):
    return Lock.objects.get(name=name).pk


def cell(page, column, row_name):
    """The text of one cell of the changelist, in the row of lock `row_name`."""
    row = re.search(
        r"<tr[^>]*>(?:(?!</tr>).)*>%s</a>(?:(?!</tr>).)*</tr>" % re.escape(row_name),
        page,
        re.S,
    )
    assert row, "no row for %r" % row_name
    found = re.search(
        r'<td class="field-%s[^"]*">(.*?)</td>' % column, row.group(0), re.S
    )
    assert found, "no column %r" % column
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


# ---- The admin: what it shows ----


@pytest.fixture
def staff(client):
    def login(*codenames, superuser=False):
        if superuser:
            user = User.objects.create_superuser("root", "root@example.com", "x")
        else:
            user = User.objects.create_user("ops", password="x", is_staff=True)
            permissions = Permission.objects.filter(
                content_type__app_label="marathon", codename__in=codenames
            )
            user.user_permissions.set(permissions)
        client.force_login(user)
        return client

    return login


def test_admin_lists_state_owner_ages_stale_after_and_fence(staff):
    client = staff("view_lock")  # before the heartbeat runs: see make_locks()
    running = make_locks()
    try:
        page = client.get(CHANGELIST).content.decode()
    finally:
        running.release()
    assert (
        cell(page, "state", "running-job"),
        cell(page, "holder", "running-job"),
    ) == ("running", running.owner)
    assert (cell(page, "state", "stale-job"), cell(page, "holder", "stale-job")) == (
        "stale",
        "web1:42",
    )
    assert (cell(page, "state", "manual-job"), cell(page, "holder", "manual-job")) == (
        "manual",
        "-",
    )
    # Ages by the database's clock, to a tenth of a second when fresh; never "a.m." times.
    assert re.fullmatch(r"\d+\.\d s ago", cell(page, "last_heartbeat", "running-job"))
    assert re.fullmatch(r"\d+ d \d\d h ago", cell(page, "last_heartbeat", "stale-job"))
    assert cell(page, "last_heartbeat", "manual-job").startswith("never")
    assert re.fullmatch(r"\d+\.\d s", cell(page, "held_for", "running-job"))
    assert "a.m." not in page and "p.m." not in page
    # The holder's own stale_after, else the setting that judges the row.
    assert cell(page, "holder_stale_after", "running-job") == "45 s"
    assert cell(page, "holder_stale_after", "stale-job") == "60 s (setting)"
    assert cell(page, "fence", "running-job") == str(running.fence)


@pytest.mark.parametrize(
    "state, expected",
    [("running", "running-job"), ("stale", "stale-job"), ("manual", "manual-job")],
)
def test_admin_filters_by_state(staff, state, expected):
    client = staff("view_lock")
    running = make_locks()
    try:
        page = client.get(CHANGELIST, {"state": state}).content.decode()
    finally:
        running.release()
    shown = [
        name
        for name in ("running-job", "stale-job", "manual-job")
        if ">%s</a>" % name in page
    ]
    assert shown == [expected]


def test_admin_shows_each_lock_read_only(staff):
    client = staff(superuser=True)
    running = make_locks()
    try:
        page = client.get(CHANGELIST + "%d/change/" % running.fence).content.decode()
    finally:
        running.release()
    for text in (
        "running-job",
        running.owner,
        str(running.fence),
        "45 s",
        " s ago",
        " UTC",
    ):
        assert text in page
    assert 'name="_save"' not in page and "deletelink" not in page
    assert 'name="name"' not in page  # no input: the name cannot be changed


# ---- The admin: what it does not let anyone do, a superuser included ----


def test_admin_cannot_add_change_or_delete_a_lock(staff):
    client = staff(superuser=True)
    running = make_locks()
    try:
        assert CHANGELIST + "add/" not in client.get(CHANGELIST).content.decode()
        assert client.get(CHANGELIST + "add/").status_code == 403
        assert (
            client.post(CHANGELIST + "add/", {"name": "made-in-admin"}).status_code
            == 403
        )
        change = CHANGELIST + "%d/change/" % running.fence
        assert (
            client.post(change, {"name": "renamed-job", "owner": "x"}).status_code
            == 403
        )
        assert (
            client.post(
                CHANGELIST + "%d/delete/" % running.fence, {"post": "yes"}
            ).status_code
            == 403
        )
        assert running.held and names() == ["manual-job", "running-job", "stale-job"]
    finally:
        running.release()


def test_admin_offers_no_delete_selected(staff):
    Lock.objects.create(name="stale-job", owner="web1:42", heartbeat_at=STALE)
    client = staff(superuser=True)
    page = client.get(CHANGELIST).content.decode()
    assert 'value="release_locks"' in page and 'value="delete_selected"' not in page
    client.post(
        CHANGELIST,
        {
            "action": "delete_selected",
            "_selected_action": [pk("stale-job")],
            "post": "yes",
        },
    )
    assert names() == ["stale-job"]


# ---- The admin: releasing ----


def test_admin_release_asks_first_naming_running_locks_and_their_holders(staff):
    client = staff("view_lock", "delete_lock")
    running = make_locks()
    selected = [pk("running-job"), pk("stale-job")]
    try:
        page = client.post(
            CHANGELIST,
            {"action": "release_locks", "_selected_action": selected, "index": 0},
        )
        page = page.content.decode()
        assert names() == [
            "manual-job",
            "running-job",
            "stale-job",
        ]  # nothing released yet
        warning = re.search(
            r'<p class="errornote" id="running">(.*?)</p>', page, re.S
        ).group(1)
        assert (
            "1 of these locks is running" in warning
            and running.owner in warning
            and "running-job" in warning
        )
        assert "stale-job" not in warning and "stale-job" in page and "web1:42" in page
        assert 'name="post" value="yes"' in page
    finally:
        running.release()


def test_admin_release_on_confirmation_deletes_and_logs_who_and_what(staff, caplog):
    client = staff("view_lock", "delete_lock")
    running = make_locks()
    selected = [pk("running-job"), pk("stale-job")]
    with caplog.at_level(logging.WARNING, logger="marathon"):
        response = client.post(
            CHANGELIST,
            {"action": "release_locks", "_selected_action": selected, "post": "yes"},
        )
    assert response.status_code == 302
    assert names() == ["manual-job"]
    (message,) = [
        r.getMessage() for r in caplog.records if "released" in r.getMessage()
    ]
    assert message.startswith("ops released 2 lock(s) in the admin: ")
    assert (
        "'running-job' (running, held by %s, fence %d)" % (running.owner, running.fence)
        in message
    )
    assert "'stale-job' (stale, held by web1:42, fence %d)" % selected[1] in message
    assert (
        _wait_for(lambda: running.lost) and not running.release()
    )  # its holder finds it lost


def test_admin_release_leaves_a_lock_taken_over_since_the_confirmation(staff):
    Lock.objects.create(name="stale-job", owner="web1:42", heartbeat_at=STALE)
    client = staff("view_lock", "delete_lock")
    shown = pk("stale-job")
    client.post(
        CHANGELIST, {"action": "release_locks", "_selected_action": [shown], "index": 0}
    )
    with Marathon(
        "stale-job", heartbeat=5, stale_after=60
    ) as new_holder:  # takes the stale lock over
        response = client.post(
            CHANGELIST,
            {"action": "release_locks", "_selected_action": [shown], "post": "yes"},
            follow=True,
        )
        assert new_holder.held and names() == ["stale-job"]
    assert "gone already" in response.content.decode()


def test_admin_release_needs_the_delete_permission(staff):
    client = staff("view_lock", "change_lock")
    running = make_locks()
    try:
        assert "release_locks" not in client.get(CHANGELIST).content.decode()
        selected = list(Lock.objects.values_list("pk", flat=True))
        client.post(
            CHANGELIST,
            {"action": "release_locks", "_selected_action": selected, "post": "yes"},
        )
        assert names() == ["manual-job", "running-job", "stale-job"]
    finally:
        running.release()


# ---- The shell tool, in this process ----


def run_main(capsys, *argv):
    code = marathon._main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


HEADER = [
    "NAME",
    "STATE",
    "OWNER",
    "HELD",
    "FOR",
    "LAST",
    "HEARTBEAT",
    "STALE",
    "AFTER",
    "FENCE",
]


def test_shell_lists_locks_as_a_table(capsys):
    running = make_locks()
    try:
        code, out, err = run_main(capsys, "list")
    finally:
        running.release()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == HEADER
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["running-job"].split()[1:3] == ["running", running.owner]
    assert re.search(r"\d+\.\d s ago +45 s +%d$" % running.fence, rows["running-job"])
    assert rows["stale-job"].split()[1:3] == ["stale", "web1:42"]
    assert "60 s (setting)" in rows["stale-job"]
    assert rows["manual-job"].split()[1:3] == ["manual", "-"]


def test_shell_says_nothing_listed_in_its_exit_status(capsys):
    code, out, err = run_main(capsys, "list")
    assert (code, out.split()) == (1, HEADER)


def test_shell_releases_stale_locks_only_and_logs_who(capsys, caplog):
    running = make_locks()
    try:
        with caplog.at_level(logging.WARNING, logger="marathon"):
            assert run_main(capsys, "release", "--stale")[:2] == (
                0,
                "Released 1 lock(s): stale-job\n",
            )
        assert names() == ["manual-job", "running-job"]
        assert run_main(capsys, "release", "--stale")[:2] == (
            1,
            "Released 0 lock(s).\n",
        )
    finally:
        running.release()
    (message,) = [
        r.getMessage() for r in caplog.records if "released" in r.getMessage()
    ]
    who = "%s@%s" % (getpass.getuser(), socket.gethostname())
    assert message.startswith(
        "%s released 1 lock(s) with python -m marathon: 'stale-job' (stale" % who
    )


def test_shell_release_by_name_says_which_were_running(capsys):
    running = make_locks()
    code, out, err = run_main(
        capsys, "release", "running-job", "manual-job", "no-such-job"
    )
    assert code == 0
    assert out.splitlines()[0] == "Released 2 lock(s): running-job, manual-job"
    assert "'running-job' was running, held by %s" % running.owner in out
    assert "No lock named 'no-such-job'." in err
    assert run_main(capsys, "release", "no-such-job")[0] == 1
    assert names() == ["stale-job"]
    assert _wait_for(lambda: running.lost) and not running.release()


def test_shell_database_option_works_before_and_after_the_command(capsys):
    Lock.objects.create(name="stale-job", owner="web1:42", heartbeat_at=STALE)
    assert run_main(capsys, "--database", "default", "list")[0] == 0
    assert run_main(capsys, "list", "--database", "default")[0] == 0
    assert run_main(capsys, "release", "stale-job", "--database", "default")[:2] == (
        0,
        "Released 1 lock(s): stale-job\n",
    )


# ---- The shell tool, as a process: python -m marathon ----


def shell(*args, cwd=None, **env):
    """Run `python -m marathon ARGS` in `cwd` (default: where `tests` is); (returncode, stdout, stderr)."""
    process = subprocess.run(
        [sys.executable, "-m", "marathon"] + list(args),
        env=child_env(**env),
        cwd=cwd or TESTS_PARENT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
    )
    return process.returncode, process.stdout, process.stderr


def test_shell_runs_from_any_directory_and_logs_releases_with_who(tmp_path):
    """The project is found by DJANGO_SETTINGS_MODULE and PYTHONPATH alone; the log line reaches stderr
    through Python's last-resort handler, as the test settings configure no handler for it."""
    Lock.objects.create(name="stale-job", owner="web1:42", heartbeat_at=STALE)
    code, out, err = shell("list", cwd=str(tmp_path))
    assert code == 0, err
    assert out.splitlines()[1].split()[:3] == ["stale-job", "stale", "web1:42"]
    code, out, err = shell("release", "stale-job", cwd=str(tmp_path))
    assert (code, out) == (0, "Released 1 lock(s): stale-job\n"), err
    who = "%s@%s" % (getpass.getuser(), socket.gethostname())
    assert (
        "%s released 1 lock(s) with python -m marathon: 'stale-job' (stale, held by web1:42"
        % who
        in err
    )


def test_shell_settings_that_cannot_be_imported_get_one_line(tmp_path):
    code, out, err = shell(
        "list", cwd=str(tmp_path), DJANGO_SETTINGS_MODULE="nosuchproject.settings"
    )
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "python -m marathon: error: cannot import the settings 'nosuchproject.settings': No module named "
        "'nosuchproject'. Is the directory that holds it on PYTHONPATH (or the current directory)?"
    ]


def test_shell_unreachable_database_gets_one_line():
    code, out, err = shell(
        "list", "--database", "unreachable", DJANGO_SETTINGS_MODULE="tests.settings_ops"
    )
    assert (code, out) == (3, "")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("python -m marathon: error: database 'unreachable' (")


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
        for signal in (
            marathon.lock_acquired,
            marathon.lock_released,
            marathon.lock_lost,
        ):
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
    Lock.objects.create(name="old", owner="web1:42", heartbeat_at=STALE)
    with caplog.at_level(logging.DEBUG, logger="marathon"):
        with Marathon("old", heartbeat=0.2, stale_after=2.0) as held:
            assert _wait_for(
                lambda: any(r.levelno == logging.DEBUG for r in caplog.records)
            )
    by_level = {}
    for record in caplog.records:
        by_level.setdefault(record.levelname, []).append(record.getMessage())
    assert any(
        "web1:42" in m and "old" in m and "ago" in m for m in by_level["WARNING"]
    )  # whose, how stale
    assert any("Acquired" in m and held.owner in m for m in by_level["INFO"])
    assert any(
        "Released" in m and " s." in m for m in by_level["INFO"]
    )  # how long it was held
    assert any("Heartbeat" in m for m in by_level["DEBUG"])
    assert "ERROR" not in by_level


def test_already_running_says_name_holder_since_and_heartbeat():
    with Marathon("busy") as held:
        with pytest.raises(AlreadyRunning) as caught:
            Marathon("busy").__enter__()
    message = str(caught.value)
    assert caught.value.name == "busy" and caught.value.owner == held.owner
    assert (
        "'busy'" in message
        and held.owner in message
        and " since " in message
        and "last heartbeat" in message
    )


def _wait_for(condition, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
