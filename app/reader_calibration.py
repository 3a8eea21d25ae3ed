"""Re-fitting a reader's answer confidence on a shop's own questions: what ``candor train reader-calibration`` runs.

A reader's confidence is fitted where it was trained (SQuAD's calibration articles). Retrieval scores and reader
margins are distributed differently on a help centre's questions, so that fit can decline many questions it answers
well (docs/answers.md). Here every question of a pack's ``eval/qa.jsonl`` is answered as the service answers it:
its passages retrieved by the served encoder over the pack (knowledge-base chunks and items, instruction-like
passages left out), each read by the reader. Every passage's span is one calibration example, ``(retrieval score,
margin, sentence match)`` against whether the answer it gives (the span, or its sentence for a question that wants
one) is right: it holds a gold answer or reaches token F1 0.5 with one, and comes from a supporting document (no
answer to an unanswerable question is right).

**Answer-removed probes**: each answerable question is asked again with every sentence that holds its answer cut
from its passages (a passage the answer cannot be cut from is left out), so its passages still read as on topic but
cannot answer it. How many of them are declined is always reported; by default they are also unanswerable
questions in the fit (none of their spans is right) and in the abstention target, so the threshold is set against
near misses and not only against questions about something else (a weather forecast), which any threshold
declines. A probe stays in its question's fold.

The figures are **cross-fitted by document**: questions are grouped by their supporting document (an
unanswerable question is its own group), the groups are dealt into folds, and each fold's questions are answered
with a calibration fitted on the other folds only, so no figure comes from a fit that saw its question or its
article. The calibration the new version serves is then fitted on every question. The reader's previous
calibration is reported beside it on the same questions.

With ``--fine-tune`` the weights are adapted to the shop too (:mod:`app.reader_fine_tuning`), and the confidence is
cross-fitted on the reads of the readers trained out of fold.
"""

from __future__ import annotations

import getpass
import hashlib
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.compliance import code_version
from app.models import pinned_engine_config
from app.settings import Settings
from evals.answer_cases import holds_answer as contains_answer
from evals.answer_cases import without_answer
from evals.answer_metrics import f1, holds_answer
from evals.datasets import load_domain_pack
from evals.qa_data import Passage, QAExample, load_pack_qa
from evals.stats import bootstrap_mean_ci, rng_for
from retrieval.answers.reading import (
    Candidate,
    ReaderCalibration,
    answer_text,
    candidate_sentences,
    choose_span,
    fit_calibration,
    sentence_matches,
    span_candidates,
)
from retrieval.answers.service import context_passages
from retrieval.digest import tree_sha256
from retrieval.encoder import Encoder
from retrieval.engine import RetrievalEngine
from retrieval.reader import ReadRequest, Span, SpanReader, read_card
from retrieval.reader_training import update_card
from retrieval.registry import ModelRegistry, ModelVersion

RIGHT_F1 = 0.5
"""An answer is right when it holds a gold answer, or reaches this token F1 against one (as SQuAD's calibration)."""
RESAMPLES = 1000


