"""What a run leaves: nothing when it fails, no answer backend when it answered nothing, stable held-out items,
disabled tasks named but not run, and a header that says what every task scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.errors import EvalError
from evals.recommend_task import leave_last_out
from evals.runner import RunOptions, run_suite
from evals.suite import GateSpec, LoadedSuite, RecommendationTask, Suite, SuiteMeta
from retrieval.types import Interaction


def pack(folder: Path) -> Path:
    folder.mkdir(parents=True)
    items = [{"id": f"i{n}", "title": f"Item {n}", "text": "", "category": "Things"} for n in range(6)]
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    events = [
        {"user_id": f"u{u}", "item_id": f"i{(u + n) % 6}", "event": "view", "value": 1.0, "ts": 1000.0 * n}
        for u in range(12)
        for n in range(3)
    ]
    (folder / "interactions.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return folder


def suite(dataset: Path) -> LoadedSuite:
    task = RecommendationTask(dataset=str(dataset), format="pack", recommenders=["most-popular", "item-knn"])
    return LoadedSuite(Suite(suite=SuiteMeta(name="runs", bootstrap=0), recommendation={"t": task}), dataset)


def test_a_failed_run_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(EvalError):
        run_suite(suite(tmp_path / "missing"), RunOptions(state_dir=tmp_path / "evals", out_dir=out, progress=False))
    assert not out.exists()
    assert not list((tmp_path / "evals").glob("runs/*"))


def test_a_run_without_answers_names_no_answer_backend(tmp_path: Path) -> None:
    run = run_suite(suite(pack(tmp_path / "pack")), RunOptions(state_dir=tmp_path / "evals", progress=False))
    assert run.results["system"]["answer_backend"] is None
    assert "Answer backend" not in (run.run_dir / "report.html").read_text()


def test_leave_last_out_does_not_depend_on_file_order() -> None:
    events = [
        Interaction("u", "a", "view", 1.0, 1.0),
        Interaction("u", "c", "view", 1.0, 5.0),
        Interaction("u", "b", "view", 1.0, 5.0),
    ]
    held = [leave_last_out(order)[1]["u"][0].item_id for order in (events, events[::-1], events[1:] + events[:1])]
    assert held == ["c", "c", "c"]


def test_disabled_tasks_are_not_run_and_their_gates_are_skipped(tmp_path: Path) -> None:
    dataset = pack(tmp_path / "pack")
    task = RecommendationTask(dataset=str(dataset), format="pack", recommenders=["most-popular", "item-knn"])
    off = RecommendationTask(dataset="ml-100k", protocol="ua", enabled=False)
    rules = ["hr@10[task=recommendation.ua] >= 0.5", "hr@10[task=recommendation.t] >= 0.0"]
    loaded = LoadedSuite(
        Suite(
            suite=SuiteMeta(name="runs", bootstrap=0, seed=7),
            recommendation={"t": task, "ua": off},
            gates=GateSpec(rules=rules),
        ),
        dataset,
    )
    run = run_suite(loaded, RunOptions(state_dir=tmp_path / "evals", progress=False))
    assert [g.status for g in run.gates] == ["skipped", "passed"]
    assert "recommendation.ua is disabled" in run.gates[0].reason
    assert run.gates_passed
    tasks = run.results["tasks"]
    assert tasks["recommendation.ua"]["status"] == "disabled"
    assert {m["task"] for m in run.results["metrics"]} == {"recommendation.t"}
    # The header says what every task scored: dataset, split (protocol), sample size and seed.
    assert tasks["recommendation.t"]["split"] == "leave-last-out"
    assert tasks["recommendation.t"]["sample"] == 12
    assert tasks["recommendation.t"]["seed"] == 7
    assert tasks["recommendation.ua"]["split"] == "ua"
    assert tasks["recommendation.ua"]["sample"] is None
    report = (run.run_dir / "report.html").read_text()
    assert "<th>split</th><th>sample</th><th>seed</th>" in report
    assert "<td>recommendation.t</td>" in report
    assert "<td>leave-last-out</td><td>12</td><td>7</td>" in report
    assert "Disabled: enabled = false" in report
