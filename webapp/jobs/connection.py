"""The teachers page's "Test connection": one one-token request to an endpoint, or a look at a catalog spec.

The web process never loads a model: a catalog spec is judged by its syntax and the tokenizer families the
services know (`services.TOKENIZER_FAMILIES`); whether it loads is found when a job starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from webapp.jobs import services
from webapp.jobs.models import Teacher

ENDPOINT_TIMEOUT_S = 10
# hf:<owner>/<name> (a hub id) or hf:<path> (a directory under MODEL_ROOTS).
HF_SPEC = re.compile(r"^hf:[A-Za-z0-9._/\-]+$")


@dataclass(frozen=True)
class ConnectionResult:
    ok: bool
    message: str


def check_catalog_spec(spec: str) -> ConnectionResult:
    if spec in services.TOKENIZER_FAMILIES:
        family = services.TOKENIZER_FAMILIES[spec]
        return ConnectionResult(True, f"{spec} is a packaged model of this server ({family} tokenizer).")
    if spec.startswith("packaged:"):
        known = ", ".join(sorted(services.TOKENIZER_FAMILIES))
        return ConnectionResult(False, f"{spec} is not a packaged model of this server (known: {known}).")
    if HF_SPEC.match(spec) and ".." not in spec:
        return ConnectionResult(
            True,
            f"{spec} is a valid hf: spec; the worker loads it (safetensors, within MODEL_ROOTS) when a job starts.",
        )
    return ConnectionResult(False, f"{spec} is not a spec this server understands (packaged:… or hf:…).")


def _without(secret: str, text: str) -> str:
    """`text` with every occurrence of `secret` (and of its long enough pieces) masked."""
    if not secret:
        return text
    text = text.replace(secret, "••••")
    # Servers may echo a prefix of the key ("Incorrect API key provided: sk-test-***9876").
    for size in range(len(secret) - 1, 7, -1):
        for start in range(len(secret) - size + 1):
            piece = secret[start : start + size]
            if piece in text:
                text = text.replace(piece, "••••")
    return text


def check_endpoint(teacher: Teacher) -> ConnectionResult:
    """A one-token chat completion with the saved key; the answer or the error, never the key itself."""
    try:
        address = services.check_endpoint_url(teacher.base_url)  # again: the name may resolve elsewhere by now
    except services.JobError as error:
        return ConnectionResult(False, str(error))
    import httpx2
    from openai import DefaultHttpxClient, OpenAI, OpenAIError  # only this page needs the client

    from workers.ml.pinned_http import pinned_transport

    key = teacher.api_key()
    # To the address just checked, not a new lookup; a transport of httpx2, the openai client's HTTP library.
    transport = pinned_transport(teacher.base_url, address, http=httpx2)
    client = OpenAI(
        base_url=teacher.base_url,
        # The client refuses an empty key; servers without auth (a local vLLM) ignore this placeholder.
        api_key=key or "none",
        timeout=ENDPOINT_TIMEOUT_S,
        max_retries=0,
        http_client=None if transport is None else DefaultHttpxClient(transport=transport, follow_redirects=False),
    )
    try:
        response = client.chat.completions.create(
            model=teacher.model_name, messages=[{"role": "user", "content": "ping"}], max_tokens=1
        )
    except OpenAIError as error:
        status = getattr(error, "status_code", None)
        prefix = f"HTTP {status}: " if status else ""
        return ConnectionResult(False, _without(key, f"{prefix}{_error_message(error)}")[:500])
    finally:
        client.close()
    model = getattr(response, "model", None) or teacher.model_name
    return ConnectionResult(True, f"OK: {model} answered.")


def _error_message(error: Exception) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)
    return str(error) or type(error).__name__


def try_connection(teacher: Teacher) -> ConnectionResult:
    if teacher.kind == Teacher.Kind.CATALOG:
        return check_catalog_spec(teacher.spec)
    return check_endpoint(teacher)
