"""Device, dtype and CPU-thread choices shared by every process that runs torch."""

from __future__ import annotations

import logging
import os
import re

import torch

logger = logging.getLogger(__name__)

# Child processes (tokenizer pools, data loaders, OpenMP/BLAS runtimes) read these at start-up, so setting
# them here caps the threads of anything this process spawns later, not only torch's own pools.
THREAD_ENV_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "RAYON_NUM_THREADS",  # the HF tokenizers' Rust thread pool
)

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")

# torch allows the inter-op pool to be sized only once per process, before any parallel work has started.
_interop_threads_set = False


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist on this machine."""


def select_device(preference: str = "auto") -> torch.device:
    """The torch device for `preference`: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"."""
    choice = preference.strip().lower()
    match = _DEVICE_RE.match(choice)
    if match is None:
        raise ValueError(f"Unknown device '{preference}': use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    if choice == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    return _cuda_device(preference, index=match.group(2))


def _cuda_device(preference: str, index: str | None) -> torch.device:
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"Device '{preference}' was requested but this machine has no usable CUDA GPU; use 'cpu' or 'auto'."
        )
    if index is None:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if int(index) >= count:
        raise DeviceUnavailable(f"Device '{preference}' was requested but this machine has only {count} CUDA GPU(s).")
    return torch.device("cuda", int(index))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86 AVX512-BF16 or AMX).

    There bf16 matmuls run at ~2.4x fp32's rate (2-core AMD EPYC Zen 4: 418 vs 171 GFLOP/s); elsewhere oneDNN
    emulates them, slower than fp32 (3-4x slower on a Zen 3 with AVX2 only).
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private helpers of torch.cpu: absent on other builds
        return False


# Below this, a model's forward is overhead and the vocabulary projection's memory traffic, not matmuls: bf16 is
# no faster on a CPU (a LoRA step at 6.4M parameters: 0.234 s fp32, 0.239 s bf16) and fp32 keeps small models
# (tests, demos) exact.
CPU_BF16_MIN_PARAMETERS = 50_000_000


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of `model`, tied weights once (parameters() yields each tensor once)."""
    return sum(param.numel() for param in model.parameters())


def prefers_bf16(setting: bool | None, device: torch.device, parameters: int) -> bool:
    """Whether a model of `parameters` on `device` should compute in bf16; `setting` True/False decides.

    None (auto): on a GPU; on a CPU with native bf16 (`cpu_has_native_bf16`) for models of at least
    CPU_BF16_MIN_PARAMETERS, where its matmuls dominate: SmolLM2-135M's teacher forward and LoRA step run ~1.6x
    faster, its decode ~1.6-1.9x (docs/benchmarks.md). True on a CPU without native bf16 is honoured with a
    warning: it will be slow.
    """
    if setting is not None:
        if setting and device.type == "cpu" and not cpu_has_native_bf16():
            logger.warning("bf16 was asked for, but this CPU has no native bf16 (AVX512-BF16, AMX): expect it slow")
        return setting
    if device.type == "cuda":
        return True
    return device.type == "cpu" and parameters >= CPU_BF16_MIN_PARAMETERS and cpu_has_native_bf16()


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (half the memory, fp32's range), fp32 on CPU where bf16 matmuls are slow or emulated."""
    if device.type != "cuda":
        return torch.float32
    # Pre-Ampere GPUs (e.g. T4, V100) have no bf16 units; fp16 is their fast half-precision type.
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def configure_torch_threads(num_threads: int) -> None:
    """Cap this process's torch threads (and its children's) at `num_threads`; <= 0 keeps torch's default.

    Web, workers and the inference engine share a couple of cores: without a cap every process would start one
    thread per core and they would thrash each other.
    """
    global _interop_threads_set
    if num_threads <= 0:
        return
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(num_threads)
    torch.set_num_threads(num_threads)
    if _interop_threads_set:
        return
    try:
        torch.set_num_interop_threads(num_threads)
    except RuntimeError as exc:
        # Raised once the pool exists (parallel work ran, or a previous call set it): keep what is there.
        logger.debug("torch inter-op threads left at %d: %s", torch.get_num_interop_threads(), exc)
    _interop_threads_set = True
