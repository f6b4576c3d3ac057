"""How fast a local teacher writes qa pairs at each chat batch size, against the batch of 8 it used to take.

Recipe `qa` spends most of a CPU run with the teacher writing question–answer pairs (qa_generate.generate_pairs).
A chat call generates its conversations together (`qa.generation_batch`; 0 picks 32 on a CPU, 64 on a GPU). This
asks the teacher for pairs about the same chunks, with the product's prompt, at each batch size in turn, and
reports seconds per chunk, the rate against the peer (batch 8, the default before 2026-11-30), the tokens
written (greedy: a batch size that changed the answers would show here) and the peak RSS (each batch size runs
in its own process, the model loaded afresh).

Chunks: consecutive 200-token pieces of this repository's `docs/architecture.md` (an engineering document much
like a company's), so every batch size sees the same prompts.

    python bench/qa_generation.py                      # packaged SmolLM2-135M-Instruct, 32 chunks (~16 min)
    python bench/qa_generation.py --batches 8 32 --chunks 64
    python bench/qa_generation.py --quick              # a tiny random model: a smoke test (< 1 minute)

Writes bench/results/qa_generation.json (or qa_generation-quick.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from workers.ml.catalog import CatalogConfig, default_cache_dir, load_model
from workers.ml.distill.config import QASettings
from workers.ml.distill.qa_parse import parse_pairs
from workers.ml.distill.qa_prompts import generation_prompt, user_turn
from workers.ml.distill.teachers import LocalTeacher

ROOT = Path(__file__).resolve().parent.parent
PEER_BATCH = 8
CHUNK_TOKENS = 200


def chunks_of(tokenizer: Any, count: int) -> list[str]:
    ids = tokenizer((ROOT / "docs" / "architecture.md").read_text(), add_special_tokens=False)["input_ids"]
    pieces = [ids[start : start + CHUNK_TOKENS] for start in range(0, len(ids), CHUNK_TOKENS)]
    if len(pieces) < count:
        raise SystemExit(f"docs/architecture.md holds {len(pieces)} chunks of {CHUNK_TOKENS} tokens, not {count}")
    return [tokenizer.decode(piece) for piece in pieces[:count]]


def measure(args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """One batch size, in this process: its timing, tokens, replies and this process's peak RSS."""
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, CatalogConfig(cache_dir=default_cache_dir()), progress=lambda *_: None)
    simple = (loaded.info.num_parameters or 0) < 1_000_000_000
    settings = QASettings()
    chunks = chunks_of(loaded.tokenizer, args.chunks)
    conversations = [user_turn(generation_prompt(chunk, settings, simple=simple)) for chunk in chunks]
    LocalTeacher(loaded, batch_size=2).chat(conversations[:2], max_new_tokens=4)  # warm-up: first-call costs
    teacher = LocalTeacher(loaded, batch_size=batch)
    started = time.perf_counter()
    replies = teacher.chat(conversations, max_new_tokens=args.max_new_tokens)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "seconds_per_chunk": round(seconds / len(conversations), 3),
        "completion_tokens": teacher.usage.completion_tokens,
        "replies_parsed": sum(parse_pairs(reply) is not None for reply in replies),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "replies": replies,
    }


def in_subprocess(args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """measure() in a fresh process, so that each batch size's peak RSS is its own."""
    command = [sys.executable, __file__, "--one-batch", str(batch), "--model", args.model]
    command += ["--chunks", str(args.chunks), "--max-new-tokens", str(args.max_new_tokens)]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"batch {batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct", help="Catalog spec of the teacher.")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32], help="Chat batch sizes to time.")
    parser.add_argument("--chunks", type=int, default=32, help="Chunks asked about at each batch size.")
    parser.add_argument("--max-new-tokens", type=int, default=QASettings().max_new_tokens)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the product's CPU worker: 2 cores).")
    parser.add_argument("--quick", action="store_true", help="tiny:llama-2l, 8 chunks, 16 new tokens.")
    parser.add_argument("--one-batch", type=int, default=None, help=argparse.SUPPRESS)  # a subprocess's batch
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.one_batch is not None:
        print(json.dumps(measure(args, args.one_batch)))
        return 0
    if args.quick:
        args.model, args.chunks, args.max_new_tokens = "tiny:llama-2l", 8, 16
    rows: dict[int, dict[str, Any]] = {}
    for batch in sorted({PEER_BATCH, *args.batches}):
        rows[batch] = in_subprocess(args, batch)
        print(f"batch {batch:>3}: {rows[batch]['seconds_per_chunk']:.2f} s a chunk", flush=True)
    peer = rows[PEER_BATCH]
    print(f"\n{args.model}, {args.chunks} chunks of {CHUNK_TOKENS} tokens, up to {args.max_new_tokens} new tokens")
    header = ("batch", "s/chunk", "vs batch 8", "tokens written", "same replies", "peak RSS")
    print("  ".join(f"{name:>{width}}" for name, width in zip(header, (5, 8, 10, 14, 12, 9), strict=True)))
    for batch, row in rows.items():
        row["speedup_vs_batch_8"] = round(peer["seconds"] / row["seconds"], 3)
        row["same_replies_as_batch_8"] = row["replies"] == peer["replies"]
        print(
            f"{batch:>5}  {row['seconds_per_chunk']:>8.2f}  {row['speedup_vs_batch_8']:>9.2f}×  "
            f"{row['completion_tokens']:>14,}  {'yes' if row['same_replies_as_batch_8'] else 'no':>12}  "
            f"{row['peak_rss_mb']:>6,} MB"
        )
    result = {
        "model": args.model,
        "chunks": args.chunks,
        "chunk_tokens": CHUNK_TOKENS,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "peer": f"batch {PEER_BATCH}",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__},
        "batches": {str(batch): {k: v for k, v in row.items() if k != "replies"} for batch, row in rows.items()},
    }
    out = args.out or ROOT / "bench" / "results" / ("qa_generation-quick.json" if args.quick else "qa_generation.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
