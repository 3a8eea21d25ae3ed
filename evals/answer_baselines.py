"""Answer baselines every suite can name, so a backend's figures are read beside a trivial one's in the same setup.

``overlap-baseline`` answers with the sentence of the given passages that shares the most content words (stemmed,
stop words dropped) with the question, earlier passages first on ties, and cites its passage; it never abstains.
It is the classic sliding-window reading baseline without the window: no model, no threshold, so it shows what
the question's own words buy in each setting, and its abstention figures are the floor (recall 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evals.answers import AnswerBackendContext, AnswerFactory, AnswerSystem, Passage, SystemAnswer
from retrieval.chunking import split_sentences
from retrieval.text import content_stems

__all__ = ["BASELINES", "OverlapBaseline"]


class OverlapBaseline:
    """The sentence with the most question words, from the given passages in their order."""

    name = "overlap-baseline"

    def describe(self) -> Mapping[str, Any]:
        """What it does, for the report."""
        return {"kind": "baseline", "rule": "sentence sharing the most content words with the question"}

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        """The best-overlapping sentence and its passage (the first sentence of the first passage when none overlap)."""
        wanted = set(content_stems(question))
        best: tuple[int, str, str] | None = None
        for passage in passages:
            for sentence in split_sentences(passage.text):
                shared = len(wanted & set(content_stems(sentence)))
                if best is None or shared > best[0]:
                    best = (shared, sentence, passage.id)
        if best is None:
            return SystemAnswer("", (), abstained=True)  # no text at all to answer from
        return SystemAnswer(best[1], (best[2],))


def _overlap(ctx: AnswerBackendContext) -> AnswerSystem:
    return OverlapBaseline()


BASELINES: dict[str, AnswerFactory] = {"overlap-baseline": _overlap}
