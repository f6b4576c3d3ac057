"""A scriptable OpenAI-compatible HTTP server for tests: stdlib only, in a thread, on 127.0.0.1.

    with OpenAIStub(reply=lambda messages: "Paris") as stub:
        teacher = EndpointTeacher(EndpointTeacherConfig(base_url=stub.base_url, model=stub.model))
        ...
        assert stub.requests[0].body["messages"] == [...]

What it serves, in OpenAI's JSON shapes (with `usage`):
- POST /v1/chat/completions: the reply is `reply(messages)` (a callable of the request's messages; the default
  echoes the last user message), cut to `max_tokens` (or `max_completion_tokens`) words.
- POST /v1/completions: a text completion (`completion_reply(prompt)`), and with `prompt_logprobs="vllm"` vLLM's
  `prompt_logprobs` extension for prompts of token ids (see `topk_for_prefix` for the distribution it reports).

Tokens are counted as whitespace-separated words (prompt: every message content; completion: the reply), so
tests can predict `usage` exactly; a prompt of token ids counts one token per id.

Scripting:
- `fail(status, times=n)` queues failures, answered before any normal reply (429s, 500s, 401 ...);
- `api_key`: when set, requests without `Authorization: Bearer <api_key>` get a 401 whose message echoes the
  presented key (as some servers do), so tests can check it never leaks into errors;
- `models`: when set, other model names get a 404 (`model_not_found`);
- `delay_s`: seconds each request waits before answering (responses slower than a client's timeout);
- `send_usage=False` leaves `usage` out of the answers, like some servers;
- `tokens_as_ids=False` ignores vLLM's `return_tokens_as_token_ids` (sampled-token logprobs keyed by text);
- `requests` records every request (path, body, headers); `max_in_flight` the most answered at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Messages = list[dict[str, Any]]
PromptLogprobsMode = Literal["vllm", "ignore", "reject"]


def echo_last_user_message(messages: Messages) -> str:
    """The default chat reply: 'echo: <last user message>'."""
    users = [str(message.get("content", "")) for message in messages if message.get("role") == "user"]
    return f"echo: {users[-1] if users else ''}"


def count_words(text: str) -> int:
    return len(text.split())


def topk_for_prefix(last_token: int, top_k: int, vocab_size: int) -> list[tuple[int, float]]:
    """The stub teacher's top-k next-token log-probs after a prefix ending in `last_token`, best first.

    Token `last_token + j` (mod vocab) gets log-prob −j·0.5 − 0.1 (j = 1..k), so a test can tell exactly which
    prefix a reported row belongs to: its best token is the prefix's last token + 1.
    """
    return [((last_token + j) % vocab_size, -0.5 * j - 0.1) for j in range(1, top_k + 1)]


@dataclass
class Failure:
    status: int
    message: str = ""
    retry_after: float | None = None


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    started: float = field(default_factory=time.monotonic)


class OpenAIStub:
    """An OpenAI-compatible server in a background thread; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        reply: Callable[[Messages], str] = echo_last_user_message,
        completion_reply: Callable[[Any], str] = lambda prompt: "ok",
        model: str = "stub-model",
        models: Sequence[str] | None = None,
        api_key: str | None = None,
        prompt_logprobs: PromptLogprobsMode = "ignore",
        vocab_size: int = 1000,
        delay_s: float = 0.0,
        send_usage: bool = True,
        tokens_as_ids: bool = True,
    ) -> None:
        self.reply = reply
        self.completion_reply = completion_reply
        self.model = model
        self.models = list(models) if models is not None else None
        self.api_key = api_key
        self.prompt_logprobs = prompt_logprobs
        self.vocab_size = vocab_size
        self.delay_s = delay_s
        self.send_usage = send_usage
        self.tokens_as_ids = tokens_as_ids
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._failures: deque[Failure] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the stub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> OpenAIStub:
        handler = type("StubHandler", (_Handler,), {"stub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="openai-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes requests sleeping through `delay_s`
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------ scripting

    def fail(self, status: int, *, times: int = 1, message: str = "", retry_after: float | None = None) -> None:
        """Answer the next `times` requests with HTTP `status` (before any normal reply)."""
        with self._lock:
            self._failures.extend(Failure(status, message, retry_after) for _ in range(times))

    @property
    def pending_failures(self) -> int:
        with self._lock:
            return len(self._failures)

    def paths(self) -> list[str]:
        with self._lock:
            return [request.path for request in self.requests]

    # ------------------------------------------------------------ request handling (handler threads)

    def _enter(self, request: RecordedRequest) -> Failure | None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self._failures.popleft() if self._failures else None

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def handle(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        failure = self._enter(RecordedRequest(path, body, headers))
        try:
            if self.delay_s:
                self._stopping.wait(self.delay_s)
            if failure is not None:
                extra = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
                return failure.status, extra, _error(failure.message or f"Scripted failure {failure.status}")
            presented = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if self.api_key is not None and presented != self.api_key:
                return 401, {}, _error(f"Incorrect API key provided: {presented}.", "invalid_api_key")
            if path not in ("/v1/chat/completions", "/v1/completions"):
                return 404, {}, _error(f"Unknown path {path}", "not_found")
            model = body.get("model")
            if self.models is not None and model not in self.models:
                return 404, {}, _error(f"The model `{model}` does not exist.", "model_not_found")
            if path == "/v1/chat/completions":
                return 200, {}, self._chat(body)
            return self._completion(body)
        finally:
            self._leave()

    def _limit(self, body: dict[str, Any]) -> int | None:
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        return int(limit) if limit is not None else None

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages", [])
        text = self.reply(messages)
        limit = self._limit(body)
        truncated = limit is not None and count_words(text) > limit
        if truncated:
            text = " ".join(text.split()[:limit])
        prompt_tokens = sum(count_words(str(message.get("content", ""))) for message in messages)
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
            "usage": _usage(prompt_tokens, count_words(text)) if self.send_usage else None,
        }

    def _completion(self, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        prompt = body.get("prompt", "")
        prompts = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], list) else [prompt]
        wants_prompt_logprobs = body.get("prompt_logprobs") is not None
        if wants_prompt_logprobs and self.prompt_logprobs == "reject":
            return 400, {}, _error("Unrecognized request argument supplied: prompt_logprobs")
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, one in enumerate(prompts):
            is_ids = isinstance(one, list)
            prompt_tokens += len(one) if is_ids else count_words(str(one))
            choice: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": "length"}
            if is_ids and wants_prompt_logprobs and self.prompt_logprobs == "vllm":
                top_k = int(body["prompt_logprobs"])
                choice["prompt_logprobs"] = self._prompt_logprobs(one, top_k)
                following = topk_for_prefix(one[-1], max(top_k, 1), self.vocab_size)
                choice["text"] = f"t{following[0][0]}"
                completion_tokens += 1
                if body.get("logprobs"):
                    as_ids = self.tokens_as_ids and bool(body.get("return_tokens_as_token_ids"))
                    top = topk_for_prefix(one[-1], int(body["logprobs"]), self.vocab_size)
                    key = (lambda token: f"token_id:{token}") if as_ids else (lambda token: f"t{token}")
                    choice["logprobs"] = {
                        "tokens": [key(following[0][0])],
                        "token_logprobs": [following[0][1]],
                        "top_logprobs": [{key(token): value for token, value in top}],
                        "text_offset": [0],
                    }
            else:
                choice["text"] = self.completion_reply(one)
                completion_tokens += count_words(choice["text"])
            choices.append(choice)
        response = {
            "id": f"cmpl-{len(self.requests)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens) if self.send_usage else None,
        }
        return 200, {}, response

    def _prompt_logprobs(self, ids: list[int], top_k: int) -> list[dict[str, dict[str, Any]] | None]:
        """vLLM's shape: None for position 0, then per position i the top-k of P(token | ids[:i]) plus ids[i]."""
        rows: list[dict[str, dict[str, Any]] | None] = [None]
        for position in range(1, len(ids)):
            top = topk_for_prefix(ids[position - 1], top_k, self.vocab_size)
            row = {
                str(token): {"logprob": value, "rank": rank, "decoded_token": f"t{token}"}
                for rank, (token, value) in enumerate(top, start=1)
            }
            actual = str(ids[position])
            if actual not in row:  # vLLM always adds the prompt's own token, with its rank in the vocabulary
                row[actual] = {"logprob": -20.0, "rank": top_k + 50, "decoded_token": f"t{actual}"}
            # Dict order is not rank order in vLLM's JSON either: put the prompt token first.
            rows.append({actual: row.pop(actual), **row})
        return rows


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _error(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    stub: OpenAIStub  # set on the subclass made in OpenAIStub.start()
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send(400, {}, _error("Body is not JSON"))
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        status, extra_headers, payload = self.stub.handle(self.path, body, headers)
        self._send(status, extra_headers, payload)

    def _send(self, status: int, extra_headers: dict[str, str], payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra_headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request lines on stderr."""
