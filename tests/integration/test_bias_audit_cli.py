"""``candor audit bias`` through click: it writes bias.json and bias.html, prints the summary, chains it in the audit
log (queued for review when it has findings), and the compliance report's JSON twin names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from app.compliance import latest_bias
from governance.audit import AuditLog
from tests.conftest import DEMO_PACK, audit_config
from tests.unit.test_bias import constructed_pack

pytestmark = pytest.mark.integration


def write_suite(path: Path, dataset: Path) -> Path:
    path.write_text(
        f"""
[suite]
name = "bias-cli"
seed = 3
bootstrap = 100

[recommendation.shop]
dataset = "{dataset}"
format = "pack"
recommenders = ["most-popular", "item-knn"]
groups = ["gender"]
min_group_size = 10

[bias]
max_group_difference = 0.05
max_popularity_bias = 0.9
""",
        encoding="utf-8",
    )
    return path


def test_cli_writes_prints_chains_and_queues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("CANDOR_PATHS__STATE_DIR", str(state))
    monkeypatch.setenv("CANDOR_PATHS__PACK", str(DEMO_PACK))
    suite = write_suite(tmp_path / "bias.toml", constructed_pack(tmp_path / "pack", biased=True))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["audit", "bias", str(suite), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    report = json.loads((out / "bias.json").read_text("utf-8"))
    assert (out / "bias.html").is_file()
    assert printed["run_id"] == report["run_id"]
    assert printed["findings_count"] == len(report["findings"]) > 0
    assert "finding group_difference: recommendation.shop most-popular hr@10 by gender (b < a)" in result.stderr
    assert printed["audit_id"] in result.stderr
    log = AuditLog(audit_config(state))
    log.open()
    try:
        stored = log.get(printed["audit_id"])
        assert stored is not None
        assert stored.kind == "bias"
        assert stored.review_state == "pending"
        assert stored.body is not None
        assert stored.body["caller"]["via"] == "candor audit bias"
        assert stored.body["summary"]["report"] == str(out / "bias.json")
        bias, note = latest_bias(log)
        assert note is None
        assert bias is not None
        assert bias["generated_at"] == report["generated_at"]
        assert log.verify().ok
    finally:
        log.close()


def test_cli_refuses_a_suite_without_recommendation_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDOR_PATHS__STATE_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(main, ["audit", "bias", "squad", "--no-progress"])
    assert result.exit_code == 1
    assert "needs an enabled [recommendation.*] task" in result.output
