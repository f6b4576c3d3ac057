"""Task tests use the web tests' cast (two orgs, one user per role): tasks act on tenant-owned rows."""

from tests.webapp.conftest import cast  # noqa: F401 - a fixture, shared by import
