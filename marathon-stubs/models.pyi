# marathon.models is marathon itself at run time (0.1's import path): see the
# import-system glue at the end of marathon.py.

from marathon import *  # noqa: F403 - every public name, as at run time
from marathon import MarathonConfig as MarathonConfig
from marathon import SingleRunner as SingleRunner
from marathon import __all__ as __all__
