"""A reasoning expert's `<think>…</think>` parted from its answer, whole and streamed in pieces."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webapp.api.reasoning import ReasoningStream, split_reasoning

REPLY = "<think>\nThe leave policy gives 25 days.\nHalf-days count as 0.5.\n</think>\n\nYou get 25 days a year."


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        (REPLY, "The leave policy gives 25 days.\nHalf-days count as 0.5.", "You get 25 days a year."),
        ("You get 25 days a year.", None, "You get 25 days a year."),  # no reasoning: untouched
        ("<think>short</think>Yes.", "short", "Yes."),
        ("  <think>late</think>No.", None, "  <think>late</think>No."),  # an expert trained to reason opens with it
        ("<think>\nStill thinking when max_tokens", "Still thinking when max_tokens", ""),  # cut off
        ("The tag <think> in the middle is text.", None, "The tag <think> in the middle is text."),
        ("<think></think>\n\nDirect.", "", "Direct."),
    ],
)
def test_it_parts_a_whole_reply_into_reasoning_and_answer(text: str, reasoning: str | None, answer: str) -> None:
    assert split_reasoning(text) == (reasoning, answer)


def streamed(pieces: list[str]) -> tuple[str | None, str, list[tuple[str, str]]]:
    stream = ReasoningStream()
    parts = [part for piece in pieces for part in stream.feed(piece)] + stream.close()
    reasoning = [text for kind, text in parts if kind == "reasoning"]
    content = "".join(text for kind, text in parts if kind == "content")
    return ("".join(reasoning) if reasoning or stream.state != "content" else None), content, parts


def test_it_streams_the_reasoning_first_then_the_answer_holding_back_only_a_possible_tag() -> None:
    pieces = ["<th", "ink>\nThe leave policy", " gives 25 days.\n</", "think>\n\nYou get", " 25 days."]
    stream = ReasoningStream()
    assert stream.feed(pieces[0]) == []  # may become "<think>"
    assert stream.feed(pieces[1]) == [("reasoning", "The leave policy")]
    assert stream.feed(pieces[2]) == [("reasoning", " gives 25 days.")]  # "\n</" held: it may close the tag
    assert stream.feed(pieces[3]) == [("content", "You get")]
    assert stream.feed(pieces[4]) == [("content", " 25 days.")]
    assert stream.close() == []


def test_it_streams_a_reply_without_reasoning_as_it_comes() -> None:
    stream = ReasoningStream()
    assert stream.feed("\n") == [("content", "\n")]
    assert stream.feed("You") == [("content", "You")]
    assert stream.feed(" get <think> 25") == [("content", " get <think> 25")]


@settings(max_examples=300, deadline=None, database=None)
@given(
    text=st.sampled_from([REPLY, "Plain answer.", "<think>cut", "  <think>a</think>b", "<thin", "", "<think></think>"])
    | st.text(alphabet="<>/thinkab \n", max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=6),
)
def test_it_streams_any_reply_in_any_pieces_to_the_parts_of_the_whole(text: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(cut for cut in cuts if cut < len(text))})
    pieces = [text[start:end] for start, end in itertools.pairwise(bounds)]
    reasoning, answer = split_reasoning(text)
    got_reasoning, got_answer, parts = streamed(pieces)
    assert got_answer == answer
    assert (got_reasoning or None) == (reasoning or None)
    assert all(piece for _, piece in parts)  # no empty deltas
