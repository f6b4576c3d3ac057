"""A slow disk for the web server of the fault tier (settings: tests/faults/slow_disk_settings.py).

Under ASGI, Django reads the whole request body (into a spooled temporary file) before the view runs; the view
then copies it into storage at disk speed. This storage writes its blocks (1 MiB from an upload) a little apart,
so that a test can kill the server while a file is half-written in storage: the window a real large upload has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from django.core.files.storage import FileSystemStorage

SECONDS_PER_BLOCK = 0.4


class _Trickle:
    """The content, handed to FileSystemStorage block by block with a pause after each written block."""

    def __init__(self, content: Any) -> None:
        self.content = content

    def chunks(self, chunk_size: int | None = None) -> Iterator[bytes]:
        for chunk in self.content.chunks(chunk_size):
            yield chunk
            time.sleep(SECONDS_PER_BLOCK)


class SlowFileSystemStorage(FileSystemStorage):
    def _save(self, name: str, content: Any) -> str:
        return super()._save(name, _Trickle(content))