@dataclass(slots=True)
class QuestionRead:
    """One question as the service would read it: its passages and the reader's span in each.

    Attributes:
        example: The question, its gold answers and supporting documents.
        group: The fold group (first supporting document, or the question id when it has none).
        doc_ids: Each passage's document or item id.
        contexts: Each passage's text.
        scores: Each passage's retrieval score.
        spans: The reader's best span in each passage (``None``: no span).
        top_score: The best retrieval score (the service abstains below ``min_retrieval_score``).
        matches: How well the sentence around each candidate span (the best span of each sentence,
            :func:`~retrieval.answers.reading.span_candidates`) matches the question
            (:func:`~retrieval.answers.reading.sentence_matches`); empty: not scored (0 for every candidate).
        probe: An answer-removed probe (:func:`answer_removed`), not one of the pack's questions.
    """

    example: QAExample
    group: str
    doc_ids: list[str]
    contexts: list[str]
    scores: list[float]
    spans: list[Span | None]
    top_score: float = 0.0
    matches: list[float] = field(default_factory=list)
    probe: bool = False

    def sentence_matches(self, calibration: ReaderCalibration) -> list[float] | None:
        """The candidates' sentence matches for a calibration that uses them (``None`` for one that does not)."""
        return self._matches(span_candidates(self.spans, by_sentence=True)) if calibration.uses_sentences else None

    def _matches(self, candidates: Sequence[Candidate]) -> list[float]:
        return self.matches or [0.0] * len(candidates)

    def labels(self) -> list[tuple[float, float, float, float]]:
        """``(retrieval score, margin, sentence match, right)`` of every candidate span (by sentence)."""
        golds = self.example.answers
        candidates = span_candidates(self.spans, by_sentence=True)
        out = []
        for (i, span), match in zip(candidates, self._matches(candidates), strict=True):
            doc = self.doc_ids[i]
            supported = not self.example.supporting_ids or doc in self.example.supporting_ids
            text = answer_text(self.example.question, self.contexts[i], span)
            said = holds_answer(text, golds) or f1(text, golds) >= RIGHT_F1
            out.append((self.scores[i], span.margin, match, float(self.example.answerable and supported and said)))
        return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the service would have answered to one question under one calibration."""

    answerable: bool
    answered: bool
    holds_answer: bool
    right_document: bool
    probe: bool = False


@dataclass(slots=True)
class CalibrationReport:
    """The re-fitted calibration and what it does on questions it was not fitted on.

    Attributes:
        calibration: Fitted on every question (what the new version serves).
        figures: ``{"cross_fitted" | "previous": {metric: {"value", "ci", "n"}}}``.
        questions: Questions read.
        examples: Spans the calibration was fitted on (right ones counted in ``right``).
        right: Right spans among them.
        folds: Folds of the cross-fitting.
        skipped_folds: Folds whose other folds held only right or only wrong spans (answered with the previous
            calibration, and counted).
    """

    calibration: ReaderCalibration
    figures: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    questions: int = 0
    examples: int = 0
    right: int = 0
    folds: int = 0
    skipped_folds: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The card's ``recalibration`` section."""
        return {
            "method": (
                "logistic fit of (retrieval score, margin, sentence match) per read passage; figures cross-fitted by "
                "document"
            ),
            "questions": self.questions,
            "examples": self.examples,
            "right": self.right,
            "folds": self.folds,
            "skipped_folds": self.skipped_folds,
            "figures": self.figures,
        }


def group_of(example: QAExample) -> str:
    """The fold group of a question: its first supporting document, or its own id when no document answers it."""
    return next(iter(sorted(example.supporting_ids)), "") or example.id


def fold_of(group: str, folds: int, seed: int) -> int:
    """The fold a question group falls in (a hash of its name: stable, and independent of the other groups)."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def outcome(read: QuestionRead, calibration: ReaderCalibration, min_retrieval_score: float) -> Outcome:
    """The service's decision for one question: the most confident span, or an abstention."""
    example = read.example
    answerable = example.answerable
    if not read.contexts or read.top_score < min_retrieval_score:
        return Outcome(answerable, False, False, False, read.probe)
    best = choose_span(
        example.question, read.contexts, read.scores, read.spans, calibration, read.sentence_matches(calibration)
    )
    if best is None or best.confidence < calibration.min_confidence:
        return Outcome(answerable, False, False, False, read.probe)
    holds = answerable and bool(holds_answer(best.text, example.answers))
    right_doc = answerable and read.doc_ids[best.passage] in example.supporting_ids
    return Outcome(answerable, True, holds, right_doc, read.probe)


