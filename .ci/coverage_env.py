"""Coverage in tox: set up a test env, and check and gate the combined data.

    python .ci/coverage_env.py start DATA_FILE    (each test env's commands_pre)
    python .ci/coverage_env.py check DATA_DIR     (the coverage env, before combining)
    python .ci/coverage_env.py leftovers DATA_DIR (the coverage env, after combining)
    python .ci/coverage_env.py gate JSON SETUP_CFG  (the coverage env, after `coverage json`)

start: drops this env's data from an earlier run (a rerun replaces it, never
adds to it); writes a .pth file into the env's site-packages that starts
coverage in every Python process of the env (when COVERAGE_PROCESS_START is
set); and records the hash of the marathon.py the env runs.

check: the report maps every env's marathon.py onto the checkout's, line by
line, so data measured from another version of it would be reported against
the wrong lines and look like gaps. Fails, naming the envs, if any env with
data to combine ran another marathon.py (or recorded none).

leftovers: `coverage combine` deletes what it combined; a data file it could
not read (a process killed while it saved) would stay, and be warned about in
every later report. Deletes those, saying which.

gate: prints coverage.py's figure (statements and branches together, the one
`coverage report` shows) and the branches alone; exits 1 if the first is
below fail_under (setup.cfg [coverage:report]).
"""

import configparser
import glob
import hashlib
import json
import os
import sys
import sysconfig

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hash(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def start(data_file):
    directory, prefix = os.path.split(data_file)
    os.makedirs(directory, exist_ok=True)
    for old in glob.glob(glob.escape(data_file) + ".*"):
        os.remove(old)
    site_packages = sysconfig.get_paths()["purelib"]
    with open(os.path.join(site_packages, "marathon_coverage.pth"), "w") as file:
        file.write("import coverage; coverage.process_startup()\n")
    source = os.path.join(site_packages, "marathon.py")
    with open(os.path.join(directory, "source" + prefix + ".sha256"), "w") as file:
        file.write(_hash(source) + "\n")
    return 0


def check(directory):
    if not os.path.isdir(directory):
        print("coverage: no data in %s: run some test envs first" % directory)
        return 1
    ours = _hash(os.path.join(HERE, "marathon.py"))
    stale = []
    # .coverage.ENV.HOST.pidN.SUFFIX: env names hold no dots.
    envs = {
        name.split(".")[2]
        for name in os.listdir(directory)
        if name.startswith(".coverage.")
    }
    for env in sorted(envs):
        try:
            with open(
                os.path.join(directory, "source.coverage.%s.sha256" % env)
            ) as file:
                recorded = file.read().strip()
        except FileNotFoundError:
            recorded = None
        if recorded != ours:
            stale.append(env)
    if stale:
        print(
            "coverage: these envs ran another marathon.py than this checkout's, so their "
            "data would be reported against the wrong lines; rerun them, or delete "
            "their files in %s: %s" % (directory, ", ".join(stale)),
            file=sys.stderr,
        )
        return 1
    return 0


def leftovers(directory):
    names = sorted(
        name for name in os.listdir(directory) if name.startswith(".coverage.")
    )
    for name in names:
        os.remove(os.path.join(directory, name))
    if names:
        print(
            "coverage: dropped %d unreadable data file(s): %s"
            % (len(names), ", ".join(names))
        )
    return 0


def gate(report, config):
    with open(report) as file:
        totals = json.load(file)["totals"]
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    minimum = parser.getfloat("coverage:report", "fail_under")
    covered = totals["covered_lines"] + totals["covered_branches"]
    total = totals["num_statements"] + totals["num_branches"]
    percent = 100.0 * covered / total if total else 0.0
    print(
        "coverage of marathon.py (statements and branches): %d of %d, %.1f%%; "
        "the gate is %g%%: %s"
        % (
            covered,
            total,
            percent,
            minimum,
            "FAILED" if percent < minimum else "passed",
        )
    )
    print(
        "branches alone: %d of %d taken, %.1f%% (not gated)"
        % (
            totals["covered_branches"],
            totals["num_branches"],
            100.0 * totals["covered_branches"] / max(totals["num_branches"], 1),
        )
    )
    return 1 if percent < minimum else 0


if __name__ == "__main__":
    sys.exit(
        {"start": start, "check": check, "leftovers": leftovers, "gate": gate}[
            sys.argv[1]
        ](*sys.argv[2:])
    )
