"""Job checkpoints in the storage API, so a worker on another host (its own DATA_DIR) resumes a job.

The engine writes checkpoints to local disk (`step-NNNNNN/` directories, `state.json` last, so a directory with
`state.json` is complete). `push()` copies every complete checkpoint not yet copied to
`jobs/org-O/job-J/checkpoints/step-NNNNNN/` — `state.json` last again — then records it in `latest.json` and
drops the copies the engine has since deleted locally. `pull()`, before a run, fetches the latest copy when
the local disk has no complete checkpoint: the engine then resumes from it as from its own.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)
MARKER = "state.json"  # written last by the engine and by push(): its presence means complete


class CheckpointSync:
    def __init__(self, organization_id: int, job_id: int, local_dir: Path) -> None:
        self.enabled = bool(settings.JOB_SYNC_CHECKPOINTS)
        self.local_dir = local_dir
        self.prefix = f"jobs/org-{organization_id}/job-{job_id}/checkpoints"
        self.pushed: set[str] = set()

    def _complete_local(self) -> list[Path]:
        if not self.local_dir.exists():
            return []
        found = [path for path in self.local_dir.glob("step-*") if (path / MARKER).exists()]
        return sorted(found, key=lambda path: path.name)

    def push(self) -> None:
        """Copy new complete checkpoints to storage; never fails the run (a later push or the local copy remain)."""
        if not self.enabled:
            return
        try:
            local = self._complete_local()
            for step_dir in local:
                if step_dir.name in self.pushed:
                    continue
                files = sorted(step_dir.iterdir(), key=lambda path: path.name == MARKER)  # the marker last
                for path in files:
                    name = f"{self.prefix}/{step_dir.name}/{path.name}"
                    if default_storage.exists(name):
                        default_storage.delete(name)
                    with path.open("rb") as handle:
                        default_storage.save(name, File(handle))
                self.pushed.add(step_dir.name)
                self._write_latest(step_dir.name)
            keep = {path.name for path in local}
            for stale in self.pushed - keep:  # the engine keeps only its last few checkpoints
                for name in default_storage.listdir(f"{self.prefix}/{stale}")[1]:
                    default_storage.delete(f"{self.prefix}/{stale}/{name}")
                self.pushed.discard(stale)
        except Exception:
            logger.warning("could not copy the checkpoints of %s to storage", self.prefix, exc_info=True)

    def _write_latest(self, step_name: str) -> None:
        name = f"{self.prefix}/latest.json"
        if default_storage.exists(name):
            default_storage.delete(name)
        default_storage.save(name, ContentFile(json.dumps({"checkpoint": step_name}).encode()))

    def pull(self) -> str | None:
        """Fetch the latest stored checkpoint when none is on this disk; returns its name, or None."""
        if not self.enabled or self._complete_local():
            return None
        latest = f"{self.prefix}/latest.json"
        if not default_storage.exists(latest):
            return None
        with default_storage.open(latest, "rb") as handle:
            step_name = json.loads(handle.read())["checkpoint"]
        remote = f"{self.prefix}/{step_name}"
        target = self.local_dir / step_name
        partial = self.local_dir / f".{step_name}.download"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for file_name in sorted(default_storage.listdir(remote)[1], key=lambda name: name == MARKER):
            with (
                default_storage.open(f"{remote}/{file_name}", "rb") as source,
                (partial / file_name).open("wb") as sink,
            ):
                shutil.copyfileobj(source, sink, length=1 << 20)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        self.pushed.add(step_name)
        return step_name
