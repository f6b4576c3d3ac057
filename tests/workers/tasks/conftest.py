"""Task tests use the web tests' cast (two orgs, one user per role; tasks act on tenant-owned rows) and DNS."""

from tests.webapp.conftest import cast, public_dns  # noqa: F401 - fixtures, shared by import
