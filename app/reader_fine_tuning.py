"""Training a reader further on a shop's own questions, cross-fitted by document (``reader-calibration --fine-tune``).

For each fold a copy of the reader is trained further on the other folds' questions (each over its supporting
passage, some also over an answer-free passage) and reads its own fold, so every question is read by a reader that
never trained on its document; the confidence is then cross-fitted on those reads (:mod:`app.reader_calibration`).
The version registered is the reader trained on every question, with the confidence fitted on the out-of-fold reads
(a reader's margins on its own training questions run high).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.reader_calibration import RESAMPLES, QuestionRead, fold_of, group_of, read_questions
from app.settings import Settings
from evals.answer_metrics import f1, holds_answer
from evals.datasets import load_domain_pack
from evals.qa_data import Passage, QAExample, pack_passages
from evals.stats import bootstrap_mean_ci, rng_for
from retrieval.answers.reading import answer_text
from retrieval.encoder import Encoder
from retrieval.reader import ReadRequest, SpanReader
from retrieval.reader_training import ReaderTrainConfig, SpanExample, train_reader


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