def summarise(outcomes: Sequence[Outcome], seed: int, label: str) -> dict[str, dict[str, Any]]:
    """Per-question means with 95% bootstrap intervals: the pack-question figures of docs/answers.md."""
    answerable = [o for o in outcomes if o.answerable]
    unanswerable = [o for o in outcomes if not o.answerable and not o.probe]
    columns = {
        "holds_answer": [float(o.holds_answer) for o in answerable],
        "right_document": [float(o.right_document) for o in answerable],
        "false_abstention": [float(not o.answered) for o in answerable],
        "abstention_accuracy": [float(not o.answered) for o in unanswerable],
        "probe_abstention": [float(not o.answered) for o in outcomes if o.probe],
    }
    out: dict[str, dict[str, Any]] = {}
    for name, values in columns.items():
        if not values:
            continue
        array = np.asarray(values)
        ci = bootstrap_mean_ci(array, rng_for(seed, "recalibration", label, name), RESAMPLES)
        out[name] = {
            "value": round(float(array.mean()), 4),
            "ci": [round(c, 4) for c in ci] if ci else None,
            "n": len(values),
        }
    return out


def fit(
    reads: Sequence[QuestionRead], min_confidence: float, fitted_on: str, abstention_target: float = 0.0
) -> ReaderCalibration:
    """A calibration fitted on every span of ``reads``.

    Args:
        reads: The questions to fit on.
        min_confidence: The threshold (unless ``abstention_target`` chooses it).
        fitted_on: What the calibration says it was fitted on.
        abstention_target: When above 0, the threshold is instead chosen to decline at least this share of
            ``reads``' unanswerable questions (an operating point on data, not a guess): midway between the last
            of them it must decline and the next more confident question of ``reads``, so that rounding (int8,
            packed reading) does not carry a question across it.

    Raises:
        ValueError: No spans, only right (or only wrong) ones, or a target with no unanswerable question.
    """
    rows = [row for read in reads for row in read.labels()]
    if not rows:
        raise ValueError("no question gave a span to fit on")
    data = np.asarray(rows)
    weights, bias = fit_calibration(data[:, :3], data[:, 3])
    calibration = ReaderCalibration(weights, bias, min_confidence, fitted_on)
    if abstention_target <= 0:
        return calibration
    free = [read for read in reads if not read.example.answerable]
    if not free:
        raise ValueError("an abstention target needs questions that no document answers")

    def confidence(read: QuestionRead) -> float:
        best = choose_span(
            read.example.question,
            read.contexts,
            read.scores,
            read.spans,
            calibration,
            read.sentence_matches(calibration),
        )
        return best.confidence if best is not None else 0.0

    needed = math.ceil(abstention_target * len(free) - 1e-9)  # questions that must fall below the threshold
    if not needed:
        return replace(calibration, min_confidence=0.0)
    edge = sorted(confidence(read) for read in free)[needed - 1]
    above = [c for c in (confidence(read) for read in reads) if c > edge]
    threshold = (edge + min(above)) / 2 if above else math.nextafter(edge, 1.0)
    return replace(calibration, min_confidence=min(1.0, threshold))


def recalibrate(
    reads: Sequence[QuestionRead],
    previous: ReaderCalibration,
    *,
    folds: int = 5,
    seed: int = 13,
    min_confidence: float = 0.5,
    abstention_target: float = 0.0,
    min_retrieval_score: float = 0.0,
    fitted_on: str = "",
    previous_reads: Sequence[QuestionRead] | None = None,
    fit_probes: bool = True,
) -> CalibrationReport:
    """Fit a calibration on the questions, with figures cross-fitted by document beside the previous calibration.

    Args:
        reads: Every question, read as the service reads it.
        previous: The reader's calibration so far (reported on the same questions).
        folds: Folds of the cross-fitting (at least 2).
        seed: Seed of the deal into folds and of the bootstrap.
        min_confidence: Threshold of the new calibration.
        abstention_target: Instead, choose each fit's threshold as the lowest that declines this share of the
            unanswerable questions it was fitted on (0: use ``min_confidence``).
        min_retrieval_score: The service's own retrieval threshold (below it, it abstains before reading).
        fitted_on: What the new calibration says it was fitted on.
        previous_reads: The questions as the previous reader read them, when ``reads`` come from other weights
            (the previous figures are that reader's; default: ``reads``).
        fit_probes: Fit on the answer-removed probes among ``reads`` too (they are reported either way).

    Raises:
        ValueError: Fewer than two folds, or the questions give only right (or only wrong) spans.
    """
    if folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    fitting = [read for read in reads if fit_probes or not read.probe]
    calibration = fit(fitting, min_confidence, fitted_on, abstention_target)
    fold = [fold_of(read.group, folds, seed) for read in reads]
    held_out: list[Outcome] = []
    skipped = 0
    for k in range(folds):
        inside = [read for read, f in zip(reads, fold, strict=True) if f == k]
        if not inside:
            continue
        try:
            others = [read for read, f in zip(reads, fold, strict=True) if f != k and (fit_probes or not read.probe)]
            fitted = fit(others, min_confidence, "", abstention_target)
        except ValueError:  # the other folds cannot be fitted on (one class only): this fold keeps the previous one
            skipped += 1
            fitted = previous
        held_out.extend(outcome(read, fitted, min_retrieval_score) for read in inside)
    rows = [row for read in fitting for row in read.labels()]
    return CalibrationReport(
        calibration,
        {
            "cross_fitted": summarise(held_out, seed, "cross_fitted"),
            "previous": summarise(
                [outcome(r, previous, min_retrieval_score) for r in previous_reads or reads], seed, "previous"
            ),
        },
        questions=len(fitting),
        examples=len(rows),
        right=int(sum(row[-1] for row in rows)),
        folds=folds,
        skipped_folds=skipped,
    )


