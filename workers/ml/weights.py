"""Content hashes of model weights: the identity an expert records for the base it was trained on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

# Bumped if the byte layout below ever changes, so old and new hashes can never collide.
_HASH_DOMAIN = b"distillery-weights-v1\n"


def _tensor_record(name: str, tensor: torch.Tensor) -> tuple[bytes, memoryview]:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # numpy has no bf16: a byte view hashes every dtype the same way and copies nothing. `.data` is the array's
    # memoryview (what memoryview(array) gives, but typed: numpy's stubs declare __buffer__ only for Python 3.12+).
    raw = flat.view(torch.uint8).numpy().data.cast("B")
    dtype = str(tensor.dtype).removeprefix("torch.")
    shape = ",".join(str(size) for size in tensor.shape)
    header = f"{name}\0{dtype}\0{shape}\0{raw.nbytes}\0".encode()
    return header, raw


def tensors_content_hash(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over tensors in sorted-name order: name, dtype, shape, then the raw bytes of each."""
    digest = hashlib.sha256(_HASH_DOMAIN)
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        header, raw = _tensor_record(name, tensor)
        digest.update(header)
        digest.update(raw)
    return digest.hexdigest()


def stored_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors save_pretrained would write: the state dict without the tied copies (e.g. lm_head.weight).

    Hashing this form makes an in-memory model and the same model saved and reloaded from safetensors agree.
    """
    tied: Mapping[str, str] = getattr(model, "all_tied_weights_keys", None) or {}
    return {name: tensor for name, tensor in model.state_dict().items() if name not in tied}


def model_content_hash(model: torch.nn.Module) -> tuple[str, int]:
    """(content hash, number of stored parameters) of an in-memory model."""
    stored = stored_state_dict(model)
    return tensors_content_hash(stored.items()), sum(tensor.numel() for tensor in stored.values())


def safetensors_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def safetensors_content_hash(directory: Path) -> tuple[str, int]:
    """(content hash, number of stored parameters) of the safetensors in `directory`, shards included."""
    digest = hashlib.sha256(_HASH_DOMAIN)
    locations: dict[str, Path] = {}
    for path in safetensors_files(directory):
        with safe_open(path, framework="pt") as reader:
            locations.update(dict.fromkeys(reader.keys(), path))
    num_parameters = 0
    # One tensor in memory at a time: a 7B model hashes without a second copy of itself.
    for name in sorted(locations):
        with safe_open(locations[name], framework="pt") as reader:
            tensor = reader.get_tensor(name)
        header, raw = _tensor_record(name, tensor)
        digest.update(header)
        digest.update(raw)
        num_parameters += tensor.numel()
    return digest.hexdigest(), num_parameters
