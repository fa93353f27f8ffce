"""The models in model/ check out, and every bad design put back into them fails.

Runs model/check.sh, which needs spin and gcc (about a minute on 2 cores), in
the `full` tox envs only (marker `model`): the models do not depend on the
Python or Django version.
"""

import os
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.model

# tox links tests/ into a directory of its own: find model/ from the real file.
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
CHECK = os.path.join(ROOT, "model", "check.sh")
# The known bad designs (a)-(f) of the design review, and the extra ones.
MUTANTS = ["Ma", "Mb", "Mc", "Md", "Me", "Mf", "Mg", "Mh"]
ASSUMPTIONS = ["A1", "A2", "A3", "A4"]
CHECKS = ["P1", "P2", "P3", "T1", "T2", "T3"]


def _summary(output):
    """{id: (kind, result)} from the Summary table at the end of check.sh's output."""
    rows = {}
    for line in output.split("Summary", 1)[-1].splitlines():
        match = re.match(
            r"^(\w\w)\s+(check|mutant|assumption)\s+\S+\s+\S+\s+\S+\s+(.*)$", line
        )
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3).strip())
    return rows


@pytest.mark.timeout(960)  # above check.sh's own bound (900 s), so that fails first
def test_models_check_and_every_bad_design_fails():
    missing = [tool for tool in ("bash", "spin", "gcc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            "model/check.sh needs %s (apt-get install spin gcc)" % " and ".join(missing)
        )
    result = subprocess.run(
        ["bash", CHECK],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=900,
    )
    output = result.stdout
    assert result.returncode == 0, output[-6000:]
    rows = _summary(output)
    for check in CHECKS:
        assert rows.get(check) == ("check", "ok"), (
            check,
            rows.get(check),
            output[-6000:],
        )
    for bad in MUTANTS + ASSUMPTIONS:
        kind = "mutant" if bad in MUTANTS else "assumption"
        assert rows.get(bad) == (kind, "fails, as it must"), (
            bad,
            rows.get(bad),
            output[-6000:],
        )
    assert len(re.findall(r"counterexample: ", output)) >= len(MUTANTS + ASSUMPTIONS), (
        output[-6000:]
    )
