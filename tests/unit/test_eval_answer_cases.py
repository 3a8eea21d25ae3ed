"""Unanswerable probes: never given away, hard where they should be, reproducible."""

from __future__ import annotations

import numpy as np

from evals.answer_cases import CaseBuilder, holds_answer, without_answer
from evals.qa_data import Passage, QAExample

PASSAGES = [
    Passage("a#0", "The Broncos won Super Bowl 50. The game was in California.", "a"),
    Passage("a#1", "The Broncos play in Denver. Their coach was Gary Kubiak.", "a"),
    Passage("b#0", "Paris is the capital of France. It lies on the Seine.", "b"),
    Passage("c#0", "The Broncos, the Panthers and the Patriots are football teams.", "c"),
]
GROUPS = {"a#0": "a", "a#1": "a", "b#0": "b", "c#0": "c"}
QUESTION = QAExample("q1", "Who won Super Bowl 50?", ("Broncos",), ("a#0",), True, "a#0")
OTHER = QAExample("q2", "Where did the game take place?", ("California",), ("a#0",), True, "a#0")


def _builder(k: int = 2) -> CaseBuilder:
    # Scores for q1, best first: a#0 (the answer), c#0 (names the Broncos), a#1 (same article), b#0.
    vectors = np.eye(4, dtype=np.float32)
    question = np.asarray([0.9, 0.5, 0.1, 0.7], dtype=np.float32)
    return CaseBuilder(PASSAGES, GROUPS, vectors, {"q1": question, "q2": question}, k)


def test_holds_answer_uses_squad_normalisation() -> None:
    assert holds_answer("The Denver Broncos, champions.", ["denver broncos"])
    assert not holds_answer("Denver's team", ["Denver Broncos"])
    assert not holds_answer("anything", [""])


def test_without_answer_cuts_whole_sentences() -> None:
    cut = without_answer(PASSAGES[0], ["Broncos"])
    assert cut is not None
    assert cut.text == "The game was in California."
    assert cut.id == "a#0#answer-removed"
    assert without_answer(Passage("x", "Only the Broncos."), ["Broncos"]) is None  # nothing left
    straddling = Passage("x", "It was won by the Denver. Broncos fans cheered. Then rain.")
    assert without_answer(straddling, ["Denver. Broncos"]) is None  # the cut would still hold the answer


def test_open_and_gold_passages() -> None:
    builder = _builder()
    assert [p.id for p in builder.retrieved(QUESTION)] == ["a#0", "c#0"]
    assert [p.id for p in builder.gold(QUESTION)] == ["a#0"]


def test_probes_never_hold_the_answer_and_prefer_near_misses() -> None:
    builder = _builder()
    # Every Broncos passage holds "Broncos", so only Paris is answer-free: the probe must not give the answer away.
    assert [p.id for p in builder.nearest(QUESTION, "gold") or ()] == ["b#0"]
    assert builder.nearest(QUESTION, "open") is None  # two answer-free passages are needed, one exists
    # For q2 the same article's other paragraph comes first in the gold setting, though c#0 ranks higher overall.
    assert [p.id for p in builder.nearest(OTHER, "gold") or ()] == ["a#1"]
    assert [p.id for p in builder.nearest(OTHER, "open") or ()] == ["c#0", "a#1"]
    removed = builder.removed(OTHER, "open") or ()
    assert [p.id for p in removed] == ["a#0#answer-removed", "c#0"]
    assert all(not holds_answer(p.text, OTHER.answers) for p in removed)


def test_probe_sets_are_reproducible_and_counted() -> None:
    builder = _builder(k=1)
    cases, missing = builder.probes([QUESTION, OTHER], ["nearest", "removed", "random"], "gold", seed=3)
    again, _ = builder.probes([QUESTION, OTHER], ["nearest", "removed", "random"], "gold", seed=3)
    assert cases == again
    assert missing == {"nearest": 0, "removed": 0, "random": 0}
    assert {c.kind for c in cases} == {"nearest", "removed", "random"}
    for case in cases:
        assert not case.example.answerable
        assert case.example.answers == ()
        source = QUESTION if case.example.id.startswith("q1") else OTHER
        assert all(not holds_answer(p.text, source.answers) for p in case.passages)
        if case.kind == "random":
            assert all(GROUPS.get(p.id) != "a" for p in case.passages)


def test_a_pack_pool_reads_each_document_by_its_best_chunk_and_keeps_places_for_documents() -> None:
    # Rows: two items, then two chunks of one document (one id, as the service cites them) and one of another.
    rows = [
        Passage("item-1", "Steel watch", "Steel watch"),
        Passage("item-2", "Gold watch", "Gold watch"),
        Passage("doc-r", "Returns: 30 days.", "Returns"),
        Passage("doc-r", "Watches: 10 days.", "Returns"),
        Passage("doc-w", "Warranty: 1 year.", "Warranty"),
    ]
    whole = {"doc-r": Passage("doc-r", "Returns: 30 days. Watches: 10 days.", "Returns")}
    whole |= {p.id: p for p in rows if p.id.startswith(("item", "doc-w"))}
    question = QAExample("w", "Return window for watches?", ("10 days",), ("doc-r",), True, None)
    scores = np.asarray([0.9, 0.8, 0.3, 0.5, 0.2], dtype=np.float32)
    plain = CaseBuilder(rows, {}, np.eye(5, dtype=np.float32), {"w": scores}, 2, whole=whole)
    assert [(p.id, p.text) for p in plain.ranked(question)][:3] == [
        ("item-1", "Steel watch"),
        ("item-2", "Gold watch"),
        ("doc-r", "Watches: 10 days."),  # the document's best chunk; its other chunk is not offered again
    ]
    assert [p.id for p in plain.retrieved(question)] == ["item-1", "item-2"]  # listings crowd the article out
    served = CaseBuilder(
        rows,
        {},
        np.eye(5, dtype=np.float32),
        {"w": scores},
        2,
        documents={"doc-r", "doc-w"},
        min_documents=1,
        whole=whole,
    )
    assert [p.id for p in served.retrieved(question)] == ["item-1", "doc-r"]
    assert served.gold(question) == (whole["doc-r"],)  # the gold setting reads the whole document
