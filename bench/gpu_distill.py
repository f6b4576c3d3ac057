"""GPU throughput of recipe kd: a random ~0.5B Qwen2-like student taught by a random ~1.5B teacher, bf16.

Reports tokens/s and model FLOPs utilisation (MFU) against the bf16 matrix-multiply rate measured in the same
run. FLOPs per trained token = 2·N_teacher (teacher forward, once per token: one epoch, teacher cache built
in the same run) + 4·N_student (frozen base: forward plus activation gradients) + 6·N_lora (LoRA weights:
forward, activation and weight gradients). Attention score FLOPs are not counted (as in the usual 6N rule).

    python bench/gpu_distill.py               # on a machine with an NVIDIA GPU, ~3.5 minutes on an H200
    python bench/gpu_distill.py --tiny        # smoke test of the script itself, CPU is fine
    python bench/gpu_distill.py --shape smollm2 --tokens 16384 --seq-len 256 --micro-batch 4   # a CPU's answer

4M training tokens by default (1M until 2026-11-30): compilation is a fixed cost of ~10 s per model, which a
run of 1M tokens (~15 s of training on an H200) cannot pay back and a real expert's corpus does.

`--compile both` (the default) trains twice on the same teacher cache, with the student's decoder layers eager
and compiled (`training.torch_compile`), from the same LoRA initialisation, and reports both: training wall time
(compilation included, as a user waits for it), the first step's time and the steady rate of the steps after it.
The headline tokens/s and MFU are the faster run's.

`--compile-teacher both` (the default) builds the teacher cache twice, with the teacher's decoder layers and
normaliser eager and compiled, and reports both passes (first batch and steady rate apart) and how often their
top-1 targets agree. The product compiles a GPU teacher past `AUTO_MIN_TEACHER_FLOPS`. Training reads the
first pass's cache; the headline counts the faster pass.

`--cuda-graphs` adds a third training run, "on+graphs": compiled layers captured as CUDA graphs
(`training.cuda_graphs`, torch.compile's "reduce-overhead" mode), against the ~18% host time of a compiled step.
`--compile graphs --compile-teacher on` runs the product's GPU configuration only (one teacher pass, one
training run). Compilation is cold on a fresh machine and loads from inductor's on-disk kernel cache after it,
as a worker's later jobs do: the JSON counts the cache's files at the start (`inductor_cache_files_at_start`).
The runs recorded in docs/benchmarks.md, in a row on one lent GPU:
    TORCHINDUCTOR_CACHE_DIR=/tmp/ind python3 bench/gpu_distill.py --compile graphs --compile-teacher on   # cold
    (the same again: warm), then the same with --tokens 16777216                                         # ~4.5 min

Then it profiles one teacher batch and one eager training micro-batch (`profile` in the JSON): wall time, the
GPU's busy share (summed kernel time / wall: low means the GPU waits for the host) and the top ops by their own
time, so one run on a lent GPU also says where the time goes.

Writes bench/results/gpu_distill.json (or --out) after every finished pass, marked `"partial": true` until the
end, so a run cut short by a time limit still leaves what it measured (on a lent device, point --out under
$OUT). No model files are needed: both models are built from
configs with random weights, and the corpus is random token ids.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peft import get_peft_model
from torch._dynamo.utils import counters

from workers.ml.distill.config import KDSettings, LoraSettings, TrainingSettings
from workers.ml.distill.kd import kd_loss
from workers.ml.distill.losses import compiled_vocabulary_passes
from workers.ml.distill.precision import bf16_autocast
from workers.ml.distill.progress import Progress
from workers.ml.distill.regional_compile import compiled_layers
from workers.ml.distill.teacher_cache import TeacherCache, TeacherSegment, teacher_targets
from workers.ml.distill.train import DataPlan, train

SIZES = {
    # Qwen2-0.5B-like and Qwen2-1.5B-like shapes (vocabulary 151,936, tied embeddings).
    "student": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                "intermediate_size": 4864},
    "teacher": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                "intermediate_size": 8960},
}  # fmt: skip
# SmolLM2-135M's shape (the product's CPU default) taught by a model of its own shape: the CPU's question is
# what compilation does to the student's step, not what a big teacher costs.
SMOLLM2_SHAPE = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                 "intermediate_size": 1536}  # fmt: skip
SMOLLM2_SIZES = {"student": SMOLLM2_SHAPE, "teacher": SMOLLM2_SHAPE}
TINY_SIZES = {
    "student": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 128},
    "teacher": {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 192},
}  # fmt: skip


def build(shape: dict[str, int], vocab: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, max_position_embeddings=4096, **shape)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype)


def count(model: torch.nn.Module, trainable: bool = False) -> int:
    params = {id(p): p for p in model.parameters() if p.requires_grad or not trainable}  # tied weights once
    return sum(p.numel() for p in params.values() if (p.requires_grad if trainable else True))


def matmul_tflops(device: torch.device, size: int, dtype: torch.dtype) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    repeats = 10
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


SHAPES = {
    "qwen2": (SIZES, 151_936),  # the GPU benchmark proper
    "smollm2": (SMOLLM2_SIZES, 49_152),
    "tiny": (TINY_SIZES, 4096),
}


@dataclass
class TeacherRun:
    compile: str
    seconds: float
    first_batch_s: float  # compilation, when on, happens here
    steady_tokens_per_s: float  # the batches after the first


def teacher_pass(
    teacher: torch.nn.Module,
    segments: list[TeacherSegment],
    variant: str,
    top_k: int,
    batch_tokens: int,
    device: torch.device,
    scratch: Path,
) -> tuple[TeacherRun, TeacherCache]:
    """Build the top-k cache with the teacher's layers eager ("off") or compiled ("on")."""
    marks: list[tuple[float, int]] = []  # (time, tokens of the batch) after each teacher batch
    sync(device)
    started = time.perf_counter()
    with compiled_layers(teacher, variant == "on"), compiled_vocabulary_passes(variant == "on"):
        cache = TeacherCache.open_or_build(
            scratch / f"cache-{variant}", {"bench": "gpu"}, teacher, segments, top_k=top_k, temperature=1.0,
            batch_tokens=batch_tokens, pad_token_id=0,
            on_progress=lambda done, total, tokens: marks.append((time.perf_counter(), tokens)),
        )  # fmt: skip
    sync(device)
    seconds = time.perf_counter() - started
    assert cache is not None
    # The cache copies each batch's targets to the host, so the marks are the batches' real ends.
    steady = sum(tokens for _, tokens in marks[1:]) / (marks[-1][0] - marks[0][0]) if len(marks) > 1 else float("nan")
    run = TeacherRun(variant, round(seconds, 2), round(marks[0][0] - started, 2), round(steady, 1))
    return run, cache


