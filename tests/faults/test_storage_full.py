"""Fill the org's storage limit: over real HTTP (the served ASGI app), the next upload is refused before a byte
is sent, with a message that names the limit; nothing is stored and the earlier files are intact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from tests.faults.conftest import browser_for, put, upload
from tests.webapp.conftest import Cast
from tests.webapp.corpora.conftest import stored_files
from webapp.corpora.models import Corpus, CorpusFile

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

QUOTA = 1000
REFUSAL = "Adding 200\xa0bytes would take your organization over its 1000\xa0bytes storage limit (1000\xa0bytes used)."


@pytest.fixture
def media_root(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return Path(settings.MEDIA_ROOT)


def test_a_full_org_gets_a_clear_refusal_and_nothing_is_stored(cast: Cast, web_url: str, media_root: Path) -> None:
    cast.org.storage_quota_bytes = QUOTA
    cast.org.save()
    handbook = Corpus.objects.create(organization=cast.org, name="Handbook", created_by=cast.owner)
    other = Corpus.objects.create(organization=cast.org, name="Other", created_by=cast.owner)
    http = browser_for(web_url, cast.member)
    first = upload(http, handbook, "leave.txt", b"a" * 600)
    second = upload(http, other, "travel.txt", b"b" * 400)  # the org is now exactly at its limit
    assert (first["status"], second["status"]) == ("stored", "stored")
    before = stored_files(media_root)

    refused = http.post(reverse("corpora:file-start", args=[handbook.pk]), data={"name": "more.txt", "size": "200"})

    assert refused.status_code == 413
    assert refused.json()["status"] == "refused"
    assert refused.json()["message"] == REFUSAL
    # Sending the bytes anyway (a client that ignores the refusal) stores nothing either.
    pushed = put(http, refused.json()["upload_url"], b"c" * 200, 200)
    assert pushed.status_code == 409
    assert pushed.json()["message"] == "This file is refused: start a new upload to send it again."
    assert stored_files(media_root) == before
    assert len(before) == 2
    assert CorpusFile.objects.get(pk=refused.json()["id"]).storage_name == ""
    # The corpus page shows the refused file with the reason.
    page = http.get(reverse("corpora:detail", args=[handbook.pk])).text
    assert "verdict-refused" in page
    assert REFUSAL in page
