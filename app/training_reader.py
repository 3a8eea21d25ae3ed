"""Training a span reader: what ``candor train reader`` runs.

Questions come from a SQuAD v1.1 file or a domain pack's ``eval/qa.jsonl``, and are split **by article** (SQuAD) or
by supporting document (packs), never by question, with :func:`retrieval.reader_training.article_fold`: the reader
trains on the ``train`` articles, its confidence is fitted on the ``calibration`` articles, and it is evaluated on
the ``test`` articles it never saw, by the offline evaluation harness (the ``answers`` task with ``articles =
"test"``), beside the extractive backend without a reader and the word-overlap baseline on the same questions.

Training examples are the questions with their own passage, plus, for a share of them (``negatives``), the same
question with another passage of its article that does not hold the answer, labelled "no answer": that is what
teaches the reader's "no answer" score, which abstention rests on.
"""

from __future__ import annotations

import getpass
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.cli_eval import service_answer_backends, service_pack_retrieval
from app.compliance import code_version
from app.settings import Settings
from evals.answer_metrics import f1
from evals.answers import available_backends
from evals.datasets import load_domain_pack
from evals.qa_data import Passage, QAExample, load_pack_qa, load_squad, pack_passages
from evals.results import MetricRecord
from evals.runner import RunOptions, RunSummary, run_suite
from evals.suite import AnswerSpec, AnswerTask, GateSpec, LoadedSuite, Suite, SuiteMeta, SystemSpec
from retrieval.answers.reading import (
    ReaderCalibration,
    candidate_sentences,
    fit_calibration,
    sentence_matches,
    span_candidates,
)
from retrieval.digest import tree_sha256
from retrieval.encoder import Encoder, bundled_model_path
from retrieval.reader import Precision, ReaderConfig, ReadRequest, SpanReader
from retrieval.reader_training import (
    Fold,
    ReaderTrainConfig,
    ReaderTrainReport,
    SpanExample,
    article_fold,
    train_reader,
    update_card,
)
from retrieval.registry import ModelRegistry, ModelVersion

SourceFormat = Literal["squad", "pack"]
HELD_OUT_TASK = "heldout"
HELD_OUT_CONCURRENCY = 16
"""Held-out questions answered at once (through the reader's batcher): the same answers, several times faster."""
REPORTED = ("em", "f1", "holds_answer", "abstention_recall", "abstention_precision", "citation_precision")


