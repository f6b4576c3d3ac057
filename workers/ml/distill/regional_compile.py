"""Regional compilation of the student's decoder layers with torch.compile, for the span of a training run.

Hugging Face decoder layers run eagerly as dozens of small memory-bound kernels per layer (RMSNorm in fp32,
rotary embedding, SiLU, residual adds, and each LoRA branch's dropout, scale and add). At the hidden sizes of
student models (576–1536) those kernels and their launches, not the matrix multiplies, dominate a training step
on a GPU. Compiling each decoder layer fuses them.

Regional, not whole-model: the layers are one class with different weights, so they share one compiled graph
and compilation costs one layer's time, not the model's (PyTorch's "regional compilation" recipe, as in
accelerate's `compile_regions`). In place (`nn.Module.compile`), so parameter names — and with them checkpoints
and the exported adapter — are the same as in eager mode. The embedding, the final norm, the LM head and the
loss stay eager: the loss works on (N, V) logits that no fusion shrinks.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from workers.ml.distill.config import CompileSetting

logger = logging.getLogger(__name__)


class CompileUnavailable(RuntimeError):
    """torch.compile was asked for ("on") where its backend cannot run."""


def repeated_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The model's stack of decoder layers: its largest ModuleList whose entries all share one class."""
    best: torch.nn.ModuleList | None = None
    for module in model.modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
            continue
        if len({type(layer) for layer in module}) == 1 and (best is None or len(module) > len(best)):
            best = module
    return best


