"""Evaluation metrics against direct computations on a tiny model, and the pure-Python scores."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from workers.ml.catalog import CatalogConfig, LoadedModel, load_model
from workers.ml.distill.config import EvalSettings
from workers.ml.distill.errors import DistillError
from workers.ml.distill.evaluate import (
    QAExample,
    best_and_worst,
    compare_with_teacher,
    gap_closed,
    load_eval_set,
    mean_kl,
    read_eval_set,
    rouge_l,
    score_lm,
    score_qa,
)

TEXTS = [
    "The VPN client must be updated before the end of the month.",
    "Café menus list prices in € — naïve façades, 😀 emoji too.",
    "Short one.",
]


@pytest.fixture(scope="module")
def tiny(model_cache_dir: Path) -> LoadedModel:
    return load_model("tiny:llama-2l", CatalogConfig(cache_dir=model_cache_dir, device="cpu"))


@pytest.fixture(scope="module")
def other_tiny(model_cache_dir: Path) -> LoadedModel:
    # Same architecture and tokenizer, other random weights: a stand-in for a different teacher.
    return load_model("tiny:llama-2l", CatalogConfig(cache_dir=model_cache_dir, device="cpu", seed=1))


def direct_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1, from one unbatched forward pass. (len(ids) - 1,)"""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (T, V)
    return F.log_softmax(logits[:-1].float(), dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_it_matches_a_direct_computation_of_the_nll(tiny: LoadedModel) -> None:
    bos = tiny.tokenizer.bos_token_id
    nll = torch.cat([-direct_logprobs(tiny.model, [bos, *encode(tiny.tokenizer, text)]) for text in TEXTS])

    scores = score_lm(tiny.model, tiny.tokenizer, TEXTS, batch_size=2)

    assert scores.tokens == sum(len(encode(tiny.tokenizer, text)) for text in TEXTS) == nll.numel()
    assert scores.bytes == sum(len(text.encode("utf-8")) for text in TEXTS)
    assert scores.mean_nll == pytest.approx(nll.mean().item(), rel=1e-5)
    assert scores.perplexity == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)


def test_it_computes_bits_per_byte_from_the_total_nll(tiny: LoadedModel) -> None:
    scores = score_lm(tiny.model, tiny.tokenizer, TEXTS)

    assert scores.bits_per_byte == pytest.approx(scores.mean_nll * scores.tokens / math.log(2) / scores.bytes)


def test_it_does_not_depend_on_batching_or_padding(tiny: LoadedModel) -> None:
    one = score_lm(tiny.model, tiny.tokenizer, TEXTS, batch_size=1)
    all_at_once = score_lm(tiny.model, tiny.tokenizer, TEXTS, batch_size=8)

    assert all_at_once.tokens == one.tokens
    assert all_at_once.mean_nll == pytest.approx(one.mean_nll, rel=1e-5)


def test_it_prepends_the_context_without_scoring_it(tiny: LoadedModel) -> None:
    text, context = TEXTS[0], "Earlier in the handbook: all laptops run the VPN client.\n"
    bos = tiny.tokenizer.bos_token_id
    context_ids, text_ids = encode(tiny.tokenizer, context), encode(tiny.tokenizer, text)
    direct = -direct_logprobs(tiny.model, [bos, *context_ids, *text_ids])[-len(text_ids) :]

    alone = score_lm(tiny.model, tiny.tokenizer, [text])
    with_context = score_lm(tiny.model, tiny.tokenizer, [text], contexts=[context])

    assert with_context.tokens == alone.tokens == len(text_ids)
    assert with_context.bytes == alone.bytes == len(text.encode("utf-8"))
    assert with_context.mean_nll == pytest.approx(direct.mean().item(), rel=1e-5)
    assert with_context.mean_nll != pytest.approx(alone.mean_nll, rel=1e-7, abs=0)


def test_it_keeps_the_text_and_cuts_the_context_when_too_long(tiny: LoadedModel) -> None:
    text = TEXTS[0]
    text_ids = encode(tiny.tokenizer, text)
    long_context = "Background. " * 200

    truncated = score_lm(tiny.model, tiny.tokenizer, [text], max_length=8)
    with_context = score_lm(tiny.model, tiny.tokenizer, [text], contexts=[long_context], max_length=64)

    assert truncated.tokens == 7  # BOS + 7 text tokens
    assert 0 < truncated.bytes < len(text.encode("utf-8"))
    assert with_context.tokens == len(text_ids)


