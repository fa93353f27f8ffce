"""System checks marathon.E001..E004: wrong settings are reported with their facts."""

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from marathon import _check_settings

CASES = [
    # (settings, check id, words the message must hold)
    (
        {"MARATHON_HEARTBEAT": "10"},
        "marathon.E001",
        ["MARATHON_HEARTBEAT", "positive number of seconds", "'10'"],
    ),
    (
        {"MARATHON_HEARTBEAT": 0},
        "marathon.E001",
        ["MARATHON_HEARTBEAT", "positive number of seconds", "got 0"],
    ),
    (
        {"MARATHON_HEARTBEAT": -2.5},
        "marathon.E001",
        ["MARATHON_HEARTBEAT", "positive", "-2.5"],
    ),
    (
        {"MARATHON_HEARTBEAT": True},
        "marathon.E001",
        ["MARATHON_HEARTBEAT", "positive", "True"],
    ),
    (
        {"MARATHON_HEARTBEAT": None},
        "marathon.E001",
        ["MARATHON_HEARTBEAT", "positive", "None"],
    ),
    (
        {"MARATHON_STALE_AFTER": [60]},
        "marathon.E002",
        ["MARATHON_STALE_AFTER", "positive number of seconds", "[60]"],
    ),
    (
        {"MARATHON_STALE_AFTER": 0},
        "marathon.E002",
        ["MARATHON_STALE_AFTER", "positive", "got 0"],
    ),
    (
        {"MARATHON_STALE_AFTER": False},
        "marathon.E002",
        ["MARATHON_STALE_AFTER", "positive", "False"],
    ),
    (
        {"MARATHON_HEARTBEAT": 10, "MARATHON_STALE_AFTER": 19},
        "marathon.E003",
        ["MARATHON_STALE_AFTER", "MARATHON_HEARTBEAT", "twice", "19", "10"],
    ),
    (
        {"MARATHON_DATABASE": "replica"},
        "marathon.E004",
        ["MARATHON_DATABASE", "DATABASES", "default", "'replica'"],
    ),
    (
        {"MARATHON_DATABASE": 0},
        "marathon.E004",
        ["MARATHON_DATABASE", "None or a key of DATABASES", "got 0"],
    ),
]


def ids(case):
    return "%s-%s" % (
        case[1],
        "-".join("%s=%r" % item for item in sorted(case[0].items())),
    )


@pytest.mark.parametrize(
    "overrides,check_id,words", CASES, ids=[ids(case) for case in CASES]
)
def test_check_function(overrides, check_id, words):
    with override_settings(**overrides):
        errors = _check_settings()
    assert [error.id for error in errors] == [check_id]
    for word in words:
        assert word in errors[0].msg


@pytest.mark.parametrize(
    "overrides,check_id,words", CASES, ids=[ids(case) for case in CASES]
)
def test_check_command(overrides, check_id, words):
    with override_settings(**overrides):
        with pytest.raises(SystemCheckError) as caught:
            call_command("check")
    assert check_id in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_both_timings_wrong_reports_both_and_not_e003():
    with override_settings(MARATHON_HEARTBEAT=0, MARATHON_STALE_AFTER="x"):
        assert sorted(error.id for error in _check_settings()) == [
            "marathon.E001",
            "marathon.E002",
        ]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"MARATHON_HEARTBEAT": 0.1, "MARATHON_STALE_AFTER": 0.2},
        {"MARATHON_HEARTBEAT": 30, "MARATHON_STALE_AFTER": 600},
        {"MARATHON_DATABASE": "default"},
        {"MARATHON_DATABASE": None},
    ],
)
def test_good_settings_pass(overrides):
    with override_settings(**overrides):
        assert _check_settings() == []
        call_command("check")
