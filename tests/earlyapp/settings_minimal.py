"""Only marathon installed: nothing but MarathonConfig.import_models() builds the model."""

from tests.earlyapp.settings_plain import *  # noqa: F403

INSTALLED_APPS = ["marathon"]
ROOT_URLCONF = None
