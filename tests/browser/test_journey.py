"""A company's first visit, in a real browser against the real stack (served app, Celery workers on both queues,
inference engine, PostgreSQL, Redis): sign up → create an organization → upload a folder with good and broken
files (per-file verdicts) → corpus ready → a `kd` job with the tiny models → progress bar at 100% and the loss
chart → the expert in the mixture → a routed, streamed answer in the playground with the routing scores →
download the expert's zip and load it with plain peft → an API token used with the official `openai` client →
a webhook endpoint that received the test event and the job's end, signed →
another organization, in its own browser session, sees none of it.

A second expert (a toy cooking one, registered in the database as a finished job would leave it) is in the
mixture too, so the router has a real choice to make. Screenshots of each step land in
var/test-artifacts/screenshots/; docs/guide.md shows them (copied to docs/guide/ by hand).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
import pytest
import torch
from axe_playwright_python.sync_playwright import Axe
from django.db import connections
from playwright.sync_api import ConsoleMessage, Locator, Page, expect
from standardwebhooks import Webhook

from tests.browser.conftest import TINY, worker_logs
from tests.webapp.api.live_stack import register_expert
from tests.webapp.webhooks.receiver import Receiver, running_receiver
from webapp.experts import engine
from webapp.tenants.models import Organization

pytestmark = [pytest.mark.browser, pytest.mark.realmodel, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-browser-password-42"
STEP_TIMEOUT_MS = 20_000
# Ingest and distillation run in the workers: generous bounds for two shared cores, not speed targets.
INGEST_TIMEOUT_MS = 120_000
JOB_TIMEOUT_MS = 300_000
VPN_QUESTION = "How do I configure the VPN client and import the certificate before connecting?"

AXE = Axe()
PHONE = {"width": 360, "height": 800}
DESKTOP = {"width": 1280, "height": 900}
# The outermost elements that stick out past the right edge of the viewport: what a failure names.
STICKING_OUT_JS = """() => {
  const edge = document.documentElement.clientWidth;
  const out = (element) => element && element.getBoundingClientRect().right > edge + 0.5;
  const width = (element) => Math.round(element.getBoundingClientRect().width);
  return [...document.body.querySelectorAll("*")]
    .filter((element) => out(element) && !out(element.parentElement))
    .map((element) => `${element.tagName.toLowerCase()}.${element.className} (${width(element)}px)`);
}"""

# The relative luminance (WCAG: 0 black, 1 white) of the page's background and of its text colour.
PAGE_LUMINANCE_JS = """() => {
  const luminance = (css) => {
    const [r, g, b] = css.match(/[\\d.]+/g).slice(0, 3).map((value) => {
      const channel = Number(value) / 255;
      return channel <= 0.03928 ? channel / 12.92 : ((channel + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const root = getComputedStyle(document.documentElement);
  return [luminance(root.backgroundColor), luminance(root.color)];
}"""

# The folder a user picks: an IT handbook in several formats, plus what real folders also hold.
HANDBOOK = {
    "vpn.md": "# VPN\n\n"
    + "Configure the VPN client with the gateway address vpn.example.com and import the certificate from the "
    "IT portal before connecting. The VPN client reconnects by itself after the laptop wakes up. If the VPN "
    "connection drops, check that the certificate has not expired and that the gateway address is right. ",
    "firewall.md": "# Firewall\n\n"
    + "The firewall blocks inbound TCP traffic on port 22 unless the source address is on the allow list. "
    "Outbound traffic to the internet passes through the proxy; ask the network team to open a port. ",
    "dhcp.txt": "DHCP leases an IP address to each laptop on the office network for twenty-four hours. "
    "Static addresses are reserved for printers and servers; the DHCP server hands out the rest. ",
    "dns.html": "<html><body><h1>DNS</h1><p>If DNS resolution fails, check the resolver settings and flush "
    "the local cache on the workstation. The office resolvers forward external names to the provider.</p>"
    "</body></html>",
    "wifi/office.md": "# Wi-Fi\n\n"
    + "Wi-Fi access points use WPA3 enterprise authentication against the RADIUS server. Guests join the "
    "separate guest network, which reaches only the internet and never the office subnets. ",
    "routing.md": "# Routing\n\n"
    + "Packets are routed between the two subnets by the core switch using static routes and VLAN tags. "
    "Each floor has its own VLAN; the core switch routes between them and the firewall. ",
}
BROKEN = {
    "scan.pdf": b"%PDF-1.4\n% a scan that was cut off before its first object\n",  # fails at ingest
    "logo.bin": bytes(range(256)) * 8,  # binary: refused at upload
}


def write_folder(root: Path) -> Path:
    folder = root / "it-handbook"
    for name, text in HANDBOOK.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Several paragraphs per document, so each makes a few chunks.
        path.write_text("\n\n".join([text] * 6))
    for name, data in BROKEN.items():
        (folder / name).write_bytes(data)
    return folder


def bar_width(row: Locator) -> float:
    """The rendered width of a score bar: what the user sees, so it also proves the inline style applied."""
    box = row.locator(".score-bar").bounding_box()
    assert box is not None
    return float(box["width"])


class Journey:
    """One browser session: its page, numbered screenshots, and every JavaScript error or CSP violation seen."""

    def __init__(self, browser: Any, base_url: str, screenshots: Path) -> None:
        self.context = browser.new_context(base_url=base_url, viewport=DESKTOP, accept_downloads=True)
        self.context.set_default_timeout(STEP_TIMEOUT_MS)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        # A CSP violation is reported as a console error, an uncaught exception as a page error.
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.screenshots = screenshots

    def _console(self, message: ConsoleMessage) -> None:
        url = message.location.get("url", "")
        # The one answer the journey expects to fail: the refused binary file's upload (a 400 with a verdict).
        refused_upload = "status of 400" in message.text and re.search(r"/files/\d+/content/$", url)
        if message.type == "error" and not refused_upload:
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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The company's CI, listening for webhooks."""
    with running_receiver() as running:
        yield running


def test_it_walks_the_journey_in_a_browser(
    browser: Any,
    web_url: str,
    live_engine: str,
    stack_workers: dict[str, str],
    expert_dirs: dict[str, Any],
    engine_service: Any,
    model_cache_dir: Path,
    screenshots: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
) -> None:
    alice = Journey(browser, web_url, screenshots)
    page = alice.page

    # 1. Sign up (which creates a first organization), then create the organization the journey uses.
    alice.sign_up("alice", "Alice Home")
    alice.shot(1, "signed-up")
    page.goto("/org/new/")
    page.get_by_label("Name").fill("Acme IT")
    page.get_by_role("button", name="Create").click()
    expect(page).to_have_url(re.compile(r"/org/$"))
    expect(page.locator(".org-name, #org-switch")).to_contain_text("Acme IT")
    alice.shot(2, "org-created")

    # 1b. A webhook endpoint for the company's CI (htmx swaps in its signing secret, shown once); a test event sent
    #     from its page goes through the ops worker and shows as delivered while the deliveries table polls.
    page.goto("/org/webhooks/")
    page.get_by_label("URL").fill(receiver.url)
    page.get_by_label("Description").fill("CI pipeline")
    page.get_by_role("button", name="Add endpoint").click()
    secret = page.locator("#new-secret").inner_text().strip()
    page.get_by_role("link", name=receiver.url).click()
    webhook_path = urlparse(page.url).path
    page.get_by_role("button", name="Send test event").click()
    expect(page.locator("#deliveries")).to_contain_text("delivered (HTTP 200)", timeout=INGEST_TIMEOUT_MS)
    ping = receiver.wait_for(1)[0]
    assert Webhook(secret).verify(ping.body, ping.headers)["data"]["sent_by"] == "alice"
    alice.shot(15, "webhook")

    # 2. A corpus, and a folder uploaded into it: upload.js sends each file with its own progress bar and shows
    #    the upload's verdict per file; the binary file is refused before any byte is stored.
    page.goto("/corpora/new/")
    page.get_by_label("Name").fill("IT handbook")
    page.get_by_role("button", name="Create and add files").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("IT handbook")
    corpus_path = urlparse(page.url).path
    page.locator("#folder-input").set_input_files(write_folder(tmp_path))
    uploads = page.locator("#upload-list li")
    expect(uploads).to_have_count(len(HANDBOOK) + len(BROKEN))
    expect(uploads.filter(has_text="logo.bin")).to_contain_text("Unsupported file type (binary data)")
    expect(uploads.filter(has_text="wifi/office.md")).to_contain_text("stored")
    expect(uploads.filter(has_text="stored")).to_have_count(len(HANDBOOK) + 1, timeout=INGEST_TIMEOUT_MS)
    alice.shot(3, "folder-uploaded")

    # 3. "Ingest when the uploads finish" was on: the cpu worker ingests, the status panel polls until Ready,
    #    and the ingest's own verdicts appear per file (the truncated PDF fails, the rest are used).
    status = page.locator("#corpus-status")
    wait_for_status(status, "Ready", INGEST_TIMEOUT_MS, stack_workers["logs"])
    files = status.locator("table.files tbody tr")
    expect(files.filter(has_text="it-handbook/scan.pdf").locator(".verdict")).to_have_text("failed")
    expect(files.filter(has_text="it-handbook/logo.bin").locator(".verdict")).to_have_text("failed")
    for name in HANDBOOK:
        expect(files.filter(has_text=f"it-handbook/{name}").locator(".verdict")).to_have_text("ok")
    expect(status).to_contain_text("Documents")
    alice.shot(4, "corpus-ready")

    # 4. A kd job with the tiny teacher; its page shows the stages, the progress bar with ETA and the loss curve
    #    while the gpu worker trains, then the result.
    page.goto("/jobs/new/")
    page.get_by_label("Name").fill("IT handbook")
    corpus_choice = page.get_by_label("Corpus").locator("option", has_text="IT handbook (v1")
    page.get_by_label("Corpus").select_option(corpus_choice.get_attribute("value"))
    page.locator("#id_teacher").select_option(label="Tiny teacher (shared)")
    page.get_by_label("Epochs").fill("8")  # a few optimizer steps on this small corpus: a loss curve to draw
    # Only the chosen recipe's settings show, and they follow the choice.
    kd_settings, qa_settings = (page.get_by_role("group", name=f"Recipe {recipe}") for recipe in ("kd", "qa"))
    expect(kd_settings).to_be_visible()
    expect(qa_settings).to_be_hidden()
    page.get_by_role("radio", name=re.compile(r"^qa:")).check()
    expect(qa_settings).to_be_visible()
    expect(kd_settings).to_be_hidden()
    page.get_by_role("radio", name=re.compile(r"^kd:")).check()
    expect(kd_settings).to_be_visible()
    expect(page.locator("#estimate")).not_to_be_empty()
    alice.shot(5, "job-form")
    page.get_by_role("button", name="Start the job").click()
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    job_path = urlparse(page.url).path
    alice.shot(6, "job-started")
    panel = page.locator("#job-status")
    wait_for_status(panel, "Succeeded", JOB_TIMEOUT_MS, stack_workers["logs"])
    expect(panel.locator(".progress-line progress")).to_have_attribute("value", re.compile(r"^100(\.0)?$"))
    expect(panel.locator(".progress-line")).to_contain_text(re.compile(r"100(\.0)?%"))
    expect(panel.locator(".loss-curve svg polyline.loss-line")).to_have_attribute(
        "points", re.compile(r"[\d.]+,[\d.]+ ")
    )
    # The worker recorded the cross-entropy apart from kd's objective: the chart plots it against the held-out one.
    expect(panel.locator(".loss-curve figcaption")).to_contain_text("Cross-entropy per token on the training batches")
    alice.shot(7, "job-succeeded")
    # The CI heard of both ends, signed: the corpus was ready, then the job succeeded, naming the expert's model.
    events = [Webhook(secret).verify(request.body, request.headers) for request in receiver.wait_for(3)]
    assert [event["type"] for event in events] == ["ping", "corpus.ready", "job.succeeded"]
    assert events[1]["data"]["corpus"]["name"] == "IT handbook"
    assert events[2]["data"]["expert"]["model"] == "it-handbook"

    # 5. The job's expert is in the organization's mixture, next to the toy cooking expert.
    register_cooking_expert("Acme IT", expert_dirs, engine_service)
    panel.get_by_role("link", name="IT handbook").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("IT handbook")
    expert_path = urlparse(page.url).path
    alice.shot(8, "expert")
    page.goto("/experts/mixture/")
    expect(page.locator("main")).to_contain_text("it-handbook")
    page.get_by_label("Try a query").fill(VPN_QUESTION)
    page.get_by_role("button", name="Route it").click()
    decision = page.locator("#decision")
    expect(decision).to_contain_text("Answered by it-handbook")
    expect(decision.locator(".score-bar")).to_have_count(2)
    assert bar_width(decision.locator("tr", has_text="it-handbook")) > bar_width(
        decision.locator("tr", has_text="cooking")
    )
    expect(page).to_have_url(re.compile(r"/experts/mixture/$"))  # swapped in place, not a full-page post
    alice.shot(9, "mixture-try")

    # 6. Playground: playground.js posts to the stream URL and renders the routing and the text as they arrive.
    page.goto("/experts/playground/")
    page.get_by_label("Question").fill(VPN_QUESTION)
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Temperature").fill("0")
    with page.expect_response(lambda response: response.url.endswith("/experts/playground/stream/")) as streamed:
        page.get_by_role("button", name="Ask").click()
    assert streamed.value.status == 200
    assert streamed.value.headers["content-type"].startswith("text/event-stream")
    # Server-sent events, one delta per token or so: the text arrived in pieces, not as one finished answer.
    deltas = streamed_deltas(streamed.value.text())
    assert len(deltas) >= 2
    assert "".join(deltas)
    answer = page.locator("#answer-main")
    expect(answer.locator('[data-role="routing"]')).to_contain_text("Routed to it-handbook")
    expect(answer.locator('[data-role="routing"] .score-bar')).to_have_count(2)
    expect(answer.locator('[data-role="usage"]')).to_contain_text("completion tokens")
    # The page shows exactly what the engine generated (a tiny expert's text may be mostly whitespace).
    assert answer.locator('[data-role="text"]').text_content() == "".join(deltas)
    alice.shot(10, "playground")

    # 7. Download the expert's zip from its page and load it with plain peft on the base its card names.
    page.goto("/experts/")
    page.get_by_role("link", name="IT handbook").click()
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile(r"Download zip")).click()
    archive_path = tmp_path / download.value.suggested_filename
    download.value.save_as(archive_path)
    assert_loads_in_plain_peft(archive_path, tmp_path / "unzipped", model_cache_dir)

    # 8. API tokens: create one (htmx swaps in the plaintext, shown once) and use it with the official client.
    page.goto("/org/tokens/")
    page.get_by_label("Name").fill("browser test")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token").inner_text().strip()
    expect(page.get_by_role("cell", name="browser test")).to_be_visible()
    alice.shot(11, "api-token")
    client = openai.OpenAI(base_url=f"{web_url}/v1", api_key=token, max_retries=0, timeout=60)
    assert {model.id for model in client.models.list()} == {"moe", "base", "it-handbook", "cooking"}
    reply = client.chat.completions.create(
        model="moe", messages=[{"role": "user", "content": VPN_QUESTION}], max_tokens=4, temperature=0
    )
    assert [chosen["model"] for chosen in reply.model_extra["routing"]["experts"]] == ["it-handbook"]
    assert reply.usage.completion_tokens >= 1

    # A reasoning expert's thinking streams into its own box, apart from the answer. The engine answers here as an
    # expert distilled with qa reasoning would: the tiny experts never reason.
    async def reasoning_stream(payload: dict[str, Any]) -> Any:
        for piece in ["<think>\nThe VPN needs", " the certificate.\n</think>", "\n\nImport it", " first."]:
            yield {"type": "delta", "text": piece}
        yield {"type": "finished", "finish_reason": "stop", "prompt_tokens": 9, "completion_tokens": 12}

    monkeypatch.setattr(engine, "astream", reasoning_stream)
    page.goto("/experts/playground/")
    page.get_by_label("Model", exact=True).select_option("it-handbook")
    page.get_by_label("Question").fill(VPN_QUESTION)
    page.get_by_role("button", name="Ask").click()
    answer = page.locator("#answer-main")
    expect(answer.locator('[data-role="usage"]')).to_contain_text("12 completion tokens")
    expect(answer.locator('[data-role="reasoning-box"]')).to_be_visible()
    expect(answer.locator('[data-role="reasoning"]')).to_have_text("The VPN needs the certificate.")
    expect(answer.locator('[data-role="text"]')).to_have_text("Import it first.")

    # The teacher form likewise shows the chosen kind's fields only.
    page.goto("/jobs/teachers/new/")
    expect(page.get_by_label("Model spec")).to_be_visible()
    expect(page.get_by_label("Base URL")).to_be_hidden()
    page.get_by_role("radio", name="OpenAI-compatible endpoint").check()
    expect(page.get_by_label("Base URL")).to_be_visible()
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.get_by_label("Model spec")).to_be_hidden()
    # A refusal in a field of the kind not chosen stays in view instead of hiding with its field.
    page.get_by_label("Base URL").fill("not a url")
    page.get_by_role("radio", name="Model from the catalog").check()
    page.get_by_role("textbox", name="Name:", exact=True).fill("Local teacher")
    page.get_by_label("Model spec").fill("packaged:smollm2-135m-instruct")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".field-base_url .errorlist")).to_contain_text("Enter a valid URL")
    expect(page.get_by_label("Base URL")).to_be_visible()
    expect(page.get_by_label("Model name")).to_be_hidden()

    # 9. The same pages on a phone, full of what the journey made: none scrolls sideways, and none breaks an
    #    accessibility rule of axe-core.
    app_pages = ["/", "/corpora/", corpus_path, f"{corpus_path}chunks/", "/jobs/", "/jobs/new/", job_path]
    app_pages += ["/jobs/teachers/", "/experts/", expert_path, "/experts/mixture/", "/experts/playground/"]
    app_pages += ["/corpora/new/", "/jobs/teachers/new/", "/jobs/notifications/", "/accounts/password/change/"]
    org_pages = ["/org/", "/org/members/", "/org/tokens/", "/org/audit/", "/org/webhooks/", webhook_path]
    assert_fits_a_phone(page, [*app_pages, *org_pages, "/api/"])
    page.goto(job_path)
    alice.shot(12, "phone-job")
    page.set_viewport_size(DESKTOP)
    # 9b. The same pages with the system set to dark mode: each is dark, and axe-core still finds no violation
    #     (its colour-contrast rule reads the dark palette's text against its backgrounds).
    assert_reads_in_dark_mode(page, [*app_pages, *org_pages, "/api/"])
    page.goto(job_path)
    alice.shot(16, "dark-job")
    page.emulate_media(color_scheme="light")

    # 10. Another organization, in its own browser session, sees none of Acme IT's corpora, jobs or experts.
    bob = Journey(browser, web_url, screenshots)
    bob.sign_up("bob", "Globex")
    for path in ("/corpora/", "/jobs/", "/experts/"):
        bob.page.goto(path)
        expect(bob.page.get_by_role("heading", level=1)).to_be_visible()
        expect(bob.page.locator("main")).not_to_contain_text("IT handbook")
    expect(bob.page.locator("main")).not_to_contain_text("Cooking")
    bob.shot(13, "other-org-experts")
    bob.page.goto("/experts/mixture/")
    expect(bob.page.locator("main")).not_to_contain_text("it-handbook")
    expect(bob.page.locator("main")).not_to_contain_text("cooking", ignore_case=True)
    assert alice.errors == []
    assert bob.errors == []
    alice.context.close()
    bob.context.close()


def assert_fits_a_phone(page: Page, paths: list[str]) -> None:
    """At a phone's width each page is as wide as the screen (wide tables scroll inside themselves, text wraps),
    and axe-core finds no accessibility violation on it (names, labels, contrast, landmarks, ARIA use)."""
    page.set_viewport_size(PHONE)
    too_wide, violations = {}, {}
    for path in paths:
        page.goto(path)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        if page.evaluate("document.documentElement.scrollWidth") > PHONE["width"]:
            too_wide[path] = page.evaluate(STICKING_OUT_JS)
        found = AXE.run(page).response["violations"]
        if found:
            violations[path] = [f"{rule['id']} ({rule['impact']}) at {rule['nodes'][0]['target']}" for rule in found]
    assert too_wide == {}
    assert violations == {}


def assert_reads_in_dark_mode(page: Page, paths: list[str]) -> None:
    """With the system's colour scheme dark, each page paints a dark background under light text, and axe-core
    finds no violation (contrast included) on it. Leaves the page in dark mode."""
    page.emulate_media(color_scheme="dark")
    not_dark, violations = {}, {}
    for path in paths:
        page.goto(path)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        background, ink = page.evaluate(PAGE_LUMINANCE_JS)
        if not (background < 0.05 and ink > 0.5):
            not_dark[path] = (background, ink)
        found = AXE.run(page).response["violations"]
        if found:
            violations[path] = [f"{rule['id']} ({rule['impact']}) at {rule['nodes'][0]['target']}" for rule in found]
    assert not_dark == {}
    assert violations == {}


def wait_for_status(panel: Locator, status: str, timeout_ms: int, logs: str) -> None:
    """Wait for a polling status panel to reach `status`; on a timeout, say what the workers logged."""
    try:
        expect(panel.locator("h2 .status")).to_have_text(status, timeout=timeout_ms)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{worker_logs(logs)}") from error


def register_cooking_expert(organization: str, expert_dirs: dict[str, Any], engine_service: Any) -> None:
    """The toy cooking expert in `organization`, as a finished job would leave it.

    The test body runs in a context of its own under Playwright's sync API (a greenlet), so the ORM opens a
    connection here that pytest-django's teardown does not see: close it, or it blocks dropping the test database.
    """
    try:
        org = Organization.objects.get(name=organization)
        base_hash = engine_service.backend.engine.base_identity["content_hash"]
        register_expert(org, "Cooking", str(expert_dirs["cooking"].path), base_hash)
    finally:
        connections.close_all()


def streamed_deltas(body: str) -> list[str]:
    """The text of each `delta` event of a server-sent event stream."""
    deltas = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") == "delta":
            deltas.append(json.loads(fields["data"])["text"])
    return deltas


def assert_loads_in_plain_peft(archive_path: Path, unzip_to: Path, model_cache_dir: Path) -> None:
    """The zip holds a PEFT adapter and a card naming its base; plain peft loads it, and it changes the base."""
    from peft import PeftModel

    from workers.ml.catalog import CatalogConfig, load_model

    with zipfile.ZipFile(archive_path) as archive:
        archive.extractall(unzip_to)
    (folder,) = [path.parent for path in unzip_to.rglob("adapter_config.json")]
    assert (folder / "adapter_model.safetensors").is_file()
    assert TINY in (folder / "README.md").read_text()
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"

    base = load_model(TINY, CatalogConfig(cache_dir=model_cache_dir, device="cpu"), progress=lambda _: None)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        before = base.model(input_ids=ids).logits
        expert = PeftModel.from_pretrained(base.model, folder).eval()
        after = expert(input_ids=ids).logits
    # Training moved LoRA's B away from its zero start: the expert's logits are not the base's.
    assert not torch.allclose(before, after, atol=1e-5)
