"""Warnings are errors in child processes too, by the very filters pytest applies.

setup.cfg's [tool:pytest] filterwarnings is the one list: conftest.py passes
it to every child in MARATHON_TEST_WARNINGS and tests/settings.py applies it.
The user project of tests/usersuite/ keeps copies of its own (it stands for a
project that does not import the suite's code); they must not drift.
"""

import inspect
import json
import os
import warnings

from tests.processes import run_python
from tests.test_usersuite import USERSUITE, run_usersuite


def described(filters):
    """warnings.filters as JSON-able rows: (action, message, category, module, lineno).

    A message or module may be a regex, a str or None; an empty one matches
    anything, as None does (Python 3.6 keeps filterwarnings()'s "" as a regex).
    """
    return [
        [
            action,
            getattr(message, "pattern", message) or None,
            "%s.%s" % (category.__module__, category.__qualname__),
            getattr(module, "pattern", module) or None,
            lineno,
        ]
        for action, message, category, module, lineno in filters
    ]


# A child: Django set up with the settings of its environment, then it warns
# (argv[1] is the message) or, with no argument, prints the filters it
# applies. It brings described() along rather than import this module (with
# pytest, whose imports warn on Python 3.6).
CHILD = (
    "import json, sys, warnings\n"
    + inspect.getsource(described)
    + """
import django
django.setup()
if len(sys.argv) > 1:
    warnings.warn(sys.argv[1], DeprecationWarning)
    print("went on")
else:
    print(json.dumps(described(warnings.filters)))
"""
)


def child(*args):
    """Run CHILD as a child process of the tests; (returncode, stdout, stderr)."""
    return run_python(["-c", CHILD] + list(args))


def test_a_child_applies_pytests_filters_in_pytests_order(pytestconfig):
    lines = pytestconfig.getini("filterwarnings")
    assert "error" in lines
    code, out, err = child()
    assert code == 0, err
    in_child = json.loads(out)[: len(lines)]
    in_pytest = [json.loads(json.dumps(row)) for row in described(warnings.filters)]
    assert any(
        in_pytest[start : start + len(lines)] == in_child
        for start in range(len(in_pytest))
    ), "child: %s\npytest: %s" % (in_child, in_pytest)


def test_a_warning_in_a_child_is_an_error():
    code, out, err = child("something is deprecated")
    assert code == 1 and "went on" not in out, (out, err)
    assert "DeprecationWarning: something is deprecated" in err, err


def test_a_warning_the_list_ignores_is_ignored_in_a_child():
    code, out, err = child("'cgi' is deprecated and slated for removal")
    assert code == 0 and "went on" in out, (out, err)


def test_the_user_projects_copies_are_the_suites_list(pytestconfig):
    """tests/usersuite's pytest.ini and its settings apply what pytest applies here."""
    import configparser

    ini = configparser.ConfigParser(interpolation=None)
    ini.read(os.path.join(USERSUITE, "pytest.ini"))
    lines = pytestconfig.getini("filterwarnings")
    copied = [
        line.strip()
        for line in ini["pytest"]["filterwarnings"].splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert copied == lines
    code, output = run_usersuite("django", ["-c", CHILD])
    assert code == 0, output
    in_user_project = json.loads(output.strip().splitlines()[-1])[: len(lines)]
    code, out, err = child()
    assert code == 0, err
    assert in_user_project == json.loads(out)[: len(lines)]
