"""Kill the web server (SIGKILL) during an upload and start it again: the corpus shows the failed file with its
message, nothing half-written stays in storage, the earlier files are intact, and the file can be sent again.

The server is `uvicorn webapp.asgi:application` in a process of its own on the test database; the test talks to
it over HTTP as the upload page's JavaScript does (file-start, then a PUT of the bytes). Two moments to die:
while the body is still arriving (Django's ASGI handler spools it to a temporary file before the view runs),
and while the view copies it into storage (a slow disk makes that window wide enough to hit every time).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from tests.faults.conftest import WebServer, browser_for, put, start_upload, upload
from tests.webapp.conftest import Cast
from tests.webapp.corpora.conftest import stored_files
from webapp.corpora.models import Corpus, CorpusFile
from webapp.corpora.services import storage_name_for, sweep_stalled_uploads

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

EARLIER = b"Employees get 25 days of paid leave per year.\n"
SWEPT_MESSAGE = "The upload stopped before the whole file arrived (browser closed or server restarted); send it again."
STALLED_MESSAGE = "The upload stopped before the whole file arrived; send it again."
MIB = 1 << 20


def text_of(size: int) -> bytes:
    line = b"The VPN client needs the gateway address and the certificate before it connects.\n"
    return (line * (size // len(line) + 1))[:size]


class UploadInBackground:
    """A PUT sent from another thread (the browser), whose fate is known once the server is gone."""

    def __init__(self, http: httpx.Client, url: str, body: Iterator[bytes] | bytes, size: int) -> None:
        self.error: Exception | None = None
        self.response: httpx.Response | None = None
        # A client of its own: the test's keeps talking to the server meanwhile.
        self.http = httpx.Client(base_url=http.base_url, cookies=http.cookies, headers=http.headers, timeout=60)
        self.thread = threading.Thread(target=self._send, args=(url, body, size), daemon=True)
        self.thread.start()

    def _send(self, url: str, body: Iterator[bytes] | bytes, size: int) -> None:
        try:
            self.response = put(self.http, url, body, size)
        except Exception as error:  # whatever way the broken connection shows; the test checks which
            self.error = error

    def outcome(self) -> Exception | httpx.Response | None:
        self.thread.join(timeout=30)
        self.http.close()
        return self.error or self.response


def wait_for_page(http: httpx.Client, corpus: Corpus, text: str) -> str:
    """The corpus page once it shows `text` (the stall shows after UPLOAD_STALL_SECONDS without bytes)."""
    deadline = time.monotonic() + 30
    while True:
        page = http.get(reverse("corpora:detail", args=[corpus.pk])).text
        if text in page:
            return page
        assert time.monotonic() < deadline, f"the corpus page never showed {text!r}:\n{page[-3000:]}"
        time.sleep(0.3)


@pytest.fixture
def corpus(cast: Cast) -> Corpus:
    return Corpus.objects.create(organization=cast.org, name="IT handbook", created_by=cast.owner)


def media_root() -> Path:
    return Path(django_settings.MEDIA_ROOT)


def test_a_server_killed_while_the_body_arrives_leaves_a_failed_file_to_send_again(
    cast: Cast, corpus: Corpus, web_server_factory: Callable[..., WebServer]
) -> None:
    web = web_server_factory()
    http = browser_for(web.url, cast.member)
    earlier = upload(http, corpus, "earlier.txt", EARLIER)
    big = text_of(3 * MIB)
    started = start_upload(http, corpus, "big.txt", len(big))
    half_sent, let_go = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield big[:MIB]
        half_sent.set()
        let_go.wait(30)  # the rest is sent only once the server is dead
        yield big[MIB:]

    sending = UploadInBackground(http, started["upload_url"], slow_body(), len(big))
    assert half_sent.wait(30)
    web.kill()  # a third of the body sent, the rest still to come
    let_go.set()
    assert isinstance(sending.outcome(), httpx.HTTPError)  # the browser sees the connection break

    web.start()  # same port, same database and storage
    file = CorpusFile.objects.get(pk=started["id"])
    assert (file.status, file.size, file.storage_name) == (CorpusFile.Status.UPLOADING, 0, "")
    assert stored_files(media_root()) == {CorpusFile.objects.get(pk=earlier["id"]).storage_name: EARLIER}
    # Once it has been silent for UPLOAD_STALL_SECONDS the page says so, before beat's sweep runs.
    page = wait_for_page(http, corpus, "verdict-stalled")
    assert STALLED_MESSAGE in page

    assert sweep_stalled_uploads() == 1
    page = http.get(reverse("corpora:detail", args=[corpus.pk])).text
    assert "verdict-failed" in page
    assert SWEPT_MESSAGE in page
    assert CorpusFile.objects.get(pk=started["id"]).status == CorpusFile.Status.FAILED

    again = put(http, started["upload_url"], big, len(big))
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "stored"
    file.refresh_from_db()
    assert stored_files(media_root()) == {
        CorpusFile.objects.get(pk=earlier["id"]).storage_name: EARLIER,
        file.storage_name: big,
    }


@pytest.mark.parametrize("sweep_first", [True, False], ids=["swept-then-sent-again", "sent-again-while-stalled"])
def test_a_server_killed_while_it_writes_to_storage_leaves_nothing_half_written(
    cast: Cast, corpus: Corpus, web_server_factory: Callable[..., WebServer], sweep_first: bool
) -> None:
    web = web_server_factory("tests.faults.slow_disk_settings")
    http = browser_for(web.url, cast.member)
    earlier = upload(http, corpus, "earlier.txt", EARLIER)
    earlier_name = CorpusFile.objects.get(pk=earlier["id"]).storage_name
    big = text_of(4 * MIB)
    started = start_upload(http, corpus, "big.txt", len(big))
    partial = media_root() / storage_name_for(CorpusFile.objects.get(pk=started["id"]))

    sending = UploadInBackground(http, started["upload_url"], big, len(big))
    deadline = time.monotonic() + 30
    while not (partial.exists() and partial.stat().st_size > 0):
        assert time.monotonic() < deadline, "the upload never reached storage"
        time.sleep(0.01)
    web.kill()
    assert isinstance(sending.outcome(), httpx.HTTPError)
    assert 0 < partial.stat().st_size < len(big)  # the fault hit: half a file in storage

    web.start()
    wait_for_page(http, corpus, "verdict-stalled")
    if sweep_first:
        assert sweep_stalled_uploads() == 1
        # What the killed server had half-written is gone; the earlier file is untouched.
        assert stored_files(media_root()) == {earlier_name: EARLIER}
        assert "verdict-failed" in http.get(reverse("corpora:detail", args=[corpus.pk])).text

    again = put(http, started["upload_url"], big, len(big))
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "stored"
    file = CorpusFile.objects.get(pk=started["id"])
    assert file.storage_name == storage_name_for(file)  # its own name, not a suffixed one beside a leftover
    assert stored_files(media_root()) == {earlier_name: EARLIER, file.storage_name: big}
    assert sweep_stalled_uploads() == 0
