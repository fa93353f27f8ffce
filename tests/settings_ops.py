"""The test settings as an operator's project might have them, for child processes.

Local time without time zone support (USE_TZ = False, in a zone with no
daylight saving time and an offset that no one mistakes for UTC), and a
second database alias, "unreachable", that cannot be reached.
"""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, DB

USE_TZ = False
TIME_ZONE = "Asia/Kolkata"  # IST, UTC+05:30

if DB == "sqlite":
    _unreachable = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": "/nonexistent-marathon-dir/locks.sqlite3",
    }
else:
    _unreachable = dict(
        DATABASES["default"], HOST="127.0.0.1", PORT="1"
    )  # nothing listens on port 1
DATABASES = dict(DATABASES, unreachable=_unreachable)
