"""Answer metrics: SQuAD's exact match and token F1 (official normalisation), citations, support, abstention.

``normalize_answer``, ``f1`` and ``exact_match`` follow the official SQuAD v1.1 evaluation script: lower-case,
drop punctuation, drop the articles a/an/the, collapse white space; the score against several gold answers is
the best one.

Citation precision and faithfulness are lexical checks, not entailment models:

- a citation is **correct** when the cited passage is one the dataset names as supporting, or contains a gold
  answer after normalisation;
- **faithfulness** is the share of the answer's normalised tokens that occur in the text it cites (an answer
  that cites nothing scores 0), so an answer copied from its sources scores 1 and an invented one near 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, articles and extra white space (SQuAD v1.1's official normalisation)."""
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punct)
    return " ".join(no_articles.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 of the prediction against the gold answers."""
    return max((_f1(prediction, g) for g in golds), default=0.0)


def holds_answer(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction holds a normalised gold answer as whole words (a span inside a sentence).

    Exact match and F1 count a sentence around the right span as mostly wrong; this counts whether the reader of
    the answer finds what was asked in it.
    """
    pred = f" {normalize_answer(prediction)} "
    return float(any(g and f" {g} " in pred for g in (normalize_answer(x) for x in golds)))


def citation_correct(passage_id: str, passage_text: str, golds: Sequence[str], supporting: Collection[str]) -> bool:
    """Whether citing this passage is right: it supports the answer by the dataset's word, or contains one."""
    if passage_id in supporting:
        return True
    text = normalize_answer(passage_text)
    return any((g := normalize_answer(gold)) and g in text for gold in golds)


def citation_precision(
    cited: Sequence[str], passages: Mapping[str, str], golds: Sequence[str], supporting: Collection[str]
) -> float | None:
    """Share of cited passages that are correct citations; ``None`` when nothing was cited.

    Args:
        cited: Cited passage ids.
        passages: Passage id to text, for the passages the system was given.
        golds: Gold answers.
        supporting: Passage ids the dataset names as holding the answer.
    """
    unique = list(dict.fromkeys(cited))
    if not unique:
        return None
    right = sum(1 for pid in unique if citation_correct(pid, passages.get(pid, ""), golds, supporting))
    return right / len(unique)


def faithfulness(answer: str, cited_texts: Sequence[str]) -> float:
    """Share of the answer's normalised tokens found in the cited texts (0 when nothing is cited)."""
    tokens = normalize_answer(answer).split()
    if not tokens:
        return 0.0
    support = set(normalize_answer(" ".join(cited_texts)).split())
    return sum(1 for t in tokens if t in support) / len(tokens)
