"""Distillation throughput: our recipe `kd` (teacher cache + packing) against TRL's GKDTrainer, same job.

Both sides distil the same teacher into the same student with the same LoRA, the same chunks, the same sequence
length, the same effective batch (8 rows per optimizer step: 4 per micro-batch x 2 accumulated) and exactly the
same number of epochs, with the same objective: forward KL(teacher || student) at temperature 1 on the chunk
tokens and nothing else (ours: KDSettings(alpha=0, divergence="forward_kl"); GKD: beta=0, lmbda=0 (off-policy,
no generation), seq_kd off). Each side runs in a fresh subprocess of its own, one after the other, so its peak
RSS is its own and the two never share the cores.

    .venv/bin/python bench/distill.py --quick           # tiny models, synthetic corpus, < 1 min on 2 cores
    .venv/bin/python bench/distill.py                   # SmolLM2-135M teacher and student, Django docstrings
    .venv/bin/python bench/distill.py --repeats 2       # run each side twice, keep the faster run
    .venv/bin/python bench/distill.py --quick --profile /tmp/prof  # also cProfile each worker into /tmp/prof

Results: bench/results/distill.json (distill-quick.json with --quick).

What is timed (wall clock, per side), starting after imports and model loading (both excluded, and reported
apart as `load_s`; ours loads one model when teacher and student are the same spec, TRL loads two):
- ours: what `workers.ml.distill.run.distill()` does up to the end of training, through its own helpers
  (`_prepare_kd`: tokenising the chunks, running the teacher once over them into the on-disk top-k cache;
  then `get_peft_model` and `train`: packed rows, cached targets, final checkpoint). `distill()` itself always
  goes on to evaluate and export the expert, which GKD has no counterpart of, so the bench stops where training
  ends.
- TRL: building the `datasets.Dataset` of chat records, `GKDTrainer(...)` (wraps the student with the LoRA) and
  `trainer.train()`: the teacher runs live on every micro-batch of every epoch, the collator renders and
  tokenises the chat records on every batch.

Tokens: the chunk tokens trained on (as our recipe tokenises them, truncated to seq_len) x epochs, the same
number for both; tokens/s = tokens / wall s. GKD sees each chunk as the assistant turn after a fixed chat
prompt (an empty system turn, so SmolLM2's template does not add its default system prompt, and the user turn
"Continue the document."); its loss covers the chunk tokens plus the turn's closing `<|im_end|>\\n`, and its
`max_length` leaves room for the prompt so no chunk token is truncated away.
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import hashlib
import json
import os
import platform
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS = REPO_ROOT / "bench" / "results"
USER_TURN = "Continue the document."
CORPUS_PACKAGE = "django"  # pinned in pyproject.toml, so its docstrings are the same text on every machine


@dataclass(frozen=True)
class Settings:
    student: str
    teacher: str
    corpus: str  # "synthetic" or "docstrings:<package>"
    max_chunks: int
    seq_len: int
    micro_batch_size: int = 4
    grad_accum: int = 2
    epochs: int = 3
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    cache_top_k: int = 64
    threads: int = 2
    seed: int = 0

    @property
    def effective_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum


QUICK = Settings(
    student="tiny:llama-2l",
    teacher="tiny:llama-4l",
    corpus="synthetic",
    max_chunks=16,
    seq_len=64,
    lora_rank=8,
    lora_alpha=16,
)
DEFAULT = Settings(
    student="packaged:smollm2-135m-instruct",
    teacher="packaged:smollm2-135m-instruct",
    corpus=f"docstrings:{CORPUS_PACKAGE}",
    max_chunks=24,
    seq_len=256,
)


def _quiet(_message: str) -> None:
    """Catalog progress lines would clutter the table."""


# ---------------------------------------------------------------- corpus


def synthetic_documents(count: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """A small regular language (as in the distillation tests) with chunks of uneven length, like real ones."""
    rng = random.Random(seed)
    names = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    documents = []
    for number in range(count):
        chunks = []
        for _ in range(3):
            name = rng.choice(names)
            sentences = rng.randint(1, 4)
            chunks.append(
                " ".join(f"the {name} code is {name} and the {name} value is {name}." for _ in range(sentences))
            )
        documents.append((f"doc-{number}.txt", chunks))
    return documents


def docstring_documents(package: str) -> list[tuple[str, str]]:
    """One document per module of `package`: its module, class and function docstrings, in source order."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"The package {package!r} is not installed.")
    root = Path(spec.origin).parent
    documents = []
    for path in sorted(root.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree, *(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef | ast.FunctionDef))]
        texts = [doc for node in nodes if (doc := ast.get_docstring(node))]
        if texts:
            documents.append((str(path.relative_to(root.parent)), "\n\n".join(texts)))
    return documents


