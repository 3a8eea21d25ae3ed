"""The console and demo pages over HTTP (a real server in this process): sessions, CSRF, roles, escaping, headers.

The browser itself is driven in ``tests/e2e/test_web_browser.py``; these checks need no browser.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth import KeyStore
from retrieval.encoder import Encoder
from tests.integration.test_app_limits import make_settings, serving

HOSTILE = "<script>alert('x')</script> towel"


class Site:
    def __init__(self, base: str, state: Path) -> None:
        self.base = base
        keys = dict(line.split("=", 1) for line in (state / "initial-keys.txt").read_text().splitlines())
        self.frontend = keys["CANDOR_FRONTEND_KEY"]
        self.admin = keys["CANDOR_ADMIN_KEY"]
        self.store_path = state / "candor.sqlite"
        self.reviewer = self.new_key("reviewer")

    def new_key(self, role: str) -> str:
        store = KeyStore(self.store_path)
        try:
            return store.create(role, label="web-test")  # type: ignore[arg-type]
        finally:
            store.close()

    def revoke(self, key: str) -> None:
        store = KeyStore(self.store_path)
        try:
            store.revoke(key.split("_")[1])
        finally:
            store.close()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=120, follow_redirects=False)

    def api(self, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.base}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=120, **kwargs
        )


@pytest.fixture(scope="module")
def site(built_state: Path, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    state = tmp_path_factory.mktemp("web") / "state"
    shutil.copytree(built_state, state)
    with serving(make_settings(state), encoder) as base:
        yield Site(base, state)


def form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:2000]
    return match.group(1)


def signed_in(site: Site, portal: str, key: str) -> tuple[httpx.Client, str]:
    """A client with a live session, and the session's CSRF token."""
    client = site.client()
    page = client.get(f"/{portal}/sign-in")
    response = client.post(f"/{portal}/sign-in", data={"csrf_token": form_token(page.text), "api_key": key})
    assert response.status_code == 303, response.text
    landing = client.get(response.headers["location"])
    assert landing.status_code == 200, landing.text
    return client, form_token(landing.text)


def test_security_headers_on_pages_reports_api_and_errors(site: Site) -> None:
    reviewer = {"Authorization": f"Bearer {site.reviewer}"}
    responses = {
        "sign-in page": httpx.get(f"{site.base}/console/sign-in"),
        "stylesheet": httpx.get(f"{site.base}/static/candor.css"),
        "report json": httpx.get(f"{site.base}/v1/reports/compliance?format=json", headers=reviewer, timeout=120),
        "report html": httpx.get(f"{site.base}/v1/reports/compliance?format=html", headers=reviewer, timeout=120),
        "api": httpx.get(f"{site.base}/v1/info", headers=reviewer),
        "api error": httpx.get(f"{site.base}/v1/info"),
        "no route": httpx.get(f"{site.base}/nowhere"),
        "health": httpx.get(f"{site.base}/health/live"),
    }
    for name, response in responses.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["referrer-policy"] == "no-referrer", name
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp, name
        assert "'unsafe-inline'" not in csp.split("style-src")[0], name  # never for scripts
    page_csp = responses["sign-in page"].headers["content-security-policy"]
    assert "script-src 'self'" in page_csp
    assert "style-src 'self'" in page_csp
    report_csp = responses["report html"].headers["content-security-policy"]
    assert "script-src" not in report_csp
    assert "default-src 'none'" in report_csp
    assert responses["report html"].status_code == 200
    assert responses["stylesheet"].headers["content-type"].startswith("text/css")


def test_sign_in_refuses_wrong_keys_and_roles_without_a_session(site: Site) -> None:
    client = site.client()
    token = form_token(client.get("/console/sign-in").text)
    for key, status, says in (
        ("cnd_00000000_wrong", 401, "unknown or revoked"),
        (site.frontend, 403, "a frontend key cannot open this page"),
    ):
        refused = client.post("/console/sign-in", data={"csrf_token": token, "api_key": key})
        assert refused.status_code == status
        assert says in refused.text
        assert "candor_console_session" not in refused.headers.get("set-cookie", "")
        token = form_token(refused.text)
        assert client.get("/console/records").status_code == 303  # still signed out
    demo = site.client()
    demo_token = form_token(demo.get("/demo/sign-in").text)
    refused = demo.post("/demo/sign-in", data={"csrf_token": demo_token, "api_key": site.reviewer})
    assert refused.status_code == 403
    assert "a reviewer key cannot open this page" in refused.text


def test_session_cookie_is_httponly_strict_and_never_the_key(site: Site) -> None:
    client = site.client()
    page = client.get("/console/sign-in")
    response = client.post("/console/sign-in", data={"csrf_token": form_token(page.text), "api_key": site.reviewer})
    assert response.status_code == 303
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("candor_console_session="))
    attributes = cookie.lower()
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/console" in attributes
    assert "secure" not in attributes  # plain http here; https requests get Secure
    assert site.reviewer.split("_", 2)[2] not in cookie


def test_forms_without_a_valid_csrf_token_get_403(site: Site) -> None:
    client = site.client()
    client.get("/console/sign-in")
    no_token = client.post("/console/sign-in", data={"api_key": site.reviewer})
    assert no_token.status_code == 403
    assert no_token.json()["error"]["code"] == "csrf_failed"
    console, token = signed_in(site, "console", site.reviewer)
    record_id = site.api("POST", "/v1/search", site.frontend, json={"query": "towel", "k": 2}).json()["audit_id"]
    for data in ({"decision": "approve"}, {"decision": "approve", "csrf_token": token[::-1]}):
        refused = console.post(f"/console/records/{record_id}/review", data=data)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "csrf_failed"
    reviews = site.api("GET", f"/v1/audit/records/{record_id}", site.reviewer).json()["reviews"]
    assert reviews == []
    demo, _ = signed_in(site, "demo", site.frontend)
    assert demo.post("/demo/search", data={"query": "towel"}).status_code == 403


