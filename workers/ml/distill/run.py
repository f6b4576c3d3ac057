"""`distill()`: one teacher → one LoRA expert on the shared student base. Pure ML: paths in, a result out.

1. loading     — the student base and the teacher from the model catalog (the same model object when both are
                 the same spec: the teacher then runs with the adapter disabled).
2. teacher     — recipe kd: the teacher's top-k targets for every training chunk, cached on disk (a retry or a
                 resumed run reuses the finished shards), or, for a local teacher of another tokenizer, the
                 teacher run live under TRL's ULD loss (cross_tokenizer.py); recipe qa: generated, graded Q&A pairs.
3. training    — LoRA on the student (train.py), checkpointed, resumable, cancellable.
4. evaluating  — held-out perplexity / bits per byte of base, expert and teacher (with its context), KL before
                 and after, teacher gap closed, and for qa the blind-answer scores.
5. exporting   — the expert directory (export.py) with its routing signature.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import get_peft_model

from workers.ml.catalog import CatalogConfig, LoadedModel, load_model
from workers.ml.catalog_types import CatalogError
from workers.ml.device import configure_torch_threads, parameter_count, prefers_bf16
from workers.ml.distill import kd as kd_recipe
from workers.ml.distill.config import DistillConfig, EndpointTeacherConfig, LocalTeacherConfig
from workers.ml.distill.corpus import CorpusSnapshot
from workers.ml.distill.errors import DistillError, NoTrainingData, TokenizerMismatch
from workers.ml.distill.evaluate import TeacherComparison, compare_with_teacher, score_lm
from workers.ml.distill.export import base_identity_from_info, build_metrics, export_expert
from workers.ml.distill.losses import compiled_vocabulary_passes
from workers.ml.distill.progress import (
    Progress,
    ProgressCallback,
    StageClock,
    StopCallback,
    ignore_progress,
    never_stop,
)
from workers.ml.distill.regional_compile import AUTO_MIN_TEACHER_FLOPS, compiled_layers, should_compile
from workers.ml.distill.signature import compute_signature
from workers.ml.distill.teacher_cache import TeacherCache, TeacherSegment
from workers.ml.distill.teachers import (
    LocalTeacher,
    Teacher,
    load_teacher,
    require_same_vocabulary,
    same_vocabulary,
)
from workers.ml.distill.train import DataPlan, LossFunction, TrainOutcome, train
from workers.ml.embedder import SentenceEmbedder

Status = Literal["succeeded", "cancelled"]
logger = logging.getLogger(__name__)
TEACHER_BATCH_TOKENS_CPU = 1024
TEACHER_BATCH_TOKENS_GPU = 16384


@dataclass
class DistillResult:
    status: Status = field(metadata={"help": "succeeded, or cancelled (a checkpoint was saved)."})
    output_dir: Path = field(metadata={"help": "The expert directory (complete only when succeeded)."})
    base_identity: dict[str, Any] = field(metadata={"help": "Catalog spec and weights hash of the base."})
    teacher_label: str = field(metadata={"help": "Who taught the expert."})
    metrics: dict[str, Any] = field(default_factory=dict, metadata={"help": "metrics.json's content."})
    steps: int = field(default=0, metadata={"help": "Optimizer steps done."})
    total_steps: int = field(default=0, metadata={"help": "Optimizer steps planned."})
    train_tokens: int = field(default=0, metadata={"help": "Student tokens trained on."})
    resumed_from_step: int | None = field(default=None, metadata={"help": "Checkpoint step resumed from."})
    teacher_usage: dict[str, int] = field(default_factory=dict, metadata={"help": "Tokens sent to/from the teacher."})
    seconds: float = field(default=0.0, metadata={"help": "Wall time of this call."})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        return data


@dataclass
class _Models:
    student: LoadedModel
    teacher: Teacher
    shared: bool  # teacher and student are one model object (same spec)

    @functools.cached_property
    def local_other_vocabulary(self) -> bool:
        """A local teacher whose vocabulary is not the student's: recipe kd then runs cross_tokenizer.py."""
        teacher = self.teacher
        return isinstance(teacher, LocalTeacher) and not same_vocabulary(teacher.tokenizer, self.student.tokenizer)