def unavailable_reason(device: torch.device) -> str | None:
    """Why inductor cannot compile for `device` here, or None when it can."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed"
        # triton compiles a small C launcher for its kernels
        if not _on_path(os.environ.get("CC", ""), "cc", "gcc", "clang"):
            return "no C compiler (gcc or clang) is on PATH"
        return None
    if device.type == "cpu":
        if not _on_path(os.environ.get("CXX", ""), "g++", "c++", "clang++"):
            return "no C++ compiler (g++ or clang++) is on PATH"
        return None
    return f"torch.compile is not used on {device.type} devices"


def _on_path(*names: str) -> bool:
    return any(name and shutil.which(name) for name in names)


# "auto" compiles when the run's model FLOPs promise to pay back the compilation several times over.
# CPU, measured (2 cores, docs/benchmarks.md): a cold compilation of SmolLM2's layer costs ~9–13 s; each later
# micro-batch of 4 × 256 tokens runs ~20% faster on real packed chunks (5.0 → 4.0 s; ~30% on unpacked rows,
# bench/gpu_distill.py --shape smollm2), so it pays back after ~13 micro-batches (7e12 FLOPs); 2e13 (~37k
# tokens of SmolLM2, ~3 min eager) leaves a clear gain and keeps tiny test models, whose steps take
# milliseconds, eager.
# GPU, measured on an H200 (bench/gpu_distill.py, docs/benchmarks.md): compiling a 0.5B student's layers and
# loss costs ~8.4 s once (cold caches) and takes a step of 16k tokens from 225 to 125 ms (72.8k → 130.7k
# tokens/s), so it pays back after ~1.4M tokens (2.7e15 FLOPs); 6e15 leaves a clear gain.
AUTO_MIN_TRAIN_FLOPS = {"cpu": 2e13, "cuda": 6e15}
# The teacher's pass (forward only, 2·N FLOPs a token) compiles on a GPU past this. Measured on an H200 with a
# 1.5B teacher: ~9.8 s of compilation for 98.5k → 126k tokens/s (another run: 112k), paid back after 4.4M
# tokens (1.4e16 FLOPs; 11M at the slower rate). A CPU's teacher stays eager under "auto": compiling its
# layers gained 7% a batch on 2 cores, against ~9 s of compilation.
AUTO_MIN_TEACHER_FLOPS = {"cuda": 3.6e16}


def planned_train_flops(parameters: int, positions: int) -> float:
    """Model FLOPs of training a frozen base with a small adapter: forward plus activation gradients, 4·N."""
    return 4.0 * parameters * positions


def has_active_dropout(model: torch.nn.Module) -> bool:
    """Whether training draws dropout masks anywhere in the model (LoRA dropout, mostly)."""
    return any(isinstance(module, torch.nn.Dropout) and module.p > 0 for module in model.modules())


def should_compile(
    setting: CompileSetting,
    device: torch.device,
    train_flops: float = 0.0,
    *,
    dropout: bool = False,
    thresholds: Mapping[str, float] = AUTO_MIN_TRAIN_FLOPS,
) -> bool:
    """Whether to compile (`setting` is validated by TrainingSettings).

    "off" never; "on" always (or a clear error where it cannot run); "auto" where it can run and the work's
    `train_flops` reach the device's threshold (AUTO_MIN_TRAIN_FLOPS for training, AUTO_MIN_TEACHER_FLOPS for
    the teacher's pass; a device without one stays eager) — on a CPU only without `dropout`:
    measured with LoRA dropout 0.05 on SmolLM2's shape, compiled steps were no faster (5.49 vs 5.55 s;
    without dropout 3.83 vs 5.29 s), so compiling would be time lost.
    """
    if setting == "off":
        return False
    reason = unavailable_reason(device)
    if setting == "on":
        if reason is not None:
            raise CompileUnavailable(f"training.torch_compile is 'on' but {reason}; set it to 'auto' or 'off'.")
        return True
    threshold = thresholds.get(device.type)
    if reason is not None or threshold is None or (dropout and device.type == "cpu"):
        return False
    return train_flops >= threshold


@contextmanager
def compiled_layers(
    model: torch.nn.Module,
    enabled: bool,
    *,
    fall_back: bool = False,
    static_shapes: bool = False,
    cuda_graphs: bool = False,
) -> Iterator[bool]:
    """Compile `model`'s decoder layers in place while the block runs; yields whether they were compiled.

    With `static_shapes` (training: packed rows are always seq_len wide and micro-batches are padded to one
    size, `padded_rows`) the layers compile for exactly the shapes they see. Without (the teacher's pass, whose
    rows are as long as a batch's longest segment), torch compiles once more with dynamic dimensions when a
    shape changes (its "automatic dynamic" shapes). torch remembers that per layer class, in the process
    (forgotten at each entry here, see below) and through its profile-guided dynamic shapes on disk, so a
    student of the teacher's architecture compiled after it would inherit dynamic shapes (seen on a CPU with
    the dynamic-shape log; the likely cause of an H200 run whose 0.5B student took 28 s for its first
    compiled step, against 10 s in an earlier run, and stepped 6% slower). Training asks for static shapes.
    With `cuda_graphs` each compiled layer is also captured as a CUDA graph on a GPU (torch.compile's
    "reduce-overhead" mode: cudagraph trees, one graph per layer and direction); the caller marks each
    micro-batch with `torch.compiler.cudagraph_mark_step_begin()`. Inductor skips the capture on a CPU.
    With `fall_back` (the "auto" setting), a layer that fails to compile runs eagerly — torch's own
    `suppress_errors`, which logs the failure — instead of failing the run; "on" lets the error through.
    On exit the layers run eagerly again, so evaluation and export after training pay no compilation.
    """
    layers = repeated_layers(model) if enabled else None
    if layers is None:
        if enabled:
            logger.warning("torch.compile skipped: no stack of repeated decoder layers found in the model")
        yield False
        return
    # Forget what earlier runs in this process compiled. torch keeps every compiled variant of a function
    # (here the layer class's forward) and, past `recompile_limit` (8) variants, runs it eagerly for the rest
    # of the process without an error: a GPU worker lives for many jobs, and from about its fourth every job's
    # layers would run eagerly. Kernels come back from inductor's disk cache, so recompiling is quick.
    torch._dynamo.reset()
    for layer in layers:
        layer.compile(dynamic=False if static_shapes else None, mode="reduce-overhead" if cuda_graphs else None)
    # The first layer's input comes from a frozen embedding and needs no gradient, the others' inputs do: two
    # graphs, two compilations. Asking for the first input's gradient too costs one layer's input gradient in
    # backward (~1/L of it) and saves a compilation (~10 s on a CPU).
    hook = layers[0].register_forward_pre_hook(_input_requires_grad, with_kwargs=True)
    try:
        with torch._dynamo.config.patch(suppress_errors=fall_back):
            yield True
    finally:
        hook.remove()
        for layer in layers:
            # nn.Module.compile stores the compiled call here; None is the attribute's eager default.
            layer._compiled_call_impl = None


def allocate_gradient_buffers(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Zeroed .grad buffers for the trainable `parameters`, allocated before any CUDA-graph capture.

    A gradient that a captured backward allocates lives in the graphs' memory pool, and the next micro-batch's
    replay overwrites it: accumulation needs buffers allocated outside the capture, kept (zeroed with
    `zero_grad(set_to_none=False)`, not freed) from step to step, as torch's cudagraph_trees says when it happens.
    """
    for param in parameters:
        if param.requires_grad:
            param.grad = torch.zeros_like(param)


def _input_requires_grad(
    module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[tuple[object, ...], dict[str, object]] | None:
    hidden = args[0] if args else kwargs.get("hidden_states")
    if isinstance(hidden, torch.Tensor) and torch.is_grad_enabled() and not hidden.requires_grad:
        hidden.requires_grad_(True)  # it has no autograd history, so nothing before it is detached
    return None


def padded_rows(rows: list[list[int]], size: int) -> list[list[int]]:
    """`rows` with empty rows added up to `size`: a compiled model sees one batch shape, and an epoch's shorter
    last micro-batch neither recompiles (~10 s on a CPU) nor changes the loss (empty rows hold no label)."""
    return rows + [[] for _ in range(size - len(rows))]


@contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside the block (an evaluation pass under no_grad would compile anew)."""
    with torch.compiler.set_stance("force_eager"):
        yield
