"""Compile the student's training step in a background thread while the teacher pass keeps the GPU busy.

On a GPU, compiling the student's decoder layers and loss (regional_compile.py) costs seconds of host time at
the first training step, while the GPU waits: 6.7–9.8 s for a 0.5B student on an H200 (bench/gpu_distill.py),
a fixed cost that weighs ~10% on a job of 4M tokens. The teacher pass before it keeps the GPU busy with a batch
queued ahead (teacher_cache.py) and leaves the host mostly idle. So once the teacher's first batch has run (and
with it the teacher's own compilation: dynamo compiles one frame at a time), a thread runs one micro-batch
through the student as training will run it — the first step's rows, padded, under the same autocast and
compile options, forward, loss and backward — with synthetic teacher targets of the cache's shapes and dtypes.
Training's first step then finds the compiled code in place: the layers stay compiled from here to the end of
training (compiled_layers nests).

The thread draws no random number the run would see (the GPU's generator is restored), leaves no gradient
behind and touches no optimizer state. It runs only where it pays and is safe:
- on a GPU (a CPU's cores run the teacher's matmuls: there is no idle host to use),
- for recipe kd with a teacher cache and a local teacher that is not the student's own model (a shared model's
  layers are the teacher's during the pass),
- when training compiles (compiles_for_training) and starts fresh (a resumed run may not),
- when the GPU has room for a training micro-batch beside the teacher's (free memory after the teacher's first
  batch ≥ 1.25 × an estimate, micro_batch_bytes).
A failure in the thread is logged, and training compiles at its first step as it would have.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import torch

from workers.ml.distill.config import KDSettings, TrainingSettings
from workers.ml.distill.kd import kd_loss
from workers.ml.distill.losses import compiled_vocabulary_passes
from workers.ml.distill.packing import PackedBatch
from workers.ml.distill.precision import autocasts_bf16, bf16_autocast
from workers.ml.distill.regional_compile import compiled_layers, padded_rows
from workers.ml.distill.train import DataPlan, LossFunction, compiles_for_training

logger = logging.getLogger(__name__)

# Where the thread runs (tests add "cpu").
PRECOMPILE_DEVICE_TYPES = frozenset({"cuda"})
# Free GPU memory wanted beside the teacher's, as a multiple of the micro-batch estimate below.
MEMORY_MARGIN = 1.25


class SyntheticTargets:
    """Teacher-cache targets of the right shapes and dtypes for a packed batch: (B, T, k) each, (B, T) tail.

    Compiled code specialises on shapes, dtypes and strides, not values: one uniform distribution over k + 1
    outcomes stands in for the teacher's.
    """

    def __init__(self, top_k: int, device: torch.device) -> None:
        self.top_k, self.device = top_k, device

    def gather(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, cols = batch.input_ids.shape
        uniform = -math.log(self.top_k + 1)
        values = torch.full((rows, cols, self.top_k), uniform, dtype=torch.float32, device=self.device)
        ids = torch.arange(self.top_k, device=self.device).expand(rows, cols, self.top_k).contiguous()
        tail = torch.full((rows, cols), uniform, dtype=torch.float32, device=self.device)
        return values, ids, tail


def micro_batch_bytes(model: Any, rows: int, seq_len: int) -> int:
    """A generous estimate of a training micro-batch's GPU memory: saved activations plus the logits' passes.

    Per token: each layer saves ~20 hidden-wide and ~6 MLP-wide bf16 tensors for backward; the loss holds the
    bf16 logits, an fp32 log-softmax and its gradient. A model without these config fields counts as large.
    """
    config = getattr(model, "config", None)
    try:
        hidden, inner = int(config.hidden_size), int(config.intermediate_size)  # type: ignore[union-attr]
        layers, vocab = int(config.num_hidden_layers), int(config.vocab_size)  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        return 1 << 62
    tokens = rows * seq_len
    return tokens * (layers * (20 * hidden + 6 * inner) * 2 + vocab * (2 + 4 + 4))


def free_device_bytes(device: torch.device) -> float:
    """Memory free on `device`: a GPU's from its driver; a CPU's is not checked (infinite)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    return math.inf


