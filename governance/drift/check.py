"""Live drift from the audit log: a recent window of traffic compared with the reference window before it.

For each segment (``context.segment`` as the frontend sent it, plus ``all``) the check measures:

- query-embedding drift: MMD² between the two windows' query sketches, with a permutation p-value;
- top-score drift: the population stability index of the top result's score, over bins fixed by the reference;
- the abstention rate of answers and the feedback rate (feedback events per audited response) in each window.

Findings past the configured thresholds become alerts. :func:`check_drift` reads the log, builds the report and
chains it (a record that joins the review queue when it holds alerts).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from governance.drift.stats import mmd_test, psi, psi_edges

SCHEMA = "candor.drift/1"
ALL = "all"
ANSWERS = "/v1/answers"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION_S = 3650 * 86400


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d``, ``2w`` (or seconds with ``s``) as a timedelta.

    Raises:
        ValueError: Not a positive duration in that form.
    """
    found = _DURATION.match(text)
    seconds = float(found.group(1)) * _UNIT_S[found.group(2)] if found else 0.0
    if not 0 < seconds <= MAX_DURATION_S:
        raise ValueError(f"{text!r} is not a duration such as 30m, 24h, 7d or 2w (at most 3650d)")
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """How drift is measured and when it alerts (``[drift]`` in the config holds the defaults).

    Attributes:
        window: The current window of a check when none is given (``24h``: see :func:`parse_duration`).
        reference: The reference window before it when none is given.
        sketch_dims: Random directions a query vector is projected onto for its audit record.
        sketch_seed: Seed of those directions (changing it makes older sketches incomparable).
        max_records: Most records of each kind read per window (newest first).
        max_samples: Most sketches per window in the MMD test.
        permutations: Label permutations for the MMD p-value.
        seed: Seed of the subsampling and the permutations.
        min_samples: Fewest sketches or scores per window for the MMD and PSI of a segment.
        psi_bins: Top-score bins (quantiles of the reference window).
        max_segments: Most segments checked besides ``all`` (the busiest in the current window).
        mmd_p_value_below: An MMD p-value below this is an alert.
        psi_above: A PSI above this is an alert.
        abstention_change_above: An abstention rate that moved by more than this (absolute) is an alert.
        feedback_change_above: A feedback rate that moved by more than this (absolute) is an alert.
    """

    window: str
    reference: str
    sketch_dims: int
    sketch_seed: int
    max_records: int
    max_samples: int
    permutations: int
    seed: int
    min_samples: int
    psi_bins: int
    max_segments: int
    mmd_p_value_below: float
    psi_above: float
    abstention_change_above: float
    feedback_change_above: float


@dataclass(frozen=True, slots=True)
class Observation:
    """What drift reads from one audit record.

    Attributes:
        kind: ``inference`` or ``feedback``.
        endpoint: The route.
        segment: ``context.segment`` as recorded, if any.
        sketch: The query sketch, when the call had a free-text query.
        top_score: The best result's score, when there was a result.
        abstained: An answer abstained.
        encoder: The encoder version that made the sketch.
    """

    kind: str
    endpoint: str
    segment: str | None = None
    sketch: tuple[float, ...] | None = None
    top_score: float | None = None
    abstained: bool = False
    encoder: str | None = None


def observation(body: Mapping[str, Any], config: DriftConfig) -> Observation:
    """Read one record's body; sketches made with another projection (dims, seed) are left out."""
    raw = body.get("query_sketch")
    sketch, encoder = None, None
    if isinstance(raw, Mapping) and raw.get("dims") == config.sketch_dims and raw.get("seed") == config.sketch_seed:
        values = raw.get("values")
        if isinstance(values, list) and len(values) == config.sketch_dims:
            sketch = tuple(float(v) for v in values)
            encoder = str(raw.get("encoder")) if raw.get("encoder") is not None else None
    scores = [
        float(r["score"])
        for r in body.get("retrieved") or []
        if isinstance(r, Mapping) and isinstance(r.get("score"), int | float) and not isinstance(r["score"], bool)
    ]
    segment = body.get("segment")
    return Observation(
        kind=str(body.get("kind")),
        endpoint=str(body.get("endpoint") or ""),
        segment=str(segment) if segment is not None else None,
        sketch=sketch,
        top_score=max(scores) if scores else None,
        abstained=bool(body.get("abstained")),
        encoder=encoder,
    )


