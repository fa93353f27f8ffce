"""Settings of the example project: SQLite, the demo app and marathon."""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "marathon",
    "demo_app",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

ROOT_URLCONF = "example_project.urls"

# A file database, so that several processes share it. demo.py points
# EXAMPLE_DB at a fresh file in the temporary directory for each run.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB") or os.path.join(BASE_DIR, "db.sqlite3"),
    }
}

# Short times so the demo shows a takeover in seconds. Do not copy them: the
# defaults (10 s and 60 s) suit real work, where a holder may pause for a few
# seconds (a long query, a garbage collection, a busy host) without losing its lock.
MARATHON_HEARTBEAT = 1  # seconds between two heartbeats of a held lock
MARATHON_STALE_AFTER = (
    3  # seconds without a heartbeat before another run may take the lock over
)

# Show marathon's log: INFO on acquire and release, WARNING on a takeover.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"short": {"format": "[%(name)s %(levelname)s] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "short"}},
    "loggers": {"marathon": {"handlers": ["console"], "level": "INFO"}},
}
