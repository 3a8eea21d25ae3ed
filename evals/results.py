"""What a run produces: metric records, per-unit values, and the ``results.json`` that carries them.

``results.json`` is self-describing (suite, run id, git sha, start time, wall time, seed, system under test with
model hashes, dataset hashes, library versions, metrics, gates). Per-query and per-user values, which
``candor eval compare`` needs for paired intervals, go beside it in ``per_unit.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.errors import RunNotFoundError

RESULTS_FILE = "results.json"
PER_UNIT_FILE = "per_unit.json"
REPORT_FILE = "report.html"
SCHEMA = "candor.evals.results/1"


@dataclass(frozen=True, slots=True)
class MetricRecord:
    """One figure of a run.

    Attributes:
        name: Metric name (``ndcg@10``, ``hr@10``, ``f1``, ``ndcg@10.gap``, ...).
        value: The figure (a mean over units unless the metric is set-level, such as coverage).
        higher_is_better: Direction of improvement.
        task: Suite task that produced it (``retrieval.scifact``, ``recommendation.ua``, ...).
        dataset: Dataset folder name.
        split: Split or protocol (``train``, ``ua``, ``leave-last-out``, ...).
        system: What was evaluated (encoder and index, recommender name, answer backend), for people.
        series: The competitor within a task when a task compares several (the recommender name); ``None`` when
            the task measures the one system under test (retrieval, answers), so the same figure of two runs with
            different encoders, indexes or backends shares a key and can be compared and gated.
        group: ``attribute:value`` for a per-group figure (``gender:F``, ``probe:removed``, ``outcome:fallback``),
            the attribute name for a gap, else ``None``.
        ci_low: Lower bound of the bootstrap interval, if computed.
        ci_high: Upper bound.
        n: Units (queries, users, questions) behind the figure.
        timing: Whether it measures time (not reproducible run to run).
        setting: How the task posed its questions, when it poses them in several ways (answers: ``open``
            retrieval or the ``gold`` passage); part of the key, so the two settings are never compared or gated
            as one figure.
    """

    name: str
    value: float
    higher_is_better: bool
    task: str
    dataset: str
    split: str
    system: str
    group: str | None = None
    series: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    timing: bool = False
    setting: str | None = None

    @property
    def key(self) -> str:
        """Identity used to match the same figure across runs."""
        suffix = f"[{self.group}]" if self.group is not None else ""
        middle = f"{self.series}/" if self.series is not None else ""
        if self.setting is not None:
            middle += f"{self.setting}/"
        return f"{self.task}/{middle}{self.name}{suffix}"

    def to_json(self) -> dict[str, Any]:
        """As a ``metrics`` entry of ``results.json``."""
        out: dict[str, Any] = {
            "key": self.key,
            "name": self.name,
            "value": self.value,
            "higher_is_better": self.higher_is_better,
            "task": self.task,
            "dataset": self.dataset,
            "split": self.split,
            "system": self.system,
            "n": self.n,
        }
        if self.group is not None:
            out["group"] = self.group
        if self.series is not None:
            out["series"] = self.series
        if self.setting is not None:
            out["setting"] = self.setting
        if self.ci_low is not None and self.ci_high is not None:
            out["ci_low"], out["ci_high"] = self.ci_low, self.ci_high
        if self.timing:
            out["timing"] = True
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MetricRecord:
        """Read a ``metrics`` entry back."""
        return cls(
            name=str(obj["name"]),
            value=float(obj["value"]),
            higher_is_better=bool(obj["higher_is_better"]),
            task=str(obj.get("task", "")),
            dataset=str(obj.get("dataset", "")),
            split=str(obj.get("split", "")),
            system=str(obj.get("system", "")),
            group=obj.get("group"),
            series=obj.get("series"),
            ci_low=obj.get("ci_low"),
            ci_high=obj.get("ci_high"),
            n=int(obj.get("n", 0)),
            timing=bool(obj.get("timing", False)),
            setting=obj.get("setting"),
        )


@dataclass(slots=True)
class TaskOutput:
    """What one suite task produced.

    Attributes:
        metrics: Its figures.
        per_unit: Metric key to ``{unit id: value}``.
        system: Facts about the system under test, merged into ``results.json``'s ``system``.
        datasets: Dataset records.
        details: Extra facts for the report (cache use, counts, timings, group tables).
        artifacts: Files written into the run folder, by name.
        skipped: Why the task did not run, if it did not.
    """

    metrics: list[MetricRecord] = field(default_factory=list)
    per_unit: dict[str, dict[str, float]] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    skipped: str | None = None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class LoadedRun:
    """A run read back from disk."""

    folder: Path
    results: dict[str, Any]
    per_unit: dict[str, dict[str, float]]

    @property
    def run_id(self) -> str:
        """The run's id."""
        return str(self.results.get("run_id", self.folder.name))

    def metrics(self) -> list[MetricRecord]:
        """The run's metric records."""
        return [MetricRecord.from_json(m) for m in self.results.get("metrics", [])]


def find_run(ref: str, runs_dir: Path | None = None) -> Path:
    """Resolve a run reference: a run folder, a ``results.json`` path, or a run id under ``runs_dir``.

    Raises:
        RunNotFoundError: Nothing matches.
    """
    path = Path(ref)
    if path.is_file() and path.name == RESULTS_FILE:
        return path.parent
    if (path / RESULTS_FILE).is_file():
        return path
    if runs_dir is not None and (runs_dir / ref / RESULTS_FILE).is_file():
        return runs_dir / ref
    raise RunNotFoundError(f"no run at {ref!r} (give a run folder, its results.json, or a run id)")


def load_run(ref: str, runs_dir: Path | None = None) -> LoadedRun:
    """Read a run's ``results.json`` and, when present, its ``per_unit.json``.

    Raises:
        RunNotFoundError: The run cannot be found or its files are not valid JSON.
    """
    folder = find_run(ref, runs_dir)
    try:
        results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
        per_unit_path = folder / PER_UNIT_FILE
        per_unit = json.loads(per_unit_path.read_text(encoding="utf-8")) if per_unit_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise RunNotFoundError(f"{folder}: unreadable run ({exc})") from exc
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), list):
        raise RunNotFoundError(f"{folder / RESULTS_FILE}: not a Candor results file (no metrics list)")
    return LoadedRun(folder, results, per_unit if isinstance(per_unit, dict) else {})


def latest_run(runs_dir: Path, suite: str | None = None) -> Path | None:
    """The run folder under ``runs_dir`` that started last (optionally of one suite), if any.

    Folders are ordered by the ``started_at`` their ``results.json`` records (folders given with ``--out`` need
    not be named by run id); unreadable results are skipped.
    """
    found: list[tuple[str, str, Path]] = []
    for folder in runs_dir.glob("*") if runs_dir.is_dir() else []:
        try:
            results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(results, dict) and (suite is None or results.get("suite") == suite):
            found.append((str(results.get("started_at", "")), folder.name, folder))
    return max(found)[2] if found else None
