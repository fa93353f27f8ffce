"""The glue that lets the module marathon.py be the Django app "marathon".

Each trick at the end of marathon.py has a test here that fails without it.
Tests marked "child" run a fresh process with tests/earlyapp/settings_*.py: a
project that adds "marathon" to INSTALLED_APPS and nothing else (tests/settings.py
sets MIGRATION_MODULES and DEFAULT_AUTO_FIELD, which would hide a broken line).
"""

import importlib
import json
import os
import pickle
import tempfile

import django
import pytest
from django.apps import apps
from django.db import connection, models

import marathon
import marathon_migrations
from tests import settings as test_settings
from tests.processes import LOCK_COLUMNS, child_env, run_python


def probe(settings_module, *args):
    if connection.vendor == "sqlite":
        database = os.path.join(
            tempfile.gettempdir(), "%s_app.sqlite3" % test_settings.TEST_NAME
        )
    else:
        database = "%s_app" % test_settings.TEST_NAME
    env = child_env(DJANGO_SETTINGS_MODULE=settings_module, MARATHON_APP_DB=database)
    code, out, err = run_python(
        ["-m", "tests.earlyapp.probe"] + list(args), env=env, timeout=60
    )
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def plain():
    """A project with only INSTALLED_APPS += ["marathon"], migrated from scratch."""
    return probe("tests.earlyapp.settings_plain", "migrate")


@pytest.fixture(scope="module")
def early():
    """A project with an app listed before marathon that imports Lock in its models.py."""
    return probe("tests.earlyapp.settings_early")


# ---- marathon.apps, .models, .commands, .mixins ----


@pytest.mark.parametrize("submodule", ["apps", "models", "commands", "mixins"])
def test_import_paths_of_0_1_are_the_module(submodule):
    assert importlib.import_module("marathon." + submodule) is marathon


def test_documented_imports():
    from marathon.commands import SingleRunnerCommand
    from marathon.mixins import SingleRunner
    from marathon.models import Lock

    assert Lock is apps.get_model("marathon", "Lock")
    assert SingleRunnerCommand is marathon.SingleRunnerCommand
    assert SingleRunner is marathon.SingleRunner


# ---- marathon.migrations ----


def test_migrations_module_is_marathon_migrations():
    assert importlib.import_module("marathon.migrations") is marathon_migrations


def test_migrate_creates_the_table_without_migration_modules(plain):
    assert "marathon_lock" in plain["tables"], plain["migrate"]
    assert plain["columns"] == LOCK_COLUMNS
    assert "Applying marathon.0002_heartbeat" in plain["migrate"]


def test_makemigrations_finds_no_change(plain):
    assert plain["makemigrations_exit"] in (0, None), plain["makemigrations"]
    assert "No changes detected" in plain["makemigrations"]


def test_check_is_clean(plain):
    assert (
        plain["check"].strip() == "System check identified no issues (0 silenced)."
    ), plain["check"]


# ---- __path__ (and default_app_config below Django 3.2): the app config is used ----


def test_app_config_is_marathon_config():
    config = apps.get_app_config("marathon")
    assert type(config) is marathon.MarathonConfig
    assert config.verbose_name == "Marathon Single Runner"
    assert config.default_auto_field == "django.db.models.BigAutoField"
    assert isinstance(marathon.Lock._meta.pk, models.BigAutoField)


def test_app_config_is_used_without_settings_help(plain):
    assert plain["config"] == "marathon.MarathonConfig"
    assert plain["verbose_name"] == "Marathon Single Runner"


def test_checks_are_registered_by_the_app_config():
    from django.core import checks

    assert marathon._check_settings in checks.registry.registry.registered_checks


@pytest.mark.skipif(
    django.VERSION >= (3, 2), reason="Django 3.2+ finds the config in marathon.apps"
)
def test_default_app_config_below_django_3_2():
    assert marathon.default_app_config == "marathon.MarathonConfig"


@pytest.mark.skipif(
    django.VERSION < (3, 2), reason="Django 3.1 needs default_app_config"
)
def test_no_default_app_config_from_django_3_2():
    assert not hasattr(marathon, "default_app_config")  # 3.2+ would warn about it


# ---- path ----


def test_path_is_not_the_folder_that_holds_the_module():
    config = apps.get_app_config("marathon")
    module_dir = os.path.dirname(os.path.realpath(marathon.__file__))
    assert os.path.isdir(config.path)
    assert os.path.realpath(config.path) != module_dir
    assert os.path.realpath(config.path).startswith(module_dir + os.sep)
    for folder in ("templates", "static", "fixtures", "management", "locale"):
        assert not os.path.exists(os.path.join(config.path, folder))


# ---- the model, built lazily ----


def test_model_built_by_the_app_config():
    # Only marathon installed (no admin, whose registration would build it too).
    minimal = probe("tests.earlyapp.settings_minimal")
    assert minimal["models"] == ["LastRun", "Lock"]


def test_model_importable_from_an_app_listed_before_marathon(early):
    assert early["early_built_before"] is False  # so the module built it on demand
    assert early["early_is_registered"] is True
    assert early["early_last_run_is_registered"] is True
    assert early["models"] == ["LastRun", "Lock"]


def test_unknown_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError):
        marathon.NoSuchThing  # noqa: B018 - the attribute access is the test
    assert not hasattr(marathon, "lock")


@pytest.mark.django_db
def test_model_pickles():
    Lock = marathon.Lock
    assert pickle.loads(pickle.dumps(Lock)) is Lock
    lock = Lock.objects.create(name="pickled")
    copy = pickle.loads(pickle.dumps(lock))
    assert type(copy) is Lock and copy.pk == lock.pk and copy.name == "pickled"
    assert Lock.__module__ == "marathon" and Lock.__qualname__ == "Lock"
