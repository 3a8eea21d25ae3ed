"""Extractive answers with a trained span reader: the reader's batcher, span choice and confidence calibration.

With a reader configured, the extractive backend asks it for the best span of every retrieved passage (and of every
sentence in it) and answers with the span whose *calibrated confidence* is highest: a logistic function of the
passage's retrieval score, the reader's margin (the span's score over "no answer") and how well the sentence around
the span matches the question (:func:`sentence_matches`: a reader sure of a span in a sentence about something else
is often wrong; the best span of the sentence that matches is then the better answer). Questions
that want an explanation ("why", "how do I") or a yes or no ("can I", "is there") get the sentence around the
span; the others get the span ("3 to 7 business days"). Below ``min_confidence`` the backend abstains.

The calibration (weights, bias and threshold) is fitted on questions the reader did not train on, by
:func:`fit_calibration`, and kept in the reader's card, so one reader carries the confidence that was fitted for it.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import structlog

from retrieval.batcher import BatcherConfig, BatchObserver, DynamicBatcher
from retrieval.chunking import split_sentences
from retrieval.errors import BackendUnavailableError
from retrieval.reader import ReaderConfig, ReadRequest, Span, SpanReader, sentence_bounds
from retrieval.text import content_stems

logger = structlog.get_logger(__name__)

# "How many", "how long", "how much"... want a quantity; a bare "how" or "why" wants the reasoning around it. A
# yes/no question (it opens with an auxiliary verb: "can I", "is there", "does it") has no span that answers it:
# the sentence that says yes or no is the answer.
_SENTENCE_QUESTION = re.compile(
    r"^\s*(why\b|how\s+(?!many|much|long|old|far|big|large|often|soon|deep|tall|high|heavy|hot|cold|fast)\w|"
    r"explain\b|describe\b|what happens\b|what should\b|what do i do\b|"
    r"(is|are|am|was|were|do|does|did|can|could|should|would|will|shall|may|might|must|has|have|had)\b)",
    re.IGNORECASE,
)


# A whole sentence longer than this is cut back to the clause (between semicolons) that holds the span: a product's
# specification list is one "sentence" of many "Name: value;" clauses.
MAX_SENTENCE_WORDS = 40


def wants_sentence(question: str) -> bool:
    """Whether a question wants an explanation (the span's sentence) rather than the bare span.

    What is asked is the sentences that end in a question mark ("My payment failed. What happens?"), or the
    whole text when none does.
    """
    sentences = split_sentences(question, clauses=False)
    asked = [s for s in sentences if s.endswith("?")] or sentences
    return any(_SENTENCE_QUESTION.search(s) for s in asked)


def sentence_matches(
    question: str, question_vector: np.ndarray, sentences: Sequence[str], vectors: Iterable[np.ndarray]
) -> list[float]:
    """How well each sentence matches the question: ``(2 * cosine + share of the question's content words) / 3``.

    The same two signals, in the same proportion, as the extractive sentence score (without its retrieval part);
    an empty sentence scores 0.

    Args:
        question: The question.
        question_vector: Its unit vector.
        sentences: The sentences (those around each passage's span).
        vectors: The unit vectors of the sentences that are not empty, in order.
    """
    asked = set(content_stems(question))
    rows = iter(vectors)
    out = []
    for sentence in sentences:
        if not sentence:
            out.append(0.0)
            continue
        vector = next(rows)
        present = set(content_stems(sentence))
        share = sum(1 for t in asked if t in present) / max(1, len(asked))
        out.append((2.0 * float(np.dot(vector, question_vector)) + share) / 3.0)
    return out


Candidate = tuple[int, Span]
"""A span an answer may be: the passage it is in (its position) and the span."""


SENTENCE_CANDIDATES = 3
"""Sentences of a passage whose best spans are candidates: the reader's best few (each costs an encoder pass)."""


def span_candidates(spans: Sequence[Span | None], by_sentence: bool) -> list[Candidate]:
    """What the answer is chosen among: each passage's best span, or the best spans of its best few sentences.

    By sentence, the candidates of a passage are the best spans of the :data:`SENTENCE_CANDIDATES` sentences where
    the reader scores its best span highest, in passage order; a passage the reader found no span in by sentence (a
    one-sentence passage) gives its best span.
    """
    out: list[Candidate] = []
    for i, span in enumerate(spans):
        if span is None or not span.text:
            continue
        found = [s for s in span.sentence_spans if s.text] if by_sentence else []
        if len(found) > SENTENCE_CANDIDATES:
            kept = sorted(range(len(found)), key=lambda k: -found[k].score)[:SENTENCE_CANDIDATES]
            found = [found[k] for k in sorted(kept)]
        out.extend((i, s) for s in (found or [span]))
    return out


def candidate_sentences(contexts: Sequence[str], candidates: Sequence[Candidate]) -> list[str]:
    """The sentence around each candidate span: what :func:`sentence_matches` scores."""
    return [sentence_around(contexts[i], span.start, span.end) for i, span in candidates]


@dataclass(frozen=True, slots=True)
class ReaderCalibration:
    """Confidence of a read answer: ``sigmoid(w . (retrieval, margin, sentence match) + bias)``.

    Attributes:
        weights: ``(w_retrieval, w_margin, w_sentence)``; ``w_sentence`` is 0 in calibrations fitted before the
            sentence match was a feature (their answers need no sentence vectors).
        bias: The intercept.
        min_confidence: Answers below this are abstentions.
        fitted_on: What the weights were fitted on (``""``: the uncalibrated defaults).
    """

    weights: tuple[float, float, float] = (4.0, 0.4, 0.0)
    bias: float = -2.5
    min_confidence: float = 0.5
    fitted_on: str = ""

    @property
    def uses_sentences(self) -> bool:
        """Whether the sentence match counts (the answer then needs the span sentences' vectors)."""
        return self.weights[2] != 0.0

    def confidence(self, retrieval_score: float, margin: float, sentence_match: float = 0.0) -> float:
        """The calibrated probability that a span with these scores answers the question."""
        w = self.weights
        z = w[0] * retrieval_score + w[1] * margin + w[2] * sentence_match + self.bias
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def to_dict(self) -> dict[str, Any]:
        """The card's ``calibration`` section."""
        return {
            "weights": list(self.weights),
            "bias": self.bias,
            "min_confidence": self.min_confidence,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> ReaderCalibration:
        """The calibration a reader's card holds (the defaults when it holds none)."""
        data = card.get("calibration")
        if not isinstance(data, Mapping):
            return cls()
        default = cls()
        weights = [float(w) for w in data.get("weights", default.weights)][:3]
        weights += [0.0] * (3 - len(weights))  # a card fitted on two features
        return cls(
            (weights[0], weights[1], weights[2]),
            float(data.get("bias", default.bias)),
            float(data.get("min_confidence", default.min_confidence)),
            str(data.get("fitted_on", "")),
        )


def fit_calibration(
    features: np.ndarray, correct: np.ndarray, *, l2: float = 1e-2, iterations: int = 50
) -> tuple[tuple[float, float, float], float]:
    """Logistic regression of correctness on the three confidence features by Newton's method (small ridge).

    Args:
        features: ``(n, 3)``: retrieval score, reader margin and sentence match of each answer.
        correct: ``(n,)``: 1 where the answer was right (a probe, whatever was answered, counts 0).
        l2: Ridge penalty on the weights (keeps separable data finite; small beside any real sample).
        iterations: Newton steps at most.

    Returns:
        ``((w_retrieval, w_margin, w_sentence), bias)``.

    Raises:
        ValueError: Shapes disagree, or the labels are all one class.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3 or len(x) != len(y):
        raise ValueError("features must be (n, 3) with one label per row")
    if y.min() == y.max():
        raise ValueError("calibration needs right and wrong answers")
    design = np.hstack([x, np.ones((len(x), 1))])
    beta = np.zeros(4)
    penalty = np.diag([l2, l2, l2, 0.0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -50, 50)))
        gradient = design.T @ (y - p) - penalty @ beta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    return (float(beta[0]), float(beta[1]), float(beta[2])), float(beta[3])


@dataclass(frozen=True, slots=True)
class ReadAnswer:
    """The span chosen across the passages.

    Attributes:
        passage: Index of the passage it comes from.
        span: The reader's span.
        text: The answer text: the span, or its sentence when the question wants one.
        confidence: Calibrated confidence.
        sentence_match: How well the span's sentence matches the question (0 when the calibration ignores it).
    """

    passage: int
    span: Span
    text: str
    confidence: float
    sentence_match: float = 0.0


def sentence_around(context: str, start: int, end: int) -> str:
    """The sentence(s) of ``context`` that hold the characters ``start:end``.

    Whole sentences, semicolons included ("Once shipped, an order can no longer be cancelled; you can refuse the
    delivery instead" says no and what to do); longer than :data:`MAX_SENTENCE_WORDS`, only the clauses that hold
    the span.
    """
    whole = _covering(context, start, end, clauses=False)
    if len(whole.split()) <= MAX_SENTENCE_WORDS:
        return whole
    return _covering(context, start, end, clauses=True)


def _covering(context: str, start: int, end: int, *, clauses: bool) -> str:
    out = [context[low:high] for low, high in sentence_bounds(context, clauses=clauses) if low < end and high > start]
    return " ".join(out) or context[start:end]


def answer_text(question: str, context: str, span: Span) -> str:
    """What an answer says: the span, or its sentence when the question wants one (:func:`wants_sentence`)."""
    return sentence_around(context, span.start, span.end) if wants_sentence(question) else span.text


def choose_span(
    question: str,
    contexts: Sequence[str],
    retrieval_scores: Sequence[float],
    spans: Sequence[Span | None],
    calibration: ReaderCalibration,
    matches: Sequence[float] | None = None,
) -> ReadAnswer | None:
    """The most confident candidate span across the passages (``None`` when no passage gave one).

    The candidates are :func:`span_candidates` (by sentence when ``calibration.uses_sentences``); ``matches`` is
    each candidate's :func:`sentence_matches` score, needed when the calibration uses it.
    """
    candidates = span_candidates(spans, calibration.uses_sentences)
    if matches is None:
        if calibration.uses_sentences:
            raise ValueError("this calibration scores the span's sentence: pass its sentence matches")
        matches = [0.0] * len(candidates)
    best: ReadAnswer | None = None
    for (i, span), match in zip(candidates, matches, strict=True):
        confidence = calibration.confidence(retrieval_scores[i], span.margin, match)
        if best is None or confidence > best.confidence:
            best = ReadAnswer(i, span, answer_text(question, contexts[i], span), confidence, match)
    return best


class ReaderBackend:
    """A span reader behind its own token-budgeted batcher; the weights load at :meth:`start`.

    Args:
        config: Which reader and how it reads.
        batching: Batcher knobs (``[batching.reader]``); a request costs its estimated tokens.
        observer: Batch metrics.
        version: The registry version it comes from (reported), if any.
    """

    def __init__(
        self,
        config: ReaderConfig,
        batching: BatcherConfig,
        *,
        observer: BatchObserver | None = None,
        version: str | None = None,
    ) -> None:
        self.config = config
        self.version = version
        self._batching = batching
        self._observer = observer
        self._reader: SpanReader | None = None
        self._batcher: DynamicBatcher[ReadRequest, Span | None] | None = None
        self._lock = asyncio.Lock()
        self._load_lock = threading.Lock()
        self.calibration = ReaderCalibration()

    def _load(self) -> SpanReader:
        with self._load_lock:
            if self._reader is None:
                self._reader = SpanReader(self.config)
            return self._reader

    async def start(self) -> None:
        """Load the reader (in a thread), read its calibration and start the batcher; safe to call again."""
        async with self._lock:
            if self._batcher is not None:
                return
            try:
                reader = await asyncio.to_thread(self._load)
            except Exception as exc:
                logger.exception("reader_load_failed")
                raise BackendUnavailableError("reader", f"the reader could not load ({type(exc).__name__})") from exc
            calibration = ReaderCalibration.from_card(reader.card)  # the card the reader loaded with
            if self.config.min_confidence >= 0:  # the operator's threshold over the one fitted with the card
                calibration = replace(calibration, min_confidence=self.config.min_confidence)
            self.calibration = calibration
            batcher: DynamicBatcher[ReadRequest, Span | None] = DynamicBatcher(
                "reader",
                reader.read,
                self._batching,
                cost=reader.cost,
                observer=self._observer,
                thread_init=reader.use_threads,
            )
            batcher.start()
            self._batcher = batcher

    async def stop(self) -> None:
        """Drain and stop the batcher."""
        if self._batcher is not None:
            await self._batcher.stop()
            self._batcher = None

    def describe(self) -> dict[str, Any]:
        """The reader's identity, whether it reads packed, and its registry version (``loaded: false`` unstarted)."""
        if self._reader is None:
            return {"name": self.config.name, "loaded": False}
        info = self._reader.info
        return {**info.identity(), "packed": info.packed, "registry_version": self.version, "loaded": True}

    async def read(self, requests: Sequence[ReadRequest], request_id: str) -> list[Span | None]:
        """The best span of each pair, read through the batcher (pairs of one request go in together)."""
        await self.start()
        assert self._batcher is not None
        return list(await asyncio.gather(*(self._batcher.submit(r, request_id) for r in requests)))
