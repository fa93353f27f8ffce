#!/usr/bin/env python
"""The user project's manage.py (tests/test_usersuite.py runs `manage.py test` with it)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "usersuite_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