def test_it_skips_the_first_token_without_bos_or_context(tiny: LoadedModel) -> None:
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None
    text = TEXTS[0]
    ids = encode(tokenizer, text)
    first_piece = tokenizer.decode(ids[:1])

    scores = score_lm(tiny.model, tokenizer, [text])

    assert scores.tokens == len(ids) - 1
    assert scores.mean_nll == pytest.approx(-direct_logprobs(tiny.model, ids).mean().item(), rel=1e-5)
    assert scores.bytes == len(text.encode("utf-8")) - len(first_piece.encode("utf-8"))
    assert score_lm(tiny.model, tokenizer, [text], contexts=["Context: "]).tokens == len(ids)


def test_it_restores_the_training_mode(tiny: LoadedModel) -> None:
    tiny.model.train()
    try:
        score_lm(tiny.model, tiny.tokenizer, TEXTS[:1])
        assert tiny.model.training
    finally:
        tiny.model.eval()


def test_it_refuses_to_score_nothing(tiny: LoadedModel) -> None:
    with pytest.raises(DistillError):
        score_lm(tiny.model, tiny.tokenizer, ["", ""])
    with pytest.raises(ValueError, match="contexts"):
        score_lm(tiny.model, tiny.tokenizer, TEXTS, contexts=["only one"])


def test_it_measures_zero_kl_between_identical_models(tiny: LoadedModel) -> None:
    assert mean_kl(tiny.model, tiny.model, tiny.tokenizer, TEXTS) == pytest.approx(0.0, abs=1e-6)


def test_it_measures_positive_kl_between_different_models(tiny: LoadedModel, other_tiny: LoadedModel) -> None:
    text = TEXTS[0]
    ids = [tiny.tokenizer.bos_token_id, *encode(tiny.tokenizer, text)]
    with torch.no_grad():
        teacher = F.log_softmax(other_tiny.model(torch.tensor([ids])).logits[0, :-1], dim=-1)  # (n, V)
        student = F.log_softmax(tiny.model(torch.tensor([ids])).logits[0, :-1], dim=-1)  # (n, V)
    direct = (teacher.exp() * (teacher - student)).sum(-1).mean().item()

    measured = mean_kl(other_tiny.model, tiny.model, tiny.tokenizer, [text])

    assert measured > 0
    assert measured == pytest.approx(direct, rel=1e-4)


def test_it_lets_only_the_teacher_see_the_context(tiny: LoadedModel) -> None:
    # Same weights: any divergence comes from the context the teacher sees.
    contexts = ["Earlier: the VPN client changed.\n", None, "Context.\n"]

    assert mean_kl(tiny.model, tiny.model, tiny.tokenizer, TEXTS, teacher_contexts=contexts) > 0


@pytest.mark.parametrize("bos", [True, False])
def test_it_compares_students_with_a_teacher_as_score_lm_and_mean_kl_do_apart(
    tiny: LoadedModel, other_tiny: LoadedModel, bos: bool
) -> None:
    tokenizer = copy.deepcopy(tiny.tokenizer)
    if not bos:  # the teacher, seeing a context, then scores one more leading token than the students
        tokenizer.bos_token = None
    texts = [*TEXTS, "", "A"]
    contexts = ["Earlier: the VPN client changed.\n", None, "Context.\n", "Only a context.", "Some context "]
    students = {"same": other_tiny.model, "other": tiny.model}

    compared = compare_with_teacher(
        other_tiny.model, students, tokenizer, texts, teacher_contexts=contexts, batch_size=2
    )

    teacher = score_lm(other_tiny.model, tokenizer, texts, contexts=contexts, batch_size=2)
    assert compared.teacher.tokens == teacher.tokens
    assert compared.teacher.bytes == teacher.bytes
    assert compared.teacher.mean_nll == pytest.approx(teacher.mean_nll, rel=1e-5)
    for name, model in students.items():
        alone = score_lm(model, tokenizer, texts, batch_size=2)
        assert compared.students[name].tokens == alone.tokens
        assert compared.students[name].bytes == alone.bytes
        assert compared.students[name].mean_nll == pytest.approx(alone.mean_nll, rel=1e-5)
        kl = mean_kl(other_tiny.model, model, tokenizer, texts, teacher_contexts=contexts, batch_size=2)
        assert compared.kl[name] == pytest.approx(kl, rel=1e-5)
    assert 0 < compared.kl["same"] < compared.kl["other"]  # the context alone moves the teacher's same weights


