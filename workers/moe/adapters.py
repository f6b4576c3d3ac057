"""The expert store: where experts come from, whether they fit the base, and which stay loaded.

An expert is a directory written by workers/ml/distill/export.py (a plain PEFT LoRA adapter plus base.json).
`ExpertStore.acquire` loads experts on first use (so a newly published expert needs no restart), copies their
weights into slots of the LoRA pool, and pins them while a request uses them. Loaded experts form an LRU cache
bounded by a memory budget and by the pool's slots; only unpinned experts are evicted.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.moe.lora import LoraPool, LoraWeights

__all__ = [
    "ExpertError",
    "ExpertInfo",
    "ExpertRef",
    "ExpertRefused",
    "ExpertStore",
    "ExpertUnavailable",
    "LoadedExpert",
    "fetch_expert_dir",
    "read_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FILE = "base.json"
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_FILE)
OPTIONAL_FILES = ("signature.json", "metrics.json", "README.md")
# `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (optionally `.lora_A.<adapter name>.weight`).
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


class ExpertError(Exception):
    """An expert cannot be used; str(error) is one sentence for the API client."""


class ExpertRefused(ExpertError):
    """The expert was trained on other base weights than the engine's."""


class ExpertUnavailable(ExpertError):
    """The expert's files are missing or malformed, or there is no room to load it."""


@dataclass(frozen=True)
class ExpertRef:
    """Which expert a request uses: an opaque stable id (one per expert version), where it is, and its weight."""

    id: str
    location: str  # a local directory, or s3://bucket/prefix
    weight: float = 1.0


@dataclass(frozen=True)
class ExpertInfo:
    id: str
    base_hash: str
    rank: int
    bytes: int


@dataclass
class LoadedExpert:
    info: ExpertInfo
    slot: int
    pins: int = 0


# ---------------------------------------------------------------- reading an expert directory


def fetch_expert_dir(ref: ExpertRef, cache_dir: Path | None) -> Path:
    """A local directory holding `ref`'s files: the location itself, or an S3 prefix downloaded once."""
    if not ref.location.startswith("s3://"):
        return Path(ref.location)
    if cache_dir is None:
        raise ExpertUnavailable(f"Expert '{ref.id}' is on S3 but the engine has no expert_cache_dir to download to.")
    target = Path(cache_dir) / re.sub(r"[^A-Za-z0-9._-]", "_", ref.id)
    if (target / ADAPTER_WEIGHTS).is_file():  # an id names one immutable version: a finished download is reusable
        return target
    try:
        import boto3  # lazily: only S3 deployments need it
    except ImportError as exc:
        raise ExpertUnavailable(
            f"Expert '{ref.id}' is on S3 but boto3 is not installed; install it (pip install boto3)."
        ) from exc
    bucket, _, prefix = ref.location.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_S3_ENDPOINT_URL") or None)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        for name in REQUIRED_FILES + OPTIONAL_FILES:
            key = f"{prefix.rstrip('/')}/{name}" if prefix else name
            try:
                client.download_file(bucket, key, str(partial / name))
            except Exception as exc:
                if name in REQUIRED_FILES:
                    raise ExpertUnavailable(
                        f"Expert '{ref.id}': could not download s3://{bucket}/{key}: {exc}"
                    ) from exc
        # Rename last, so a crash mid-download never leaves a directory that looks complete.
        if not target.exists():
            partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _read_json(path: Path, ref: ExpertRef) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ExpertUnavailable(f"Expert '{ref.id}' has no {path.name} at {path.parent}.") from exc
    except (OSError, ValueError) as exc:
        raise ExpertUnavailable(f"Expert '{ref.id}': {path.name} is not valid JSON ({exc}).") from exc
    if not isinstance(value, dict):
        raise ExpertUnavailable(f"Expert '{ref.id}': {path.name} is not a JSON object.")
    return value