def pack_questions(pack: Path) -> list[QAExample]:
    """The pack's ``eval/qa.jsonl`` questions.

    Raises:
        ValueError: The pack has no question file.
    """
    qa_path = pack / "eval" / "qa.jsonl"
    if not qa_path.is_file():
        raise ValueError(f"{qa_path} is not there: the pack has no questions to calibrate on")
    return load_pack_qa(qa_path, load_domain_pack(pack))


async def retrieve_pack(
    settings: Settings, examples: Sequence[QAExample], *, progress: bool = False
) -> list[QuestionRead]:
    """Retrieve every question's passages as the service does (served encoder, ``[answers] k_context`` passages).

    The engine runs on the settings' pack in a state folder of its own under the state folder, so a running
    service's state is not touched. The questions come back unread (no spans): see :func:`read_questions`.
    """
    _, config = pinned_engine_config(settings, show_progress=progress)
    engine = RetrievalEngine(replace(config, state_dir=settings.state_dir / "calibration"))
    k = settings.answers.k_context
    out: list[QuestionRead] = []
    await engine.start()
    try:
        for example in examples:
            _, retrieved = await engine.retrieve_passages(example.question, k, spare=k)
            kept, _ = context_passages(retrieved, k)
            top = kept[0].score if kept else 0.0
            doc_ids, texts, scores = [p.doc_id for p in kept], [p.text for p in kept], [p.score for p in kept]
            out.append(QuestionRead(example, group_of(example), doc_ids, texts, scores, [], top))
    finally:
        await engine.stop()
    return out


def answer_removed(retrieved: Sequence[QuestionRead]) -> list[QuestionRead]:
    """An answer-removed probe of every answerable question (see the module docstring), unread.

    A passage that holds a gold answer, or is a supporting document, loses every sentence that holds one; a passage
    left empty, or one the answer cannot be found in to cut (so it may still answer), is left out. A question with
    no passage left gives no probe. The passages keep their retrieval scores (those of the whole passages: a probe is,
    if anything, easier to answer than a real near miss). The probe keeps its question's supporting documents,
    only so that it falls in its question's fold; being unanswerable, none of its spans is right.
    """
    out = []
    for question in retrieved:
        example = question.example
        if not example.answerable or question.probe:
            continue
        kept: list[tuple[str, str, float]] = []
        for doc_id, text, score in zip(question.doc_ids, question.contexts, question.scores, strict=True):
            if doc_id in example.supporting_ids or contains_answer(text, example.answers):
                cut = without_answer(Passage(doc_id, text), example.answers)  # cuts what contains_answer finds
                if cut is None or cut.text == text:
                    continue
                text = cut.text
            kept.append((doc_id, text, score))
        if not kept:
            continue
        probe = replace(example, id=f"{example.id}#removed", answers=(), answerable=False, answer_starts=())
        doc_ids, texts, scores = (list(column) for column in zip(*kept, strict=True))
        out.append(QuestionRead(probe, question.group, doc_ids, texts, scores, [], max(scores), probe=True))
    return out