def _load(config: DistillConfig, on_progress: ProgressCallback) -> _Models:
    catalog = CatalogConfig(
        cache_dir=config.model_cache_dir, model_roots=config.model_roots, device=config.training.device
    )

    def say(message: str) -> None:
        on_progress(Progress("loading", 0, 2, message=message))

    say(f"Loading the student base {config.student}")
    try:
        student = load_model(config.student, catalog, progress=say)
    except CatalogError as error:
        raise DistillError(f"The student base could not be loaded: {error}") from error
    batch = config.qa.generation_batch or None  # None: the teacher's default for its device
    if isinstance(config.teacher, LocalTeacherConfig) and config.teacher.spec == config.student:
        return _Models(student, LocalTeacher(student, batch_size=batch), shared=True)
    say(f"Loading the teacher {config.teacher.label}")
    return _Models(student, load_teacher(config.teacher, catalog, batch_size=batch, progress=say), shared=False)


def _store_in_bf16(config: DistillConfig, models: _Models) -> None:
    """On a CPU with native bf16, store the frozen student base and a local teacher in bf16 (precision.py).

    On a GPU the catalog already loads bf16, so nothing changes there.
    """
    student = models.student
    wanted = prefers_bf16(config.training.bf16, student.device, parameter_count(student.model))
    if student.device.type != "cpu" or not wanted or student.dtype == torch.bfloat16:
        return
    loaded = [student]
    teacher = models.teacher
    if isinstance(teacher, LocalTeacher) and not models.shared and teacher.device.type == "cpu":
        loaded.append(teacher.loaded)
    for model in loaded:
        model.cast(torch.bfloat16)
    logger.info("bf16: %s stored in bf16 on this CPU (native bf16 matmuls)", ", ".join(m.spec for m in loaded))


def _teacher_batch_tokens(models: _Models) -> int:
    return TEACHER_BATCH_TOKENS_GPU if models.student.device.type == "cuda" else TEACHER_BATCH_TOKENS_CPU


def _prepare_kd(
    config: DistillConfig,
    corpus: CorpusSnapshot,
    models: _Models,
    on_progress: ProgressCallback,
    should_stop: StopCallback,
    teacher_pass: dict[str, int],
) -> tuple[DataPlan, LossFunction] | None:
    """Data and loss of recipe kd; None when cancelled during the teacher pass. `teacher_pass` gets the
    target tokens the teacher computed for the cache in this attempt (none when it runs at every step)."""
    teacher = models.teacher
    if isinstance(teacher, LocalTeacher):
        if models.local_other_vocabulary:
            from workers.ml.distill import cross_tokenizer  # TRL's ULD loss, an optional dependency

            return cross_tokenizer.prepare(config, corpus, models.student, teacher, on_progress)
    else:
        _require_endpoint_logprobs(config, teacher, models)
    tokenizer = models.student.tokenizer
    data = kd_recipe.build_kd_data(corpus.train, corpus, tokenizer, config.kd, config.training.seq_len)
    if not data.segments:
        raise NoTrainingData("No training chunk has at least two tokens: the corpus is empty.")
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    plan = DataPlan(data.segments, config.training, pad_token_id)
    if not config.kd.teacher_cache and isinstance(teacher, LocalTeacher):
        return plan, kd_recipe.kd_loss(
            config.kd,
            cache=None,
            teacher_model=None if models.shared else teacher.model,
            teacher_segments=data.teacher_segments,
            pad_token_id=pad_token_id,
        )
    fingerprint = {
        "teacher": teacher.label,
        "teacher_hash": teacher.loaded.info.content_hash if isinstance(teacher, LocalTeacher) else None,
        "corpus": corpus.fingerprint,
        "seq_len": config.training.seq_len,
        "context_chunks": config.kd.context_chunks,
        "context_max_tokens": config.kd.context_max_tokens,
    }
    started = time.perf_counter()

    def report(done: int, total: int, _: int) -> None:
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (total - done) if done else None
        on_progress(Progress("teacher", done, total, eta_s=eta, message="Running the teacher over the corpus"))

    local = isinstance(teacher, LocalTeacher)
    top_k = config.kd.cache_top_k if local else min(config.kd.cache_top_k, kd_recipe.ENDPOINT_MAX_TOP_K)
    # A token budget under one epoch trains on part of the corpus: the teacher (and an endpoint's bill) reads
    # that part only.
    needed = plan.trained_segments()
    with _compiled_teacher(config, teacher, [data.teacher_segments[index] for index in needed]):
        cache = TeacherCache.open_or_build(
            config.work / "teacher-cache",
            fingerprint,
            teacher.model if isinstance(teacher, LocalTeacher) else None,
            data.teacher_segments,
            top_k=top_k,
            temperature=config.kd.temperature,
            batch_tokens=_teacher_batch_tokens(models),
            pad_token_id=pad_token_id,
            on_progress=report,
            should_stop=should_stop,
            source=None if local else kd_recipe.endpoint_targets(teacher, data.teacher_segments, top_k),
            needed=needed,
        )
    if cache is None:
        return None
    teacher_pass["target_tokens"] = cache.built_targets
    return plan, kd_recipe.kd_loss(config.kd, cache=cache)


