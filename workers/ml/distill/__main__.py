"""Headless distillation: `python -m workers.ml.distill --corpus DIR --recipe kd --out DIR`.

Every file under DIR is read as the web upload reads it (text, Markdown, HTML, PDF, Word, JSONL, CSV and ZIP,
judged by content; a file that cannot be read is reported and skipped), chunked by the student's tokenizer with
the web's chunking, and whole documents are held out deterministically. A progress bar with ETA follows each
stage; Ctrl-C stops at the next step and saves a checkpoint; `--resume` continues from it. Settings left out
take the CPU defaults (or the GPU ones with --gpu-defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from workers.ml.catalog import default_cache_dir
from workers.ml.catalog_types import CatalogError
from workers.ml.distill.config import (
    JUDGE_SETTINGS,
    SELF_REWARD_SETTINGS,
    DistillConfig,
    EndpointTeacherConfig,
    EvalSettings,
    KDSettings,
    LocalTeacherConfig,
    LoraSettings,
    QASettings,
    TrainingSettings,
)
from workers.ml.distill.corpus import DirectoryCorpus, read_directory
from workers.ml.distill.errors import DistillError
from workers.ml.distill.progress import Progress
from workers.ml.ingest.chunking import ChunkingConfig
from workers.ml.ingest.report import FileStatus

DESCRIPTION_WIDTH = 64  # a progress bar's description: longer would squeeze the bar on an 80-column terminal


def _parser() -> argparse.ArgumentParser:
    cpu = DistillConfig.for_cpu(output_dir=Path("."), model_cache_dir=Path("."))
    gpu = DistillConfig.for_gpu(output_dir=Path("."), model_cache_dir=Path("."))

    def default(name: str) -> str:
        """`default CPU / GPU` of a training setting, as the two presets set it."""
        on_cpu, on_gpu = getattr(cpu.training, name), getattr(gpu.training, name)
        return f"default {on_cpu}" if on_cpu == on_gpu else f"default {on_cpu} on the CPU, {on_gpu} with --gpu-defaults"

    parser = argparse.ArgumentParser(prog="python -m workers.ml.distill", description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True, help="Directory of the documents, subfolders included.")
    parser.add_argument("--out", type=Path, required=True, help="Output directory of the expert.")
    parser.add_argument(
        "--recipe",
        choices=["kd", "qa"],
        default="kd",
        help="kd (default): logit distillation on the text; qa: the teacher writes question-answer pairs.",
    )
    parser.add_argument("--student", default=cpu.student, help=f"Catalog spec of the base (default {cpu.student}).")
    parser.add_argument("--teacher", default=None, help="Catalog spec of a local teacher (default: the student).")
    parser.add_argument("--endpoint", default=None, help="Base URL of an OpenAI-compatible teacher instead.")
    parser.add_argument("--endpoint-model", default=None, help="Model name at --endpoint.")
    parser.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="Environment variable with the API key (default %(default)s)."
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="Model catalog cache (default: ./var/models).")
    parser.add_argument("--model-root", type=Path, action="append", default=[], help="Allowed hf: directory.")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N.")
    parser.add_argument("--gpu-defaults", action="store_true", help="Start from the GPU defaults, not the CPU ones.")
    parser.add_argument(
        "--chunk-tokens", type=int, default=256, help="Most student tokens in a chunk (default %(default)s)."
    )
    parser.add_argument(
        "--overlap-tokens",
        type=int,
        default=32,
        help="Tokens a chunk repeats from the one before (default %(default)s, as the web ingest).",
    )
    parser.add_argument(
        "--heldout", type=float, default=0.1, help="Share of the chunks held out for evaluation (default %(default)s)."
    )
    parser.add_argument(
        "--epochs", type=float, default=None, help=f"Passes over the training chunks ({default('epochs')})."
    )
    parser.add_argument("--token-budget", type=int, default=None, help="Train on this many tokens (overrides epochs).")
    parser.add_argument("--seq-len", type=int, default=None, help=f"Tokens per packed row ({default('seq_len')}).")
    parser.add_argument(
        "--micro-batch", type=int, default=None, help=f"Rows per forward pass ({default('micro_batch_size')})."
    )
    parser.add_argument(
        "--grad-accum", type=int, default=None, help=f"Micro-batches per optimizer step ({default('grad_accum')})."
    )
    parser.add_argument("--lr", type=float, default=None, help=f"Peak learning rate ({default('learning_rate')}).")
    parser.add_argument(
        "--lora-rank", type=int, default=None, help=f"LoRA rank, alpha twice it (default {cpu.lora.rank})."
    )
    parser.add_argument(
        "--alpha", type=float, default=None, help=f"kd: weight of the cross-entropy term (default {cpu.kd.alpha})."
    )
    parser.add_argument(
        "--divergence",
        choices=["forward_kl", "reverse_kl", "jsd"],
        default=None,
        help=f"kd: divergence from the teacher (default {cpu.kd.divergence}).",
    )
    parser.add_argument(
        "--context-chunks",
        type=int,
        default=None,
        help=f"kd: preceding chunks the teacher sees (default {cpu.kd.context_chunks}; 0: none).",
    )
    parser.add_argument("--no-teacher-cache", action="store_true", help="kd: run the teacher at every step.")
    parser.add_argument(
        "--pairs-per-chunk",
        type=int,
        default=None,
        help=f"qa: pairs the teacher writes per chunk (default {cpu.qa.pairs_per_chunk}).",
    )
    parser.add_argument(
        "--reward-threshold",
        type=int,
        default=None,
        help=f"qa: keep pairs the teacher grades at least this, 1-5 (default {cpu.qa.reward_threshold}).",
    )
    parser.add_argument(
        "--self-reward",
        choices=SELF_REWARD_SETTINGS,
        default=None,
        help="qa: the teacher grades each pair 1-5 and drops those under --reward-threshold (default auto: an "
        "endpoint teacher, or a local one of 1B+ parameters; smaller ones grade no better than chance).",
    )
    parser.add_argument(
        "--min-answer-grounding",
        type=float,
        default=None,
        help="qa: drop a pair unless this share (0-1) of its answer's words is in its chunk (default: 0.4 when the "
        "teacher does not grade its pairs, off when it does).",
    )
    parser.add_argument(
        "--no-self-reward",
        action="store_true",
        help="qa: keep every well-formed pair, ungraded (the same as --self-reward off).",
    )
    parser.add_argument(
        "--reasoning",
        action="store_true",
        help="qa: the teacher writes step-by-step reasoning before each answer, and the expert learns to reason "
        "in <think>…</think> before answering (R1-style).",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores).")
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default=None,
        help="torch.compile the student's decoder layers (on a GPU its loss too, and a local teacher's layers for "
        "its pass) (default auto: where a compiler is at hand and the work is long enough to pay it back).",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 on a GPU, and on a CPU with native bf16 (AVX512-BF16, AMX) for students of 50M+ "
        "parameters (1.6x faster there); else fp32. LoRA weights are fp32 either way.",
    )
    parser.add_argument(
        "--eval-set",
        type=Path,
        default=None,
        help="JSONL of {question, answer}, your own yardstick (both recipes): base, expert and teacher answer each "
        "question blind and are scored against its answer.",
    )
    parser.add_argument(
        "--teacher-judge",
        choices=JUDGE_SETTINGS,
        default=None,
        help="The teacher also grades each blind answer 1-5 against the reference (default auto: an endpoint "
        "teacher, or a local one of 1B+ parameters).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the split, the LoRA init and the data order.")
    parser.add_argument("--resume", action="store_true", help="Continue from the checkpoint in --out.")
    return parser


def _replace(settings: Any, **changes: Any) -> Any:
    return dataclasses.replace(settings, **{key: value for key, value in changes.items() if value is not None})


def build_config(args: argparse.Namespace) -> DistillConfig:
    base = DistillConfig.for_gpu if args.gpu_defaults else DistillConfig.for_cpu
    defaults = base(output_dir=args.out, model_cache_dir=args.cache_dir or default_cache_dir())
    if args.endpoint:
        if not args.endpoint_model:
            raise DistillError("--endpoint needs --endpoint-model.")
        teacher: Any = EndpointTeacherConfig(
            base_url=args.endpoint, model=args.endpoint_model, api_key=os.environ.get(args.api_key_env, "")
        )
    else:
        teacher = LocalTeacherConfig(spec=args.teacher or args.student)
    training: TrainingSettings = _replace(
        defaults.training,
        epochs=args.epochs,
        token_budget=args.token_budget,
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch,
        grad_accum=args.grad_accum,
        learning_rate=args.lr,
        num_threads=args.threads if args.threads is not None else os.cpu_count() or 1,
        device=args.device,
        seed=args.seed,
        torch_compile=args.compile,
    )
    if args.precision != "auto":  # bf16=None is auto; _replace skips None, so set it apart
        training = dataclasses.replace(training, bf16=args.precision == "bf16")
    lora: LoraSettings = _replace(
        defaults.lora, rank=args.lora_rank, alpha=2 * args.lora_rank if args.lora_rank else None
    )
    kd: KDSettings = _replace(
        defaults.kd,
        alpha=args.alpha,
        divergence=args.divergence,
        context_chunks=args.context_chunks,
        teacher_cache=False if args.no_teacher_cache else None,
    )
    qa: QASettings = _replace(
        defaults.qa,
        pairs_per_chunk=args.pairs_per_chunk,
        reward_threshold=args.reward_threshold,
        self_reward="off" if args.no_self_reward else args.self_reward,
        min_answer_grounding=args.min_answer_grounding,
        reasoning=True if args.reasoning else None,
    )
    evaluation: EvalSettings = _replace(defaults.evaluation, eval_set=args.eval_set, teacher_judge=args.teacher_judge)
    return defaults.replace(
        recipe=args.recipe,
        student=args.student,
        teacher=teacher,
        model_roots=tuple(args.model_root),
        training=training,
        lora=lora,
        kd=kd,
        qa=qa,
        evaluation=evaluation,
    )


def report_files(read: DirectoryCorpus) -> None:
    """One line for the corpus, then each file that was not read whole, with the reason (as the web shows it)."""
    counts = Counter(str(report.status) for report in read.reports)
    verdicts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    skipped = []
    if read.repeated_documents:
        skipped.append(f"{read.repeated_documents} repeated document(s)")
    if read.dropped_chunks:
        skipped.append(f"{read.dropped_chunks} repeated chunk(s)")
    tqdm.write(f"Read {len(read.reports)} file(s): {verdicts}" + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    for report in read.reports:
        if report.status != FileStatus.OK:
            tqdm.write(f"  {report.status}: {report.name}: {report.message}")


MIN_WORDS_KEPT = 12  # characters of the words before the counts kept, at least, when the counts stay whole


def shorten(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    """`text` within `width` characters. A message ends with its counts after the last ": " ("3 kept, 1 dropped,
    240/1,500 tokens"): they stay whole and the words before them are cut; else the middle is elided."""
    if len(text) <= width:
        return text
    words, separator, counts = text.rpartition(": ")
    room = width - len(separator) - len(counts) - 1  # for the words before the counts, and the "…"
    if separator and room >= MIN_WORDS_KEPT:
        return f"{words[:room]}…{separator}{counts}"
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head) :]}"


