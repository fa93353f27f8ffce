#!/usr/bin/env python
"""django-marathon in under a minute. Run it from anywhere with:

    python example/demo.py

It needs only Python 3.6+ and pip. If Django is not importable, it first makes
a virtualenv in example/.venv/pyX.Y, installs this checkout into it with pip
(which brings Django), and runs itself again from there. Then it shows:

1. two runs of `manage.py nightly` at once: one runs, the other skips;
2. a holder killed with SIGKILL, and its lock taken over once stale;
3. a decorated function called from two threads, without and with `wait`.

Each run uses a fresh SQLite file in the temporary directory.
"""

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STARTED = time.monotonic()
_print_lock = threading.Lock()


def out(text=""):
    with _print_lock:
        print(text)
        sys.stdout.flush()


def say(text):
    out("%5.1fs  %s" % (time.monotonic() - STARTED, text))


# ---- Setup: find or make an environment with Django ----


def _has_django():
    try:
        import django
    except ImportError:
        return False
    return django.VERSION >= (3, 1)


def _run_in_virtualenv():
    """Install this checkout (and so Django) into example/.venv/pyX.Y and run the demo there."""
    if os.environ.get("MARATHON_DEMO_REEXEC"):
        sys.exit(
            "demo.py: Django is still not importable after installing it; giving up."
        )
    venv = os.path.join(HERE, ".venv", "py%d.%d" % sys.version_info[:2])
    bindir = os.path.join(venv, "Scripts" if os.name == "nt" else "bin")
    python = os.path.join(bindir, "python.exe" if os.name == "nt" else "python")
    env = dict(os.environ, MARATHON_DEMO_REEXEC="1")
    check = [python, "-c", "import django, sys; sys.exit(django.VERSION < (3, 1))"]
    if not (
        os.path.exists(python)
        and subprocess.call(check, stderr=subprocess.DEVNULL) == 0
    ):
        out("Django is not installed here: installing this checkout and Django into")
        out(
            "%s (first run only; needs network access to PyPI)." % os.path.relpath(venv)
        )
        if subprocess.call([sys.executable, "-m", "venv", venv]) == 0:
            pip = [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ]
            # Python 3.6 comes with pip 18, which cannot build a project without
            # setup.py; pip 21.3 can, and is the last pip for Python 3.6.
            old_pip = "import pip, sys; sys.exit(tuple(map(int, pip.__version__.split('.')[:2])) < (21, 3))"
            if subprocess.call([python, "-c", old_pip]) != 0:
                _call(pip + ["pip>=21.3,<22"])
            _call(pip + [ROOT])
        else:
            # No venv module (Debian/Ubuntu without python3-venv): install into a folder instead.
            out("(No working venv module; installing with pip --target instead.)")
            shutil.rmtree(venv, ignore_errors=True)
            target = venv + "-packages"
            pip = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ]
            _call(pip + ["--upgrade", "--target", target, ROOT])
            python = sys.executable
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [target, env.get("PYTHONPATH")])
            )
    sys.exit(
        subprocess.call([python, os.path.abspath(__file__)] + sys.argv[1:], env=env)
    )


def _call(command):
    if subprocess.call(command) != 0:
        sys.exit("demo.py: this command failed: %s" % " ".join(command))


def _setup_django(database):
    # This checkout's marathon.py comes first, even if some django-marathon is installed.
    sys.path[:0] = [HERE, ROOT]
    os.environ["EXAMPLE_DB"] = database  # read by example_project/settings.py
    os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
    os.environ["PYTHONUNBUFFERED"] = "1"  # children print each line as it happens
    import logging

    import django
    from django.core.management import call_command

    django.setup()
    for handler in logging.getLogger("marathon").handlers:
        handler.stream = sys.stdout  # keep our own log lines in order with the story
    call_command("migrate", verbosity=0)


# ---- Child processes: `manage.py nightly`, its output shown as it comes ----


class Run:
    """`python manage.py nightly ARGS` in a child process; each output line is shown and queued."""

    def __init__(self, label, *args):
        self.label = label
        self.lines = queue.Queue()
        self.output = []
        command = [sys.executable, os.path.join(HERE, "manage.py"), "nightly"] + list(
            args
        )
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        self.pid = self.process.pid
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            out("         %s | %s" % (self.label, line.rstrip()))
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError("%s ended before printing %r" % (self.label, text))
            if text in line:
                return line

    def finish(self, timeout=60):
        status = self.process.wait(timeout)
        self.reader.join(timeout)
        return status

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()


# ---- The story ----


