"""Who reaches what: every experts URL for owner, admin, member, outsider and anonymous."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from tests.webapp.conftest import Cast
from tests.webapp.experts.conftest import make_expert
from webapp.experts import services
from webapp.experts.models import Expert

pytestmark = pytest.mark.django_db


def org_pages() -> list[tuple[str, str, dict[str, Any]]]:
    """Pages of the current org with no object id in the URL."""
    return [
        ("get", reverse("experts:list"), {}),
        ("get", reverse("experts:catalog"), {}),
        ("get", reverse("experts:mixture"), {}),
    ]


def read_requests(expert: Expert) -> list[tuple[str, str, dict[str, Any]]]:
    e = expert.pk
    return [
        ("get", reverse("experts:detail", args=[e]), {}),
        ("get", reverse("experts:download", args=[e]), {}),
        ("get", reverse("experts:download", args=[e]) + "?version=1", {}),
    ]


def change_requests(expert: Expert) -> list[tuple[str, str, dict[str, Any]]]:
    """Changes any member of the owner org may make (each would succeed)."""
    e = expert.pk
    return [
        ("post", reverse("experts:status", args=[e]), {"status": "disabled"}),
        ("post", reverse("experts:status", args=[e]), {"status": "active"}),
        ("post", reverse("experts:rollback", args=[e, 1]), {}),
        ("get", reverse("experts:delete", args=[e]), {}),
    ]


def publish_requests(expert: Expert) -> list[tuple[str, str, dict[str, Any]]]:
    e = expert.pk
    return [
        ("post", reverse("experts:publish", args=[e]), {"share_samples": "on"}),
        ("post", reverse("experts:withdraw", args=[e]), {}),
    ]


def send(client: Any, method: str, url: str, data: dict[str, Any]) -> int:
    return getattr(client, method)(url, data).status_code


@pytest.mark.parametrize("who", ["owner", "admin", "member"])
def test_it_opens_every_experts_page_and_change_to_every_role_of_the_org(cast: Cast, who: str) -> None:
    expert = make_expert(cast.org)
    client = cast.client_for(who)
    assert [send(client, *request) for request in org_pages()] == [200] * 3
    assert [send(client, *request) for request in read_requests(expert)] == [200] * 3
    assert [send(client, *request) for request in change_requests(expert)] == [302, 302, 302, 200]
    expert.refresh_from_db()
    assert expert.is_active
    assert expert.active_version is not None
    assert expert.active_version.number == 1
    # Deleting: the confirm page, then the POST.
    assert send(client, "post", reverse("experts:delete", args=[expert.pk]), {}) == 302
    assert not Expert.objects.filter(pk=expert.pk).exists()


@pytest.mark.parametrize("who", ["owner", "admin"])
def test_it_lets_owners_and_admins_publish_and_withdraw(cast: Cast, who: str) -> None:
    expert = make_expert(cast.org)
    client = cast.client_for(who)
    assert send(client, *publish_requests(expert)[0]) == 302
    expert.refresh_from_db()
    assert (expert.shared, expert.share_samples) == (True, True)
    assert send(client, *publish_requests(expert)[1]) == 302
    expert.refresh_from_db()
    assert (expert.shared, expert.share_samples) == (False, False)


def test_it_forbids_members_to_publish_or_withdraw(cast: Cast) -> None:
    expert = make_expert(cast.org)
    client = cast.client_for("member")
    assert send(client, *publish_requests(expert)[0]) == 403
    services.publish(expert, user=cast.owner)
    assert send(client, *publish_requests(expert)[1]) == 403
    expert.refresh_from_db()
    assert expert.shared
    # The page does not offer the buttons to a member either.
    page = client.get(reverse("experts:detail", args=[expert.pk])).content.decode()
    assert reverse("experts:withdraw", args=[expert.pk]) not in page
    assert reverse("experts:delete", args=[expert.pk]) in page


def test_it_answers_404_to_an_outsider_for_every_url_of_a_private_expert(cast: Cast) -> None:
    expert = make_expert(cast.org)
    client = cast.client_for("outsider")
    every = [*read_requests(expert), *change_requests(expert), *publish_requests(expert)]
    every += [
        ("post", reverse("experts:delete", args=[expert.pk]), {}),
        ("post", reverse("experts:include", args=[expert.pk]), {}),
        ("post", reverse("experts:exclude", args=[expert.pk]), {}),
    ]
    assert [send(client, *request) for request in every] == [404] * len(every)
    expert.refresh_from_db()
    assert expert.is_active
    assert not expert.shared
    assert expert.active_version.number == 2


@pytest.mark.parametrize("version", ["²", "9" * 5000, "x"], ids=["superscript-2", "5000-digits", "letter"])
def test_it_answers_404_to_a_download_version_that_is_not_a_number(cast: Cast, version: str) -> None:
    # Was a 500 for the first two: "²".isdigit() is true but int("²") raises; so does int() of over 4300 digits.
    expert = make_expert(cast.org)
    url = reverse("experts:download", args=[expert.pk])
    assert cast.client_for("member").get(url, {"version": version}).status_code == 404


def test_it_shows_a_shared_expert_read_only_to_an_outsider(cast: Cast) -> None:
    expert = make_expert(cast.org)
    services.publish(expert, user=cast.owner)
    client = cast.client_for("outsider")
    # Detail and the active version's zip: yes. An older version, and every change: 404.
    assert send(client, "get", reverse("experts:detail", args=[expert.pk]), {}) == 200
    assert send(client, "get", reverse("experts:download", args=[expert.pk]), {}) == 200
    assert send(client, "get", reverse("experts:download", args=[expert.pk]) + "?version=2", {}) == 200
    assert send(client, "get", reverse("experts:download", args=[expert.pk]) + "?version=1", {}) == 404
    changes = [*change_requests(expert), *publish_requests(expert)]
    changes.append(("post", reverse("experts:delete", args=[expert.pk]), {}))
    assert [send(client, *request) for request in changes] == [404] * len(changes)
    expert.refresh_from_db()
    assert expert.shared
    assert expert.is_active
    assert expert.active_version.number == 2


def test_it_sends_anonymous_visitors_to_log_in(cast: Cast) -> None:
    expert = make_expert(cast.org)
    client = cast.client_for("anonymous")
    every = [*org_pages(), *read_requests(expert), *change_requests(expert), *publish_requests(expert)]
    every += [
        ("post", reverse("experts:mixture"), {"top_k": 2}),
        ("post", reverse("experts:mixture-try"), {"query": "hi"}),
        ("post", reverse("experts:include", args=[expert.pk]), {}),
    ]
    for method, url, data in every:
        response = getattr(client, method)(url, data)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("accounts:login")), url


@pytest.mark.parametrize("url_name", ["experts:status", "experts:rollback", "experts:publish", "experts:withdraw"])
def test_it_refuses_get_on_changes(cast: Cast, url_name: str) -> None:
    expert = make_expert(cast.org)
    args = [expert.pk, 1] if url_name == "experts:rollback" else [expert.pk]
    assert cast.client_for("owner").get(reverse(url_name, args=args)).status_code == 405
