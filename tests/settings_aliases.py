"""Test settings whose locks are not on the default database, for child processes.

"default" is an empty SQLite file (MARATHON_EMPTY_DB) with no tables at all,
so whatever reaches it fails; "locks" is the test database, so the locks are
found only through that alias; "unsupported" is Django's dummy backend
(vendor "unknown"), which marathon refuses. "other" is an in-memory SQLite
database, for a transaction on a database the locks are not on.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["MARATHON_EMPTY_DB"],
    },
    "locks": DATABASES["default"],
    "unsupported": {"ENGINE": "django.db.backends.dummy"},
    "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}
