"""What every teacher is: a batch chat interface with a token count, and the error that stops a spend cap."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workers.ml.distill.errors import TeacherError

Conversation = list[dict[str, str]]


@dataclass
class TokenUsage:
    """Tokens a teacher used, for cost estimates and the spend caps of closed teachers.

    Endpoint teachers count what the server's `usage` fields report (a rough count when a server sends none);
    local teachers count real tokens: prompt tokens without padding, completion tokens up to and including
    the end-of-sequence token. `requests` counts HTTP requests answered (endpoint) or conversations (local).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, prompt_tokens: int, completion_tokens: int, requests: int = 1) -> None:
        self.prompt_tokens += int(prompt_tokens)
        self.completion_tokens += int(completion_tokens)
        self.requests += int(requests)


class TeacherBudgetExhausted(TeacherError):
    """The teacher's token budget (`max_tokens_budget`) is spent; no further request was sent.

    `partial_results` holds, for the call that stopped, the results that did come back (same order as the
    input, None where none came back), so a caller can keep what it paid for and stop its pass cleanly.
    """

    def __init__(self, message: str, *, partial_results: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.partial_results: list[Any] = list(partial_results)


class ChatCancelled(Exception):
    """`should_stop` turned true during a chat call, which ended early.

    A local teacher stops within one generated token and returns nothing of the call. An endpoint sends
    nothing more and waits only for the requests already on the wire: `partial_results` holds the replies that
    came back (in input order, None where none did), as paid for.
    """

    def __init__(self, message: str, *, partial_results: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.partial_results: list[Any] = list(partial_results)


# Conversations a chat call carries when no setting says otherwise; a local teacher generates them together.
# On a 2-core CPU, SmolLM2-135M wrote qa pairs 1.7× as fast 32 at a time as 8 at a time (12.3 → 7.3 s a chunk,
# bench/qa_generation.py): the matmuls of a batch of 8 leave the cores idle. A GPU fills with more.
GENERATION_BATCH_CPU = 32
GENERATION_BATCH_GPU = 64


def default_generation_batch(device_type: str) -> int:
    """The chat batch for a model on `device_type` ("cpu", "cuda", "mps")."""
    return GENERATION_BATCH_GPU if device_type == "cuda" else GENERATION_BATCH_CPU


# Called during a chat call with the share of the call's work done (0–1), so a long call can move a progress bar.
ChatProgress = Callable[[float], None]


class Teacher(ABC):
    """A model that answers chat conversations; the distillation recipes only talk to this interface."""

    label: str  # shown on the expert card, e.g. the catalog spec or "model @ base_url"
    usage: TokenUsage
    # Conversations a chat call should carry: callers split their work into calls this size.
    batch_size: int = GENERATION_BATCH_CPU

    @abstractmethod
    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        should_stop: Callable[[], bool] | None = None,
        on_progress: ChatProgress | None = None,
    ) -> list[str]:
        """Complete each conversation ([{"role": "system"|"user"|"assistant", "content": ...}, ...]).

        Returns one completion text per conversation, in the same order; greedy when temperature is 0.
        `should_stop` is checked while the call runs (ChatCancelled when it turns true); `on_progress` hears
        the share of the call done.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the model or the HTTP connections; the teacher is unusable afterwards."""

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"