class StudentPrecompile:
    """Holds the student's layers compiled from before the teacher pass to the end of training (a context
    manager around both), and compiles them in a thread during the pass; see the module docstring."""

    def __init__(self) -> None:
        self._scope = ExitStack()
        self._work: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self.seconds: float | None = None  # how long the thread's compilation took
        self.waited_s: float = 0.0  # how long training's start waited for it
        self.skipped: str | None = None  # why the thread did not run, when it did not
        self.error: BaseException | None = None
        self.expert: Any = None  # the LoRA-wrapped student, when its maker set it here before the teacher pass
        self._device = torch.device("cpu")
        self._wanted_bytes = 0.0

    def __enter__(self) -> StudentPrecompile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.wait()
        self._scope.close()

    def prepare(self, model: Any, plan: DataPlan, settings: TrainingSettings, kd: KDSettings, *, top_k: int) -> bool:
        """Compile `model`'s layers for training from here on and ready the thread's micro-batch; False (with
        `skipped` saying why) where the module docstring's conditions do not hold."""
        device = next(model.parameters()).device
        if device.type not in PRECOMPILE_DEVICE_TYPES:
            self.skipped = f"not on a {'/'.join(sorted(PRECOMPILE_DEVICE_TYPES))} device"
            return False
        if not compiles_for_training(model, plan, settings):
            self.skipped = "training does not compile"
            return False
        rows = padded_rows(plan.step_micro_batches(0)[0], settings.micro_batch_size)
        self._wanted_bytes = MEMORY_MARGIN * micro_batch_bytes(model, len(rows), settings.seq_len)
        self._device = device
        self._scope.enter_context(
            compiled_layers(
                model,
                True,
                fall_back=settings.torch_compile == "auto",
                static_shapes=True,
                cuda_graphs=settings.cuda_graphs,
            )
        )
        batch = plan.collate(rows)
        use_bf16 = autocasts_bf16(settings.bf16, device, model)
        graphs = settings.cuda_graphs
        loss_fn: LossFunction = kd_loss(kd, cache=SyntheticTargets(top_k, device))
        trained = [param for param in model.parameters() if param.requires_grad]

        def work() -> None:
            # Only the GPU's generator: dropout on the GPU draws from it, and no one else does during the teacher
            # pass. The CPU's generator is left alone (restoring it could rewind another thread's draws).
            rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
            try:
                with compiled_vocabulary_passes(True):
                    if graphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    with bf16_autocast(model, device, use_bf16):
                        parts = loss_fn(model, batch.to(device))
                    parts.total.backward()
                del parts
            finally:
                if rng is not None:
                    torch.cuda.set_rng_state(rng, device)
                for param in trained:
                    param.grad = None
                if graphs and device.type == "cuda":
                    # Inductor's CUDA-graph trees are per thread, each with its own memory pool: this thread's
                    # warm-up run left a micro-batch's activations there. Training records its own graphs.
                    from torch._inductor.cudagraph_trees import reset_cudagraph_trees

                    reset_cudagraph_trees()

        model.train()
        self._work = work
        return True

    @property
    def compiled(self) -> bool:
        """Whether the thread compiled the student's training step (it ran to the end without an error)."""
        return self.seconds is not None and self.error is None

    def on_teacher_batch(self) -> None:
        """Called after each teacher batch: the first call starts the thread, if the GPU has room for it beside
        the teacher (whose working set its first batch has now reserved)."""
        if self._work is None or self._thread is not None:
            return
        free = free_device_bytes(self._device)
        if free < self._wanted_bytes:
            gib = 2**30
            self.skipped = f"{free / gib:.1f} GiB free on the GPU, {self._wanted_bytes / gib:.1f} GiB wanted"
            logger.info("The student compiles at its first step: %s", self.skipped)
            self._work = None
            return
        self._thread = threading.Thread(target=self._run, name="student-precompile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._work is not None
        started = time.perf_counter()
        try:
            self._work()
        except Exception as error:  # training compiles at its first step instead
            self.error = error
            logger.warning("Compiling the student during the teacher pass failed: %r", error)
        self.seconds = time.perf_counter() - started

    def wait(self) -> None:
        """Before training: wait for the thread, if it still runs (a teacher pass shorter than compilation)."""
        if self._thread is None:
            return
        started = time.perf_counter()
        self._thread.join()
        self.waited_s += time.perf_counter() - started
        self._thread, self._work = None, None
        if self.error is None:
            logger.info(
                "The student compiled during the teacher pass in %.1f s (training waited %.1f s for it)",
                self.seconds,
                self.waited_s,
            )
