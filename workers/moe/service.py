"""What the engine process serves: routing among given experts, and generation through a backend.

Two generation backends behind one interface (`Backend.open`):

- `LocalBackend` (default): Distillery's own engine (`workers/moe/engine.py`): the shared base loaded once,
  experts in an LRU slot pool, concurrent requests with different experts batched in one forward pass, top-k
  experts mixed per request with the router's weights.
- `VllmBackend`: forwards generation to a vLLM server started with `--enable-lora` (OpenAI protocol; `model` =
  the adapter's name, adapters loaded at run time through `/v1/load_lora_adapter`). Routing, tenant restriction
  and metering stay in Distillery; top-k falls back to the best expert, since vLLM applies one adapter per request.

Pure ML: no Django. The web app sends ids and artifact locations it read from its database; nothing here decides
which experts a tenant may use.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

Event = dict[str, Any]


class RequestError(ValueError):
    """The request cannot be served as asked (bad parameters, an expert that cannot be loaded): HTTP 400."""


class NotReady(RuntimeError):
    """The engine is still loading, or its backend is unreachable: HTTP 503."""


@dataclass
class ServiceConfig:
    backend: str = field(default="local", metadata={"help": "Generation backend: 'local' (ours) or 'vllm'."})
    embedder: str = field(
        default="packaged:all-minilm-l6-v2",
        metadata={"help": "The platform embedder: the one that made the experts' routing signatures."},
    )
    query_weights: str = field(
        default="auto",
        metadata={
            "help": "The router's query encoder weights (workers/moe/query_embedder.py): auto (int8 where the CPU "
            "has the kernel), int8, bf16, fp16 or fp32."
        },
    )
    vllm_url: str = field(default="", metadata={"help": "vLLM's OpenAI base URL, e.g. http://gpu-host:8000/v1."})
    vllm_model: str = field(default="", metadata={"help": "The base model name vLLM serves (`model` for base)."})
    vllm_api_key: str = field(default="EMPTY", metadata={"help": "API key vLLM expects (--api-key), if any."})
    vllm_timeout_s: float = field(default=120.0, metadata={"help": "Seconds to wait for vLLM to answer."})


# ---------------------------------------------------------------- locations


def read_signature_json(location: str) -> dict[str, Any]:
    """signature.json of the expert at `location` (a directory, or s3://bucket/key).

    Read afresh each time (not from the adapter download cache): a signature can be recomputed after the fact.
    """
    if location.startswith("s3://"):
        try:
            import boto3  # only S3 deployments need it
        except ImportError as error:
            raise OSError("The expert is on S3 but boto3 is not installed (pip install boto3).") from error
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        client = boto3.client("s3", endpoint_url=os.environ.get("AWS_S3_ENDPOINT_URL") or None)
        key = f"{prefix.rstrip('/')}/signature.json" if prefix else "signature.json"
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as error:
            raise OSError(f"could not read s3://{bucket}/{key}: {error}") from error
        return dict(json.loads(body.decode("utf-8")))
    return dict(json.loads((Path(location) / "signature.json").read_text(encoding="utf-8")))


# ---------------------------------------------------------------- routing


class RoutingService:
    """The router plus the signatures it learnt, read from candidates' locations on first sight."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self._lock = threading.Lock()
        self._refused: dict[str, str] = {}  # expert id -> why its signature could not be used
        self._fingerprints: dict[str, str] = {}  # expert id -> fingerprint of the signature registered for it

    def _ensure(self, candidates: list[dict[str, Any]]) -> list[str]:
        from workers.ml.distill.signature import RoutingSignature
        from workers.moe.router import SignatureMismatch

        ids = []
        for candidate in candidates:
            expert_id = str(candidate.get("id", ""))
            if not expert_id:
                raise RequestError("Every candidate needs an id.")
            ids.append(expert_id)
            # A changed fingerprint means the signature was recomputed (another embedder): read it again.
            fingerprint = str(candidate.get("signature") or "")
            if self._fingerprints.get(expert_id) == fingerprint and (
                self.router.known(expert_id) or expert_id in self._refused
            ):
                continue
            with self._lock:
                if self._fingerprints.get(expert_id) == fingerprint and self.router.known(expert_id):
                    continue
                self._fingerprints[expert_id] = fingerprint
                self._refused.pop(expert_id, None)
                try:
                    signature = RoutingSignature.from_json(read_signature_json(str(candidate.get("location", ""))))
                    self.router.register(expert_id, signature)
                except (OSError, ValueError, KeyError, SignatureMismatch) as error:
                    # No usable signature (none computed, another embedder): the expert is never routed to, and
                    # the decision says so; its id is retried after a restart (signatures can be recomputed).
                    self._refused[expert_id] = str(error)
                    self.router.unregister(expert_id)
                    logger.warning("expert %s has no usable routing signature: %s", expert_id, error)
        return ids

    def route(self, query: str, candidates: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
        from workers.moe.router import RouterSettings

        if not isinstance(query, str):
            raise RequestError("'query' must be a string.")
        try:
            router_settings = RouterSettings(**settings)
        except (TypeError, ValueError) as error:
            raise RequestError(f"Bad router settings: {error}") from error
        ids = self._ensure(candidates)
        decision = self.router.route(query, ids, router_settings)
        # The wire format of the engine's API (server.py): pairs, best first, and the timings at the top level.
        return {
            "experts": [[expert_id, weight] for expert_id, weight in decision.experts],
            "scores": [[expert_id, score] for expert_id, score in decision.scores],
            "fallback": decision.fallback,
            "best_score": decision.best_score,
            "threshold": router_settings.threshold,
            "embed_ms": round(decision.embed_ms, 3),
            "score_ms": round(decision.score_ms, 3),
            "unknown": list(decision.unknown),
            "unusable": {expert_id: self._refused[expert_id] for expert_id in ids if expert_id in self._refused},
        }


# ---------------------------------------------------------------- generation backends


class Backend(Protocol):
    name: str

    def ready(self) -> bool: ...

    def open(self, payload: dict[str, Any], experts: list[dict[str, Any]]) -> Iterator[Event]:
        """Validate and start one generation; raise RequestError/NotReady before yielding anything."""
        ...

    def health(self) -> dict[str, Any]: ...


class LocalBackend:
    name = "local"

    def __init__(self, make_engine: Callable[[], Any]) -> None:
        self._make_engine = make_engine
        self.engine: Any = None
        self.error: str | None = None

    def load(self) -> None:
        try:
            self.engine = self._make_engine()
        except Exception as error:  # reported on /health; the process stays up so the operator sees why
            logger.exception("the inference engine could not load its base model")
            self.error = str(error)

    def ready(self) -> bool:
        return self.engine is not None

    def open(self, payload: dict[str, Any], experts: list[dict[str, Any]]) -> Iterator[Event]:
        from workers.moe.adapters import ExpertRef, ExpertRefused, ExpertUnavailable
        from workers.moe.engine import Finished, GenerationRequest, InvalidRequest, TokenDelta

        if self.engine is None:
            raise NotReady(self.error or "The engine is still loading its base model.")
        try:
            request = GenerationRequest(
                prompt=payload.get("prompt"),
                messages=payload.get("messages"),
                experts=[
                    ExpertRef(id=str(ref["id"]), location=str(ref["location"]), weight=float(ref.get("weight", 1.0)))
                    for ref in experts
                ],
                max_tokens=int(payload.get("max_tokens", 256)),
                temperature=float(payload.get("temperature", 0.7)),
                top_p=float(payload.get("top_p", 1.0)),
                stop=list(payload.get("stop") or []),
                seed=payload.get("seed"),
            )
            stream = self.engine.submit(request)
        except (InvalidRequest, ExpertRefused, ExpertUnavailable, KeyError, TypeError, ValueError) as error:
            raise RequestError(str(error)) from error

        def events() -> Iterator[Event]:
            try:
                for event in stream.events():
                    if isinstance(event, TokenDelta):
                        yield {"type": "delta", "text": event.text}
                    elif isinstance(event, Finished):
                        yield {
                            "type": "finished",
                            "text": event.text,
                            "finish_reason": event.finish_reason,
                            "prompt_tokens": event.prompt_tokens,
                            "completion_tokens": event.completion_tokens,
                        }
            finally:
                stream.cancel()  # a no-op once finished; frees the row when the client went away

        return events()

    def health(self) -> dict[str, Any]:
        if self.engine is None:
            return {"backend": self.name, "error": self.error}
        return {
            "backend": self.name,
            "base": self.engine.base_identity,
            "experts_loaded": self.engine.loaded_experts(),
            "stats": self.engine.stats(),
        }


class VllmBackend:
    """Generation on a vLLM server (`vllm serve BASE --enable-lora`, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).

    Each expert is loaded into vLLM once under its id (`POST /v1/load_lora_adapter`), then named as `model`.
    The artifact location must be a path the vLLM host can read (the shared data volume).
    """

    name = "vllm"

    def __init__(self, config: ServiceConfig) -> None:
        if not config.vllm_url or not config.vllm_model:
            raise ValueError("The vllm backend needs VLLM_URL (…/v1) and VLLM_MODEL (the served base name).")
        from openai import OpenAI

        self.config = config
        self.base_url = config.vllm_url.rstrip("/")
        self.client = OpenAI(
            base_url=self.base_url, api_key=config.vllm_api_key or "EMPTY", timeout=config.vllm_timeout_s, max_retries=1
        )
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    def ready(self) -> bool:
        return True

    def _load_adapter(self, expert: dict[str, Any]) -> str:
        import httpx

        name = str(expert["id"])
        if name in self._loaded:
            return name
        with self._lock:
            if name in self._loaded:
                return name
            try:
                response = httpx.post(
                    f"{self.base_url}/load_lora_adapter",
                    json={"lora_name": name, "lora_path": str(expert["location"])},
                    headers={"Authorization": f"Bearer {self.config.vllm_api_key}"},
                    timeout=self.config.vllm_timeout_s,
                )
            except httpx.HTTPError as error:
                raise NotReady(f"vLLM is not answering ({error.__class__.__name__}).") from error
            # vLLM answers 400 "already been loaded" when another engine process loaded it first: that is fine.
            if response.status_code >= 400 and "already" not in response.text:
                raise RequestError(f"vLLM could not load expert {name}: {response.text[:300]}")
            self._loaded.add(name)
        return name

    def open(self, payload: dict[str, Any], experts: list[dict[str, Any]]) -> Iterator[Event]:
        import openai

        # One adapter per request in vLLM: the router's best expert answers (top-k falls back to 1).
        best = max(experts, key=lambda ref: float(ref.get("weight", 1.0))) if experts else None
        model = self._load_adapter(best) if best else self.config.vllm_model
        common: dict[str, Any] = {
            "model": model,
            "max_tokens": int(payload.get("max_tokens", 256)),
            "temperature": float(payload.get("temperature", 0.7)),
            "top_p": float(payload.get("top_p", 1.0)),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if payload.get("stop"):
            common["stop"] = list(payload["stop"])
        if payload.get("seed") is not None:
            common["seed"] = int(payload["seed"])
        chat = payload.get("messages") is not None
        try:
            if chat:
                stream = self.client.chat.completions.create(messages=payload["messages"], **common)
            else:
                stream = self.client.completions.create(prompt=payload.get("prompt") or "", **common)
        except openai.APIConnectionError as error:
            raise NotReady(f"vLLM is not answering ({error}).") from error
        except openai.APIStatusError as error:
            if error.status_code >= 500:
                raise NotReady(f"vLLM answered {error.status_code}.") from error
            raise RequestError(f"vLLM refused the request: {error.message}") from error

        def events() -> Iterator[Event]:
            parts: list[str] = []
            finish_reason = "stop"
            prompt_tokens = completion_tokens = 0
            try:
                for chunk in stream:
                    if chunk.usage is not None:
                        prompt_tokens = chunk.usage.prompt_tokens
                        completion_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        text = (choice.delta.content if chat else choice.text) or ""
                        if text:
                            parts.append(text)
                            yield {"type": "delta", "text": text}
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
            finally:
                stream.close()
            yield {
                "type": "finished",
                "text": "".join(parts),
                "finish_reason": finish_reason,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
            }

        return events()

    def health(self) -> dict[str, Any]:
        return {"backend": self.name, "url": self.base_url, "model": self.config.vllm_model}


# ---------------------------------------------------------------- the service


class InferenceService:
    """Routing + generation, as the HTTP server exposes them."""

    def __init__(self, routing: RoutingService | None, backend: Backend) -> None:
        self.routing = routing
        self.backend = backend
        self.started = time.time()

    def route(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.routing is None:
            raise NotReady("The router is still loading its embedder.")
        candidates = body.get("candidates") or []
        if not isinstance(candidates, list) or not all(isinstance(item, dict) for item in candidates):
            raise RequestError("'candidates' must be a list of {id, location} objects.")
        settings = body.get("settings") or {}
        if not isinstance(settings, dict):
            raise RequestError("'settings' must be an object.")
        return self.routing.route(body.get("query", ""), candidates, settings)

    def open(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, Iterator[Event]]:
        """The routing decision (when asked to route) and the generation's events."""
        if not self.backend.ready():
            raise NotReady("The engine is still loading its base model.")
        decision = None
        experts = body.get("experts") or []
        if not isinstance(experts, list) or not all(isinstance(item, dict) for item in experts):
            raise RequestError("'experts' must be a list of {id, location, weight} objects.")
        if isinstance(body.get("route"), dict):
            decision = self.route(body["route"])
            by_id = {str(item.get("id")): item for item in body["route"].get("candidates", [])}
            experts = [
                {"id": expert_id, "location": by_id[expert_id].get("location", ""), "weight": weight}
                for expert_id, weight in decision.get("experts", [])
                if expert_id in by_id
            ]
        return decision, self.backend.open(body, experts)

    def health(self) -> dict[str, Any]:
        failed = getattr(self.backend, "error", None)
        ready = self.backend.ready() and self.routing is not None
        return {
            "status": "ok" if ready else "failed" if failed else "loading",
            "uptime_s": round(time.time() - self.started, 1),
            "router": None if self.routing is None else {"experts": len(self.routing.router.ids())},
            **self.backend.health(),
        }
