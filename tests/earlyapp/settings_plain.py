"""A project that adds "marathon" to INSTALLED_APPS and nothing else.

No MIGRATION_MODULES and no DEFAULT_AUTO_FIELD (tests/settings.py has both, which
would hide a broken glue line). Its database is MARATHON_APP_DB, made and dropped
by tests/earlyapp/probe.py.
"""

import copy
import os

from tests import settings as _base

SECRET_KEY = _base.SECRET_KEY
USE_TZ = True
TIME_ZONE = "UTC"
_db = copy.deepcopy(_base.DATABASES["default"])
_db["NAME"] = _db["TEST"]["NAME"] = os.environ["MARATHON_APP_DB"]
DATABASES = {"default": _db}
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "marathon",
]
MIDDLEWARE = _base.MIDDLEWARE
TEMPLATES = _base.TEMPLATES
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
