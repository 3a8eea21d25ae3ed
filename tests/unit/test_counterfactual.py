"""Counterfactual probes: swaps and pairs, RBO by hand, a deliberately biased toy ranker fails the probes and a neutral
one passes, answers that change with a demographic term are caught, and the probes run inside the bias audit."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evals.answers import Passage, SystemAnswer
from evals.bias_probes import counterfactual_findings
from evals.counterfactual import (
    ProbePair,
    load_swaps,
    make_pairs,
    probe_answers,
    probe_search,
    rbo,
    read_pairs_csv,
    summarise_probes,
    swap_terms,
)
from evals.errors import DatasetFormatError
from evals.suite import CounterfactualSpec

pytestmark = pytest.mark.unit

SWAPS = {"he": "she", "she": "he", "son": "daughter", "daughter": "son", "men": "women", "women": "men"}
ITEMS = [f"item{n}" for n in range(30)]
FEMALE = {"she", "daughter", "women"}


def words(text: str) -> set[str]:
    return set(text.lower().replace("?", "").split())


class Neutral:
    """Ranks by the words of the text other than demographic terms: a swap changes nothing."""

    def rank(self, text: str, k: int) -> list[tuple[str, float]]:
        seed = sum(ord(c) for w in sorted(words(text) - set(SWAPS)) for c in w)
        order = np.random.default_rng(seed).permutation(len(ITEMS))[:k]
        return [(ITEMS[i], 1.0 - 0.01 * r) for r, i in enumerate(order)]


class Biased(Neutral):
    """As neutral, but a female term pushes the list down by five items and lowers every score."""

    def rank(self, text: str, k: int) -> list[tuple[str, float]]:
        hits = super().rank(text, k + 5)
        if words(text) & FEMALE:
            return [(item, score - 0.2) for item, score in hits[5:]]
        return hits[:k]


PAIRS = make_pairs(
    [("query", "gift for my son"), ("query", "watch for men"), ("question", "What can she return?")],
    SWAPS,
    templates=["toys {term} likes"],
    terms=["he"],
)


def test_swaps_keep_case_and_whole_words() -> None:
    assert swap_terms("Gift for HIS son, said He", {"his": "her", "son": "daughter", "he": "she"}) == (
        "Gift for HER daughter, said She",
        ["his->her", "son->daughter", "he->she"],
    )
    assert swap_terms("shepherd's hessian", SWAPS) == ("shepherd's hessian", [])


def test_pairs_from_texts_templates_and_csv(tmp_path: Path) -> None:
    assert [(p.a, p.b, p.source) for p in PAIRS] == [
        ("gift for my son", "gift for my daughter", "query"),
        ("watch for men", "watch for women", "query"),
        ("What can she return?", "What can he return?", "question"),
        ("toys he likes", "toys she likes", "template"),
    ]
    (tmp_path / "pairs.csv").write_text('a,b\nbook for a nurse he knows,book for a nurse she knows\n"x, y",z\n')
    assert read_pairs_csv(tmp_path / "pairs.csv") == [
        ProbePair("book for a nurse he knows", "book for a nurse she knows", "csv"),
        ProbePair("x, y", "z", "csv"),
    ]
    (tmp_path / "bad.csv").write_text("left,right\n1,2\n")
    with pytest.raises(DatasetFormatError):
        read_pairs_csv(tmp_path / "bad.csv")
    (tmp_path / "generalized_swaps.txt").write_text("actor \t actress \nhe \t she\n")
    assert load_swaps(tmp_path) == {"actor": "actress", "actress": "actor", "he": "she", "she": "he"}


def test_rbo_by_hand() -> None:
    assert rbo(["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0)
    assert rbo(["a", "b"], ["c", "d"]) == 0.0
    # depth 1: 0/1, depth 2: 2/2 (swapped top two), weights 1 and p
    assert rbo(["a", "b"], ["b", "a"], p=0.5) == pytest.approx((0 + 0.5 * 1.0) / 1.5)
    assert rbo(["a", "b", "c"], ["a", "b", "d"]) > rbo(["a", "b", "c"], ["d", "b", "c"])  # the top weighs more
    assert rbo([], []) == 1.0


def test_a_biased_toy_ranker_fails_the_probes_and_a_neutral_one_passes() -> None:
    spec = CounterfactualSpec(min_mean_rbo=0.9)
    neutral = summarise_probes(probe_search(Neutral(), PAIRS, 10), [])
    biased = summarise_probes(probe_search(Biased(), PAIRS, 10), [])
    assert neutral["search"]["mean_rbo"] == pytest.approx(1.0)
    assert neutral["search"]["mean_score_shift"] == pytest.approx(0.0)
    assert biased["search"]["mean_rbo"] < 0.6
    assert biased["search"]["mean_score_shift"] > 0.15
    assert counterfactual_findings(neutral, spec) == []
    (finding,) = counterfactual_findings(biased, spec)
    assert finding["check"] == "counterfactual_rbo"
    assert biased["search"]["worst"][0]["rbo"] == biased["search"]["min_rbo"]


class Answers:
    """Answers from the passage ids it is given; ``biased`` abstains when a female term is in the question."""

    name = "toy"

    def __init__(self, biased: bool) -> None:
        self.biased = biased

    def describe(self) -> Mapping[str, Any]:
        return {}

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        if self.biased and words(question) & FEMALE:
            return SystemAnswer("", abstained=True)
        return SystemAnswer(f"See {passages[0].id}.", (passages[0].id,))


def test_answers_that_change_with_a_demographic_term_are_caught() -> None:
    def passages_for(text: str) -> list[Passage]:
        return [Passage(i, "text") for i, _ in Neutral().rank(text, 3)]

    spec = CounterfactualSpec(max_answer_change=0.25)
    same = summarise_probes([], probe_answers(Answers(biased=False), passages_for, PAIRS))
    changed = summarise_probes([], probe_answers(Answers(biased=True), passages_for, PAIRS))
    assert same["answers"]["answer_change_rate"] == 0.0
    assert changed["answers"]["answer_change_rate"] == 1.0
    assert changed["answers"]["worst"][0]["answer_b"] == "(abstained)"
    assert counterfactual_findings(same, spec) == []
    assert [f["check"] for f in counterfactual_findings({**changed, "answer_backend": "toy"}, spec)] == [
        "counterfactual_answers"
    ]


def test_probes_run_inside_the_bias_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real path: the pack's items searched with an encoder (a fake one here) and answers from a toy backend."""
    from evals.bias import BiasOptions, bias_summary, run_bias_audit
    from evals.suite import AnswerSpec, BiasSpec, LoadedSuite, RecommendationTask, Suite, SuiteMeta, SystemSpec
    from tests.unit.test_bias import constructed_pack

    pack = constructed_pack(tmp_path / "pack", biased=False, users=20)
    items = [json.loads(line) for line in (pack / "items.jsonl").read_text().splitlines()]
    items[0]["title"], items[1]["title"] = "Watch for men", "Watch for women"  # p0 is in many histories
    (pack / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (pack / "eval").mkdir()
    (pack / "eval" / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "gift for my son"}) + "\n")
    (tmp_path / "swaps").mkdir()
    (tmp_path / "swaps" / "generalized_swaps.txt").write_text("son\tdaughter\nhe\tshe\nmen\twomen\n")

    class FakeEncoder:
        def encode(self, texts: Sequence[str], batch_size: int = 32, progress: Any = None) -> np.ndarray:
            rows = [np.random.default_rng(sum(map(ord, t))).normal(size=8) for t in texts]
            out = np.asarray(rows, dtype=np.float32)
            return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True), dtype=np.float32)

    spec = CounterfactualSpec(
        dataset=str(pack), swaps=str(tmp_path / "swaps"), templates=["toys {term} likes"], terms=["he"]
    )
    task = RecommendationTask(dataset=str(pack), format="pack", recommenders=["most-popular"], groups=["gender"])
    suite = Suite(
        suite=SuiteMeta(name="cf", bootstrap=0),
        system=SystemSpec(answer=AnswerSpec(backend="toy")),
        recommendation={"t": task},
        bias=BiasSpec(counterfactual=spec),
    )
    options = BiasOptions(
        state_dir=tmp_path / "evals", progress=False, answer_backends={"toy": lambda ctx: Answers(biased=True)}
    )
    from evals.context import RunContext

    def embed_corpus(self: Any, label: str, ids: Sequence[str], texts: Sequence[str]) -> Any:
        return FakeEncoder().encode(texts), None

    def embed_texts(self: Any, label: str, texts: Sequence[str]) -> Any:
        return FakeEncoder().encode(texts), 0.0

    monkeypatch.setattr(RunContext, "embed_corpus", embed_corpus)
    monkeypatch.setattr(RunContext, "embed_texts", embed_texts)
    run = run_bias_audit(LoadedSuite(suite, pack), options)
    probes = run.report["counterfactual"]
    assert probes["sources"] == {"query": 1, "template": 1}
    assert probes["answers"]["answer_change_rate"] == 1.0
    assert 0.0 <= probes["search"]["mean_rbo"] < 1.0
    assert "counterfactual" not in run.report["not_run"]
    assert bias_summary(run.report)["counterfactual"]["pairs"] == 2
    assert probes["histories"]["pairs"] > 0  # shoppers who viewed p0, "Watch for men"
    assert bias_summary(run.report)["counterfactual"]["history_pairs"] == probes["histories"]["pairs"]
    assert "Counterfactual probes" in (run.run_dir / "bias.html").read_text()


