"""Recipe qa: filtering teacher pairs, prompt masking, answer KD, and distill() end to end with scripted teachers."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.workers.ml.distill.conftest import NAMES, toy_documents
from tests.workers.ml.distill.openai_stub import Messages, OpenAIStub
from workers.ml.catalog import LoadedModel
from workers.ml.device import THREAD_ENV_VARS
from workers.ml.distill.config import (
    DistillConfig,
    EndpointTeacherConfig,
    EvalSettings,
    KDSettings,
    LocalTeacherConfig,
    LoraSettings,
    QASettings,
    TeacherConfig,
    TrainingSettings,
)
from workers.ml.distill.corpus import Chunk, CorpusSnapshot, split_by_document
from workers.ml.distill.errors import NoTrainingData
from workers.ml.distill.losses import IGNORE_INDEX
from workers.ml.distill.progress import Progress
from workers.ml.distill.qa import QADataPlan, aligned_teacher_logits, build_qa_data, qa_loss, training_target
from workers.ml.distill.qa_generate import (
    DROP_REASONS,
    HOPELESS_AFTER_CHUNKS,
    GenerationStats,
    QARecord,
    TokenTarget,
    _call_size,
    _PairFilter,
    _planned_chunks,
    drop_summary,
    generation_order,
)
from workers.ml.distill.qa_parse import (
    UNGRADED_MIN_GROUNDING,
    ParsedPair,
    parse_pairs,
    strip_reasoning,
)
from workers.ml.distill.run import distill
from workers.ml.distill.teachers import LocalTeacher

STUDENT = "tiny:llama-2l"
TRAIN_CHUNKS = 27  # toy_corpus: 9 training documents of 3 chunks
BATCH = 8  # qa.generation_batch where a test counts the teacher's calls: less than the toy corpus


def qa_config(tmp_path: Path, model_cache_dir: Path, teacher: TeacherConfig, **overrides: Any) -> DistillConfig:
    settings: dict[str, Any] = {
        "qa": QASettings(pairs_per_chunk=2, max_new_tokens=48, reward_threshold=3),
        "evaluation": EvalSettings(max_heldout_chunks=2, max_eval_questions=4),
        **overrides,
    }
    return DistillConfig(
        output_dir=tmp_path / "expert",
        model_cache_dir=model_cache_dir,
        recipe="qa",
        student=STUDENT,
        teacher=teacher,
        training=TrainingSettings(
            epochs=2,
            seq_len=128,
            micro_batch_size=2,
            grad_accum=2,
            learning_rate=5e-3,
            checkpoint_every=0,
            device="cpu",
        ),
        lora=LoraSettings(rank=4, alpha=8),
        signature_centroids=2,
        **settings,
    )


# ---------------------------------------------------------------- a scripted teacher for the toy corpus


def _document(content: str) -> str:
    match = re.search(r"<document>\n(.*?)\n</document>", content, re.S)
    return match.group(1) if match else ""


def _name(text: str) -> str:
    match = re.search(r"the (\w+) code", text)
    return match.group(1) if match else "unknown"


def toy_pairs(name: str) -> list[dict[str, str]]:
    return [
        {"question": f"What is the {name} code?", "answer": f"The {name} code is {name}."},
        {"question": f"What is the {name} value?", "answer": f"The {name} value is {name}."},
    ]


def scripted_reply(grade: Callable[[str], str] = lambda question: "5") -> Callable[[Messages], str]:
    """Good pairs for generation prompts (JSON, or Q:/A: lines when asked for those), `grade(question)` for
    grading prompts, the chunk's fact for reference prompts (the teacher sees the chunk), as judge 5 for an
    answer equal to the reference and 1 otherwise, and "I do not know." for blind questions."""

    def reply(messages: Messages) -> str:
        content = str(messages[-1]["content"])
        name = _name(_document(content))
        if "Reply with JSON only" in content:
            return json.dumps({"pairs": toy_pairs(name)})
        if "Use this format:\nQ: <question>" in content:  # the simple format small local teachers are given
            return "\n".join(f"Q: {pair['question']}\nA: {pair['answer']}" for pair in toy_pairs(name))
        if "Grade this question–answer pair" in content:
            question = re.search(r"Question: (.*)\n", content)
            return grade(question.group(1) if question else "")
        if "Answer this question using the excerpt" in content:
            return f"The {name} code is {name}."
        if "Grade the candidate answer" in content:
            answer = re.search(r"^Candidate answer: (.*)$", content, re.M)
            reference = re.search(r"^Reference answer: (.*)$", content, re.M)
            return "5" if answer and reference and answer.group(1) == reference.group(1) else "Grade: 1"
        return "I do not know."

    return reply


def stub_teacher(stub: OpenAIStub, **settings: Any) -> EndpointTeacherConfig:
    return EndpointTeacherConfig(base_url=stub.base_url, model=stub.model, **settings)


def one_request_at_a_time(
    tmp_path: Path, model_cache_dir: Path, stub: OpenAIStub, evaluation: EvalSettings
) -> DistillConfig:
    """qa through `stub`, one request at a time and BATCH chunks a teacher call: a cancel lands mid-call."""
    teacher = stub_teacher(stub, max_concurrency=1)
    return qa_config(tmp_path, model_cache_dir, teacher, qa=QASettings(generation_batch=BATCH), evaluation=evaluation)


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lora_b_weights(expert_dir: Path) -> dict[str, torch.Tensor]:
    return {
        name: tensor
        for name, tensor in load_file(str(expert_dir / "adapter_model.safetensors")).items()
        if "lora_B" in name
    }


# ---------------------------------------------------------------- filters


def test_it_drops_a_pair_whose_answer_is_only_a_question_and_keeps_answers_that_ask_one() -> None:
    pairs = [
        ParsedPair("What is the .env file?", "2. What is the purpose of the `python3 -c` command?"),
        ParsedPair("What is X?", "How do I set X?"),
        ParsedPair("Is X safe?", "Is it? Yes: X checks its input."),
        ParsedPair("Why X?", "Because of Y. Why not?"),
    ]
    pair_filter = _PairFilter()
    assert [pair_filter.reason(pair) for pair in pairs] == ["no_answer", "no_answer", None, None]
    stats = GenerationStats(dropped={**dict.fromkeys(DROP_REASONS, 0), "no_answer": 2})
    assert "2 whose answer was only a question" in drop_summary(stats)


def test_it_drops_ungrounded_answers_when_asked_and_still_takes_their_question_from_a_later_chunk() -> None:
    chunk = "the alpha code is alpha and the alpha value is alpha."
    pair_filter = _PairFilter(min_grounding=0.4)
    assert pair_filter.reason(ParsedPair("What is the alpha code?", "It is set by the admin console."), chunk) == (
        "ungrounded"
    )
    assert pair_filter.reason(ParsedPair("What is the alpha code?", "The alpha code is alpha."), chunk) is None
    assert pair_filter.reason(ParsedPair("What is the alpha code?", "Alpha."), chunk) == "duplicate"
    assert _PairFilter().reason(ParsedPair("Who?", "Someone else entirely."), chunk) is None  # 0: not checked


def test_it_keeps_reasoning_apart_from_the_final_answer() -> None:
    as_field = parse_pairs('{"pairs": [{"question": "Q?", "reasoning": "Step 1. Step 2.", "answer": "42."}]}')
    inline = parse_pairs("Q: Q?\nA: <think>Step 1.</think> 42.")
    as_line = parse_pairs("Q: Q?\nR: Step 1.\nA: 42.")
    assert as_field == [ParsedPair("Q?", "42.", "Step 1. Step 2.")]
    assert inline == [ParsedPair("Q?", "42.", "Step 1.")]
    assert as_line == [ParsedPair("Q?", "42.", "Step 1.")]
    target = training_target("42.", "Step 1.")
    assert target == "<think>\nStep 1.\n</think>\n\n42."
    assert strip_reasoning(target) == "42."


# ---------------------------------------------------------------- training data and loss


def toy_records(chunks: tuple[Chunk, ...], count: int) -> list[QARecord]:
    records = []
    for index, chunk in enumerate(chunks[:count]):
        pair = toy_pairs(_name(chunk.text))[index % 2]
        records.append(QARecord(index, chunk.doc_id, chunk.position, pair["question"], pair["answer"], kept=True))
    return records


def test_it_masks_the_prompt_and_trains_only_on_the_answer_tokens(
    tiny_student: LoadedModel, toy_corpus: CorpusSnapshot
) -> None:
    tokenizer = tiny_student.tokenizer
    records = toy_records(toy_corpus.train, 6)
    data = build_qa_data(records, toy_corpus.train, tokenizer, seq_len=128)
    plan = QADataPlan(data, TrainingSettings(seq_len=128, micro_batch_size=2, grad_accum=1, device="cpu"), 2)
    rows = plan.epoch(0)[0]
    batch = plan.collate(rows)
    assert batch.label_count == plan.labels(rows) > 0
    assert len(batch.placements) > 1  # several pairs packed in a row
    for placement in batch.placements:
        record, prompt = data.records[placement.segment], data.prompt_lengths[placement.segment]
        start, end = placement.start, placement.start + placement.length
        labels, tokens = batch.labels[placement.row], batch.input_ids[placement.row]
        prompt_text = tokenizer.decode(tokens[start : start + prompt])
        assert prompt_text.endswith(f"<|im_start|>user\n{record.question}<|im_end|>\n<|im_start|>assistant\n")
        assert (labels[start : start + prompt - 1] == IGNORE_INDEX).all()  # system and user turn: no loss
        answer_labels = labels[start + prompt - 1 : end - 1]
        assert (answer_labels != IGNORE_INDEX).all()
        assert tokenizer.decode(answer_labels) == f"{record.answer}<|im_end|>"
        assert labels[end - 1] == IGNORE_INDEX  # nothing predicted across the segment boundary


def test_it_gives_the_student_the_teachers_logits_for_the_same_answer_tokens_seen_with_the_chunk(
    tiny_student: LoadedModel, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot
) -> None:
    records = toy_records(toy_corpus.train, 4)
    data = build_qa_data(
        records, toy_corpus.train, tiny_student.tokenizer, seq_len=128, teacher_tokenizer=tiny_teacher.tokenizer
    )
    plan = QADataPlan(data, TrainingSettings(seq_len=128, micro_batch_size=2, grad_accum=1, device="cpu"), 2)
    batch = plan.collate(plan.epoch(0)[0])
    aligned = aligned_teacher_logits(tiny_teacher.model, data, batch, pad_token_id=2)
    assert data.teacher_segments is not None
    for placement in batch.placements:
        segment = data.teacher_segments[placement.segment]
        prompt = data.prompt_lengths[placement.segment]
        answer_length = placement.length - prompt
        teacher_text = tiny_teacher.tokenizer.decode(list(segment.tokens))
        assert toy_corpus.train[data.records[placement.segment].chunk].text in teacher_text  # it sees the chunk
        assert segment.tokens[-answer_length:] == data.segments[placement.segment][prompt:]  # the same answer
        with torch.no_grad():
            alone = tiny_teacher.model(input_ids=torch.tensor([segment.tokens])).logits[0]
        begin = placement.start + prompt - 1
        torch.testing.assert_close(
            aligned[placement.row, begin : begin + answer_length],
            alone[segment.target_offset : segment.target_offset + answer_length],
            rtol=1e-4,
            atol=1e-4,
        )
    with torch.no_grad():
        parts = qa_loss(data, kd=KDSettings(alpha=0.5), teacher_model=tiny_teacher.model, pad_token_id=2)(
            tiny_student.model, batch
        )
    assert parts.positions == batch.label_count
    assert float(parts.divergence) > 0


# ---------------------------------------------------------------- distill() end to end


def test_it_distils_an_expert_from_an_openai_compatible_teacher(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot, tiny_student: LoadedModel
) -> None:
    reports: list[Progress] = []
    with OpenAIStub(reply=scripted_reply()) as stub:
        config = qa_config(tmp_path, model_cache_dir, stub_teacher(stub))
        result = distill(config, toy_corpus, on_progress=reports.append)
    out = result.output_dir
    assert result.status == "succeeded"
    records = records_of(out / "qa_data.jsonl")
    distinct = 2 * len({_name(chunk.text) for chunk in toy_corpus.train})
    assert len(records) == 2 * TRAIN_CHUNKS
    assert sum(record["kept"] for record in records) == distinct  # every other pair repeats a question
    assert all(record["grade"] == 5 for record in records if record["kept"])
    assert {record["drop_reason"] for record in records if not record["kept"]} == {"duplicate"}
    assert {(record["doc_id"], record["position"]) for record in records} == {
        (chunk.doc_id, chunk.position) for chunk in toy_corpus.train
    }
    assert any(b.abs().sum() > 0 for b in lora_b_weights(out).values())  # LoRA B starts at zero: it was trained
    # The pairs as trained: the system and user turns carry no label.
    kept = [QARecord.from_json(record) for record in records if record["kept"]]
    data = build_qa_data(kept, toy_corpus.train, tiny_student.tokenizer, config.training.seq_len)
    plan = QADataPlan(data, config.training, pad_token_id=2)
    batch = plan.collate(plan.epoch(0)[0])
    for placement in batch.placements:
        prompt = data.prompt_lengths[placement.segment]
        assert (batch.labels[placement.row, placement.start : placement.start + prompt - 1] == IGNORE_INDEX).all()
    assert batch.label_count == plan.labels(plan.epoch(0)[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["qa_data"]["pairs_kept"] == distinct
    assert metrics["qa_data"]["dropped"]["duplicate"] == 2 * TRAIN_CHUNKS - distinct
    assert metrics["qa_data"]["budget_exhausted"] is False
    assert set(metrics["qa"]["rouge_l"]) == {"base", "expert", "teacher_blind"}
    assert metrics["qa"]["rouge_l"]["teacher_blind"] == 0.0  # "I do not know." shares no word with a reference
    assert metrics["qa"]["source"].startswith("questions the teacher wrote from 2 held-out chunk(s)")
    assert 0 < len(metrics["qa"]["examples"]) <= 4
    # An endpoint teacher judges each answer against its reference: no blind answer here matches one.
    judge = metrics["qa"]["judge"]
    assert judge["judge"] == f"{stub.model} @ {stub.base_url}"
    assert judge["mean_grade"] == {"base": 1.0, "expert": 1.0, "teacher_blind": 1.0}
    assert judge["graded"] == {name: metrics["qa_evaluation"]["heldout"]["questions"] for name in judge["graded"]}
    assert all(example["judge_grade"] == 1 for example in metrics["qa"]["examples"])
    assert metrics["qa_evaluation"]["teacher_judge"]["run"] is True
    generating = [report for report in reports if report.stage == "generating"]
    # Said before the first teacher call, then as the replies come back (one call: the corpus is under a batch).
    assert (generating[0].step, generating[0].total_steps) == (0, TRAIN_CHUNKS)
    steps = [report.step for report in generating]
    assert steps == sorted(steps)
    assert steps[-1] == TRAIN_CHUNKS
    card = (out / "README.md").read_text()
    assert "Question answering" in card
    # Where the time went, for the card and for the web app's estimates.
    assert list(metrics["stage_seconds"]) == ["loading", "generating", "training", "evaluating"]
    assert all(seconds >= 0 for seconds in metrics["stage_seconds"].values())
    assert "Time: loading " in card
    assert "| teacher_blind | 0.000 | 1.00 |" in card
    assert f"qa pairs kept: {distinct}" in card


def test_it_drops_pairs_the_teacher_grades_below_the_threshold_and_counts_why(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    def grade(question: str) -> str:
        if "omega" in question or "sigma" in question:
            return "It is a fine question."  # no number: ungraded
        return "Score: 4/5" if "code" in question else "2"

    with OpenAIStub(reply=scripted_reply(grade)) as stub:
        result = distill(qa_config(tmp_path, model_cache_dir, stub_teacher(stub)), toy_corpus)
    records = records_of(result.output_dir / "qa_data.jsonl")
    graded = [record for record in records if record["drop_reason"] != "duplicate"]
    names = {_name(chunk.text) for chunk in toy_corpus.train}
    ungraded_names = names & {"omega", "sigma"}
    assert {record["question"] for record in records if record["kept"]} == {
        f"What is the {name} code?" for name in names - ungraded_names
    }
    dropped = result.metrics["qa_data"]["dropped"]
    assert dropped["below_threshold"] == len(names - ungraded_names)
    assert dropped["ungraded"] == 2 * len(ungraded_names)
    assert dropped["duplicate"] == 2 * TRAIN_CHUNKS - len(graded)
    assert dropped["unparseable"] == dropped["empty"] == 0
    assert all(record["grade"] == 2 for record in records if record["drop_reason"] == "below_threshold")
    assert all(record["grade"] is None for record in records if record["drop_reason"] == "ungraded")
    assert result.metrics["qa_data"]["grades"] == {"4": len(names - ungraded_names), "2": len(names - ungraded_names)}
    # Self-reward is auto by default: an endpoint teacher grades, and the card says why.
    assert result.metrics["qa_data"]["self_reward_why"] == "auto: an endpoint teacher grades its pairs"
    card = (result.output_dir / "README.md").read_text()
    assert "qa self reward: on (auto: an endpoint teacher grades its pairs)" in card


def test_it_trains_nothing_when_a_tiny_local_teacher_writes_nothing_parseable(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    config = qa_config(
        tmp_path,
        model_cache_dir,
        LocalTeacherConfig(spec="tiny:llama-2l"),
        qa=QASettings(pairs_per_chunk=2, max_new_tokens=12),
    )
    with pytest.raises(NoTrainingData) as raised:
        distill(config, toy_corpus)
    message = str(raised.value)
    assert "asked for 54 pairs from 27 chunks, 54 were dropped and none kept" in message
    assert "27 of 27 teacher replies unparseable (54 pairs)" in message
    assert "larger teacher" in message
    assert "\n" not in message
    assert "Traceback" not in message
    assert not (config.output_dir / "adapter_model.safetensors").exists()
    records = records_of(config.work / "qa_data.jsonl")  # what the teacher wrote is kept for inspection
    assert len(records) == 27
    assert all(record["drop_reason"] == "unparseable" for record in records)


def test_it_gives_up_early_when_the_teachers_first_chunks_give_no_usable_pair(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    corpus = split_by_document(toy_documents(20), heldout_fraction=0.1, seed=0, name="toy-20")
    assert len(corpus.train) > HOPELESS_AFTER_CHUNKS + BATCH
    generation_prompts: list[str] = []

    def useless(messages: Messages) -> str:
        generation_prompts.append(str(messages[-1]["content"]))
        return "I am not sure what you mean."

    with OpenAIStub(reply=useless) as stub:
        config = qa_config(tmp_path, model_cache_dir, stub_teacher(stub), qa=QASettings(generation_batch=BATCH))
        with pytest.raises(NoTrainingData) as raised:
            distill(config, corpus)
    assert len(generation_prompts) == HOPELESS_AFTER_CHUNKS  # the rest of the corpus was never sent
    message = str(raised.value)
    assert f"asked for {2 * HOPELESS_AFTER_CHUNKS} pairs from {HOPELESS_AFTER_CHUNKS} chunks" in message
    assert (
        f"Generation stopped after the first {HOPELESS_AFTER_CHUNKS} of {len(corpus.train)} chunks, as none of "
        "them gave a usable pair." in message
    )
    assert "larger teacher" in message


def test_it_drops_answers_their_chunk_does_not_hold_when_the_teacher_does_not_grade(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    scripted = scripted_reply()

    def half_invented(messages: Messages) -> str:
        content = str(messages[-1]["content"])
        if "Reply with JSON only" not in content:
            return scripted(messages)
        name = _name(_document(content))
        pairs = [
            {"question": f"What is the {name} code?", "answer": f"The {name} code is {name}."},
            {"question": f"Who keeps the {name} key?", "answer": "The night porter keeps it downstairs."},
        ]
        return json.dumps({"pairs": pairs})

    with OpenAIStub(reply=half_invented) as stub:
        config = qa_config(tmp_path, model_cache_dir, stub_teacher(stub), qa=QASettings(self_reward="off"))
        result = distill(config, toy_corpus)
    stats = result.metrics["qa_data"]
    names = {_name(chunk.text) for chunk in toy_corpus.train}
    assert stats["min_answer_grounding"] == UNGRADED_MIN_GROUNDING
    assert stats["dropped"]["ungrounded"] == TRAIN_CHUNKS  # every invented answer, duplicates of it included
    assert stats["pairs_kept"] == len(names)
    kept = {record["question"] for record in records_of(result.output_dir / "qa_data.jsonl") if record["kept"]}
    assert kept == {f"What is the {name} code?" for name in names}
    assert (
        "qa answer grounding: at least 40% of an answer's words in its chunk"
        in (result.output_dir / "README.md").read_text()
    )
    # Evaluation uses only the questions the teacher writes (it writes the references again, seeing the chunk):
    # its questions are kept whatever their first answers were.
    asked = [example["question"] for example in result.metrics["qa"]["examples"]]
    assert any(question.startswith("Who keeps the") for question in asked), asked


def test_it_stops_at_the_teachers_spend_cap_and_trains_on_what_was_kept(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    with OpenAIStub(reply=scripted_reply()) as stub:
        # One request at a time: the first one is sent (0 tokens used), every later one finds the budget spent.
        teacher = stub_teacher(stub, max_tokens_budget=1, max_concurrency=1)
        config = qa_config(tmp_path, model_cache_dir, teacher, qa=QASettings(pairs_per_chunk=2, self_reward="off"))
        result = distill(config, toy_corpus)
        requests = len(stub.requests)
    assert result.status == "succeeded"
    assert requests == 1
    stats = result.metrics["qa_data"]
    assert stats["budget_exhausted"] is True
    assert (stats["chunks_done"], stats["pairs_kept"]) == (1, 2)
    assert result.train_tokens > 0
    assert len(records_of(result.output_dir / "qa_data.jsonl")) == 2
    assert result.metrics["qa"] is None
    assert "budget" in result.metrics["qa_evaluation"]["heldout"]["skipped"]
    assert "qa teacher budget exhausted: yes" in (result.output_dir / "README.md").read_text()


def test_it_asks_the_teacher_only_about_the_chunks_a_token_budget_trains_on(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    asked = itertools.count()
    reply = scripted_reply()

    def unique_pairs(messages: Messages) -> str:
        # A new question per request, so no pair is dropped as a duplicate and every chunk adds tokens.
        if "Reply with JSON only" in str(messages[-1]["content"]):
            number = next(asked)
            return json.dumps({"pairs": [{"question": f"What is fact {number}?", "answer": f"Fact {number}."}]})
        return reply(messages)

    def run(token_budget: int, reports: list[Progress]) -> tuple[Any, list[int]]:
        settings = QASettings(pairs_per_chunk=1, generation_batch=BATCH)
        config = qa_config(tmp_path, model_cache_dir, stub_teacher(stub, max_concurrency=1), qa=settings)
        config = replace(config, training=replace(config.training, token_budget=token_budget))
        result = distill(config, toy_corpus, on_progress=reports.append)
        chunks = [record["chunk"] for record in records_of(config.work / "qa_data.jsonl")]
        return result, chunks

    small_reports: list[Progress] = []
    large_reports: list[Progress] = []
    with OpenAIStub(reply=unique_pairs) as stub:
        small, small_chunks = run(100, small_reports)
        small_card = (small.output_dir / "README.md").read_text()
        asked_for_small = next(asked)
        large, large_chunks = run(500, large_reports)
        asked_for_large = next(asked) - asked_for_small - 1
    order = generation_order(TRAIN_CHUNKS, seed=0)
    assert order != sorted(order)  # a shuffle: any prefix samples documents from the whole corpus
    # A 100-token budget needs a few pairs: one batch of chunks, not the corpus.
    assert small.status == "succeeded"
    assert small_chunks == order[:BATCH]
    stats = small.metrics["qa_data"]
    assert stats["chunks_done"] == BATCH < stats["chunks"] == TRAIN_CHUNKS
    assert stats["target_tokens"] == 100 <= stats["kept_tokens"]
    assert 100 <= small.train_tokens <= stats["kept_tokens"]
    generating = [report for report in small_reports if report.stage == "generating"]
    assert (generating[-1].step, generating[-1].total_steps) == (BATCH, BATCH)
    assert (generating[-1].message or "").endswith(
        f"{stats['pairs_kept']} kept, 0 dropped, {stats['kept_tokens']}/100 tokens"
    )
    # The bar moved while the call was out, as the endpoint's replies came back.
    steps = [report.step for report in generating]
    assert steps == sorted(steps)
    assert any(0 < step < BATCH for step in steps)
    assert f"qa chunks generated from: {BATCH} of {TRAIN_CHUNKS}" in small_card
    assert f"qa training tokens written: {stats['kept_tokens']} (token budget 100)" in small_card
    # A larger budget later continues the same order: the chunks already asked about are not asked again.
    assert large.status == "succeeded"
    assert large_chunks == order[: len(large_chunks)]
    assert BATCH < len(large_chunks) < TRAIN_CHUNKS
    assert large.metrics["qa_data"]["kept_tokens"] >= 500
    heldout = 2  # evaluation: the teacher writes questions from max_heldout_chunks held-out chunks each run
    assert (asked_for_small, asked_for_large) == (BATCH + heldout, len(large_chunks) - BATCH + heldout)


def test_it_plans_the_chunks_a_token_budget_still_needs() -> None:
    def planned(done: int, kept_tokens: int, target: int | None = 1500, chunks: int = 70) -> int:
        stats = GenerationStats(chunks=chunks, chunks_done=done, kept_tokens=kept_tokens)
        return _planned_chunks(stats, None if target is None else TokenTarget(target, lambda record: 0))

    # The figures of a real SmolLM2 run: 458 tokens from 8 chunks → 1,042 more at 57.25 a chunk → 19 chunks.
    assert planned(8, 458) == 8 + 19
    assert planned(24, 1474) == 25  # one chunk's worth is missing
    assert planned(64, 500) == 70  # never past the corpus
    assert planned(8, 0) == 70  # nothing kept yet: no rate to plan from
    assert planned(8, 458, target=None) == 70


def test_it_asks_the_teacher_about_a_batch_of_chunks_or_fewer_when_a_token_budget_is_nearly_met() -> None:
    def call_size(done: int, kept_tokens: int, target: int | None = 1500, chunks: int = 70) -> int:
        stats = GenerationStats(chunks=chunks, chunks_done=done, kept_tokens=kept_tokens)
        return _call_size(stats, None if target is None else TokenTarget(target, lambda record: 0), 32)

    assert call_size(0, 0) == 32  # no rate yet: a whole batch
    assert call_size(8, 458, target=None) == 32
    assert call_size(8, 458) == 24  # 19 chunks still needed, with a margin of a quarter
    assert call_size(24, 1474) == 2  # one chunk's worth, and one more
    assert call_size(8, 100, target=100_000) == 32  # never more than a batch
    assert call_size(60, 500, target=100_000) == 10  # never past the corpus


def test_it_keeps_the_replies_that_came_back_when_cancelled_mid_call_and_resumes_after_them(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    generation_prompts: list[str] = []
    reply = scripted_reply()

    def counting(messages: Messages) -> str:
        if "Reply with JSON only" in str(messages[-1]["content"]):
            generation_prompts.append(str(messages[-1]["content"]))
        return reply(messages)

    def stop_at_the_first_reply(progress: Progress) -> None:
        if progress.stage == "generating" and progress.step > 0:
            stopping.append(True)

    stopping: list[bool] = []
    with OpenAIStub(reply=counting) as stub:
        config = one_request_at_a_time(tmp_path, model_cache_dir, stub, EvalSettings(max_heldout_chunks=1))
        cancelled = distill(config, toy_corpus, on_progress=stop_at_the_first_reply, should_stop=lambda: bool(stopping))
        assert cancelled.status == "cancelled"
        asked_before_the_cancel = len(generation_prompts)
        # The call stopped sending: the endpoint answered fewer than a batch, and every reply was kept.
        assert 1 <= asked_before_the_cancel < BATCH
        kept = records_of(config.work / "qa_data.jsonl")
        assert len(kept) == 2 * asked_before_the_cancel
        finished = distill(config, toy_corpus)
    assert finished.status == "succeeded"
    assert len(generation_prompts) == TRAIN_CHUNKS + 1  # the other chunks, then one held-out chunk
    assert len(records_of(finished.output_dir / "qa_data.jsonl")) == 2 * TRAIN_CHUNKS


def test_it_stops_grading_when_cancelled_and_grades_the_pending_pairs_first_when_resumed(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    generation_prompts: list[str] = []
    graded: list[list[str]] = [[], []]  # questions sent to the grader, by run
    run = 0
    reply = scripted_reply()

    def counting(messages: Messages) -> str:
        content = str(messages[-1]["content"])
        if "Reply with JSON only" in content:
            generation_prompts.append(content)
        question = re.search(r"Question: (.*)\n", content)
        if "Grade this question–answer pair" in content and question:
            graded[run].append(question.group(1))
            if run == 0:
                stopping.append(True)
                time.sleep(0.2)  # a grader slower than the cancel poll, so the stop lands mid-call
        return reply(messages)

    messages: list[str] = []
    stopping: list[bool] = []
    with OpenAIStub(reply=counting) as stub:
        # No held-out questions: every grade is training's.
        config = one_request_at_a_time(tmp_path, model_cache_dir, stub, EvalSettings(max_eval_questions=0))
        cancelled = distill(
            config,
            toy_corpus,
            on_progress=lambda progress: messages.append(progress.message),
            should_stop=lambda: bool(stopping),
        )
        assert cancelled.status == "cancelled"
        assert len(generation_prompts) == BATCH  # the first call's pairs were all written
        assert any(re.search(r"\(grading \d+ pairs\)", message) for message in messages)
        records = records_of(config.work / "qa_data.jsonl")
        assert len(records) == 2 * BATCH  # nothing generated is lost
        pending = [r["question"] for r in records if r["drop_reason"] is None and r["grade"] is None]
        came_back = [r["question"] for r in records if r["grade"] is not None]
        assert sorted(came_back) == sorted(graded[0])  # every grade that came back is kept
        assert pending  # the grader was stopped mid-call: these pairs have no grade yet
        assert not any(record["kept"] for record in records if record["question"] in pending)

        run = 1
        finished = distill(config, toy_corpus)
    assert finished.status == "succeeded"
    assert sorted(graded[1][: len(pending)]) == sorted(pending)  # the pending pairs are graded first
    assert len(generation_prompts) == TRAIN_CHUNKS  # no chunk was asked about twice
    names = {_name(chunk.text) for chunk in toy_corpus.train}
    questions = {pair["question"] for name in names for pair in toy_pairs(name)}
    assert sorted(graded[0] + graded[1]) == sorted(questions)  # each distinct pair graded once
    records = records_of(finished.output_dir / "qa_data.jsonl")
    assert len(records) == 2 * TRAIN_CHUNKS
    assert all(record["kept"] or record["drop_reason"] for record in records)
    assert {record["question"] for record in records if record["kept"]} == questions
    assert finished.metrics["qa_data"]["pairs_kept"] == len(questions)


def test_it_adds_answer_kd_from_a_local_teacher_that_is_the_students_own_base(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny random model writes no pairs, so its chat is scripted; its logits are its own."""
    reply = scripted_reply()

    def scripted_chat(self: LocalTeacher, conversations: Any, *, max_new_tokens: int, **_: Any) -> Any:
        return [reply(list(conversation)) for conversation in conversations]

    monkeypatch.setattr(LocalTeacher, "chat", scripted_chat)
    config = qa_config(tmp_path, model_cache_dir, LocalTeacherConfig(spec=STUDENT), kd=KDSettings(alpha=0.5))
    result = distill(config, toy_corpus)
    assert result.status == "succeeded"
    log = records_of(result.output_dir / "training_log.jsonl")
    assert all(entry["divergence"] > 0 for entry in log)  # the teacher saw the chunk, the student did not
    assert result.metrics["qa"]["rouge_l"]["teacher_blind"] == result.metrics["qa"]["rouge_l"]["base"]
    assert result.metrics["kl_to_teacher"]["before"] is not None
    # A tiny local teacher does not judge under auto, and the card says why.
    assert result.metrics["qa"]["judge"] is None
    decision = result.metrics["qa_evaluation"]["teacher_judge"]
    assert decision["run"] is False
    assert "under the 1B a judge needs" in decision["why"]
    assert "Teacher as judge: not run (auto: the local teacher has" in (result.output_dir / "README.md").read_text()


