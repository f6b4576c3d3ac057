"""Where the GPU time of recipe kd goes, and what the two largest non-matmul costs could cost instead.

`bench/gpu_distill.py` measures the whole run; this script looks inside one batch of it, on the same shapes
(random Qwen2-0.5B-like student, Qwen2-1.5B-like teacher, bf16, 16 rows of 1,024 tokens):

1. Kernel-level profiles of one teacher batch (forward, head, top-k) and one training micro-batch (forward,
   loss from the cache, backward), each with the decoder layers eager and compiled (training also compiled
   and replayed as CUDA graphs, `train_graphs`): the GPU's busy share (kernel time / wall) and the top
   kernels by their own time.
2. The teacher's top-k over the vocabulary (the cache build's largest non-matmul kernel): torch.topk against
   unsorted, two-stage and grouped (the product's on a GPU, vocab_topk.py) variants, on the teacher's real
   logits. Every variant must pick the same values as torch.topk.
3. The student's loss over (N, V) logits (the training step's largest non-matmul cost): forward plus backward
   of the product's eager loss against the same loss compiled, with the largest difference in loss and
   gradient.

    python bench/gpu_profile.py --out $OUT/gpu_profile.json    # on a machine with an NVIDIA GPU, ~2 minutes
    python bench/gpu_profile.py --tiny                          # a smoke test of the script, CPU is fine
    python bench/gpu_profile.py --sections topk                 # the top-k variants only (~30 s on an H200)

Each section that fails is reported in the JSON (`failures`) and the others stand.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_distill import SHAPES, build, print_profile, profile_work, sync
from peft import get_peft_model

from workers.ml.distill.config import KDSettings, LoraSettings, TrainingSettings
from workers.ml.distill.kd import kd_loss
from workers.ml.distill.losses import _chunk_terms, compiled_vocabulary_passes, teacher_topk
from workers.ml.distill.packing import PackedBatch
from workers.ml.distill.precision import bf16_autocast
from workers.ml.distill.regional_compile import allocate_gradient_buffers, compiled_layers
from workers.ml.distill.teacher_cache import TeacherCache, TeacherSegment, teacher_targets
from workers.ml.distill.train import DataPlan
from workers.ml.distill.vocab_topk import grouped_topk


def timed(work: Callable[[], object], device: torch.device, repeats: int = 5) -> tuple[float, float]:
    """(first call's seconds — compilation, when any — , median seconds of `repeats` calls after a warm-up)."""
    sync(device)
    started = time.perf_counter()
    work()
    sync(device)
    first = time.perf_counter() - started
    work()
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        work()
        sync(device)
        times.append(time.perf_counter() - started)
    return first, sorted(times)[len(times) // 2]


def two_stage_topk(logits: torch.Tensor, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k as top-k within groups of `group` columns, then top-k of the groups' winners."""
    rows, vocab = logits.shape
    groups = -(-vocab // group)
    padded = torch.nn.functional.pad(logits, (0, groups * group - vocab), value=float("-inf"))  # (N, G·S)
    local_values, local_ids = padded.view(rows, groups, group).topk(k, dim=-1)  # (N, G, k)
    offsets = torch.arange(groups, device=logits.device).view(1, groups, 1) * group
    values, where = local_values.reshape(rows, -1).topk(k, dim=-1)  # (N, k)
    ids = (local_ids + offsets).reshape(rows, -1).gather(-1, where)
    return values, ids


def legacy_teacher_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The product's normaliser until 2026-11-30: an fp32 copy of the logits and a logsumexp over it."""
    ids = logits.topk(k, dim=-1).indices
    values = logits.gather(-1, ids).float() - torch.logsumexp(logits.float(), dim=-1, keepdim=True)
    return values, ids


def topk_section(logits: torch.Tensor, k: int, device: torch.device) -> list[dict[str, Any]]:
    reference = logits.topk(k, dim=-1).values.float()
    variants: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
        "torch.topk (the product's before 2026-11-30 evening; still a CPU's)": lambda: logits.topk(k, dim=-1),
        "torch.topk sorted=False": lambda: logits.topk(k, dim=-1, sorted=False),
        "grouped top-k, groups of 64 (the product's on a GPU: vocab_topk.py)": lambda: grouped_topk(logits, k),
        "two-stage, groups of 2048": lambda: two_stage_topk(logits, k, 2048),
        "two-stage, groups of 8192": lambda: two_stage_topk(logits, k, 8192),
        "teacher_topk (product: top-k + fused log-softmax)": lambda: teacher_topk(logits, k)[:2],
        "top-k + fp32 copy + logsumexp (before 2026-11-30)": lambda: legacy_teacher_topk(logits, k),
    }
    compiled_topk = torch.compile(teacher_topk, dynamic=False)
    variants["teacher_topk compiled"] = lambda: compiled_topk(logits, k)[:2]
    results = []
    for name, work in variants.items():
        first, median = timed(work, device)
        _, ids = work()
        picked = logits.gather(-1, ids.long()).float().sort(dim=-1, descending=True).values
        results.append(
            {
                "variant": name,
                "first_ms": round(first * 1e3, 2),
                "ms": round(median * 1e3, 3),
                "same_values": bool(torch.equal(picked, reference)),
            }
        )
    return results


def loss_section(rows: int, vocab: int, k: int, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    generator = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(rows, vocab, device=device, generator=generator) * 2).to(dtype).requires_grad_(True)
    labels = torch.randint(0, vocab, (rows,), device=device, generator=generator)
    weights = torch.ones(rows, device=device)
    teacher_values, teacher_ids = teacher_topk(torch.randn(rows, vocab, device=device, generator=generator), k)[:2]
    tail = torch.log(torch.clamp(1 - teacher_values.exp().sum(-1), min=1e-20))
    arguments = (labels, weights, None, teacher_values.half(), teacher_ids.int(), tail, 0.5, 1.0, "forward_kl", 0.5)
    outcomes: dict[str, tuple[float, torch.Tensor]] = {}

    def step(terms: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
        def work() -> None:
            logits.grad = None
            ce, div = terms(logits, *arguments)
            ((0.5 * ce + 0.5 * div) / rows).backward()

        return work

    variants = {"eager (product)": _chunk_terms, "compiled": torch.compile(_chunk_terms, dynamic=False)}
    results = []
    for name, terms in variants.items():
        first, median = timed(step(terms), device)
        logits.grad = None
        ce, div = terms(logits, *arguments)
        total = (0.5 * ce + 0.5 * div) / rows
        total.backward()
        assert logits.grad is not None
        outcomes[name] = (float(total), logits.grad.float().clone())
        results.append({"variant": name, "first_ms": round(first * 1e3, 2), "ms": round(median * 1e3, 3)})
    base_loss, base_grad = outcomes["eager (product)"]
    for result in results:
        loss, grad = outcomes[result["variant"]]
        result["loss_diff"] = abs(loss - base_loss)
        result["grad_max_diff"] = float((grad - base_grad).abs().max())
    return results


SECTIONS = ("topk", "teacher", "train", "loss")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Tiny models: a smoke test of the script.")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_profile.json"))
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="What to measure (default: all)."
    )
    args = parser.parse_args()
    wanted = set(args.sections)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes, vocab = SHAPES["tiny" if args.tiny else "qwen2"]
    seq_len, micro_batch, top_k = (128, 4, 64) if args.tiny else (1024, 16, 64)
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    result: dict[str, Any] = {"device": name, "torch": torch.__version__, "seq_len": seq_len,
                              "micro_batch": micro_batch, "top_k": top_k, "failures": {}}  # fmt: skip

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    torch.manual_seed(0)
    teacher = build(sizes["teacher"], vocab, device, dtype).eval()
    student = build(sizes["student"], vocab, device, dtype)
    generator = torch.Generator().manual_seed(0)
    segments = [
        tuple(torch.randint(0, vocab, (seq_len,), generator=generator).tolist()) for _ in range(micro_batch * 2)
    ]
    teacher_segments = [TeacherSegment(tokens=segment, target_offset=0) for segment in segments]
    batch_rows = range(micro_batch)

    def section(label: str, work: Callable[[], Any]) -> None:
        if label.split("_")[0] not in wanted:
            return
        try:
            result[label] = work()
        except Exception as error:  # reported; the other sections stand
            result["failures"][label] = repr(error)[:2000]
            print(f"{label} failed: {error!r}"[:400], flush=True)
        save()

    def teacher_logits() -> torch.Tensor:
        inputs = torch.tensor(segments[:micro_batch], device=device)
        with torch.inference_mode():
            hidden = teacher.model(input_ids=inputs, use_cache=False).last_hidden_state  # (R, T, H)
            return teacher.lm_head(hidden.reshape(-1, hidden.shape[-1]))  # (R·T, V)

    section("topk", lambda: topk_section(teacher_logits(), top_k, device))
    for entry in result.get("topk", []):
        print(f"top-k  {entry['variant']:<50}{entry['ms']:>9.2f} ms  same values: {entry['same_values']}")

    def teacher_profile(compiled: bool) -> dict[str, Any]:
        with compiled_layers(teacher, compiled), compiled_vocabulary_passes(compiled):
            return profile_work(lambda: teacher_targets(teacher, teacher_segments, batch_rows, top_k, 1.0, 0), device)

    section("teacher_eager", lambda: teacher_profile(False))
    section("teacher_compiled", lambda: teacher_profile(True))

    if "train" in wanted:
        with tempfile.TemporaryDirectory() as scratch:
            cache = TeacherCache.open_or_build(
                Path(scratch), {"bench": "profile"}, teacher, teacher_segments, top_k=top_k, temperature=1.0,
                batch_tokens=micro_batch * seq_len, pad_token_id=0,
            )  # fmt: skip
            assert cache is not None
            settings = TrainingSettings(
                epochs=1, seq_len=seq_len, micro_batch_size=micro_batch, grad_accum=1, learning_rate=1e-4,
                warmup_ratio=0.0, checkpoint_every=0, device=device.type, bf16=device.type == "cuda",
            )  # fmt: skip
            plan = DataPlan(segments, settings, pad_token_id=0)
            batch = plan.collate(plan.step_micro_batches(0)[0]).to(device)
            kd = KDSettings(alpha=0.5, context_chunks=0, cache_top_k=top_k)
            torch.manual_seed(0)
            expert = get_peft_model(student, LoraSettings(rank=16, alpha=32, dropout=0.0).to_peft())
            section("train_eager", lambda: train_profile(expert, batch, cache, kd, device, compiled=False))
            section("train_compiled", lambda: train_profile(expert, batch, cache, kd, device, compiled=True))
            section("train_graphs", lambda: train_profile(expert, batch, cache, kd, device, compiled=True, graphs=True))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    section("loss", lambda: loss_section(micro_batch * seq_len, vocab, top_k, device, dtype))
    for entry in result.get("loss", []):
        print(f"loss   {entry['variant']:<20}{entry['ms']:>9.2f} ms (first {entry['first_ms']:.0f} ms), "
              f"loss diff {entry['loss_diff']:.2e}, grad max diff {entry['grad_max_diff']:.2e}")  # fmt: skip
    for label in ("teacher_eager", "teacher_compiled", "train_eager", "train_compiled", "train_graphs"):
        if label in result:
            print_profile(label.replace("_", " "), result[label])
    save()
    return 0


def train_profile(
    expert: torch.nn.Module, batch: PackedBatch, cache: TeacherCache, kd: KDSettings, device: torch.device,
    *, compiled: bool, graphs: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One micro-batch's profile; with `graphs` the compiled layers replay as CUDA graphs (training.cuda_graphs)."""
    loss_fn = kd_loss(kd, cache=cache)

    def micro_batch() -> None:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # as train() does before each micro-batch
        with bf16_autocast(expert, device, device.type == "cuda"):
            parts = loss_fn(expert, batch)
        parts.total.backward()

    if graphs:
        allocate_gradient_buffers(expert.parameters())  # as train() does
    with (
        compiled_layers(expert, compiled, static_shapes=graphs, cuda_graphs=graphs),
        compiled_vocabulary_passes(compiled),
    ):
        # Compilation, when on, outside the profile; CUDA graphs are recorded on a later call than the first
        # (cudagraph trees warm up once), so they get three.
        for _ in range(3 if graphs else 1):
            micro_batch()
        return profile_work(micro_batch, device)


if __name__ == "__main__":
    raise SystemExit(main())
