"""A reasoning expert's reply parted into its reasoning and its answer, as reasoning models' APIs return them.

An expert distilled with `qa` reasoning (R1-style) writes `<think>…</think>` before its answer. The chat API
returns the answer as `content` and the reasoning beside it as `reasoning_content` (DeepSeek's API and vLLM's
reasoning parsers use that field; clients that do not know it read `content` as the plain answer). A reply that
does not open with `<think>` (its first characters, as the expert was trained to write it) is all content,
untouched, and streams without delay.

Streaming parts the deltas as they arrive: only what could still be the start of a tag is held back, so the
reasoning streams as it is written and the answer follows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OPEN, CLOSE = "<think>", "</think>"
Part = Literal["reasoning", "content"]


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a whole reply; reasoning is None when the reply does not open with `<think>`.

    A reply cut off while still reasoning (max_tokens) has its reasoning so far and an empty answer.
    """
    if not text.startswith(OPEN):
        return None, text
    reasoning, closed, answer = text[len(OPEN) :].partition(CLOSE)
    return reasoning.strip(), answer.lstrip() if closed else ""


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag` (it may complete in the next delta)."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


@dataclass
class ReasoningStream:
    """Parts streamed text into ("reasoning", text) and ("content", text) pieces, in order; joined, each part is
    what `split_reasoning` gives for the whole reply."""

    state: Literal["start", "reasoning", "answer_start", "content"] = "start"
    held: str = field(default="", repr=False)
    reasoned: bool = field(default=False, repr=False)  # some reasoning was sent: its leading space is gone

    def feed(self, text: str) -> list[tuple[Part, str]]:
        self.held += text
        pieces: list[tuple[Part, str]] = []
        if self.state == "start":
            if len(self.held) < len(OPEN) and OPEN.startswith(self.held):  # what may still become "<think>"
                return pieces
            if self.held.startswith(OPEN):
                self.state, self.held = "reasoning", self.held[len(OPEN) :]
            else:
                self.state = "content"
        if self.state == "reasoning":
            if not self.reasoned:
                self.held = self.held.lstrip()
            before, closed, after = self.held.partition(CLOSE)
            if closed:
                self._reason(pieces, before.rstrip())
                self.state, self.held = "answer_start", after
            else:
                # Hold back what may be the start of "</think>", and trailing space that may precede it.
                ready = self.held[: len(self.held) - _partial_tag_length(self.held, CLOSE)].rstrip()
                self.held = self.held[len(ready) :]
                self._reason(pieces, ready)
                return pieces
        if self.state == "answer_start":  # the blank line between reasoning and answer is not part of the answer
            self.held = self.held.lstrip()
            if not self.held:
                return pieces
            self.state = "content"
        if self.held:
            pieces.append(("content", self.held))
            self.held = ""
        return pieces

    def _reason(self, pieces: list[tuple[Part, str]], text: str) -> None:
        if text:
            pieces.append(("reasoning", text))
            self.reasoned = True

    def close(self) -> list[tuple[Part, str]]:
        """What is still held when the reply ends: a tag that never completed is text after all."""
        held, self.held = self.held, ""
        if self.state == "reasoning":
            return [("reasoning", held.rstrip())] if held.strip() else []
        if self.state == "start" and held:
            return [("content", held)]
        return []
