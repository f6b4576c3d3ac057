"""Quality of recipe kd on a real manual: how much of the context-seeing teacher's advantage the expert keeps.

Corpus: the Python Language Reference topics shipped with CPython (`pydoc_data.topics`, the text behind
`help("assignment")` etc.), installed with every Python. The default takes the 20 topics on statements,
expressions and functions (`TOPICS`, ~150k characters) so that the teacher pass, training and evaluation fit in
20 minutes on 2 cores; `--all-topics` takes all of them. Whole documents are held out (deterministic split by
document).

Student: packaged SmolLM2-135M-Instruct + LoRA. Teacher: the same model, seeing the preceding chunk(s) of the
document (context distillation). The teacher's only advantage is the text it can see; the expert must learn
the manual well enough to do without it. `--teacher packaged:gemma3-270m` (the optional Gemma-3-270M, another
tokenizer) measures a larger teacher instead, through the cross-tokenizer loss (cross_tokenizer.py); the gap is
then measured in bits per byte, the measure both tokenizers share.

Reported on held-out chunks that have a preceding chunk (where the teacher's context exists), and on all
held-out chunks (the product's metrics.json): perplexity and bits per byte of base, expert and teacher, and
    gap closed = (ppl_base − ppl_expert) / (ppl_base − ppl_teacher)   (bits per byte across tokenizers).

    python bench/quality.py                  # ~20 minutes on 2 CPU cores
    python bench/quality.py --quick          # tiny models, a smoke test of the script (< 1 minute)
    python bench/quality.py --teacher packaged:gemma3-270m --out bench/results/quality-gemma.json
    python bench/quality.py --loss uld --out bench/results/quality-uld.json         # the same loss, SmolLM2 teaching
    python bench/quality.py --alpha 1.0 --out bench/results/quality-ce-only.json    # no teacher: cross-entropy only
    python bench/quality.py --grad-accum 1 --alpha 1.0 --out bench/results/quality-accum1-alpha1.0.json   # and so on

Writes bench/results/quality.json (or quality-quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from peft import PeftModel

from workers.ml.catalog import CatalogConfig, load_model
from workers.ml.distill.config import (
    DistillConfig,
    EvalSettings,
    KDSettings,
    LocalTeacherConfig,
    LoraSettings,
    TrainingSettings,
)
from workers.ml.distill.corpus import chunk_by_tokens, split_by_document
from workers.ml.distill.evaluate import gap_closed, score_lm
from workers.ml.distill.kd import context_text
from workers.ml.distill.run import distill

# The language-reference topics on statements, expressions and functions: one coherent manual.
TOPICS = (
    "assignment", "augassign", "binary", "booleans", "calls", "class", "compound", "comparisons", "exceptions", "for",
    "function", "if", "import", "lambda", "numbers", "return", "try", "while", "with", "yield",
)  # fmt: skip


def manual_documents(tokenizer: object, chunk_tokens: int, names: list[str]) -> list[tuple[str, list[str]]]:
    from pydoc_data.topics import topics

    documents = []
    for name in names:
        chunks = chunk_by_tokens(topics[name], tokenizer, chunk_tokens)
        if chunks:
            documents.append((name, chunks))
    return documents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny models and a few documents.")
    parser.add_argument(
        "--teacher", default=None, help="Teacher spec (default: the student itself, seeing the preceding chunks)."
    )
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("DISTILLERY_MODEL_CACHE", "var/models")))
    parser.add_argument("--work", type=Path, default=Path("var/bench/quality"))
    parser.add_argument("--all-topics", action="store_true", help="All 79 topics (about an hour on 2 cores).")
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--context-chunks", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--grad-accum",
        type=int,
        default=2,
        help="Micro-batches of 4 rows per optimizer step. Packed rows hold ~2 chunks, the ULD path's rows one "
        "(it does not pack): 1 here gives a packed run about the ULD run's tokens per step.",
    )
    parser.add_argument("--heldout", type=float, default=0.15)
    parser.add_argument("--max-eval-chunks", type=int, default=80)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads.")
    parser.add_argument(
        "--compile", choices=["auto", "on", "off"], default="auto", help="training.torch_compile (student layers)."
    )
    parser.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="training.bf16: auto is bf16 on a CPU with native bf16 (AVX512-BF16, AMX), else fp32.",
    )
    parser.add_argument(
        "--loss",
        choices=["auto", "uld"],
        default="auto",
        help="kd's loss: 'auto' (the product's: KL for a teacher of the student's vocabulary, ULD across "
        "vocabularies) or 'uld' (TRL's ULD whatever the vocabulary: with the default teacher, it tells whether "
        "Gemma's better expert came from the larger teacher or from the loss).",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    spec = "tiny:llama-2l" if args.quick else "packaged:smollm2-135m-instruct"
    teacher_spec = args.teacher or spec
    model_roots: tuple[Path, ...] = ()
    if args.loss == "uld" and args.quick and args.teacher is None:
        parser.error("--loss uld loads the teacher again from the catalog's cache, which --quick's tiny model lacks")
    if args.loss == "uld":
        # ULD runs the teacher at every step beside the student: it must be a model of its own, not the
        # student's base with the adapter off. The same weights, loaded again from the catalog's cache.
        if teacher_spec == spec:
            kind, name = spec.split(":", 1)  # the catalog keeps a converted model under <cache>/<kind>/<name>
            copy = (args.cache_dir / kind / name).resolve()
            model_roots = (copy.parent,)
            teacher_spec = f"hf:{copy}"
        from workers.ml.distill import run as run_module

        run_module._Models.local_other_vocabulary = property(lambda models: True)  # type: ignore[assignment,method-assign]
    catalog = CatalogConfig(cache_dir=args.cache_dir, device="cpu", model_roots=model_roots)
    loaded = load_model(spec, catalog)
    from pydoc_data.topics import topics

    names = sorted(topics)[:12] if args.quick else sorted(topics) if args.all_topics else list(TOPICS)
    documents = manual_documents(loaded.tokenizer, args.chunk_tokens, names)
    corpus = split_by_document(documents, heldout_fraction=args.heldout, seed=0, name="python-reference")
    budget = args.token_budget or (4_000 if args.quick else 48_000)
    config = DistillConfig(
        output_dir=args.work / ("expert-quick" if args.quick else "expert"),
        model_cache_dir=args.cache_dir,
        student=spec,
        teacher=LocalTeacherConfig(spec=teacher_spec),
        model_roots=model_roots,
        training=TrainingSettings(
            token_budget=budget,
            seq_len=256,
            micro_batch_size=4,
            grad_accum=args.grad_accum,
            learning_rate=args.lr or (3e-3 if args.quick else 1e-3),
            warmup_ratio=0.05,
            checkpoint_every=100,
            num_threads=args.threads,
            device="cpu",
            torch_compile=args.compile,
            bf16={"auto": None, "on": True, "off": False}[args.bf16],
        ),
        kd=KDSettings(alpha=args.alpha, context_chunks=args.context_chunks, context_max_tokens=256, cache_top_k=64),
        lora=LoraSettings(rank=args.rank, alpha=2 * args.rank, dropout=0.0),
        evaluation=EvalSettings(max_heldout_chunks=args.max_eval_chunks),
    )
    import shutil

    shutil.rmtree(config.output_dir, ignore_errors=True)
    started = time.perf_counter()
    stage_started: dict[str, float] = {}

    def report(progress: object) -> None:
        stage = progress.stage  # type: ignore[attr-defined]
        if stage not in stage_started:
            stage_started[stage] = time.perf_counter() - started
            print(f"[{stage_started[stage]:7.1f}s] {stage}", flush=True)

    result = distill(config, corpus, on_progress=report)
    product = result.metrics
    distill_s = time.perf_counter() - started
    marks = [*stage_started.items(), ("end", distill_s)]
    stage_seconds = {stage: round(marks[i + 1][1] - at, 1) for i, (stage, at) in enumerate(marks[:-1])}

    # Held-out chunks that have a preceding chunk: where the teacher's context exists.
    with_context = [chunk for chunk in corpus.heldout if chunk.position > 0][: args.max_eval_chunks]
    texts = [chunk.text for chunk in with_context]
    contexts = [context_text(corpus, chunk, config.kd) for chunk in with_context]
    base = load_model(spec, catalog).model
    scores = {"base": score_lm(base, loaded.tokenizer, texts, batch_size=4)}
    if teacher_spec == spec:
        scores["teacher"] = score_lm(base, loaded.tokenizer, texts, contexts=contexts, batch_size=4)
    else:
        teacher = load_model(teacher_spec, catalog)
        scores["teacher"] = score_lm(teacher.model, teacher.tokenizer, texts, contexts=contexts, batch_size=4)
        del teacher
    expert = PeftModel.from_pretrained(base, config.output_dir).eval()
    scores["expert"] = score_lm(expert, loaded.tokenizer, texts, batch_size=4)
    # Perplexities count each tokenizer's own tokens: across tokenizers only bits per byte compare.
    basis = "perplexity" if product.get("gap_basis") in (None, "perplexity") else "bits_per_byte"
    gap = gap_closed(*(getattr(scores[name], basis) for name in ("base", "expert", "teacher")))
    total_s = time.perf_counter() - started

    summary = {
        "corpus": "pydoc_data.topics (Python Language Reference topics)",
        "topics": names,
        "stats": corpus.stats(),
        "model": spec,
        "teacher": teacher_spec,
        "settings": {
            "token_budget": budget,
            "chunk_tokens": args.chunk_tokens,
            "context_chunks": args.context_chunks,
            "alpha": args.alpha,
            "learning_rate": config.training.learning_rate,
            "lora_rank": args.rank,
            "torch_compile": args.compile,
            "bf16": args.bf16,
            "loss": args.loss,
            "grad_accum": args.grad_accum,
            "optimizer_steps": product.get("training", {}).get("steps"),
        },
        "precision": {key: product.get("training", {}).get(key) for key in ("base_weights", "bf16_autocast")},
        "heldout_with_context": {
            "chunks": len(texts),
            **{name: {"perplexity": s.perplexity, "bits_per_byte": s.bits_per_byte} for name, s in scores.items()},
            "gap_closed": gap,
            "gap_basis": basis,
        },
        "heldout_all": {
            "chunks": product.get("heldout_chunks"),
            **product.get("heldout", {}),
            "gap_closed": product.get("gap_closed"),
            "gap_basis": product.get("gap_basis"),
        },
        "kl_to_teacher": product.get("kl_to_teacher"),
        "train_tokens": result.train_tokens,
        "distill_seconds": round(distill_s, 1),
        "stage_seconds": stage_seconds,
        "total_seconds": round(total_s, 1),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
    }
    print(f"\n{'held-out chunks with context':<32}{'perplexity':>12}{'bits/byte':>12}")
    for name in ("base", "expert", "teacher"):
        print(f"{name:<32}{scores[name].perplexity:>12.3f}{scores[name].bits_per_byte:>12.4f}")
    print(f"gap closed ({basis}): {gap:.1%}" if gap is not None else "gap closed: not applicable")
    print(f"all held-out chunks (metrics.json): gap closed {product.get('gap_closed')}")
    print(f"wall time {total_s:.0f} s ({result.train_tokens:,} training tokens)")
    out = args.out or Path("bench/results") / ("quality-quick.json" if args.quick else "quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
