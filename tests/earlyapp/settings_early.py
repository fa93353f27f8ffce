"""settings_plain, with an app listed before marathon that imports Lock in its models.py."""

from tests.earlyapp.settings_plain import *  # noqa: F403
from tests.earlyapp.settings_plain import INSTALLED_APPS as _apps

INSTALLED_APPS = [app for app in _apps if app != "marathon"] + [
    "tests.earlyapp",
    "marathon",
]
