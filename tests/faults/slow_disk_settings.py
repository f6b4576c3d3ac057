"""The test settings with a slow disk as the default storage (tests/faults/slow_disk_storage.py)."""

from tests.settings import *  # noqa: F403
from tests.settings import STORAGES

STORAGES = {**STORAGES, "default": {"BACKEND": "tests.faults.slow_disk_storage.SlowFileSystemStorage"}}
