"""The console and the demo page in headless Chromium against a real ``candor serve``.

Signs in, filters, opens a record, approves it and sees the decision as a chained record; searches, opens "more like
this" and asks on the demo page; checks that a wrong key is refused. Every page is checked with axe-core (no
serious or critical violation), for Content-Security-Policy violations in the browser's console, and photographed at
two widths into ``CANDOR_TEST_SCREENSHOTS`` (default ``var/test-artifacts/screenshots``).

Uses the system Chromium (``chromium`` on Debian, or ``CANDOR_TEST_CHROMIUM``) through Playwright; skipped, with the
reason, where either is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PROJECT_ROOT
from tests.e2e.conftest import Server, reviewer_key, started_server

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path(os.environ.get("CANDOR_TEST_SCREENSHOTS", PROJECT_ROOT / "var" / "test-artifacts" / "screenshots"))
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
HOSTILE_QUERY = "<script>alert('pwned')</script> baby bath towel"


def chromium_path() -> str | None:
    """The system Chromium to drive, if one is installed."""
    configured = os.environ.get("CANDOR_TEST_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Browser:
    server: Server
    reviewer: str
    browser: Any
    csp_errors: list[str] = field(default_factory=list)

    def page(self) -> Any:
        """A fresh browser context (no cookies) and its page; any CSP report or JS dialog is recorded."""
        context = self.browser.new_context(viewport={"width": 1280, "height": 900}, base_url=self.server.base_url)
        context.set_default_timeout(120_000)
        page = context.new_page()
        page.on(
            "console",
            lambda msg: self.csp_errors.append(msg.text) if "Content Security Policy" in msg.text else None,
        )
        page.on("dialog", lambda dialog: pytest.fail(f"a script ran on the page: dialog {dialog.message!r}"))
        return page


@pytest.fixture(scope="module")
def web(built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One server and one headless Chromium for the module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set CANDOR_TEST_CHROMIUM to a Chromium binary)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with started_server(built_state, tmp_path_factory.mktemp("browser")) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield Browser(server, reviewer_key(server), browser)
        finally:
            browser.close()


def check_page(page: Any, name: str) -> None:
    """axe-core finds no serious or critical violation; a screenshot at each width."""
    # Evaluated through the DevTools protocol: the page's CSP (script-src 'self') does not apply to it.
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa']}})"
    )
    severe = [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in {"serious", "critical"}
    ]
    assert severe == [], f"{name}: {json.dumps(severe, indent=1)}"
    for label, (width, height) in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def sign_in(page: Any, portal: str, key: str) -> Any:
    """Sign in with the keyboard only: tab to the key field, type, Enter."""
    response = page.goto(f"/{portal}/sign-in")
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == "api_key":
            break
    else:
        pytest.fail("the key field is not reachable with the keyboard")
    page.keyboard.type(key)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    return page


def test_wrong_keys_are_refused(web: Browser) -> None:
    page = web.page()
    page.goto("/console/sign-in")
    check_page(page, "console-sign-in")
    sign_in(page, "console", "cnd_00000000_not-a-key")
    assert "Sign-in refused: that key is unknown or revoked." in page.inner_text("main")
    assert page.url.endswith("/console/sign-in")
    check_page(page, "console-sign-in-refused")
    sign_in(page, "console", web.server.frontend_key)
    assert "a frontend key cannot open this page" in page.inner_text("main")
    assert not [c for c in page.context.cookies() if c["name"].endswith("_session")]
    page.goto("/console/records")
    assert page.url.endswith("/console/sign-in")
    page.context.close()


def test_console_filter_open_approve_verify_report(web: Browser) -> None:
    server = web.server
    search = httpx.post(
        f"{server.base_url}/v1/search",
        headers=server.headers(server.frontend_key),
        json={"query": HOSTILE_QUERY, "k": 3},
        timeout=120,
    )
    assert search.status_code == 200, search.text
    record_id = search.json()["audit_id"]
    # A shopper reports another result: it joins the review queue.
    reported = httpx.post(
        f"{server.base_url}/v1/search",
        headers=server.headers(server.frontend_key),
        json={"query": "steel water bottle", "k": 2},
        timeout=120,
    ).json()["audit_id"]
    feedback = httpx.post(
        f"{server.base_url}/v1/feedback",
        headers=server.headers(server.frontend_key),
        json={"audit_id": reported, "event": "report"},
        timeout=60,
    )
    assert feedback.status_code == 201, feedback.text

    page = sign_in(web.page(), "console", web.reviewer)
    assert page.url.endswith("/console/records")
    cookie = next(c for c in page.context.cookies() if c["name"] == "candor_console_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    page.select_option("#endpoint", "/v1/search")
    page.select_option("#kind", "inference")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    assert "endpoint=%2Fv1%2Fsearch" in page.url
    check_page(page, "console-records")

    with page.expect_navigation():
        page.get_by_role("link", name=record_id).click()
    main = page.inner_text("main")
    assert "<script>alert('pwned')</script>" in main  # shown as text, never run (a dialog would fail the test)
    assert "Results and why they were returned" in main
    with page.expect_navigation():
        page.get_by_role("link", name="Compute token attributions").click()
    assert page.locator(".tokens .tok").count() > 0
    check_page(page, "console-record")

    page.fill("#note-record", "Checked against the catalog <b>ok</b>")
    with page.expect_navigation() as decided:
        page.get_by_role("button", name=re.compile("^Approve")).click()
    assert decided.value.status == 200, page.content()[:2000]
    assert "Decision recorded as" in page.inner_text("main")
    assert page.inner_text("#review-state") == "approved"
    review_link = page.locator("main p", has_text="approve by reviewer key").get_by_role("link").first
    review_id = review_link.inner_text()
    with page.expect_navigation():
        review_link.click()
    record = page.inner_text("main")
    assert "review" in record
    assert record_id in record
    assert "Checked against the catalog <b>ok</b>" in record
    check_page(page, "console-review-record")
    chained = httpx.get(
        f"{server.base_url}/v1/audit/records/{review_id}", headers=server.headers(web.reviewer), timeout=60
    ).json()
    assert chained["kind"] == "review"
    assert chained["prev_hash"]

    with page.expect_navigation():
        page.get_by_role("link", name="Review queue").click()
    assert page.locator("h1").inner_text() == "Review queue"
    check_page(page, "console-queue")
    queued = page.locator("section", has=page.get_by_role("link", name=reported))
    queued.get_by_label(re.compile("^Note")).fill("Needs the catalogue team")
    with page.expect_navigation():
        queued.get_by_role("button", name=re.compile("^Escalate")).click()
    assert "Decision recorded as" in page.inner_text("main")
    assert "escalated" in page.locator("section", has=page.get_by_role("link", name=reported)).inner_text()
    with page.expect_navigation():
        page.get_by_role("link", name="Chain verification").click()
    assert "Verified." in page.inner_text("main")
    check_page(page, "console-verify")
    with page.expect_navigation():
        page.get_by_role("link", name="Compliance report").click()
    assert page.locator(".plots img").count() >= 1
    check_page(page, "console-report")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the JSON report").click()
    assert download.value.suggested_filename.endswith(".json")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert page.url.endswith("/console/sign-in")
    assert not web.csp_errors, web.csp_errors
    page.context.close()


def test_demo_search_more_like_this_and_ask(web: Browser) -> None:
    page = sign_in(web.page(), "demo", web.server.frontend_key)
    assert page.url.rstrip("/").endswith("/demo")
    check_page(page, "demo-home")
    page.fill("#query", "baby bath towel")
    with page.expect_navigation():
        page.get_by_role("button", name="Search", exact=True).click()
    results = page.locator("#results .cards > li")
    assert results.count() > 0
    assert "Why:" in results.first.inner_text()
    check_page(page, "demo-results")
    with page.expect_navigation():
        results.first.get_by_role("button", name=re.compile("^More like this")).click()
    assert "More like" in page.inner_text("#results h2")
    assert page.locator("#strip .cards > li").count() > 0
    check_page(page, "demo-more-like-this")
    page.fill("#question", "How long does standard delivery take?")
    with page.expect_navigation():
        page.get_by_role("button", name="Ask").click()
    answer = page.inner_text("#answer")
    assert "AI-generated" in answer
    assert page.locator("#answer .citation").count() > 0
    assert page.inner_text("#disclosure").strip()
    check_page(page, "demo-answer")
    assert not web.csp_errors, web.csp_errors
    page.context.close()