def test_console_review_is_a_chained_record_and_everything_is_escaped(site: Site) -> None:
    search = site.api("POST", "/v1/search", site.frontend, json={"query": HOSTILE, "k": 2})
    assert search.status_code == 200, search.text
    record_id = search.json()["audit_id"]
    console, token = signed_in(site, "console", site.reviewer)
    listing = console.get("/console/records", params={"endpoint": "/v1/search", "kind": "inference"})
    assert listing.status_code == 200
    assert record_id in listing.text
    bad_filter = console.get("/console/records", params={"since": "yesterday"})
    assert bad_filter.status_code == 400
    assert "ISO 8601" in bad_filter.text

    page = console.get(f"/console/records/{record_id}")
    assert page.status_code == 200
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;" in page.text
    note = "<img src=x onerror=alert(1)> checked"
    decided = console.post(
        f"/console/records/{record_id}/review", data={"csrf_token": token, "decision": "approve", "note": note}
    )
    assert decided.status_code == 303
    after = console.get(decided.headers["location"])
    assert "Decision recorded as" in after.text
    assert "<img src=x" not in after.text
    assert "&lt;img src=x" in after.text

    record = site.api("GET", f"/v1/audit/records/{record_id}", site.reviewer).json()
    assert record["review_state"] == "approved"
    [review] = record["reviews"]
    assert review["kind"] == "review"
    assert review["record"]["decision"] == "approve"
    assert review["record"]["caller"]["role"] == "reviewer"
    assert review["prev_hash"]
    assert review["seq"] > record["seq"]
    review_page = console.get(f"/console/records/{review['id']}")
    assert review_page.status_code == 200
    assert "&lt;img src=x" in review_page.text
    assert site.api("GET", "/v1/audit/verify", site.reviewer).json()["ok"] is True
    verify = console.get("/console/verify")
    assert verify.status_code == 200
    assert "Verified." in verify.text
    bad = console.post(f"/console/records/{record_id}/review", data={"csrf_token": token, "decision": "delete"})
    assert bad.status_code == 400


def test_admins_read_the_console_but_cannot_decide(site: Site) -> None:
    record_id = site.api("POST", "/v1/search", site.frontend, json={"query": "mug", "k": 1}).json()["audit_id"]
    console, token = signed_in(site, "console", site.admin)
    page = console.get(f"/console/records/{record_id}")
    assert page.status_code == 200
    assert "Record a decision" not in page.text
    refused = console.post(f"/console/records/{record_id}/review", data={"csrf_token": token, "decision": "approve"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    api = site.api("POST", f"/v1/audit/records/{record_id}/review", site.admin, json={"decision": "approve"})
    assert api.status_code == 403  # the same rule on the API


def test_sign_out_and_revocation_end_sessions(site: Site) -> None:
    key = site.new_key("reviewer")
    console, token = signed_in(site, "console", key)
    cookie = console.cookies.get("candor_console_session")
    out = console.post("/console/sign-out", data={"csrf_token": token})
    assert out.status_code == 303
    assert out.headers["location"] == "/console/sign-in"
    replay = site.client()
    replay.cookies.set("candor_console_session", cookie or "", domain="127.0.0.1", path="/console")
    assert replay.get("/console/records").status_code == 303
    again, _ = signed_in(site, "console", key)
    site.revoke(key)
    assert again.get("/console/records").status_code == 303


def test_console_report_and_downloads(site: Site, pdf_renderer: None) -> None:
    console, _ = signed_in(site, "console", site.reviewer)
    page = console.get("/console/report")
    assert page.status_code == 200
    assert 'src="data:image/png;base64,' in page.text
    as_json = console.get("/console/reports/compliance.json")
    assert as_json.status_code == 200
    assert as_json.json()["schema"]
    assert as_json.headers["content-disposition"].startswith("attachment;")
    assert "frame-ancestors 'none'" in as_json.headers["content-security-policy"]
    pdf = console.get("/console/reports/compliance.pdf")
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF")
    assert console.get("/console/reports/secrets.txt").status_code == 404
    signed_out = site.client().get("/console/reports/compliance.json")
    assert signed_out.status_code == 303


def test_demo_search_similar_strip_and_answer(site: Site) -> None:
    demo, token = signed_in(site, "demo", site.frontend)
    results = demo.post("/demo/search", data={"csrf_token": token, "query": HOSTILE})
    assert results.status_code == 200
    assert "<script>alert" not in results.text
    assert "&lt;script&gt;" in results.text
    item_id = re.search(r'name="item_id" value="([^"]+)"', results.text)
    assert item_id, results.text[:3000]
    similar = demo.post("/demo/similar", data={"csrf_token": token, "item_id": item_id.group(1), "title": "x"})
    assert similar.status_code == 200
    assert "More like" in similar.text
    assert "Recommended from your browsing" in similar.text
    answer = demo.post("/demo/ask", data={"csrf_token": token, "question": "How long does standard delivery take?"})
    assert answer.status_code == 200
    assert "AI-generated" in answer.text
    assert 'id="disclosure"' in answer.text
    assert "citation" in answer.text
    empty = demo.post("/demo/search", data={"csrf_token": token, "query": "   "})
    assert empty.status_code == 400
    assert "must not be empty" in empty.text
    records = site.api("GET", "/v1/audit/records", site.reviewer, params={"endpoint": "/v1/answers"}).json()
    assert records["records"][0]["record"]["caller"]["role"] == "frontend"
