"""What the experts list, the expert page and the catalog show, and what they keep from other orgs."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from tests.webapp.conftest import Cast
from tests.webapp.experts.conftest import make_expert
from webapp.experts import services
from webapp.experts.models import Expert
from webapp.tenants.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_it_lists_the_orgs_experts_with_their_key_facts(cast: Cast) -> None:
    make_expert(cast.org, "Leave policy")
    shared = make_expert(cast.org, "Expenses", versions=1)
    services.publish(shared, user=cast.owner)
    make_expert(cast.other_org, "Globex secret")
    page = cast.client_for("member").get(reverse("experts:list")).content.decode()
    assert "Leave policy" in page
    assert "Expenses" in page
    assert "Globex secret" not in page
    assert "v2" in page
    assert "50.0%" in page
    assert "25.0%" in page  # Expenses v1: 0.25
    assert "shared + samples" not in page
    assert "shared" in page
    assert reverse("experts:catalog") in page


def test_it_lists_experts_in_a_fixed_number_of_queries(cast: Cast, django_assert_num_queries: Any) -> None:
    client = cast.client_for("member")
    for name in ("One", "Two", "Three", "Four"):
        make_expert(cast.org, name)
    client.get(reverse("experts:list"))  # the first request also saves the current org in the session
    # session, user, membership (the current org), the page's count, the page's experts joined with their active
    # version, the catalog count, then the nav: the user's memberships and the unread notifications count.
    with django_assert_num_queries(8):
        response = client.get(reverse("experts:list"))
    assert response.status_code == 200
    assert response.content.decode().count('href="/experts/') >= 4


def test_it_shows_the_card_escaped_metrics_samples_signature_and_versions_to_the_owner_org(cast: Cast) -> None:
    expert = make_expert(cast.org)
    page = cast.client_for("member").get(reverse("experts:detail", args=[expert.pk])).content.decode()
    assert "&lt;script&gt;alert(&#x27;card&#x27;)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert "20.000" in page
    assert "30.000" in page
    assert "10.000" in page
    assert "50.0%" in page  # gap closed of the active version
    assert "Best answers" in page
    assert "Question 7?" in page
    assert "SECRET-QUESTION about leave?" in page  # qa_data.jsonl
    assert "minilm-l6-v2" in page
    assert "7, 5" in page
    # Versions: v2 active, v1 can be made active again; job links and per-version zips.
    assert reverse("experts:rollback", args=[expert.pk, 1]) in page
    assert reverse("experts:rollback", args=[expert.pk, 2]) not in page
    assert reverse("experts:download", args=[expert.pk]) + "?version=1" in page
    assert "routes to it" in page


def test_it_hides_samples_of_a_shared_expert_unless_the_owner_shares_them(cast: Cast) -> None:
    expert = make_expert(cast.org)
    services.publish(expert, user=cast.owner, share_samples=False)
    url = reverse("experts:detail", args=[expert.pk])
    page = cast.client_for("outsider").get(url).content.decode()
    assert "Leave policy" in page
    assert "Acme" in page
    assert "50.0%" in page
    assert "minilm-l6-v2" in page
    assert "SECRET-QUESTION" not in page
    assert "SECRET-REFERENCE" not in page  # the card's table of best answers
    assert "llm.internal.acme.example" not in page  # the owner's endpoint
    assert "acme-70b @ (endpoint URL not shared)" in page
    assert "Best and worst answers: not shared" in page
    assert "| expert | 0.400 |" in page  # the card's scores stay
    assert "Question 7?" not in page
    assert "keeps the sample answers private" in page
    # No versions table, no job links, no changes for another org.
    assert reverse("experts:rollback", args=[expert.pk, 1]) not in page
    assert reverse("experts:delete", args=[expert.pk]) not in page
    assert reverse("experts:include", args=[expert.pk]) in page
    services.publish(expert, user=cast.owner, share_samples=True)
    page = cast.client_for("outsider").get(url).content.decode()
    assert "SECRET-QUESTION about leave?" in page
    assert "SECRET-REFERENCE" in page
    assert "Question 7?" in page


def test_it_tells_the_owner_how_many_other_orgs_include_a_shared_expert_without_naming_them(cast: Cast) -> None:
    expert = make_expert(cast.org)
    services.publish(expert, user=cast.owner)
    services.include_shared(cast.other_org, expert)
    page = cast.client_for("owner").get(reverse("experts:detail", args=[expert.pk])).content.decode()
    assert "Other organizations that include it: 1." in page
    assert "Globex" not in page


def test_it_enables_disables_and_rolls_back_with_an_audit_trail(cast: Cast) -> None:
    expert = make_expert(cast.org)
    client = cast.client_for("member")
    client.post(reverse("experts:status", args=[expert.pk]), {"status": "disabled"})
    expert.refresh_from_db()
    assert not expert.is_active
    assert expert not in services.member_experts(cast.org)
    response = client.post(reverse("experts:status", args=[expert.pk]), {"status": "bogus"}, follow=True)
    assert "Unknown status &#x27;bogus&#x27;: choose active or disabled." in response.content.decode()
    client.post(reverse("experts:rollback", args=[expert.pk, 1]))
    expert.refresh_from_db()
    assert expert.active_version.number == 1
    assert client.post(reverse("experts:rollback", args=[expert.pk, 9])).status_code == 404
    actions = list(AuditEvent.objects.filter(organization=cast.org).values_list("action", flat=True))
    assert actions.count(AuditEvent.Action.EXPERT_CHANGED) == 2


def test_it_refuses_to_delete_a_shared_expert_until_it_is_withdrawn(cast: Cast) -> None:
    expert = make_expert(cast.org)
    services.publish(expert, user=cast.owner)
    client = cast.client_for("owner")
    url = reverse("experts:delete", args=[expert.pk])
    assert "withdraws it first" in client.get(url).content.decode()
    assert client.post(url).status_code == 200
    assert Expert.objects.filter(pk=expert.pk).exists()
    services.withdraw(expert, user=cast.owner)
    prefix = services.storage_prefix(expert.active_version)
    assert client.post(url)["Location"] == reverse("experts:list")
    assert not Expert.objects.filter(pk=expert.pk).exists()
    from django.core.files.storage import default_storage

    assert not default_storage.exists(f"{prefix}/README.md")
    assert AuditEvent.objects.filter(action=AuditEvent.Action.EXPERT_DELETED, target="Leave policy").exists()


def test_it_publishes_with_or_without_samples_from_the_page(cast: Cast) -> None:
    expert = make_expert(cast.org)
    client = cast.client_for("admin")
    client.post(reverse("experts:publish", args=[expert.pk]))
    expert.refresh_from_db()
    assert (expert.shared, expert.share_samples) == (True, False)
    assert AuditEvent.objects.filter(action=AuditEvent.Action.EXPERT_PUBLISHED).count() == 1


def test_it_names_what_publishing_with_samples_shares_for_the_experts_recipe(cast: Cast) -> None:
    qa_expert = make_expert(cast.org, "Leave policy")
    kd_expert = make_expert(cast.org, "Expenses", versions=1)
    kd_expert.active_version.recipe = "kd"
    kd_expert.active_version.metrics = {**kd_expert.active_version.metrics, "qa": None}
    kd_expert.active_version.save(update_fields=["recipe", "metrics"])
    client = cast.client_for("admin")
    qa_page = client.get(reverse("experts:detail", args=[qa_expert.pk])).content.decode()
    kd_page = client.get(reverse("experts:detail", args=[kd_expert.pk])).content.decode()
    assert "Also share the Q&amp;A data it was taught, its best and worst answers and its training log" in qa_page
    # A kd expert learnt from the corpus text itself, which is never shared: the option shares its log only.
    assert "Also share its training log</label>" in kd_page
    assert "Q&amp;A data" not in kd_page
    # Scored on an evaluation set: its best and worst answers there are shared too.
    kd_expert.active_version.metrics = {**kd_expert.active_version.metrics, "qa": {"examples": [{"question": "Q?"}]}}
    kd_expert.active_version.save(update_fields=["metrics"])
    kd_page = client.get(reverse("experts:detail", args=[kd_expert.pk])).content.decode()
    assert "Also share its training log and its best and worst answers on the evaluation questions" in kd_page


def test_it_lists_other_orgs_shared_experts_in_the_catalog_and_includes_them(cast: Cast) -> None:
    theirs = make_expert(cast.other_org, "Globex pricing")
    services.publish(theirs, user=cast.outsider)
    private = make_expert(cast.other_org, "Globex private")
    mine = make_expert(cast.org, "Mine")
    services.publish(mine, user=cast.owner)
    client = cast.client_for("member")
    page = client.get(reverse("experts:catalog")).content.decode()
    assert "Globex pricing" in page
    assert "by Globex" in page
    assert "globex/globex-pricing" in page
    assert "Globex private" not in page
    assert "Mine" not in page
    response = client.post(reverse("experts:include", args=[theirs.pk]))
    assert response["Location"] == reverse("experts:catalog")
    assert theirs in services.member_experts(cast.org)
    assert "in your mixture" in client.get(reverse("experts:catalog")).content.decode()
    mixture_page = client.get(reverse("experts:mixture")).content.decode()
    assert "globex/globex-pricing" in mixture_page
    response = client.post(reverse("experts:exclude", args=[theirs.pk]), {"next": reverse("experts:mixture")})
    assert response["Location"] == reverse("experts:mixture")
    assert theirs not in services.member_experts(cast.org)
    # Not in the catalog (private, or the org's own): 404.
    assert client.post(reverse("experts:include", args=[private.pk])).status_code == 404
    assert client.post(reverse("experts:include", args=[mine.pk])).status_code == 404
    # An off-site `next` is ignored.
    for off_site in ("//evil.example.com/", "/\\evil.example.com/", "https://evil.example.com/"):
        response = client.post(reverse("experts:include", args=[theirs.pk]), {"next": off_site})
        assert response["Location"] == reverse("experts:catalog")


def test_it_links_experts_in_the_navigation(cast: Cast) -> None:
    page = cast.client_for("member").get(reverse("experts:list")).content.decode()
    assert f'href="{reverse("experts:list")}"' in page


# ---------------------------------------------------------------- pages of the list and the catalog


def test_it_pages_the_orgs_experts_by_name_and_counts_the_whole_catalog(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webapp.experts.views.EXPERTS_PER_PAGE", 2)
    for name in ("Charlie", "Alpha", "Bravo"):
        make_expert(cast.org, name, versions=1, files=False)
    theirs = make_expert(cast.other_org, "Globex secret", versions=1, files=False)
    services.publish(theirs, user=cast.outsider)
    client = cast.client_for("member")
    url = reverse("experts:list")
    first = client.get(url).content.decode()
    assert "Alpha" in first
    assert "Bravo" in first
    assert "Charlie" not in first
    assert f'href="{url}?page=2">Next</a>' in first
    assert "Page 1 of 2 (3 experts)" in first
    second = client.get(url, {"page": 2}).content.decode()
    assert "Charlie" in second
    assert "Alpha" not in second
    assert "Bravo" not in second
    assert f'href="{url}?page=1">Previous</a>' in second
    assert "Page 2 of 2 (3 experts)" in second
    for page in (first, second):
        assert "Globex secret" not in page
        assert "1 expert of other organizations" in " ".join(page.split())  # the whole catalog, not a page


@pytest.mark.parametrize("number", ["abc", "", "1.5"])
def test_it_shows_the_first_page_of_experts_for_a_page_that_is_not_a_number(
    cast: Cast, monkeypatch: pytest.MonkeyPatch, number: str
) -> None:
    monkeypatch.setattr("webapp.experts.views.EXPERTS_PER_PAGE", 2)
    for name in ("Alpha", "Bravo", "Charlie"):
        make_expert(cast.org, name, versions=1, files=False)
    response = cast.client_for("member").get(reverse("experts:list"), {"page": number})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Alpha" in page
    assert "Charlie" not in page


def test_it_shows_the_last_page_of_experts_for_a_page_past_the_end(cast: Cast, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("webapp.experts.views.EXPERTS_PER_PAGE", 2)
    for name in ("Alpha", "Bravo", "Charlie"):
        make_expert(cast.org, name, versions=1, files=False)
    response = cast.client_for("member").get(reverse("experts:list"), {"page": 999})
    assert response.status_code == 200
    assert "Charlie" in response.content.decode()
    assert "Alpha" not in response.content.decode()


def test_it_shows_no_pager_when_the_experts_fit_on_one_page(cast: Cast, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("webapp.experts.views.EXPERTS_PER_PAGE", 2)
    for name in ("Alpha", "Bravo"):
        make_expert(cast.org, name, versions=1, files=False)
    page = cast.client_for("member").get(reverse("experts:list")).content.decode()
    assert 'class="pager"' not in page
    assert "?page=" not in page


def test_it_pages_the_catalog_with_same_named_experts_never_on_two_pages(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webapp.experts.views.CATALOG_PER_PAGE", 2)
    # Three shared experts of the same name (names repeat across orgs): the pk decides their order.
    shared = [make_expert(cast.other_org, "Pricing", versions=1, files=False) for _ in range(3)]
    for expert in shared:
        services.publish(expert, user=cast.outsider)
    make_expert(cast.other_org, "Globex private", versions=1, files=False)
    mine = make_expert(cast.org, "Acme own", versions=1, files=False)
    services.publish(mine, user=cast.owner)
    assert [expert.slug for expert in shared] == ["pricing", "pricing-2", "pricing-3"]
    api_names = [f"<code>{expert.api_name(cast.org)}</code>" for expert in shared]
    client = cast.client_for("member")
    url = reverse("experts:catalog")
    first = client.get(url).content.decode()
    assert [name in first for name in api_names] == [True, True, False]
    assert f'href="{url}?page=2">Next</a>' in first
    assert "Page 1 of 2 (3 shared experts)" in first
    second = client.get(url, {"page": "2"}).content.decode()
    assert [name in second for name in api_names] == [False, False, True]
    assert f'href="{url}?page=1">Previous</a>' in second
    assert "Page 2 of 2 (3 shared experts)" in second
    for page in (first, second):
        assert "Globex private" not in page
        assert "Acme own" not in page
    fallback = client.get(url, {"page": "abc"})
    assert fallback.status_code == 200
    assert [name in fallback.content.decode() for name in api_names] == [True, True, False]
    assert client.get(url, {"page": "999"}).status_code == 200


def test_it_returns_to_the_catalog_page_it_was_on_after_including_an_expert(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webapp.experts.views.CATALOG_PER_PAGE", 1)
    for name in ("Globex alpha", "Globex beta"):
        services.publish(make_expert(cast.other_org, name, versions=1, files=False), user=cast.outsider)
    client = cast.client_for("member")
    second = client.get(reverse("experts:catalog"), {"page": 2}).content.decode()
    assert f'name="next" value="{reverse("experts:catalog")}?page=2"' in second
    beta = Expert.objects.get(name="Globex beta")
    response = client.post(reverse("experts:include", args=[beta.pk]), {"next": f"{reverse('experts:catalog')}?page=2"})
    assert response["Location"] == f"{reverse('experts:catalog')}?page=2"
