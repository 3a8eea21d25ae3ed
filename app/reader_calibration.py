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

With ``--fine-tune`` the weights are adapted to the shop too: for each fold a copy of the reader is trained further
on the other folds' questions (each over its supporting passage, some also over an answer-free passage) and reads
its own fold, so every question is read by a reader that never trained on its document; the confidence is then
cross-fitted on those reads as above. The version registered is the reader trained on every question, with the
confidence fitted on the out-of-fold reads (a reader's margins on its own training questions run high).
"""

from __future__ import annotations

import getpass
import hashlib
import math
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
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
from evals.qa_data import Passage, QAExample, load_pack_qa, pack_passages
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
from retrieval.reader_training import ReaderTrainConfig, SpanExample, train_reader, update_card
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


def fold_training_examples(
    examples: Sequence[QAExample],
    passages: Mapping[str, Passage],
    keep: Sequence[bool],
    *,
    negatives: float = 0.2,
    seed: int = 13,
) -> list[SpanExample]:
    """Span examples of the kept answerable questions, each over its supporting passage.

    Args:
        examples: The pack's questions.
        passages: The pack's passages by id.
        keep: Which questions to train on (the other folds').
        negatives: Share of them also shown over an answer-free passage, as "no answer".
        seed: Seed of the negatives' draw.
    """
    from app.training_reader import answer_at, free_passage

    rng = random.Random(seed)  # noqa: S311 - sampling, not secrets
    pool = list(passages.values())
    out: list[SpanExample] = []
    for example, kept in zip(examples, keep, strict=True):
        if not kept or not example.answerable:
            continue
        own = example.context_id or group_of(example)
        passage = passages.get(own)
        located = answer_at(passage.text, example.answers, example.answer_starts) if passage else None
        if passage is None or located is None:
            continue
        out.append(SpanExample(example.id, example.question, passage.text, located[0], located[1], own))
        if rng.random() < negatives:
            free = free_passage(example, pool, rng, own)
            if free is not None:
                out.append(SpanExample(f"{example.id}~no-answer", example.question, free.text, -1, "", own))
    return out


@dataclass(slots=True)
class FineTuned:
    """A reader trained further on a pack's questions.

    Attributes:
        reads: Every question, read by a copy trained on the other folds only.
        folder: The reader trained on every question (a new temporary folder).
        examples: Span examples it was trained on.
        gold: The reader alone, each answerable question read over its own supporting passage: ``{"previous" |
            "fine_tuned": {metric: {"value", "ci", "n"}}}`` (``holds_answer``, ``f1``), the fine-tuned figures
            out of fold.
    """

    reads: list[QuestionRead]
    folder: Path
    examples: int
    gold: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def _gold_reads(
    reader: SpanReader, examples: Sequence[QAExample], passages: Mapping[str, Passage]
) -> dict[str, tuple[float, float]]:
    """``(holds_answer, f1)`` of the reader's answer over each answerable question's own passage, by question id."""
    pairs = [
        (e, passages[e.context_id or group_of(e)].text)
        for e in examples
        if e.answerable and (e.context_id or group_of(e)) in passages
    ]
    spans = reader.read([ReadRequest(e.question, context) for e, context in pairs]) if pairs else []
    out = {}
    for (example, context), span in zip(pairs, spans, strict=True):
        text = answer_text(example.question, context, span) if span is not None else ""
        out[example.id] = (float(holds_answer(text, example.answers)), f1(text, example.answers))
    return out


def _gold_figures(scores: Mapping[str, tuple[float, float]], seed: int, label: str) -> dict[str, dict[str, Any]]:
    ids = sorted(scores)
    out: dict[str, dict[str, Any]] = {}
    for column, name in enumerate(("holds_answer", "f1")):
        values = np.asarray([scores[i][column] for i in ids])
        ci = bootstrap_mean_ci(values, rng_for(seed, "gold", label, name), RESAMPLES) if len(values) else None
        out[name] = {
            "value": round(float(values.mean()), 4) if len(values) else 0.0,
            "ci": [round(c, 4) for c in ci] if ci else None,
            "n": len(values),
        }
    return out


def fine_tune(
    settings: Settings,
    base: SpanReader,
    retrieved: Sequence[QuestionRead],
    encoder: Encoder,
    config: ReaderTrainConfig,
    *,
    folds: int = 5,
    seed: int = 13,
    negatives: float = 0.2,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> FineTuned:
    """Train ``base`` further on the pack's questions, cross-fitted by document (see the module docstring).

    Args:
        settings: Where the pack is, and how readers read (``[reader]``).
        base: The reader to train further, loaded (it also reads the supporting passages before training).
        retrieved: The pack's questions with their passages (:func:`retrieve_pack`).
        encoder: Scores the sentence matches (:func:`read_questions`).
        config: How to train.
        folds: Folds of the cross-fitting (the same deal as the confidence's, for the same seed).
        seed: Seed of the deal, of training and of the "no answer" draws.
        negatives: Share of training questions also shown over an answer-free passage.
        progress: Draw progress bars.
        say: Where one-line status messages go.

    Raises:
        ValueError: A fold leaves nothing to train on.
    """
    examples = [question.example for question in retrieved]
    passages = pack_passages(load_domain_pack(settings.pack_path))
    fold = [fold_of(group_of(e), folds, seed) for e in examples]
    reads: dict[int, QuestionRead] = {}
    previous = _gold_reads(base, examples, passages)
    folder = Path(base.info.path)
    tuned: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="candor-reader-folds-") as work:
        for k in range(folds):
            inside = [i for i, f in enumerate(fold) if f == k]
            if not inside:
                continue
            train = fold_training_examples(
                examples, passages, [f != k for f in fold], negatives=negatives, seed=seed + k
            )
            say(f"fold {k + 1}/{folds}: training on {len(train)} examples, reading {len(inside)} questions")
            copy = Path(work) / f"fold-{k}"
            train_reader(train, folder, copy, config, progress=progress, say=lambda line: None)
            reader = SpanReader(settings.reader.to_config(str(copy)))
            reads.update(zip(inside, read_questions(reader, [retrieved[i] for i in inside], encoder), strict=True))
            tuned.update(_gold_reads(reader, [examples[i] for i in inside], passages))
            shutil.rmtree(copy)
    train = fold_training_examples(examples, passages, [True] * len(examples), negatives=negatives, seed=seed)
    say(f"training on every question: {len(train)} examples")
    out = Path(tempfile.mkdtemp(prefix="candor-reader-")) / "model"
    trained_on = {"source": f"pack:{settings.pack_path}", "base": str(folder), "questions": len(examples)}
    train_reader(train, folder, out, config, trained_on=trained_on, progress=progress, say=lambda line: None)
    gold = {"previous": _gold_figures(previous, seed, "previous"), "fine_tuned": _gold_figures(tuned, seed, "tuned")}
    return FineTuned([reads[i] for i in range(len(examples))], out, len(train), gold)


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
