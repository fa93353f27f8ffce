"""python -m marathon's command line (issue 14): usage, help, aliases and settings.

These tests have no database access (pytest-django blocks it), so each also
shows that a command line refused, or a help asked for, never reaches the
database: nothing is listed, and nothing released. What the tool does with
the database is tested in test_operate.py.
"""

import pytest

import marathon


def run_main(capsys, *argv):
    code = marathon._main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["release"],
        ["release", "--stale", "stale-job"],  # not a release by name
        ["list", "--stale"],
        ["list", "--frobnicate"],
        ["release", "--data", "default", "stale-job"],  # no abbreviations
        ["release", "--database"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run_main(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("usage: python -m marathon") and "error: " in err


@pytest.mark.parametrize("argv", [["--help"], ["release", "--help"], ["list", "-h"]])
def test_help_goes_to_stdout_with_status_0(capsys, argv):
    code, out, err = run_main(capsys, *argv)
    assert (code, err) == (0, "")
    assert out.startswith("usage: python -m marathon")


@pytest.mark.parametrize(
    "argv",
    [
        ["--database", "other", "list"],
        ["list", "--database", "other"],
        ["release", "--database", "other", "stale-job"],
        ["release", "stale-job", "--database", "other"],
        ["release", "--stale", "--database", "other"],
    ],
)
def test_database_option_before_or_after_the_command_is_not_a_lock_name(capsys, argv):
    code, out, err = run_main(capsys, *argv)
    assert (code, out) == (2, "")
    assert (
        err
        == "python -m marathon: error: no database 'other' in DATABASES (default).\n"
    )


def test_without_settings_one_line_says_so(capsys, monkeypatch):
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    code, out, err = run_main(capsys, "list")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(
        "python -m marathon: error: DJANGO_SETTINGS_MODULE is not set"
    )
