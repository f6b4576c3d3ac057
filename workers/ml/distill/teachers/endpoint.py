"""A teacher behind an OpenAI-compatible HTTP API (vLLM, a hosted closed model, another Distillery).

Requests go through the official `openai` client with its own retries off: this module retries 408/409/429/5xx
and connection errors (timeouts included) itself, with exponential backoff and jitter (or the server's
Retry-After), so that the budget is checked before every attempt and the API key never reaches an error
message, a log line or a repr. At most `max_concurrency` requests are in flight at once, across all calls.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import httpx2
import openai
import torch

from workers.ml.distill.config import EndpointTeacherConfig
from workers.ml.distill.errors import TeacherError
from workers.ml.distill.teachers.base import (
    ChatCancelled,
    ChatProgress,
    Conversation,
    Teacher,
    TeacherBudgetExhausted,
    TokenUsage,
)
from workers.ml.pinned_http import pinned_transport

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

logger = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item")

RETRY_STATUSES = frozenset({408, 409, 429})  # plus every 5xx
# Answers to the prompt_logprobs probe that mean "this server does not do that" rather than a failure.
UNSUPPORTED_STATUSES = frozenset({400, 404, 405, 422, 501})
# A few small token ids: valid in any vocabulary, so the probe needs no tokenizer.
PROBE_TOKEN_IDS = (1, 2, 3, 4)
TOKEN_ID_PREFIX = "token_id:"  # noqa: S105 - not a secret: vLLM's `return_tokens_as_token_ids` spelling of a token


STOP_POLL_S = 0.5  # how often a chat call asks should_stop while its requests are out
# The fewest conversations a chat call carries: generation saves its progress after every call, so calls of a
# few dozen keep the saves frequent without leaving the endpoint's request slots idle between calls.
ENDPOINT_MIN_BATCH = 32


class _Cancelled(Exception):
    """A queued request was dropped because another request of the same call failed."""


class EndpointRequestError(TeacherError):
    """A request failed for good; `status_code` is the HTTP status (None: no answer at all)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class _MissingPromptLogprobs(EndpointRequestError):
    """The endpoint answered, but without (enough) prompt_logprobs."""


