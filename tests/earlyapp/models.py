import marathon

# Whether marathon had built its model before this app's models were imported:
# False shows that Lock below is built on demand by the module's __getattr__.
BUILT_BEFORE = "Lock" in vars(marathon)

from marathon.models import LastRun, Lock  # noqa: E402

EARLY_LOCK = Lock
EARLY_LAST_RUN = LastRun