def top1_agreement(first: TeacherCache, second: TeacherCache, segments: int) -> float:
    """Share of positions whose most likely next token is the same in both caches (first `segments`)."""
    same = total = 0
    for index in range(min(segments, len(first))):
        ids_a, ids_b = first.segment(index)[1][:, 0], second.segment(index)[1][:, 0]
        same += int((ids_a == ids_b).sum())
        total += len(ids_a)
    return same / total if total else float("nan")


@dataclass
class TrainRun:
    compile: str
    train_s: float
    first_step_s: float  # compilation, when on, happens here
    steady_tokens_per_s: float  # the steps after the first
    first_loss: float
    last_loss: float
    # "on+graphs": how often inductor fell back from CUDA graphs (0 when every compiled layer was captured;
    # the reasons are in the log with TORCH_LOGS=cudagraphs).
    cudagraph_skips: int = 0


def train_once(
    student: torch.nn.Module,
    plan: DataPlan,
    cache: TeacherCache,
    kd: KDSettings,
    settings: TrainingSettings,
    device: torch.device,
    scratch: Path,
    label: str,
) -> tuple[TrainRun, int, int]:
    """One training run (`label`: its variant) from a fresh, seeded LoRA: (timings, trained tokens, LoRA parameters)."""
    torch.manual_seed(0)
    expert = get_peft_model(student, LoraSettings(rank=16, alpha=32, dropout=0.0).to_peft())
    n_lora = count(expert, trainable=True)
    step_marks: list[tuple[float, int]] = []  # (time, step) of each step's report
    run_dir = scratch / f"train-{label}"

    def on_progress(progress: Progress) -> None:
        if progress.stage == "training" and not progress.message:  # a step's report, not the start's or a notice
            step_marks.append((time.perf_counter(), progress.step))

    skips_before = counters["inductor"]["cudagraph_skips"]
    sync(device)
    started = time.perf_counter()
    outcome = train(
        expert, plan, kd_loss(kd, cache=cache), settings, run_dir / "ck", run_dir / "log.jsonl",
        on_progress=on_progress, should_stop=lambda: False,
    )  # fmt: skip
    sync(device)
    train_s = time.perf_counter() - started
    expert.unload()  # the student's base weights back, for the next run
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    log = [entry for entry in log if "loss" in entry]  # step lines, not evaluations
    tokens_at = {entry["step"]: entry["tokens"] for entry in log}
    # The first step holds compilation (when on). Reports arrive a step late on a GPU, so the second report
    # also holds the third step's launch: the steady rate runs from the second report to the last.
    if len(step_marks) > 2:
        (start_time, start_step), (end_time, end_step) = step_marks[1], step_marks[-1]
        steady = (tokens_at[end_step] - tokens_at[start_step]) / (end_time - start_time)
    else:
        steady = float("nan")
    run = TrainRun(
        compile=label, train_s=round(train_s, 2),
        first_step_s=round(step_marks[0][0] - started, 2) if step_marks else float("nan"),
        steady_tokens_per_s=round(steady, 1), first_loss=log[0]["loss"], last_loss=log[-1]["loss"],
        cudagraph_skips=counters["inductor"]["cudagraph_skips"] - skips_before,
    )  # fmt: skip
    return run, outcome.train_tokens, n_lora


