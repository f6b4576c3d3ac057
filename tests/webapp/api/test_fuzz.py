"""Property-based abuse of every upload and API endpoint: whatever arrives, the server never answers 5xx.

Hypothesis builds the requests: JSON of any shape, known fields with wrong types, huge, negative and non-finite
numbers, control characters, bytes that are not JSON, wrong content types, ids that do not exist or belong to
another org. The inference engine is a closed port, so a request that gets as far as the engine is answered with
the documented 503 `engine_unavailable`; every other 5xx fails. The API's errors must also keep OpenAI's shape.
`database=None`: no failing examples are replayed from an earlier run (hypothesis still keeps caches under
.hypothesis/, which it gitignores itself); a failure prints its example, to be pinned in a regression test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.webapp.conftest import Cast
from tests.webapp.experts.conftest import make_expert
from tests.webapp.jobs.conftest import make_corpus
from webapp.corpora.models import CorpusFile
from webapp.experts.models import Expert
from webapp.tenants.models import ApiToken

pytestmark = pytest.mark.django_db

# CI replays the same inputs every run (derandomized), so a green submission stays green; FUZZ_EXPLORE=1 draws
# new ones (`FUZZ_EXPLORE=1 scripts/test.sh tests/webapp/api/test_fuzz.py`) to look for more bugs.
FUZZ = settings(
    max_examples=100,
    derandomize=os.environ.get("FUZZ_EXPLORE") != "1",
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEW = settings(FUZZ, max_examples=50)

# ---------------------------------------------------------------- strategies

ODD_NUMBERS = st.sampled_from(
    [float("nan"), float("inf"), float("-inf"), -1, 0, 2**31, 2**63, 10**30, -(10**30), 1e308, 10**400]
)
ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "../../etc/passwd",
        "null",
        "1e999",
        "NaN",
        "ž" * 3000,
        "🙂",
        "²",
        "٣",
        "9" * 30,
        "9" * 5000,
    ]
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | ODD_NUMBERS | ODD_TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "seed",
    "n",
    "name",
    "size",
    "description",
    "corpus",
    "teacher",
    "recipe",
    "options",
    "spend_cap_usd",
]
OPTION_KEYS = ["epochs", "token_budget", "lora_rank", "divergence", "alpha", "context", "pairs_per_chunk"]
TEXT_PARTS = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": JSON}), max_size=3)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]) | JSON,
        "content": st.text(max_size=20) | TEXT_PARTS | JSON,
    },
)
FIELD_VALUES: dict[str, Any] = {
    "model": st.sampled_from(["moe", "base", "nope", "globex/x", "\x00", ""]) | JSON,
    "messages": st.lists(MESSAGE | JSON, max_size=4) | JSON,
    "options": st.dictionaries(st.sampled_from(OPTION_KEYS), JSON, max_size=4) | JSON,
}


def _field(name: str) -> st.SearchStrategy[Any]:
    return FIELD_VALUES.get(name, JSON | ODD_NUMBERS | ODD_TEXT)


# An object with known fields (valid-looking or not) and a few unknown keys.
BODIES = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries({}, optional={name: _field(name) for name in FIELDS}),
    st.dictionaries(st.text(max_size=6), JSON, max_size=2),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-16",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data",
        "application/octet-stream",
    ]
)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bytes, str]:
    """A request body and its content type: usually a JSON object, sometimes any JSON or any bytes."""
    kind = draw(st.sampled_from(["object", "object", "object", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), draw(CONTENT_TYPES)
    value = draw(BODIES) if kind == "object" else draw(JSON)
    # json.dumps writes NaN and Infinity, which Python's json.loads (the server's parser) accepts.
    return json.dumps(value).encode(), draw(st.sampled_from(["application/json"]) | CONTENT_TYPES)


def multipart_file(name: str, content: bytes) -> tuple[bytes, str]:
    """A multipart body with one file under `files` (and `ingest`), its file name sent as given, unsanitized.

    Built by hand: the test client's SimpleUploadedFile refuses names such as "/" before a request is made.
    """
    filename = name.encode("utf-8", "replace")
    body = b"".join(
        [
            b'--fuzz\r\nContent-Disposition: form-data; name="ingest"\r\n\r\n1\r\n',
            b'--fuzz\r\nContent-Disposition: form-data; name="files"; filename="' + filename + b'"\r\n',
            b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--fuzz--\r\n",
        ]
    )
    return body, "multipart/form-data; boundary=fuzz"


FORM_TEXT = st.text(max_size=40) | ODD_TEXT | st.integers().map(str) | ODD_NUMBERS.map(str)


def form_data(*names: str) -> st.SearchStrategy[dict[str, str]]:
    """Browser form fields as strings: the known ones (any text, odd numbers) and stray ones."""
    return st.builds(
        lambda known, extra: {**extra, **known},
        st.fixed_dictionaries({}, optional={name: FORM_TEXT for name in names}),
        st.dictionaries(st.text(min_size=1, max_size=6), FORM_TEXT, max_size=2),
    )


# ---------------------------------------------------------------- the world being attacked


@pytest.fixture
def world(cast: Cast, settings: Any, tmp_path: Path) -> dict[str, Any]:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.INFERENCE_URL = "http://127.0.0.1:9"  # closed: what reaches the engine gets the documented 503
    settings.INFERENCE_TIMEOUT_SECONDS = 2.0
    settings.API_RATE_LIMIT_PER_MINUTE = 0
    settings.GLOBAL_TEACHERS = ["SmolLM2 (packaged)=packaged:smollm2-135m-instruct"]
    corpus = make_corpus(cast.org)
    theirs = make_corpus(cast.other_org, "Secret")
    file = CorpusFile.objects.create(
        organization=cast.org, corpus=corpus, name="a.txt", declared_size=5, status=CorpusFile.Status.UPLOADING
    )
    their_file = CorpusFile.objects.create(
        organization=cast.other_org, corpus=theirs, name="b.txt", declared_size=5, status=CorpusFile.Status.UPLOADING
    )
    expert = make_expert(cast.org)
    their_expert = make_expert(cast.other_org, "Their expert")
    _, plaintext = ApiToken.issue(organization=cast.org, name="fuzz", created_by=cast.owner)
    return {
        "expert": expert,
        "their_expert": their_expert,
        "cast": cast,
        "corpus": corpus,
        "theirs": theirs,
        "file": file,
        "their_file": their_file,
        "headers": {"Authorization": f"Bearer {plaintext}"},
        "browser": cast.client_for("owner"),
    }


def ids(world: dict[str, Any]) -> st.SearchStrategy[int]:
    """Ids of A's objects, of B's, and of nothing at all (0, huge: the URL converter takes any digits)."""
    known = [world["corpus"].pk, world["theirs"].pk, world["file"].pk, world["their_file"].pk, 1, 0]
    known += [world["expert"].pk, world["their_expert"].pk]
    return st.sampled_from(known) | st.integers(min_value=0, max_value=10**25)


def assert_no_server_error(response: Any, allowed: frozenset[int] = frozenset()) -> None:
    status = response.status_code
    event(f"{response.request['REQUEST_METHOD']} answered {status}")  # --hypothesis-show-statistics lists them
    assert status < 500 or status in allowed, f"{status}: {getattr(response, 'content', b'')[:500]!r}"


def assert_api_error_shape(response: Any) -> None:
    """A 4xx/5xx of the API is OpenAI's {"error": {"message", "type", ...}} (405 is Django's bare answer)."""
    if response.status_code < 400 or response.status_code == 405:
        return
    body = response.json()
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert isinstance(body["error"]["type"], str)


def assert_untouched(world: dict[str, Any]) -> None:
    """Org B's corpus and file ids were among those tried: nothing of B's changed, nothing was added to it."""
    their_file: CorpusFile = world["their_file"]
    assert list(CorpusFile.objects.filter(corpus=world["theirs"])) == [their_file]
    their_file.refresh_from_db()
    assert (their_file.status, their_file.size, their_file.storage_name) == (CorpusFile.Status.UPLOADING, 0, "")


# ---------------------------------------------------------------- OpenAI-compatible endpoints


VALID_COMPLETION = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi", "max_tokens": 4}
# A valid request with one to three fields replaced: most get past the first check, some reach the engine.
NEAR_VALID_COMPLETIONS = st.builds(
    lambda changes: json.dumps({**VALID_COMPLETION, **changes}).encode(),
    st.dictionaries(
        st.sampled_from(FIELDS[:11]), st.deferred(lambda: st.sampled_from(FIELDS[:11]).flatmap(_field)), max_size=3
    ),
)


@pytest.mark.parametrize("route", ["openai:chat-completions", "openai:completions"])
def test_it_never_fails_a_completion_request(world: dict[str, Any], route: str) -> None:
    client = Client()

    @FUZZ
    @given(payload=payloads() | st.tuples(NEAR_VALID_COMPLETIONS, st.just("application/json")))
    def attack(payload: tuple[bytes, str]) -> None:
        body, content_type = payload
        response = client.generic("POST", reverse(route), body, content_type, headers=world["headers"])
        assert response.status_code in {400, 404, 503}, response.content[:500]
        event(f"answered {response.status_code}")
        assert_api_error_shape(response)
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "engine_unavailable"

    attack()


def test_it_never_fails_a_model_lookup(world: dict[str, Any]) -> None:
    client = Client()

    @FEW
    @given(name=st.text(min_size=1, max_size=60).filter(lambda text: "/" not in text[:1]) | ODD_TEXT.filter(bool))
    def attack(name: str) -> None:
        response = client.get(f"/v1/models/{quote(name, safe='')}", headers=world["headers"])
        assert response.status_code in {200, 404}, response.content[:500]
        if "\n" not in name:  # `<path:…>` is `.+`, which stops at a newline: the site's own 404 page answers
            assert_api_error_shape(response)

    attack()


# ---------------------------------------------------------------- REST API v1


def _api_routes(world: dict[str, Any], draw: Any) -> tuple[str, str]:
    corpus_id, file_id, number = draw(ids(world)), draw(ids(world)), draw(ids(world))
    corpus_id = draw(st.sampled_from([world["corpus"].pk, corpus_id]))
    file_id = draw(st.sampled_from([world["file"].pk, file_id]))
    expert_id = draw(st.sampled_from([world["expert"].pk, world["their_expert"].pk, number]))
    return draw(
        st.sampled_from(
            [
                ("GET", reverse("api:organization")),
                ("GET", reverse("api:tokens")),
                ("GET", reverse("api:token", args=[number])),
                ("GET", reverse("api:corpora")),
                ("POST", reverse("api:corpora")),
                ("GET", reverse("api:corpus", args=[corpus_id])),
                ("GET", reverse("api:corpus-files", args=[corpus_id])),
                ("POST", reverse("api:corpus-files", args=[corpus_id])),
                ("GET", reverse("api:corpus-file", args=[corpus_id, file_id])),
                ("PUT", reverse("api:corpus-file-content", args=[corpus_id, file_id])),
                ("POST", reverse("api:corpus-ingest", args=[corpus_id])),
                ("GET", reverse("api:corpus-versions", args=[corpus_id])),
                ("GET", reverse("api:corpus-version", args=[corpus_id, number])),
                ("GET", reverse("api:jobs")),
                ("POST", reverse("api:jobs")),
                ("GET", reverse("api:job", args=[number])),
                ("POST", reverse("api:job-cancel", args=[number])),
                ("POST", reverse("api:job-retry", args=[number])),
                ("GET", reverse("api:teachers")),
                ("GET", reverse("api:experts")),
                ("GET", reverse("api:expert", args=[expert_id])),
                ("PATCH", reverse("api:expert", args=[expert_id])),
                ("DELETE", reverse("api:expert", args=[expert_id])),
                ("GET", reverse("api:expert-download", args=[expert_id])),
                # Any method on any route: a 405, never a crash.
                (draw(st.sampled_from(["PATCH", "DELETE", "OPTIONS", "HEAD"])), reverse("api:job", args=[number])),
            ]
        )
    )


def test_it_never_fails_a_rest_api_request(world: dict[str, Any]) -> None:
    client = Client()

    @settings(FUZZ, max_examples=300)
    @given(
        data=st.data(),
        payload=payloads(),
        query=st.dictionaries(st.sampled_from(["status", "limit", "after", "version", "x"]), FORM_TEXT),
    )
    def attack(data: st.DataObject, payload: tuple[bytes, str], query: dict[str, str]) -> None:
        method, path = _api_routes(world, data.draw)
        body, content_type = payload
        response = client.generic(
            method, path, body, content_type=content_type, headers=world["headers"], QUERY_STRING=_query(query)
        )
        assert_no_server_error(response)
        assert_api_error_shape(response)

    attack()


def _query(query: dict[str, str]) -> str:
    return urlencode(query)


def test_it_never_fails_a_new_job_over_the_api(world: dict[str, Any]) -> None:
    client = Client()
    good = {"name": "Fuzz", "corpus": world["corpus"].pk, "teacher": "global:0", "recipe": "kd"}
    field = st.sampled_from(["name", "corpus", "teacher", "recipe", "options", "spend_cap_usd"])

    @FUZZ
    @given(
        changes=st.dictionaries(field, JSON, max_size=3),
        options=st.dictionaries(st.sampled_from(OPTION_KEYS), JSON | ODD_NUMBERS, max_size=4),
    )
    def attack(changes: dict[str, Any], options: dict[str, Any]) -> None:
        body = {**good, "options": options, **changes}
        response = client.post(reverse("api:jobs"), json.dumps(body), "application/json", headers=world["headers"])
        assert_no_server_error(response)
        assert_api_error_shape(response)

    attack()


def test_it_never_fails_an_api_upload(world: dict[str, Any]) -> None:
    client = Client()
    corpus = world["corpus"]

    @FEW
    @given(
        start=st.fixed_dictionaries({"name": JSON, "size": JSON | ODD_NUMBERS}),
        content=st.binary(max_size=200),
        name=st.text(max_size=40),
    )
    def attack(start: dict[str, Any], content: bytes, name: str) -> None:
        url = reverse("api:corpus-files", args=[corpus.pk])
        response = client.post(url, json.dumps(start), "application/json", headers=world["headers"])
        assert_no_server_error(response)
        assert_api_error_shape(response)
        if response.status_code == 201:
            put = client.put(
                response.json()["upload_url"], content, "application/octet-stream", headers=world["headers"]
            )
            assert_no_server_error(put)
            assert_api_error_shape(put)
        multipart = client.generic("POST", url, *multipart_file(name, content), headers=world["headers"])
        assert_no_server_error(multipart)
        assert_api_error_shape(multipart)

    attack()
    assert_untouched(world)


# ---------------------------------------------------------------- browser pages


def test_it_never_fails_a_browser_upload(world: dict[str, Any]) -> None:
    browser: Client = world["browser"]

    sizes = st.integers(min_value=-5, max_value=300).map(str) | FORM_TEXT

    @FUZZ
    @given(
        data=st.data(),
        fields=form_data("name", "size") | st.fixed_dictionaries({"name": FORM_TEXT, "size": sizes}),
        content=st.binary(max_size=200),
        name=st.text(max_size=40),
    )
    def attack(data: st.DataObject, fields: dict[str, str], content: bytes, name: str) -> None:
        corpus_id = data.draw(st.sampled_from([world["corpus"].pk, world["corpus"].pk]) | ids(world))
        start = browser.post(reverse("corpora:file-start", args=[corpus_id]), fields)
        assert_no_server_error(start)
        file_id = start.json()["id"] if start.status_code == 201 else data.draw(ids(world))
        put = browser.put(reverse("corpora:file-content", args=[corpus_id, file_id]), content, data.draw(CONTENT_TYPES))
        assert_no_server_error(put)
        form = browser.generic("POST", reverse("corpora:file-upload", args=[corpus_id]), *multipart_file(name, content))
        assert_no_server_error(form)
        raw = browser.generic(
            "POST", reverse("corpora:file-upload", args=[corpus_id]), content, data.draw(CONTENT_TYPES)
        )
        assert_no_server_error(raw)
        assert_no_server_error(browser.post(reverse("corpora:ingest", args=[corpus_id])))
        assert_no_server_error(browser.post(reverse("corpora:create"), data.draw(form_data("name", "description"))))

    attack()
    assert_untouched(world)


def test_it_never_fails_the_new_job_form(world: dict[str, Any]) -> None:
    browser: Client = world["browser"]
    names = ("name", "corpus", "teacher", "recipe", "spend_cap_usd", *OPTION_KEYS)

    valid = {"name": "Fuzz", "corpus": str(world["corpus"].pk), "teacher": "global:0", "recipe": "kd"}
    valid |= {"lora_rank": "16", "divergence": "forward_kl"}
    eval_lines = st.lists(st.dictionaries(st.sampled_from(["question", "answer"]), JSON).map(json.dumps), max_size=3)

    @FUZZ
    @given(
        fields=form_data(*names) | form_data(*names).map(lambda changes: {**valid, **changes}),
        eval_set=st.none() | st.binary(max_size=200) | eval_lines.map(lambda lines: "\n".join(lines).encode()),
    )
    def attack(fields: dict[str, str], eval_set: bytes | None) -> None:
        fields.setdefault("corpus", str(world["corpus"].pk))
        assert_no_server_error(browser.get(reverse("jobs:estimate"), fields))
        assert_no_server_error(browser.get(reverse("jobs:create"), {"clone": fields.get("name", "")}))
        post: dict[str, Any] = dict(fields)
        if eval_set is not None:
            post["eval_set"] = SimpleUploadedFile("eval.jsonl", eval_set)
        assert_no_server_error(browser.post(reverse("jobs:create"), post))

    attack()


def test_it_never_fails_the_mixture_pages(world: dict[str, Any]) -> None:
    browser: Client = world["browser"]

    @FUZZ
    @given(
        mixture=form_data("top_k", "temperature", "threshold", "fallback_to_base"),
        query=form_data("query"),
        ask=form_data("model", "message", "max_tokens", "temperature"),
    )
    def attack(mixture: dict[str, str], query: dict[str, str], ask: dict[str, str]) -> None:
        assert_no_server_error(browser.post(reverse("experts:mixture"), mixture))
        assert_no_server_error(browser.post(reverse("experts:mixture-try"), query))
        assert_no_server_error(browser.post(reverse("experts:playground"), ask))
        assert_no_server_error(browser.post(reverse("experts:playground-stream"), ask))

    attack()


def test_it_never_fails_a_page_for_its_query_string(world: dict[str, Any]) -> None:
    browser: Client = world["browser"]
    cast: Cast = world["cast"]
    expert = Expert.objects.create(organization=cast.org, name="Leave", slug="leave")
    corpus_id = world["corpus"].pk
    pages = [
        reverse("corpora:detail", args=[corpus_id]),
        reverse("corpora:chunks", args=[corpus_id]),
        reverse("corpora:examples", args=[corpus_id]),
        reverse("jobs:list"),
        reverse("jobs:create"),
        reverse("experts:download", args=[expert.pk]),
        reverse("experts:detail", args=[expert.pk]),
    ]

    @FUZZ
    @given(page=st.sampled_from(pages), query=form_data("version", "page", "q", "status", "clone", "model"))
    def attack(page: str, query: dict[str, str]) -> None:
        assert_no_server_error(browser.get(page, query))

    attack()
