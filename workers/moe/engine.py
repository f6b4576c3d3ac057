"""The resident inference engine: one shared base, many LoRA experts, concurrent requests in shared batches.

    engine = Engine(EngineConfig(base_spec="packaged:smollm2-135m-instruct"))
    stream = engine.submit(GenerationRequest(messages=[...], experts=[ExpertRef(id, location)]))
    for event in stream.events(): ...   # TokenDelta(text) ..., then Finished(...)

How a request flows:
1. `submit` (caller's thread) validates the request, tokenises it and loads + pins its experts, so every
   refusal is raised before anything is queued; then it queues a `Row` and returns its stream.
2. The scheduler thread takes queued rows: when idle it waits `batch_wait_ms` for concurrent arrivals to join,
   while a batch runs it admits arrivals at the next step, up to `max_batch_size` rows.
3. Each step is one forward pass for every row, whatever experts they use (workers/moe/lora.py); rows stream
   their text as they go and leave the batch when they finish or are cancelled, releasing their experts' pins.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from workers.ml.catalog import CatalogConfig, LoadedModel, default_cache_dir, load_model
from workers.ml.catalog_types import ProgressCallback, print_progress
from workers.ml.device import parameter_count, prefers_bf16
from workers.moe.adapters import (
    ExpertError,
    ExpertInfo,
    ExpertRef,
    ExpertRefused,
    ExpertStore,
    ExpertUnavailable,
    LoadedExpert,
)
from workers.moe.generation import Batch, Row, SamplingParams, TextStream, forward_last, left_pad
from workers.moe.lora import LoraPool

__all__ = [
    "Engine",
    "EngineClosed",
    "EngineConfig",
    "ExpertError",
    "ExpertInfo",
    "ExpertRef",
    "ExpertRefused",
    "ExpertUnavailable",
    "Finished",
    "GenerationRequest",
    "GenerationStream",
    "InvalidRequest",
    "TokenDelta",
]

ROLES = ("system", "user", "assistant")
# EngineConfig.weights: None is auto (workers.ml.device.prefers_bf16).
WEIGHT_SETTINGS: dict[str, bool | None] = {"auto": None, "bf16": True, "fp32": False}
MAX_STOP_SEQUENCES = 4  # as OpenAI's API


class InvalidRequest(ValueError):
    """A request the engine cannot run as given; str(error) is one sentence for the API client."""


class EngineClosed(RuntimeError):
    """The engine was closed (or its scheduler stopped) before the request finished."""


@dataclass(frozen=True)
class EngineConfig:
    """What the engine serves and how much it may hold."""

    # The base model
    base_spec: str = field(
        default="packaged:smollm2-135m-instruct",
        metadata={"help": "Catalog spec of the shared student base every expert must have been trained on."},
    )
    model_cache_dir: Path = field(
        default_factory=default_cache_dir,
        metadata={"help": "The catalog's cache of converted weights (DATA_DIR/models)."},
    )
    model_roots: tuple[Path, ...] = field(
        default=(), metadata={"help": "Directories `hf:` base specs may load from (MODEL_ROOTS)."}
    )
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda' or 'cuda:N'."})
    weights: str = field(
        default="auto",
        metadata={
            "help": "The base's (and the experts' slots') dtype: 'auto' (the catalog's on a GPU; on a CPU bf16 "
            "where it has native bf16 and the base has 50M+ parameters, decoding ~1.6-1.9x faster, else fp32), "
            "'bf16' or 'fp32' (fp32 matches PEFT's fp32 logits to 2e-4)."
        },
    )
    # Batching
    max_batch_size: int = field(default=16, metadata={"help": "Rows decoded together in one forward pass."})
    batch_wait_ms: float = field(
        default=5.0,
        metadata={"help": "How long an idle scheduler waits after the first arrival for others to join its batch."},
    )
    # Experts
    max_loaded_experts: int = field(
        default=64, metadata={"help": "LoRA slots: experts held in memory at once (least recently used go first)."}
    )
    adapter_memory_bytes: int = field(
        default=2 * 1024**3, metadata={"help": "Memory budget of the loaded experts' weights, in bytes."}
    )
    expert_cache_dir: Path | None = field(
        default=None,
        metadata={"help": "Where experts stored on S3 are downloaded; default: <model_cache_dir>/experts."},
    )
    max_experts_per_request: int = field(default=4, metadata={"help": "Top-k limit: experts mixed in one request."})
    # Request limits
    max_new_tokens_limit: int = field(default=2048, metadata={"help": "The largest max_tokens a request may ask."})
    max_prompt_tokens: int = field(default=4096, metadata={"help": "The longest prompt, in base tokens."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_cache_dir", Path(self.model_cache_dir))
        object.__setattr__(self, "model_roots", tuple(Path(root) for root in self.model_roots))
        if self.expert_cache_dir is None:
            object.__setattr__(self, "expert_cache_dir", self.model_cache_dir / "experts")
        if self.max_batch_size < 1 or self.max_loaded_experts < 1:
            raise ValueError("max_batch_size and max_loaded_experts must be at least 1.")
        if self.weights not in WEIGHT_SETTINGS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_SETTINGS)}, not {self.weights!r}.")


@dataclass
class GenerationRequest:
    """One completion: a raw `prompt` or chat `messages` (exactly one), the experts to mix, and sampling."""

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    experts: list[ExpertRef] = field(default_factory=list)
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks and tests: generate exactly max_tokens tokens


@dataclass(frozen=True)
class TokenDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    text: str


_CLOSED = object()  # ends a cancelled stream's iterator


class GenerationStream:
    """The events of one submitted request; `events()` blocks, `cancel()` frees its row at the next step."""

    def __init__(self) -> None:
        self._events: queue.Queue[Any] = queue.Queue()
        self._cancelled = threading.Event()

    def events(self) -> Iterator[TokenDelta | Finished]:
        """TokenDelta events as text is decoded, then one Finished; raises the error if generation failed."""
        while True:
            event = self._events.get()
            if event is _CLOSED:
                return
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished):
                return

    def cancel(self) -> None:
        self._cancelled.set()

    def _put(self, event: Any) -> None:
        """Called by the scheduler thread: a TokenDelta, a Finished, an exception, or the end of a cancelled row."""
        self._events.put(event)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass(eq=False)
class _Job:
    """A queued row and what must happen exactly once when it leaves: unpin its experts."""

    row: Row
    stream: GenerationStream
    experts: list[LoadedExpert]
    done: bool = False


def _set_weights_dtype(loaded: LoadedModel, bf16: bool | None) -> None:
    """Cast the base to the dtype `bf16` asks for, before any expert slot is made (they take the base's dtype).

    Auto keeps the catalog's choice on a GPU (bf16, or fp16 where bf16 is missing) and takes bf16 on a CPU where
    `prefers_bf16` says so; the experts' weights are checked by the stored weights' hash, not by dtype.
    """
    if bf16 is None and loaded.device.type != "cpu":
        return
    loaded.cast(torch.bfloat16 if prefers_bf16(bf16, loaded.device, parameter_count(loaded.model)) else torch.float32)


class Engine:
    """Loads the base once, serves requests from a scheduler thread; see the module docstring."""

    def __init__(self, config: EngineConfig, *, progress: ProgressCallback = print_progress) -> None:
        self.config = config
        catalog = CatalogConfig(cache_dir=config.model_cache_dir, model_roots=config.model_roots, device=config.device)
        self._loaded = load_model(config.base_spec, catalog, progress=progress)
        if self._loaded.info.content_hash is None:
            raise ExpertUnavailable(f"The weights of '{config.base_spec}' have no content hash to check experts by.")
        _set_weights_dtype(self._loaded, WEIGHT_SETTINGS[config.weights])
        self.model = self._loaded.model
        self.model.eval()
        self.tokenizer = self._loaded.tokenizer
        self.pool = LoraPool.wrap(self.model, max_slots=config.max_loaded_experts)
        self.store = ExpertStore(
            self.pool, self._loaded.info.content_hash, config.adapter_memory_bytes, config.expert_cache_dir
        )
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._batch = Batch(self.model, self.pool, self._eos_ids(), self._pad_id, self._max_positions())
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._jobs: dict[int, _Job] = {}  # id(row) -> job, for the rows the scheduler holds
        self._closed = threading.Event()
        self._stats_lock = threading.Lock()
        self._decode_steps = 0
        self._rows_decoded = 0
        self._prefills = 0
        self._tokens_generated = 0
        self._requests_finished = 0
        self._thread = threading.Thread(target=self._run, name="moe-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public API

    @property
    def base_identity(self) -> dict[str, Any]:
        return {"spec": self._loaded.spec, "content_hash": self._loaded.info.content_hash}

    def load_expert(self, ref: ExpertRef) -> ExpertInfo:
        """Load `ref` now (preloading); raises ExpertRefused / ExpertUnavailable."""
        return self.store.load(ref).info

    def loaded_experts(self) -> list[str]:
        return self.store.loaded()

    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Validate, load the experts, and queue the request; raises before queueing anything on refusal."""
        if self._closed.is_set():
            raise EngineClosed("The engine is shut down.")
        prompt_ids, params = self._prepare(request)
        experts = self.store.acquire(request.experts)
        stream = GenerationStream()
        adapters = tuple((expert.slot, ref.weight) for expert, ref in zip(experts, request.experts, strict=True))
        job: _Job
        row = Row(
            prompt_ids=prompt_ids,
            params=params,
            adapters=adapters,
            text=TextStream(self.tokenizer, params.stop),
            on_delta=lambda text: stream._put(TokenDelta(text)),
            on_finish=lambda reason, prompt, completion, text: self._on_finish(job, reason, prompt, completion, text),
            is_cancelled=lambda: stream.cancelled,
        )
        job = _Job(row, stream, experts)
        self._queue.put(job)
        if self._closed.is_set():  # closed while we queued: once the scheduler is gone, nobody will take it
            self._thread.join(timeout=30)
            self._fail(job, EngineClosed("The engine is shut down."))
        return stream

    def generate(self, request: GenerationRequest) -> Finished:
        """Run `request` to the end (blocking) and return its Finished event."""
        for event in self.submit(request).events():
            if isinstance(event, Finished):
                return event
        raise EngineClosed("The request ended without finishing.")

    def logits(self, input_ids: list[list[int]], experts_per_row: list[list[ExpertRef]]) -> torch.Tensor:
        """Last-position logits (B, V) of one batched forward pass (rows left-padded), each row with its experts."""
        if len(input_ids) != len(experts_per_row):
            raise InvalidRequest("input_ids and experts_per_row must have one entry per row.")
        acquired: list[list[LoadedExpert]] = []
        try:
            for refs in experts_per_row:
                acquired.append(self.store.acquire(refs))
            rows = [
                [(expert.slot, ref.weight) for expert, ref in zip(experts, refs, strict=True)]
                for experts, refs in zip(acquired, experts_per_row, strict=True)
            ]
            ids, mask, positions = left_pad(input_ids, self._pad_id, self._batch.device)
            return forward_last(self.model, self.pool, self.pool.prepare(rows), ids, mask, positions, None)
        finally:
            for experts in acquired:
                self.store.release(experts)

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            steps, rows = self._decode_steps, self._rows_decoded
            return {
                "batches_run": steps,
                "prefills_run": self._prefills,
                "mean_batch_size": round(rows / steps, 2) if steps else 0.0,
                "tokens_generated": self._tokens_generated,
                "requests_finished": self._requests_finished,
                "running_rows": len(self._batch),
                "queued_requests": self._queue.qsize(),
                "loaded_experts": len(self.store.loaded()),
                "adapter_bytes": self.store.memory_bytes(),
                "adapter_pool_bytes": self.pool.memory_bytes(),
                "weights": str(self._loaded.dtype).removeprefix("torch."),
            }

    def close(self) -> None:
        """Stop the scheduler; requests still queued or running end with EngineClosed."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ validation

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], SamplingParams]:
        config = self.config
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequest("Send exactly one of 'prompt' and 'messages'.")
        if not isinstance(request.temperature, int | float) or not 0.0 <= request.temperature <= 2.0:
            raise InvalidRequest("'temperature' must be between 0 and 2.")
        if not isinstance(request.top_p, int | float) or not 0.0 < request.top_p <= 1.0:
            raise InvalidRequest("'top_p' must be greater than 0 and at most 1.")
        if not isinstance(request.max_tokens, int) or not 1 <= request.max_tokens <= config.max_new_tokens_limit:
            raise InvalidRequest(f"'max_tokens' must be between 1 and {config.max_new_tokens_limit}.")
        if len(request.stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in request.stop):
            raise InvalidRequest(f"'stop' takes at most {MAX_STOP_SEQUENCES} non-empty strings.")
        if request.seed is not None and not isinstance(request.seed, int):
            raise InvalidRequest("'seed' must be an integer.")
        if len(request.experts) > config.max_experts_per_request:
            raise InvalidRequest(f"A request may mix at most {config.max_experts_per_request} experts.")
        if len({ref.id for ref in request.experts}) != len(request.experts):
            raise InvalidRequest("An expert is listed twice.")
        for ref in request.experts:
            if not isinstance(ref.weight, int | float) or not math.isfinite(ref.weight) or ref.weight <= 0:
                raise InvalidRequest(f"The weight of expert '{ref.id}' must be a positive number.")
        prompt_ids = self._tokenize(request)
        if not prompt_ids:
            raise InvalidRequest("The prompt is empty.")
        if len(prompt_ids) > config.max_prompt_tokens:
            raise InvalidRequest(f"The prompt has {len(prompt_ids)} tokens; the limit is {config.max_prompt_tokens}.")
        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=float(request.temperature),
            top_p=float(request.top_p),
            stop=tuple(request.stop),
            seed=request.seed,
            ignore_eos=request.ignore_eos,
        )
        return prompt_ids, params

    def _tokenize(self, request: GenerationRequest) -> list[int]:
        if request.prompt is not None:
            if not isinstance(request.prompt, str):
                raise InvalidRequest("'prompt' must be a string.")
            return list(self.tokenizer.encode(request.prompt, add_special_tokens=False))
        messages = request.messages or []
        if not messages:
            raise InvalidRequest("'messages' must not be empty.")
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise InvalidRequest(f"Each message needs a role among {', '.join(ROLES)}.")
            if not isinstance(message.get("content"), str):
                raise InvalidRequest("Each message needs a 'content' string.")
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest("This base model has no chat template; send a 'prompt' instead of 'messages'.")
        clean = [{"role": m["role"], "content": m["content"]} for m in messages]
        encoded = self.tokenizer.apply_chat_template(clean, add_generation_prompt=True, tokenize=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded  # transformers 5 returns a BatchEncoding
        return list(ids)

    # ------------------------------------------------------------ the scheduler thread

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                new = self._take_arrivals()
                if new is None:
                    break
                try:
                    if new:
                        with self._stats_lock:
                            self._prefills += 1
                        self._batch.add([job.row for job in new])
                    if len(self._batch):
                        rows = len(self._batch)
                        self._batch.step()
                        with self._stats_lock:
                            self._decode_steps += 1
                            self._rows_decoded += rows
                except Exception as exc:  # a failed forward fails its rows, never the engine
                    for row in self._batch.fail(exc):
                        self._fail(self._jobs.get(id(row)), exc)
                    for job in new:
                        self._fail(job, exc)
        finally:
            closed = EngineClosed("The engine was shut down before the request finished.")
            for row in self._batch.fail(closed):
                self._fail(self._jobs.get(id(row)), closed)
            while True:
                try:
                    queued = self._queue.get_nowait()  # a job, or the shutdown's None (_fail ignores it)
                except queue.Empty:
                    break
                self._fail(queued, closed)

    def _take_arrivals(self) -> list[_Job] | None:
        """Queued jobs that fit the batch; when idle, block for the first and wait briefly for company."""
        new: list[_Job] = []
        room = self.config.max_batch_size - len(self._batch)
        if not len(self._batch):
            first = self._queue.get()
            if first is None:
                return None
            new.append(first)
            deadline = time.monotonic() + self.config.batch_wait_ms / 1000
            while len(new) < room and (remaining := deadline - time.monotonic()) > 0:
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if job is None:
                    return None
                new.append(job)
        while len(new) < room:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return None
            new.append(job)
        for job in new:
            self._jobs[id(job.row)] = job
        return new

    def _on_finish(self, job: _Job, reason: str, prompt_tokens: int, completion_tokens: int, text: str) -> None:
        if not self._release(job):
            return
        with self._stats_lock:
            self._tokens_generated += completion_tokens
            self._requests_finished += 1
        if reason == "cancelled":
            job.stream._put(_CLOSED)
        else:
            job.stream._put(Finished(reason, prompt_tokens, completion_tokens, text))  # type: ignore[arg-type]

    def _fail(self, job: _Job | None, error: BaseException) -> None:
        if job is not None and self._release(job):
            job.stream._put(error)

    def _release(self, job: _Job) -> bool:
        """Unpin the job's experts once; False when that already happened."""
        if job.done:
            return False
        job.done = True
        self._jobs.pop(id(job.row), None)
        self.store.release(job.experts)
        return True

    # ------------------------------------------------------------ base model facts

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        for value in configured if isinstance(configured, Sequence) else [configured]:
            if value is not None:
                ids.add(int(value))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    def _max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