def test_history_pairs_swap_demographic_items_and_a_biased_recommender_fails() -> None:
    from evals.counterfactual import history_pairs, probe_histories

    twins = {"mens-watch": "womens-watch", "boys-shirt": "girls-shirt"}
    histories = {"u2": ["mug", "kettle"], "u1": ["mug", "mens-watch", "boys-shirt"]}
    pairs = history_pairs(histories, twins.get, max_pairs=10)
    assert [(p.user, p.b, p.terms) for p in pairs] == [
        ("u1", ("mug", "womens-watch", "girls-shirt"), "mens-watch->womens-watch, boys-shirt->girls-shirt")
    ]
    canonical = {v: k for k, v in twins.items()}

    def neutral(history: Sequence[str], k: int) -> list[tuple[str, float]]:
        return Neutral().rank(" ".join(canonical.get(i, i) for i in history), k)

    def biased(history: Sequence[str], k: int) -> list[tuple[str, float]]:
        return Biased().rank(
            " ".join(canonical.get(i, i) for i in history) + (" she" if "womens-watch" in history else ""), k
        )

    spec = CounterfactualSpec(min_mean_rbo=0.9)
    fair = summarise_probes([], [], histories=probe_histories(neutral, pairs, 10))
    unfair = summarise_probes([], [], histories=probe_histories(biased, pairs, 10))
    assert fair["histories"]["mean_rbo"] == pytest.approx(1.0)
    assert unfair["histories"]["mean_rbo"] < 0.6
    assert counterfactual_findings(fair, spec) == []
    assert [f["recommender"] for f in counterfactual_findings(unfair, spec)] == ["histories"]
