"""Progress reports and cooperative cancellation, the two callbacks a caller hands to `distill()`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Stage = Literal["loading", "teacher", "generating", "training", "evaluating", "exporting", "done"]


@dataclass(frozen=True)
class Progress:
    stage: Stage = field(metadata={"help": "What the run is doing now."})
    step: int = field(metadata={"help": "Units done in this stage (optimizer steps while training)."})
    total_steps: int = field(metadata={"help": "Units this stage will take (0 if unknown)."})
    loss: float | None = field(default=None, metadata={"help": "Latest training loss (the recipe's objective)."})
    ce: float | None = field(
        default=None,
        metadata={
            "help": "Latest training cross-entropy per labelled token: the measure heldout_loss takes on held-out "
            "text, where the objective (kd: α·CE + (1 − α)·τ²·D) is not."
        },
    )
    tokens_per_s: float | None = field(default=None, metadata={"help": "Recent throughput of this stage."})
    eta_s: float | None = field(default=None, metadata={"help": "Estimated seconds left in this stage."})
    heldout_loss: float | None = field(
        default=None, metadata={"help": "Student's mean NLL on held-out chunks, at evaluation points of training."}
    )
    message: str = field(default="", metadata={"help": "One line for humans."})

    @property
    def fraction(self) -> float:
        return 0.0 if self.total_steps <= 0 else min(1.0, self.step / self.total_steps)


ProgressCallback = Callable[[Progress], None]
StopCallback = Callable[[], bool]


def ignore_progress(_: Progress) -> None:
    """Default progress callback."""


def never_stop() -> bool:
    """Default stop callback."""
    return False


class RateMeter:
    """Units per second and ETA over a run, with the first (warm-up) interval excluded once possible."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.start = time.perf_counter()
        self.done = 0
        self.tokens = 0

    def update(self, done: int, tokens: int) -> tuple[float | None, float | None]:
        """Record progress; return (tokens per second, seconds left)."""
        self.done, self.tokens = done, self.tokens + tokens
        elapsed = time.perf_counter() - self.start
        if elapsed <= 0 or done <= 0:
            return None, None
        tokens_per_s = self.tokens / elapsed
        eta = elapsed / done * max(0, self.total - done)
        return tokens_per_s, eta
