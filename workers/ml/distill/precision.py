"""Which precision a distillation run computes in: bf16 on GPUs, and on CPUs that multiply bf16 in hardware
(the rule, `prefers_bf16`, is workers/ml/device.py's, shared with the inference engine).

On a CPU with AVX512-BF16 or AMX, bf16 matmuls run at ~2.4x fp32's rate, and the frozen models of a run are
matmul-bound there. Measured on a 2-core AMD EPYC Zen 4 at SmolLM2-135M's shape, 4 x 256 tokens:
- teacher forward: 1.87 s fp32 -> 1.15 s bf16 weights (1.6x); the per-position KL between the two teachers'
  distributions is 6e-6 nats, against ~0.5 nats between teacher and student;
- LoRA training step: 6.13 s fp32 -> 4.34 s bf16 autocast over fp32 weights -> 3.73 s bf16 autocast over bf16
  weights (1.64x). The LoRA weights, their gradients and the optimizer stay fp32 (peft keeps adapters fp32 on a
  bf16 base), so the exported adapter is the same kind of file either way.
Tiny models gain nothing and keep fp32; AVX2-only CPUs would emulate bf16, slower than fp32 (device.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.helpers import disable_input_dtype_casting

__all__ = ["autocasts_bf16", "bf16_autocast", "weights_dtype"]


def weights_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the model's frozen floating-point weights (the base's, under a LoRA), None if it has none."""
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            return param.dtype
    return None


def autocasts_bf16(setting: bool | None, device: torch.device, model: torch.nn.Module) -> bool:
    """Whether the training loop runs its forward under bf16 autocast.

    An explicit `setting` decides. Auto follows the weights: always on a GPU, and on a CPU when the base's
    frozen weights are bf16 (distill() stores them so where `prefers_bf16` says; fp32 LoRA weights on a bf16
    base then multiply in bf16 too).
    """
    if setting is not None:
        return setting
    return device.type == "cuda" or (device.type == "cpu" and weights_dtype(model) == torch.bfloat16)


@contextmanager
def bf16_autocast(model: torch.nn.Module, device: torch.device, enabled: bool) -> Iterator[None]:
    """bf16 autocast for the forward passes inside (nothing when not `enabled`), without peft's input casts.

    peft casts each LoRA layer's input to its weights' dtype, fp32, and autocast casts it straight back to bf16
    for the matmul: two copies of the activation per LoRA layer in the forward (seven layers a block with the
    default targets) and their two in the backward, for the same numbers. Under autocast the matmul takes the
    bf16 input as it is.
    """
    if not enabled:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16), disable_input_dtype_casting(model):
        yield
