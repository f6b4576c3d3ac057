"""The LoRA training loop: gradient accumulation, bf16 autocast (precision.py), packed rows, checkpoints, exact resume.

A plain loop rather than transformers' Trainer: distillation needs the teacher's targets gathered per packed
micro-batch and a loss over them, OOM back-off, and cooperative cancellation between steps — each a callback
in Trainer. The loop stays small enough to read:

1. The data order is a pure function of (seed, epoch): `packing.epoch_rows`. Each epoch is cut into steps of
   A micro-batches (its last step may be shorter), so the data position of a checkpoint is just its step.
2. Each step accumulates A micro-batches; each micro-batch's loss is weighted by its share of the step's
   labelled tokens, so the step's loss is the mean over its tokens whatever the packing.
3. Every `checkpoint_every` steps, on cancel and at the end: adapter weights, optimizer, scheduler and RNG
   state go to `checkpoint_dir/step-NNNNNN` (written to a temp dir, then renamed: never half a checkpoint).
4. On start, the latest checkpoint is restored, so a resumed run continues with exactly the next step.
5. A CUDA out-of-memory error halves the micro-batch (each planned micro-batch is run in 2, 4, … pieces, so the
   effective batch is unchanged) and retries the step; at one row per piece it stops with a clear message.
6. On a GPU the host never waits for the device inside a step: batches are copied from pinned memory, the
   loss's token count comes from the host, and a step's loss and gradient norm are read (logged, reported) one
   step late, while the next step's kernels are already queued — except at evaluation points, checkpoints,
   cancel and the end, where the record is read at once. `torch_compile` compiles the student's decoder
   layers for the run (regional_compile.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from workers.ml.device import parameter_count
from workers.ml.distill.config import TrainingSettings
from workers.ml.distill.errors import OutOfMemory
from workers.ml.distill.losses import LossParts, compiled_vocabulary_passes
from workers.ml.distill.packing import PackedBatch, collate, epoch_rows
from workers.ml.distill.precision import autocasts_bf16, bf16_autocast
from workers.ml.distill.progress import Progress, ProgressCallback, RateMeter, StopCallback
from workers.ml.distill.regional_compile import (
    allocate_gradient_buffers,
    compiled_layers,
    eager,
    has_active_dropout,
    padded_rows,
    planned_train_flops,
    should_compile,
)

KEEP_CHECKPOINTS = 2
logger = logging.getLogger(__name__)
LossFunction = Callable[[Any, PackedBatch], LossParts]


@dataclass
class TrainOutcome:
    steps_done: int
    total_steps: int
    train_tokens: int
    final_loss: float | None
    cancelled: bool
    resumed_from: int | None
    log_path: Path
    bf16_autocast: bool = False  # whether the forward ran under bf16 autocast (precision.py)


class DataPlan:
    """Which packed rows make up each optimizer step of the run, over as many epochs as needed.

    Each epoch packs its own shuffle, so epochs can differ in their number of rows: the plan counts every
    epoch's micro-batches separately, and a step never crosses an epoch boundary (an epoch's last step may hold
    fewer than `grad_accum` micro-batches, as in transformers' Trainer). With `epochs=N` every segment is trained
    exactly N times.
    """

    def __init__(self, segments: Sequence[Sequence[int]], settings: TrainingSettings, pad_token_id: int) -> None:
        self.segments = segments
        self.settings = settings
        self.pad_token_id = pad_token_id
        self.lengths = [len(segment) for segment in segments]
        self._cached_epoch: tuple[int, list[list[list[int]]]] | None = None
        # _epoch_first_step[e] is the global index of epoch e's first step; grown lazily as epochs are counted.
        self._epoch_first_step: list[int] = [0]
        self.total_steps = self._count_steps()

    def epoch(self, number: int) -> list[list[list[int]]]:
        """The micro-batches (lists of rows of segment indices) of one epoch (only the latest one is kept)."""
        if self._cached_epoch is None or self._cached_epoch[0] != number:
            rows = epoch_rows(self.lengths, self.settings.seq_len, self.settings.seed, number)
            size = self.settings.micro_batch_size
            self._cached_epoch = (number, [rows[i : i + size] for i in range(0, len(rows), size)])
        return self._cached_epoch[1]

    def steps_in_epoch(self, number: int) -> int:
        return math.ceil(len(self.epoch(number)) / self.settings.grad_accum)

    def _first_step(self, epoch: int) -> int:
        while len(self._epoch_first_step) <= epoch:
            counted = len(self._epoch_first_step) - 1
            self._epoch_first_step.append(self._epoch_first_step[-1] + self.steps_in_epoch(counted))
        return self._epoch_first_step[epoch]

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within that epoch) of a global step."""
        epoch = 0
        while self._first_step(epoch + 1) <= step:
            epoch += 1
        return epoch, step - self._first_step(epoch)

    def step_micro_batches(self, step: int) -> list[list[list[int]]]:
        epoch, offset = self.locate(step)
        accum = self.settings.grad_accum
        return self.epoch(epoch)[offset * accum : (offset + 1) * accum]

    def tokens(self, rows: list[list[int]]) -> int:
        return sum(self.lengths[index] for row in rows for index in row)

    def labels(self, rows: list[list[int]]) -> int:
        """Labelled positions: every token of a segment but its last predicts the next one."""
        return sum(self.lengths[index] - 1 for row in rows for index in row)

    def _count_steps(self) -> int:
        if self.settings.token_budget is None:
            whole_epochs, fraction = divmod(self.settings.epochs, 1)
            steps = self._first_step(int(whole_epochs))
            if fraction > 0:
                steps += math.ceil(fraction * self.steps_in_epoch(int(whole_epochs)))
            return max(1, steps)
        # A token budget: whole steps until it is reached (at least one). Every epoch holds all the tokens.
        tokens_per_epoch = max(1, sum(self.lengths))
        whole_epochs, remainder = divmod(self.settings.token_budget, tokens_per_epoch)
        steps = self._first_step(int(whole_epochs))
        if remainder > 0:
            seen = 0
            for rows in self._epoch_steps(int(whole_epochs)):
                steps += 1
                seen += sum(self.tokens(micro_batch) for micro_batch in rows)
                if seen >= remainder:
                    break
        return max(1, steps)

    def _epoch_steps(self, number: int) -> list[list[list[list[int]]]]:
        micro_batches, accum = self.epoch(number), self.settings.grad_accum
        return [micro_batches[i : i + accum] for i in range(0, len(micro_batches), accum)]

    def trained_segments(self) -> list[int]:
        """The indices of the segments the run's steps train on, ascending: all of them unless a token budget
        ends the run inside its first epoch (then the teacher need not read the rest)."""
        seen: set[int] = set()
        for step in range(self.total_steps):
            for micro_batch in self.step_micro_batches(step):
                for row in micro_batch:
                    seen.update(row)
            if len(seen) == len(self.segments):
                break
        return sorted(seen)

    def planned_positions(self, from_step: int = 0) -> int:
        """Token positions the steps from `from_step` on run through the model (their rows' full width)."""
        settings = self.settings
        return max(0, self.total_steps - from_step) * settings.grad_accum * settings.micro_batch_size * settings.seq_len

    def collate(self, rows: list[list[int]]) -> PackedBatch:
        return collate(self.segments, rows, self.settings.seq_len, self.pad_token_id)


