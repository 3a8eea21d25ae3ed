"""Counterfactual probes: texts and histories differing only in a demographic term, through search, answers, recs.

Pairs come from a swap list (WinoBias ``generalized_swaps.txt`` and ``extra_gendered_words.txt``: ``he``/``she``,
``son``/``daughter``, ...) applied to a pack's search queries and questions and to templates (``gift for my
{term}``), and from any CSV of pairs a user gives (``a,b`` columns). Each text of a pair is run through search
(top k of the catalog) and through the answer backend (its answer from the passages search retrieves), and the two
runs are compared:

- **rank-biased overlap** (RBO, Webber et al. 2010, persistence ``p``) of the two result lists, truncated at depth k
  and normalised so identical lists score 1 and disjoint lists 0;
- **score shift**: the absolute difference of the two lists' mean scores;
- **answer change**: whether the two answers differ (after SQuAD normalisation) or one abstained and the other not.

Histories are probed too: a shopper's history with every item whose title holds a demographic term replaced by the
item closest to its title with the term swapped, run through a recommender from history (RBO and score shift).
The pairs with the lowest overlap (and the changed answers) are listed as the worst.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from evals.answer_metrics import normalize_answer
from evals.answers import AnswerSystem, Passage
from evals.errors import DatasetFormatError, DatasetNotFoundError

SWAP_FILES = ("generalized_swaps.txt", "extra_gendered_words.txt")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


@dataclass(frozen=True, slots=True)
class ProbePair:
    """Two texts that differ only in a demographic term.

    Attributes:
        a: The text as written (or the swap list's first form).
        b: The counterfactual.
        source: Where the pair came from (``query``, ``question``, ``template``, ``csv``).
        terms: The swapped terms (``son->daughter``).
    """

    a: str
    b: str
    source: str
    terms: str = ""


class Ranker(Protocol):
    """What search probes need: the top k items for a text, with scores."""

    def rank(self, text: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best (id, score) pairs for ``text``, best first."""
        ...


def load_swaps(folder: Path) -> dict[str, str]:
    """A word-to-counterpart map from WinoBias swap files in ``folder`` (tab or space separated pairs).

    Raises:
        DatasetNotFoundError: Neither swap file is there.
    """
    swaps: dict[str, str] = {}
    found = [folder / name for name in SWAP_FILES if (folder / name).is_file()]
    if not found:
        raise DatasetNotFoundError(f"{folder}: no swap list ({' or '.join(SWAP_FILES)} of WinoBias)")
    for path in found:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetFormatError(path, lineno, "expected two words")
            a, b = (p.lower() for p in parts)
            swaps.setdefault(a, b)
            swaps.setdefault(b, a)
    return swaps


def read_pairs_csv(path: Path) -> list[ProbePair]:
    """Pairs from a CSV file with columns ``a`` and ``b`` (a header row naming them).

    Raises:
        DatasetNotFoundError: The file is missing.
        DatasetFormatError: The header lacks ``a`` or ``b``, or a row lacks a text.
    """
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such pairs file")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"a", "b"} <= set(reader.fieldnames):
            raise DatasetFormatError(path, 1, "expected a header with columns a and b")
        pairs = []
        for row in reader:
            a, b = (row.get("a") or "").strip(), (row.get("b") or "").strip()
            if not a or not b:
                raise DatasetFormatError(path, reader.line_num, "both a and b need a text")
            pairs.append(ProbePair(a, b, "csv"))
    return pairs


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[:1].isupper() else word


def swap_terms(text: str, swaps: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with every word of the swap list replaced by its counterpart (whole words, case kept).

    Returns:
        The counterfactual text and the swaps made (``son->daughter``); no swaps: the text unchanged.
    """
    made: list[str] = []

    def replace(found: re.Match[str]) -> str:
        word = found.group(0)
        other = swaps.get(word.lower())
        if other is None:
            return word
        made.append(f"{word.lower()}->{other}")
        return _match_case(other, word)

    return _WORD.sub(replace, text), made


def make_pairs(
    texts: Iterable[tuple[str, str]],
    swaps: Mapping[str, str],
    templates: Sequence[str] = (),
    terms: Sequence[str] = (),
) -> list[ProbePair]:
    """Pairs from texts that hold a swappable word, and from templates filled with each term and its counterpart.

    Args:
        texts: ``(source, text)`` such as ``("query", "watch for women")``.
        swaps: Word to counterpart.
        templates: Texts with a ``{term}`` slot.
        terms: The terms the templates are filled with (each with its counterpart from ``swaps``).

    Returns:
        Unique pairs, in the order made.
    """
    pairs: list[ProbePair] = []
    seen: set[tuple[str, str]] = set()

    def add(pair: ProbePair) -> None:
        key = (pair.a.lower(), pair.b.lower())
        if pair.a != pair.b and key not in seen and key[::-1] not in seen:
            seen.add(key)
            pairs.append(pair)

    for source, text in texts:
        swapped, made = swap_terms(text, swaps)
        if made:
            add(ProbePair(text, swapped, source, ", ".join(made)))
    for template in templates:
        for term in terms:
            other = swaps.get(term.lower())
            if other is not None:
                add(ProbePair(template.format(term=term), template.format(term=other), "template", f"{term}->{other}"))
    return pairs


def rbo(a: Sequence[str], b: Sequence[str], p: float = 0.9) -> float:
    """Rank-biased overlap of two rankings, truncated at the longer one's depth and normalised to [0, 1].

    ``sum_{d<=k} p^(d-1) * |A[:d] & B[:d]| / d``, divided by its value for identical lists, so identical rankings
    score 1, disjoint ones 0, and a difference near the top weighs more than one near the bottom.
    """
    depth = max(len(a), len(b))
    if depth == 0:
        return 1.0
    weights = p ** np.arange(depth)
    agreement = [len(set(a[: d + 1]) & set(b[: d + 1])) / (d + 1) for d in range(depth)]
    return float((weights * np.asarray(agreement)).sum() / weights.sum())


def _mean_score(hits: Sequence[tuple[str, float]]) -> float:
    return float(np.mean([s for _, s in hits])) if hits else 0.0


def probe_search(ranker: Ranker, pairs: Sequence[ProbePair], k: int, p: float = 0.9) -> list[dict[str, Any]]:
    """Each pair through search: the two top-k lists, their RBO and score shift."""
    rows = []
    for pair in pairs:
        hits_a, hits_b = ranker.rank(pair.a, k), ranker.rank(pair.b, k)
        rows.append(
            {
                "a": pair.a,
                "b": pair.b,
                "source": pair.source,
                "terms": pair.terms,
                "rbo": rbo([i for i, _ in hits_a], [i for i, _ in hits_b], p),
                "score_shift": abs(_mean_score(hits_a) - _mean_score(hits_b)),
                "top_a": [i for i, _ in hits_a[:3]],
                "top_b": [i for i, _ in hits_b[:3]],
            }
        )
    return rows


def probe_answers(
    system: AnswerSystem,
    passages_for: Callable[[str], list[Passage]],
    pairs: Sequence[ProbePair],
) -> list[dict[str, Any]]:
    """Each pair through the answer backend (passages retrieved for each text): whether the answer changed."""
    rows = []
    for pair in pairs:
        answer_a = system.answer(pair.a, passages_for(pair.a))
        answer_b = system.answer(pair.b, passages_for(pair.b))
        text_a = "" if answer_a.abstained else normalize_answer(answer_a.text)
        text_b = "" if answer_b.abstained else normalize_answer(answer_b.text)
        changed = answer_a.abstained != answer_b.abstained or text_a != text_b
        rows.append(
            {
                "a": pair.a,
                "b": pair.b,
                "source": pair.source,
                "terms": pair.terms,
                "changed": changed,
                "answer_a": "(abstained)" if answer_a.abstained else answer_a.text[:300],
                "answer_b": "(abstained)" if answer_b.abstained else answer_b.text[:300],
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class HistoryPair:
    """A shopper's history and its counterfactual.

    In the counterfactual, each item whose title holds a demographic term is replaced by the item closest to the
    title with the term swapped (a men's watch by the women's watch most like it).

    Attributes:
        user: Whose history it is.
        a: The history, item ids oldest first.
        b: The counterfactual history.
        terms: The items swapped (``i1->i7``).
    """

    user: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    terms: str


def history_pairs(
    histories: Mapping[str, Sequence[str]], counterpart: Callable[[str], str | None], max_pairs: int
) -> list[HistoryPair]:
    """Pairs of histories from the shoppers whose histories hold an item with a counterpart, users in sorted order.

    Args:
        histories: User to item ids, oldest first.
        counterpart: The counterpart of an item, ``None`` when its title holds no demographic term.
        max_pairs: Most pairs made.
    """
    pairs: list[HistoryPair] = []
    for user in sorted(histories):
        items = tuple(histories[user])
        swapped = tuple(counterpart(item) or item for item in items)
        if swapped != items:
            made = ", ".join(f"{x}->{y}" for x, y in zip(items, swapped, strict=True) if x != y)
            pairs.append(HistoryPair(user, items, swapped, made))
            if len(pairs) >= max_pairs:
                break
    return pairs


def probe_histories(
    recommend: Callable[[Sequence[str], int], list[tuple[str, float]]],
    pairs: Sequence[HistoryPair],
    k: int,
    p: float = 0.9,
) -> list[dict[str, Any]]:
    """Each history pair through a recommender: the two top-k lists, their RBO and score shift."""
    rows = []
    for pair in pairs:
        hits_a, hits_b = recommend(pair.a, k), recommend(pair.b, k)
        rows.append(
            {
                "a": f"{pair.user}: {len(pair.a)} items",
                "b": pair.terms,
                "source": "history",
                "terms": pair.terms,
                "rbo": rbo([i for i, _ in hits_a], [i for i, _ in hits_b], p),
                "score_shift": abs(_mean_score(hits_a) - _mean_score(hits_b)),
                "top_a": [i for i, _ in hits_a[:3]],
                "top_b": [i for i, _ in hits_b[:3]],
            }
        )
    return rows


def _search_figures(rows: Sequence[Mapping[str, Any]], worst: int) -> dict[str, Any]:
    overlaps = np.asarray([r["rbo"] for r in rows])
    shifts = np.asarray([r["score_shift"] for r in rows])
    return {
        "pairs": len(rows),
        "mean_rbo": float(overlaps.mean()),
        "min_rbo": float(overlaps.min()),
        "mean_score_shift": float(shifts.mean()),
        "max_score_shift": float(shifts.max()),
        "worst": sorted(rows, key=lambda r: (r["rbo"], -r["score_shift"]))[:worst],
    }


def summarise_probes(
    search: Sequence[Mapping[str, Any]],
    answers: Sequence[Mapping[str, Any]],
    worst: int = 10,
    histories: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Headline figures and the worst pairs of search, answer and history (recommendation) probes."""
    out: dict[str, Any] = {"pairs": max(len(search), len(answers))}
    if search:
        out["search"] = _search_figures(search, worst)
    if histories:
        out["histories"] = _search_figures(histories, worst)
    if answers:
        changed = [r for r in answers if r["changed"]]
        out["answers"] = {
            "pairs": len(answers),
            "answer_change_rate": len(changed) / len(answers),
            "worst": changed[:worst],
        }
    return out


class VectorRanker:
    """Search by cosine similarity over normalised vectors (the encoder under test; exact, no index).

    Args:
        ids: Item ids by row.
        vectors: ``(items, dim)`` normalised item vectors.
        encode: Normalised vectors for texts.
        cache: Text vectors already encoded (shared between rankers over the same texts).
    """

    def __init__(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        encode: Callable[[list[str]], np.ndarray],
        cache: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.ids = list(ids)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.encode = encode
        self.cache = cache if cache is not None else {}

    def warm(self, texts: Sequence[str]) -> None:
        """Encode texts in one batch ahead of ranking them."""
        todo = sorted({t for t in texts if t not in self.cache})
        if todo:
            for text, vector in zip(todo, self.encode(todo), strict=True):
                self.cache[text] = vector

    def rank(self, text: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` most similar items."""
        self.warm([text])
        scores = self.vectors @ self.cache[text]
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.ids[i], float(scores[i])) for i in top]
