"""Loading a saved transformers directory (a catalog cache or an `hf:` snapshot) safely."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from workers.ml.catalog_types import ModelUnavailable


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: transformers' errors run to paragraphs the UI cannot show."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".:")


def has_chat_template(directory: Path) -> bool:
    """Whether a saved tokenizer carries a chat template (transformers 5 writes chat_template.jinja)."""
    if (directory / "chat_template.jinja").is_file():
        return True
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def load_pretrained_dir(directory: Path, device: torch.device, dtype: torch.dtype, label: str) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer) from a local directory of safetensors weights.

    Only safetensors are read (pickle-based .bin files can run code) and remote code is never trusted.
    """
    from transformers import (  # deferred: importing transformers takes seconds
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **options)
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            dtype=dtype,
            use_safetensors=True,
            # Straight onto the GPU: a large model is never held twice in host memory.
            device_map={"": device} if device.type == "cuda" else None,
            **options,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelUnavailable(f"{label} could not be loaded as a causal language model ({first_line(exc)}).") from exc
    if device.type != "cuda":
        # transformers wraps `to` in functools.wraps, whose typeshed type is no descriptor: mypy binds `device` to self.
        model.to(device)  # type: ignore[arg-type]
    if tokenizer.pad_token is None:
        # Batched generation and training pad; EOS is the usual stand-in for models without a pad token.
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