@dataclass(frozen=True, slots=True)
class Window:
    """A period of traffic: its bounds, what was read, and whether reading stopped at the record limit."""

    since: datetime
    until: datetime
    observations: tuple[Observation, ...]
    truncated: bool = False


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _rates(obs: Sequence[Observation]) -> dict[str, Any]:
    answers = [o for o in obs if o.kind == "inference" and o.endpoint == ANSWERS]
    responses = sum(1 for o in obs if o.kind == "inference")
    feedback = sum(1 for o in obs if o.kind == "feedback")
    return {
        "responses": responses,
        "answers": len(answers),
        "abstained": sum(1 for o in answers if o.abstained),
        "feedback": feedback,
        "abstention_rate": _rate(sum(1 for o in answers if o.abstained), len(answers)),
        "feedback_rate": _rate(feedback, responses),
    }


def _rate_change(name: str, ref: dict[str, Any], cur: dict[str, Any], limit: float) -> dict[str, Any]:
    before, now = ref[f"{name}_rate"], cur[f"{name}_rate"]
    change = None if before is None or now is None else now - before
    return {
        "reference": before,
        "current": now,
        "change": change,
        "threshold": limit,
        "alert": change is not None and abs(change) > limit,
    }


def _embedding(ref: Sequence[Observation], cur: Sequence[Observation], config: DriftConfig) -> dict[str, Any]:
    x = [o.sketch for o in ref if o.sketch is not None]
    y = [o.sketch for o in cur if o.sketch is not None]
    if min(len(x), len(y)) < config.min_samples:
        return {
            "skipped": f"fewer than {config.min_samples} query sketches in a window",
            "n_reference": len(x),
            "n_current": len(y),
            "alert": False,
        }
    result = mmd_test(
        np.array(x), np.array(y), permutations=config.permutations, seed=config.seed, max_samples=config.max_samples
    )
    return {**asdict(result), "threshold": config.mmd_p_value_below, "alert": result.p_value < config.mmd_p_value_below}


def _top_score(ref: Sequence[Observation], cur: Sequence[Observation], config: DriftConfig) -> dict[str, Any]:
    x = [o.top_score for o in ref if o.sketch is not None and o.top_score is not None]
    y = [o.top_score for o in cur if o.sketch is not None and o.top_score is not None]
    if min(len(x), len(y)) < config.min_samples:
        return {
            "skipped": f"fewer than {config.min_samples} top scores in a window",
            "n_reference": len(x),
            "n_current": len(y),
            "alert": False,
        }
    edges = psi_edges(x, config.psi_bins)
    value = psi(x, y, edges)
    return {
        "psi": value,
        "edges": [round(e, 6) for e in edges],
        "reference_mean": float(np.mean(x)),
        "current_mean": float(np.mean(y)),
        "n_reference": len(x),
        "n_current": len(y),
        "threshold": config.psi_above,
        "alert": value > config.psi_above,
    }


def segment_report(ref: Sequence[Observation], cur: Sequence[Observation], config: DriftConfig) -> dict[str, Any]:
    """Every drift figure of one segment: embedding MMD, top-score PSI, abstention and feedback rates."""
    ref_rates, cur_rates = _rates(ref), _rates(cur)
    return {
        "records": {"reference": len(ref), "current": len(cur)},
        "embedding": _embedding(ref, cur, config),
        "top_score": _top_score(ref, cur, config),
        "abstention": _rate_change("abstention", ref_rates, cur_rates, config.abstention_change_above),
        "feedback": _rate_change("feedback", ref_rates, cur_rates, config.feedback_change_above),
        "counts": {"reference": ref_rates, "current": cur_rates},
    }


SIGNALS = {
    "embedding": ("query_embedding_mmd", "p_value"),
    "top_score": ("top_score_psi", "psi"),
    "abstention": ("abstention_rate", "change"),
    "feedback": ("feedback_rate", "change"),
}


