"""Errors a distillation run reports to its user: one readable sentence each, never a traceback."""

from __future__ import annotations


class DistillError(Exception):
    """The run cannot go on; str(error) is shown in the web UI and the CLI as it is."""


class TokenizerMismatch(DistillError):
    """Logit distillation needs teacher and student to share a vocabulary."""


class TeacherError(DistillError):
    """The teacher failed: unreachable endpoint, refused credentials, exhausted retries."""


class NoTrainingData(DistillError):
    """Nothing was left to train on (e.g. every generated Q&A pair was dropped)."""


class OutOfMemory(DistillError):
    """Even a micro-batch of one sequence does not fit; the message names the setting to lower."""
