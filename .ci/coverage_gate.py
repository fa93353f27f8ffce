"""The coverage gate, run by tox's `coverage` env after `coverage json`.

`coverage report` prints one figure, lines and branches together; the gate
is on both that figure and the branches alone, each at least fail_under
(setup.cfg [coverage:report]). Exits 1 if either is below.

    python .ci/coverage_gate.py coverage.json setup.cfg
"""

import configparser
import json
import sys


def main(report, config):
    totals = json.load(open(report))["totals"]
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    gate = parser.getfloat("coverage:report", "fail_under")
    figures = [
        (
            "lines and branches",
            totals["covered_lines"] + totals["covered_branches"],
            totals["num_statements"] + totals["num_branches"],
        ),
        ("branches", totals["covered_branches"], totals["num_branches"]),
    ]
    failed = False
    for what, covered, total in figures:
        percent = 100.0 * covered / total if total else 0.0
        below = percent < gate
        failed = failed or below
        print(
            "coverage of %s: %d of %d (%.1f%%), %s the gate of %g%%"
            % (what, covered, total, percent, "BELOW" if below else "at or above", gate)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
