"""Configuration of a distillation run, in the style of TRL's configs: grouped dataclasses, a help per field.

`DistillConfig.for_cpu()` and `.for_gpu()` give defaults that fit a 2-core CPU and one GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Recipe = Literal["kd", "qa"]
Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
CompileSetting = Literal["auto", "on", "off"]
COMPILE_SETTINGS: tuple[str, ...] = ("auto", "on", "off")
JudgeSetting = Literal["auto", "on", "off"]
JUDGE_SETTINGS: tuple[str, ...] = ("auto", "on", "off")
SelfRewardSetting = Literal["auto", "on", "off"]
SELF_REWARD_SETTINGS: tuple[str, ...] = ("auto", "on", "off")


@dataclass(frozen=True)
class LocalTeacherConfig:
    """A teacher from the model catalog, run in this process."""

    spec: str = field(
        default="packaged:smollm2-135m-instruct",
        metadata={"help": "Model catalog spec: packaged:…, hf:… (under MODEL_ROOTS) or tiny:…"},
    )

    @property
    def label(self) -> str:
        return self.spec


@dataclass(frozen=True)
class EndpointTeacherConfig:
    """A teacher behind an OpenAI-compatible HTTP API (vLLM, a hosted closed model, another Distillery)."""

    base_url: str = field(metadata={"help": "API base URL, e.g. https://api.openai.com/v1 or http://host:8000/v1."})
    model: str = field(metadata={"help": "Model name the endpoint serves."})
    api_key: str = field(default="", repr=False, metadata={"help": "Bearer key; never logged or stored in output."})
    max_concurrency: int = field(default=4, metadata={"help": "Requests in flight at once."})
    timeout_s: float = field(default=120.0, metadata={"help": "Timeout of one request, in seconds."})
    max_retries: int = field(default=5, metadata={"help": "Retries on 429 and 5xx, with exponential backoff."})
    tokenizer_spec: str | None = field(
        default=None,
        metadata={
            "help": "Catalog spec of the endpoint model's tokenizer, if known; `kd` through an endpoint needs it "
            "to equal the student's and the endpoint to return prompt logprobs (vLLM's prompt_logprobs)."
        },
    )
    max_tokens_budget: int | None = field(
        default=None,
        metadata={"help": "Stop sending requests once this many tokens (in + out) were used (a spend cap)."},
    )
    connect_address: str | None = field(
        default=None,
        metadata={
            "help": "Connect to this IP address instead of resolving base_url's host again: the address a caller's "
            "SSRF check approved (Host header and TLS name stay the URL's). None resolves as usual."
        },
    )

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.base_url}"


TeacherConfig = LocalTeacherConfig | EndpointTeacherConfig


@dataclass(frozen=True)
class LoraSettings:
    rank: int = field(default=16, metadata={"help": "LoRA rank r."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the LoRA input. 0 by default: the teacher's soft targets already regularise (92% of "
            "the teacher gap closed in bench/quality.py without it), and compiled layers only pay on a CPU "
            "without dropout (a step 1.38x faster; with 0.05, no faster)."
        },
    )
    target_modules: tuple[str, ...] | str = field(
        default="all-linear",
        metadata={"help": "Modules to adapt: 'all-linear' (every linear layer but the output head) or names."},
    )

    def to_peft(self) -> Any:
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules),
        )


@dataclass(frozen=True)
class TrainingSettings:
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training chunks (may be fractional)."})
    token_budget: int | None = field(
        default=None, metadata={"help": "Stop after this many training tokens; overrides epochs when set."}
    )
    seq_len: int = field(default=512, metadata={"help": "Tokens per packed training row."})
    micro_batch_size: int = field(default=4, metadata={"help": "Packed rows per forward pass."})
    grad_accum: int = field(default=2, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of AdamW."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps spent warming the lr up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    seed: int = field(default=0, metadata={"help": "Seed of LoRA init, data order and dropout."})
    checkpoint_every: int = field(default=50, metadata={"help": "Save a resumable checkpoint every N steps."})
    eval_every: int = field(
        default=0,
        metadata={"help": "Score the student on held-out chunks every N steps (the held-out curve); 0: off."},
    )
    eval_chunks: int = field(default=16, metadata={"help": "Held-out chunks scored at each evaluation point."})
    num_threads: int = field(default=0, metadata={"help": "torch threads; 0 keeps the process setting."})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda' or 'cuda:N'."})
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Compute in bf16 (autocast; on a CPU the frozen base and a local teacher are also stored in "
            "bf16; LoRA weights stay fp32). None: on for CUDA, and on CPUs with native bf16 (AVX512-BF16, AMX) "
            "for students of 50M+ parameters (1.6x faster there); else off."
        },
    )
    torch_compile: CompileSetting = field(
        default="auto",
        metadata={
            "help": "torch.compile the student's decoder layers for training (on a GPU its loss too, and a local "
            "teacher's layers for its pass over the corpus): 'auto' where a compiler is at hand and the work is "
            "long enough to pay the compilation back (on 2 CPU cores, from ~37k tokens of SmolLM2; on an H200, "
            "~3M tokens of a 0.5B student; a CPU's teacher never), 'on' always (an error where it cannot run), "
            "'off' never."
        },
    )
    cuda_graphs: bool = field(
        default=False,
        metadata={
            "help": "On a GPU, capture the compiled decoder layers as CUDA graphs (torch.compile's "
            "'reduce-overhead' mode), replaying each layer's kernels without the host launching them one by one. "
            "Experimental and off: an H200 profile showed ~18% of a compiled step's time as host time, and the "
            "gain is not yet measured (bench/gpu_distill.py --cuda-graphs). Needs torch_compile to compile; "
            "no effect on a CPU."
        },
    )

    def __post_init__(self) -> None:
        if self.torch_compile not in COMPILE_SETTINGS:
            raise ValueError(
                f"training.torch_compile must be one of {', '.join(COMPILE_SETTINGS)}, not {self.torch_compile!r}."
            )
        if self.cuda_graphs and self.torch_compile == "off":
            raise ValueError(
                "training.cuda_graphs captures compiled layers: it needs training.torch_compile on or auto."
            )


@dataclass(frozen=True)
class KDSettings:
    alpha: float = field(
        default=0.5, metadata={"help": "Weight of the cross-entropy on the labels; 1 − alpha weighs the divergence."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature τ (loss scaled by τ²)."})
    divergence: Divergence = field(
        default="forward_kl",
        metadata={"help": "forward_kl = KL(teacher‖student), reverse_kl = KL(student‖teacher), jsd = TRL's JSD(β)."},
    )
    jsd_beta: float = field(default=0.5, metadata={"help": "β of the generalised JSD (0: forward KL, 1: reverse)."})
    context_chunks: int = field(
        default=1,
        metadata={"help": "Preceding chunks of the same document the teacher sees (context distillation); 0: off."},
    )
    context_max_tokens: int = field(default=256, metadata={"help": "Cap on the teacher's context tokens."})
    teacher_cache: bool = field(
        default=True, metadata={"help": "Run the teacher once and keep its top-k logits on disk for every epoch."}
    )
    cache_top_k: int = field(default=64, metadata={"help": "Teacher logits kept per position in the cache."})


@dataclass(frozen=True)
class QASettings:
    pairs_per_chunk: int = field(default=2, metadata={"help": "Question–answer pairs the teacher writes per chunk."})
    reasoning: bool = field(
        default=False, metadata={"help": "Ask for step-by-step reasoning before the final answer (R1-style)."}
    )
    self_reward: SelfRewardSetting = field(
        default="auto",
        metadata={
            "help": "The teacher grades each pair 1–5 and pairs under reward_threshold are dropped. auto: when the "
            "teacher is an endpoint or a local model of 1B+ parameters (a smaller one grades no better than chance "
            "and drops nearly every pair); on; off."
        },
    )
    reward_threshold: int = field(default=3, metadata={"help": "Keep pairs graded at least this (1–5)."})
    min_answer_grounding: float | None = field(
        default=None,
        metadata={
            "help": "Share (0–1) of an answer's content words that must appear in its chunk, or the pair is dropped "
            "as ungrounded. None: 0.4 when the teacher does not grade its pairs (a small teacher's invented "
            "answers share few words with the chunk), 0 (off) when it does (the grader judges groundedness, and a "
            "capable teacher's paraphrases share fewer words)."
        },
    )
    max_new_tokens: int = field(default=384, metadata={"help": "Generation length cap for the teacher."})
    generation_batch: int = field(
        default=0,
        metadata={
            "help": "Conversations generated together: the teacher's pairs, grades and references, and the base's "
            "and expert's answers in evaluation. 0: 32 on a CPU (1.7× the rate of 8 with SmolLM2 on 2 cores, "
            "for +0.9 GB of key/value cache), 64 on a GPU, for an endpoint twice its concurrency (at least 32). "
            "Cancelling stops a batch within one token; a crash loses at most one batch."
        },
    )
    answer_kd: bool = field(
        default=True,
        metadata={"help": "Add logit KD on answer tokens (teacher sees the chunk) when tokenizers match."},
    )

    def __post_init__(self) -> None:
        if self.self_reward not in SELF_REWARD_SETTINGS:
            raise ValueError(
                f"qa.self_reward must be one of {', '.join(SELF_REWARD_SETTINGS)}, not {self.self_reward!r}."
            )
        if self.generation_batch < 0:
            raise ValueError(f"qa.generation_batch must be 0 (by device) or more, not {self.generation_batch}.")
        if self.min_answer_grounding is not None and not 0 <= self.min_answer_grounding <= 1:
            raise ValueError(f"qa.min_answer_grounding must be between 0 and 1, not {self.min_answer_grounding}.")


@dataclass(frozen=True)
class EvalSettings:
    max_heldout_chunks: int = field(default=64, metadata={"help": "Held-out chunks scored (perplexity, KL)."})
    eval_set: Path | None = field(
        default=None, metadata={"help": "Optional JSONL of {question, answer}: the company's own yardstick."}
    )
    max_eval_questions: int = field(default=50, metadata={"help": "Questions answered per model in QA scoring."})
    teacher_judge: JudgeSetting = field(
        default="auto",
        metadata={
            "help": "QA scoring: the teacher also grades each blind answer 1–5 against the reference. auto: when "
            "the teacher is an endpoint or a local model of 1B+ parameters (smaller ones judge no better than "
            "chance); on; off."
        },
    )

    def __post_init__(self) -> None:
        # Checked here, not after training: perplexity, KL and gap closed are measured on these chunks.
        if self.max_heldout_chunks < 1:
            raise ValueError(f"evaluation.max_heldout_chunks must be 1 or more, not {self.max_heldout_chunks}.")
        if self.max_eval_questions < 0:
            raise ValueError(
                f"evaluation.max_eval_questions must be 0 (no QA scoring) or more, not {self.max_eval_questions}."
            )
        if self.teacher_judge not in JUDGE_SETTINGS:
            raise ValueError(
                f"evaluation.teacher_judge must be one of {', '.join(JUDGE_SETTINGS)}, not {self.teacher_judge!r}."
            )


@dataclass(frozen=True)
class DistillConfig:
    """Everything one distillation run needs; paths, never database rows."""

    output_dir: Path = field(metadata={"help": "Where the expert (adapter, card, metrics, logs) is written."})
    model_cache_dir: Path = field(metadata={"help": "The model catalog's cache (DATA_DIR/models)."})
    recipe: Recipe = field(default="kd", metadata={"help": "kd: logit distillation; qa: teacher-written Q&A SFT."})
    teacher: TeacherConfig = field(default_factory=LocalTeacherConfig, metadata={"help": "The teacher."})
    student: str = field(
        default="packaged:smollm2-135m-instruct", metadata={"help": "Catalog spec of the shared student base."}
    )
    model_roots: tuple[Path, ...] = field(default=(), metadata={"help": "Directories `hf:` paths may load from."})
    checkpoint_dir: Path | None = field(
        default=None, metadata={"help": "Resumable checkpoints; default: output_dir/checkpoints."}
    )
    work_dir: Path | None = field(
        default=None, metadata={"help": "Teacher cache and scratch files; default: output_dir/work."}
    )
    embedder: str = field(
        default="packaged:all-minilm-l6-v2", metadata={"help": "Sentence embedder of the routing signature."}
    )
    signature_centroids: int = field(
        default=16,
        metadata={
            "help": "k-means centroids in the routing signature. 16, not 4: a documentation corpus mixes many "
            "topics, and with the router's count-weighted soft maximum over centroids, 16 route 95% of held-out "
            "questions to the right expert in bench/route.py (4 centroids: 87%; 16 ranked by the plain max: 88%)."
        },
    )
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA adapter shape."})
    training: TrainingSettings = field(default_factory=TrainingSettings, metadata={"help": "Optimisation."})
    kd: KDSettings = field(default_factory=KDSettings, metadata={"help": "Logit distillation (recipe kd)."})
    qa: QASettings = field(default_factory=QASettings, metadata={"help": "Sequence-level distillation (qa)."})
    evaluation: EvalSettings = field(default_factory=EvalSettings, metadata={"help": "Evaluation."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        object.__setattr__(self, "model_cache_dir", Path(self.model_cache_dir))
        object.__setattr__(self, "model_roots", tuple(Path(p) for p in self.model_roots))
        object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir or self.output_dir / "checkpoints"))
        object.__setattr__(self, "work_dir", Path(self.work_dir or self.output_dir / "work"))
        if self.recipe not in ("kd", "qa"):
            raise ValueError(f"Unknown recipe {self.recipe!r}: use 'kd' or 'qa'.")

    @property
    def checkpoints(self) -> Path:
        """Resumable checkpoints (checkpoint_dir, resolved)."""
        return Path(self.checkpoint_dir or self.output_dir / "checkpoints")

    @property
    def work(self) -> Path:
        """Teacher cache and scratch files (work_dir, resolved)."""
        return Path(self.work_dir or self.output_dir / "work")

    @classmethod
    def for_cpu(cls, **overrides: Any) -> DistillConfig:
        """Defaults for a 2-core CPU: short rows, small batches, a modest LoRA."""
        training = TrainingSettings(seq_len=256, micro_batch_size=4, grad_accum=2, num_threads=2, device="cpu")
        return cls(**{"training": training, "lora": LoraSettings(rank=16, alpha=32), **overrides})

    @classmethod
    def for_gpu(cls, **overrides: Any) -> DistillConfig:
        """Defaults for one GPU: long rows, bf16, large micro-batches."""
        training = TrainingSettings(seq_len=1024, micro_batch_size=16, grad_accum=1, device="cuda", bf16=True)
        return cls(**{"training": training, "lora": LoraSettings(rank=32, alpha=64), **overrides})

    def replace(self, **changes: Any) -> DistillConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The config as JSON for the expert card and metrics, without secrets."""

        def convert(value: Any) -> Any:
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return {
                    item.name: convert(getattr(value, item.name))
                    for item in dataclasses.fields(value)
                    if item.name != "api_key"
                }
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return [convert(item) for item in value]
            return value

        result: dict[str, Any] = convert(self)
        result["teacher"]["type"] = "endpoint" if isinstance(self.teacher, EndpointTeacherConfig) else "local"
        return result