PROFILE_TOP = 20


def profile_work(work: Callable[[], object], device: torch.device) -> dict[str, Any]:
    """Where one unit of work spends its time: wall, the device's busy time, and the top ops by self time.

    On a GPU `device_busy_share` = summed kernel time / wall: well below 1 means the GPU waits for the host
    (Python, kernel launches, synchronisations), which compilation or CUDA graphs address; near 1 means the
    kernels themselves are the cost (the top list says which). The profiler slows the host, so the share is a
    lower bound. On a CPU the times are the ops' own.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    work()  # warm-up: allocator, kernel choices
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as profiler:
        started = time.perf_counter()
        work()
        sync(device)
        wall = time.perf_counter() - started
    events = profiler.key_averages()
    if cuda:
        # Kernels only: an aten op's own "device time" repeats its kernels' (the first version summed both).
        kernels = [event for event in events if event.device_type == torch.autograd.DeviceType.CUDA] or [
            event for event in events if event.self_device_time_total > 0
        ]
        busy_us = sum(event.self_device_time_total for event in kernels)
        ranked = sorted(kernels, key=lambda event: event.self_device_time_total, reverse=True)
        own_us = [event.self_device_time_total for event in ranked]
    else:
        ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)
        own_us = [event.self_cpu_time_total for event in ranked]
        busy_us = sum(own_us)
    return {
        "wall_ms": round(wall * 1e3, 2),
        "busy_ms": round(busy_us / 1e3, 2),
        "device_busy_share": round(busy_us / 1e6 / wall, 3) if cuda else None,
        "aten_ops": sum(event.count for event in events if event.key.startswith("aten::")),
        "top": [
            {"name": event.key[:120], "ms": round(us / 1e3, 3), "calls": event.count}
            for event, us in zip(ranked[:PROFILE_TOP], own_us[:PROFILE_TOP], strict=True)
        ],
    }


def print_profile(label: str, report: dict[str, Any]) -> None:
    share = report["device_busy_share"]
    busy = f", device busy {share:.0%}" if share is not None else ""
    print(f"\nprofile: {label}: {report['wall_ms']:.1f} ms wall{busy}, {report['aten_ops']} aten ops")
    for entry in report["top"][:8]:
        print(f"  {entry['ms']:>9.2f} ms {entry['calls']:>6}x  {entry['name'][:90]}")


def profile_training(
    student: torch.nn.Module, plan: DataPlan, cache: TeacherCache, kd: KDSettings, device: torch.device
) -> dict[str, Any]:
    """Profile one eager micro-batch of training (forward, loss from the cache, backward) on a fresh LoRA."""
    torch.manual_seed(0)
    expert = get_peft_model(student, LoraSettings(rank=16, alpha=32, dropout=0.0).to_peft())
    batch = plan.collate(plan.step_micro_batches(0)[0]).to(device)
    loss_fn = kd_loss(kd, cache=cache)

    def micro_batch() -> None:
        with bf16_autocast(expert, device, device.type == "cuda"):
            parts = loss_fn(expert, batch)
        parts.total.backward()

    try:
        return profile_work(micro_batch, device)
    finally:
        expert.unload()


def save_partial(out: Path, done: dict[str, Any]) -> None:
    """What is measured so far, written at once: the run may be cut short by the lent device's time limit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"partial": True, **done}, indent=2, default=str) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Tiny models and few tokens: a smoke test.")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="Model shapes (default qwen2).")
    parser.add_argument("--tokens", type=int, default=None, help="Training tokens (default 4M, tiny 8k).")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument(
        "--compile",
        choices=["both", "on", "off", "graphs"],
        default="both",
        help="Student layers eager, compiled or both ('graphs': only compiled with CUDA graphs, as 'on+graphs').",
    )
    parser.add_argument(
        "--compile-teacher",
        choices=["both", "on", "off"],
        default="both",
        help="Teacher layers eager, compiled or both in the teacher pass.",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="Also train with the compiled layers captured as CUDA graphs (training.cuda_graphs), as 'on+graphs'.",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_distill.json"))
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = args.shape or ("tiny" if args.tiny else "qwen2")
    sizes, vocab = SHAPES[shape]
    small = shape == "tiny"
    seq_len = args.seq_len or (128 if small else 1024)
    micro_batch = args.micro_batch or (4 if small else 16)
    tokens = args.tokens or (8_192 if small else 4_194_304)
    torch.backends.cuda.matmul.allow_tf32 = True

    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        cache_files_at_start: int | None = sum(len(files) for _, _, files in os.walk(cache_dir()))
    except ImportError:  # a torch that keeps it elsewhere: not counted
        cache_files_at_start = None
    peak = matmul_tflops(device, 1024 if small else 8192, dtype)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device_name}, {torch.get_num_threads()} torch threads")
    print(f"{dtype} matmul rate: {peak:.2f} TFLOP/s")

    torch.manual_seed(0)
    teacher = build(sizes["teacher"], vocab, device, dtype).eval()
    student = build(sizes["student"], vocab, device, dtype)
    n_teacher, n_student = count(teacher), count(student)

    generator = torch.Generator().manual_seed(0)
    segment_count = tokens // seq_len
    segments = [tuple(torch.randint(0, vocab, (seq_len,), generator=generator).tolist()) for _ in range(segment_count)]
    teacher_segments = [TeacherSegment(tokens=segment, target_offset=0) for segment in segments]
    base_settings = TrainingSettings(
        epochs=1, seq_len=seq_len, micro_batch_size=micro_batch, grad_accum=1, learning_rate=1e-4,
        warmup_ratio=0.0, checkpoint_every=0, device=device.type, bf16=device.type == "cuda",
    )  # fmt: skip
    kd = KDSettings(alpha=0.5, context_chunks=0, cache_top_k=args.top_k)
    variants = {"both": ["off", "on"], "on": ["on"], "off": ["off"], "graphs": []}[args.compile]
    if args.cuda_graphs or args.compile == "graphs":
        variants.append("on+graphs")

    teacher_variants = ["off", "on"] if args.compile_teacher == "both" else [args.compile_teacher]
    with tempfile.TemporaryDirectory() as scratch:
        teacher_runs: list[TeacherRun] = []
        caches: list[TeacherCache] = []
        failures: dict[str, str] = {}  # a variant that fails must not cost a lent GPU the other's figures
        for variant in teacher_variants:
            try:
                teacher_run, built = teacher_pass(
                    teacher, teacher_segments, variant, args.top_k, micro_batch * seq_len, device, Path(scratch)
                )
            except Exception as error:  # reported in the JSON; the other variant stands
                if variant == teacher_variants[-1] and not caches:
                    raise
                failures[f"teacher, compile {variant}"] = repr(error)[:2000]
                continue
            teacher_runs.append(teacher_run)
            caches.append(built)
            print(f"done: {dataclasses.asdict(teacher_run)}", flush=True)
            done = [dataclasses.asdict(done_run) for done_run in teacher_runs]
            save_partial(args.out, {"device": device_name, "matmul_tflops": peak, "teacher_runs": done})
        cache = caches[0]
        agreement = top1_agreement(caches[0], caches[1], 64) if len(caches) == 2 else None
        del caches[1:]
        teacher_s = min(run.seconds for run in teacher_runs)
        profiles: dict[str, dict[str, Any]] = {}
        try:
            first_batch = range(min(micro_batch, len(teacher_segments)))
            one_batch = functools.partial(teacher_targets, teacher, teacher_segments, first_batch, args.top_k, 1.0, 0)
            profiles["teacher_batch"] = profile_work(one_batch, device)
        except Exception as error:  # reported in the JSON; the measured figures stand
            failures["profile, teacher batch"] = repr(error)[:2000]
        del teacher
        if device.type == "cuda":
            torch.cuda.empty_cache()
        runs: list[TrainRun] = []
        for variant in variants:
            settings = dataclasses.replace(
                base_settings, torch_compile="off" if variant == "off" else "on", cuda_graphs=variant == "on+graphs"
            )
            plan = DataPlan(segments, settings, pad_token_id=0)
            try:
                run, trained, n_lora = train_once(student, plan, cache, kd, settings, device, Path(scratch), variant)
            except Exception as error:  # reported in the JSON; the other variant stands
                if variant == variants[-1] and not runs:
                    raise
                failures[f"training, compile {variant}"] = repr(error)[:2000]
                continue
            runs.append(run)
            print(f"done: {dataclasses.asdict(run)}", flush=True)
            save_partial(
                args.out,
                {
                    "device": device_name,
                    "matmul_tflops": peak,
                    "tokens": trained,
                    "teacher_runs": [dataclasses.asdict(teacher_run) for teacher_run in teacher_runs],
                    "runs": [dataclasses.asdict(done_run) for done_run in runs],
                    "failures": failures,
                },
            )
        try:
            profiles["train_micro_batch"] = profile_training(
                student, DataPlan(segments, base_settings, 0), cache, kd, device
            )
        except Exception as error:  # reported in the JSON; the measured figures stand
            failures["profile, training micro-batch"] = repr(error)[:2000]

    flops_teacher = trained * 2 * n_teacher
    flops_train = trained * (4 * n_student + 6 * n_lora)
    best = min(runs, key=lambda run: run.train_s)
    total_s = teacher_s + best.train_s
    # The rates once compiled and warmed up: the faster teacher pass and training run, after their first batch
    # and step (MFU as training reports usually count it), beside the wall-to-wall figure a user waits for.
    steady_s_per_token = 1 / max(run.steady_tokens_per_s for run in teacher_runs) + 1 / max(
        run.steady_tokens_per_s for run in runs
    )

    def train_mfu(seconds: float) -> float:
        return flops_train / seconds / 1e12 / peak

    def run_summary(run: TrainRun) -> dict[str, Any]:
        return {
            **dataclasses.asdict(run),
            "train_tokens_per_s": round(trained / run.train_s, 1),
            "train_mfu": round(train_mfu(run.train_s), 4),
            "steady_train_mfu": round(train_mfu(trained / run.steady_tokens_per_s), 4),
        }

    result: dict[str, Any] = {
        "partial": False,
        "device": device_name,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "shape": shape,
        "matmul_tflops": round(peak, 2),
        "n_teacher": n_teacher,
        "n_student": n_student,
        "n_lora": n_lora,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "top_k": args.top_k,
        "tokens": trained,
        "teacher_pass_s": round(teacher_s, 2),
        "teacher_runs": [dataclasses.asdict(run) for run in teacher_runs],
        "teacher_top1_agreement": agreement,
        "failures": failures,
        "train_s": best.train_s,
        "compile": best.compile,
        "tokens_per_s": round(trained / total_s, 1),
        "teacher_tokens_per_s": round(trained / teacher_s, 1),
        "train_tokens_per_s": round(trained / best.train_s, 1),
        "model_tflops": round((flops_teacher + flops_train) / total_s / 1e12, 2),
        "mfu": round((flops_teacher + flops_train) / total_s / 1e12 / peak, 4),
        "steady_tokens_per_s": round(1 / steady_s_per_token, 1),
        "mfu_steady": round((flops_teacher + flops_train) / trained / steady_s_per_token / 1e12 / peak, 4),
        "teacher_mfu": round(flops_teacher / teacher_s / 1e12 / peak, 4),
        "train_mfu": round(train_mfu(best.train_s), 4),
        "first_loss": best.first_loss,
        "last_loss": best.last_loss,
        "runs": [run_summary(run) for run in runs],
        # A process before this one on the machine leaves compiled kernels in inductor's on-disk cache (as a GPU
        # worker's earlier jobs do): 0 files means every compilation here was cold.
        "inductor_cache_files_at_start": cache_files_at_start,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
        "profile": profiles,
    }
    if len(teacher_runs) == 2:
        result["teacher_compiled_speedup"] = round(teacher_runs[0].seconds / teacher_runs[1].seconds, 3)
        result["teacher_compiled_steady_speedup"] = round(
            teacher_runs[1].steady_tokens_per_s / teacher_runs[0].steady_tokens_per_s, 3
        )
    by_variant = {run.compile: run for run in runs}
    if {"on", "on+graphs"} <= by_variant.keys():
        graphs, plain = by_variant["on+graphs"], by_variant["on"]
        result["cuda_graphs_speedup"] = round(plain.train_s / graphs.train_s, 3)
        result["cuda_graphs_steady_speedup"] = round(graphs.steady_tokens_per_s / plain.steady_tokens_per_s, 3)
    if {"off", "on"} <= by_variant.keys():
        eager, compiled = by_variant["off"], by_variant["on"]
        result["compiled_speedup"] = round(eager.train_s / compiled.train_s, 3)
        result["compiled_steady_speedup"] = round(compiled.steady_tokens_per_s / eager.steady_tokens_per_s, 3)
    print(f"{'stage':<28}{'seconds':>9}{'first step':>12}{'tokens/s':>11}{'steady tok/s':>14}{'MFU':>8}")
    for run in teacher_runs:
        label = f"teacher, compile {run.compile}"
        print(f"{label:<28}{run.seconds:>9.1f}{run.first_batch_s:>12.1f}{trained / run.seconds:>11,.0f}"
              f"{run.steady_tokens_per_s:>14,.0f}{flops_teacher / run.seconds / 1e12 / peak:>8.1%}")  # fmt: skip
    for run in runs:
        label = f"training, compile {run.compile}"
        print(f"{label:<28}{run.train_s:>9.1f}{run.first_step_s:>12.1f}{trained / run.train_s:>11,.0f}"
              f"{run.steady_tokens_per_s:>14,.0f}{train_mfu(run.train_s):>8.1%}")  # fmt: skip
    total = f"{'total (faster run)':<28}{total_s:>9.1f}{'':>12}{result['tokens_per_s']:>11,.0f}{'':>14}"
    print(f"{total}{result['mfu']:>8.1%}")
    steady = f"{'steady (faster runs)':<28}{'':>9}{'':>12}{'':>11}{result['steady_tokens_per_s']:>14,.0f}"
    print(f"{steady}{result['mfu_steady']:>8.1%}")
    for run in runs:
        if run.compile == "on+graphs" and run.cudagraph_skips:
            print(f"CUDA graphs: inductor fell back {run.cudagraph_skips} time(s) (TORCH_LOGS=cudagraphs says why)")
    for label, report in profiles.items():
        print_profile(label.replace("_", " "), report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
