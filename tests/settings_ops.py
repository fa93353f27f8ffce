"""The test settings as an operator's project might have them, for child processes.

Local time without time zone support: USE_TZ = False, in a zone with no
daylight saving time and an offset that no one mistakes for UTC.
"""
from tests.settings import *  # noqa: F401,F403

USE_TZ = False
TIME_ZONE = "Asia/Kolkata"  # IST, UTC+05:30
