#!/usr/bin/env python
"""The example project's manage.py: try `python manage.py migrate`, then `python manage.py nightly`."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    # This checkout's marathon.py comes first, even if some django-marathon is installed.
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