@contextlib.contextmanager
def _compiled_teacher(config: DistillConfig, teacher: Teacher, segments: Sequence[TeacherSegment]) -> Iterator[None]:
    """A local teacher's layers and normaliser compiled for its pass over the corpus where that pays (GPU, long
    corpora: regional_compile.AUTO_MIN_TEACHER_FLOPS) or training.torch_compile is 'on'."""
    if not isinstance(teacher, LocalTeacher):
        yield
        return
    setting = config.training.torch_compile
    flops = 2.0 * parameter_count(teacher.model) * sum(len(segment.tokens) for segment in segments)
    compiling = should_compile(setting, teacher.device, flops, thresholds=AUTO_MIN_TEACHER_FLOPS)
    with (
        compiled_layers(teacher.model, compiling, fall_back=setting == "auto") as compiled,
        compiled_vocabulary_passes(compiled),
    ):
        yield


def _require_endpoint_logprobs(config: DistillConfig, teacher: Teacher, models: _Models) -> None:
    """kd through an endpoint: its tokenizer must be the student's and it must return prompt logprobs."""
    teacher_config = config.teacher
    assert isinstance(teacher_config, EndpointTeacherConfig)
    if not teacher_config.tokenizer_spec:
        raise TokenizerMismatch(
            "Recipe kd through an endpoint needs the endpoint model's tokenizer (set the teacher's tokenizer spec) "
            "to check it matches the student's; use recipe 'qa', which works with any teacher."
        )
    if teacher_config.tokenizer_spec != config.student:
        catalog = CatalogConfig(cache_dir=config.model_cache_dir, model_roots=config.model_roots, device="cpu")
        try:
            reference = load_model(teacher_config.tokenizer_spec, catalog).tokenizer
        except CatalogError as error:
            raise DistillError(f"The teacher's tokenizer could not be loaded: {error}") from error
        require_same_vocabulary(
            reference,
            models.student.tokenizer,
            teacher_name=teacher_config.tokenizer_spec,
            student_name=config.student,
            detail="Across vocabularies kd needs a local teacher: ULD compares whole distributions, and an endpoint "
            "returns only the top log-probs of its own tokens.",
        )
    top_k = min(config.kd.cache_top_k, kd_recipe.ENDPOINT_MAX_TOP_K)
    if not teacher.supports_prompt_logprobs(top_k):  # type: ignore[attr-defined]
        raise DistillError(
            f"Recipe kd needs the teacher's log-probs of the prompt tokens (top {top_k}), which "
            f"{teacher.label} does not return (vLLM offers them as prompt_logprobs; OpenAI's API does not). "
            "Use recipe 'qa', which distils through generated text."
        )


