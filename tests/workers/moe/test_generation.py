"""Batched generation: each row gets what it would get alone, and finishes, stops and streams on its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from tests.workers.moe.conftest import PeftReference
from workers.moe.adapters import ExpertRef
from workers.moe.engine import Engine, Finished, GenerationRequest, TokenDelta
from workers.moe.generation import TextStream

PROMPTS = ["The cat sat on", "Once upon a time, in a land far away,", "1, 2, 3,", "Dear customer"]


def _greedy(prompt: str, experts: list[ExpertRef], max_tokens: int = 8, **kwargs: object) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt, experts=experts, max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kwargs
    )


def _collect(engine: Engine, request: GenerationRequest) -> tuple[list[str], Finished]:
    deltas: list[str] = []
    for event in engine.submit(request).events():
        if isinstance(event, TokenDelta):
            deltas.append(event.text)
        else:
            return deltas, event
    raise AssertionError("no Finished event")


def test_it_gives_each_row_of_a_mixed_batch_the_tokens_peft_gives_it_alone(
    engine: Engine, peft_reference: PeftReference, make_expert: Callable[..., ExpertRef]
) -> None:
    experts = [[make_expert(1)], [], [make_expert(2, rank=4, alpha=4)], [make_expert(1, 0.5), make_expert(2, 0.5)]]
    requests = [_greedy(prompt, refs) for prompt, refs in zip(PROMPTS, experts, strict=True)]
    before = engine.stats()["prefills_run"]

    streams = [engine.submit(request) for request in requests]  # queued together: one batch
    results = [next(e for e in stream.events() if isinstance(e, Finished)) for stream in streams]

    assert engine.stats()["prefills_run"] - before == 1
    for prompt, refs, result in zip(PROMPTS, experts, results, strict=True):
        ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
        expected = peft_reference.greedy(ids, refs, 8)
        assert result.text == engine.tokenizer.decode(expected, skip_special_tokens=True), prompt
        assert result.completion_tokens == 8
        assert result.prompt_tokens == len(ids)
        assert result.finish_reason == "length"


def test_it_lets_a_request_join_a_running_batch_and_still_match_alone(
    engine: Engine, make_expert: Callable[..., ExpertRef]
) -> None:
    alone = engine.generate(_greedy(PROMPTS[1], [make_expert(2)], max_tokens=6)).text
    first = engine.submit(_greedy(PROMPTS[0], [make_expert(1)], max_tokens=60))
    events = first.events()
    next(events)  # the first row is decoding

    joined = engine.generate(_greedy(PROMPTS[1], [make_expert(2)], max_tokens=6))

    assert joined.text == alone
    assert isinstance(list(events)[-1], Finished)


def test_it_cuts_the_text_at_a_stop_sequence_and_finishes_with_stop(engine: Engine) -> None:
    full = engine.generate(_greedy(PROMPTS[1], [], max_tokens=12)).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]

    deltas, finished = _collect(engine, _greedy(PROMPTS[1], [], max_tokens=12, stop=[stop, "never-there"]))

    assert finished.finish_reason == "stop"
    assert finished.text == expected
    assert "".join(deltas) == expected
    assert finished.completion_tokens < 12


def test_it_finishes_with_length_after_max_tokens(engine: Engine) -> None:
    deltas, finished = _collect(engine, _greedy(PROMPTS[0], [], max_tokens=5))

    assert finished.finish_reason == "length"
    assert finished.completion_tokens == 5
    assert "".join(deltas) == finished.text
    assert finished.text


def test_it_stops_at_eos_without_returning_it(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    first = engine.generate(_greedy(PROMPTS[2], [], max_tokens=3))
    third_token = engine.tokenizer.encode(first.text, add_special_tokens=False)
    monkeypatch.setattr(engine._batch, "eos_ids", {third_token[-1]})  # pretend the 3rd token is EOS

    finished = engine.generate(GenerationRequest(prompt=PROMPTS[2], max_tokens=10, temperature=0.0))

    assert finished.finish_reason == "stop"
    assert finished.completion_tokens < 3
    assert first.text.startswith(finished.text)


def test_it_samples_reproducibly_with_a_seed(engine: Engine) -> None:
    def sample(seed: int | None) -> str:
        request = GenerationRequest(prompt=PROMPTS[0], max_tokens=12, temperature=1.0, seed=seed, ignore_eos=True)
        return engine.generate(request).text

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_it_samples_greedily_when_top_p_keeps_one_token(engine: Engine) -> None:
    greedy = engine.generate(_greedy(PROMPTS[3], [], max_tokens=6)).text
    nucleus = GenerationRequest(prompt=PROMPTS[3], max_tokens=6, temperature=1.5, top_p=1e-6, ignore_eos=True)

    assert engine.generate(nucleus).text == greedy


def test_it_frees_a_cancelled_row_and_its_experts(engine: Engine, make_expert: Callable[..., ExpertRef]) -> None:
    expert = make_expert(4)
    stream = engine.submit(_greedy(PROMPTS[0], [expert], max_tokens=2000))
    events = stream.events()
    assert isinstance(next(events), TokenDelta)

    stream.cancel()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        engine.stats()["running_rows"] or engine.store._loaded[expert.id].pins
    ):  # the first delta comes from the prefill, before the row joins the running batch: poll the outcome
        time.sleep(0.01)
    assert engine.stats()["running_rows"] == 0
    assert engine.store._loaded[expert.id].pins == 0
    remaining = list(events)  # the stream ends without a Finished event
    assert not any(isinstance(event, Finished) for event in remaining)


def test_it_streams_deltas_that_join_to_the_final_text(engine: Engine) -> None:
    seen: list[str] = []
    done = threading.Event()

    def consume() -> None:
        for event in engine.submit(_greedy(PROMPTS[1], [], max_tokens=16)).events():
            seen.append(event.text)
        done.set()

    threading.Thread(target=consume).start()
    assert done.wait(30)

    assert len(seen) > 2
    assert "".join(seen[:-1]) == seen[-1]


def test_it_never_splits_a_character_spread_over_several_tokens(engine: Engine) -> None:
    text = "naïve 🙂 café — 日本語"
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    stream = TextStream(engine.tokenizer, stop=[])

    deltas = [stream.push(token) for token in ids]

    assert len(ids) > len(text.split())  # the emoji and the kanji take several byte-level tokens
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) + stream.flush() == text


def test_it_holds_back_text_that_could_start_a_stop_sequence(engine: Engine) -> None:
    tokenizer = engine.tokenizer
    stream = TextStream(tokenizer, stop=["END"])
    pieces = ["Hello", " E", "N", "D", " more"]
    deltas = []
    for piece in pieces:
        for token in tokenizer.encode(piece, add_special_tokens=False):
            deltas.append(stream.push(token))
            if stream.stopped:
                break
        if stream.stopped:
            break

    assert stream.stopped
    assert "".join(deltas) == "Hello "
    assert stream.text == "Hello "