def read_questions(reader: SpanReader, retrieved: Sequence[QuestionRead], encoder: Encoder) -> list[QuestionRead]:
    """The retrieved questions, each of its passages read by ``reader`` (the same passages whatever the reader).

    The sentence match of each span is scored by ``encoder`` (the served one, as the service scores it).
    """
    reads = []
    for question in retrieved:
        text = question.example.question
        requests = [ReadRequest(text, context) for context in question.contexts]
        spans = list(reader.read(requests)) if requests else []
        sentences = candidate_sentences(question.contexts, span_candidates(spans, by_sentence=True))
        vectors = encoder.encode([text, *sentences])
        matches = sentence_matches(text, vectors[0], sentences, vectors[1:])
        reads.append(replace(question, spans=spans, matches=matches))
    return reads


def register_recalibrated(
    registry: ModelRegistry | None,
    source: Path,
    parent: ModelVersion | None,
    pack: Path,
    report: CalibrationReport,
    *,
    out: Path | None = None,
    fine_tuned: Path | None = None,
    fine_tuning: dict[str, Any] | None = None,
) -> tuple[Path, ModelVersion | None]:
    """A copy of the reader with the new calibration in its card, registered as a new version (its parent's child).

    Args:
        registry: Where to register it (``None``: only write the folder).
        source: The reader's folder (left as it is: versions are immutable).
        parent: The version it came from (``None`` when a folder was given).
        pack: The pack it was calibrated on.
        report: The fitted calibration and its cross-fitted figures.
        out: Where to write the copy (default: a new temporary folder).
        fine_tuned: The weights to register instead of ``source``'s: ``source`` trained further on the pack.
        fine_tuning: How they were trained (kept in the card), with ``fine_tuned``.
    """
    folder = out or Path(tempfile.mkdtemp(prefix="candor-reader-")) / "model"
    shutil.copytree(fine_tuned or source, folder, dirs_exist_ok=True)
    sections: dict[str, Any] = {"calibration": report.calibration.to_dict(), "recalibration": report.to_dict()}
    if fine_tuned is not None:
        sections["fine_tuning"] = {**(fine_tuning or {}), "base": parent.ref if parent else str(source)}
    update_card(folder, **sections)
    if registry is None:
        return folder, None
    # Fine-tuned weights carry their own card (the parent's held-out figures are not theirs).
    base_card = read_card(folder) if fine_tuned is not None else (registry.card(parent) if parent else {})
    card: dict[str, Any] = {**dict(base_card), **sections}
    files = [pack / "eval" / "qa.jsonl"]
    params: dict[str, Any] = {**dict(parent.params if parent else {}), "recalibrated_on": f"pack:{pack}"}
    params["folds"] = report.folds
    if fine_tuned is not None:
        params["fine_tuned_on"] = f"pack:{pack}"
    # trained_on stays the parent's: gated promotion evaluates a reader on that source's held-out articles, which
    # the pack's questions never touched.
    tags = {"fine_tuned_on": f"pack:{pack}"} if fine_tuned is not None else {}
    version = registry.register(
        "reader",
        folder,
        params=params,
        metrics={
            f"pack_{label}_{name}": figure["value"]
            for label, figures in report.figures.items()
            for name, figure in figures.items()
        },
        tags={
            "data_hash": tree_sha256(pack, files, length=16),
            "trained_on": parent.tags.get("trained_on", "") if parent else str(source),
            **tags,
            "calibrated_on": f"pack:{pack}",
            "code_version": code_version()[0],
            "parent": parent.ref if parent else str(source),
            "description": (
                "the parent's weights trained further on the pack's questions, its confidence re-fitted there"
                if fine_tuned is not None
                else "the parent's weights with its confidence re-fitted on the pack's questions"
            ),
            "trained_by": getpass.getuser(),
        },
        card=card,
    )
    return folder, version