def test_it_refuses_to_compare_on_empty_texts(tiny: LoadedModel) -> None:
    with pytest.raises(DistillError, match="no text to score"):
        compare_with_teacher(tiny.model, {"student": tiny.model}, tiny.tokenizer, ["", ""])


@pytest.mark.parametrize(
    ("base", "expert", "teacher", "expected"),
    [
        (20.0, 15.0, 10.0, 0.5),
        (20.0, 10.0, 10.0, 1.0),
        (20.0, 8.0, 10.0, 1.2),
        (20.0, 25.0, 10.0, -0.5),
        (20.0, 15.0, 20.0, None),
        (20.0, 15.0, 30.0, None),
        (math.inf, 15.0, 10.0, None),
    ],
)
def test_it_computes_the_gap_closed(base: float, expert: float, teacher: float, expected: float | None) -> None:
    result = gap_closed(base, expert, teacher)

    assert result == (None if expected is None else pytest.approx(expected))


def test_it_computes_rouge_l() -> None:
    assert rouge_l("The cat sat on the mat.", "the cat sat on the mat") == 1.0
    assert rouge_l("dogs bark loudly", "the cat sat") == 0.0
    # LCS "the cat on the mat" = 5 of 6 words each way: P = R = F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "the cat" = 2: P = 2/2, R = 2/4, F = 2·1·0.5 / 1.5 = 2/3.
    assert rouge_l("The cat", "the black cat sat") == pytest.approx(2 / 3)
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "something") == 0.0


def test_it_scores_qa_answers_best_first() -> None:
    questions = ["q1", "q2", "q3"]
    references = ["the vpn needs an update", "ask hr", "the office opens at nine"]
    answers = {"q1": "the vpn needs an update", "q2": "no idea", "q3": "the office opens at ten"}

    mean, examples = score_qa(lambda batch: [answers[q] for q in batch], questions, references)

    assert [example.question for example in examples] == ["q1", "q3", "q2"]
    assert [example.score for example in examples] == [1.0, pytest.approx(0.8), 0.0]
    assert mean == pytest.approx(0.6)
    with pytest.raises(ValueError, match="answers"):
        score_qa(lambda batch: batch[:1], questions, references)


def test_it_picks_the_best_and_the_worst_without_overlap() -> None:
    examples = [QAExample(f"q{i}", "r", "a", i / 10) for i in range(7)]

    best, worst = best_and_worst(examples, n=3)
    few_best, few_worst = best_and_worst(examples[:4], n=3)

    assert [example.question for example in best] == ["q6", "q5", "q4"]
    assert [example.question for example in worst] == ["q0", "q1", "q2"]
    assert [example.question for example in few_best] == ["q3", "q2", "q1"]
    assert [example.question for example in few_worst] == ["q0"]


def test_it_loads_an_eval_set_skipping_broken_lines(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    lines = [
        json.dumps({"question": "Who approves leave?", "answer": "Your manager."}),
        "{not json",
        json.dumps({"question": "Missing answer"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"question": "  ", "answer": "blank question"}),
        json.dumps({"question": "Where is the VPN guide?", "answer": " On the intranet. ", "extra": 1}),
        json.dumps({"question": 3, "answer": "not a string"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    pairs = load_eval_set(path)

    assert pairs == [("Who approves leave?", "Your manager."), ("Where is the VPN guide?", "On the intranet.")]
    assert read_eval_set(path).skipped == 5


def test_it_refuses_an_eval_set_without_usable_lines(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text('{"q": "x"}\nnonsense\n', encoding="utf-8")

    with pytest.raises(DistillError, match=r"no usable line.*2 malformed lines"):
        load_eval_set(path)
    with pytest.raises(DistillError, match="could not be read"):
        load_eval_set(tmp_path / "missing.jsonl")


def test_it_refuses_evaluation_settings_that_leave_nothing_to_score_before_anything_runs() -> None:
    with pytest.raises(ValueError, match=r"evaluation\.max_heldout_chunks must be 1 or more, not 0"):
        EvalSettings(max_heldout_chunks=0)
    with pytest.raises(ValueError, match=r"evaluation\.max_eval_questions must be 0 \(no QA scoring\) or more"):
        EvalSettings(max_eval_questions=-1)
    assert EvalSettings(max_heldout_chunks=1, max_eval_questions=0).max_eval_questions == 0
