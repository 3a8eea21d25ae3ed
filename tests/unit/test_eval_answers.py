"""The answer harness: both settings, hard probes, attribution, and every metric able to fail.

Each metric is checked on a constructed run where it must be high (an oracle) and one where it must be low (a
backend built to get it wrong), so none of them passes by construction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli import main
from app.cli_eval import _summary_lines
from evals.answer_baselines import OverlapBaseline
from evals.answers import (
    AnswerBackendContext,
    AnswerSystem,
    ConcurrentAnswerSystem,
    Passage,
    SystemAnswer,
    available_backends,
    register_answer_backend,
    unregister_answer_backend,
)
from evals.runner import RunOptions, RunSummary, run_suite
from evals.suite import load_suite

# Two paragraphs per article, so the gold setting's nearest probe finds a wrong paragraph on the same subject,
# and two sentences per paragraph, so the removed probe keeps one.
ARTICLES = {
    "Broncos": [
        (
            "Super Bowl 50 was won by the Denver Broncos. The game was played at Levi's Stadium.",
            "Who won Super Bowl 50?",
            "Denver Broncos",
        ),
        ("The Broncos are based in Colorado. Their stadium sits a mile above sea level.", None, None),
    ],
    "France": [
        ("Paris is the capital of France. It lies on the Seine.", "What is the capital of France?", "Paris"),
        ("France borders Spain and Italy. Its wines are famous.", None, None),
    ],
    "Rivers": [
        ("The Nile is the longest river in Africa. It flows north.", "Which river is the longest in Africa?", "Nile"),
        ("Rivers carry sediment to the sea. Deltas form at their mouths.", None, None),
    ],
    "Moon": [
        (
            "Neil Armstrong walked on the Moon in 1969. Millions watched on television.",
            "When did Armstrong walk on the Moon?",
            "1969",
        ),
        ("The Moon orbits the Earth. Its gravity causes tides.", None, None),
    ],
}
GOLD = {q: a for paragraphs in ARTICLES.values() for _, q, a in paragraphs if q and a}


def _squad_folder(root: Path) -> Path:
    data = []
    for title, paragraphs in ARTICLES.items():
        entries = []
        for i, (context, question, answer) in enumerate(paragraphs):
            qas = [{"id": f"{title}-{i}", "question": question, "answers": [{"text": answer}]}] if question else []
            entries.append({"context": context, "qas": qas})
        data.append({"title": title, "paragraphs": entries})
    root.mkdir(parents=True, exist_ok=True)
    (root / "dev.json").write_text(json.dumps({"version": "1.1", "data": data}), "utf-8")
    return root


def _suite(tmp_path: Path, backend: str, *, probes: str = '["nearest", "removed", "random"]') -> Path:
    folder = _squad_folder(tmp_path / "squad-mini")
    path = tmp_path / "answers.toml"
    path.write_text(
        f'[suite]\nname = "answers-test"\nbootstrap = 50\n[system.answer]\nbackend = "{backend}"\n'
        f'[answers.mini]\ndataset = "{folder}"\nmax_questions = 0\nunanswerable = 4\npassages = 3\n'
        f"probes = {probes}\n"
        '[gates]\nrules = ["abstention_recall >= 0.9"]\n',
        "utf-8",
    )
    return path


def _holding(question: str, passages: Sequence[Passage]) -> Passage | None:
    return next((p for p in passages if GOLD[question] in p.text), None)


class Oracle:
    """Answers from the gold answer when a passage holds it, citing that passage; else abstains."""

    name = "oracle"

    def describe(self) -> Mapping[str, Any]:
        return {"kind": "test double"}

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        found = _holding(question, passages)
        return SystemAnswer(f"the {GOLD[question]}", (found.id,), False) if found else SystemAnswer("", (), True)


class Inverted:
    """Declines exactly when the answer is there, and answers "Paris" when it is not: wrong everywhere."""

    name = "inverted"

    def describe(self) -> Mapping[str, Any]:
        return {}

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        if _holding(question, passages):
            return SystemAnswer("", (), True)
        return SystemAnswer("Paris", (passages[0].id,), False)


class WrongCiter:
    """Gives the right answer but cites a passage without it, whenever it was given one."""

    name = "wrong-citer"

    def describe(self) -> Mapping[str, Any]:
        return {}

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        if not _holding(question, passages):
            return SystemAnswer("", (), True)
        wrong = [p for p in passages if GOLD[question] not in p.text]
        return SystemAnswer(GOLD[question], ((wrong or passages)[0].id,), False)


class FallingBack:
    """The oracle's answers, each reported as another backend's after a failed grounding check."""

    name = "falling-back"

    def describe(self) -> Mapping[str, Any]:
        return {}

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        given = Oracle().answer(question, passages)
        if given.abstained:
            return given
        return SystemAnswer(given.text, given.cited_ids, False, produced_by="extractive", fallback="ungrounded")


DOUBLES: dict[str, type[Any]] = {
    "oracle": Oracle,
    "inverted": Inverted,
    "wrong-citer": WrongCiter,
    "falling-back": FallingBack,
}


@pytest.fixture
def backends() -> Any:
    for name, cls in DOUBLES.items():

        def factory(ctx: AnswerBackendContext, cls: type[Any] = cls) -> AnswerSystem:
            return cls()  # type: ignore[no-any-return]

        register_answer_backend(name, factory)
    yield
    for name in DOUBLES:
        unregister_answer_backend(name)


def _values(results: dict[str, Any], setting: str, group: str | None = None) -> dict[str, float]:
    return {
        m["name"]: m["value"] for m in results["metrics"] if m.get("setting") == setting and m.get("group") == group
    }


def _run(tmp_path: Path, backend: str, encoder: Any, **kwargs: str) -> RunSummary:
    return run_suite(
        load_suite(str(_suite(tmp_path, backend, **kwargs))),
        RunOptions(state_dir=tmp_path / "state", progress=False, encoder=encoder),
    )


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


def test_the_oracle_scores_high_in_both_settings(tmp_path: Path, backends: None, encoder: Any) -> None:
    assert isinstance(Oracle(), AnswerSystem)
    assert set(DOUBLES) <= set(available_backends())
    run = _run(tmp_path, "oracle", encoder)
    for setting in ("open", "gold"):
        values = _values(run.results, setting)
        assert values["em"] == 1.0, setting  # the encoder ranks each question's paragraph in its top 3
        assert values["f1"] == 1.0
        assert values["holds_answer"] == 1.0
        assert values["false_abstention"] == 0.0
        assert values["citation_precision"] == 1.0
        assert values["faithfulness"] == 1.0
        assert values["abstention_recall"] == 1.0
        assert values["abstention_precision"] == 1.0
        assert _values(run.results, setting, "outcome:own")["share"] == 1.0
        for kind in ("nearest", "removed", "random"):
            assert _values(run.results, setting, f"probe:{kind}")["abstention_recall"] == 1.0
    assert run.gates_passed
    rows = [json.loads(line) for line in (run.run_dir / "answers-mini.jsonl").read_text("utf-8").splitlines()]
    assert len(rows) == 2 * (len(GOLD) + 3 * 4)  # both settings: the questions and one probe per kind
    for row in rows:  # no probe is given a passage that holds its answer
        if not row["answerable"]:
            assert row["abstained"], row
    task = run.results["tasks"]["answers.mini"]
    assert task["split"] == "dev"
    assert task["sample"] == len(GOLD)
    assert task["seed"] == 13
    assert task["details"]["settings"]["gold"]["probes"] == {"nearest": 4, "removed": 4, "random": 4}


def test_the_inverted_backend_scores_low(tmp_path: Path, backends: None, encoder: Any) -> None:
    run = _run(tmp_path, "inverted", encoder)
    for setting in ("open", "gold"):
        values = _values(run.results, setting)
        assert values["em"] == 0.0
        assert values["f1"] == 0.0
        assert values["holds_answer"] == 0.0
        assert values["false_abstention"] == 1.0
        assert values["abstention_recall"] == 0.0
        assert values["abstention_precision"] == 0.0
        assert values["faithfulness"] < 0.5  # "Paris" is in none of the passages it cites but France's
        assert _values(run.results, setting, "outcome:abstained")["share"] == 1.0
    assert not run.gates_passed
    assert "abstention_recall" in run.gates[0].reason


def test_citations_can_be_wrong_in_the_open_setting(tmp_path: Path, backends: None, encoder: Any) -> None:
    run = _run(tmp_path, "wrong-citer", encoder)
    open_, gold = _values(run.results, "open"), _values(run.results, "gold")
    assert open_["em"] == 1.0
    assert open_["citation_precision"] == 0.0  # three retrieved passages: two lack the answer, and it cites one
    assert open_["faithfulness"] < 0.5
    assert gold["citation_precision"] == 1.0  # the gold setting gives only the right passage: right by construction


def test_fallback_answers_are_not_credited_to_the_backend(tmp_path: Path, backends: None, encoder: Any) -> None:
    run = _run(tmp_path, "falling-back", encoder)
    for setting in ("open", "gold"):
        assert _values(run.results, setting)["f1"] == 1.0
        assert _values(run.results, setting, "outcome:own")["share"] == 0.0
        fallback = _values(run.results, setting, "outcome:fallback")
        assert fallback["share"] == 1.0
        assert fallback["f1"] == 1.0
    sentences = run.results["tasks"]["answers.mini"]["details"]["attribution"]
    assert sentences[0].startswith("open setting: of 4 answerable questions, falling-back answered 0 (0%) itself")
    assert "4 (100%) are another backend's answers after a fallback (extractive 4; why: ungrounded 4)" in sentences[0]
    printed = _summary_lines(run.results)  # what `candor eval run` prints
    assert f"answers.mini  {sentences[0]}" in printed
    assert any(line.startswith("answers.mini  falling-back (open): em 1.0000") for line in printed)
    report = (run.run_dir / "report.html").read_text("utf-8")
    assert "are another backend&#x27;s answers" in report
    assert "falling-back (open)" in report
    assert "falling-back (gold)" in report


def test_one_setting_and_no_probes(tmp_path: Path, backends: None, encoder: Any) -> None:
    suite = load_suite(str(_suite(tmp_path, "oracle", probes="[]")), ["settings=['gold']"])
    run = run_suite(suite, RunOptions(state_dir=tmp_path / "state", progress=False, encoder=encoder))
    assert {m.get("setting") for m in run.results["metrics"]} == {"gold"}
    assert "abstention_recall" not in _values(run.results, "gold")
    assert not run.gates_passed  # the gate names a figure the run could not produce


class ConcurrentOracle(Oracle):
    """The oracle, answering questions in groups (as the service's backends do through their batchers)."""

    name = "concurrent-oracle"

    def __init__(self) -> None:
        self.groups: list[int] = []

    def answer_many(self, questions: Sequence[tuple[str, Sequence[Passage]]]) -> list[tuple[SystemAnswer, float]]:
        self.groups.append(len(questions))
        return [(self.answer(q, p), 1.0) for q, p in questions]


def test_concurrent_questions_score_as_one_at_a_time(tmp_path: Path, backends: None, encoder: Any) -> None:
    made: list[ConcurrentOracle] = []

    def factory(ctx: AnswerBackendContext) -> AnswerSystem:
        made.append(ConcurrentOracle())
        return made[-1]

    assert isinstance(ConcurrentOracle(), ConcurrentAnswerSystem)
    assert not isinstance(Oracle(), ConcurrentAnswerSystem)
    options = RunOptions(state_dir=tmp_path / "state", progress=False, encoder=encoder)
    one = run_suite(load_suite(str(_suite(tmp_path, "oracle"))), options)
    suite = load_suite(str(_suite(tmp_path, "together")), ["answers.mini.concurrency=5"])
    together = run_suite(suite, replace(options, answer_backends={"together": factory}))
    for setting in ("open", "gold"):
        quality = {k: v for k, v in _values(one.results, setting).items() if "latency" not in k}
        assert quality
        assert {k: v for k, v in _values(together.results, setting).items() if "latency" not in k} == quality
    (system,) = made
    assert max(system.groups) == 5  # questions went five at a time
    assert sum(system.groups) == 2 * (len(GOLD) + 3 * 4)


def test_backend_context_carries_options(tmp_path: Path, encoder: Any) -> None:
    seen: list[AnswerBackendContext] = []

    def factory(ctx: AnswerBackendContext) -> AnswerSystem:
        seen.append(ctx)
        return Oracle()

    suite = load_suite(str(_suite(tmp_path, "probe")), ["system.answer.options={top_k = 2}", "seed=9"])
    run_suite(
        suite,
        RunOptions(state_dir=tmp_path / "state", progress=False, encoder=encoder, answer_backends={"probe": factory}),
    )
    assert seen[0].options == {"top_k": 2}
    assert seen[0].seed == 9
    assert seen[0].encoder is not None
    assert seen[0].encoder() is encoder


def test_the_overlap_baseline_answers_from_the_question_words(tmp_path: Path, encoder: Any) -> None:
    baseline = OverlapBaseline()
    passages = [
        Passage("p1", "Rivers carry sediment. Deltas form at their mouths."),
        Passage("p2", "Paris is the capital of France."),
    ]
    given = baseline.answer("What is the capital of France?", passages)
    assert given == SystemAnswer("Paris is the capital of France.", ("p2",))
    assert "overlap-baseline" in available_backends()
    run = run_suite(
        load_suite(str(_suite(tmp_path, "overlap-baseline"))),
        RunOptions(state_dir=tmp_path / "state", progress=False, encoder=encoder),
    )
    gold = _values(run.results, "gold")
    assert gold["abstention_recall"] == 0.0  # it never declines: the floor
    assert 0.0 < gold["f1"] < 1.0  # whole sentences against short gold spans


def test_answer_text_scores_the_span_or_what_the_service_says() -> None:
    from evals.answer_backends import system_answer
    from retrieval.answers import GroundedAnswer

    sentence = "Gift cards cannot be returned or refunded."
    said = GroundedAnswer(sentence, "refunded", (), 0.8, False, "extractive", {}, "extractive")
    assert system_answer(said, "span").text == "refunded"  # SQuAD's protocol: the reader's span
    assert system_answer(said, "answer").text == sentence  # what a shopper reads for a yes/no question
    assert system_answer(replace(said, span=None), "span").text == sentence


def test_an_unknown_answer_text_is_refused(encoder: Any) -> None:
    from app.cli_eval import service_answer_backends
    from app.settings import Settings
    from evals.errors import SuiteError

    factory = service_answer_backends(Settings())["extractive"]
    with pytest.raises(SuiteError, match="answer_text must be one of"):
        factory(AnswerBackendContext(options={"answer_text": "paragraph", "reader": "none"}, encoder=lambda: encoder))