def _alerts(segments: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    alerts = []
    for name, figures in segments.items():
        for part, (signal, field) in SIGNALS.items():
            if figures[part].get("alert"):
                value, limit = figures[part][field], figures[part]["threshold"]
                alerts.append({"segment": name, "signal": signal, "value": value, "threshold": limit})
    return alerts


def drift_report(
    reference: Window, current: Window, config: DriftConfig, *, generated_at: datetime | None = None
) -> dict[str, Any]:
    """Compare the current window with the reference window, overall and per segment.

    Segments are those the current window's records name, the busiest first, at most ``max_segments``; records
    without one count under ``all`` only.

    Returns:
        The report, JSON-ready: windows, per-segment figures, alerts and ``drift`` (whether any alert fired).
    """
    ref, cur = reference.observations, current.observations
    busiest = Counter(o.segment for o in cur if o.segment is not None).most_common(config.max_segments)
    segments = {ALL: segment_report(ref, cur, config)}
    for name, _ in busiest:
        if name != ALL:
            segments[name] = segment_report(
                [o for o in ref if o.segment == name], [o for o in cur if o.segment == name], config
            )
    alerts = _alerts(segments)

    def window(w: Window) -> dict[str, Any]:
        encoders = sorted({o.encoder for o in w.observations if o.encoder is not None})
        return {
            "since": w.since.isoformat(),
            "until": w.until.isoformat(),
            "records": len(w.observations),
            "truncated": w.truncated,
            "encoders": encoders,
        }

    now_window, ref_window = window(current), window(reference)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "generated_at": (generated_at or datetime.now(UTC)).isoformat(),
        "window": now_window,
        "reference": ref_window,
        "config": asdict(config),
        "segments": segments,
        "alerts": alerts,
        "drift": bool(alerts),
    }
    notes = []
    if ref_window["encoders"] and set(now_window["encoders"]) - set(ref_window["encoders"]):
        notes.append("the encoder changed between the windows: query-embedding drift is expected")
    if reference.truncated or current.truncated:
        notes.append(f"a window held more than {config.max_records} records of a kind: the newest were read")
    report["notes"] = notes
    return report


class DriftSource(Protocol):
    """What a drift check needs from the audit log (:class:`~governance.audit.AuditLog` satisfies it)."""

    def bodies(self, kind: str, since: float, until: float, limit: int) -> list[dict[str, Any]]:
        """The bodies of up to ``limit`` records of one kind in ``[since, until)``, newest first."""
        ...

    def record_drift(self, report: Mapping[str, Any], caller: Mapping[str, str]) -> str:
        """Chain a drift report; returns the record's id."""
        ...


def read_window(source: DriftSource, since: datetime, until: datetime, config: DriftConfig) -> Window:
    """The responses and feedback of a period, as observations (at most ``max_records`` of each kind)."""
    observations: list[Observation] = []
    truncated = False
    for kind in ("inference", "feedback"):
        bodies = source.bodies(kind, since.timestamp(), until.timestamp(), config.max_records + 1)
        truncated = truncated or len(bodies) > config.max_records
        observations += [observation(b, config) for b in bodies[: config.max_records]]
    return Window(since, until, tuple(observations), truncated)


def measure_drift(
    source: DriftSource,
    config: DriftConfig,
    *,
    window: timedelta,
    reference: timedelta,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Read both windows from the log and compare them (:func:`drift_report`), without chaining the report.

    The current window is ``[now - window, now)``; the reference window is the ``reference`` before it.

    Raises:
        governance.audit.AuditUnavailableError: The log cannot be read.
    """
    end = now or datetime.now(UTC)
    start = end - window
    current = read_window(source, start, end, config)
    ref = read_window(source, start - reference, start, config)
    report = drift_report(ref, current, config, generated_at=end)
    report["window"]["duration_s"] = window.total_seconds()
    report["reference"]["duration_s"] = reference.total_seconds()
    return report


def check_drift(
    source: DriftSource,
    config: DriftConfig,
    *,
    window: timedelta,
    reference: timedelta,
    caller: Mapping[str, str],
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run a drift check over the log (:func:`measure_drift`) and chain its report (queued for review on alerts).

    Returns:
        The report (:func:`drift_report`) with ``audit_id``, the id of the chained record.

    Raises:
        governance.audit.AuditUnavailableError: The log cannot be read or written.
    """
    report = measure_drift(source, config, window=window, reference=reference, now=now)
    return {**report, "audit_id": source.record_drift(report, caller)}


def drift_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """A drift report condensed for the compliance report: windows, the verdict, alerts and headline figures."""
    segments = {}
    for name, figures in (report.get("segments") or {}).items():
        embedding, top = figures.get("embedding") or {}, figures.get("top_score") or {}
        segments[name] = {
            "mmd_p_value": embedding.get("p_value"),
            "psi": top.get("psi"),
            "abstention_rate": (figures.get("abstention") or {}).get("current"),
            "feedback_rate": (figures.get("feedback") or {}).get("current"),
            "records": (figures.get("records") or {}).get("current"),
        }
    return {
        "generated_at": report.get("generated_at"),
        "window": report.get("window"),
        "reference": report.get("reference"),
        "drift": bool(report.get("drift")),
        "alerts": list(report.get("alerts") or []),
        "segments": segments,
        "notes": list(report.get("notes") or []),
    }
