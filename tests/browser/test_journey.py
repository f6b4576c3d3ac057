"""A user's first visit, in a real browser against the real serving stack: sign up → create an organization →
its experts on the Experts page → the router's score bars on the Mixture page → a streamed, routed answer in the
Playground → an API token from the tokens page used with the official `openai` client → another organization,
in its own browser session, sees none of it.

The experts are registered in the database (as tests/webapp/api/test_openai.py does): uploading a corpus and
distilling in the browser needs Celery workers, which this tier does not start yet.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.sync_api import ConsoleMessage, Locator, Page, expect

from tests.webapp.api.live_stack import register_expert
from tests.webapp.api.test_openai import COOKING_QUESTION
from webapp.tenants.models import Organization

pytestmark = [pytest.mark.browser, pytest.mark.realmodel, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-browser-password-42"
STEP_TIMEOUT_MS = 20_000


def bar_width(row: Locator) -> float:
    """The rendered width of a score bar: what the user sees, so it also proves the inline style applied."""
    box = row.locator(".score-bar").bounding_box()
    assert box is not None
    return float(box["width"])


class Journey:
    """One browser session: its page, numbered screenshots, and every JavaScript error or CSP violation seen."""

    def __init__(self, browser: Any, base_url: str, screenshots: Path) -> None:
        self.context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(STEP_TIMEOUT_MS)
        # No favicon: the app has none, and under ASGI Django renders a 404 page (whose base template queries the
        # database when signed in) on a worker thread whose connection nothing closes; that connection would
        # block dropping the test database at the end of the run.
        self.context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        # A CSP violation is reported as a console error, an uncaught exception as a page error.
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.screenshots = screenshots

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url')})")

    def shot(self, number: int, step: str) -> None:
        self.page.screenshot(path=self.screenshots / f"{number:02d}-{step}.png", full_page=True)

    def sign_up(self, username: str, organization: str) -> None:
        page = self.page
        page.goto("/accounts/signup/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Email").fill(f"{username}@example.com")
        page.get_by_label("Organization name").fill(organization)
        page.locator("#id_password1").fill(PASSWORD)
        page.locator("#id_password2").fill(PASSWORD)
        page.get_by_role("button", name="Create account").click()
        expect(page.get_by_role("status")).to_contain_text(f"You own {organization}")


def test_it_walks_the_journey_in_a_browser(
    browser: Any,
    web_url: str,
    live_engine: str,
    expert_dirs: dict[str, Any],
    engine_service: Any,
    screenshots: Path,
) -> None:
    alice = Journey(browser, web_url, screenshots)
    page = alice.page

    # 1. Sign up (which creates a first organization), then create the organization the journey uses.
    alice.sign_up("alice", "Alice Home")
    alice.shot(1, "signed-up")
    page.goto("/org/new/")
    page.get_by_label("Name").fill("Acme Kitchen")
    page.get_by_role("button", name="Create").click()
    expect(page).to_have_url(re.compile(r"/org/$"))
    expect(page.locator(".org-name, #org-switch")).to_contain_text("Acme Kitchen")
    alice.shot(2, "org-created")

    # 2. Two experts for the new organization, as a finished distillation would leave them.
    org = Organization.objects.get(name="Acme Kitchen")
    base_hash = engine_service.backend.engine.base_identity["content_hash"]
    for name in expert_dirs:
        register_expert(org, name.capitalize(), str(expert_dirs[name].path), base_hash)

    # 3. The Experts page lists them.
    page.goto("/experts/")
    expect(page.get_by_role("link", name="Cooking")).to_be_visible()
    expect(page.get_by_role("link", name="Networking")).to_be_visible()
    alice.shot(3, "experts")

    # 4. Mixture → "Try a query": htmx swaps in the router's decision with a score bar per expert.
    page.goto("/experts/mixture/")
    page.get_by_label("Try a query").fill(COOKING_QUESTION)
    page.get_by_role("button", name="Route it").click()
    decision = page.locator("#decision")
    expect(decision).to_contain_text("Answered by cooking")
    expect(decision.locator(".score-bar")).to_have_count(2)
    expect(decision.locator("tr.chosen")).to_contain_text("cooking")
    assert bar_width(decision.locator("tr", has_text="cooking")) > bar_width(
        decision.locator("tr", has_text="networking")
    )
    expect(page).to_have_url(re.compile(r"/experts/mixture/$"))  # swapped in place, not a full-page post
    alice.shot(4, "mixture-try")

    # 5. Playground: playground.js posts to the stream URL and renders the routing and the text as they arrive.
    page.goto("/experts/playground/")
    page.get_by_label("Question").fill(COOKING_QUESTION)
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Temperature").fill("0")
    with page.expect_response(lambda response: response.url.endswith("/experts/playground/stream/")) as streamed:
        page.get_by_role("button", name="Ask").click()
    assert streamed.value.status == 200
    assert streamed.value.headers["content-type"].startswith("text/event-stream")
    # Server-sent events, one delta per token or so: the text arrived in pieces, not as one finished answer.
    assert streamed.value.text().count("event: delta") >= 2
    answer = page.locator("#answer-main")
    expect(answer.locator('[data-role="routing"]')).to_contain_text("Routed to cooking")
    expect(answer.locator('[data-role="routing"] .score-bar')).to_have_count(2)
    expect(answer.locator('[data-role="usage"]')).to_contain_text("completion tokens")
    expect(answer.locator('[data-role="text"]')).to_have_text(re.compile(r"\S"))
    alice.shot(5, "playground")

    # 6. API tokens: create one (htmx swaps in the plaintext, shown once) and use it with the official client.
    page.goto("/org/tokens/")
    page.get_by_label("Name").fill("browser test")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token").inner_text().strip()
    expect(page.get_by_role("cell", name="browser test")).to_be_visible()
    alice.shot(6, "api-token")
    client = openai.OpenAI(base_url=f"{web_url}/v1", api_key=token, max_retries=0, timeout=60)
    assert {model.id for model in client.models.list()} == {"moe", "base", "cooking", "networking"}
    reply = client.chat.completions.create(
        model="moe", messages=[{"role": "user", "content": COOKING_QUESTION}], max_tokens=4, temperature=0
    )
    assert [chosen["model"] for chosen in reply.model_extra["routing"]["experts"]] == ["cooking"]

    # 7. Another organization, in its own browser session, sees none of Acme Kitchen's experts.
    bob = Journey(browser, web_url, screenshots)
    bob.sign_up("bob", "Globex")
    bob.page.goto("/experts/")
    expect(bob.page.get_by_role("heading", level=1)).to_be_visible()
    expect(bob.page.get_by_text("Cooking")).to_have_count(0)
    expect(bob.page.get_by_text("Networking")).to_have_count(0)
    bob.shot(7, "other-org-experts")
    bob.page.goto("/experts/mixture/")
    expect(bob.page.locator("main")).not_to_contain_text("cooking", ignore_case=True)
    bob.shot(8, "other-org-mixture")
    assert alice.errors == []
    assert bob.errors == []
    alice.context.close()
    bob.context.close()