@dataclass
class _StepRecord:
    """A finished optimizer step whose numbers may still be on their way from the device."""

    step: int
    values: torch.Tensor  # (4,) on the host: loss, ce, divergence, gradient norm
    ready: torch.cuda.Event | None  # recorded after the copy to `values` was queued; None: already there
    lr: float
    tokens: int  # tokens seen after this step
    step_tokens: int

    @classmethod
    def read_back(
        cls, step: int, parts: torch.Tensor, grad_norm: torch.Tensor, lr: float, tokens: int, step_tokens: int
    ) -> _StepRecord:
        """Queue the copy of the step's numbers to the host without waiting for it (on a GPU).

        The copy lands in pinned memory behind this step's kernels; waiting on its event later waits for this
        step only, not for kernels queued after it (a plain `.tolist()` then would wait for those too).
        """
        values = torch.cat([parts.float(), grad_norm.float().reshape(1)])  # (4,)
        if values.device.type != "cuda":
            return cls(step, values, None, lr, tokens, step_tokens)
        host = values.to("cpu", non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(step, host, ready, lr, tokens, step_tokens)

    def numbers(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.values.tolist()


class _StepReporter:
    """Writes a step's log line, runs the evaluation due at it and reports progress."""

    def __init__(
        self,
        settings: TrainingSettings,
        total_steps: int,
        start_step: int,
        log_path: Path,
        on_progress: ProgressCallback,
        evaluate: Callable[[Any], float] | None,
    ) -> None:
        self.settings = settings
        self.total_steps = total_steps
        self.start_step = start_step
        self.log_path = log_path
        self.on_progress = on_progress
        self.evaluate = evaluate
        self.meter = RateMeter(total_steps - start_step)
        self.last_loss: float | None = None

    def evaluation_due(self, step: int) -> bool:
        every = self.settings.eval_every
        return self.evaluate is not None and every > 0 and (step % every == 0 or step == self.total_steps)

    def report(self, record: _StepRecord, model: Any) -> None:
        """Read the record (the host waits for its step here), log it, evaluate if due (the model must still be
        at this step) and report progress."""
        loss, ce, divergence, grad_norm = record.numbers()
        self.last_loss = loss
        tokens_per_s, eta = self.meter.update(record.step - self.start_step, record.step_tokens)
        line = {
            "step": record.step,
            "loss": round(loss, 6),
            "ce": round(ce, 6),
            "divergence": round(divergence, 6),
            "lr": record.lr,
            "grad_norm": round(grad_norm, 4),
            "tokens": record.tokens,
            "tokens_per_s": round(tokens_per_s or 0.0, 1),
        }
        with self.log_path.open("a") as log:
            log.write(json.dumps(line) + "\n")
        heldout_loss = None
        if self.evaluate is not None and self.evaluation_due(record.step):
            model.eval()
            with torch.no_grad(), eager():
                heldout_loss = float(self.evaluate(model))
            model.train()
            with self.log_path.open("a") as log:
                log.write(json.dumps({"step": record.step, "heldout_loss": round(heldout_loss, 6)}) + "\n")
        self.on_progress(
            Progress(
                "training",
                record.step,
                self.total_steps,
                loss=loss,
                ce=ce,
                tokens_per_s=tokens_per_s,
                eta_s=eta,
                heldout_loss=heldout_loss,
            )
        )


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().cpu().contiguous() for name, param in model.named_parameters() if param.requires_grad}


def _latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    candidates = sorted(checkpoint_dir.glob("step-*"), key=lambda path: int(path.name.split("-")[1]))
    complete = [path for path in candidates if (path / "state.json").exists()]
    return complete[-1] if complete else None


def save_checkpoint(
    checkpoint_dir: Path, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, tokens: int
) -> Path:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"step-{step:06d}"
    tmp = checkpoint_dir / f".step-{step:06d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "adapter.safetensors"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        tmp / "training_state.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, "tokens": tokens, "saved_at": time.time()}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(checkpoint_dir.glob("step-*"), key=lambda path: int(path.name.split("-")[1]))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> tuple[int, int]:
    """Restore a checkpoint into model, optimizer, scheduler and RNG; returns (step, tokens)."""
    weights = load_file(str(path / "adapter.safetensors"))
    params = dict(model.named_parameters())
    for name, value in weights.items():
        params[name].data.copy_(value.to(params[name].device, params[name].dtype))
    # The file holds only our own optimizer/scheduler/RNG state, written by save_checkpoint.
    state = torch.load(path / "training_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    meta = json.loads((path / "state.json").read_text())
    return int(meta["step"]), int(meta["tokens"])


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _split(rows: list[list[int]], pieces: int) -> list[list[list[int]]]:
    size = math.ceil(len(rows) / pieces)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _reads_back_late(device: torch.device) -> bool:
    """Whether a step's record is read one step late (module docstring, point 6): on a GPU, which runs behind
    the host; a CPU has computed everything by the time the host reads."""
    return device.type == "cuda"


def _start_message(plan: DataPlan, start_step: int, compiled: bool) -> str:
    settings = plan.settings
    rows = settings.grad_accum * settings.micro_batch_size
    said = (
        f"Training the LoRA adapter: {plan.total_steps - start_step} optimizer step(s) of {rows} row(s) of up to "
        f"{settings.seq_len} tokens"
    )
    if start_step:
        said += f", resuming after step {start_step}"
    return said + (" (the student's layers are compiled during the first step)" if compiled else "")


def train(
    model: Any,
    plan: DataPlan,
    loss_fn: LossFunction,
    settings: TrainingSettings,
    checkpoint_dir: Path,
    log_path: Path,
    on_progress: ProgressCallback,
    should_stop: StopCallback,
    evaluate: Callable[[Any], float] | None = None,
) -> TrainOutcome:
    """Train the trainable (LoRA) parameters of `model` on `plan` with `loss_fn`; see the module docstring.

    `evaluate(model) -> loss`, when given, runs every `settings.eval_every` steps and at the end (eval mode, no
    grad, no random numbers drawn, so resuming stays exact); its value is logged and reported as `heldout_loss`.
    """
    device = next(model.parameters()).device
    use_bf16 = autocasts_bf16(settings.bf16, device, model)
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=device.type == "cuda"
    )
    total_steps = plan.total_steps
    warmup = max(1, round(settings.warmup_ratio * total_steps)) if settings.warmup_ratio > 0 else 0

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    start_step, tokens_seen, resumed_from = 0, 0, None
    latest = _latest_checkpoint(checkpoint_dir)
    if latest is not None:
        start_step, tokens_seen = load_checkpoint(latest, model, optimizer, scheduler)
        resumed_from = start_step
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if resumed_from is None or not log_path.exists():
        # A fresh run, or a resume on a host that has the checkpoint but not the log: start the log afresh.
        log_path.write_text("")
    else:
        # Drop what a crashed run logged after its last checkpoint: those steps are done again.
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
        log_path.write_text("".join(line + "\n" for line in kept))
    reporter = _StepReporter(settings, total_steps, start_step, log_path, on_progress, evaluate)
    step = start_step
    parameters = parameter_count(model)
    flops = planned_train_flops(parameters, plan.planned_positions(start_step))
    compiling = should_compile(settings.torch_compile, device, flops, dropout=has_active_dropout(model))
    if compiling:
        logger.info("torch.compile: the student's decoder layers are compiled for training (%.1e FLOPs)", flops)
    with (
        compiled_layers(
            model,
            compiling,
            fall_back=settings.torch_compile == "auto",
            static_shapes=True,
            cuda_graphs=settings.cuda_graphs,
        ) as compiled,
        compiled_vocabulary_passes(compiled),  # a GPU's loss compiles along with the layers
    ):
        graphs = compiled and settings.cuda_graphs
        if graphs:
            allocate_gradient_buffers(params)  # and zero_grad keeps them (set_to_none=not graphs)
        on_progress(Progress("training", start_step, total_steps, message=_start_message(plan, start_step, compiled)))
        defer = _reads_back_late(device)
        pending: _StepRecord | None = None
        model.train()
        pieces = 1
        while step < total_steps:
            if should_stop():
                if pending is not None:
                    reporter.report(pending, model)
                save_checkpoint(checkpoint_dir, step, model, optimizer, scheduler, tokens_seen)
                return TrainOutcome(
                    step, total_steps, tokens_seen, reporter.last_loss, True, resumed_from, log_path, use_bf16
                )
            micro_batches = plan.step_micro_batches(step)
            step_labels = sum(plan.labels(rows) for rows in micro_batches)
            try:
                # (loss, ce, divergence) summed on the device, read once per step (_StepReporter.report).
                step_parts = torch.zeros(3, device=device)
                for rows in micro_batches:
                    for piece in _split(rows, pieces):
                        if compiled:
                            piece = padded_rows(piece, math.ceil(settings.micro_batch_size / pieces))
                        batch = plan.collate(piece).to(device)
                        if graphs:
                            # The last micro-batch's graph outputs are spent (its backward ran): their memory
                            # may be reused by this one's replay.
                            torch.compiler.cudagraph_mark_step_begin()
                        with bf16_autocast(model, device, use_bf16):
                            parts = loss_fn(model, batch)
                        weight = parts.positions / max(1, step_labels)
                        (parts.total * weight).backward()
                        measured = torch.stack([parts.total.detach(), parts.ce, parts.divergence]).float()
                        step_parts += measured.to(device) * weight
            except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
                if not _is_oom(error):
                    raise
                optimizer.zero_grad(set_to_none=not graphs)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if settings.micro_batch_size // pieces <= 1:
                    raise OutOfMemory(
                        f"Out of memory even with one row of {settings.seq_len} tokens per forward pass: lower "
                        "training.seq_len (or use a smaller teacher/student, or a GPU with more memory)."
                    ) from error
                pieces *= 2
                said = (
                    f"Out of memory: each micro-batch of {settings.micro_batch_size} rows now runs in {pieces} pieces "
                    f"of {math.ceil(settings.micro_batch_size / pieces)} (the effective batch is unchanged)"
                )
                logger.warning(said)
                on_progress(Progress("training", step, total_steps, message=said))
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm).detach()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=not graphs)
            step += 1
            step_tokens = sum(plan.tokens(rows) for rows in micro_batches)
            tokens_seen += step_tokens
            # A float: the optimizer's lr is (get_last_lr is typed float | Tensor for optimizers given tensor lrs).
            lr = float(scheduler.get_last_lr()[0])
            finished = _StepRecord.read_back(step, step_parts, grad_norm, lr, tokens_seen, step_tokens)
            if pending is not None:
                reporter.report(pending, model)  # the previous step: its kernels are done or nearly
            checkpoint_due = settings.checkpoint_every > 0 and step % settings.checkpoint_every == 0
            if defer and not (reporter.evaluation_due(step) or checkpoint_due or step == total_steps):
                pending = finished
            else:
                reporter.report(finished, model)
                pending = None
            if checkpoint_due and step < total_steps:
                save_checkpoint(checkpoint_dir, step, model, optimizer, scheduler, tokens_seen)
    save_checkpoint(checkpoint_dir, step, model, optimizer, scheduler, tokens_seen)
    model.eval()
    return TrainOutcome(step, total_steps, tokens_seen, reporter.last_loss, False, resumed_from, log_path, use_bf16)