def _evaluate(
    config: DistillConfig, corpus: CorpusSnapshot, models: _Models, expert: Any, on_progress: ProgressCallback
) -> dict[str, Any]:
    """Held-out scores of base, expert and teacher (seeing its context) and the KL before/after."""
    chunks = (
        corpus.heldout[: config.evaluation.max_heldout_chunks] or corpus.train[: config.evaluation.max_heldout_chunks]
    )
    texts = [chunk.text for chunk in chunks]
    contexts = [kd_recipe.context_text(corpus, chunk, config.kd) or None for chunk in chunks]
    tokenizer = models.student.tokenizer
    teacher = models.teacher
    teacher_scores, kl_before, kl_after = None, None, None
    shares_vocab = isinstance(teacher, LocalTeacher) and not models.local_other_vocabulary
    if shares_vocab:
        on_progress(Progress("evaluating", 0, 1, message="Scoring base, expert and teacher (held-out)"))
        comparison = _compare_with_teacher(models, expert, texts, contexts)
        expert_scores, base_scores = comparison.students["expert"], comparison.students["base"]
        teacher_scores, kl_before, kl_after = comparison.teacher, comparison.kl["base"], comparison.kl["expert"]
    else:
        on_progress(Progress("evaluating", 0, 1, message="Scoring base and expert (held-out)"))
        expert_scores = score_lm(expert, tokenizer, texts, batch_size=4)
        with expert.disable_adapter():
            base_scores = score_lm(expert, tokenizer, texts, batch_size=4)
        if isinstance(teacher, LocalTeacher):  # another vocabulary: perplexities apart, bits per byte comparable
            teacher_scores = score_lm(teacher.model, teacher.tokenizer, texts, contexts=contexts, batch_size=4)
    qa_result = None
    if config.recipe == "qa" or config.evaluation.eval_set is not None:
        # Blind answers to questions: for qa, the teacher's held-out questions and the user's eval set; for kd,
        # the user's eval set only (its teacher writes no questions).
        from workers.ml.distill import qa_eval

        qa_result = qa_eval.evaluate_qa(
            config,
            corpus,
            models.student,
            teacher,
            expert,
            shared=models.shared,
            on_progress=on_progress,
            heldout_questions=config.recipe == "qa",
        )
    qa_metrics = qa_result.metrics_arguments() if qa_result is not None else {}
    qa_extra = dict(qa_result.extra) if qa_result is not None else {}
    if config.recipe == "qa":  # --- recipe qa: generation stats (qa.py)
        from workers.ml.distill import qa as qa_recipe

        qa_extra["qa_data"] = qa_recipe.generation_metrics(config)  # --- end recipe qa
    # The teacher's only edge over the base, when both are one model, is the text before a chunk: without any,
    # "gap closed" has nothing to measure, and the page and card should say so rather than blame the teacher.
    with_context = sum(1 for context in contexts if context)
    gap_note = None
    if models.shared and with_context == 0:
        gap_note = (
            "no held-out chunk has text before it in its document, so the teacher (the student's own model, "
            "reading what precedes each chunk) saw nothing the base did not"
        )
    metrics = build_metrics(
        base=base_scores,
        expert=expert_scores,
        teacher=teacher_scores,
        teacher_shares_tokenizer=shares_vocab or not isinstance(teacher, LocalTeacher),
        kl_before=kl_before,
        kl_after=kl_after,
        extra={
            "heldout_chunks": len(texts),
            "heldout_chunks_with_context": with_context,
            "heldout_is_train": not corpus.heldout,
            "gap_note": gap_note,
            **qa_extra,
        },
        **qa_metrics,
    )
    on_progress(Progress("evaluating", 1, 1, message="Evaluation done"))
    return metrics