def build_corpus(settings: Settings, tokenizer: Any) -> list[tuple[str, list[str]]]:
    """Documents as (id, chunk texts), at most `max_chunks` chunks of at most seq_len tokens in all."""
    from workers.ml.distill.corpus import chunk_by_tokens

    if settings.corpus == "synthetic":
        candidates = [(doc_id, chunks) for doc_id, chunks in synthetic_documents(settings.max_chunks, settings.seed)]
    else:
        package = settings.corpus.split(":", 1)[1]
        documents = docstring_documents(package)
        # A deterministic spread over the package rather than its first modules alphabetically.
        documents.sort(key=lambda doc: hashlib.sha256(f"{settings.seed}:{doc[0]}".encode()).hexdigest())
        candidates = [(doc_id, chunk_by_tokens(text, tokenizer, settings.seq_len)) for doc_id, text in documents]
    return first_chunks(candidates, settings.max_chunks)


def first_chunks(documents: list[tuple[str, list[str]]], count: int) -> list[tuple[str, list[str]]]:
    """The documents cut down to their first `count` chunks in all."""
    kept, total = [], 0
    for doc_id, chunks in documents:
        taken = chunks[: count - total]
        if taken:
            kept.append((doc_id, taken))
            total += len(taken)
    return kept


def covers_exact_epochs(segments: Any, settings: Settings, pad_token_id: int) -> bool:
    """Whether our DataPlan trains every segment exactly `epochs` times, as GKD's Trainer does.

    A guard: runs recorded before the plan counted each epoch's own packing had to pick a corpus size for it.
    """
    from collections import Counter

    from workers.ml.distill.config import TrainingSettings
    from workers.ml.distill.train import DataPlan

    training = TrainingSettings(
        epochs=settings.epochs,
        seq_len=settings.seq_len,
        micro_batch_size=settings.micro_batch_size,
        grad_accum=settings.grad_accum,
        seed=settings.seed,
    )
    plan = DataPlan(segments, training, pad_token_id)
    try:
        seen = Counter(
            index
            for step in range(plan.total_steps)
            for rows in plan.step_micro_batches(step)
            for row in rows
            for index in row
        )
    except IndexError:
        return False
    return seen == Counter({index: settings.epochs for index in range(len(segments))})


def snapshot(documents: list[tuple[str, list[str]]]) -> Any:
    from workers.ml.distill.corpus import split_by_document

    return split_by_document(documents, heldout_fraction=0.0, name="bench")


# ---------------------------------------------------------------- workers (one per subprocess)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far: the clock that other load on the machine moves least."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _kd_settings(settings: Settings) -> Any:
    from workers.ml.distill.config import KDSettings

    return KDSettings(
        alpha=0.0,
        temperature=settings.temperature,
        divergence="forward_kl",
        context_chunks=0,
        teacher_cache=True,
        cache_top_k=settings.cache_top_k,
    )