@dataclass(slots=True)
class ReaderSource:
    """Questions to train a reader on, fit its confidence on and hold out, split by article.

    Attributes:
        name: How the source is named in the registry (``squad:<file>``, ``pack:<folder>``).
        path: The file or folder read.
        format: ``squad`` or ``pack``.
        salt: The article split's salt.
        files: Files read (hashed into the registry's data hash).
        train: Training examples (with "no answer" negatives).
        calibration: Calibration-fold questions with their own passage, and one answer-free passage each.
        golds: Every gold answer of each question id (calibration labels use them all).
        articles: Article (or document) names per fold.
        titles: Passage titles by example id, for the retrieval score the service would compute.
        held_out: Questions of the test articles (evaluated, never trained or calibrated on).
    """

    name: str
    path: Path
    format: SourceFormat
    salt: str
    files: list[Path]
    train: list[SpanExample] = field(default_factory=list)
    calibration: list[SpanExample] = field(default_factory=list)
    golds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    articles: dict[Fold, list[str]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    held_out: int = 0

    @property
    def digest(self) -> str:
        """SHA-256 over the files read."""
        root = self.path if self.path.is_dir() else self.path.parent
        return tree_sha256(root, self.files, length=16)


def answer_at(context: str, answers: Sequence[str], starts: Sequence[int]) -> tuple[int, str] | None:
    """Where the first locatable gold answer is in the passage (the file's offset, else a case-blind search)."""
    for i, answer in enumerate(answers):
        at = starts[i] if i < len(starts) else -1
        if at >= 0 and context[at : at + len(answer)] == answer:
            return at, answer
        found = context.lower().find(answer.lower())
        if found >= 0:
            return found, context[found : found + len(answer)]
    return None


def free_passage(
    example: QAExample, same_group: Sequence[Passage], rng: random.Random, exclude: str | None
) -> Passage | None:
    """A passage of the question's own article that holds none of its answers (a hard "no answer" case)."""
    lowered = [a.lower() for a in example.answers]
    free = [p for p in same_group if p.id != exclude and not any(a in p.text.lower() for a in lowered)]
    return rng.choice(free) if free else None


def load_reader_source(
    squad: Path | None,
    pack: Path | None,
    *,
    salt: str = "",
    negatives: float = 0.2,
    seed: int = 13,
    max_train: int = 0,
) -> ReaderSource:
    """Read questions and split them by article into training, calibration and (counted) held-out questions.

    Args:
        squad: A SQuAD v1.1 file (or its folder).
        pack: A domain pack folder instead.
        salt: Changes the article split.
        negatives: Share of training questions that also appear with an answer-free passage of their article.
        seed: Seed of the negatives' draw.
        max_train: Train on a seeded sample of this many training examples (0: all; for quick trials).

    Raises:
        ValueError: Neither or both sources given, or nothing to train on.
    """
    if (squad is None) == (pack is None):
        raise ValueError("give --squad FILE or --pack FOLDER")
    rng = random.Random(seed)  # noqa: S311 - sampling, not secrets
    if squad is not None:
        data = load_squad(squad)
        examples, passages, groups = data.examples, data.passages, dict(data.passage_group)
        file = data.files[0].resolve()
        source = ReaderSource(f"squad:{file}", file, "squad", salt, [file])
    else:
        assert pack is not None
        folder = pack.resolve()
        loaded = load_domain_pack(folder)
        qa_path = folder / "eval" / "qa.jsonl"
        examples = load_pack_qa(qa_path, loaded)
        passages = pack_passages(loaded)
        groups = {pid: pid for pid in passages}
        source = ReaderSource(f"pack:{folder}", folder, "pack", salt, [qa_path.resolve()])
    by_group: dict[str, list[Passage]] = {}
    for pid, item in passages.items():
        by_group.setdefault(groups.get(pid, pid), []).append(item)
    folds: dict[Fold, set[str]] = {"train": set(), "calibration": set(), "test": set()}
    held_out = 0
    for example in examples:
        own = example.context_id or next(iter(example.supporting_ids), "")
        group = groups.get(own, own or example.id)
        fold = article_fold(group, salt=salt)
        folds[fold].add(group)
        if fold == "test":
            held_out += 1
            continue
        passage = passages.get(own)
        source.golds[example.id] = example.answers
        located = answer_at(passage.text, example.answers, example.answer_starts) if passage else None
        if passage is not None and located is not None and example.answerable:
            at, answer = located
            target = source.train if fold == "train" else source.calibration
            target.append(SpanExample(example.id, example.question, passage.text, at, answer, group))
            source.titles[example.id] = passage.title
        if fold == "train" and rng.random() >= negatives:
            continue
        # A pack's document is a group of one passage: its "no answer" passage then comes from the other documents.
        others = [p for p in by_group.get(group, []) if p.id != own] or list(passages.values())
        free = free_passage(example, others, rng, own)
        if free is not None:
            target = source.train if fold == "train" else source.calibration
            target.append(SpanExample(f"{example.id}~no-answer", example.question, free.text, -1, "", group))
            source.titles[f"{example.id}~no-answer"] = free.title
    source.articles = {fold: sorted(names) for fold, names in folds.items()}
    source.held_out = held_out
    if max_train and len(source.train) > max_train:
        source.train = [source.train[i] for i in sorted(rng.sample(range(len(source.train)), max_train))]
    if not source.train:
        raise ValueError(f"{source.name}: no training question could be located in its passage")
    return source


def calibrate(
    folder: Path,
    source: ReaderSource,
    encoder: Encoder,
    *,
    device: str = "auto",
    precision: Precision = "fp32",
    batch_size: int = 32,
    say: Callable[[str], None] = print,
) -> ReaderCalibration:
    """Fit the reader's confidence on the calibration articles: right spans against wrong ones and answer-free passages.

    An answer is right when its token F1 against the gold answers is at least 0.5; any answer to an answer-free
    passage is wrong. Features are what the service has at answer time: the passage's retrieval score (the
    encoder's cosine of question and passage, titled as the service embeds it), the reader's margin, read in the
    ``precision`` the service will read in (int8 margins differ a little from float32 ones), and how well the
    sentence around the span matches the question (:func:`~retrieval.answers.reading.sentence_matches`). Each
    candidate span (the best span of each sentence, as the service chooses among them) is one example.

    Raises:
        ValueError: The calibration articles hold no questions, or only right (or only wrong) answers.
    """
    cases = source.calibration
    if not cases:
        raise ValueError("the calibration articles hold no questions: train on a larger source or change --split-salt")
    reader = SpanReader(ReaderConfig(path=str(folder), device=device, precision=precision))  # type: ignore[arg-type]
    spans = []
    for at in range(0, len(cases), batch_size):
        spans.extend(reader.read([ReadRequest(c.question, c.context) for c in cases[at : at + batch_size]]))
    texts = [f"{source.titles.get(c.id, '').replace('_', ' ')}. {c.context}" for c in cases]
    questions = encoder.encode([c.question for c in cases])
    passages = encoder.encode(texts)
    scores = np.einsum("ij,ij->i", questions, passages)
    # One example per candidate span (the best span of each sentence, as the service chooses among them); a passage
    # the reader found no span in is one wrong example with a margin far below any span's.
    candidates = [span_candidates([span], by_sentence=True) for span in spans]
    sentences = [candidate_sentences([case.context], found) for case, found in zip(cases, candidates, strict=True)]
    vectors = iter(encoder.encode([s for found in sentences for s in found]))  # one bulk pass over every sentence
    rows: list[tuple[float, float, float, float]] = []
    for case, question, score, found, said in zip(cases, questions, scores, candidates, sentences, strict=True):
        if not found:
            rows.append((float(score), -20.0, 0.0, 0.0))
            continue
        matches = sentence_matches(case.question, question, said, [next(vectors) for _ in said])
        golds = source.golds.get(case.id, (case.answer,))
        for (_, candidate), match in zip(found, matches, strict=True):
            right = case.answer_start >= 0 and f1(candidate.text, golds) >= 0.5
            rows.append((float(score), candidate.margin, match, float(right)))
    data = np.asarray(rows)
    correct = data[:, 3]
    weights, bias = fit_calibration(data[:, :3], correct)
    answerable = sum(1 for c in cases if c.answer_start >= 0)
    fitted_on = (
        f"{source.name}, calibration articles ({len(source.articles.get('calibration', []))}, "
        f"read in {reader.info.precision}): "
        f"{answerable} answers, {len(cases) - answerable} answer-free passages; {len(rows)} candidate spans "
        f"({int(correct.sum())} right)"
    )
    say(
        f"calibration: weights {weights[0]:.3f} (retrieval), {weights[1]:.3f} (margin), "
        f"{weights[2]:.3f} (sentence match), bias {bias:.3f}; {fitted_on}"
    )
    return ReaderCalibration(weights, bias, 0.5, fitted_on)


def held_out_suite(
    source: ReaderSource,
    reader: str,
    *,
    backend: str = "extractive",
    max_questions: int = 1000,
    seed: int = 13,
    gates: Sequence[str] = (),
) -> LoadedSuite:
    """The held-out articles' questions, in the open and gold settings with unanswerable probes, for one system.

    Args:
        source: The data (its file or pack) and the article split.
        reader: The reader folder, or ``none`` (sentence answers).
        backend: The answer backend (``overlap-baseline`` for the word-overlap baseline).
        max_questions: A seeded sample of the held-out questions (0: all).
        seed: Seed of the sample, the probes and the bootstrap.
        gates: Rules the run must pass.
    """
    task = AnswerTask(
        dataset=str(source.path),
        format=source.format,
        max_questions=max_questions,
        articles="test",
        split_salt=source.salt,
        concurrency=HELD_OUT_CONCURRENCY,
    )
    options = {"reader": reader} if backend == "extractive" else {}
    suite = Suite(
        suite=SuiteMeta(
            name=f"reader-{HELD_OUT_TASK}",
            description=f"answers on the held-out articles of {source.name} (never trained or calibrated on)",
            seed=seed,
        ),
        system=SystemSpec(answer=AnswerSpec(backend=backend, options=options)),
        answers={HELD_OUT_TASK: task},
        gates=GateSpec(rules=list(gates)),
    )
    return LoadedSuite(suite, source.path / "<held-out suite>")


def headline(run: RunSummary) -> dict[str, float]:
    """The run's overall answer figures, named ``<setting>_<metric>`` (with ``_ci_low``/``_ci_high``)."""
    out: dict[str, float] = {}
    for metric in run.metrics():
        if metric.group is not None or metric.timing or metric.name not in REPORTED:
            continue
        name = f"{metric.setting or 'all'}_{metric.name}"
        out[name] = metric.value
        if metric.ci_low is not None and metric.ci_high is not None:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = metric.ci_low, metric.ci_high
    return out


def _figures(run: RunSummary | None) -> list[dict[str, Any]]:
    if run is None:
        return []
    return [_row(m) for m in run.metrics() if m.group is None and not m.timing and m.name in REPORTED]


def _row(metric: MetricRecord) -> dict[str, Any]:
    return {
        "setting": metric.setting,
        "metric": metric.name,
        "value": metric.value,
        "ci": [metric.ci_low, metric.ci_high],
        "n": metric.n,
    }


@dataclass(slots=True)
class TrainedReader:
    """A trained reader and what is known about it.

    Attributes:
        folder: The reader's files.
        report: The training run.
        calibration: The confidence fitted on the calibration articles.
        runs: Held-out evaluation runs by system (``reader``, ``sentences``, ``overlap-baseline``).
        version: The registry version (``None`` when not registered).
        metrics: Headline figures (registered with the version).
        seconds: Wall time of everything.
    """

    folder: Path
    report: ReaderTrainReport
    calibration: ReaderCalibration | None = None
    runs: dict[str, RunSummary] = field(default_factory=dict)
    version: ModelVersion | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def base_reader_folder(registry: ModelRegistry | None, base: str) -> tuple[Path, str]:
    """The model to start from: a reader version (number or alias), a folder, or the encoder's own transformer.

    Raises:
        ValueError: ``base`` names a version but there is no registry.
    """
    if not base:
        return bundled_model_path(), "all-MiniLM-L6-v2"
    if Path(base).is_dir():
        return Path(base).resolve(), Path(base).name
    if registry is None:
        raise ValueError(f"--base {base!r}: not a folder, and there is no registry to look a version up in")
    version = registry.get("reader", base)
    return registry.local_path(version), version.ref


def train_reader_model(
    settings: Settings,
    source: ReaderSource,
    *,
    config: ReaderTrainConfig,
    base: Path,
    base_name: str,
    encoder: Encoder,
    registry: ModelRegistry | None,
    out: Path | None = None,
    evaluate: bool = True,
    max_questions: int = 1000,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TrainedReader:
    """Train on the training articles, calibrate on the calibration articles, evaluate on the test articles, register.

    Args:
        settings: The effective settings (the state folder for runs).
        source: The questions, split by article.
        config: Hyper-parameters, seed and device.
        base: The model to start from.
        base_name: How the card names it.
        encoder: The serving encoder (retrieval scores for calibration and the open setting).
        registry: Where to register the version (``None``: do not register).
        out: Where to write the reader (default: a new temporary folder).
        evaluate: Evaluate on the held-out articles beside the sentence extractive backend and the baseline.
        max_questions: Held-out questions evaluated (a seeded sample; 0: all).
        progress: Draw progress bars.
        say: Where progress lines go.
    """
    started = time.perf_counter()
    say(
        f"{source.name}: {len(source.articles['train'])} training articles, "
        f"{len(source.articles['calibration'])} calibration, {len(source.articles['test'])} held out "
        f"({source.held_out} questions)"
    )
    folder = out or Path(tempfile.mkdtemp(prefix="candor-reader-"))
    trained_on = {
        "source": source.name,
        "hash": source.digest,
        "split": {"by": "article" if source.format == "squad" else "supporting document", "salt": source.salt},
        "articles": source.articles,
    }
    report = train_reader(source.train, base, folder, config, trained_on=trained_on, progress=progress, say=say)
    say(f"trained in {report.seconds:.0f}s ({report.steps} steps on {report.device}); weights {report.version}")
    result = TrainedReader(folder, report)
    try:
        result.calibration = calibrate(
            folder, source, encoder, device=config.device, precision=settings.reader.precision, say=say
        )
        update_card(folder, calibration=result.calibration.to_dict())
    except ValueError as exc:  # too few calibration questions, or all right / all wrong: say so, keep defaults
        say(f"not calibrated ({exc}); the reader keeps the uncalibrated default confidence")
        update_card(folder, calibration={"fitted_on": "", "not_calibrated": str(exc)})
    if evaluate:
        backends = available_backends(service_answer_backends(settings))
        options = RunOptions(
            state_dir=settings.state_dir / "evals",
            progress=progress,
            encoder=encoder,
            answer_backends=backends,
            pack_retrieval=service_pack_retrieval(settings),
        )
        for label, backend, reader in (
            ("reader", "extractive", str(folder)),
            ("sentences", "extractive", "none"),
            ("overlap-baseline", "overlap-baseline", "none"),
        ):
            say(f"evaluating {label} on the held-out articles")
            suite = held_out_suite(source, reader, backend=backend, max_questions=max_questions, seed=config.seed)
            result.runs[label] = run_suite(suite, options)
        result.metrics = {
            **{f"heldout_{k}": v for k, v in headline(result.runs["reader"]).items()},
            **{f"sentences_{k}": v for k, v in headline(result.runs["sentences"]).items()},
            **{f"baseline_{k}": v for k, v in headline(result.runs["overlap-baseline"]).items()},
        }
        runs = {label: {"run": str(run.run_dir), "figures": _figures(run)} for label, run in result.runs.items()}
        update_card(folder, evaluation=runs)
    if registry is not None:
        result.version = registry.register(
            "reader",
            folder,
            params={
                **asdict(report.config),
                "examples": report.examples,
                "unanswerable": report.unanswerable,
                "split_salt": source.salt,
            },
            metrics={
                "train_seconds": report.seconds,
                "train_loss_last": float(np.mean(report.losses[-50:])) if report.losses else 0.0,
                **result.metrics,
            },
            tags={
                "data_hash": source.digest,
                "trained_on": source.name,
                "code_version": code_version()[0],
                "parent": report.base_version,
                "parent_name": base_name,
                "eval_run": str(result.runs["reader"].run_dir) if "reader" in result.runs else "",
                "trained_by": getpass.getuser(),
            },
            card=reader_card(source, report, result, base_name),
        )
    result.seconds = time.perf_counter() - started
    return result


def reader_card(
    source: ReaderSource, report: ReaderTrainReport, result: TrainedReader, base_name: str
) -> dict[str, Any]:
    """The model card of a trained reader."""
    return {
        "model": f"candor span reader (a start/end head trained on {base_name})",
        "intended_use": "Picking the shortest passage span that answers a question, for grounded answers over "
        "retrieved passages (English; passages of the kind it was trained on).",
        "not_for": "Questions whose answer is not a span of the passages (yes/no, arithmetic, summaries); decisions "
        "about people; domains far from its training data without re-evaluation.",
        "parent": {"name": base_name, "version": report.base_version, "path": report.base},
        "data": {
            "source": source.name,
            "hash": source.digest,
            "split": "by article (a hash of each article's name), never by question",
            "articles": {fold: len(names) for fold, names in source.articles.items()},
            "training_examples": report.examples,
            "no_answer_examples": report.unanswerable,
            "held_out_questions": source.held_out,
        },
        "training": {
            "config": asdict(report.config),
            "steps": report.steps,
            "seconds": round(report.seconds, 1),
            "device": report.device,
            "parameters": report.parameters,
            "loss": "cross-entropy of the answer's start and end token ([CLS] when the window holds no answer)",
        },
        "calibration": result.calibration.to_dict() if result.calibration else None,
        "metrics": {label: _figures(run) for label, run in result.runs.items()},
        "limitations": [
            "Trained on few thousand questions: figures on the held-out articles are its honest quality, and "
            "they may not carry to other question styles.",
            "The confidence is fitted on one share of articles; abstention on the demo pack's questions is reported "
            "apart, as another domain.",
            "Spans longer than the configured maximum are cut; answers spread across passages are not joined.",
        ],
    }