def two_runs_at_once():
    say("1. Two runs of `manage.py nightly` at once.")
    first = Run("run 1", "--steps", "4")
    runs.append(first)
    first.wait_for("started")
    say("run 1 holds the lock 'nightly' and works. Now run 2 starts:")
    second = Run("run 2")
    runs.append(second)
    status = second.finish()
    if any("already running" in line for line in second.output):
        say(
            "run 2 did not run its handle(); it said who holds the lock and exited with status %d."
            % status
        )
    else:
        say("UNEXPECTED: run 2 did not report the lock as held (status %d)." % status)
        failures.append("skip")
    status = first.finish()
    say("run 1 finished (status %d) and released the lock." % status)


def killed_holder():
    from django.utils import timezone

    from marathon import Lock, Marathon

    out()
    say("2. A holder killed with SIGKILL: it cannot release its lock.")
    victim = Run("run 3", "--steps", "1000")
    runs.append(victim)
    victim.wait_for("step 1 ")
    victim.kill()
    victim.finish()
    say(
        "run 3 (pid %d) was killed with SIGKILL. Its row is still in marathon_lock:"
        % victim.pid
    )
    row = Lock.objects.get(name="nightly")
    say(
        "    name=%r owner=%r locked_at=%s"
        % (row.name, row.owner, row.locked_at.strftime("%H:%M:%S"))
    )
    age = (timezone.now() - row.heartbeat_at).total_seconds()
    acquired = Marathon("nightly").acquire()
    say(
        "An acquire now returns %s: its last heartbeat is only %.1f s old, and the lock goes stale "
        "after MARATHON_STALE_AFTER = 3 s without one." % (acquired, age)
    )
    while True:
        age = (
            timezone.now() - Lock.objects.get(name="nightly").heartbeat_at
        ).total_seconds()
        if age > 3:
            break
        say("    no heartbeat for %.1f s..." % age)
        time.sleep(0.75)
    say("No heartbeat for %.1f s: the holder is presumed dead. Run 4 starts:" % age)
    taker = Run("run 4", "--steps", "2")
    runs.append(taker)
    status = taker.finish()
    if any("finished" in line for line in taker.output):
        say(
            "run 4 took the stale lock over, ran, and released it (status %d)." % status
        )
    else:
        say("UNEXPECTED: run 4 did not take the stale lock over (status %d)." % status)
        failures.append("takeover")


def two_threads():
    from django.db import connections

    from marathon import AlreadyRunning, Marathon

    out()
    say("3. A decorated function called from two threads.")
    inside, go = threading.Event(), threading.Event()

    @Marathon("report")
    def report(who):
        say("%s is in report()" % who)
        inside.set()
        go.wait(10)

    outcomes = []

    def call(function, who):
        try:
            function(who)
            outcomes.append("ran")
        except AlreadyRunning as error:
            say("%s got AlreadyRunning: %s" % (who, error))
            outcomes.append("AlreadyRunning")
        finally:
            connections.close_all()  # this thread's database connection

    first = threading.Thread(target=call, args=(report, "thread A"))
    first.start()
    inside.wait(10)
    second = threading.Thread(target=call, args=(report, "thread B"))
    second.start()
    second.join()
    go.set()
    first.join()

    out()
    say("Now with @Marathon('report', wait=10): the second caller waits its turn.")

    @Marathon("report", wait=10)
    def patient_report(who):
        say("%s is in patient_report()" % who)
        time.sleep(1)
        say("%s leaves patient_report()" % who)

    threads = [
        threading.Thread(target=call, args=(patient_report, who))
        for who in ("thread A", "thread B")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if sorted(outcomes) != ["AlreadyRunning", "ran", "ran", "ran"]:
        failures.append("threads: %s" % outcomes)


runs = []
failures = []


def main():
    if not _has_django():
        _run_in_virtualenv()
    import django

    tmp = tempfile.mkdtemp(prefix="marathon-demo-")
    try:
        _setup_django(os.path.join(tmp, "demo.sqlite3"))
        say(
            "django-marathon demo: Python %d.%d, Django %s, SQLite file in %s"
            % (sys.version_info[0], sys.version_info[1], django.get_version(), tmp)
        )
        out()
        two_runs_at_once()
        killed_holder()
        two_threads()
        out()
        if failures:
            sys.exit(
                "demo.py: something did not go as the story says: %s."
                % ", ".join(failures)
            )
        say("Done. See example/demo_app/management/commands/nightly.py and README.rst.")
    finally:
        for run in runs:
            run.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
