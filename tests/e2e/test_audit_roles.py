"""Role boundaries of every governance route over a real ``candor serve`` process."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.auth import KeyStore
from tests.e2e.conftest import Server

READS = [
    ("GET", "/v1/audit/records"),
    ("GET", "/v1/audit/records/{id}"),
    ("GET", "/v1/audit/records/{id}/explanation"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/audit/review-queue"),
]
REVIEW = ("POST", "/v1/audit/records/{id}/review")


@pytest.fixture(scope="module")
def reviewer_key(server: Server) -> str:
    store = KeyStore(server.state_dir / "candor.sqlite")
    try:
        return store.create("reviewer", label="e2e")
    finally:
        store.close()


@pytest.fixture(scope="module")
def audit_id(server: Server) -> str:
    response = httpx.post(
        f"{server.base_url}/v1/search",
        json={"query": "cotton bath towel", "k": 2},
        headers=server.headers(server.frontend_key),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    value: str = response.json()["audit_id"]
    return value


def call(server: Server, key: str | None, method: str, path: str, record_id: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method,
        server.base_url + path.format(id=record_id),
        headers=server.headers(key),
        timeout=60,
        **kwargs,
    )


@pytest.mark.parametrize(("method", "path"), [*READS, REVIEW])
def test_frontend_and_anonymous_callers_are_refused(server: Server, audit_id: str, method: str, path: str) -> None:
    body = {"json": {"decision": "approve"}} if method == "POST" else {}
    frontend = call(server, server.frontend_key, method, path, audit_id, **body)
    assert frontend.status_code == 403, frontend.text
    assert frontend.json()["error"]["code"] == "forbidden"
    anonymous = call(server, None, method, path, audit_id, **body)
    assert anonymous.status_code == 401


@pytest.mark.parametrize(("method", "path"), READS)
def test_reviewers_and_admins_read(server: Server, audit_id: str, reviewer_key: str, method: str, path: str) -> None:
    for key in (reviewer_key, server.admin_key):
        response = call(server, key, method, path, audit_id)
        assert response.status_code == 200, response.text


def test_only_reviewers_record_decisions(server: Server, audit_id: str, reviewer_key: str) -> None:
    method, path = REVIEW
    body = {"decision": "escalate", "note": "e2e check"}
    admin = call(server, server.admin_key, method, path, audit_id, json=body)
    assert admin.status_code == 403
    reviewer = call(server, reviewer_key, method, path, audit_id, json=body)
    assert reviewer.status_code == 201, reviewer.text
    assert reviewer.json()["review_state"] == "escalated"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_no_role_can_change_or_delete_records(server: Server, audit_id: str, reviewer_key: str, method: str) -> None:
    for key in (reviewer_key, server.admin_key, server.frontend_key):
        for path in ("/v1/audit/records/{id}", "/v1/audit/records"):
            response = call(server, key, method, path, audit_id, json={"record": {}})
            assert response.status_code in (403, 405), (method, path, response.status_code)
    record = call(server, reviewer_key, "GET", "/v1/audit/records/{id}", audit_id)
    assert record.status_code == 200
    assert call(server, reviewer_key, "GET", "/v1/audit/verify", audit_id).json()["ok"] is True


def test_feedback_is_for_frontend_and_admin_keys(server: Server, audit_id: str, reviewer_key: str) -> None:
    body = {"audit_id": audit_id, "event": "click"}
    assert call(server, reviewer_key, "POST", "/v1/feedback", audit_id, json=body).status_code == 403
    frontend = call(server, server.frontend_key, "POST", "/v1/feedback", audit_id, json=body)
    assert frontend.status_code == 201, frontend.text
    assert frontend.json()["target_id"] == audit_id
