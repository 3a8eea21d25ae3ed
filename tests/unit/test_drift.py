"""Live drift: the statistics checked by hand on tiny inputs, shifted and unshifted query streams (fixed seeds),
segments, rates and alerts, and a check run over a real audit log whose alert joins the review queue."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from app.settings import DriftSettings
from governance.audit import AuditEvent, AuditLog, RecordQuery
from governance.audit.records import event_record
from governance.drift import (
    ALL,
    DriftConfig,
    Observation,
    Window,
    check_drift,
    drift_report,
    mmd2_unbiased,
    mmd_test,
    parse_duration,
    psi,
    psi_edges,
    query_sketch,
)
from governance.drift.stats import bin_shares, median_bandwidth
from tests.conftest import AuditStoreHandle

DIM = 384
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def config(**overrides: Any) -> DriftConfig:
    """The project's default drift configuration, then ``overrides``."""
    return DriftSettings(**overrides).to_config()


# -- the statistics, by hand ----------------------------------------------------------------------------------------


def test_psi_by_hand() -> None:
    reference, current = [0.1, 0.2, 0.3, 0.4], [0.1, 0.3, 0.4, 0.5]
    edges = psi_edges(reference, 2)
    assert edges == [pytest.approx(0.25)]
    assert bin_shares(reference, edges) == [0.5, 0.5]
    assert bin_shares(current, edges) == [0.25, 0.75]
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert psi(reference, current, edges) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert psi(reference, reference, edges) == 0.0
    # An empty bin is floored, not infinite.
    assert math.isfinite(psi(reference, [0.9, 0.95], edges))
    assert psi(reference, [0.9, 0.95], edges) > 1.0


def test_mmd_by_hand() -> None:
    x, y = np.array([[0.0], [0.0]]), np.array([[1.0], [1.0]])
    # within-sample kernels are 1; across, exp(-1/2): 1 + 1 - 2 exp(-1/2)
    assert mmd2_unbiased(x, y, 1.0) == pytest.approx(2 - 2 * math.exp(-0.5))
    same = np.array([[0.0], [1.0]])
    # within: exp(-1/2) each; across: (1 + 1 + 2 exp(-1/2)) / 4
    assert mmd2_unbiased(same, same, 1.0) == pytest.approx(math.exp(-0.5) - 1)
    assert median_bandwidth(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)
    assert median_bandwidth(np.zeros((3, 2))) == 1.0
    with pytest.raises(ValueError, match="at least two"):
        mmd2_unbiased(x[:1], y, 1.0)


def test_mmd_test_matches_the_direct_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 4)), rng.normal(0.5, 1.0, size=(30, 4))
    result = mmd_test(x, y, permutations=50, seed=1, max_samples=100)
    assert result.mmd2 == pytest.approx(mmd2_unbiased(x, y, result.bandwidth))
    assert (result.n_reference, result.n_current, result.permutations) == (40, 30, 50)
    assert 1 / 51 <= result.p_value <= 1.0
    assert mmd_test(x, y, permutations=50, seed=1, max_samples=100) == result
    capped = mmd_test(x, y, permutations=10, seed=1, max_samples=12)
    assert (capped.n_reference, capped.n_current) == (12, 12)


def test_query_sketch_is_fixed_small_and_keeps_distances() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=DIM), rng.normal(size=DIM)
    sketch = query_sketch(a, 16, 0)
    assert len(sketch) == 16
    assert all(round(v, 3) == v for v in sketch)
    assert query_sketch(a, 16, 0) == sketch
    assert query_sketch(a, 16, 1) != sketch
    # Johnson-Lindenstrauss: distances are kept roughly (here within a factor of two).
    ratio = np.linalg.norm(np.subtract(sketch, query_sketch(b, 16, 0))) / np.linalg.norm(a - b)
    assert 0.5 < ratio < 2.0


def test_parse_duration() -> None:
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration(" 30m ") == timedelta(minutes=30)
    assert parse_duration("1.5s") == timedelta(seconds=1.5)
    assert parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "24", "0h", "-1d", "1y", "3651d", "h"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


# -- query streams --------------------------------------------------------------------------------------------------

CENTRES = np.random.default_rng(42).normal(size=(6, DIM))


def queries(n: int, seed: int, topics: tuple[float, ...] = (1, 1, 1, 0, 0, 0)) -> np.ndarray:
    """Unit query vectors around topic centres drawn with the given weights (a seeded stream)."""
    rng = np.random.default_rng(seed)
    weights = np.asarray(topics, dtype=float) / sum(topics)
    picks = rng.choice(len(CENTRES), size=n, p=weights)
    vectors = CENTRES[picks] + 0.8 * rng.normal(size=(n, DIM))
    normed: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normed


