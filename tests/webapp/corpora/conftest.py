"""A corpus of org A, storage in a temporary folder, and the browser's two-step upload as a helper."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse

from tests.webapp.conftest import Cast
from webapp.corpora.models import Corpus, CorpusFile


@pytest.fixture(autouse=True)
def media_root(settings: Any, tmp_path: Path) -> Path:
    """Every stored upload lands under the test's own folder (FileSystemStorage follows MEDIA_ROOT changes)."""
    root = tmp_path / "media"
    settings.MEDIA_ROOT = root
    assert Path(default_storage.path("x")).parent == root
    return root


@pytest.fixture
def corpus(cast: Cast) -> Corpus:
    return Corpus.objects.create(organization=cast.org, name="Handbook", created_by=cast.owner)


@dataclass
class Upload:
    start: Any  # the response of `file-start`
    content: Any | None  # the response of the PUT (None when the start was refused)

    @property
    def file(self) -> CorpusFile:
        return CorpusFile.objects.get(pk=self.start.json()["id"])


def upload_bytes(client: Client, corpus: Corpus, name: str, data: bytes, *, declared: int | None = None) -> Upload:
    """The browser's flow: record the file (name, size), then PUT its bytes to the returned upload URL."""
    size = len(data) if declared is None else declared
    start = client.post(reverse("corpora:file-start", args=[corpus.pk]), {"name": name, "size": size})
    if start.status_code != 201:
        return Upload(start, None)
    return Upload(start, put_bytes(client, start.json()["upload_url"], data))


def put_bytes(client: Client, url: str, data: bytes, **extra: Any) -> Any:
    return client.put(url, data, content_type="application/octet-stream", **extra)


def stored_files(root: Path) -> dict[str, bytes]:
    """Every file under the storage root, by its path relative to it."""
    if not root.exists():
        return {}
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}
