"""Serving throughput of the mixture of experts: our batched multi-LoRA engine against PEFT, same requests.

Every request arrives at once (64 by default), greedy, and generates exactly `--max-tokens` tokens (EOS
ignored), so every method does the same work. Experts are random LoRAs (r=16 on every linear layer of the
decoder), assigned round-robin, so each batch of 16 mixes as many experts as there are (8 at E=8, 16 at E=100).

Methods (tokens/s = requests x max_tokens / wall seconds; loading models and experts is not timed):
- ours mixed:         `Engine.submit` of every request at once; batches of up to 16 mixing experts per row
- ours single:        the same, every request with expert 0
- ours base:          the same, no expert
  (ours are run `--repeats` times, interleaved, and the fastest run of each kept: the machine may be shared)
- peft mixed:         PeftModel with all E adapters, `generate(..., adapter_names=[...])` in batches of 16
- peft one at a time: `set_adapter` + `generate` per request (a sample of `--sequential-requests` requests)
- base (HF generate): the plain base's `generate` in batches of 16

    .venv/bin/python bench/serve.py --quick        # tiny:llama-4l, E=8 and E=100, < 1 min on 2 cores
    .venv/bin/python bench/serve.py                # SmolLM2-135M-Instruct (the default base)
    .venv/bin/python bench/serve.py --requests 32 --max-tokens 16 --experts 8 100
    .venv/bin/python bench/serve.py --only-ours --repeats 3   # our three sides only (serve-ours.json)
    .venv/bin/python bench/serve.py --only-ours --threads 1   # as the engine runs by default (1 torch thread)

Results: bench/results/serve.json (serve-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from workers.ml.catalog import CatalogConfig, LoadedModel, load_model  # noqa: E402
from workers.moe.adapters import ExpertRef  # noqa: E402
from workers.moe.engine import Engine, EngineConfig, GenerationRequest  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results"
BATCH = 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOPICS = ["invoices", "the refund policy", "shipping to Norway", "password resets", "the API rate limits"]


def _quiet(_message: str) -> None:
    """Progress lines would only clutter the table."""


def prompts(count: int) -> list[str]:
    return [
        f"Request {i}: a customer asks about {TOPICS[i % len(TOPICS)]}. Write a short answer." for i in range(count)
    ]


def write_experts(base: LoadedModel, count: int, directory: Path) -> list[ExpertRef]:
    """`count` random r=16 LoRA experts on every linear layer, written as export.py would (adapter + base.json)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(base.model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
    refs = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        out = directory / f"expert-{index}"
        peft_model.save_pretrained(out)
        (out / "base.json").write_text(json.dumps({"spec": base.spec, "content_hash": base.info.content_hash}))
        refs.append(ExpertRef(id=f"expert-{index}", location=str(out)))
    peft_model.unload()
    return refs


def run_ours(engine: Engine, texts: list[str], experts: list[ExpertRef | None], max_tokens: int) -> dict[str, Any]:
    requests = [
        GenerationRequest(
            prompt=text, experts=[ref] if ref else [], max_tokens=max_tokens, temperature=0.0, ignore_eos=True
        )
        for text, ref in zip(texts, experts, strict=True)
    ]
    before = engine.stats()
    start = time.perf_counter()
    streams = [engine.submit(request) for request in requests]
    tokens = 0
    for stream in streams:
        for event in stream.events():
            tokens += getattr(event, "completion_tokens", 0)
    wall = time.perf_counter() - start
    after = engine.stats()
    steps = after["batches_run"] - before["batches_run"]
    return {
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "decode_steps": steps,  # one forward pass each, for every running row
    }


def _hf_generate(model: Any, tokenizer: Any, texts: list[str], max_tokens: int, **kwargs: Any) -> int:
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **encoded,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
    return int(out.shape[0] * (out.shape[1] - encoded["input_ids"].shape[1]))


def run_hf(
    model: Any, tokenizer: Any, texts: list[str], max_tokens: int, adapter_names: list[str] | None = None
) -> dict[str, Any]:
    """Batches of 16 through `generate`; with `adapter_names`, PEFT's mixed-adapter batches."""
    start = time.perf_counter()
    tokens = 0
    for first in range(0, len(texts), BATCH):
        kwargs = {"adapter_names": adapter_names[first : first + BATCH]} if adapter_names else {}
        tokens += _hf_generate(model, tokenizer, texts[first : first + BATCH], max_tokens, **kwargs)
    wall = time.perf_counter() - start
    return {"tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)}


def run_peft_sequential(model: Any, tokenizer: Any, texts: list[str], names: list[str], max_tokens: int) -> dict:
    start = time.perf_counter()
    tokens = 0
    for text, name in zip(texts, names, strict=True):
        model.set_adapter(name)
        tokens += _hf_generate(model, tokenizer, [text], max_tokens)
    wall = time.perf_counter() - start
    return {"tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)}


def bench_experts(args: argparse.Namespace, count: int, scratch: Path) -> dict[str, Any]:
    catalog = CatalogConfig(cache_dir=args.cache_dir, device="cpu")
    writer = load_model(args.base, catalog, progress=_quiet)
    refs = write_experts(writer, count, scratch / f"e{count}")
    texts = prompts(args.requests)
    round_robin = [refs[i % count] for i in range(args.requests)]
    result: dict[str, Any] = {"experts": count}

    config = EngineConfig(
        base_spec=args.base,
        model_cache_dir=args.cache_dir,
        device="cpu",
        max_batch_size=BATCH,
        max_loaded_experts=max(count, 1),
        adapter_memory_bytes=64 * 1024**3,
        batch_wait_ms=50,
        weights=args.weights,
    )
    with Engine(config, progress=_quiet) as engine:
        result["weights"] = engine.stats()["weights"]
        for ref in refs:
            engine.load_expert(ref)
        run_ours(engine, texts[:BATCH], round_robin[:BATCH], 4)  # warm-up: first-call allocations
        # Interleaved repeats, the fastest kept: on a shared machine another job can take a core for a while.
        sides = {
            "ours_mixed": round_robin,
            "ours_single": [refs[0]] * args.requests,
            "ours_base": [None] * args.requests,
        }
        for _ in range(args.repeats):
            for key, experts in sides.items():
                run = run_ours(engine, texts, experts, args.max_tokens)
                if key not in result or run["tokens_per_s"] > result[key]["tokens_per_s"]:
                    result[key] = run
    del engine
    if args.only_ours:
        return _summary(result)

    from peft import PeftModel

    # The bench's writer model is the plain base again (its LoRA was unloaded): reuse it for HF and PEFT.
    tokenizer = writer.tokenizer
    tokenizer.padding_side = "left"
    model = writer.model.to(getattr(torch, result["weights"]))  # the engine's dtype: like for like
    _hf_generate(model, tokenizer, texts[:2], 2)  # warm-up
    result["base_hf"] = run_hf(model, tokenizer, texts, args.max_tokens)
    peft_model = PeftModel.from_pretrained(model, refs[0].location, adapter_name=refs[0].id)
    for ref in refs[1:]:
        peft_model.load_adapter(ref.location, adapter_name=ref.id)
    peft_model.eval()
    names = [ref.id for ref in round_robin]
    result["peft_mixed"] = run_hf(peft_model, tokenizer, texts, args.max_tokens, adapter_names=names)
    sample = args.sequential_requests
    result["peft_sequential"] = run_peft_sequential(
        peft_model, tokenizer, texts[:sample], names[:sample], args.max_tokens
    )

    return _summary(result)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one E; the HF/PEFT ones are None with --only-ours."""

    def rate(key: str) -> float | None:
        return result[key]["tokens_per_s"] if key in result else None

    def ratio(top: float | None, bottom: float | None, digits: int = 3) -> float | None:
        return round(top / bottom, digits) if top and bottom else None

    summary = {
        "weights": result["weights"],
        "ours_mixed_tokens_per_s": result["ours_mixed"]["tokens_per_s"],
        "ours_single_tokens_per_s": result["ours_single"]["tokens_per_s"],
        "ours_base_tokens_per_s": result["ours_base"]["tokens_per_s"],
        "peft_mixed_tokens_per_s": rate("peft_mixed"),
        "peft_sequential_tokens_per_s": rate("peft_sequential"),
        "base_tokens_per_s": rate("base_hf"),
    }
    summary["mixed_vs_single"] = ratio(summary["ours_mixed_tokens_per_s"], summary["ours_single_tokens_per_s"])
    summary["single_vs_base"] = ratio(summary["ours_single_tokens_per_s"], summary["base_tokens_per_s"])
    # The same engine without any expert: what the LoRA path itself costs, free of HF generate's overheads.
    summary["single_vs_ours_base"] = ratio(summary["ours_single_tokens_per_s"], summary["ours_base_tokens_per_s"])
    summary["mixed_vs_peft_mixed"] = ratio(summary["ours_mixed_tokens_per_s"], summary["peft_mixed_tokens_per_s"], 2)
    return {**summary, "details": result}


def _print_table(report: dict[str, Any]) -> None:
    columns = [
        ("ours mixed", "ours_mixed_tokens_per_s"),
        ("ours single", "ours_single_tokens_per_s"),
        ("ours base", "ours_base_tokens_per_s"),
        ("peft mixed", "peft_mixed_tokens_per_s"),
        ("peft 1-by-1", "peft_sequential_tokens_per_s"),
        ("HF base", "base_tokens_per_s"),
        ("mixed/single", "mixed_vs_single"),
        ("single/base", "single_vs_base"),
        ("single/ours0", "single_vs_ours_base"),
    ]
    print(f"\n{report['base']}: {report['requests']} requests x {report['max_tokens']} tokens, batches of {BATCH}")
    print(f"{'E':>5}" + "".join(f"{title:>14}" for title, _ in columns) + "   (tokens/s)")
    for count, row in report["by_experts"].items():
        print(f"{count:>5}" + "".join(f"{row[key] if row[key] is not None else '-':>14}" for _, key in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny:llama-4l instead of SmolLM2 (< 1 min)")
    parser.add_argument("--base", default=None, help="base spec (default: SmolLM2, or tiny:llama-4l with --quick)")
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 100], help="expert counts E to measure")
    parser.add_argument("--requests", type=int, default=64, help="requests arriving together")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument(
        "--sequential-requests", type=int, default=16, help="requests timed for PEFT one-at-a-time (a sample)"
    )
    parser.add_argument("--only-ours", action="store_true", help="skip the PEFT and HF generate sides (fast)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each of our methods; the fastest is kept")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model cache (default var/test-model-cache)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default, one per core; 1: the engine's default, TORCH_THREADS_ENGINE)",
    )
    parser.add_argument(
        "--weights",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="the engine's base dtype (EngineConfig.weights; auto: bf16 on a CPU with native bf16 for SmolLM2); "
        "the HF and PEFT sides run in the same dtype",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.base = args.base or ("tiny:llama-4l" if args.quick else "packaged:smollm2-135m-instruct")
    args.cache_dir = args.cache_dir or Path(
        os.environ.get("DISTILLERY_TEST_MODEL_CACHE", REPO_ROOT / "var/test-model-cache")
    )
    args.sequential_requests = min(args.sequential_requests, args.requests)

    report: dict[str, Any] = {
        "base": args.base,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "batch_size": BATCH,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
        "by_experts": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        for count in args.experts:
            print(f"E={count} ...", file=sys.stderr, flush=True)
            report["by_experts"][str(count)] = row = bench_experts(args, count, Path(scratch))
            print(json.dumps({k: v for k, v in row.items() if k != "details"}), file=sys.stderr, flush=True)
    largest = report["by_experts"][str(max(args.experts))]
    report.update({key: value for key, value in largest.items() if key != "details"})
    if len(args.experts) > 1:
        smallest = report["by_experts"][str(min(args.experts))]
        report["mixed_large_e_vs_small_e"] = round(
            largest["ours_mixed_tokens_per_s"] / smallest["ours_mixed_tokens_per_s"], 3
        )
    name = "serve-quick" if args.quick else "serve"
    output = args.output or RESULTS / (f"{name}-ours.json" if args.only_ours else f"{name}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_table(report)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