def worker_ours(settings: Settings, documents: list[tuple[str, list[str]]], cache_dir: Path, work: Path) -> dict:

    from workers.ml.distill import run as distill_run
    from workers.ml.distill.config import DistillConfig, LocalTeacherConfig, LoraSettings, TrainingSettings
    from workers.ml.distill.progress import ignore_progress, never_stop

    config = DistillConfig(
        output_dir=work / "expert",
        model_cache_dir=cache_dir,
        recipe="kd",
        teacher=LocalTeacherConfig(spec=settings.teacher),
        student=settings.student,
        lora=LoraSettings(
            rank=settings.lora_rank,
            alpha=settings.lora_alpha,
            dropout=settings.lora_dropout,
            target_modules="all-linear",
        ),
        training=TrainingSettings(
            epochs=settings.epochs,
            seq_len=settings.seq_len,
            micro_batch_size=settings.micro_batch_size,
            grad_accum=settings.grad_accum,
            learning_rate=settings.learning_rate,
            warmup_ratio=settings.warmup_ratio,
            max_grad_norm=settings.max_grad_norm,
            seed=settings.seed,
            checkpoint_every=0,  # only the final checkpoint (TRL saves nothing: save_strategy="no")
            num_threads=settings.threads,
            device="cpu",
            bf16=False,  # fp32 like TRL's side (bf16=False there): the comparison is of the loops, not precisions
        ),
        kd=_kd_settings(settings),
    )
    corpus = snapshot(documents)
    with distill_run._torch_threads(config.training.num_threads):
        loading = time.perf_counter()
        models = distill_run._load(config, ignore_progress)
        started, cpu_started = time.perf_counter(), _cpu_s()
        rss_loaded = _peak_rss_mb()
        prepared = distill_run._prepare_kd(config, corpus, models, ignore_progress, never_stop, {})
        assert prepared is not None
        teacher_done = time.perf_counter()
        rss_after_teacher = _peak_rss_mb()
        plan, loss_fn = prepared
        _expert, outcome = distill_run.train_expert(config, models, plan, loss_fn, ignore_progress, never_stop)
        finished, cpu_finished = time.perf_counter(), _cpu_s()
    if outcome.train_tokens != plan.tokens([list(range(len(plan.segments)))]) * settings.epochs:
        raise RuntimeError(f"ours trained {outcome.train_tokens} tokens, not exactly {settings.epochs} epochs")
    return {
        "load_s": started - loading,
        "wall_s": finished - started,
        "cpu_s": cpu_finished - cpu_started,
        "teacher_pass_s": teacher_done - started,
        "peak_rss_after_loading_mb": rss_loaded,
        "peak_rss_after_teacher_pass_mb": rss_after_teacher,
        "train_s": finished - teacher_done,
        "steps": outcome.steps_done,
        "rows_per_epoch": sum(len(mb) for mb in plan.epoch(0)),
        "segments": len(plan.segments),
        "trained_tokens": outcome.train_tokens,
        "final_loss": outcome.final_loss,
        "models_loaded": 1 if models.shared else 2,
    }


def chat_records(documents: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": ""},
                {"role": "user", "content": USER_TURN},
                {"role": "assistant", "content": text},
            ]
        }
        for _, chunks in documents
        for text in chunks
    ]


def worker_trl(settings: Settings, documents: list[tuple[str, list[str]]], cache_dir: Path, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from workers.ml.catalog import CatalogConfig, load_model
    from workers.ml.device import configure_torch_threads

    configure_torch_threads(settings.threads)
    catalog = CatalogConfig(cache_dir=cache_dir, device="cpu")
    loading = time.perf_counter()
    student = load_model(settings.student, catalog, progress=_quiet)
    teacher = load_model(settings.teacher, catalog, progress=_quiet)  # a frozen copy even when the spec is the same
    loaded = time.perf_counter()
    tokenizer = student.tokenizer
    records = chat_records(documents)
    prompt = tokenizer.apply_chat_template(records[0]["messages"][:-1], tokenize=False, add_generation_prompt=True)
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    max_length = settings.seq_len + prompt_tokens + 8  # room for the prompt and <|im_end|>\n: no chunk token cut
    # The bench's own check, outside the clock: GKD's collator would silently drop tokens from a longer record.
    rendered = (tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records)
    longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered)
    if longest > max_length:
        raise RuntimeError(f"a chat record has {longest} tokens > max_length {max_length}: GKD would truncate it")
    started, cpu_started = time.perf_counter(), _cpu_s()
    rss_loaded = _peak_rss_mb()
    dataset = Dataset.from_list(records)
    args = GKDConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        weight_decay=0.0,
        max_grad_norm=settings.max_grad_norm,
        seed=settings.seed,
        max_length=max_length,
        temperature=settings.temperature,
        lmbda=0.0,
        beta=0.0,
        seq_kd=False,
        disable_dropout=False,  # keep the LoRA dropout, as ours does
        gradient_checkpointing=False,  # SFTConfig turns it on by default; ours does not checkpoint activations
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
    )
    torch.manual_seed(settings.seed)
    trainer = GKDTrainer(
        model=student.model,
        teacher_model=teacher.model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    init_done = time.perf_counter()
    output = trainer.train()
    finished, cpu_finished = time.perf_counter(), _cpu_s()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "load_s": loaded - loading,
        "wall_s": finished - started,
        "cpu_s": cpu_finished - cpu_started,
        "init_s": init_done - started,
        "peak_rss_after_loading_mb": rss_loaded,
        "train_s": finished - init_done,
        "steps": trainer.state.global_step,
        "final_loss": losses[-1] if losses else output.training_loss,
        "prompt_tokens": prompt_tokens,
        "max_length": max_length,
        "longest_record_tokens": longest,
        "models_loaded": 2,
    }


