"""What the test commands share: files to signal readiness and to wait on."""

import json
import os
import threading
import time

from marathon import Lock


def add_arguments(parser):
    parser.add_argument(
        "--ready", help="write this file (JSON: the lock row) once running"
    )
    parser.add_argument(
        "--wait-for", help="then wait (at most 30 s) until this file exists"
    )
    parser.add_argument("--fail", action="store_true", help="raise an exception")
    parser.add_argument(
        "--until-heartbeat",
        action="store_true",
        help="wait until the row's heartbeat moves",
    )


def run(command, lock_name, options):
    """The body of each test command; reports what it saw on stdout."""
    command.stdout.write("Starting task...")
    row = Lock.objects.filter(name=lock_name).first()
    facts = {
        "lock": lock_name,
        "row": bool(row),
        "owner": row.owner if row else None,
        "pid": os.getpid(),
    }
    command.stdout.write("FACTS " + json.dumps(facts))
    if options.get("until_heartbeat"):
        first, deadline = row.heartbeat_at, time.monotonic() + 5
        while Lock.objects.get(name=lock_name).heartbeat_at == first:
            assert time.monotonic() < deadline, "no heartbeat while the command ran"
            threading.Event().wait(0.02)
        command.stdout.write("heartbeat moved")
    if options.get("ready"):
        with open(options["ready"] + ".tmp", "w") as file:
            file.write(json.dumps(facts))
        os.rename(options["ready"] + ".tmp", options["ready"])
    if options.get("wait_for"):
        deadline = time.monotonic() + 30
        while not os.path.exists(options["wait_for"]) and time.monotonic() < deadline:
            threading.Event().wait(0.02)
    if options.get("fail"):
        raise RuntimeError("the task failed")
    command.stdout.write("Task completed.")
