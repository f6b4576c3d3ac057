"""Streaming an upload into the storage API: counted, hashed and bounded while it flows.

The web process never holds a whole file: `BoundedReader` hands the storage backend one block at a time from
the request stream (or an uploaded temp file), computing the SHA-256 and the size as it goes, and stops with
`UploadTooLarge` the moment more bytes arrive than were announced or allowed.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import IO, Any

from django.core.files import File

BLOCK_SIZE = 1 << 20  # 1 MiB: the most of an upload the web process holds at once
SNIFF_BYTES = 8192
PROGRESS_EVERY = 16 << 20  # report (and so renew the upload's liveness) every 16 MiB


class UploadTooLarge(Exception):
    """More bytes arrived than the announced size or the limit."""


class BoundedReader(io.RawIOBase):
    """A read-only, forward-only view of `source` that hashes, counts and caps what passes through."""

    def __init__(self, source: IO[bytes] | Any, limit: int, on_progress: Callable[[int], None] | None = None) -> None:
        self.source = source
        self.limit = limit
        self.on_progress = on_progress
        self._reported = 0
        self.size = 0
        self.head = b""
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # Storage backends rewind before reading; a rewind to where we still are is harmless.
        if self.size == 0 and offset == 0 and whence in (io.SEEK_SET, io.SEEK_CUR):
            return 0
        raise io.UnsupportedOperation("an upload stream can only be read forward")

    def tell(self) -> int:
        return self.size

    def read(self, size: int = -1) -> bytes:
        wanted = BLOCK_SIZE if size is None or size < 0 else min(size, BLOCK_SIZE)
        data = self.source.read(wanted)
        if not data:
            return b""
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(f"more than {self.limit} bytes")
        if len(self.head) < SNIFF_BYTES:
            self.head += data[: SNIFF_BYTES - len(self.head)]
        self._digest.update(data)
        if self.on_progress is not None and self.size - self._reported >= PROGRESS_EVERY:
            self._reported = self.size
            self.on_progress(self.size)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class StreamFile(File):
    """A Django `File` over a `BoundedReader` whose chunks are read straight from the stream."""

    def __init__(self, reader: BoundedReader, name: str) -> None:
        super().__init__(reader, name=name)
        self.reader = reader

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.reader.size

    def chunks(self, chunk_size: int | None = None) -> Any:
        while True:
            data = self.reader.read(chunk_size or BLOCK_SIZE)
            if not data:
                return
            yield data