def run_worker(kind: str, job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    settings = Settings(**job["settings"])
    work = Path(job["work"])
    function = worker_ours if kind == "ours" else worker_trl
    arguments = (settings, [(doc_id, chunks) for doc_id, chunks in job["documents"]], Path(job["cache_dir"]), work)
    if job.get("profile"):
        profiler = cProfile.Profile()
        result = profiler.runcall(function, *arguments)
        profiler.dump_stats(job["profile"])
    else:
        result = function(*arguments)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


# ---------------------------------------------------------------- parent


def _child(kind: str, job_path: Path, threads: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, "--job", str(job_path)]
    thread_vars = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "TQDM_DISABLE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **dict.fromkeys(thread_vars, str(threads)),
    }
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-8000:])
        raise SystemExit(f"the {kind} worker failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)  # without importing it: importing trl alone takes seconds
        except PackageNotFoundError:
            return None

    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: installed(name) for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate")},
    }


# Phases of each worker, as (label, file suffix, function): the outermost matching function's cumulative time.
PHASES = {
    "ours": [
        ("worker (loading + prepare_kd + get_peft_model + train)", "bench/distill.py", "worker_ours"),
        ("  loading (catalog load_model)", "workers/ml/catalog.py", "load_model"),
        ("  tokenise chunks (build_kd_data)", "distill/kd.py", "build_kd_data"),
        ("  teacher pass into the cache (open_or_build)", "distill/teacher_cache.py", "open_or_build"),
        ("    teacher forward", "distill/teacher_cache.py", "teacher_forward|_target_logits"),
        ("    top-k of the teacher logits", "distill/losses.py", "teacher_topk"),
        ("    cache shard writes", "distill/teacher_cache.py", "_write_shard"),
        ("  get_peft_model", "peft/mapping_func.py", "get_peft_model"),
        ("  train()", "distill/train.py", "train"),
        ("    collate packed rows", "distill/train.py", "collate"),
        ("    gather cached targets", "distill/teacher_cache.py", "gather"),
        ("    student forward (LoRA)", "peft/peft_model.py", "forward"),
        ("    loss (distillation_loss)", "distill/losses.py", "distillation_loss"),
        ("    backward", "", "run_backward"),
        ("    clip_grad_norm_", "torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
        ("    optimizer step", "torch/optim/adam.py", "step"),
        ("    checkpoint", "distill/train.py", "save_checkpoint"),
    ],
    "trl": [
        ("worker (loading + dataset + GKDTrainer + train)", "bench/distill.py", "worker_trl"),
        ("  loading (catalog load_model)", "workers/ml/catalog.py", "load_model"),
        ("  GKDTrainer.__init__", "gkd/gkd_trainer.py", "__init__"),
        ("  trainer.train()", "transformers/trainer.py", "train"),
        ("    collator (chat template + tokenise)", "trl/experimental/utils.py", "__call__"),
        ("    compute_loss", "gkd/gkd_trainer.py", "compute_loss"),
        ("      student forward (LoRA)", "peft/peft_model.py", "forward"),
        ("      student + teacher forward", "llama/modeling_llama.py", "forward"),
        ("      loss (generalized_jsd_loss)", "gkd/gkd_trainer.py", "generalized_jsd_loss"),
        ("    backward", "", "run_backward"),
        ("    clip_grad_norm_", "torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
        ("    optimizer step", "torch/optim/adam.py", "step"),
    ],
}


def profile_phases(path: Path, kind: str) -> list[dict[str, Any]]:
    """Cumulative seconds and call counts of each phase of PHASES[kind] in a worker's cProfile.

    A phase names a function by file suffix and name ("|" separates alternatives; an empty suffix matches
    built-ins by substring, e.g. autograd's run_backward); the outermost match (largest cumulative time) counts.
    """
    table = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = []
    for label, suffix, functions in PHASES[kind]:
        names = functions.split("|")
        found = []
        for (filename, _, name), (_, calls, _, cumulative, _) in table.items():
            if suffix:
                hit = name in names and filename.replace(os.sep, "/").endswith(suffix)
            else:
                hit = any(wanted in name for wanted in names) and filename == "~"
            if hit:
                found.append((cumulative, calls))
        if found:
            cumulative, calls = max(found)
            rows.append({"phase": label, "seconds": round(cumulative, 2), "calls": calls})
    return rows


def _print_profile(path: Path, kind: str) -> list[dict[str, Any]]:
    rows = profile_phases(path, kind)
    print(f"\n-- {kind} worker under cProfile ({path}; includes loading; cProfile adds overhead)")
    for row in rows:
        print(f"  {row['phase']:<52}{row['seconds']:>9.2f} s{row['calls']:>7} calls")
    return rows


def run(settings: Settings, cache_dir: Path, repeats: int, profile_dir: Path | None) -> dict[str, Any]:
    from workers.ml.catalog import CatalogConfig, load_model
    from workers.ml.distill.kd import build_kd_data

    catalog = CatalogConfig(cache_dir=cache_dir, device="cpu")
    # Converts a packaged model into the cache on first use, so no worker ever times a conversion.
    tokenizer = load_model(settings.student, catalog, progress=print).tokenizer
    if settings.teacher != settings.student:
        load_model(settings.teacher, catalog, progress=print)
    candidates = build_corpus(settings, tokenizer)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # The largest corpus (<= max_chunks chunks) that our plan trains for exactly `epochs` epochs, as GKD does.
    for count in range(sum(len(chunks) for _, chunks in candidates), 0, -1):
        documents = first_chunks(candidates, count)
        corpus = snapshot(documents)
        data = build_kd_data(corpus.train, corpus, tokenizer, _kd_settings(settings), settings.seq_len)
        if covers_exact_epochs(data.segments, settings, pad_token_id):
            break
    else:
        raise SystemExit("no corpus size gives exact epochs")
    chunk_tokens = data.tokens
    lengths = sorted(len(segment) for segment in data.segments)
    machine = _machine()
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as scratch:
        for attempt in range(repeats):
            for kind in ("ours", "trl"):  # one after the other: never two trainers on the cores at once
                work = Path(scratch) / f"{kind}-{attempt}"
                work.mkdir()
                job = {
                    "settings": asdict(settings),
                    "documents": documents,
                    "cache_dir": str(cache_dir),
                    "work": str(work),
                    "profile": str(profile_dir / f"distill-profile-{kind}.pstats") if profile_dir else None,
                }
                job_path = work / "job.json"
                job_path.write_text(json.dumps(job))
                load_before = os.getloadavg()[0]
                result = _child(kind, job_path, settings.threads)
                result["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                result["tokens"] = chunk_tokens * settings.epochs
                result["tokens_per_s"] = result["tokens"] / result["wall_s"]
                runs[kind].append(result)
                print(
                    f"  {kind} run {attempt + 1}: {result['wall_s']:.1f} s ({result['cpu_s']:.0f} CPU s), "
                    f"{result['tokens_per_s']:.1f} tokens/s "
                    f"(1-min load average before/after: {result['load_average_1min']})"
                )
    best = {kind: min(results, key=lambda r: r["wall_s"]) for kind, results in runs.items()}
    profiles = {}
    if profile_dir:
        for kind in ("ours", "trl"):
            profiles[kind] = _print_profile(profile_dir / f"distill-profile-{kind}.pstats", kind)
    ours, trl = best["ours"], best["trl"]
    return {
        "benchmark": "distill",
        "timed": "after imports and model loading (load_s, reported apart) until training ends; ours includes "
        "tokenising, the teacher pass into the top-k cache and the final checkpoint, TRL includes dataset and "
        "GKDTrainer construction",
        "settings": {
            **asdict(settings),
            "effective_batch": settings.effective_batch,
            "objective": "forward KL(teacher || student), temperature 1, no CE (ours alpha=0; GKD beta=0, lmbda=0)",
            "ours": "recipe kd: context_chunks=0, teacher cache on (top-k), packing on",
            "trl": f"trl.experimental.gkd.GKDTrainer, chat record: empty system turn, user {USER_TURN!r}, "
            "assistant = the chunk",
            "chunks_requested": settings.max_chunks,
            "chunks": len(data.segments),
            "documents": len(documents),
            "chunk_tokens": chunk_tokens,
            "chunk_tokens_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
        },
        "machine": machine,
        "repeats": repeats,
        "runs": runs,
        "ours_tokens_per_s": round(ours["tokens_per_s"], 2),
        "trl_tokens_per_s": round(trl["tokens_per_s"], 2),
        "ratio": round(ours["tokens_per_s"] / trl["tokens_per_s"], 2),
        "ours_wall_s": round(ours["wall_s"], 2),
        "trl_wall_s": round(trl["wall_s"], 2),
        "ours_cpu_s": round(ours["cpu_s"], 1),
        "trl_cpu_s": round(trl["cpu_s"], 1),
        "cpu_ratio": round(trl["cpu_s"] / ours["cpu_s"], 2),
        "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "trl_peak_rss_mb": round(trl["peak_rss_mb"], 1),
        "tokens": chunk_tokens * settings.epochs,
        **({"profile_phases": profiles} if profiles else {}),
    }


def _print_table(report: dict[str, Any]) -> None:
    rows = [
        ("ours (kd: teacher cache + packing)", "ours"),
        (f"TRL {report['machine']['trl']} GKDTrainer", "trl"),
    ]
    print(f"\n{'method':<38}{'tokens':>9}{'wall s':>9}{'tokens/s':>10}{'peak RSS MB':>13}{'CPU s':>8}{'steps':>7}")
    for label, kind in rows:
        best = min(report["runs"][kind], key=lambda r: r["wall_s"])
        print(
            f"{label:<38}{report['tokens']:>9}{best['wall_s']:>9.1f}{best['tokens_per_s']:>10.1f}"
            f"{best['peak_rss_mb']:>13.0f}{best['cpu_s']:>8.0f}{best['steps']:>7}"
        )
    ours = min(report["runs"]["ours"], key=lambda r: r["wall_s"])
    print(
        f"ratio ours/TRL: {report['ratio']}x tokens/s, {report['cpu_ratio']}x less CPU time "
        f"(ours: teacher pass {ours['teacher_pass_s']:.1f} s, "
        f"training {ours['train_s']:.1f} s; {report['machine']['usable_cores']} cores, "
        f"{report['machine']['cpu_model']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny models and a synthetic corpus (< 1 min)")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="model cache (default var/models; --quick: var/test-model-cache)"
    )
    parser.add_argument("--chunks", type=int, default=None, help="training chunks (default 16 quick, 24 full)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side; the faster one is reported")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="cProfile each worker into DIR/distill-profile-{ours,trl}.pstats and print the top",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.job)
        return
    settings = QUICK if args.quick else DEFAULT
    if args.chunks:
        settings = Settings(**{**asdict(settings), "max_chunks": args.chunks})
    default_cache = REPO_ROOT / "var" / ("test-model-cache" if args.quick else "models")
    cache_dir = (args.cache_dir or default_cache).resolve()
    output = args.output or RESULTS / ("distill-quick.json" if args.quick else "distill.json")
    profile_dir = args.profile.resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    report = run(settings, cache_dir, args.repeats, profile_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_table(report)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