def _compare_with_teacher(
    models: _Models, expert: Any, texts: list[str], contexts: list[str | None]
) -> TeacherComparison:
    """Base and expert against the teacher seeing its context: one pass of each over the held-out texts."""
    base = _AdapterSwitch(expert, adapter_on=False)
    teacher = models.teacher
    assert isinstance(teacher, LocalTeacher)
    # One model object playing teacher and student: the teacher is the base (adapter off) with its context.
    teacher_model = base if models.shared else teacher.model
    students = {"base": base, "expert": _AdapterSwitch(expert, adapter_on=True)}
    return compare_with_teacher(
        teacher_model, students, models.student.tokenizer, texts, teacher_contexts=contexts, batch_size=4
    )


class _AdapterSwitch(torch.nn.Module):
    """The peft model seen with the adapter on or off, so one object can play teacher and student."""

    def __init__(self, peft_model: Any, adapter_on: bool) -> None:
        super().__init__()
        self.inner = peft_model
        self.adapter_on = adapter_on
        self.train(peft_model.training)  # a new Module says "training"; take the model's own mode

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.adapter_on:
            return self.inner(*args, **kwargs)
        with self.inner.disable_adapter():
            return self.inner(*args, **kwargs)

    @property
    def config(self) -> Any:
        return self.inner.config


def _qa_data_stats(config: DistillConfig) -> dict[str, Any]:
    """Recipe qa: pairs kept and dropped, and whether the teacher's spend cap stopped generation (qa.py)."""
    if config.recipe != "qa":
        return {}
    from workers.ml.distill import qa as qa_recipe

    return qa_recipe.data_stats(config)


def train_expert(
    config: DistillConfig,
    models: _Models,
    plan: DataPlan,
    loss_fn: LossFunction,
    on_progress: ProgressCallback,
    should_stop: StopCallback,
    heldout_texts: Sequence[str] = (),
) -> tuple[Any, TrainOutcome]:
    """Wrap the student in a fresh, seeded LoRA adapter and train it (resuming from a checkpoint if any).

    With `heldout_texts` and `training.eval_every`, the student's held-out NLL is scored at evaluation points.
    """
    torch.manual_seed(config.training.seed)  # LoRA init is part of the run's reproducibility
    expert = get_peft_model(models.student.model, config.lora.to_peft())
    texts = list(heldout_texts)[: config.training.eval_chunks]
    tokenizer = models.student.tokenizer

    def heldout_nll(model: Any) -> float:
        return score_lm(model, tokenizer, texts, batch_size=4).mean_nll

    outcome = train(
        expert,
        plan,
        loss_fn,
        config.training,
        config.checkpoints,
        config.work / "training_log.jsonl",
        on_progress,
        should_stop,
        evaluate=heldout_nll if texts and config.training.eval_every > 0 else None,
    )
    return expert, outcome


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    if count > 0:
        configure_torch_threads(count)
    yield


def distill(
    config: DistillConfig,
    corpus: CorpusSnapshot,
    on_progress: ProgressCallback = ignore_progress,
    should_stop: StopCallback = never_stop,
) -> DistillResult:
    """Distil an expert from `corpus`; see the module docstring. Raises DistillError with a readable message."""
    started = time.perf_counter()
    if not corpus.train:
        raise NoTrainingData("The corpus has no training chunks.")
    clock = StageClock(on_progress)
    with _torch_threads(config.training.num_threads):
        models = _load(config, clock)
        _store_in_bf16(config, models)
        try:
            return _distill_loaded(config, corpus, models, clock, should_stop, started)
        except DistillError as error:
            # The tokens a closed teacher already used are paid for whatever happens next: the caller accounts them.
            error.teacher_usage = asdict(models.teacher.usage)  # type: ignore[attr-defined]
            raise