def test_it_scores_a_user_supplied_eval_set_for_base_expert_and_teacher(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(
        "".join(json.dumps({"question": f"What is the {name} code?", "answer": f"The {name} code is {name}."}) + "\n"
                for name in NAMES[:3])
    )  # fmt: skip
    scripted = scripted_reply()

    def reply(messages: Messages) -> str:  # blind, the teacher knows the first answer only
        if messages[-1]["content"] == f"What is the {NAMES[0]} code?":
            return f"The {NAMES[0]} code is {NAMES[0]}."
        return scripted(messages)

    with OpenAIStub(reply=reply) as stub:
        config = qa_config(
            tmp_path,
            model_cache_dir,
            stub_teacher(stub),
            evaluation=EvalSettings(max_heldout_chunks=1, eval_set=eval_set),
        )
        result = distill(config, toy_corpus)
    qa = result.metrics["qa"]
    assert qa["source"] == "eval set eval.jsonl"
    assert set(qa["rouge_l"]) == {"base", "expert", "teacher_blind"}
    assert qa["rouge_l"]["teacher_blind"] == pytest.approx(1 / 3)
    assert qa["judge"]["mean_grade"]["teacher_blind"] == pytest.approx((5 + 1 + 1) / 3)
    assert len(qa["examples"]) == 3
    assert result.metrics["qa_evaluation"]["heldout"]["questions"] > 0  # held-out scores are kept as well


# ---------------------------------------------------------------- the real packaged model


@pytest.fixture
def torch_threads_restored() -> Iterator[None]:
    """The run below caps torch at one thread; the tests after it get the process's setting back."""
    threads, environment = torch.get_num_threads(), {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    yield
    torch.set_num_threads(threads)
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.mark.realmodel
@pytest.mark.usefixtures("torch_threads_restored")
def test_it_distils_qa_with_smollm2_as_its_own_teacher(tmp_path: Path, model_cache_dir: Path) -> None:
    corpus = CorpusSnapshot(
        train=(
            Chunk(
                "returns.txt",
                0,
                "Acme customers can return any product within 30 days of purchase. Refunds go back to the original "
                "payment method within 5 business days. Items must be unused and in their original packaging.",
            ),
            Chunk(
                "office.txt",
                0,
                "The Lyon office opens at 8 am and closes at 6 pm on weekdays. On Saturdays it is open from 9 am to "
                "noon. It is closed on Sundays and public holidays.",
            ),
        ),
        heldout=(
            Chunk(
                "support.txt",
                0,
                "Acme support answers by phone from 9 am to 5 pm on weekdays. Email requests are answered within "
                "two business days.",
            ),
        ),
        name="acme",
    )
    spec = "packaged:smollm2-135m-instruct"
    config = DistillConfig(
        output_dir=tmp_path / "expert",
        model_cache_dir=model_cache_dir,
        recipe="qa",
        student=spec,
        teacher=LocalTeacherConfig(spec=spec),
        training=TrainingSettings(
            epochs=1, seq_len=256, micro_batch_size=4, grad_accum=1, checkpoint_every=0, num_threads=1, device="cpu"
        ),  # one thread: ~50 s even with other work on the 2 cores, where 2 threads can take 5+ minutes
        qa=QASettings(pairs_per_chunk=2, self_reward="off", max_new_tokens=96),
        evaluation=EvalSettings(max_heldout_chunks=1, max_eval_questions=2),
        lora=LoraSettings(rank=4, alpha=8),
        signature_centroids=1,
    )
    result = distill(config, corpus)
    assert result.status == "succeeded"
    records = records_of(result.output_dir / "qa_data.jsonl")
    kept = [record for record in records if record["kept"]]
    print("SmolLM2-135M wrote:", json.dumps(records, indent=1, ensure_ascii=False))
    assert kept, records
    assert result.metrics["qa_data"]["pairs_kept"] == len(kept)
    assert result.metrics["qa"] is not None, result.metrics["qa_evaluation"]
    assert set(result.metrics["qa"]["rouge_l"]) == {"base", "expert", "teacher_blind"}
