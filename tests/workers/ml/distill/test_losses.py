"""The distillation losses against direct computations (TRL GKD's formula written out with F.kl_div)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workers.ml.distill import losses
from workers.ml.distill.losses import IGNORE_INDEX, distillation_loss, teacher_topk

V = 50


def trl_generalized_jsd(student_logits, teacher_logits, labels, beta, temperature):  # type: ignore[no-untyped-def]
    """TRL's GKDTrainer.generalized_jsd_loss (reduction='batchmean', with labels), written out."""
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        jsd = F.kl_div(s, t, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(t, s, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta)
        m = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
        jsd = b * F.kl_div(m, t, reduction="none", log_target=True) + (1 - b) * F.kl_div(
            m, s, reduction="none", log_target=True
        )
    mask = labels != IGNORE_INDEX
    return jsd[mask].sum() / mask.sum()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 7, V, generator=generator) * 2
    teacher = torch.randn(2, 7, V, generator=generator) * 3
    labels = torch.randint(0, V, (2, 7), generator=generator)
    labels[0, :2] = IGNORE_INDEX
    labels[1, -1] = IGNORE_INDEX
    return {"student": student, "teacher": teacher, "labels": labels}


@pytest.mark.parametrize(("kind", "beta"), [("forward_kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.5), ("jsd", 0.1)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_it_matches_trls_divergences(batch, kind, beta, temperature) -> None:  # type: ignore[no-untyped-def]
    ours = distillation_loss(
        batch["student"],
        batch["labels"],
        teacher_logits=batch["teacher"],
        alpha=0.0,
        temperature=temperature,
        kind=kind,
        beta=beta,
    )
    expected = trl_generalized_jsd(batch["student"], batch["teacher"], batch["labels"], beta, temperature)
    torch.testing.assert_close(ours.divergence, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.total, temperature**2 * expected, rtol=1e-5, atol=1e-6)


def test_it_mixes_cross_entropy_with_alpha(batch) -> None:  # type: ignore[no-untyped-def]
    alpha = 0.3
    ours = distillation_loss(batch["student"], batch["labels"], teacher_logits=batch["teacher"], alpha=alpha)
    mask = batch["labels"] != IGNORE_INDEX
    ce = F.cross_entropy(batch["student"][mask], batch["labels"][mask])
    kl = trl_generalized_jsd(batch["student"], batch["teacher"], batch["labels"], 0.0, 1.0)
    torch.testing.assert_close(ours.total, alpha * ce + (1 - alpha) * kl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "beta"), [("forward_kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.5)])
def test_it_equals_the_full_loss_when_the_cache_keeps_every_token(batch, kind, beta) -> None:  # type: ignore[no-untyped-def]
    values, ids, tail = teacher_topk(batch["teacher"], k=V, temperature=1.5)
    full = distillation_loss(
        batch["student"], batch["labels"], teacher_logits=batch["teacher"], temperature=1.5, kind=kind, beta=beta
    )
    cached = distillation_loss(
        batch["student"],
        batch["labels"],
        teacher_topk_logprobs=values,
        teacher_topk_ids=ids,
        teacher_topk_tail=tail,
        temperature=1.5,
        kind=kind,
        beta=beta,
    )
    torch.testing.assert_close(cached.total, full.total, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_it_bounds_the_top_k_forward_kl_by_the_teacher_tail(batch, k) -> None:  # type: ignore[no-untyped-def]
    """0 ≤ KL_full − KL_topk = r_t · KL(p̃_t ‖ p̃_s), per position, with p̃ the renormalised tails."""
    student, teacher = batch["student"][0, 3:4], batch["teacher"][0, 3:4]  # (1, V): one labelled position
    labels = torch.tensor([[1]])
    values, ids, tail_lp = teacher_topk(teacher, k)
    full = distillation_loss(student[None], labels, teacher_logits=teacher[None], alpha=0.0).divergence
    approx = distillation_loss(
        student[None],
        labels,
        teacher_topk_logprobs=values[None],
        teacher_topk_ids=ids[None],
        teacher_topk_tail=tail_lp[None],
        alpha=0.0,
    ).divergence
    p_t, p_s = F.softmax(teacher[0], -1), F.softmax(student[0], -1)
    tail = torch.ones(V, dtype=torch.bool)
    tail[ids[0]] = False
    r_t = p_t[tail].sum()
    tail_t, tail_s = p_t[tail] / r_t, p_s[tail] / p_s[tail].sum()
    gap = r_t * (tail_t * (tail_t.log() - tail_s.log())).sum()
    assert float(approx) <= float(full) + 1e-6
    # The tails come from 1 − Σ top-k in fp32, so the identity holds to ~1e-5 absolute.
    torch.testing.assert_close(full - approx, gap, rtol=1e-3, atol=1e-5)


def test_it_skips_positions_without_labels(batch) -> None:  # type: ignore[no-untyped-def]
    labels = batch["labels"].clone()
    before = distillation_loss(batch["student"], labels, teacher_logits=batch["teacher"])
    scrambled = batch["teacher"].clone()
    scrambled[labels == IGNORE_INDEX] = 1000.0  # garbage where there is no label must not matter
    after = distillation_loss(batch["student"], labels, teacher_logits=scrambled)
    torch.testing.assert_close(before.total, after.total)
    assert before.positions == int((labels != IGNORE_INDEX).sum())


def test_it_chunks_positions_without_changing_the_loss_or_gradient(batch) -> None:  # type: ignore[no-untyped-def]
    student = batch["student"].clone().requires_grad_(True)
    values, ids, tail = teacher_topk(batch["teacher"], 8)
    whole = distillation_loss(
        student, batch["labels"], teacher_topk_logprobs=values, teacher_topk_ids=ids, teacher_topk_tail=tail
    )
    (grad_whole,) = torch.autograd.grad(whole.total, student)
    chunked = distillation_loss(
        student,
        batch["labels"],
        teacher_topk_logprobs=values,
        teacher_topk_ids=ids,
        teacher_topk_tail=tail,
        chunk_positions=3,
    )
    (grad_chunked,) = torch.autograd.grad(chunked.total, student)
    torch.testing.assert_close(chunked.total, whole.total)
    torch.testing.assert_close(grad_chunked, grad_whole)


def test_it_is_zero_when_student_equals_teacher(batch) -> None:  # type: ignore[no-untyped-def]
    loss = distillation_loss(batch["teacher"], batch["labels"], teacher_logits=batch["teacher"], alpha=0.0, kind="jsd")
    assert math.isclose(float(loss.total), 0.0, abs_tol=1e-6)


def test_it_gives_bf16_logits_the_loss_and_gradient_of_their_fp32_copy(batch) -> None:  # type: ignore[no-untyped-def]
    """bf16 logits go straight into an fp32 log-softmax (no separate fp32 copy): same numbers as the copy."""
    values, ids, tail = teacher_topk(batch["teacher"], 8)
    targets = {"teacher_topk_logprobs": values, "teacher_topk_ids": ids, "teacher_topk_tail": tail}
    half = batch["student"].bfloat16().requires_grad_(True)
    copied = half.detach().float().requires_grad_(True)

    ours = distillation_loss(half, batch["labels"], alpha=0.5, **targets)
    reference = distillation_loss(copied, batch["labels"], alpha=0.5, **targets)
    ours.total.backward()
    reference.total.backward()

    assert ours.total.dtype == torch.float32
    torch.testing.assert_close(ours.total, reference.total)
    assert half.grad is not None
    assert copied.grad is not None
    assert half.grad.dtype == torch.bfloat16  # the gradient comes back in the logits' own dtype
    assert copied.grad.abs().sum() > 0
    torch.testing.assert_close(half.grad.float(), copied.grad, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_it_takes_the_teachers_top_k_from_bf16_logits_as_from_their_fp32_copy(batch, temperature) -> None:  # type: ignore[no-untyped-def]
    logits = batch["teacher"].bfloat16()

    values, ids, tail = teacher_topk(logits, 8, temperature)
    reference_values, reference_ids, reference_tail = teacher_topk(logits.float(), 8, temperature)

    assert values.dtype == torch.float32
    assert torch.equal(ids, reference_ids)
    torch.testing.assert_close(values, reference_values)
    torch.testing.assert_close(tail, reference_tail)


def test_it_computes_the_same_loss_and_teacher_targets_with_the_vocabulary_passes_compiled(
    batch,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU compiles the loss and the teacher's normaliser; here the CPU compiles them to check the graphs."""
    monkeypatch.setattr(losses, "COMPILED_DEVICE_TYPES", frozenset({"cpu"}))
    monkeypatch.setattr(losses, "_compiled", {})
    eager_targets = teacher_topk(batch["teacher"], 8, 1.5)
    student = batch["student"].clone().requires_grad_(True)
    eager = distillation_loss(student, batch["labels"], alpha=0.5, **_as_targets(eager_targets))
    eager.total.backward()
    eager_grad, student.grad = student.grad, None
    assert losses._compiled == {}  # outside the block nothing compiles

    with losses.compiled_vocabulary_passes(True):
        compiled_targets = teacher_topk(batch["teacher"], 8, 1.5)
        compiled = distillation_loss(student, batch["labels"], alpha=0.5, **_as_targets(compiled_targets))
    compiled.total.backward()

    assert set(losses._compiled) == {losses._chunk_terms, losses._topk_logprobs}
    for ours, reference in zip(compiled_targets, eager_targets, strict=True):
        torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(compiled.total, eager.total)
    torch.testing.assert_close(student.grad, eager_grad)


def test_it_compiles_the_grouped_top_k_for_batches_of_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU's teacher pass: the grouped top-k and the log-softmax compiled together, for as many positions as
    each batch keeps (here on a CPU, with the GPU's choices switched on)."""
    from workers.ml.distill import vocab_topk

    monkeypatch.setattr(losses, "COMPILED_DEVICE_TYPES", frozenset({"cpu"}))
    monkeypatch.setattr(vocab_topk, "GROUPED_DEVICE_TYPES", frozenset({"cpu"}))
    monkeypatch.setattr(losses, "_compiled", {})
    from torch._dynamo.utils import counters

    generator = torch.Generator().manual_seed(0)
    graphs_before = counters["stats"]["unique_graphs"]
    for positions in (40, 27, 33):  # batches keep different numbers of positions
        logits = torch.randn(positions, 3000, generator=generator) * 4  # 3000 = 46 · 64 + 56: a short last group
        with losses.compiled_vocabulary_passes(True):
            values, ids, tail = teacher_topk(logits, 8)
        reference = torch.log_softmax(logits, dim=-1).topk(8, dim=-1)
        assert torch.equal(ids, reference.indices)
        torch.testing.assert_close(values, reference.values)
        torch.testing.assert_close(tail, losses.log_tail_mass(reference.values))
    assert set(losses._compiled) == {losses._topk_logprobs}
    assert counters["stats"]["unique_graphs"] - graphs_before == 1  # dynamic in the positions from the start


def _as_targets(targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    values, ids, tail = targets
    return {"teacher_topk_logprobs": values, "teacher_topk_ids": ids, "teacher_topk_tail": tail}
