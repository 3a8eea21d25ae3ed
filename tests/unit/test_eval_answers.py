"""The answer harness: a suite without a backend says so and skips; registered backends are scored."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli import main
from evals.answers import (
    AnswerBackendContext,
    AnswerSystem,
    Passage,
    SystemAnswer,
    available_backends,
    register_answer_backend,
    unregister_answer_backend,
)
from evals.runner import RunOptions, run_suite
from evals.suite import load_suite

ARTICLES = {
    "Broncos": ("Super Bowl 50 was won by the Denver Broncos.", {"Who won Super Bowl 50?": "Denver Broncos"}),
    "France": ("Paris is the capital of France.", {"What is the capital of France?": "Paris"}),
    "Rivers": ("The Nile is the longest river in Africa.", {"Which river is the longest in Africa?": "Nile"}),
    "Moon": ("Neil Armstrong walked on the Moon in 1969.", {"When did Armstrong walk on the Moon?": "1969"}),
}
GOLD = {q: a for _, qas in ARTICLES.values() for q, a in qas.items()}


def _squad_folder(root: Path) -> Path:
    data = []
    for title, (context, qas) in ARTICLES.items():
        questions = [
            {"id": f"{title}-{i}", "question": q, "answers": [{"text": a}, {"text": a.lower()}]}
            for i, (q, a) in enumerate(qas.items())
        ]
        data.append({"title": title, "paragraphs": [{"context": context, "qas": questions}]})
    root.mkdir(parents=True, exist_ok=True)
    (root / "dev.json").write_text(json.dumps({"version": "1.1", "data": data}), "utf-8")
    return root


def _suite(tmp_path: Path, backend: str) -> Path:
    folder = _squad_folder(tmp_path / "squad-mini")
    path = tmp_path / "answers.toml"
    path.write_text(
        f'[suite]\nname = "answers-test"\nbootstrap = 50\n[system.answer]\nbackend = "{backend}"\n'
        f'[answers.mini]\ndataset = "{folder}"\nmax_questions = 0\nunanswerable = 4\n'
        '[gates]\nrules = ["abstention_accuracy >= 0.9"]\n',
        "utf-8",
    )
    return path


class Oracle:
    """Answers from the gold answers when its passage holds them, else abstains (a test double)."""

    name = "oracle"

    def describe(self) -> Mapping[str, Any]:
        return {"kind": "test double"}

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        gold = GOLD[question]
        for passage in passages:
            if gold in passage.text:
                return SystemAnswer(f"the {gold}", (passage.id,), False)
        return SystemAnswer("", (), True)


class Guesser:
    """Always answers "Paris", citing the first passage (a test double)."""

    name = "guesser"

    def describe(self) -> Mapping[str, Any]:
        return {}

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        return SystemAnswer("Paris", (passages[0].id,), False)


@pytest.fixture
def backends() -> Any:
    register_answer_backend("oracle", lambda ctx: Oracle())
    register_answer_backend("guesser", lambda ctx: Guesser())
    yield
    unregister_answer_backend("oracle")
    unregister_answer_backend("guesser")


def _values(results: dict[str, Any]) -> dict[str, float]:
    return {m["name"]: m["value"] for m in results["metrics"]}


def test_no_backend_is_said_plainly(tmp_path: Path) -> None:
    suite = _suite(tmp_path, "my-llm")
    result = CliRunner().invoke(main, ["eval", "run", str(suite), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "no answer backend is available: 'my-llm' is not registered" in result.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text("utf-8"))
    assert results["tasks"]["answers.mini"]["status"] == "skipped"
    assert results["metrics"] == []
    assert results["system"]["answer_backend"] == {"name": "my-llm", "available": False}
    assert results["datasets"][0]["name"].endswith("squad-mini")
    assert "Skipped: no answer backend is available" in (tmp_path / "run" / "report.html").read_text("utf-8")
    assert "gate FAILED" in result.stderr  # a gate on a skipped task cannot pass by accident


def test_registered_backends_are_scored(tmp_path: Path, backends: None) -> None:
    assert isinstance(Oracle(), AnswerSystem)
    assert {"oracle", "guesser"} <= set(available_backends())
    good = run_suite(
        load_suite(str(_suite(tmp_path, "oracle"))), RunOptions(state_dir=tmp_path / "state", progress=False)
    )
    values = _values(good.results)
    assert values["em"] == 1.0
    assert values["f1"] == 1.0
    assert values["false_abstention"] == 0.0
    assert values["citation_precision"] == 1.0
    assert values["faithfulness"] == 1.0
    assert values["abstention_accuracy"] == 1.0
    assert values["latency_ms"] >= 0.0
    assert good.gates_passed
    assert good.results["system"]["answer_backend"]["available"] is True
    lines = (good.run_dir / "answers-mini.jsonl").read_text("utf-8").splitlines()
    assert len(lines) == len(GOLD) + 4

    bad = run_suite(
        load_suite(str(_suite(tmp_path, "guesser"))), RunOptions(state_dir=tmp_path / "state", progress=False)
    )
    values = _values(bad.results)
    assert values["em"] == pytest.approx(1 / 4)
    assert values["abstention_accuracy"] == 0.0
    assert values["citation_precision"] == 1.0  # it cites the paragraph that holds the answer, answering wrongly
    assert values["faithfulness"] < 1.0  # "Paris" is not in most of the passages it cites
    assert not bad.gates_passed
    assert "abstention_accuracy" in bad.gates[0].reason


def test_backend_context_carries_options(tmp_path: Path) -> None:
    seen: list[AnswerBackendContext] = []

    def factory(ctx: AnswerBackendContext) -> AnswerSystem:
        seen.append(ctx)
        return Oracle()

    suite = load_suite(str(_suite(tmp_path, "probe")), ["system.answer.options={top_k = 2}", "seed=9"])
    run_suite(suite, RunOptions(state_dir=tmp_path / "state", progress=False, answer_backends={"probe": factory}))
    assert seen[0].options == {"top_k": 2}
    assert seen[0].seed == 9
    assert seen[0].encoder is not None
