"""GPU throughput of recipe kd: a random ~0.5B Qwen2-like student taught by a random ~1.5B teacher, bf16.

Reports tokens/s and model FLOPs utilisation (MFU) against the bf16 matrix-multiply rate measured in the same
run. FLOPs per trained token = 2·N_teacher (teacher forward, once per token: one epoch, teacher cache built
in the same run) + 4·N_student (frozen base: forward plus activation gradients) + 6·N_lora (LoRA weights:
forward, activation and weight gradients). Attention score FLOPs are not counted (as in the usual 6N rule).

    python bench/gpu_distill.py               # on a machine with an NVIDIA GPU, < 5 minutes
    python bench/gpu_distill.py --tiny        # smoke test of the script itself, CPU is fine

Writes bench/results/gpu_distill.json (or --out). No model files are needed: both models are built from
configs with random weights, and the corpus is random token ids.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peft import get_peft_model

from workers.ml.distill.config import KDSettings, LoraSettings, TrainingSettings
from workers.ml.distill.kd import kd_loss
from workers.ml.distill.teacher_cache import TeacherCache, TeacherSegment
from workers.ml.distill.train import DataPlan, train

SIZES = {
    # Qwen2-0.5B-like and Qwen2-1.5B-like shapes (vocabulary 151,936, tied embeddings).
    "student": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                "intermediate_size": 4864},
    "teacher": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                "intermediate_size": 8960},
}  # fmt: skip
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Tiny models and few tokens: a smoke test.")
    parser.add_argument("--tokens", type=int, default=None, help="Training tokens (default 1M, tiny 8k).")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_distill.json"))
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = TINY_SIZES if args.tiny else SIZES
    vocab = 4096 if args.tiny else 151_936
    seq_len = args.seq_len or (128 if args.tiny else 1024)
    micro_batch = args.micro_batch or (4 if args.tiny else 16)
    tokens = args.tokens or (8_192 if args.tiny else 1_048_576)
    torch.backends.cuda.matmul.allow_tf32 = True

    peak = matmul_tflops(device, 1024 if args.tiny else 8192, dtype)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}")
    print(f"bf16 matmul rate: {peak:.1f} TFLOP/s")

    torch.manual_seed(0)
    teacher = build(sizes["teacher"], vocab, device, dtype).eval()
    student = build(sizes["student"], vocab, device, dtype)
    n_teacher, n_student = count(teacher), count(student)

    generator = torch.Generator().manual_seed(0)
    segment_count = tokens // seq_len
    segments = [tuple(torch.randint(0, vocab, (seq_len,), generator=generator).tolist()) for _ in range(segment_count)]
    teacher_segments = [TeacherSegment(tokens=segment, target_offset=0) for segment in segments]
    settings = TrainingSettings(
        epochs=1, seq_len=seq_len, micro_batch_size=micro_batch, grad_accum=1, learning_rate=1e-4,
        warmup_ratio=0.0, checkpoint_every=0, device=device.type, bf16=device.type == "cuda",
    )  # fmt: skip
    kd = KDSettings(alpha=0.5, context_chunks=0, cache_top_k=args.top_k)

    with tempfile.TemporaryDirectory() as scratch:
        sync(device)
        started = time.perf_counter()
        cache = TeacherCache.open_or_build(
            Path(scratch) / "cache", {"bench": "gpu"}, teacher, teacher_segments, top_k=args.top_k,
            temperature=1.0, batch_tokens=micro_batch * seq_len, pad_token_id=0,
        )  # fmt: skip
        sync(device)
        teacher_s = time.perf_counter() - started
        assert cache is not None
        del teacher
        if device.type == "cuda":
            torch.cuda.empty_cache()

        torch.manual_seed(0)
        expert = get_peft_model(student, LoraSettings(rank=16, alpha=32, dropout=0.0).to_peft())
        n_lora = count(expert, trainable=True)
        plan = DataPlan(segments, settings, pad_token_id=0)
        sync(device)
        started = time.perf_counter()
        outcome = train(
            expert, plan, kd_loss(kd, cache=cache), settings, Path(scratch) / "ck", Path(scratch) / "log.jsonl",
            on_progress=lambda p: None, should_stop=lambda: False,
        )  # fmt: skip
        sync(device)
        train_s = time.perf_counter() - started
        log = [json.loads(line) for line in (Path(scratch) / "log.jsonl").read_text().splitlines()]

    trained = outcome.train_tokens
    flops = trained * (2 * n_teacher + 4 * n_student + 6 * n_lora)
    total_s = teacher_s + train_s
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "matmul_tflops": round(peak, 1),
        "n_teacher": n_teacher,
        "n_student": n_student,
        "n_lora": n_lora,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "top_k": args.top_k,
        "tokens": trained,
        "teacher_pass_s": round(teacher_s, 2),
        "train_s": round(train_s, 2),
        "tokens_per_s": round(trained / total_s, 1),
        "teacher_tokens_per_s": round(trained / teacher_s, 1),
        "train_tokens_per_s": round(trained / train_s, 1),
        "model_tflops": round(flops / total_s / 1e12, 1),
        "mfu": round(flops / total_s / 1e12 / peak, 4),
        "teacher_mfu": round(trained * 2 * n_teacher / teacher_s / 1e12 / peak, 4),
        "train_mfu": round(trained * (4 * n_student + 6 * n_lora) / train_s / 1e12 / peak, 4),
        "first_loss": log[0]["loss"],
        "last_loss": log[-1]["loss"],
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
    }
    print(f"{'stage':<14}{'seconds':>10}{'tokens/s':>14}{'MFU':>8}")
    print(
        f"{'teacher pass':<14}{teacher_s:>10.1f}{result['teacher_tokens_per_s']:>14,.0f}{result['teacher_mfu']:>8.1%}"
    )
    print(f"{'training':<14}{train_s:>10.1f}{result['train_tokens_per_s']:>14,.0f}{result['train_mfu']:>8.1%}")
    print(f"{'total':<14}{total_s:>10.1f}{result['tokens_per_s']:>14,.0f}{result['mfu']:>8.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
