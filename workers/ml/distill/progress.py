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


class StageClock:
    """Wall seconds per stage, read from the progress reports a run makes: a stage lasts from its first report to
    the first report of the next one (metrics.json's `stage_seconds`; the web app learns its estimates there)."""

    def __init__(self, on_progress: ProgressCallback) -> None:
        self.on_progress = on_progress
        self.current: Stage | None = None
        self.since = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, progress: Progress) -> None:
        if progress.stage != self.current:
            self._close()
            self.current = progress.stage
        self.on_progress(progress)

    def _close(self) -> None:
        now = time.perf_counter()
        if self.current is not None and self.current != "done":
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self.since
        self.since = now

    def snapshot(self) -> dict[str, float]:
        """Seconds so far per stage, the current one counted up to now (rounded to 0.1 s)."""
        self._close()
        return {stage: round(seconds, 1) for stage, seconds in self.seconds.items()}
