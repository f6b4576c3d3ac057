"""Errors, configuration and result types of the model catalog (see workers/ml/catalog.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# The catalog reports slow steps (a one-off GGUF conversion) through this; Celery tasks pass one that updates
# the task's state, the CLI and tests print to stderr.
ProgressCallback = Callable[[str], None]


def print_progress(message: str) -> None:
    """Default progress callback: one plain line on stderr."""
    print(f"[distillery] {message}", file=sys.stderr, flush=True)


class CatalogError(Exception):
    """A model spec could not be resolved or loaded; str(error) is one sentence fit for the web UI."""


class UnknownModelSpec(CatalogError):
    """The spec has an unknown prefix or names a packaged/tiny model that does not exist."""


class ModelUnavailable(CatalogError):
    """The spec is valid but its weights cannot be had here (package missing, offline, no such directory)."""


class ModelPathNotAllowed(CatalogError):
    """An `hf:` local path lies outside the configured model roots."""


class BaseModelMismatch(CatalogError):
    """An expert was trained on different base weights than the ones loaded."""


def _as_paths(values: Any) -> tuple[Path, ...]:
    if isinstance(values, str | Path):
        values = (values,)
    return tuple(Path(value) for value in values)


@dataclass(frozen=True)
class CatalogConfig:
    """Where the catalog keeps converted weights, what it may read, and where it loads models."""

    cache_dir: Path = field(
        metadata={
            "help": "Directory for converted safetensors caches and the tiny models' tokenizer "
            "(the web app passes DATA_DIR/models)."
        }
    )
    model_roots: tuple[Path, ...] = field(
        default=(),
        metadata={"help": "The only local directories from which `hf:` paths may be loaded; empty disables them."},
    )
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda' or 'cuda:N'."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights of `tiny:` models."})

    def __post_init__(self) -> None:
        # Settings hand over strings and lists; normalise so the frozen value compares and hashes predictably.
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        object.__setattr__(self, "model_roots", _as_paths(self.model_roots))


@dataclass(frozen=True)
class ModelInfo:
    """What the catalog knows about one model spec without necessarily loading it."""

    spec: str = field(metadata={"help": "The spec string, e.g. 'packaged:smollm2-135m-instruct'."})
    kind: str = field(metadata={"help": "'packaged', 'tiny' or 'hf'."})
    title: str = field(metadata={"help": "Human-readable name for the teacher picker."})
    available: bool = field(metadata={"help": "Whether load_model can load it on this machine."})
    reason: str | None = field(default=None, metadata={"help": "Why it is unavailable, when it is."})
    note: str | None = field(default=None, metadata={"help": "Extra status, e.g. 'not yet converted'."})
    num_parameters: int | None = field(default=None, metadata={"help": "Stored parameters (tied counted once)."})
    vocab_size: int | None = field(default=None, metadata={"help": "Rows of the embedding matrix."})
    content_hash: str | None = field(
        default=None,
        metadata={"help": "sha256 of the stored weights (names sorted, dtype, shape, bytes); None until known."},
    )
    cached: bool = field(default=False, metadata={"help": "Whether a converted safetensors cache exists."})
    chat_template: bool | None = field(
        default=None,
        metadata={"help": "Whether the tokenizer has a chat template (base models have none); None until known."},
    )


@dataclass
class LoadedModel:
    """A tokenizer and a causal LM in eval mode on `device`, plus what the catalog knows about them."""

    spec: str
    model: Any  # transformers.PreTrainedModel; Any keeps this module free of transformers' import time
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    info: ModelInfo
    converted: bool = False  # True when this call read a GGUF file and wrote the cache

    def cast(self, dtype: torch.dtype) -> None:
        """Store the model's weights as `dtype`, in place (e.g. bf16 on a CPU with native bf16)."""
        if dtype != self.dtype:
            self.model.to(dtype)
            self.dtype = dtype
