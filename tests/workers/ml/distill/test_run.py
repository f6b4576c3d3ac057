"""distill() and the CLI end to end on tiny models: output, refusals, cancel and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from tests.workers.ml.distill.conftest import toy_documents
from workers.ml.catalog import CatalogConfig, load_model
from workers.ml.distill.__main__ import main as cli_main
from workers.ml.distill.__main__ import shorten
from workers.ml.distill.config import (
    DistillConfig,
    EvalSettings,
    KDSettings,
    LocalTeacherConfig,
    LoraSettings,
    QASettings,
    TrainingSettings,
)
from workers.ml.distill.corpus import Chunk, CorpusSnapshot
from workers.ml.distill.errors import TeacherError, TokenizerMismatch
from workers.ml.distill.progress import Progress
from workers.ml.distill.regional_compile import repeated_layers
from workers.ml.distill.run import _compiled_teacher, distill
from workers.ml.distill.teacher_cache import TeacherSegment
from workers.ml.distill.teachers import LocalTeacher

STUDENT = "tiny:llama-2l"


def tiny_config(tmp_path: Path, model_cache_dir: Path, **overrides: Any) -> DistillConfig:
    settings: dict[str, Any] = {"teacher": LocalTeacherConfig(spec="tiny:llama-4l"), **overrides}
    return DistillConfig(
        output_dir=tmp_path / "expert",
        model_cache_dir=model_cache_dir,
        student=STUDENT,
        training=TrainingSettings(
            epochs=2, seq_len=96, micro_batch_size=2, grad_accum=2, learning_rate=5e-3, checkpoint_every=2, device="cpu"
        ),
        kd=KDSettings(context_chunks=1, context_max_tokens=48, cache_top_k=16),
        lora=LoraSettings(rank=4, alpha=8),
        signature_centroids=2,
        **settings,
    )


def test_it_writes_a_complete_expert_that_plain_peft_loads(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    reports: list[Progress] = []
    result = distill(tiny_config(tmp_path, model_cache_dir), toy_corpus, on_progress=reports.append)
    out = result.output_dir
    assert result.status == "succeeded"
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "base.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "signature.json").is_file()
    assert (out / "training_log.jsonl").read_text().count("\n") == result.steps
    assert {r.stage for r in reports} >= {"loading", "teacher", "training", "evaluating", "exporting", "done"}
    base_identity = json.loads((out / "base.json").read_text())
    assert (
        base_identity["content_hash"]
        == load_model(STUDENT, CatalogConfig(cache_dir=model_cache_dir, device="cpu")).info.content_hash
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout"]["expert"]["perplexity"] > 0
    assert metrics["kl_to_teacher"]["before"] > 0

    # The exported adapter holds the trained weights (the last checkpoint's), and plain peft applies them.
    trained = load_file(str(sorted((out / "checkpoints").glob("step-*"))[-1] / "adapter.safetensors"))
    exported = load_file(str(out / "adapter_model.safetensors"))
    assert len(exported) == len(trained)
    for name, tensor in trained.items():
        short = name.replace("base_model.model.", "").replace(".default", "")
        match = [key for key in exported if key.replace("base_model.model.", "") == short]
        assert match, name
        torch.testing.assert_close(exported[match[0]], tensor)
    base = load_model(STUDENT, CatalogConfig(cache_dir=model_cache_dir, device="cpu")).model
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, out)(input_ids=ids).logits
    assert not torch.allclose(plain, adapted)


def test_without_trl_it_refuses_kd_from_a_teacher_with_another_vocabulary(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across vocabularies kd needs TRL's ULD loss (test_cross_tokenizer.py); without TRL it says how to get it."""
    import sys

    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = {word: index for index, word in enumerate(["<unk>", "</s>", "the", "code", "is"])}
    backend = Tokenizer(WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    teacher_dir = tmp_path / "models" / "word-teacher"
    model.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    config = tiny_config(
        tmp_path,
        model_cache_dir,
        teacher=LocalTeacherConfig(spec=f"hf:{teacher_dir}"),
        model_roots=(tmp_path / "models",),
    )
    for name in ["trl", *(name for name in sys.modules if name.startswith("trl."))]:
        monkeypatch.setitem(sys.modules, name, None)  # `import trl…` now fails as if TRL were not installed
    with pytest.raises(TokenizerMismatch) as raised:
        distill(config, toy_corpus)
    assert "pip install 'distillery[gold]'" in str(raised.value)
    assert "use recipe 'qa'" in str(raised.value)
    assert not (config.output_dir / "adapter_model.safetensors").exists()


def test_it_cancels_with_a_checkpoint_and_resumes_to_the_same_expert(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    straight = distill(tiny_config(tmp_path / "a", model_cache_dir), toy_corpus)
    steps_seen: list[int] = []

    def stop_after_three_steps() -> bool:
        return len(steps_seen) >= 3

    def record(progress: Progress) -> None:
        if progress.stage == "training" and progress.step > 0:  # step 0: the stage's start, no step done yet
            steps_seen.append(progress.step)

    config = tiny_config(tmp_path / "b", model_cache_dir)
    cancelled = distill(config, toy_corpus, on_progress=record, should_stop=stop_after_three_steps)
    assert cancelled.status == "cancelled"
    assert cancelled.steps == 3
    assert not (config.output_dir / "adapter_model.safetensors").exists()
    resumed = distill(config, toy_corpus)
    assert resumed.status == "succeeded"
    assert resumed.resumed_from_step == 3
    # The teacher's targets were computed once: the resumed attempt read them from the cache.
    first_pass = straight.metrics["teacher_pass"]["target_tokens"]
    assert 0 < first_pass <= straight.train_tokens
    assert resumed.metrics["teacher_pass"] == {"target_tokens": 0}
    straight_log = (straight.output_dir / "training_log.jsonl").read_text().splitlines()
    resumed_log = (resumed.output_dir / "training_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in resumed_log] == pytest.approx(
        [json.loads(line)["loss"] for line in straight_log], rel=1e-4
    )


def test_it_distils_from_the_command_line_and_protects_an_earlier_run(
    tmp_path: Path, model_cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus_dir = tmp_path / "docs"
    corpus_dir.mkdir()
    for name, chunks in toy_documents(6):
        (corpus_dir / name).write_text("\n".join(chunks))
    (corpus_dir / "logo.png").write_bytes(bytes(range(256)) * 4)  # not text: reported, the rest go on
    args = [
        "--corpus", str(corpus_dir), "--out", str(tmp_path / "out"), "--student", STUDENT,
        "--cache-dir", str(model_cache_dir), "--epochs", "1", "--seq-len", "128", "--heldout", "0.3",
        "--lora-rank", "4", "--threads", "2",
    ]  # fmt: skip
    assert cli_main(args) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "Read 7 file(s): 1 failed, 6 ok" in printed
    assert "  failed: logo.png: " in printed
    assert cli_main(args) == 2  # the earlier run's checkpoint is not overwritten without --resume
    assert cli_main([*args, "--resume"]) == 0


@pytest.mark.parametrize("heldout_with_context", [False, True])
def test_it_says_why_the_gap_closed_cannot_be_measured_when_no_heldout_chunk_has_context(
    tmp_path: Path, model_cache_dir: Path, heldout_with_context: bool
) -> None:
    """The teacher is the student's own model: its one edge is the text before a chunk. Held-out documents of one
    chunk each give it none, and the metrics say so instead of "the teacher was no better"."""
    documents = toy_documents(12)
    train = [Chunk(name, position, text) for name, chunks in documents[:9] for position, text in enumerate(chunks)]
    heldout = [
        Chunk(name, position, text)
        for name, chunks in documents[9:]
        for position, text in enumerate(chunks if heldout_with_context else chunks[:1])
    ]
    corpus = CorpusSnapshot(train=tuple(train), heldout=tuple(heldout))
    config = tiny_config(tmp_path, model_cache_dir, teacher=LocalTeacherConfig(spec=STUDENT))
    config = config.replace(training=dataclasses.replace(config.training, epochs=1))
    result = distill(config, corpus)
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    card = (result.output_dir / "README.md").read_text()
    if heldout_with_context:
        assert metrics["heldout_chunks_with_context"] == 6  # 3 documents of 3 chunks: all but the first of each
        assert metrics["gap_note"] is None
    else:
        assert metrics["heldout_chunks_with_context"] == 0
        assert metrics["gap_closed"] is None  # the teacher scored exactly as the base
        assert metrics["gap_note"].startswith("no held-out chunk has text before it in its document")
        assert "not applicable (no held-out chunk has text before it in its document" in card


def test_the_progress_bar_keeps_the_counts_at_the_end_of_a_long_message() -> None:
    message = "generating: The teacher is writing question–answer pairs: 12 kept, 3 dropped"
    short = shorten(message, 40)
    assert short == "generating: The tea…: 12 kept, 3 dropped"
    assert len(short) == 40
    # Counts too long to keep whole with some words before them: the middle is elided instead.
    counts = shorten("generating: pairs: 12 kept, 3 dropped, 1,240/12,000 tokens, 4 graded", 40)
    assert counts == "generating: pairs: …000 tokens, 4 graded"
    assert len(counts) == 40
    # The teacher stage's counts under a token budget fit the default width whole.
    stage = "generating: The teacher is writing question–answer pairs"
    budget = shorten(f"{stage}: 12 kept, 3 dropped, 1,240/12,000 tokens")
    assert budget == "generating: The teache…: 12 kept, 3 dropped, 1,240/12,000 tokens"
    assert len(budget) == 64
    assert shorten("training: step 3", 40) == "training: step 3"


def test_the_command_line_refuses_bad_chunk_sizes_with_a_message(
    tmp_path: Path, model_cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus_dir = tmp_path / "docs"
    corpus_dir.mkdir()
    (corpus_dir / "a.txt").write_text("Some text to distil.")
    args = [
        "--corpus", str(corpus_dir), "--out", str(tmp_path / "out"), "--student", STUDENT,
        "--cache-dir", str(model_cache_dir), "--chunk-tokens", "64", "--overlap-tokens", "64",
    ]  # fmt: skip
    assert cli_main(args) == 2
    assert "error: overlap_tokens must be between 0 and chunk_tokens - 1 (63), got 64." in capsys.readouterr().err
    assert cli_main([*args[:-4], "--heldout", "1.5"]) == 2
    assert "heldout_fraction must be in [0, 1), got 1.5." in capsys.readouterr().err


def test_it_distils_kd_through_an_endpoint_that_returns_prompt_logprobs(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    from tests.workers.ml.distill.openai_stub import OpenAIStub
    from workers.ml.distill.config import EndpointTeacherConfig

    with OpenAIStub(prompt_logprobs="vllm", vocab_size=49152) as vllm:
        teacher = EndpointTeacherConfig(base_url=vllm.base_url, model=vllm.model, tokenizer_spec=STUDENT)
        config = tiny_config(tmp_path, model_cache_dir, teacher=teacher)
        result = distill(config, toy_corpus)
        scored = [r for r in vllm.requests if r.body.get("prompt_logprobs")]
    assert result.status == "succeeded"
    assert (result.output_dir / "adapter_model.safetensors").is_file()
    # One scoring request per training chunk (plus the capability probe), top-k capped at vLLM's 20.
    assert len(scored) >= len(toy_corpus.train)
    assert {r.body["prompt_logprobs"] for r in scored} == {16}
    assert result.teacher_usage["prompt_tokens"] > 0


@pytest.mark.parametrize("mode", ["ignore", "reject"])
def test_it_refuses_kd_through_an_endpoint_without_prompt_logprobs(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot, mode: str
) -> None:
    from tests.workers.ml.distill.openai_stub import OpenAIStub
    from workers.ml.distill.config import EndpointTeacherConfig
    from workers.ml.distill.errors import DistillError

    with OpenAIStub(prompt_logprobs=mode) as server:  # type: ignore[arg-type]
        teacher = EndpointTeacherConfig(base_url=server.base_url, model=server.model, tokenizer_spec=STUDENT)
        with pytest.raises(DistillError, match="Use recipe 'qa'"):
            distill(tiny_config(tmp_path, model_cache_dir, teacher=teacher), toy_corpus)


def test_it_refuses_kd_through_an_endpoint_of_unknown_tokenizer(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    from workers.ml.distill.config import EndpointTeacherConfig

    teacher = EndpointTeacherConfig(base_url="http://127.0.0.1:9/v1", model="closed-model")
    with pytest.raises(TokenizerMismatch, match="tokenizer"):
        distill(tiny_config(tmp_path, model_cache_dir, teacher=teacher), toy_corpus)


def test_it_scores_the_heldout_chunks_at_evaluation_points_without_changing_the_training(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    plain = distill(tiny_config(tmp_path / "plain", model_cache_dir), toy_corpus)
    config = tiny_config(tmp_path / "scored", model_cache_dir)
    config = config.replace(training=dataclasses.replace(config.training, eval_every=2, eval_chunks=4))
    reports: list[Progress] = []

    scored = distill(config, toy_corpus, on_progress=reports.append)

    points = [(r.step, r.heldout_loss) for r in reports if r.stage == "training" and r.heldout_loss is not None]
    assert [step for step, _ in points] == [
        s for s in range(1, scored.total_steps + 1) if s % 2 == 0 or s == scored.total_steps
    ]
    assert points[-1][1] < points[0][1]  # the toy language is learnable: the held-out loss falls
    log = [json.loads(line) for line in (config.output_dir / "training_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "heldout_loss" in entry] == [step for step, _ in points]
    # Scoring draws no random numbers and leaves the adapter in training mode: the losses are those of a run
    # without evaluation points.
    plain_log = [
        json.loads(line) for line in (tmp_path / "plain" / "expert" / "training_log.jsonl").read_text().splitlines()
    ]
    assert [e["loss"] for e in log if "loss" in e] == pytest.approx([e["loss"] for e in plain_log], rel=1e-5)
    assert scored.metrics["heldout"]["expert"]["perplexity"] == pytest.approx(
        plain.metrics["heldout"]["expert"]["perplexity"], rel=1e-5
    )


def test_it_runs_the_teacher_over_the_part_of_the_corpus_a_small_token_budget_trains_on(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    config = tiny_config(tmp_path, model_cache_dir)
    config = config.replace(training=dataclasses.replace(config.training, token_budget=200))
    reports: list[Progress] = []

    result = distill(config, toy_corpus, on_progress=reports.append)

    assert result.status == "succeeded"
    teacher_totals = {r.total_steps for r in reports if r.stage == "teacher"}
    assert len(teacher_totals) == 1
    (teacher_segments,) = teacher_totals
    # A step or two of ~200 tokens reads a few of the training chunks: the teacher read those, not the corpus.
    assert 0 < teacher_segments < len(toy_corpus.train)
    assert result.metrics["training"]["train_tokens"] >= 200


def test_it_takes_the_compile_setting_from_the_command_line(tmp_path: Path) -> None:
    from workers.ml.distill.__main__ import _parser, build_config

    required = ["--corpus", str(tmp_path), "--out", str(tmp_path / "out")]

    assert build_config(_parser().parse_args(required)).training.torch_compile == "auto"
    assert build_config(_parser().parse_args([*required, "--compile", "off"])).training.torch_compile == "off"
    with pytest.raises(SystemExit):
        _parser().parse_args([*required, "--compile", "always"])


def test_it_takes_the_precision_from_the_command_line(tmp_path: Path) -> None:
    from workers.ml.distill.__main__ import _parser, build_config

    required = ["--corpus", str(tmp_path), "--out", str(tmp_path / "out")]

    def bf16(*extra: str) -> bool | None:
        return build_config(_parser().parse_args([*required, *extra])).training.bf16

    assert bf16() is None  # auto: decided by the device and the student's size (precision.py)
    assert bf16("--precision", "bf16") is True
    assert bf16("--precision", "fp32") is False
    assert bf16("--gpu-defaults") is True
    assert bf16("--gpu-defaults", "--precision", "fp32") is False


def test_it_takes_the_eval_set_and_the_judge_from_the_command_line(tmp_path: Path) -> None:
    from workers.ml.distill.__main__ import _parser, build_config

    required = ["--corpus", str(tmp_path), "--out", str(tmp_path / "out"), "--recipe", "qa"]

    plain = build_config(_parser().parse_args(required)).evaluation
    assert (plain.eval_set, plain.teacher_judge) == (None, "auto")
    chosen = build_config(
        _parser().parse_args([*required, "--eval-set", str(tmp_path / "eval.jsonl"), "--teacher-judge", "off"])
    ).evaluation
    assert (chosen.eval_set, chosen.teacher_judge) == (tmp_path / "eval.jsonl", "off")
    with pytest.raises(SystemExit):
        _parser().parse_args([*required, "--teacher-judge", "sometimes"])


def test_it_sets_qa_self_reward_from_the_command_line(tmp_path: Path) -> None:
    from workers.ml.distill.__main__ import _parser, build_config

    def self_reward(*flags: str) -> str:
        return build_config(_parser().parse_args([*required, *flags])).qa.self_reward

    required = ["--corpus", str(tmp_path), "--out", str(tmp_path / "out"), "--recipe", "qa"]
    assert self_reward() == "auto"
    assert self_reward("--self-reward", "on") == "on"
    assert self_reward("--self-reward", "off") == self_reward("--no-self-reward") == "off"
    assert build_config(_parser().parse_args(required)).qa.min_answer_grounding is None  # by whether it grades
    grounding = build_config(_parser().parse_args([*required, "--min-answer-grounding", "0.6"]))
    assert grounding.qa.min_answer_grounding == 0.6


def write_eval_set(path: Path) -> Path:
    questions = [("What is the alpha code?", "The alpha code is alpha."), ("What is the beta value?", "Beta.")]
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in questions))
    return path


def test_it_scores_the_users_eval_set_for_a_kd_expert_too(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot
) -> None:
    """The company's own yardstick is not for qa alone: a kd expert answers the same questions, blind."""
    eval_set = write_eval_set(tmp_path / "eval.jsonl")
    config = tiny_config(
        tmp_path, model_cache_dir, evaluation=EvalSettings(eval_set=eval_set), qa=QASettings(max_new_tokens=12)
    )
    result = distill(config, toy_corpus)
    qa = result.metrics["qa"]
    assert qa["source"] == "eval set eval.jsonl"
    assert set(qa["rouge_l"]) == {"base", "expert", "teacher_blind"}
    assert all(0.0 <= score <= 1.0 for score in qa["rouge_l"].values())  # the tiny:llama-4l teacher answered too
    assert {example["question"] for example in qa["examples"]} == {"What is the alpha code?", "What is the beta value?"}
    evaluation = result.metrics["qa_evaluation"]
    assert evaluation["heldout"] is None  # a kd teacher writes no held-out questions
    assert evaluation["eval_set"]["questions"] == 2
    assert "qa_data" not in result.metrics
    assert "Question answering (eval set eval.jsonl" in (result.output_dir / "README.md").read_text()


def test_it_scores_base_and_expert_when_a_kd_teacher_cannot_chat(
    tmp_path: Path, model_cache_dir: Path, toy_corpus: CorpusSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_chat(self: LocalTeacher, *args: Any, **kwargs: Any) -> Any:
        raise TeacherError("The teacher tiny:llama-4l has no chat template (it is a base model).")

    monkeypatch.setattr(LocalTeacher, "chat", no_chat)
    eval_set = write_eval_set(tmp_path / "eval.jsonl")
    config = tiny_config(
        tmp_path, model_cache_dir, evaluation=EvalSettings(eval_set=eval_set), qa=QASettings(max_new_tokens=12)
    )
    result = distill(config, toy_corpus)
    assert result.status == "succeeded"
    rouge = result.metrics["qa"]["rouge_l"]
    assert rouge["teacher_blind"] is None
    assert rouge["base"] is not None
    assert rouge["expert"] is not None
    notes = result.metrics["qa_evaluation"]["eval_set"]["notes"]
    assert notes == ["teacher not scored: The teacher tiny:llama-4l has no chat template (it is a base model)."]


@pytest.mark.parametrize(("setting", "compiled"), [("on", True), ("auto", False), ("off", False)])
def test_it_compiles_a_local_teachers_layers_for_its_pass_only_where_the_setting_says(
    tmp_path: Path, model_cache_dir: Path, setting: str, compiled: bool
) -> None:
    """'auto' leaves a CPU's teacher eager (a GPU compiles it past AUTO_MIN_TEACHER_FLOPS); 'on' compiles it."""
    config = tiny_config(tmp_path, model_cache_dir)
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, torch_compile=setting))
    teacher = LocalTeacher(load_model("tiny:llama-4l", CatalogConfig(cache_dir=model_cache_dir, device="cpu")))
    layers = repeated_layers(teacher.model)
    assert layers is not None

    with _compiled_teacher(config, teacher, [TeacherSegment(tokens=tuple(range(2_000)), target_offset=0)]):
        assert [layer._compiled_call_impl is not None for layer in layers] == [compiled] * len(layers)
    assert all(layer._compiled_call_impl is None for layer in layers)
