"""mypy's stubtest for marathon: `python stubtest.py marathon [stubtest options]`.

stubtest imports the module it checks, and marathon's models exist only in
a configured Django: this sets Django up (DJANGO_SETTINGS_MODULE) first.
"""

import sys

import django

django.setup()

from mypy.stubtest import main  # noqa: E402 - after django.setup()

sys.exit(main())
