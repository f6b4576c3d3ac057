"""`hf:` specs: a Hugging Face hub id, or a local directory that must lie under one of the model roots."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from workers.ml.catalog_types import (
    LoadedModel,
    ModelInfo,
    ModelPathNotAllowed,
    ModelUnavailable,
    ProgressCallback,
    UnknownModelSpec,
)
from workers.ml.model_cache import write_json_atomic
from workers.ml.pretrained import first_line, has_chat_template, load_pretrained_dir
from workers.ml.weights import safetensors_content_hash, safetensors_files

PREFIX = "hf"

# The hub's own rule for repo ids: "name" or "owner/name" of word characters, '-' and '.'.
_HUB_ID_RE = re.compile(r"^[\w.-]{1,96}(/[\w.-]{1,96})?$")
# A snapshot brings weights, configs and tokenizer files only: no pickles, no code.
_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Target:
    """Where an `hf:` spec points: a local directory, or a hub repo id."""

    local_dir: Path | None = None
    repo_id: str | None = None


def hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once at import, too early for tests.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def resolve(value: str, model_roots: tuple[Path, ...]) -> Target:
    """Decide what `hf:<value>` means, refusing local paths outside `model_roots`.

    An absolute path is local. A relative one names a directory under a model root if one exists there, else
    a hub repo id. `..` is refused outright: it is never needed to name an allowed directory.
    """
    spec = f"{PREFIX}:{value}"
    if not value:
        raise UnknownModelSpec(
            "An 'hf:' spec needs a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct' or a directory."
        )
    if ".." in Path(value).parts:
        raise ModelPathNotAllowed(f"The model path in '{spec}' may not contain '..'.")
    if Path(value).is_absolute():
        return Target(local_dir=_allowed_dir(Path(value), model_roots, spec))
    for root in model_roots:
        candidate = root / value
        if candidate.exists():
            return Target(local_dir=_allowed_dir(candidate, model_roots, spec))
    if _HUB_ID_RE.match(value) and "--" not in value:
        return Target(repo_id=value)
    raise ModelUnavailable(
        f"'{spec}' is neither a directory under the model roots nor a valid hub id like 'owner/name'."
    )


def _allowed_dir(path: Path, model_roots: tuple[Path, ...], spec: str) -> Path:
    if not model_roots:
        raise ModelPathNotAllowed(f"Loading local model directories is disabled ('{spec}'): no model roots are set.")
    # resolve() follows symlinks: a link inside a root pointing elsewhere is judged by where it really leads.
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in model_roots):
        allowed = ", ".join(str(root) for root in model_roots)
        raise ModelPathNotAllowed(f"The model path in '{spec}' is outside the allowed model roots ({allowed}).")
    if not resolved.is_dir():
        raise ModelUnavailable(f"The model directory of '{spec}' does not exist.")
    return resolved


def _download(repo_id: str, spec: str, progress: ProgressCallback) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    offline = hub_offline()
    if not offline:
        progress(f"Fetching {repo_id} from the Hugging Face hub (safetensors only) ...")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_ALLOW_PATTERNS, local_files_only=offline))
    except RepositoryNotFoundError as exc:
        raise ModelUnavailable(f"'{spec}' does not exist on the Hugging Face hub or needs an access token.") from exc
    except (OSError, ValueError, EntryNotFoundError) as exc:
        if offline:
            raise ModelUnavailable(
                f"'{spec}' is not in the local Hugging Face cache and the hub is offline "
                "(HF_HUB_OFFLINE is set); download it on a connected machine or put it in a directory "
                "under the model roots."
            ) from exc
        raise ModelUnavailable(f"'{spec}' could not be fetched from the Hugging Face hub ({first_line(exc)}).") from exc


def local_directory(value: str, model_roots: tuple[Path, ...], progress: ProgressCallback) -> Path:
    """The local directory holding the weights of `hf:<value>`, downloading a hub snapshot if needed."""
    spec = f"{PREFIX}:{value}"
    target = resolve(value, model_roots)
    directory = target.local_dir or _download(str(target.repo_id), spec, progress)
    if not safetensors_files(directory):
        raise ModelUnavailable(
            f"'{spec}' has no .safetensors weights; only safetensors are loaded, never pickled .bin files."
        )
    return directory


def content_hash(directory: Path, cache_dir: Path) -> tuple[str, int]:
    """The weights' content hash, memoised under cache_dir by file names, sizes and modification times."""
    stats = sorted((path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in safetensors_files(directory))
    key = hashlib.sha256(repr((str(directory), stats)).encode()).hexdigest()
    memo = cache_dir / "hashes" / f"{key}.json"
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        return str(known["content_hash"]), int(known["num_parameters"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest, num_parameters = safetensors_content_hash(directory)
    write_json_atomic(memo, {"directory": str(directory), "content_hash": digest, "num_parameters": num_parameters})
    return digest, num_parameters


def load(
    value: str,
    model_roots: tuple[Path, ...],
    cache_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    progress: ProgressCallback,
) -> LoadedModel:
    spec = f"{PREFIX}:{value}"
    directory = local_directory(value, model_roots, progress)
    model, tokenizer = load_pretrained_dir(directory, device, dtype, label=f"'{spec}'")
    digest, num_parameters = content_hash(directory, cache_dir)
    vocab_size = int(model.get_input_embeddings().weight.shape[0])
    model_info = info_for(spec, vocab_size, digest, num_parameters, bool(tokenizer.chat_template))
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, device=device, dtype=dtype, info=model_info)


def prepare(value: str, model_roots: tuple[Path, ...], cache_dir: Path, progress: ProgressCallback) -> ModelInfo:
    """Fetch (if a hub id) and hash `hf:<value>` without loading it."""
    directory = local_directory(value, model_roots, progress)
    digest, num_parameters = content_hash(directory, cache_dir)
    try:
        vocab_size = int(json.loads((directory / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        vocab_size = None  # multimodal configs nest it; the loaded model knows
    return info_for(f"{PREFIX}:{value}", vocab_size, digest, num_parameters, has_chat_template(directory))


def info_for(spec: str, vocab_size: int | None, digest: str, num_parameters: int, chat_template: bool) -> ModelInfo:
    return ModelInfo(
        spec=spec,
        kind=PREFIX,
        title=spec.removeprefix(f"{PREFIX}:"),
        available=True,
        num_parameters=num_parameters,
        vocab_size=vocab_size,
        content_hash=digest,
        cached=True,
        chat_template=chat_template,
    )
