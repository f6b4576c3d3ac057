"""What every teacher is: a batch chat interface with a token count, and the error that stops a spend cap."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
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


class Teacher(ABC):
    """A model that answers chat conversations; the distillation recipes only talk to this interface."""

    label: str  # shown on the expert card, e.g. the catalog spec or "model @ base_url"
    usage: TokenUsage

    @abstractmethod
    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
    ) -> list[str]:
        """Complete each conversation ([{"role": "system"|"user"|"assistant", "content": ...}, ...]).

        Returns one completion text per conversation, in the same order; greedy when temperature is 0.
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
