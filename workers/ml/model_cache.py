"""Atomic on-disk cache entries: built once in a temporary directory, published by one rename.

Layout of one entry, e.g. `<cache_dir>/packaged/smollm2-135m-instruct/`:
    config.json, model.safetensors, tokenizer files   what transformers saved
    distillery-model.json                             metadata, written last: its presence marks a whole entry
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from workers.ml.catalog_types import ModelUnavailable, ProgressCallback

METADATA_FILE = "distillery-model.json"
# Bump when the layout or the hashing of entries changes: older entries are then rebuilt, not misread.
CACHE_FORMAT = 1
# A conversion takes seconds to minutes; a lock held longer than this belongs to a hung process.
LOCK_TIMEOUT_S = 60 * 60

Builder = Callable[[Path], dict[str, Any]]


@dataclass(frozen=True)
class CacheEntry:
    """One cache directory and its sidecar files (lock, temporary build directories) in the same parent."""

    path: Path

    @property
    def lock_path(self) -> Path:
        return self.path.parent / f".{self.path.name}.lock"

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA_FILE

    def read_metadata(self) -> dict[str, Any] | None:
        """The entry's metadata, or None when the entry is absent, unreadable or from another cache format."""
        try:
            metadata = json.loads(self.metadata_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(metadata, dict) or metadata.get("format") != CACHE_FORMAT:
            return None
        return metadata

    def temp_dirs(self) -> list[Path]:
        return sorted(self.path.parent.glob(f".{self.path.name}.tmp-*"))


def ensure_entry(entry: CacheEntry, build: Builder, progress: ProgressCallback) -> tuple[dict[str, Any], bool]:
    """(metadata, built_now) for `entry`, running `build(tmp_dir) -> metadata` unless a whole entry exists.

    A file lock keeps two processes from converting the same model at once; the loser of a race (or a process
    on a filesystem where locks do not work) finds the entry published and discards its own copy.
    """
    metadata = entry.read_metadata()
    if metadata is not None:
        return metadata, False
    try:
        entry.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelUnavailable(
            f"The model cache directory {entry.path.parent} cannot be created ({exc.strerror or exc})."
        ) from exc
    with _locked(entry, progress):
        metadata = entry.read_metadata()  # another process may have finished while we waited
        if metadata is not None:
            return metadata, False
        for stale in entry.temp_dirs():  # left by a crashed build: we hold the lock, nobody else is writing
            shutil.rmtree(stale, ignore_errors=True)
        return _build_and_publish(entry, build), True


@contextmanager
def _locked(entry: CacheEntry, progress: ProgressCallback) -> Iterator[None]:
    """Hold the entry's file lock, saying so on `progress` when another process has it."""
    lock = FileLock(str(entry.lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        progress(f"Waiting for another process to finish writing {entry.path} ...")
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_S)
        except Timeout as exc:
            raise ModelUnavailable(
                f"Another process has held the model cache lock {entry.lock_path} for over an hour; "
                "remove the lock file if no conversion is running."
            ) from exc
    try:
        yield
    finally:
        lock.release()


def _build_and_publish(entry: CacheEntry, build: Builder) -> dict[str, Any]:
    tmp = entry.path.parent / f".{entry.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        metadata = {"format": CACHE_FORMAT, "created_at": time.time(), **build(tmp)}
        _write_json(tmp / METADATA_FILE, metadata)
        _fsync_tree(tmp)  # never publish files whose bytes are still only in the page cache
        _publish(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename; removes failed builds
    published = entry.read_metadata()
    if published is None:
        raise ModelUnavailable(f"The model cache {entry.path} could not be written; check the disk and permissions.")
    return published


def _publish(tmp: Path, entry: CacheEntry) -> None:
    """Rename `tmp` onto the entry; an outdated entry (old format) is moved aside first, then removed."""
    old: Path | None = None
    if entry.path.exists() and entry.read_metadata() is None:
        old = entry.path.parent / f".{entry.path.name}.old-{uuid.uuid4().hex[:8]}"
        entry.path.rename(old)
    try:
        tmp.rename(entry.path)
    except OSError:
        # Someone published first (rename onto a non-empty directory fails): theirs is as good as ours.
        if entry.read_metadata() is None:
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write a small JSON file so readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    _write_json(tmp, data)
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            # safetensors files are written 0600; a cache prepared by one user (an image build, an admin)
            # must stay readable by the worker processes' user.
            path.chmod(0o644)
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
