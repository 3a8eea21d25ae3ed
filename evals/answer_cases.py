"""What an answer task asks: each question with the passages it is given, in the gold and the open setting.

- **gold**: a question gets the passages the dataset names as holding its answer (SQuAD's own paragraph).
- **open**: a question gets the ``passages`` passages the encoder ranks highest among all of the dataset's
  passages (what the service retrieves), so a citation can be wrong and an answer can be missing. A pack is read
  as the service reads it (:class:`PackRetrieval`): each document by its best chunk, items cut to the length the
  service reads, and places kept for documents among items.

Unanswerable probes are made from a seeded sample of answerable questions, one probe per question and kind, so
the kinds are compared on the same questions:

- ``nearest``: the best-ranked passages that neither are supporting nor hold a gold answer; in the gold setting
  the question's own article is searched first (a paragraph on the same subject is the hardest wrong context);
- ``removed``: the question's own passages with every sentence that holds a gold answer cut out, so the
  passage still reads as on topic (in the open setting, the rest are the best-ranked passages without the answer);
- ``random``: passages drawn from other articles, the easy case, kept for comparison.

A passage "holds" an answer when the normalised answer occurs in the normalised passage (SQuAD's normalisation),
so a probe never gives away what it asks.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from evals.answer_metrics import normalize_answer
from evals.qa_data import Passage, QAExample
from retrieval.chunking import split_sentences
from retrieval.knowledge import ChunkingConfig
from retrieval.passages import reserved_order

__all__ = ["Case", "CaseBuilder", "PackRetrieval", "holds_answer", "without_answer"]


@dataclass(frozen=True, slots=True)
class PackRetrieval:
    """How the service retrieves a question's passages from a pack (its ``[knowledge]`` settings).

    Attributes:
        chunking: How documents are cut; a question reads a document's best chunk.
        answer_items: Whether item texts are answerable beside the documents.
        item_passage_chars: Longest item text read.
        min_documents: Places among a question's passages kept for documents.
    """

    chunking: ChunkingConfig
    answer_items: bool
    item_passage_chars: int
    min_documents: int


@dataclass(frozen=True, slots=True)
class Case:
    """One question as posed to the backend.

    Attributes:
        example: The question (``answerable`` false for probes and for the dataset's unanswerable questions).
        passages: What the backend is given.
        kind: ``question`` (as the dataset poses it) or the probe kind (``nearest``, ``removed``, ``random``).
    """

    example: QAExample
    passages: tuple[Passage, ...]
    kind: str = "question"


def holds_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether any non-empty normalised answer occurs in the normalised text."""
    normalised = normalize_answer(text)
    return any((gold := normalize_answer(a)) and gold in normalised for a in answers)


def without_answer(passage: Passage, answers: Sequence[str]) -> Passage | None:
    """The passage with every sentence that holds an answer cut out; ``None`` when nothing answer-free is left.

    ``None`` also when the answer survives the cut (it straddles sentences), so the result never holds it.
    """
    kept = [s for s in split_sentences(passage.text) if not holds_answer(s, answers)]
    text = " ".join(kept)
    if not kept or holds_answer(text, answers):
        return None
    return replace(passage, id=f"{passage.id}#answer-removed", text=text)


class CaseBuilder:
    """Builds the cases of both settings from questions, a passage pool and the encoder's scores.

    Args:
        passages: The pool, in the order of ``passage_vectors``' rows.
        groups: Passage id to its article (SQuAD); passages without one are their own article.
        passage_vectors: Unit vectors of the passages, one row per passage.
        question_vectors: Question id to its unit vector, for every question the builder is asked about.
        k: Passages per question in the open setting.
        documents: Ids of the passages that are documents, when a pack keeps places for them.
        min_documents: Places among the ``k`` kept for the best documents.
        whole: The passages the dataset names, by id, when ``passages`` holds chunks of them (several passages
            with one id: a question reads the best of them).
    """

    def __init__(
        self,
        passages: Sequence[Passage],
        groups: Mapping[str, str],
        passage_vectors: np.ndarray,
        question_vectors: Mapping[str, np.ndarray],
        k: int,
        *,
        documents: Collection[str] = (),
        min_documents: int = 0,
        whole: Mapping[str, Passage] | None = None,
    ) -> None:
        self._passages = list(passages)
        self._groups = groups
        self._vectors = passage_vectors
        self._questions = question_vectors
        self._by_id = dict(whole) if whole is not None else {p.id: p for p in self._passages}
        self._k = max(1, min(k, len(self._by_id)))
        self._documents = frozenset(documents)
        self._min_documents = min_documents
        self._article_rows: dict[str, list[int]] = {}
        for row, p in enumerate(self._passages):
            self._article_rows.setdefault(groups.get(p.id, p.id), []).append(row)

    def ranked(self, example: QAExample, rows: Sequence[int] | None = None) -> list[Passage]:
        """Passages by the encoder's score for the question, best first (ties by pool order); all, or ``rows``.

        One passage per id: the best of a document's chunks.
        """
        scores = self._vectors @ self._questions[example.id]
        candidates = np.arange(len(self._passages)) if rows is None else np.asarray(rows)
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        best: dict[str, Passage] = {}
        for i in order:
            best.setdefault(self._passages[int(i)].id, self._passages[int(i)])
        return list(best.values())

    def retrieved(self, example: QAExample) -> tuple[Passage, ...]:
        """The open setting's passages for a question: the top ``k`` of the pool, places kept for documents."""
        ranked = self.ranked(example)
        order = reserved_order([p.id in self._documents for p in ranked], self._k, 0, self._min_documents)
        return tuple(ranked[i] for i in order)

    def gold(self, example: QAExample) -> tuple[Passage, ...]:
        """The passages the dataset names as supporting (empty when it names none in the pool)."""
        return tuple(self._by_id[s] for s in example.supporting_ids if s in self._by_id)

    def _answer_free(self, example: QAExample, ranked: Sequence[Passage]) -> list[Passage]:
        supporting = set(example.supporting_ids)
        return [p for p in ranked if p.id not in supporting and not holds_answer(p.text, example.answers)]

    def nearest(self, example: QAExample, setting: str) -> tuple[Passage, ...] | None:
        """The best-ranked passages without the answer: as many as the setting gives (own article first in gold)."""
        count = self._k if setting == "open" else max(1, len(self.gold(example)))
        picked: list[Passage] = []
        if setting == "gold":
            articles = {self._groups.get(s, s) for s in example.supporting_ids}
            rows = [r for a in sorted(articles) for r in self._article_rows.get(a, [])]
            picked = self._answer_free(example, self.ranked(example, rows))[:count] if rows else []
        for passage in self._answer_free(example, self.ranked(example)):
            if len(picked) == count:
                break
            if all(p.id != passage.id for p in picked):
                picked.append(passage)
        return tuple(picked) if len(picked) == count else None

    def removed(self, example: QAExample, setting: str) -> tuple[Passage, ...] | None:
        """The question's own passages with the answer cut out (then, in the open setting, the best answer-free)."""
        cut = [without_answer(p, example.answers) for p in self.gold(example)]
        kept = [p for p in cut if p is not None]
        if not kept or len(kept) != len(cut):
            return None
        if setting == "gold":
            return tuple(kept)
        fill = self._answer_free(example, self.ranked(example))
        return tuple([*kept, *fill][: max(self._k, len(kept))])

    def random(self, example: QAExample, setting: str, rng: random.Random) -> tuple[Passage, ...] | None:
        """Passages drawn from other articles that do not hold the answer."""
        count = self._k if setting == "open" else max(1, len(self.gold(example)))
        own = {self._groups.get(s, s) for s in example.supporting_ids}
        pool = [
            p
            for p in self._by_id.values()
            if self._groups.get(p.id, p.id) not in own
            and p.id not in example.supporting_ids
            and not holds_answer(p.text, example.answers)
        ]
        if len(pool) < count:
            return None
        return tuple(rng.sample(pool, count))

    def probes(
        self, examples: Sequence[QAExample], kinds: Sequence[str], setting: str, seed: int
    ) -> tuple[list[Case], dict[str, int]]:
        """One probe per question and kind (a probe that cannot be built is left out and counted).

        Args:
            examples: The answerable questions to turn into probes.
            kinds: Probe kinds, in report order.
            setting: ``open`` or ``gold``.
            seed: Seed of the ``random`` kind's draw.

        Returns:
            The probe cases (unanswerable, no gold answers) and, per kind, how many could not be built.
        """
        rng = random.Random(f"{seed}:{setting}")  # noqa: S311 - a reproducible sample, not a secret
        cases: list[Case] = []
        missing = dict.fromkeys(kinds, 0)
        for example in examples:
            for kind in kinds:
                if kind == "nearest":
                    passages = self.nearest(example, setting)
                elif kind == "removed":
                    passages = self.removed(example, setting)
                else:
                    passages = self.random(example, setting, rng)
                if passages is None:
                    missing[kind] += 1
                    continue
                probe = QAExample(f"{example.id}#{kind}", example.question, (), (), False, None)
                cases.append(Case(probe, passages, kind))
        return cases, missing
