"""The ingest package loads its modules on first use: the web process judges upload types with `sniff` alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

import workers.ml.ingest as ingest


def test_it_imports_sniff_without_the_extractors_or_the_language_model() -> None:
    probe = "import sys, workers.ml.ingest.sniff; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert "workers.ml.ingest.sniff" in loaded
    assert "workers.ml.ingest.extract" not in loaded
    assert "workers.ml.ingest.stats" not in loaded
    assert "pypdf" not in loaded


def test_it_resolves_every_exported_name_from_its_module() -> None:
    from workers.ml.ingest.extract import extract_file
    from workers.ml.ingest.report import FileStatus

    assert ingest.extract_file is extract_file
    assert ingest.FileStatus is FileStatus
    for name in ingest.__all__:
        assert getattr(ingest, name) is not None


def test_it_says_which_name_it_lacks() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        ingest.no_such_thing  # noqa: B018
