"""Teachers: a local catalog model (logits, batched chat) and an OpenAI-compatible endpoint (against a stub)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.workers.ml.distill.openai_stub import OpenAIStub, topk_for_prefix
from workers.ml import tiny
from workers.ml.catalog import CatalogConfig
from workers.ml.distill.config import EndpointTeacherConfig, LocalTeacherConfig, QASettings
from workers.ml.distill.errors import TeacherError, TokenizerMismatch
from workers.ml.distill.teachers import (
    ChatCancelled,
    EndpointTeacher,
    LocalTeacher,
    TeacherBudgetExhausted,
    default_generation_batch,
    load_teacher,
    require_same_vocabulary,
    same_vocabulary,
)
from workers.ml.distill.teachers.base import GENERATION_BATCH_CPU, GENERATION_BATCH_GPU
from workers.ml.distill.teachers.endpoint import ENDPOINT_MIN_BATCH

TINY = "tiny:llama-2l"
SECRET = "sk-test-0123456789-very-secret"

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You answer questions about the company handbook, briefly."},
        {"role": "user", "content": "How many days of paid leave does a new employee get in the first year?"},
    ],
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
]


def _quiet(_message: str) -> None:
    """Progress callback for loads nobody watches."""


# ---------------------------------------------------------------- local teacher


@pytest.fixture(scope="module")
def catalog(model_cache_dir: Path) -> CatalogConfig:
    return CatalogConfig(cache_dir=model_cache_dir, device="cpu")


@pytest.fixture(scope="module")
def local_teacher(catalog: CatalogConfig) -> Iterator[LocalTeacher]:
    """The tiny Llama through load_teacher, with livelier weights than its init.

    At its init scale the tiny model only repeats the last prompt token, which would make "batched equals
    unbatched" true for any padding bug; weights of std 0.2 give every prompt its own greedy continuation.
    """
    teacher = load_teacher(LocalTeacherConfig(spec=TINY), catalog, batch_size=3, progress=_quiet)
    assert isinstance(teacher, LocalTeacher)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in teacher.model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    yield teacher
    teacher.close()


def test_it_loads_a_catalog_model_as_a_local_teacher_in_eval_mode(local_teacher: LocalTeacher) -> None:
    assert local_teacher.label == TINY
    assert local_teacher.device == torch.device("cpu")
    assert not local_teacher.model.training
    assert len(local_teacher.tokenizer) == tiny.SMOLLM2_VOCAB_SIZE


def test_it_reports_an_unknown_teacher_model_as_a_teacher_error(catalog: CatalogConfig) -> None:
    with pytest.raises(TeacherError, match="could not be loaded: Unknown model spec 'tiny:nope'"):
        load_teacher(LocalTeacherConfig(spec="tiny:nope"), catalog)


def test_it_returns_float32_logits_of_shape_batch_time_vocab_without_grad(local_teacher: LocalTeacher) -> None:
    input_ids = torch.tensor([[1, 520, 9531, 198, 42], [1, 4093, 198, 26843, 2]])
    logits = local_teacher.logits(input_ids, torch.ones_like(input_ids))
    assert logits.shape == (2, 5, tiny.SMOLLM2_VOCAB_SIZE)
    assert logits.dtype == torch.float32
    assert not logits.requires_grad
    assert logits.grad_fn is None
    assert torch.isfinite(logits).all()
    # Not an inference tensor: it can be the target of a loss backpropagated through a student.
    student = torch.zeros_like(logits, requires_grad=True)
    (student.log_softmax(-1) * logits.softmax(-1)).sum().backward()


def test_it_gives_left_padded_rows_the_logits_they_have_unpadded(local_teacher: LocalTeacher) -> None:
    short, long = [1, 4093, 198], [1, 520, 9531, 198, 42, 17]
    pad = 2
    batch = torch.tensor([[pad] * (len(long) - len(short)) + short, long])
    mask = (torch.arange(len(long)) >= len(long) - len(short)).long().unsqueeze(0)
    mask = torch.cat([mask, torch.ones(1, len(long), dtype=torch.long)])
    batched = local_teacher.logits(batch, mask)
    alone = local_teacher.logits(torch.tensor([short]))
    torch.testing.assert_close(batched[0, -len(short) :], alone[0], atol=1e-4, rtol=1e-4)


def test_it_answers_a_batch_of_conversations_as_it_answers_each_alone(local_teacher: LocalTeacher) -> None:
    batched = local_teacher.chat(CONVERSATIONS, max_new_tokens=6)  # batch_size 3: batches of 3 and 1
    assert len(batched) == len(CONVERSATIONS)
    assert all(isinstance(text, str) and text.strip() for text in batched)
    assert len(set(batched)) == len(batched)  # each answer belongs to its own conversation
    alone = [local_teacher.chat([conversation], max_new_tokens=6)[0] for conversation in CONVERSATIONS]
    assert batched == alone


def test_it_strips_the_prompt_from_local_answers(local_teacher: LocalTeacher) -> None:
    [answer] = local_teacher.chat([[{"role": "user", "content": "Hi"}]], max_new_tokens=4)
    assert "assistant" not in answer
    assert "<|im_start|>" not in answer
    assert len(local_teacher.tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 6


def test_it_counts_the_tokens_of_local_chat(local_teacher: LocalTeacher) -> None:
    tokenizer = local_teacher.tokenizer
    before = (local_teacher.usage.prompt_tokens, local_teacher.usage.completion_tokens, local_teacher.usage.requests)
    local_teacher.chat(CONVERSATIONS, max_new_tokens=5)
    expected_prompt = sum(
        len(
            tokenizer(
                tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False),
                add_special_tokens=False,
            )["input_ids"]
        )
        for conversation in CONVERSATIONS
    )
    usage = local_teacher.usage
    assert usage.prompt_tokens - before[0] == expected_prompt
    assert 0 < usage.completion_tokens - before[1] <= 5 * len(CONVERSATIONS)
    assert usage.requests - before[2] == len(CONVERSATIONS)
    assert usage.total == usage.prompt_tokens + usage.completion_tokens


def test_it_samples_when_the_temperature_is_above_zero(local_teacher: LocalTeacher) -> None:
    torch.manual_seed(0)
    answers = local_teacher.chat([CONVERSATIONS[0]] * 3, max_new_tokens=8, temperature=1.5)
    assert len(answers) == 3
    assert len(set(answers)) > 1


def test_it_stops_generating_within_a_token_when_told_to(local_teacher: LocalTeacher) -> None:
    """A cancel must not wait for a batch of a small teacher on a CPU, which takes minutes."""
    asked: list[int] = []

    def stop_after_three_tokens() -> bool:
        asked.append(1)
        return len(asked) > 3

    before = local_teacher.usage.completion_tokens
    with pytest.raises(ChatCancelled):
        local_teacher.chat(CONVERSATIONS[:3], max_new_tokens=200, should_stop=stop_after_three_tokens)
    # Asked before the batch and after each token: the batch stopped at the first "yes", three tokens in.
    assert len(asked) == 4
    assert local_teacher.usage.completion_tokens - before <= 3 * 3  # the tokens it spent are counted
    assert local_teacher.chat(CONVERSATIONS[:1], max_new_tokens=4)  # and it answers again afterwards


def test_it_reports_the_share_of_a_local_chat_call_done(local_teacher: LocalTeacher) -> None:
    shares: list[float] = []
    local_teacher.chat(CONVERSATIONS, max_new_tokens=5, on_progress=shares.append)  # batches of 3 and 1
    assert shares == sorted(shares)
    assert 0 < shares[0] < 0.75 / 5 + 1e-9  # the first token of the first batch: 3 of 4 rows, 1 of 5 tokens
    assert any(0.7 < share < 1 for share in shares)  # the second batch under way
    assert shares[-1] == 1.0


def test_it_takes_a_batch_size_from_its_device_unless_the_config_names_one(local_teacher: LocalTeacher) -> None:
    assert default_generation_batch("cpu") == GENERATION_BATCH_CPU == 32
    assert default_generation_batch("cuda") == GENERATION_BATCH_GPU > GENERATION_BATCH_CPU
    assert LocalTeacher(local_teacher.loaded).batch_size == GENERATION_BATCH_CPU
    assert LocalTeacher(local_teacher.loaded, batch_size=5).batch_size == 5
    with pytest.raises(ValueError, match=r"qa\.generation_batch must be 0 \(by device\) or more, not -1"):
        QASettings(generation_batch=-1)


def test_it_refuses_a_prompt_longer_than_the_teacher_context(local_teacher: LocalTeacher) -> None:
    long_question = [{"role": "user", "content": "word " * 2100}]  # tiny models hold 2048 positions
    with pytest.raises(TeacherError, match=r"exceeds the context of the teacher tiny:llama-2l \(2048 tokens\)"):
        local_teacher.chat([long_question], max_new_tokens=8)


# ---------------------------------------------------------------- vocabularies


def _word_level_tokenizer(words: list[str]) -> Any:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(["<unk>", "</s>", *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", name_or_path="word-level"
    )


def test_it_sees_the_same_vocabulary_in_two_loads_of_the_tiny_tokenizer(
    local_teacher: LocalTeacher, model_cache_dir: Path
) -> None:
    other = tiny.load_tokenizer(model_cache_dir, _quiet)
    assert other is not local_teacher.tokenizer
    assert same_vocabulary(local_teacher.tokenizer, other)
    require_same_vocabulary(local_teacher.tokenizer, other)  # no error


def test_it_sees_a_different_vocabulary_and_suggests_recipe_qa(local_teacher: LocalTeacher) -> None:
    word_level = _word_level_tokenizer(["the", "cat", "sat"])
    assert not same_vocabulary(local_teacher.tokenizer, word_level)
    with pytest.raises(TokenizerMismatch) as raised:
        require_same_vocabulary(word_level, local_teacher.tokenizer, student_name=TINY)
    message = str(raised.value)
    assert message.startswith("Recipe kd needs the teacher to share the student's vocabulary")
    assert f"teacher word-level has 5 tokens, student {TINY} has {tiny.SMOLLM2_VOCAB_SIZE}" in message
    assert "Use recipe 'qa'" in message


def test_it_tells_vocabularies_of_equal_size_apart_by_their_ids() -> None:
    first, swapped = _word_level_tokenizer(["the", "cat"]), _word_level_tokenizer(["cat", "the"])
    assert same_vocabulary(first, _word_level_tokenizer(["the", "cat"]))
    assert not same_vocabulary(first, swapped)
    with pytest.raises(TokenizerMismatch, match="both have 4 tokens, but with different ids"):
        require_same_vocabulary(first, swapped)


# ---------------------------------------------------------------- endpoint teacher


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


def _endpoint(stub: OpenAIStub, **overrides: Any) -> EndpointTeacher:
    settings: dict[str, Any] = {"base_url": stub.base_url, "model": stub.model, "timeout_s": 5.0, **overrides}
    return EndpointTeacher(EndpointTeacherConfig(**settings), backoff_base_s=0.001, backoff_max_s=0.01)


def _ask(*questions: str) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": question}] for question in questions]


def test_it_returns_endpoint_answers_in_the_order_of_the_conversations(stub: OpenAIStub) -> None:
    def slow_for_early_questions(messages: list[dict[str, Any]]) -> str:
        number = int(messages[-1]["content"].split()[-1])
        time.sleep(0.03 * (3 - number % 4))  # early questions answer last
        return f"answer {number}"

    stub.reply = slow_for_early_questions
    with _endpoint(stub, max_concurrency=4) as teacher:
        answers = teacher.chat(_ask(*(f"question {number}" for number in range(12))), max_new_tokens=16)
    assert answers == [f"answer {number}" for number in range(12)]
    assert [request.body["max_tokens"] for request in stub.requests] == [16] * 12
    assert all(request.body["temperature"] == 0.0 for request in stub.requests)


def test_it_never_has_more_than_max_concurrency_requests_in_flight(stub: OpenAIStub) -> None:
    stub.delay_s = 0.05
    with _endpoint(stub, max_concurrency=3) as teacher:
        teacher.chat(_ask(*(f"q{number}" for number in range(10))), max_new_tokens=4)
    assert len(stub.requests) == 10
    assert stub.max_in_flight == 3


def test_it_stops_sending_when_told_to_and_keeps_the_replies_that_came_back(stub: OpenAIStub) -> None:
    stub.delay_s = 0.05
    shares: list[float] = []

    def after_two_replies() -> bool:
        return len(shares) > 0 and shares[-1] >= 2 / 10

    with _endpoint(stub, max_concurrency=1) as teacher, pytest.raises(ChatCancelled) as stopped:
        teacher.chat(
            _ask(*(f"q{number}" for number in range(10))),
            max_new_tokens=4,
            should_stop=after_two_replies,
            on_progress=shares.append,
        )
    partial = stopped.value.partial_results
    answered = [reply for reply in partial if reply is not None]
    assert 2 <= len(answered) <= 3  # the one on the wire when the stop came finished
    assert partial[: len(answered)] == [f"echo: q{number}" for number in range(len(answered))]
    assert len(stub.requests) == len(answered)  # nothing more was sent
    assert teacher.usage.requests == len(answered)


def test_it_sizes_an_endpoints_calls_to_keep_its_request_slots_busy(stub: OpenAIStub) -> None:
    with _endpoint(stub, max_concurrency=4) as few, _endpoint(stub, max_concurrency=40) as many:
        assert few.batch_size == ENDPOINT_MIN_BATCH == 32
        assert many.batch_size == 80  # twice the requests in flight
    with EndpointTeacher(EndpointTeacherConfig(base_url=stub.base_url, model=stub.model), batch_size=5) as named:
        assert named.batch_size == 5


def test_it_sends_nothing_when_told_to_stop_before_the_call(stub: OpenAIStub) -> None:
    with _endpoint(stub, max_concurrency=2) as teacher, pytest.raises(ChatCancelled) as stopped:
        teacher.chat(_ask("q0", "q1", "q2"), max_new_tokens=4, should_stop=lambda: True)
    assert stopped.value.partial_results == [None, None, None]
    assert stub.requests == []


def test_it_reports_the_share_of_an_endpoint_call_answered(stub: OpenAIStub) -> None:
    stub.delay_s = 0.02
    shares: list[float] = []
    with _endpoint(stub, max_concurrency=1) as teacher:
        teacher.chat(_ask(*(f"q{number}" for number in range(4))), max_new_tokens=4, on_progress=shares.append)
    assert shares == sorted(shares)
    assert shares[-1] == 1.0
    assert any(0 < share < 1 for share in shares)


def test_it_counts_endpoint_usage_from_the_responses(stub: OpenAIStub) -> None:
    with _endpoint(stub) as teacher:
        teacher.chat(_ask("one two three", "four five"), max_new_tokens=16)
    # The stub counts words: prompts 3 + 2; replies "echo: one two three" (4) and "echo: four five" (3).
    assert (teacher.usage.prompt_tokens, teacher.usage.completion_tokens, teacher.usage.requests) == (5, 7, 2)
    assert teacher.usage.total == 12


def test_it_estimates_usage_when_the_endpoint_sends_none(stub: OpenAIStub) -> None:
    stub.send_usage = False
    with _endpoint(stub) as teacher:
        teacher.chat(_ask("x" * 40), max_new_tokens=64)
    assert teacher.usage.prompt_tokens == 10  # about four characters a token
    assert teacher.usage.completion_tokens == 12  # "echo: " + 40 characters
    assert teacher.usage.requests == 1


def test_it_retries_after_429_and_then_succeeds(stub: OpenAIStub, caplog: pytest.LogCaptureFixture) -> None:
    stub.fail(429, times=2)
    with caplog.at_level(logging.WARNING), _endpoint(stub, max_retries=3) as teacher:
        assert teacher.chat(_ask("hello"), max_new_tokens=8) == ["echo: hello"]
    assert len(stub.requests) == 3
    assert "HTTP 429; retry 1 of 3" in caplog.text
    assert "retry 2 of 3" in caplog.text
    assert teacher.usage.requests == 1  # failed attempts used no tokens


def test_it_honours_retry_after_within_the_backoff_cap(stub: OpenAIStub) -> None:
    stub.fail(429, times=1, retry_after=30)
    started = time.monotonic()
    with _endpoint(stub) as teacher:  # backoff_max_s=0.01 caps the server's 30 s
        assert teacher.chat(_ask("hi"), max_new_tokens=8) == ["echo: hi"]
    assert time.monotonic() - started < 2


def test_it_gives_up_with_a_clear_error_after_max_retries_of_500(stub: OpenAIStub) -> None:
    stub.fail(500, times=10, message="upstream exploded")
    with _endpoint(stub, max_retries=2) as teacher, pytest.raises(TeacherError) as raised:
        teacher.chat(_ask("hello"), max_new_tokens=8)
    assert str(raised.value) == "The endpoint kept failing (HTTP 500: upstream exploded) after 3 attempts."
    assert len(stub.requests) == 3


def test_it_drops_the_rest_of_a_call_when_one_request_fails_for_good(stub: OpenAIStub) -> None:
    stub.fail(500, times=1)
    with _endpoint(stub, max_retries=0, max_concurrency=1) as teacher, pytest.raises(TeacherError, match="HTTP 500"):
        teacher.chat(_ask(*(f"q{number}" for number in range(8))), max_new_tokens=4)
    assert len(stub.requests) == 1


def test_it_says_the_endpoint_refused_the_key_without_showing_it(
    stub: OpenAIStub, caplog: pytest.LogCaptureFixture
) -> None:
    stub.api_key = "sk-the-right-key"  # the stub's 401 echoes the presented key, as some servers do
    teacher = _endpoint(stub, api_key=SECRET)
    with caplog.at_level(logging.DEBUG), pytest.raises(TeacherError) as raised:
        teacher.chat(_ask("hello"), max_new_tokens=8)
    error = raised.value
    assert "The endpoint refused the API key (HTTP 401" in str(error)
    assert "***" in str(error)  # the server's message, with the key blotted out
    for text in (str(error), repr(error), repr(teacher), repr(teacher.config), caplog.text):
        assert SECRET not in text
    assert error.__cause__ is None
    assert error.__context__ is None
    assert len(stub.requests) == 1  # a refused key is not retried
    assert stub.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    teacher.close()


def test_it_sends_the_api_key_as_a_bearer_token(stub: OpenAIStub) -> None:
    stub.api_key = SECRET
    with _endpoint(stub, api_key=SECRET) as teacher:
        assert teacher.chat(_ask("hi"), max_new_tokens=8) == ["echo: hi"]


def test_it_says_the_endpoint_is_too_slow_after_the_timeout(stub: OpenAIStub) -> None:
    stub.delay_s = 2.0
    with _endpoint(stub, timeout_s=0.2, max_retries=1) as teacher, pytest.raises(TeacherError) as raised:
        teacher.chat(_ask("hello"), max_new_tokens=8)
    assert "did not answer within 0.2 s (2 attempts)" in str(raised.value)
    assert len(stub.requests) == 2


def test_it_says_an_unknown_model_is_unknown(stub: OpenAIStub) -> None:
    stub.models = ["stub-model"]
    with _endpoint(stub, model="gpt-nope") as teacher, pytest.raises(TeacherError) as raised:
        teacher.check_connection()
    assert "has no model 'gpt-nope' (HTTP 404" in str(raised.value)


def test_it_says_an_unreachable_endpoint_cannot_be_reached() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = EndpointTeacherConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1)
    with EndpointTeacher(config, backoff_base_s=0.001) as teacher, pytest.raises(TeacherError) as raised:
        teacher.check_connection()
    assert str(raised.value).startswith(f"Could not reach the endpoint at http://127.0.0.1:{port}/v1 (")
    assert "after 2 attempts; check the URL" in str(raised.value)


def test_it_reaches_the_endpoint_at_the_address_it_was_given_without_resolving_the_name(stub: OpenAIStub) -> None:
    port = stub.base_url.split(":")[2].split("/")[0]
    base_url = f"http://teacher.invalid:{port}/v1"  # .invalid never resolves (RFC 6761)

    with _endpoint(stub, base_url=base_url, connect_address="127.0.0.1") as teacher:
        [answer] = teacher.chat(_ask("capital of France"), max_new_tokens=8)

    assert answer == "echo: capital of France"
    assert stub.requests[0].headers["host"] == f"teacher.invalid:{port}"


def test_it_checks_the_connection_with_a_one_token_request(stub: OpenAIStub) -> None:
    with _endpoint(stub) as teacher:
        message = teacher.check_connection()
    assert message.startswith("OK: model stub-model answered in ")
    assert len(stub.requests) == 1
    assert stub.requests[0].body["max_tokens"] == 1


def test_it_switches_to_max_completion_tokens_when_the_server_asks(stub: OpenAIStub) -> None:
    stub.fail(400, message="Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead.")
    with _endpoint(stub, max_retries=0, max_concurrency=1) as teacher:
        assert teacher.chat(_ask("a", "b"), max_new_tokens=8) == ["echo: a", "echo: b"]
    assert len(stub.requests) == 3
    assert stub.requests[0].body["max_tokens"] == 8
    assert [request.body.get("max_completion_tokens") for request in stub.requests[1:]] == [8, 8]
    assert not any("max_tokens" in request.body for request in stub.requests[1:])


def test_it_reports_a_rejected_request_without_retrying(stub: OpenAIStub) -> None:
    stub.fail(400, message="This model's maximum context length is 2048 tokens.")
    with _endpoint(stub) as teacher, pytest.raises(TeacherError, match=r"rejected the request \(HTTP 400: This model"):
        teacher.chat(_ask("a"), max_new_tokens=8)
    assert len(stub.requests) == 1


def test_it_detects_vllm_prompt_logprobs() -> None:
    with OpenAIStub(prompt_logprobs="vllm") as vllm, _endpoint(vllm) as teacher:
        assert teacher.supports_prompt_logprobs(5)
        body = vllm.requests[0].body
    assert vllm.requests[0].path == "/v1/completions"
    assert body["prompt_logprobs"] == 5
    assert body["max_tokens"] == 1
    assert isinstance(body["prompt"], list)
    assert all(isinstance(token, int) for token in body["prompt"])


@pytest.mark.parametrize("mode", ["ignore", "reject"])
def test_it_finds_no_prompt_logprobs_on_other_servers(mode: str) -> None:
    with OpenAIStub(prompt_logprobs=mode) as server, _endpoint(server) as teacher:  # type: ignore[arg-type]
        assert not teacher.supports_prompt_logprobs(5)


def test_it_aligns_prompt_logprobs_so_row_t_predicts_token_t_plus_1() -> None:
    sequences = [[5, 17, 42, 8], [300, 9]]
    with OpenAIStub(prompt_logprobs="vllm") as vllm, _endpoint(vllm) as teacher:
        results = teacher.prompt_topk_logprobs(sequences, top_k=3)
        assert teacher.usage.prompt_tokens == 6
        assert teacher.usage.requests == 2
    assert len(results) == 2
    for ids, (values, indices) in zip(sequences, results, strict=True):
        assert values.shape == indices.shape == (len(ids), 3)
        assert values.dtype == torch.float32
        assert indices.dtype == torch.int64
        for t, token in enumerate(ids):
            # The stub's distribution after a prefix depends on its last token: row t is "after ids[:t + 1]".
            expected = topk_for_prefix(token, 3, vllm.vocab_size)
            assert indices[t].tolist() == [candidate for candidate, _ in expected]
            torch.testing.assert_close(values[t], torch.tensor([value for _, value in expected]))
        assert (values[:, :-1] >= values[:, 1:]).all()  # best first


def test_it_repeats_the_row_before_last_when_the_server_names_sampled_tokens_only_as_text() -> None:
    with OpenAIStub(prompt_logprobs="vllm", tokens_as_ids=False) as vllm, _endpoint(vllm) as teacher:
        [(values, indices)] = teacher.prompt_topk_logprobs([[5, 17, 42]], top_k=3)
    assert indices[:2, 0].tolist() == [6, 18]
    assert torch.equal(indices[2], indices[1])
    assert torch.equal(values[2], values[1])


def test_it_explains_that_kd_needs_prompt_logprobs() -> None:
    with (
        OpenAIStub(prompt_logprobs="ignore") as server,
        _endpoint(server) as teacher,
        pytest.raises(TeacherError, match=r"no usable prompt_logprobs.*Use recipe 'qa'"),
    ):
        teacher.prompt_topk_logprobs([[1, 2, 3]], top_k=2)


def test_it_stops_at_the_spend_cap_and_sends_no_further_requests(stub: OpenAIStub) -> None:
    # Each request: prompt "a b" (2 tokens) + reply "echo: a b" (3 tokens) = 5 tokens.
    with _endpoint(stub, max_tokens_budget=10, max_concurrency=1) as teacher:
        with pytest.raises(TeacherBudgetExhausted) as raised:
            teacher.chat(_ask(*["a b"] * 5), max_new_tokens=8)
        assert len(stub.requests) == 2
        assert raised.value.partial_results == ["echo: a b", "echo: a b", None, None, None]
        assert "10 of 10 tokens" in str(raised.value)
        assert isinstance(raised.value, TeacherError)
        with pytest.raises(TeacherBudgetExhausted):
            teacher.chat(_ask("more"), max_new_tokens=8)
        assert len(stub.requests) == 2
        assert teacher.usage.total == 10


def test_it_makes_an_endpoint_teacher_from_an_endpoint_config(stub: OpenAIStub, catalog: CatalogConfig) -> None:
    config = EndpointTeacherConfig(base_url=stub.base_url, model="stub-model", api_key=SECRET)
    with load_teacher(config, catalog) as teacher:
        assert isinstance(teacher, EndpointTeacher)
        assert teacher.label == f"stub-model @ {stub.base_url}"
        assert SECRET not in repr(teacher)


def test_it_refuses_requests_once_closed(stub: OpenAIStub) -> None:
    teacher = _endpoint(stub)
    teacher.close()
    teacher.close()  # twice is fine
    with pytest.raises(TeacherError, match="was closed"):
        teacher.chat(_ask("hi"), max_new_tokens=4)
    assert not stub.requests