def _rough_tokens(text: str) -> int:
    """A token count for servers that send no `usage`: about four characters a token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        value = float(exc.response.headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date: use our own backoff
    return value if value >= 0 else None


class EndpointTeacher(Teacher):
    """An OpenAI-compatible endpoint as a teacher. Thread-safe: several threads may call it at once.

    `backoff_base_s` / `backoff_max_s` shape the retry delays: attempt n waits
    min(max, base·2ⁿ) scaled by a random factor in [0.5, 1] (tests pass tiny values).
    """

    def __init__(
        self,
        config: EndpointTeacherConfig,
        *,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        batch_size: int | None = None,
    ) -> None:
        if config.max_concurrency < 1:
            raise TeacherError("The teacher endpoint's max_concurrency must be at least 1.")
        self.config = config
        # Requests per chat call: enough to keep max_concurrency requests in flight while the call's last
        # replies come back.
        self.batch_size = batch_size or max(ENDPOINT_MIN_BATCH, 2 * config.max_concurrency)
        self.label = self._scrub(config.label)
        self.usage = TokenUsage()
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._closed = False
        # Newer OpenAI models refuse `max_tokens`; switched to `max_completion_tokens` when a server says so.
        self._max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
        transport = pinned_transport(config.base_url, config.connect_address, http=httpx2)  # the openai client's
        self._client = openai.OpenAI(
            # vLLM without --api-key accepts any key; the client insists on one, so send a placeholder.
            api_key=config.api_key or "EMPTY",
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=0,
            # Pinned to the checked address, redirects are not followed: one could lead to a host never checked.
            http_client=None
            if transport is None
            else openai.DefaultHttpxClient(transport=transport, follow_redirects=False),
        )
        self._executor = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="teacher-http")

    # ------------------------------------------------------------ public API

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        should_stop: Callable[[], bool] | None = None,
        on_progress: ChatProgress | None = None,
    ) -> list[str]:
        """One chat completion per conversation, sent concurrently, returned in input order.

        Raises TeacherError when a request fails for good (the other requests of the call are dropped),
        TeacherBudgetExhausted (with `partial_results`) once the token budget is spent, or ChatCancelled when
        `should_stop` turns true (asked every half second; requests not yet sent are dropped). `on_progress`
        hears the share of requests answered.
        """

        def one(conversation: Conversation, cancel: threading.Event) -> str:
            return self._chat_one(list(conversation), max_new_tokens, temperature, cancel)

        return self._map(one, list(conversations), should_stop=should_stop, on_progress=on_progress)

    def check_connection(self) -> str:
        """Send one 1-token chat request; return a short message, or raise TeacherError saying what is wrong.

        Retries at most once and ignores the token budget, so a settings page gets a quick answer.
        """
        started = time.monotonic()
        self._chat_one(
            [{"role": "user", "content": "Reply with OK."}],
            1,
            0.0,
            threading.Event(),
            max_retries=min(1, self.config.max_retries),
            enforce_budget=False,
        )
        return f"OK: model {self.config.model} answered in {time.monotonic() - started:.1f} s."

    def supports_prompt_logprobs(self, top_k: int) -> bool:
        """Whether the endpoint returns vLLM's `prompt_logprobs` with `top_k` entries per position.

        Probes with the same request `prompt_topk_logprobs` sends, on a 4-token prompt. A server that refuses
        the request (400/404/405/422/501) or answers without the field gives False; an unreachable server or
        a refused key raises TeacherError.
        """
        try:
            self._score(
                list(PROBE_TOKEN_IDS),
                top_k,
                threading.Event(),
                max_retries=min(1, self.config.max_retries),
                enforce_budget=False,
            )
        except _MissingPromptLogprobs:
            return False
        except EndpointRequestError as exc:
            if exc.status_code in UNSUPPORTED_STATUSES:
                return False
            raise
        return True

    def prompt_topk_logprobs(
        self, token_ids: Sequence[Sequence[int]], top_k: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The teacher's top-k next-token log-probs over each sequence, through vLLM's `prompt_logprobs`.

        Returns per sequence of T tokens `(values, indices)`: values (T, k) float32 log-probs, best first,
        indices (T, k) int64 token ids. Aligned like a causal LM's logits: row t is the distribution of the
        token AFTER position t, i.e. row t predicts token t+1. Rows 0..T−2 come from vLLM's prompt_logprobs
        (whose entry i+1 — a dict token_id -> {logprob, rank, decoded_token}, None at i = 0 — scores token
        i+1 given tokens 0..i); row T−1 predicts the token after the sequence and comes from the one generated
        token's top logprobs (asked for by token id); if a server gives those only as text, row T−1 repeats
        row T−2 — training never uses the last row, as no label follows it.

        Sequences are sent one request each, concurrently. Raises TeacherError when the endpoint does not
        return prompt_logprobs or returns fewer than k per position (vLLM caps k at its --max-logprobs,
        20 by default), and TeacherBudgetExhausted once the token budget is spent.
        """
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        sequences = [[int(token) for token in sequence] for sequence in token_ids]
        if any(not sequence for sequence in sequences):
            raise ValueError("every sequence needs at least one token")

        def one(ids: list[int], cancel: threading.Event) -> tuple[torch.Tensor, torch.Tensor]:
            return self._score(ids, top_k, cancel)

        return self._map(one, sequences)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    # ------------------------------------------------------------ one request of each kind

    def _chat_one(
        self,
        messages: Conversation,
        max_new_tokens: int,
        temperature: float,
        cancel: threading.Event,
        *,
        max_retries: int | None = None,
        enforce_budget: bool = True,
    ) -> str:
        def send() -> Any:
            # A Conversation's role/content dicts are openai's message TypedDicts, which dict[str, str] cannot say.
            typed_messages = cast("list[ChatCompletionMessageParam]", messages)
            if self._max_tokens_field == "max_completion_tokens":
                return self._client.chat.completions.create(
                    model=self.config.model,
                    messages=typed_messages,
                    temperature=temperature,
                    max_completion_tokens=max_new_tokens,
                )
            return self._client.chat.completions.create(
                model=self.config.model, messages=typed_messages, temperature=temperature, max_tokens=max_new_tokens
            )

        def switch_max_tokens_field(detail: str) -> bool:
            if self._max_tokens_field == "max_tokens" and "max_completion_tokens" in detail:
                self._max_tokens_field = "max_completion_tokens"
                return True
            return False

        response = self._call(
            send, cancel, max_retries=max_retries, enforce_budget=enforce_budget, on_bad_request=switch_max_tokens_field
        )
        if not getattr(response, "choices", None):
            raise EndpointRequestError(f"The endpoint {self.label} answered without any choice.")
        text = response.choices[0].message.content or ""
        prompt_text = "\n".join(str(message.get("content", "")) for message in messages)
        self._record_usage(response, _rough_tokens(prompt_text), _rough_tokens(text))
        return text

    def _score(
        self,
        ids: list[int],
        top_k: int,
        cancel: threading.Event,
        *,
        max_retries: int | None = None,
        enforce_budget: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def send() -> Any:
            return self._client.completions.create(
                model=self.config.model,
                prompt=ids,
                max_tokens=1,
                temperature=0.0,
                logprobs=top_k,
                extra_body={"prompt_logprobs": top_k, "return_tokens_as_token_ids": True},
            )

        response = self._call(send, cancel, max_retries=max_retries, enforce_budget=enforce_budget)
        self._record_usage(response, len(ids), 1)
        if not getattr(response, "choices", None):
            raise _MissingPromptLogprobs(f"The endpoint {self.label} answered without any choice.")
        return self._parse_topk(response.choices[0], ids, top_k)

    # ------------------------------------------------------------ parsing vLLM's prompt_logprobs

    def _parse_topk(self, choice: Any, ids: list[int], top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        extra = getattr(choice, "model_extra", None) or {}
        positions = extra.get("prompt_logprobs", getattr(choice, "prompt_logprobs", None))
        if not isinstance(positions, list) or len(positions) != len(ids):
            got = "none" if not isinstance(positions, list) else f"{len(positions)} positions for {len(ids)} tokens"
            raise _MissingPromptLogprobs(
                f"The endpoint {self.label} returned no usable prompt_logprobs ({got}); logit distillation "
                "through an endpoint needs vLLM's OpenAI server. Use recipe 'qa' with this teacher."
            )
        rows: list[list[tuple[float, int]]] = []
        for position in range(1, len(ids)):
            entries = positions[position]
            if not isinstance(entries, Mapping):
                raise _MissingPromptLogprobs(
                    f"The endpoint {self.label} returned no prompt_logprobs at position {position}."
                )
            try:
                rows.append(self._top(entries, top_k, lambda key: int(key)))
            except ValueError:
                raise _MissingPromptLogprobs(
                    f"The endpoint {self.label} returned prompt_logprobs not keyed by token id at position {position}."
                ) from None
        last = self._last_row(choice, top_k)
        if last is None:
            if not rows:
                raise _MissingPromptLogprobs(
                    f"The endpoint {self.label} returned no top logprobs by token id for a one-token prompt."
                )
            last = rows[-1]
        rows.append(last)
        values = torch.tensor([[value for value, _ in row] for row in rows], dtype=torch.float32)
        indices = torch.tensor([[token for _, token in row] for row in rows], dtype=torch.int64)
        return values, indices

    def _top(self, entries: Mapping[Any, Any], top_k: int, token_of: Callable[[Any], int]) -> list[tuple[float, int]]:
        """The k best (logprob, token id) of one position, best first; vLLM also lists the prompt's own token."""
        scored: list[tuple[float, int, int]] = []
        for key, entry in entries.items():
            if isinstance(entry, Mapping):
                logprob, rank = entry.get("logprob"), entry.get("rank")
            else:
                logprob, rank = entry, None
            if logprob is None:
                continue
            scored.append((float(logprob), int(rank) if rank is not None else 0, token_of(key)))
        if len(scored) < top_k:
            raise _MissingPromptLogprobs(
                f"The endpoint {self.label} returned {len(scored)} log-probs per position where {top_k} were "
                "asked; lower the number of teacher logits kept (vLLM allows --max-logprobs, 20 by default)."
            )
        scored.sort(key=lambda item: (-item[0], item[1], item[2]))
        return [(logprob, token) for logprob, _, token in scored[:top_k]]

    def _last_row(self, choice: Any, top_k: int) -> list[tuple[float, int]] | None:
        logprobs = getattr(choice, "logprobs", None)
        top = getattr(logprobs, "top_logprobs", None) if logprobs is not None else None
        if not top or not isinstance(top[0], Mapping):
            return None
        first = top[0]
        if not all(isinstance(key, str) and key.startswith(TOKEN_ID_PREFIX) for key in first):
            return None  # tokens as text: the server ignored return_tokens_as_token_ids
        try:
            return self._top(first, top_k, lambda key: int(key.removeprefix(TOKEN_ID_PREFIX)))
        except (_MissingPromptLogprobs, ValueError):
            return None

    # ------------------------------------------------------------ usage and budget

    def _record_usage(self, response: Any, rough_prompt: int, rough_completion: int) -> None:
        usage = getattr(response, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        with self._lock:
            self.usage.add(
                prompt if prompt is not None else rough_prompt,
                completion if completion is not None else rough_completion,
            )

    def _check_budget(self) -> None:
        budget = self.config.max_tokens_budget
        if budget is None:
            return
        with self._lock:
            used = self.usage.total
        if used >= budget:
            raise TeacherBudgetExhausted(
                f"The teacher's token budget is spent ({used:,} of {budget:,} tokens used); "
                "no further requests were sent."
            )

    # ------------------------------------------------------------ concurrency and retries

    def _map(
        self,
        function: Callable[[Item, threading.Event], T],
        items: list[Item],
        *,
        should_stop: Callable[[], bool] | None = None,
        on_progress: ChatProgress | None = None,
    ) -> list[T]:
        """Run `function` on every item in the pool; results in input order; first failure cancels the rest.

        A `should_stop` that turns true cancels the rest too, and the call raises ChatCancelled.
        """
        if not items:
            return []
        if should_stop is not None and should_stop():  # asked before the call: nothing is sent
            raise ChatCancelled("stopped before the teacher endpoint was asked", partial_results=[None] * len(items))
        cancel = threading.Event()

        def run(item: Item) -> T:
            try:
                return function(item, cancel)
            except BaseException:
                cancel.set()  # at once, before the pool starts the next queued request
                raise

        try:
            futures = [self._executor.submit(run, item) for item in items]
        except RuntimeError:
            raise TeacherError(f"The teacher {self.label} was closed.") from None
        pending, stopped = self._wait(futures, should_stop, on_progress)
        if pending:
            cancel.set()  # queued requests are dropped, sleeping retries wake up and stop
            for future in pending:
                future.cancel()
            wait(pending)  # requests already on the wire finish (or time out), so their usage is counted
        results: list[Any] = []
        errors: list[BaseException] = []
        for future in futures:
            error = None if future.cancelled() else future.exception()
            results.append(None if future.cancelled() or error is not None else future.result())
            if error is not None and not isinstance(error, _Cancelled):
                errors.append(error)
        if stopped:
            raise ChatCancelled("stopped while the teacher endpoint was answering", partial_results=results)
        if not errors:
            return results
        # A real failure says more than the budget stop that other requests may have hit after it.
        error = next((item for item in errors if not isinstance(item, TeacherBudgetExhausted)), errors[0])
        if isinstance(error, TeacherBudgetExhausted):
            error.partial_results = results
        raise error

    @staticmethod
    def _wait(
        futures: list[Future[Any]], should_stop: Callable[[], bool] | None, on_progress: ChatProgress | None
    ) -> tuple[set[Future[Any]], bool]:
        """Wait until every future is done, one has failed, or `should_stop`: (the futures still pending, stopped)."""
        if should_stop is None and on_progress is None:
            return wait(futures, return_when=FIRST_EXCEPTION).not_done, False
        pending: set[Future[Any]] = set(futures)
        while pending:
            if should_stop is not None and should_stop():
                return pending, True
            done, pending = wait(pending, timeout=STOP_POLL_S, return_when=FIRST_COMPLETED)
            if on_progress is not None:
                on_progress((len(futures) - len(pending)) / len(futures))
            if any(not future.cancelled() and future.exception() is not None for future in done):
                break
        return pending, False

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        delay: float = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return delay * (0.5 + 0.5 * random.random())  # noqa: S311 - jitter, not cryptography

    def _call(
        self,
        send: Callable[[], T],
        cancel: threading.Event,
        *,
        max_retries: int | None = None,
        enforce_budget: bool = True,
        on_bad_request: Callable[[str], bool] | None = None,
    ) -> T:
        """`send()` with retries; raises EndpointRequestError (never carrying the key) when retries run out."""
        retries = self.config.max_retries if max_retries is None else max_retries
        attempt = 0
        while True:
            if cancel.is_set():
                raise _Cancelled
            if enforce_budget:
                self._check_budget()
            failure: EndpointRequestError | None = None
            try:
                return send()
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status == 400 and on_bad_request is not None and on_bad_request(self._detail(exc)):
                    continue  # the request was reshaped; not an attempt
                if (status in RETRY_STATUSES or status >= 500) and attempt < retries:
                    reason, delay = f"HTTP {status}", self._backoff(attempt, _retry_after(exc))
                else:
                    failure = self._status_failure(exc, attempt + 1)
            except openai.APITimeoutError:
                if attempt < retries:
                    reason, delay = f"no answer within {self.config.timeout_s:g} s", self._backoff(attempt, None)
                else:
                    failure = self._timeout_failure(attempt + 1)
            except openai.APIConnectionError as exc:
                if attempt < retries:
                    reason, delay = f"connection failed ({self._cause(exc)})", self._backoff(attempt, None)
                else:
                    failure = self._connection_failure(exc, attempt + 1)
            except openai.APIError as exc:
                failure = EndpointRequestError(
                    f"The endpoint {self.label} sent an answer that is not in OpenAI's format ({type(exc).__name__})."
                )
            if failure is not None:
                raise failure  # outside the except blocks: no chained openai error (its request has the key)
            logger.warning(
                "Teacher endpoint %s: %s; retry %d of %d in %.2f s", self.label, reason, attempt + 1, retries, delay
            )
            attempt += 1
            if cancel.wait(delay):
                raise _Cancelled

    # ------------------------------------------------------------ error messages (the key never in them)

    def _scrub(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key else text

    def _detail(self, exc: openai.APIStatusError) -> str:
        body: Any = exc.body
        message: Any = None
        if isinstance(body, Mapping):
            message = body.get("message") or body.get("detail") or body.get("error")
            if isinstance(message, Mapping):
                message = message.get("message")
        elif isinstance(body, str):
            message = body
        text = " ".join(str(message or "").split())
        return self._scrub(text[:300])

    def _cause(self, exc: openai.APIConnectionError) -> str:
        cause = exc.__cause__
        return self._scrub(" ".join(str(cause or exc.message).split())[:200])

    def _attempts(self, attempts: int) -> str:
        return "1 attempt" if attempts == 1 else f"{attempts} attempts"

    def _status_failure(self, exc: openai.APIStatusError, attempts: int) -> EndpointRequestError:
        status, detail = exc.status_code, self._detail(exc)
        suffix = f": {detail}" if detail else ""
        base_url, model = self._scrub(self.config.base_url), self._scrub(self.config.model)
        if status in (401, 403):
            hint = "set the teacher's API key" if not self.config.api_key else "check the teacher's API key"
            message = f"The endpoint refused the API key (HTTP {status}{suffix}); {hint}."
        elif status == 404:
            message = (
                f"The endpoint at {base_url} has no model '{model}' (HTTP 404{suffix}); check the model name and "
                "that the base URL ends with /v1."
            )
        elif status == 429:
            message = (
                f"The endpoint kept refusing requests as too many (HTTP 429{suffix}) after {self._attempts(attempts)}; "
                "lower max_concurrency or try again later."
            )
        elif status >= 500:
            message = f"The endpoint kept failing (HTTP {status}{suffix}) after {self._attempts(attempts)}."
        elif status == 400:
            message = f"The endpoint rejected the request (HTTP 400{suffix})."
        else:
            message = f"The endpoint answered HTTP {status}{suffix} after {self._attempts(attempts)}."
        return EndpointRequestError(message, status_code=status)

    def _timeout_failure(self, attempts: int) -> EndpointRequestError:
        return EndpointRequestError(
            f"The endpoint at {self._scrub(self.config.base_url)} did not answer within "
            f"{self.config.timeout_s:g} s ({self._attempts(attempts)}); raise the timeout, or lower max_new_tokens "
            "or max_concurrency."
        )

    def _connection_failure(self, exc: openai.APIConnectionError, attempts: int) -> EndpointRequestError:
        return EndpointRequestError(
            f"Could not reach the endpoint at {self._scrub(self.config.base_url)} ({self._cause(exc)}) after "
            f"{self._attempts(attempts)}; check the URL and that the server is running."
        )
