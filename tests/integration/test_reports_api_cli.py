"""``GET /v1/reports/compliance`` on a real uvicorn server over the demo state, and ``candor report`` through click.

The state folder holds a real evaluation run (the session's ``eval_runs`` copied under ``evals/runs``), so the
reports carry its figures.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pypdf
import pytest
from click.testing import CliRunner

from app.auth import KeyStore
from app.cli import main
from retrieval.encoder import Encoder
from tests.conftest import DEMO_PACK
from tests.e2e.conftest import read_keys
from tests.integration.test_app_limits import make_settings, serving
from tests.integration.test_compliance_report import SECTIONS


@dataclass(frozen=True)
class Served:
    base: str
    state: Path
    keys: dict[str, str]

    def get(self, role: str | None, **params: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[role]}"} if role else {}
        return httpx.get(f"{self.base}/v1/reports/compliance", params=params, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def report_state(built_state: Path, eval_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("reports-api") / "state"
    shutil.copytree(built_state, state)
    shutil.copytree(eval_runs, state / "evals" / "runs")
    return state


@pytest.fixture(scope="module")
def served(report_state: Path, encoder: Encoder) -> Iterator[Served]:
    with serving(make_settings(report_state), encoder) as base:
        initial = read_keys(report_state / "initial-keys.txt")
        store = KeyStore(report_state / "candor.sqlite")
        try:
            reviewer = store.create("reviewer", label="reports test")
        finally:
            store.close()
        keys = {"frontend": initial["CANDOR_FRONTEND_KEY"], "admin": initial["CANDOR_ADMIN_KEY"], "reviewer": reviewer}
        # Traffic for the audit sections: one audited search.
        search = httpx.post(
            f"{base}/v1/search",
            json={"query": "baby bath towel", "k": 3},
            headers={"Authorization": f"Bearer {keys['frontend']}"},
            timeout=120,
        )
        assert search.status_code == 200, search.text
        yield Served(base, report_state, keys)


def _period() -> tuple[str, str]:
    """A period around now, so the audited traffic falls inside it whenever the tests run."""
    today = datetime.now(UTC).date()
    return (today - timedelta(days=1)).isoformat(), f"{(today + timedelta(days=1)).isoformat()}T00:00:00Z"


def test_html_for_reviewers_and_admins(served: Served) -> None:
    for role in ("reviewer", "admin"):
        response = served.get(role)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        for anchor in SECTIONS:
            assert f'id="{anchor}"' in response.text
        assert "report-tiny" in response.text  # the evaluation run in the state folder
        assert "Audit log not available" not in response.text  # the service's audit log is read


def test_json_twin(served: Served) -> None:
    since, until = _period()
    response = served.get("reviewer", format="json", since=since, until=until)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    twin = response.json()
    assert twin["schema"] == "candor.compliance/1"
    assert twin["period"]["since"] == f"{since}T00:00:00+00:00"
    assert twin["manifest"]["index"]["size"] == 1050
    assert twin["evaluation"]["suite"] == "report-tiny"
    assert twin["audit"]["records"] >= 1
    assert "/v1/search" in {e["endpoint"] for e in twin["audit"]["endpoints"]}
    assert twin["verification"]["ok"] is True


@pytest.mark.usefixtures("pdf_renderer")
def test_pdf(served: Served) -> None:
    response = served.get("reviewer", format="pdf")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    assert len(pypdf.PdfReader(io.BytesIO(response.content)).pages) >= 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "docx"}, "format"),
        ({"since": "last tuesday"}, "since"),
        ({"since": "2026-12-01", "until": "2026-11-01"}, "until"),
    ],
)
def test_bad_parameters_get_400_in_the_error_shape(served: Served, params: dict[str, str], field: str) -> None:
    response = served.get("reviewer", **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == field


def test_roles(served: Served) -> None:
    assert served.get(None).status_code == 401
    denied = served.get("frontend")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "forbidden"


@pytest.mark.usefixtures("pdf_renderer")
def test_cli_compliance_and_model_card(report_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDOR_PATHS__STATE_DIR", str(report_state))
    monkeypatch.setenv("CANDOR_PATHS__PACK", str(DEMO_PACK))
    monkeypatch.setenv("CANDOR_ENCODER__DEVICE", "cpu")
    runner = CliRunner()
    for fmt in ("json", "html", "pdf"):
        out = tmp_path / f"report.{fmt}"
        args = ["report", "compliance", "--format", fmt, "--out", str(out), "--since", _period()[0]]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 0
    twin = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert twin["evaluation"]["suite"] == "report-tiny"
    assert twin["manifest"]["index"]["kind"] == "flat"
    assert twin["period"]["since"] == f"{_period()[0]}T00:00:00+00:00"
    assert twin["verification"]["ok"] is True  # the CLI reads the service's audit log too
    assert twin["audit"]["records"] >= 1
    assert twin["manifest"]["config_hash"] in (tmp_path / "report.html").read_text("utf-8")
    assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF-")

    card = tmp_path / "card.md"
    result = runner.invoke(main, ["report", "model-card", "--out", str(card)])
    assert result.exit_code == 0, result.output
    text = card.read_text("utf-8")
    assert "# Model card: all-MiniLM-L6-v2" in text
    assert twin["manifest"]["models"][0]["version"] in text
    card_json = tmp_path / "card.json"
    result = runner.invoke(main, ["report", "model-card", "--format", "json", "--out", str(card_json)])
    assert result.exit_code == 0, result.output
    assert json.loads(card_json.read_text("utf-8"))["model"]["dim"] == 384

    bad = runner.invoke(main, ["report", "compliance", "--out", str(tmp_path / "x.html"), "--since", "soon"])
    assert bad.exit_code == 2
    assert "not a date" in bad.output
    bad = runner.invoke(main, ["report", "compliance", "--format", "docx", "--out", str(tmp_path / "x.docx")])
    assert bad.exit_code == 2
