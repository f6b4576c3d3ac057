"""The training loop with recipe kd on tiny models: learning, caching, resuming, cancelling, OOM back-off."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.workers.ml.distill.conftest import KDCase, build_cache, heldout_kd_loss, peft_student, run_with_evaluation
from workers.ml.catalog import LoadedModel
from workers.ml.distill.config import TrainingSettings
from workers.ml.distill.corpus import CorpusSnapshot
from workers.ml.distill.errors import OutOfMemory
from workers.ml.distill.kd import build_kd_data, kd_loss
from workers.ml.distill.packing import PackedBatch, epoch_rows
from workers.ml.distill.progress import Progress
from workers.ml.distill.train import DataPlan, TrainOutcome, train


def run(
    tmp_path: Path,
    student: LoadedModel,
    teacher: LoadedModel,
    corpus: CorpusSnapshot,
    case: KDCase,
    *,
    should_stop: Any = lambda: False,
    wrap_loss: Any = None,
    run_dir: str = "run",
    on_progress: Any = lambda _: None,
) -> tuple[TrainOutcome, Any, list[dict[str, Any]]]:
    data = build_kd_data(corpus.train, corpus, student.tokenizer, case.kd, case.training.seq_len)
    cache = build_cache(tmp_path, teacher, data, case)
    model = peft_student(student, case.lora)
    plan = DataPlan(data.segments, case.training, pad_token_id=0)
    loss_fn = kd_loss(case.kd, cache=cache)
    outcome = train(
        model,
        plan,
        wrap_loss(loss_fn) if wrap_loss else loss_fn,
        case.training,
        tmp_path / run_dir / "checkpoints",
        tmp_path / run_dir / "log.jsonl",
        on_progress=on_progress,
        should_stop=should_stop,
    )
    log = [json.loads(line) for line in outcome.log_path.read_text().splitlines()]
    return outcome, model, log


# Segment lengths whose seeded shuffles pack into 12 rows in some epochs and 13 in others (seq_len 256).
UNEVEN_LENGTHS = [228, 141, 164, 130, 202, 105, 173, 36, 106, 172, 250, 183, 205, 85, 140, 213, 253, 104, 90, 229, 55,
                  234, 227, 117, 179, 213, 148, 73, 254, 58, 29, 228, 68, 31, 75, 184, 117, 199, 67, 136, 174, 75, 230,
                  18]  # fmt: skip


def uneven_plan(**training: Any) -> DataPlan:
    settings = TrainingSettings(seq_len=256, micro_batch_size=4, grad_accum=2, seed=0, device="cpu", **training)
    return DataPlan([[1] * length for length in UNEVEN_LENGTHS], settings, pad_token_id=0)


def trained_counts(plan: DataPlan) -> dict[int, int]:
    counts: dict[int, int] = {}
    for step in range(plan.total_steps):
        for rows in plan.step_micro_batches(step):
            for row in rows:
                for index in row:
                    counts[index] = counts.get(index, 0) + 1
    return counts


def test_it_trains_every_segment_exactly_once_per_epoch_when_epochs_pack_into_different_row_counts() -> None:
    plan = uneven_plan(epochs=3)
    rows_per_epoch = {len(epoch_rows(plan.lengths, 256, 0, epoch)) for epoch in range(3)}
    assert len(rows_per_epoch) > 1, "the lengths no longer exercise uneven epochs"

    counts = trained_counts(plan)

    assert counts == dict.fromkeys(range(len(UNEVEN_LENGTHS)), 3)
    assert plan.total_steps == sum(plan.steps_in_epoch(epoch) for epoch in range(3))


def test_it_never_lets_a_step_reach_into_the_next_epoch() -> None:
    plan = uneven_plan(epochs=3)
    for step in range(plan.total_steps):
        epoch, _offset = plan.locate(step)
        epoch_segments = {index for rows in plan.epoch(epoch) for row in rows for index in row}
        step_segments = [index for rows in plan.step_micro_batches(step) for row in rows for index in row]
        assert step_segments
        assert set(step_segments) <= epoch_segments
        assert len(step_segments) == len(set(step_segments)), f"step {step} trains a segment twice"


def test_it_stops_a_token_budget_at_the_first_step_that_reaches_it() -> None:
    epoch_tokens = sum(UNEVEN_LENGTHS)
    plan = uneven_plan(token_budget=epoch_tokens + 1000)

    tokens = [sum(plan.tokens(rows) for rows in plan.step_micro_batches(step)) for step in range(plan.total_steps)]

    assert sum(tokens) >= epoch_tokens + 1000 > sum(tokens[:-1])


def test_it_names_the_segments_a_budget_under_one_epoch_trains_on() -> None:
    short = uneven_plan(token_budget=sum(UNEVEN_LENGTHS) // 3)
    beyond_one_epoch = uneven_plan(token_budget=sum(UNEVEN_LENGTHS) + 1)

    assert short.trained_segments() == sorted(trained_counts(short))
    assert 0 < len(short.trained_segments()) < len(UNEVEN_LENGTHS)  # the teacher may skip the rest
    assert beyond_one_epoch.trained_segments() == list(range(len(UNEVEN_LENGTHS)))
    assert uneven_plan(epochs=0.5).trained_segments() == sorted(trained_counts(uneven_plan(epochs=0.5)))


def test_it_trains_the_lora_weights_and_lowers_the_heldout_loss(
    tmp_path: Path, tiny_student: LoadedModel, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    case = dataclasses.replace(kd_case, training=dataclasses.replace(kd_case.training, epochs=4, learning_rate=1e-2))
    untrained = peft_student(tiny_student, case.lora)
    before_weights = {n: p.detach().clone() for n, p in untrained.named_parameters() if p.requires_grad}
    before = heldout_kd_loss(untrained, tiny_student, tiny_teacher, toy_corpus, case)
    untrained.unload()  # give the base back for the trained run

    outcome, model, log = run(tmp_path, tiny_student, tiny_teacher, toy_corpus, case)
    after = heldout_kd_loss(model, tiny_student, tiny_teacher, toy_corpus, case)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before_weights[n])]
    assert outcome.steps_done == outcome.total_steps > 4
    assert len(changed) == len(before_weights)
    assert log[-1]["loss"] < log[0]["loss"]
    # The untrained expert sits at ~5.4 nats; noise between runs is < 0.01.
    assert after < before - 0.2, (before, after)


def test_it_resumes_after_an_interruption_with_the_same_next_losses(
    tmp_path: Path, tiny_student: LoadedModel, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    _, model, uninterrupted = run(tmp_path, tiny_student, tiny_teacher, toy_corpus, kd_case, run_dir="straight")
    model.unload()
    steps = iter(range(1000))
    interrupted, model, _ = run(
        tmp_path, tiny_student, tiny_teacher, toy_corpus, kd_case, should_stop=lambda: next(steps) >= 4, run_dir="b"
    )
    model.unload()
    assert interrupted.cancelled
    assert interrupted.steps_done == 4
    resumed, _, log = run(tmp_path, tiny_student, tiny_teacher, toy_corpus, kd_case, run_dir="b")
    assert resumed.resumed_from == 4
    assert [entry["step"] for entry in log] == [entry["step"] for entry in uninterrupted]
    for ours, theirs in zip(log, uninterrupted, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4, abs=1e-5), ours["step"]


def test_it_stops_at_the_next_step_and_leaves_a_checkpoint_when_cancelled(
    tmp_path: Path, tiny_student: LoadedModel, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    calls = iter(range(1000))
    outcome, _, log = run(
        tmp_path, tiny_student, tiny_teacher, toy_corpus, kd_case, should_stop=lambda: next(calls) >= 1
    )
    assert outcome.cancelled
    assert outcome.steps_done == 1
    assert len(log) == 1
    assert (tmp_path / "run" / "checkpoints" / "step-000001" / "state.json").exists()


def test_it_runs_smaller_pieces_after_out_of_memory_with_the_same_losses(
    tmp_path: Path, tiny_student: LoadedModel, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    _, model, reference = run(tmp_path, tiny_student, tiny_teacher, toy_corpus, kd_case, run_dir="reference")
    model.unload()

    def oom_on_two_rows(loss_fn: Any) -> Any:
        def wrapped(model: Any, batch: PackedBatch) -> Any:
            if batch.input_ids.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return loss_fn(model, batch)

        return wrapped

    reports: list[Progress] = []
    _, _, log = run(
        tmp_path, tiny_student, tiny_teacher, toy_corpus, kd_case, wrap_loss=oom_on_two_rows, on_progress=reports.append
    )
    assert [entry["loss"] for entry in log] == pytest.approx([entry["loss"] for entry in reference], rel=1e-4)
    # What it did is said where the user looks (the job's log), not only in the worker's log.
    said = [report.message for report in reports if report.message and "Out of memory" in report.message]
    assert kd_case.training.micro_batch_size == 2
    assert said == [
        "Out of memory: each micro-batch of 2 rows now runs in 2 pieces of 1 (the effective batch is unchanged)"
    ]


def test_it_names_the_setting_to_lower_when_one_row_does_not_fit(
    tmp_path: Path, tiny_student: LoadedModel, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    def always_oom(loss_fn: Any) -> Any:
        def wrapped(model: Any, batch: PackedBatch) -> Any:
            raise RuntimeError("CUDA out of memory")

        return wrapped

    with pytest.raises(OutOfMemory, match=r"training\.seq_len"):
        run(tmp_path, tiny_student, tiny_teacher, toy_corpus, kd_case, wrap_loss=always_oom)


def test_it_reads_the_same_targets_from_the_cache_as_from_a_live_teacher(
    tmp_path: Path, tiny_student: LoadedModel, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    """With k = vocabulary size the cached path is the live path: same alignment, context and loss."""
    data = build_kd_data(toy_corpus.train, toy_corpus, tiny_student.tokenizer, kd_case.kd, kd_case.training.seq_len)
    vocab = tiny_teacher.model.config.vocab_size
    cache = build_cache(tmp_path, tiny_teacher, data, kd_case, top_k=vocab)
    plan = DataPlan(data.segments, kd_case.training, pad_token_id=0)
    batch = plan.collate(plan.epoch(0)[0])
    model = tiny_student.model.eval()
    with torch.no_grad():
        cached = kd_loss(kd_case.kd, cache=cache)(model, batch)
        live = kd_loss(
            kd_case.kd, cache=None, teacher_model=tiny_teacher.model, teacher_segments=data.teacher_segments
        )(model, batch)
    assert any(segment.target_offset > 0 for segment in data.teacher_segments)  # context is really used
    torch.testing.assert_close(cached.total, live.total, rtol=1e-3, atol=1e-4)


def test_it_reports_progress_per_step(
    tmp_path: Path, tiny_student: LoadedModel, tiny_teacher: LoadedModel, toy_corpus: CorpusSnapshot, kd_case: KDCase
) -> None:
    data = build_kd_data(toy_corpus.train, toy_corpus, tiny_student.tokenizer, kd_case.kd, kd_case.training.seq_len)
    cache = build_cache(tmp_path, tiny_teacher, data, kd_case)
    reports: list[Progress] = []
    outcome = train(
        peft_student(tiny_student, kd_case.lora),
        DataPlan(data.segments, kd_case.training, pad_token_id=0),
        kd_loss(kd_case.kd, cache=cache),
        kd_case.training,
        tmp_path / "ck",
        tmp_path / "log.jsonl",
        on_progress=reports.append,
        should_stop=lambda: False,
    )
    assert all(r.stage == "training" and r.total_steps == outcome.total_steps for r in reports)
    # First what the stage will do, said before the first step (the job page's log shows it) ...
    start, *steps = reports
    assert start.step == 0
    assert start.message == (
        f"Training the LoRA adapter: {outcome.total_steps} optimizer step(s) of "
        f"{kd_case.training.grad_accum * kd_case.training.micro_batch_size} row(s) of up to "
        f"{kd_case.training.seq_len} tokens"
    )
    # ... then each step, with its loss, speed and time left.
    assert [r.step for r in steps] == list(range(1, outcome.total_steps + 1))
    assert steps[-1].eta_s == pytest.approx(0.0, abs=1e-6)
    assert all(r.tokens_per_s and r.tokens_per_s > 0 and r.loss is not None for r in steps)
    # The cross-entropy is reported apart from the objective (α·CE + (1 − α)·D), as the training log has it.
    logged = [json.loads(line) for line in outcome.log_path.read_text().splitlines()]
    logged_ce = [line["ce"] for line in logged if "ce" in line]
    assert [r.ce for r in steps] == pytest.approx(logged_ce, abs=1e-6)
    assert all(r.ce is not None and r.loss is not None and r.ce != r.loss for r in steps)


def test_it_logs_and_evaluates_each_step_at_its_own_weights_when_reading_the_device_a_step_late(
    tmp_path: Path,
    tiny_student: LoadedModel,
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    kd_case: KDCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The GPU's late read-back (forced here on the CPU) changes when a step is reported, never what."""
    case = dataclasses.replace(kd_case, training=dataclasses.replace(kd_case.training, eval_every=2))
    _, reference, reference_reports = run_with_evaluation(
        tmp_path, tiny_student, tiny_teacher, toy_corpus, case, "sync"
    )
    monkeypatch.setattr("workers.ml.distill.train._reads_back_late", lambda device: True)

    outcome, log, reports = run_with_evaluation(tmp_path, tiny_student, tiny_teacher, toy_corpus, case, "late")

    assert outcome.total_steps > 4
    assert [entry["step"] for entry in log] == [entry["step"] for entry in reference]
    assert sum("heldout_loss" in entry for entry in log) >= 3
    for ours, theirs in zip(log, reference, strict=True):
        assert ours.keys() == theirs.keys()
        for key in ("loss", "ce", "divergence", "grad_norm", "heldout_loss", "tokens"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (ours["step"], key)
    assert [r.step for r in reports] == [r.step for r in reference_reports] == list(range(outcome.total_steps + 1))
    last_step = [entry for entry in reference if "loss" in entry][-1]
    assert outcome.final_loss == pytest.approx(last_step["loss"], abs=1e-6)


def test_it_logs_the_step_still_being_read_when_cancelled(
    tmp_path: Path,
    tiny_student: LoadedModel,
    tiny_teacher: LoadedModel,
    toy_corpus: CorpusSnapshot,
    kd_case: KDCase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.ml.distill.train._reads_back_late", lambda device: True)
    case = dataclasses.replace(kd_case, training=dataclasses.replace(kd_case.training, checkpoint_every=0))
    calls = iter(range(1000))

    outcome, log, reports = run_with_evaluation(
        tmp_path, tiny_student, tiny_teacher, toy_corpus, case, "late", should_stop=lambda: next(calls) >= 2
    )

    assert outcome.cancelled
    assert outcome.steps_done == 2
    assert [entry["step"] for entry in log] == [1, 2]
    assert [r.step for r in reports] == [0, 1, 2]
    assert outcome.final_loss == pytest.approx(log[-1]["loss"], abs=1e-6)
    assert (tmp_path / "late" / "checkpoints" / "step-000002" / "state.json").exists()
