"""What a run leaves: nothing when it fails, no answer backend when it answered nothing, stable held-out items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.errors import EvalError
from evals.recommend_task import leave_last_out
from evals.runner import RunOptions, run_suite
from evals.suite import LoadedSuite, RecommendationTask, Suite, SuiteMeta
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