class ProgressBars:
    """One tqdm bar per stage, with tokens/s and loss in its postfix."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, progress: Progress) -> None:
        if progress.stage != self.stage or self.bar is None:
            self.close()
            self.stage = progress.stage
            self.bar = tqdm(total=progress.total_steps or None, desc=progress.stage, unit="step", dynamic_ncols=True)
        if progress.total_steps and self.bar.total != progress.total_steps:
            self.bar.total = progress.total_steps
        self.bar.n = progress.step
        postfix = {}
        if progress.loss is not None:
            postfix["loss"] = f"{progress.loss:.4f}"
        if progress.tokens_per_s:
            postfix["tok/s"] = f"{progress.tokens_per_s:,.0f}"
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        if progress.message:
            self.bar.set_description(shorten(f"{progress.stage}: {progress.message}"), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our own bars say what is happening
    # A damaged PDF's reader warnings ("EOF marker not found") would precede the file's verdict, which says it.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    # peft 0.21.2 reads `model.is_gradient_checkpointing` when it wraps the student, which transformers 5.24
    # deprecates in favour of `is_activation_checkpointing`: a FutureWarning on every run, nothing the user can
    # act on. Drop this filter once peft reads the new name.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        if stop_requested:
            raise KeyboardInterrupt  # a second Ctrl-C quits at once
        stop_requested = True
        tqdm.write("Stopping after the current step and saving a checkpoint (Ctrl-C again to quit now)…")

    try:
        config = build_config(args)
        if config.checkpoints.exists() and any(config.checkpoints.glob("step-*")) and not args.resume:
            raise DistillError(
                f"{config.checkpoints} holds a checkpoint of an earlier run: pass --resume to continue it, "
                "or choose another --out."
            )
        from workers.ml.catalog import CatalogConfig, load_model
        from workers.ml.distill.run import distill

        student = load_model(config.student, CatalogConfig(cache_dir=config.model_cache_dir), progress=tqdm.write)
        try:  # the chunk sizes and the held-out share are checked where they are used
            chunking = ChunkingConfig(chunk_tokens=args.chunk_tokens, overlap_tokens=args.overlap_tokens)
            read = read_directory(args.corpus, student.tokenizer, chunking, args.heldout, args.seed)
        except ValueError as error:
            raise DistillError(str(error)) from error
        del student
        report_files(read)
        corpus = read.snapshot
        tqdm.write(f"Corpus: {json.dumps(corpus.stats())}")
        signal.signal(signal.SIGINT, request_stop)
        bars = ProgressBars()
        try:
            result = distill(config, corpus, on_progress=bars, should_stop=lambda: stop_requested)
        finally:
            bars.close()
    except (DistillError, CatalogError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.status == "cancelled":
        if result.total_steps:
            print(f"Stopped at step {result.steps}/{result.total_steps}; continue with --resume.", file=sys.stderr)
        else:  # in the teacher pass or qa's generation, whose pairs so far are kept in OUT/work
            print("Stopped before training; continue with --resume.", file=sys.stderr)
        return 130
    heldout = result.metrics.get("heldout", {})
    summary = {
        "output_dir": str(result.output_dir),
        "seconds": round(result.seconds, 1),
        "perplexity": {name: round(scores["perplexity"], 3) for name, scores in heldout.items() if scores},
        "teacher_gap_closed": result.metrics.get("gap_closed"),
        **({"why_no_gap": result.metrics["gap_note"]} if result.metrics.get("gap_note") else {}),
        "kl_to_teacher": result.metrics.get("kl_to_teacher"),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
