"""``GET /v1/reports/drift`` on a real uvicorn server, ``candor audit drift`` through click, and the compliance report's
drift section: real searches with ``context.segment`` before and after a shift in what shoppers ask."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from app.auth import KeyStore
from app.cli import main
from app.compliance import NO_DRIFT_CHECK, latest_drift
from governance.audit import AuditLog
from governance.report import ComplianceFacts, VersionManifest, render_html
from retrieval.encoder import Encoder
from tests.conftest import DEMO_PACK, audit_config
from tests.e2e.conftest import read_keys
from tests.integration.test_app_limits import make_settings, serving

BEFORE = ["soft baby towel", "baby bath robe", "cotton baby blanket", "infant bath set", "kids hooded towel"]
AFTER = ["analog wrist watch", "mens leather wallet", "gold plated earrings", "running shoes", "laptop backpack"]
MODIFIERS = ["", " for daily use", " in black", " premium quality"]


@dataclass(frozen=True)
class Served:
    base: str
    state: Path
    keys: dict[str, str]
    shift_at: float
    audit_ids: list[str]

    def headers(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"} if role else {}

    def drift(self, role: str | None, **params: str) -> httpx.Response:
        return httpx.get(f"{self.base}/v1/reports/drift", params=params, headers=self.headers(role), timeout=120)

    def since_shift(self) -> str:
        """The current window: from just before the shifted searches until now."""
        return f"{time.time() - self.shift_at + 0.5:.3f}s"


@pytest.fixture(scope="module")
def served(built_state: Path, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("drift-api") / "state"
    shutil.copytree(built_state, state)
    with serving(make_settings(state, drift={"min_samples": 10}), encoder) as base:
        initial = read_keys(state / "initial-keys.txt")
        store = KeyStore(state / "candor.sqlite")
        try:
            reviewer = store.create("reviewer", label="drift test")
        finally:
            store.close()
        keys = {"frontend": initial["CANDOR_FRONTEND_KEY"], "admin": initial["CANDOR_ADMIN_KEY"], "reviewer": reviewer}
        frontend = {"Authorization": f"Bearer {keys['frontend']}"}
        ids: list[str] = []

        def search(queries: list[str]) -> None:
            with httpx.Client(base_url=base, headers=frontend, timeout=120) as client:
                for query in queries:
                    body = {"query": query, "k": 3, "context": {"segment": "mobile"}}
                    response = client.post("/v1/search", json=body)
                    assert response.status_code == 200, response.text
                    ids.append(response.json()["audit_id"])

        search([q + m for q in BEFORE for m in MODIFIERS])
        time.sleep(1.5)  # the windows of the checks below start half a second before the shift
        shift_at = time.time()
        search([q + m for q in AFTER for m in MODIFIERS])
        yield Served(base, state, keys, shift_at, ids)


def test_roles_and_bad_windows(served: Served) -> None:
    assert served.drift(None).status_code == 401
    denied = served.drift("frontend")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "forbidden"
    for name, value in (("window", "soon"), ("reference", "0h"), ("window", "99999d")):
        bad = served.drift("reviewer", **{name: value})
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["details"][0]["field"] == name


def test_the_route_and_the_segment_are_documented(served: Served) -> None:
    document = httpx.get(f"{served.base}/schema/openapi.json", timeout=60).json()
    operation = document["paths"]["/v1/reports/drift"]["get"]
    assert {"200", "400", "401", "403", "503"} <= set(operation["responses"])
    assert {p["name"] for p in operation["parameters"]} == {"window", "reference"}
    segment = document["components"]["schemas"]["ContextIn"]["properties"]["segment"]
    assert "pattern" in str(segment)
    refused = httpx.post(
        f"{served.base}/v1/search",
        json={"query": "towel", "context": {"segment": "ada@example.com"}},
        headers=served.headers("frontend"),
        timeout=60,
    )
    assert refused.status_code == 400


def test_records_carry_the_segment_and_a_query_sketch(served: Served) -> None:
    record_id = served.audit_ids[0]
    got = httpx.get(f"{served.base}/v1/audit/records/{record_id}", headers=served.headers("reviewer"), timeout=60)
    record = got.json()["record"]
    assert record["segment"] == "mobile"
    sketch = record["query_sketch"]
    assert (sketch["dims"], sketch["seed"], len(sketch["values"])) == (16, 0, 16)
    assert sketch["encoder"].startswith("sha256:")
    # Feedback counts in its response's segment.
    feedback = httpx.post(
        f"{served.base}/v1/feedback",
        json={"audit_id": record_id, "event": "click", "item_id": record["retrieved"][0]["id"]},
        headers=served.headers("frontend"),
        timeout=60,
    )
    assert feedback.status_code == 201, feedback.text
    stored = httpx.get(
        f"{served.base}/v1/audit/records/{feedback.json()['audit_id']}", headers=served.headers("reviewer"), timeout=60
    ).json()["record"]
    assert stored["segment"] == "mobile"


def test_shifted_queries_raise_an_alert_that_joins_the_review_queue(served: Served) -> None:
    response = served.drift("reviewer", window=served.since_shift(), reference="1h")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["schema"] == "candor.drift/1"
    assert report["segments"]["all"]["counts"]["current"]["responses"] == 20
    assert report["segments"]["all"]["counts"]["reference"]["responses"] == 20
    assert set(report["segments"]) == {"all", "mobile"}
    mobile = report["segments"]["mobile"]["embedding"]
    assert mobile["p_value"] < 0.01, mobile
    assert report["drift"] is True
    assert {"segment": "mobile", "signal": "query_embedding_mmd"}.items() <= next(
        a for a in report["alerts"] if a["segment"] == "mobile"
    ).items()
    reviewer = served.headers("reviewer")
    queue = httpx.get(f"{served.base}/v1/audit/review-queue", headers=reviewer, timeout=60).json()
    queued = {r["id"]: r for r in queue["records"]}
    assert report["audit_id"] in queued
    assert queued[report["audit_id"]]["kind"] == "drift"
    assert queued[report["audit_id"]]["record"]["review"]["reason"].startswith("drift: query_embedding_mmd")
    # A reviewer decides on it like on any record: approved, it leaves the queue.
    decided = httpx.post(
        f"{served.base}/v1/audit/records/{report['audit_id']}/review",
        json={"decision": "approve", "note": "a new product line launched today"},
        headers=reviewer,
        timeout=60,
    )
    assert decided.status_code == 201, decided.text
    queue = httpx.get(f"{served.base}/v1/audit/review-queue", headers=reviewer, timeout=60).json()
    assert report["audit_id"] not in {r["id"] for r in queue["records"]}
    listed = httpx.get(f"{served.base}/v1/audit/records", params={"kind": "drift"}, headers=reviewer, timeout=60)
    assert report["audit_id"] in {r["id"] for r in listed.json()["records"]}
    verify = httpx.get(f"{served.base}/v1/audit/verify", headers=reviewer, timeout=60).json()
    assert verify["ok"] is True
    # Admins may run it too; both windows holding the same stream, nothing fires.
    quiet = served.drift("admin", window="1h", reference="1h")
    assert quiet.status_code == 200
    assert quiet.json()["window"]["records"] >= 40
    assert quiet.json()["alerts"] == []


def test_cli_prints_writes_and_chains_the_report(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDOR_PATHS__STATE_DIR", str(served.state))
    monkeypatch.setenv("CANDOR_PATHS__PACK", str(DEMO_PACK))
    monkeypatch.setenv("CANDOR_DRIFT__MIN_SAMPLES", "10")
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "drift", "--window", served.since_shift(), "--reference", "1h"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    written = json.loads((served.state / "reports" / "drift.json").read_text("utf-8"))
    assert printed == written
    assert printed["drift"] is True
    assert printed["segments"]["mobile"]["embedding"]["alert"] is True
    assert printed["audit_id"] in result.stderr
    log = AuditLog(audit_config(served.state))
    log.open()
    try:
        stored = log.get(printed["audit_id"])
        assert stored is not None
        assert stored.review_state == "pending"
        assert stored.body is not None
        assert stored.body["caller"]["via"] == "candor audit drift"
        assert log.verify().ok
    finally:
        log.close()
    bad = runner.invoke(main, ["audit", "drift", "--window", "soon"])
    assert bad.exit_code == 2
    assert "not a duration" in bad.output


def test_the_compliance_report_shows_the_latest_check_with_its_date(served: Served) -> None:
    ran = served.drift("reviewer", window="1h", reference="1h").json()
    response = httpx.get(
        f"{served.base}/v1/reports/compliance",
        params={"format": "json"},
        headers=served.headers("reviewer"),
        timeout=120,
    )
    twin = response.json()
    assert twin["drift"]["audit_id"] == ran["audit_id"]
    assert twin["drift"]["generated_at"] == ran["generated_at"]
    assert twin["drift_note"] is None
    page = httpx.get(f"{served.base}/v1/reports/compliance", headers=served.headers("admin"), timeout=120).text
    assert "Live drift (latest check)" in page
    assert ran["audit_id"] in page
    assert ran["generated_at"] in page


def bare_facts(**fields: Any) -> ComplianceFacts:
    manifest = VersionManifest("0", (), None, "sha256:c", "abc", "git")
    return ComplianceFacts(datetime.now(UTC), None, None, manifest, **fields)


def test_no_drift_check_is_said_plainly(tmp_path: Path) -> None:
    log = AuditLog(audit_config(tmp_path))
    log.open()
    try:
        assert latest_drift(log) == (None, NO_DRIFT_CHECK)
    finally:
        log.close()
    drift, note = latest_drift(None)
    assert drift is None
    assert note is not None
    assert "no audit store" in note
    page = render_html(bare_facts(drift_note=NO_DRIFT_CHECK))
    assert "No drift check ran" in page
    assert "Bias audit: not yet run" in page