def stream(
    vectors: np.ndarray,
    seed: int,
    score_mean: float = 0.6,
    segment: str | None = None,
    abstain_rate: float = 0.0,
    feedback: int = 0,
) -> list[Observation]:
    """Observations of a query stream: sketches, top scores, some answers that abstain, feedback events."""
    rng = np.random.default_rng(seed + 1000)
    cfg = config()
    obs = [
        Observation(
            kind="inference",
            endpoint="/v1/search",
            segment=segment,
            sketch=tuple(query_sketch(v, cfg.sketch_dims, cfg.sketch_seed)),
            top_score=float(rng.normal(score_mean, 0.05)),
            encoder="sha256:enc",
        )
        for v in vectors
    ]
    answers = 50
    obs += [
        Observation(kind="inference", endpoint="/v1/answers", segment=segment, abstained=i < abstain_rate * answers)
        for i in range(answers)
    ]
    obs += [Observation(kind="feedback", endpoint="/v1/feedback", segment=segment) for _ in range(feedback)]
    return obs


def window(obs: list[Observation], days_back: int, days: int = 1) -> Window:
    return Window(T0 - timedelta(days=days_back), T0 - timedelta(days=days_back - days), tuple(obs))


def test_no_drift_on_an_unshifted_stream() -> None:
    ref = window(stream(queries(300, seed=1), seed=1, feedback=20), 8, 7)
    cur = window(stream(queries(300, seed=2), seed=2, feedback=22), 1)
    report = drift_report(ref, cur, config(), generated_at=T0)
    figures = report["segments"][ALL]
    assert figures["embedding"]["p_value"] >= 0.01, figures["embedding"]
    assert figures["top_score"]["psi"] < 0.2, figures["top_score"]
    assert report["alerts"] == []
    assert report["drift"] is False
    assert list(report["segments"]) == [ALL]
    assert report["window"]["encoders"] == ["sha256:enc"]
    assert report["notes"] == []


def test_drift_found_on_a_shifted_stream() -> None:
    ref = window(stream(queries(300, seed=1), seed=1), 8, 7)
    # Shoppers now ask about other topics, and the best matches score lower.
    shifted = queries(300, seed=2, topics=(0, 0, 1, 1, 1, 0))
    cur = window(stream(shifted, seed=2, score_mean=0.45), 1)
    report = drift_report(ref, cur, config(), generated_at=T0)
    figures = report["segments"][ALL]
    assert figures["embedding"]["p_value"] < 0.01
    assert figures["embedding"]["alert"] is True
    assert figures["top_score"]["psi"] > 0.2
    assert report["drift"] is True
    assert {(a["segment"], a["signal"]) for a in report["alerts"]} == {
        (ALL, "query_embedding_mmd"),
        (ALL, "top_score_psi"),
    }


def test_drift_per_segment_and_rates() -> None:
    ref = stream(queries(200, seed=1), seed=1, segment="mobile") + stream(queries(200, seed=3), seed=3, segment="web")
    cur = stream(queries(200, seed=2), seed=2, segment="web", feedback=100)
    # Only mobile shifts: other topics, and half its answers abstain.
    cur += stream(queries(200, seed=4, topics=(0, 0, 0, 1, 1, 1)), seed=4, segment="mobile", abstain_rate=0.5)
    report = drift_report(window(ref, 8, 7), window(cur, 1), config(), generated_at=T0)
    assert set(report["segments"]) == {ALL, "mobile", "web"}
    mobile, web = report["segments"]["mobile"], report["segments"]["web"]
    assert mobile["embedding"]["alert"]
    assert not web["embedding"]["alert"]
    assert mobile["abstention"] == {
        "reference": 0.0,
        "current": 0.5,
        "change": 0.5,
        "threshold": 0.1,
        "alert": True,
    }
    # web: 100 feedback events over 250 responses, none before.
    assert web["feedback"]["current"] == pytest.approx(100 / 250)
    assert web["feedback"]["alert"] is True
    fired = {(a["segment"], a["signal"]) for a in report["alerts"]}
    assert ("mobile", "query_embedding_mmd") in fired
    assert ("mobile", "abstention_rate") in fired
    assert ("web", "feedback_rate") in fired
    assert ("web", "query_embedding_mmd") not in fired