def _scale(config: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling of one module: alpha / r (alpha / sqrt(r) with rsLoRA), honouring per-module patterns."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){re.escape(pattern)}$", module) or re.fullmatch(pattern, module):
            alpha = float(value)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_adapter(directory: Path, ref: ExpertRef, base_hash: str) -> tuple[dict[str, LoraWeights], int]:
    """The adapter's weights by module name, and its rank; refuses another base's expert or a broken one."""
    if not directory.is_dir():
        raise ExpertUnavailable(f"Expert '{ref.id}' was not found at {directory}.")
    base = _read_json(directory / BASE_FILE, ref)
    expert_hash = base.get("content_hash")
    if expert_hash != base_hash:
        raise ExpertRefused(
            f"Expert '{ref.id}' was trained on base weights {str(expert_hash)[:12]} ({base.get('spec', '?')}), "
            f"but this engine serves base weights {base_hash[:12]}; retrain it on this base."
        )
    config = _read_json(directory / ADAPTER_CONFIG, ref)
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise ExpertUnavailable(f"Expert '{ref.id}' is not a plain LoRA adapter.")
    try:
        from safetensors.torch import load_file

        tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    except FileNotFoundError as exc:
        raise ExpertUnavailable(f"Expert '{ref.id}' has no {ADAPTER_WEIGHTS} at {directory}.") from exc
    except Exception as exc:  # safetensors raises its own error types for a truncated or garbled file
        raise ExpertUnavailable(f"Expert '{ref.id}': {ADAPTER_WEIGHTS} cannot be read ({exc}).") from exc
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ExpertUnavailable(f"Expert '{ref.id}' has a weight the engine cannot serve: '{key}'.")
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    if not pairs:
        raise ExpertUnavailable(f"Expert '{ref.id}' has no LoRA weights.")
    weights: dict[str, LoraWeights] = {}
    for module, pair in pairs.items():
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ExpertUnavailable(f"Expert '{ref.id}' has a malformed LoRA pair for '{module}'.")
        weights[module] = LoraWeights(a=a, b=b, scale=_scale(config, module, a.shape[0]))
    return weights, max(w.a.shape[0] for w in weights.values())


# ---------------------------------------------------------------- the store


class ExpertStore:
    """Loaded experts by id: LRU order, pins, a byte budget, and the pool slots they occupy."""

    def __init__(self, pool: LoraPool, base_hash: str, memory_budget_bytes: int, cache_dir: Path | None) -> None:
        self.pool = pool
        self.base_hash = base_hash
        self.memory_budget_bytes = memory_budget_bytes
        self.cache_dir = cache_dir
        self._loaded: OrderedDict[str, LoadedExpert] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(expert.info.bytes for expert in self._loaded.values())

    def load(self, ref: ExpertRef) -> LoadedExpert:
        """Load `ref` unless it is loaded already, and mark it most recently used."""
        with self._lock:
            expert = self._loaded.get(ref.id)
            if expert is not None:
                self._loaded.move_to_end(ref.id)
                return expert
            directory = fetch_expert_dir(ref, self.cache_dir)
            weights, rank = read_adapter(directory, ref, self.base_hash)
            self._check_modules(ref, weights)
            size = sum(w.a.numel() + w.b.numel() for w in weights.values()) * self._element_size()
            self._make_room(ref, size)
            slot = self.pool.load(weights)
            expert = LoadedExpert(ExpertInfo(ref.id, self.base_hash, rank, size), slot)
            self._loaded[ref.id] = expert
            return expert

    def acquire(self, refs: Sequence[ExpertRef]) -> list[LoadedExpert]:
        """Load and pin `refs` for one request; every expert is pinned or none is."""
        with self._lock:
            acquired: list[LoadedExpert] = []
            try:
                for ref in refs:
                    expert = self.load(ref)
                    expert.pins += 1  # pinned at once, so loading the next ref cannot evict it
                    acquired.append(expert)
            except BaseException:
                self.release(acquired)
                raise
            return acquired

    def release(self, experts: Sequence[LoadedExpert]) -> None:
        with self._lock:
            for expert in experts:
                expert.pins -= 1

    def _element_size(self) -> int:
        module = next(iter(self.pool.modules.values()))
        return module.lora_a.element_size()

    def _check_modules(self, ref: ExpertRef, weights: dict[str, LoraWeights]) -> None:
        for name, w in weights.items():
            module = self.pool.modules.get(name)
            if module is None:
                raise ExpertUnavailable(f"Expert '{ref.id}' adapts '{name}', which this base has no layer for.")
            if w.a.shape[1] != module.in_features or w.b.shape[0] != module.out_features:
                raise ExpertUnavailable(
                    f"Expert '{ref.id}' has weights of the wrong shape for '{name}' "
                    f"(A {tuple(w.a.shape)}, B {tuple(w.b.shape)})."
                )

    def _make_room(self, ref: ExpertRef, size: int) -> None:
        """Evict least recently used unpinned experts until `size` bytes and one slot are free."""
        if size > self.memory_budget_bytes:
            raise ExpertUnavailable(
                f"Expert '{ref.id}' needs {size:,} bytes, more than the adapter memory budget "
                f"({self.memory_budget_bytes:,} bytes)."
            )
        used = sum(expert.info.bytes for expert in self._loaded.values())
        for expert_id in list(self._loaded):
            if used + size <= self.memory_budget_bytes and self.pool.has_free_slot():
                return
            expert = self._loaded[expert_id]
            if expert.pins > 0:
                continue
            del self._loaded[expert_id]
            self.pool.release(expert.slot)
            used -= expert.info.bytes
        if used + size > self.memory_budget_bytes or not self.pool.has_free_slot():
            raise ExpertUnavailable(
                f"No room to load expert '{ref.id}': every loaded expert is in use by a running request; "
                "try again shortly or raise the engine's adapter memory budget / max_loaded_experts."
            )