def _distill_loaded(
    config: DistillConfig,
    corpus: CorpusSnapshot,
    models: _Models,
    on_progress: StageClock,
    should_stop: StopCallback,
    started: float,
) -> DistillResult:
    """distill() once the models are loaded; `on_progress` times the stages."""
    base_identity = base_identity_from_info(models.student.info)
    teacher_label = models.teacher.label

    def result(status: Status, **extra: Any) -> DistillResult:
        return DistillResult(
            status=status,
            output_dir=config.output_dir,
            base_identity=base_identity,
            teacher_label=teacher_label,
            teacher_usage=asdict(models.teacher.usage),
            seconds=time.perf_counter() - started,
            **extra,
        )

    teacher_pass: dict[str, int] = {}  # kd: the target tokens its teacher computed in this attempt
    if config.recipe == "kd":
        prepared = _prepare_kd(config, corpus, models, on_progress, should_stop, teacher_pass)
    else:
        from workers.ml.distill import qa as qa_recipe

        prepared = qa_recipe.prepare(
            config, corpus, models.student, models.teacher, on_progress, should_stop, shared=models.shared
        )
    if prepared is None:
        return result("cancelled")
    plan, loss_fn = prepared

    heldout = [chunk.text for chunk in corpus.heldout]
    expert, outcome = train_expert(config, models, plan, loss_fn, on_progress, should_stop, heldout_texts=heldout)
    if outcome.cancelled:
        return result(
            "cancelled",
            steps=outcome.steps_done,
            total_steps=outcome.total_steps,
            train_tokens=outcome.train_tokens,
        )

    metrics = _evaluate(config, corpus, models, expert, on_progress)
    metrics["training"] = {
        "steps": outcome.steps_done,
        "train_tokens": outcome.train_tokens,
        "final_loss": outcome.final_loss,
        "resumed_from_step": outcome.resumed_from,
        "base_weights": str(models.student.dtype).removeprefix("torch."),
        "bf16_autocast": outcome.bf16_autocast,
        # kd across tokenizers: the teacher ran at every step, under ULD (no teacher pass), so training's speed
        # is not a same-vocabulary run's (the web keeps its own estimate of it).
        "cross_tokenizer": config.recipe == "kd" and models.local_other_vocabulary,
    }
    # Where this attempt's time went, up to the evaluation (a resumed run counts only its own attempt).
    metrics["stage_seconds"] = on_progress.snapshot()
    metrics["teacher_pass"] = teacher_pass or None

    on_progress(Progress("exporting", 0, 2, message="Computing the routing signature"))
    embedder = SentenceEmbedder.load(config.embedder, model_roots=config.model_roots)
    signature = compute_signature(
        embedder, [chunk.text for chunk in corpus.train], k=config.signature_centroids, seed=config.training.seed
    )
    on_progress(Progress("exporting", 1, 2, message="Writing the expert"))
    export_expert(
        config.output_dir,
        expert,
        config=config,
        base_identity=base_identity,
        teacher_label=teacher_label,
        metrics=metrics,
        data_stats={
            **corpus.stats(),
            "train_tokens": outcome.train_tokens,
            "steps": outcome.steps_done,
            **_qa_data_stats(config),
        },
        signature=signature,
        training_log=outcome.log_path,
        generated_data=config.work / "qa_data.jsonl" if config.recipe == "qa" else None,
    )
    (config.output_dir / "result.json").write_text(
        json.dumps({"status": "succeeded", "teacher_usage": asdict(models.teacher.usage)}, indent=2)
    )
    on_progress(Progress("done", 1, 1, message="Expert ready"))
    return result(
        "succeeded",
        metrics=metrics,
        steps=outcome.steps_done,
        total_steps=outcome.total_steps,
        train_tokens=outcome.train_tokens,
        resumed_from_step=outcome.resumed_from,
    )