def test_too_few_samples_are_skipped_not_alerted() -> None:
    report = drift_report(window(stream(queries(5, 1), 1), 8, 7), window([], 1), config(), generated_at=T0)
    figures = report["segments"][ALL]
    assert "fewer than 30" in figures["embedding"]["skipped"]
    assert "skipped" in figures["top_score"]
    assert figures["abstention"]["current"] is None
    assert figures["feedback"]["current"] is None
    assert report["alerts"] == []


def test_a_changed_encoder_is_noted() -> None:
    ref = window(stream(queries(40, 1), 1), 8, 7)
    cur = [
        Observation(o.kind, o.endpoint, o.segment, o.sketch, o.top_score, o.abstained, "sha256:new")
        for o in stream(queries(40, 2), 2)
    ]
    report = drift_report(ref, window(cur, 1), config(), generated_at=T0)
    assert report["notes"] == ["the encoder changed between the windows: query-embedding drift is expected"]


# -- records --------------------------------------------------------------------------------------------------------


def test_records_carry_the_segment_and_a_small_sketch_never_the_text() -> None:
    sketch = {"dims": 16, "seed": 0, "encoder": "sha256:e", "values": query_sketch(np.ones(DIM), 16, 0)}
    request = {"query": "towel for ada@example.com", "context": {"segment": "mobile", "user": None}}
    body = event_record(AuditEvent("/v1/search", request, {}, query_sketch=sketch)).body
    assert body["segment"] == "mobile"
    assert body["query_sketch"] == sketch
    assert "ada@example.com" not in str(body)
    plain = event_record(AuditEvent("/v1/search", {"query": "towel"}, {})).body
    assert "segment" not in plain
    assert "query_sketch" not in plain
    feedback = event_record(AuditEvent("/v1/feedback", {"audit_id": "a"}, {}, target_id="a", segment="web")).body
    assert feedback["segment"] == "web"


# -- a check over a real audit log ----------------------------------------------------------------------------------


def search_event(vector: np.ndarray, score: float, segment: str) -> AuditEvent:
    sketch = {"dims": 16, "seed": 0, "encoder": "sha256:e", "values": query_sketch(vector, 16, 0)}
    return AuditEvent(
        endpoint="/v1/search",
        request={"query": "a query", "k": 1, "context": {"segment": segment}},
        output={"items": []},
        retrieved=[{"id": "it", "score": score}],
        caller={"key_id": "k", "role": "frontend"},
        query_sketch=sketch,
    )


async def test_a_check_over_the_log_chains_its_report_and_queues_alerts(audit_store: AuditStoreHandle) -> None:
    log = AuditLog(audit_store.config)
    await log.start()
    try:
        rng = np.random.default_rng(5)
        await asyncio.gather(
            *(log.record(search_event(v, float(rng.normal(0.6, 0.05)), "web")) for v in queries(60, seed=1))
        )
        boundary = time.time()
        await asyncio.sleep(0.02)
        shifted = queries(60, seed=2, topics=(0, 0, 0, 1, 1, 1))
        await asyncio.gather(*(log.record(search_event(v, float(rng.normal(0.4, 0.05)), "web")) for v in shifted))
        now = datetime.now(UTC) + timedelta(seconds=1)
        span = now - datetime.fromtimestamp(boundary, UTC)
        cfg = config(permutations=100)
        reviewer = {"key_id": "r", "role": "reviewer"}
        report = await asyncio.to_thread(
            lambda: check_drift(log, cfg, window=span, reference=timedelta(hours=1), caller=reviewer, now=now)
        )
        assert report["window"]["records"] == 60
        assert report["reference"]["records"] == 60
        assert report["drift"] is True
        assert set(report["segments"]) == {ALL, "web"}
        stored = log.get(report["audit_id"])
        assert stored is not None
        assert stored.body is not None
        assert stored.kind == "drift"
        assert stored.review_state == "pending"
        assert stored.body["review"]["reason"].startswith("drift: ")
        assert stored.body["report"]["alerts"] == report["alerts"]
        assert stored.body["caller"] == reviewer
        assert report["audit_id"] in [r.id for r in log.review_queue()]
        assert log.latest("drift") == stored
        assert log.verify().ok
        # A quiet check chains a record too, outside the review queue.
        quiet = check_drift(log, cfg, window=timedelta(hours=1), reference=timedelta(hours=1), caller=reviewer)
        assert quiet["drift"] is False
        assert log.find(RecordQuery(kind="drift", limit=5))[0].review_state == "not_required"
        assert log.verify().ok
    finally:
        await log.stop()
