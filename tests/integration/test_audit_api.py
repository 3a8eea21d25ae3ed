"""The audited routes and the governance routes in a real server (in this process, sharing the session encoder):
every call leaves a record, reviewers read and decide, bad input gets 4xx, a locked store gets 503."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth import KeyStore
from governance.audit import AuditLog, WouldBlock
from retrieval.encoder import Encoder
from tests.conftest import PROJECT_ROOT
from tests.integration.test_app_limits import make_settings, serving


class Client:
    def __init__(self, base: str, state: Path) -> None:
        self.base = base
        self.state = state
        keys = dict(line.split("=", 1) for line in (state / "initial-keys.txt").read_text().splitlines())
        self.frontend = keys["CANDOR_FRONTEND_KEY"]
        self.admin = keys["CANDOR_ADMIN_KEY"]
        store = KeyStore(state / "candor.sqlite")
        self.reviewer = store.create("reviewer", label="test")
        store.close()

    def call(self, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def api(built_state: Path, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One server for the module (starting one costs seconds of the shared CPU); tests only add records."""
    state = tmp_path_factory.mktemp("audit-api") / "state"
    shutil.copytree(built_state, state)
    settings = make_settings(state, audit={"busy_timeout_ms": 200, "checkpoint_every": 5})
    with serving(settings, encoder) as base:
        yield Client(base, state)


def cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"CANDOR_PATHS__STATE_DIR": str(state), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "audit", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_audited_calls_reviews_and_cli(api: Client) -> None:
    body = {
        "query": "soft cotton towel for Grace Hopper grace@navy.mil",
        "k": 3,
        "context": {"user": "Grace Hopper"},
    }
    search = api.call("POST", "/v1/search", api.frontend, json=body)
    assert search.status_code == 200, search.text
    audit_id = search.json()["audit_id"]
    assert audit_id.startswith("aud_")
    recs = api.call("POST", "/v1/recommendations", api.frontend, json={"history": [search.json()["items"][0]["id"]]})
    assert recs.status_code == 200, recs.text
    rec_id = recs.json()["audit_id"]

    record = api.call("GET", f"/v1/audit/records/{audit_id}", api.reviewer)
    assert record.status_code == 200, record.text
    data = record.json()
    chained = data["record"]
    assert chained["endpoint"] == "/v1/search"
    assert chained["caller"]["role"] == "frontend"
    assert chained["request"]["query"] == "soft cotton towel for [name] [email]"
    assert "Grace" not in json.dumps(chained)
    assert chained["retrieved"][0]["id"] == search.json()["items"][0]["id"]
    assert chained["explanation"][0]["id"] == search.json()["items"][0]["id"]
    assert chained["models"]["encoder"]["name"] == "all-MiniLM-L6-v2"
    assert chained["config_hash"].startswith("sha256:")
    assert chained["config_hash"] == api.call("GET", "/v1/info", api.frontend).json()["config_digest"]
    assert chained["index_version"]
    assert chained["latency_ms"] > 0
    assert chained["ai_generated"] is True
    assert data["review_state"] == "not_required"
    rec_record = api.call("GET", f"/v1/audit/records/{rec_id}", api.admin).json()
    assert rec_record["record"]["explanation"][0]["contributions"]

    # Feedback: unknown ids are refused; a report queues the response for review.
    missing = api.call("POST", "/v1/feedback", api.frontend, json={"audit_id": "aud_nope", "event": "click"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "audit_record_not_found"
    bad_event = api.call("POST", "/v1/feedback", api.frontend, json={"audit_id": audit_id, "event": "explode"})
    assert bad_event.status_code == 400
    report = api.call(
        "POST", "/v1/feedback", api.frontend, json={"audit_id": audit_id, "event": "report", "note": "odd results"}
    )
    assert report.status_code == 201, report.text
    assert report.json()["audit_id"].startswith("aud_")
    queue = api.call("GET", "/v1/audit/review-queue", api.reviewer).json()
    assert [r["id"] for r in queue["records"]] == [audit_id]
    decided = api.call(
        "POST",
        f"/v1/audit/records/{audit_id}/review",
        api.reviewer,
        json={"decision": "approve", "note": "fine; Grace Hopper agreed"},
    )
    assert decided.status_code == 201, decided.text
    chained_review = api.call("GET", f"/v1/audit/records/{decided.json()['review_id']}", api.reviewer).json()
    assert chained_review["record"]["note"] == "fine; [name] agreed"  # the searched record's user, redacted
    assert decided.json()["review_state"] == "approved"
    assert api.call("GET", "/v1/audit/review-queue", api.reviewer).json()["records"] == []
    detail = api.call("GET", f"/v1/audit/records/{audit_id}", api.reviewer).json()
    assert [r["record"]["decision"] for r in detail["reviews"]] == ["approve"]

    # Listing: filters and cursor pagination.
    for i in range(3):
        assert api.call("POST", "/v1/search", api.frontend, json={"query": f"bedsheet {i}"}).status_code == 200
    searches = api.call("GET", "/v1/audit/records", api.reviewer, params={"endpoint": "/v1/search"}).json()
    assert {r["endpoint"] for r in searches["records"]} == {"/v1/search"}
    assert audit_id in {r["id"] for r in searches["records"]}
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.call("GET", "/v1/audit/records", api.reviewer, params=params).json()
        seen += [r["seq"] for r in page["records"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) == seen[0]
    approved = api.call("GET", "/v1/audit/records", api.reviewer, params={"review_state": "approved"}).json()
    assert [r["id"] for r in approved["records"]] == [audit_id]
    future = api.call("GET", "/v1/audit/records", api.reviewer, params={"since": "2999-01-01"}).json()
    assert future["records"] == []

    verify = api.call("GET", "/v1/audit/verify", api.reviewer).json()
    assert verify["ok"] is True
    assert verify["count"] == len(seen)
    assert verify["checkpoints"] == len(seen) // 5
    assert verify["checkpoints_ok"] is True

    # Stored and integrated-gradients explanations (the latter computed once, then cached with the record).
    stored = api.call("GET", f"/v1/audit/records/{audit_id}/explanation", api.reviewer).json()
    assert stored["explanation"] == chained["explanation"]
    ig = api.call(
        "GET", f"/v1/audit/records/{audit_id}/explanation", api.reviewer, params={"method": "integrated-gradients"}
    )
    assert ig.status_code == 200, ig.text
    first = ig.json()
    assert first["cached"] is False
    assert first["results"][0]["id"] == chained["retrieved"][0]["id"]
    tokens = [t["token"] for t in first["results"][0]["tokens"]]
    assert "towel" in tokens
    assert abs(first["results"][0]["convergence_delta"]) < 0.05
    again = api.call(
        "GET", f"/v1/audit/records/{audit_id}/explanation", api.reviewer, params={"method": "integrated-gradients"}
    ).json()
    assert again["cached"] is True
    assert again["results"] == first["results"]
    no_query = api.call(
        "GET", f"/v1/audit/records/{rec_id}/explanation", api.reviewer, params={"method": "integrated-gradients"}
    )
    assert no_query.status_code == 422

    # The CLI on the same store while the service runs: verify, export, verify the export, erase.
    result = cli(api.state, "verify")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True
    out = api.state / "export.jsonl"
    assert cli(api.state, "export", "--out", str(out)).returncode == 0
    result = cli(api.state, "verify", "--file", str(out))
    assert result.returncode == 0, result.stderr
    other_key = api.state / "other.pem"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from governance.audit.signing import public_pem

    other_key.write_text(public_pem(Ed25519PrivateKey.generate().public_key()))
    result = cli(api.state, "verify", "--file", str(out), "--public-key", str(other_key))
    assert result.returncode == 2
    assert "signature" in result.stderr
    out.write_text(out.read_text()[:-200])
    result = cli(api.state, "verify", "--file", str(out))
    assert result.returncode == 2
    assert "truncated" in result.stderr
    (api.state / "junk.jsonl").write_text("not json\n")
    result = cli(api.state, "verify", "--file", str(api.state / "junk.jsonl"))
    assert result.returncode == 1
    assert "not a JSON object line" in result.stderr
    result = cli(api.state, "erase", "--record", audit_id)
    assert result.returncode == 0, result.stderr
    assert cli(api.state, "erase", "--record", "aud_nope").returncode == 1
    result = cli(api.state, "purge", "--before", "2000-01-01")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["purged"] == 0
    assert cli(api.state, "purge", "--before", "not-a-date").returncode == 2
    assert api.call("GET", "/v1/audit/verify", api.reviewer).json()["ok"] is True


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"until": "2026-13-45"},
        {"since": "2026-02-01", "until": "2026-01-01"},
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "ten"},
        {"cursor": "abc"},
        {"review_state": "maybe"},
        {"kind": "everything"},
        {"endpoint": "search"},
    ],
)
def test_malformed_filters_are_4xx(api: Client, params: dict[str, str]) -> None:
    response = api.call("GET", "/v1/audit/records", api.reviewer, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_unknown_ids_and_bad_bodies(api: Client) -> None:
    assert api.call("GET", "/v1/audit/records/aud_nope", api.reviewer).status_code == 404
    assert api.call("GET", "/v1/audit/records/aud_nope/explanation", api.reviewer).status_code == 404
    review = api.call("POST", "/v1/audit/records/aud_nope/review", api.reviewer, json={"decision": "approve"})
    assert review.status_code == 404
    assert review.json()["error"]["code"] == "audit_record_not_found"
    search = api.call("POST", "/v1/search", api.frontend, json={"query": "towel"}).json()
    bad = api.call("POST", f"/v1/audit/records/{search['audit_id']}/review", api.reviewer, json={"decision": "delete"})
    assert bad.status_code == 400
    method = api.call(
        "GET", f"/v1/audit/records/{search['audit_id']}/explanation", api.reviewer, params={"method": "shap"}
    )
    assert method.status_code == 400
    assert api.call("POST", "/v1/feedback", api.frontend, json={"event": "click"}).status_code == 400


def test_locked_store_gives_503_and_the_service_keeps_serving(api: Client) -> None:
    assert api.call("POST", "/v1/search", api.frontend, json={"query": "towel"}).status_code == 200
    before = api.call("GET", "/v1/audit/verify", api.reviewer).json()["count"]
    blocker = sqlite3.connect(api.state / "audit.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        locked = api.call("POST", "/v1/search", api.frontend, json={"query": "towel"})
        assert locked.status_code == 503
        assert locked.json()["error"]["code"] == "audit_unavailable"
        assert locked.headers["retry-after"] == "5"
        # Readers of a WAL store do not wait for its writer: reviewers still read while writes are refused.
        assert api.call("GET", "/v1/audit/records?limit=5", api.reviewer).status_code == 200
        assert httpx.get(f"{api.base}/health/live").status_code == 200
        assert api.call("GET", "/v1/info", api.frontend).status_code == 200
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert api.call("POST", "/v1/search", api.frontend, json={"query": "towel"}).status_code == 200
    verify = api.call("GET", "/v1/audit/verify", api.reviewer).json()
    assert verify["ok"] is True
    assert verify["count"] == before + 1  # the refused call left no record and no gap


def test_small_reviewer_reads_stay_on_the_event_loop_and_fall_back_to_a_thread(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One record or a page of up to 50 is read at once on the event loop (a thread hand-off costs more under load);
    bigger pages go to a worker thread, and so does a small read the store cannot serve at once, with the same
    answer."""
    audit_id = api.call("POST", "/v1/search", api.frontend, json={"query": "towel"}).json()["audit_id"]
    quick: list[str] = []
    original = AuditLog.read_now

    def spy(log: AuditLog, fn: Callable[[], Any]) -> Any:
        out = original(log, fn)
        quick.append(threading.current_thread().name)
        return out

    monkeypatch.setattr(AuditLog, "read_now", spy)
    one = api.call("GET", f"/v1/audit/records/{audit_id}", api.reviewer)
    page = api.call("GET", "/v1/audit/records?limit=50", api.reviewer)
    assert one.status_code == page.status_code == 200
    assert len(quick) == 2
    assert len(set(quick)) == 1  # both on the one event loop's thread
    big = api.call("GET", "/v1/audit/records?limit=51", api.reviewer)
    assert big.status_code == 200
    assert len(quick) == 2  # a bigger page never ran on the loop

    def busy(log: AuditLog, fn: Callable[[], Any]) -> Any:
        raise WouldBlock

    monkeypatch.setattr(AuditLog, "read_now", busy)
    again = api.call("GET", f"/v1/audit/records/{audit_id}", api.reviewer)
    assert again.status_code == 200
    assert {k: v for k, v in again.json().items() if k != "request_id"} == {
        k: v for k, v in one.json().items() if k != "request_id"
    }


def test_verification_reads_the_store_itself_and_finds_an_edited_record(api: Client) -> None:
    audit_id = api.call("POST", "/v1/search", api.frontend, json={"query": "towel"}).json()["audit_id"]
    assert api.call("GET", "/v1/audit/verify", api.reviewer).json()["ok"] is True
    store = sqlite3.connect(api.state / "audit.sqlite", isolation_level=None)
    (body,) = store.execute("SELECT body FROM audit_records WHERE id = ?", (audit_id,)).fetchone()
    try:
        store.execute("UPDATE audit_records SET body = ? WHERE id = ?", (body.replace("towel", "tower"), audit_id))
        # Verification runs in the reports' own process, which opens the store afresh: it sees the edit.
        assert api.call("GET", "/v1/audit/verify", api.reviewer).json()["ok"] is False
    finally:
        store.execute("UPDATE audit_records SET body = ? WHERE id = ?", (body, audit_id))
        store.close()
    assert api.call("GET", "/v1/audit/verify", api.reviewer).json()["ok"] is True


def test_corrupted_store_gives_503_and_the_service_keeps_serving(state_copy: Path, encoder: Encoder) -> None:
    (state_copy / "audit.sqlite").write_bytes(b"garbage" * 1000)
    with serving(make_settings(state_copy), encoder) as base:
        client = Client(base, state_copy)
        response = client.call("POST", "/v1/search", client.frontend, json={"query": "towel"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "audit_unavailable"
        # The store's error text (paths, SQL) is logged, never sent.
        assert response.json()["error"]["details"] == {"reason": "audit store unavailable"}
        assert str(state_copy) not in response.text
        verify = client.call("GET", "/v1/audit/verify", client.reviewer)
        assert verify.status_code == 503
        assert client.call("GET", "/v1/info", client.frontend).status_code == 200


def test_answers_are_audited_and_abstentions_wait_for_review(api: Client) -> None:
    answered = api.call(
        "POST",
        "/v1/answers",
        api.frontend,
        json={"question": "Can I return a gift card? I am Ada Lovelace", "context": {"user": "Ada Lovelace"}},
    )
    assert answered.status_code == 200, answered.text
    body = answered.json()
    record = api.call("GET", f"/v1/audit/records/{body['audit_id']}", api.reviewer).json()
    chained = record["record"]
    assert chained["endpoint"] == "/v1/answers"
    assert "Lovelace" not in json.dumps(chained)
    cited = [(c["doc_id"], c["chunk_id"]) for c in chained["explanation"]["citations"]]
    assert cited == [(c["doc_id"], c["chunk_id"]) for c in body["citations"]]
    assert {r["id"] for r in chained["retrieved"]} >= {f"{d}#{c}" for d, c in cited}
    assert chained["models"]["backend"] == body["backend"]

    unknown = api.call("POST", "/v1/answers", api.frontend, json={"question": "Who is the chief executive?"})
    assert unknown.status_code == 200, unknown.text
    assert unknown.json()["abstained"] is True
    queue = api.call("GET", "/v1/audit/review-queue", api.reviewer).json()
    assert unknown.json()["audit_id"] in {r["id"] for r in queue["records"]}
    assert api.call("GET", "/v1/audit/verify", api.reviewer).json()["ok"] is True
