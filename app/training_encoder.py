"""Fine-tuning the encoder: what ``candor train encoder`` runs.

Training pairs are (judged query, relevant passage) from a BEIR folder (the queries and qrels of one split) or from
a domain pack (its search judgments, ``eval/queries.jsonl`` + ``eval/qrels.tsv``, with each relevant item's
embedding text as the passage; the pack's documents are not used, as they carry no judged queries). The split's
queries are cut into folds (:mod:`evals.folds`): training uses every fold but the held-out one, and the fine-tuned
and the base encoder are then both evaluated by the offline evaluation harness on the held-out fold only, with
bootstrap intervals and a paired interval of their difference. The result is registered as an ``encoder`` version
with its parameters, figures, data hash, parent model digest and a model card.
"""

from __future__ import annotations

import getpass
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from app.compliance import code_version
from app.settings import Settings
from evals.cache import EmbeddingCache
from evals.compare import DiffRow, compare_runs
from evals.datasets import RetrievalData, load_beir, load_domain_pack, load_pack_retrieval
from evals.folds import DEFAULT_FOLD_SEED, in_fold, out_of_fold
from evals.results import MetricRecord, load_run
from evals.runner import RunOptions, RunSummary, run_suite
from evals.suite import EncoderSpec, LoadedSuite, RetrievalTask, Suite, SuiteMeta, SystemSpec
from retrieval.digest import tree_sha256
from retrieval.encoder import Encoder, bundled_model_path, load_encoder
from retrieval.finetune import FinetuneConfig, FinetuneReport, TrainingPair, finetune, mine_hard_negatives
from retrieval.registry import ModelRegistry, ModelVersion

SourceFormat = Literal["beir", "pack"]
HELD_OUT_TASK = "heldout"
REPORTED = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map")


@dataclass(frozen=True, slots=True)
class PairSource:
    """Judged queries to train on and to hold out.

    Attributes:
        name: How the source is named in the registry (``beir:<folder>:train``, ``pack:<folder>``).
        path: The folder read.
        format: ``beir`` or ``pack``.
        split: The split read (``eval`` for a pack's judgments).
        data: Corpus, queries and judgments of the split.
        folds: Folds the split's queries are cut into (``0``: train on all of them).
        fold: The held-out fold.
        fold_seed: Seed of the fold assignment.
    """

    name: str
    path: Path
    format: SourceFormat
    split: str
    data: RetrievalData
    folds: int
    fold: int
    fold_seed: int = DEFAULT_FOLD_SEED

    @property
    def digest(self) -> str:
        """SHA-256 over the files read (names and bytes)."""
        return tree_sha256(self.path, self.data.files, length=16)

    @property
    def fold_label(self) -> str:
        """``"<fold>/<folds>"``, or ``"none"`` when training uses the whole split."""
        return f"{self.fold}/{self.folds}" if self.folds else "none"

    def train_ids(self) -> list[str]:
        """Query ids training may use: every fold but the held-out one (all of them without folds)."""
        ids = sorted(self.data.queries)
        return out_of_fold(ids, self.folds, self.fold, self.fold_seed) if self.folds else ids

    def held_out_ids(self) -> list[str]:
        """Query ids of the held-out fold (none without folds)."""
        ids = sorted(self.data.queries)
        return in_fold(ids, self.folds, self.fold, self.fold_seed) if self.folds else []

    def pairs(self) -> list[TrainingPair]:
        """One pair per training query and passage judged relevant to it (grade above 0, present in the corpus)."""
        texts = dict(zip(self.data.corpus_ids, self.data.corpus_texts, strict=True))
        out: list[TrainingPair] = []
        for qid in self.train_ids():
            for doc, grade in sorted(self.data.qrels.get(qid, {}).items()):
                if grade > 0 and doc in texts:
                    out.append(TrainingPair(qid, self.data.queries[qid], doc, texts[doc]))
        return out


def load_pair_source(
    *,
    pack: Path | None,
    beir: Path | None,
    split: str,
    folds: int,
    fold: int,
    fold_seed: int = DEFAULT_FOLD_SEED,
) -> PairSource:
    """The judged queries of a BEIR split or of a domain pack, with the held-out fold.

    Raises:
        ValueError: Neither or both sources given, or the fold is out of range.
        EvalError: The data is missing or malformed (``DatasetNotFoundError``, ``DatasetFormatError``).
    """
    if (pack is None) == (beir is None):
        raise ValueError("give --pack or --beir (one of them)")
    if folds == 1 or (folds and not 0 <= fold < folds):
        raise ValueError("--folds must be 0 (train on everything) or at least 2, and --fold below --folds")
    if beir is not None:
        folder = beir.resolve()
        data = load_beir(folder, split)
        return PairSource(f"beir:{folder}:{split}", folder, "beir", split, data, folds, fold, fold_seed)
    assert pack is not None
    folder = pack.resolve()
    data = load_pack_retrieval(folder, load_domain_pack(folder))
    return PairSource(f"pack:{folder}", folder, "pack", "eval", data, folds, fold, fold_seed)


@dataclass(slots=True)
class TrainedEncoder:
    """A fine-tuned encoder and what is known about it.

    Attributes:
        folder: The model's files.
        report: What training did.
        pairs: Training pairs (after mining, with their negatives).
        evaluation: The fine-tuned encoder's held-out run (``None`` when not evaluated).
        baseline: The base encoder's run on the same queries.
        differences: Fine-tuned minus base, per figure, with paired intervals.
        metrics: The figures stored with the version.
        version: The registry version (``None`` when not registered).
        seconds: Wall time of everything (mining, training, evaluations, registration).
    """

    folder: Path
    report: FinetuneReport
    pairs: int
    evaluation: RunSummary | None = None
    baseline: RunSummary | None = None
    differences: list[DiffRow] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    version: ModelVersion | None = None
    seconds: float = 0.0


def held_out_suite(
    settings: Settings,
    source: PairSource,
    folder: Path,
    name: str,
    *,
    seed: int,
    eval_split: str | None = None,
    bootstrap: int = 1000,
) -> LoadedSuite:
    """A suite with one retrieval task: the encoder in ``folder`` on the held-out fold, over an exact index.

    Args:
        settings: The effective settings (``[encoder]`` keys other than the folder and name).
        source: The data and fold.
        folder: The encoder's folder.
        name: How the run names the encoder.
        seed: Seed of the bootstrap.
        eval_split: Evaluate on every query of this BEIR split instead of the held-out fold.
        bootstrap: Bootstrap resamples.
    """
    spec = EncoderSpec(**{**settings.encoder.model_dump(), "path": str(folder), "name": name})
    task = RetrievalTask(
        dataset=str(source.path),
        format=source.format,
        split=eval_split or source.split,
        metrics=list(REPORTED),
        folds=0 if eval_split else source.folds,
        fold=0 if eval_split else source.fold,
        fold_seed=source.fold_seed,
    )
    held = f"split {eval_split}" if eval_split else f"fold {source.fold_label} of {source.split}"
    suite = Suite(
        suite=SuiteMeta(
            name=f"encoder-{HELD_OUT_TASK}",
            description=f"encoder on the held-out queries ({held}) of {source.name}",
            seed=seed,
            bootstrap=bootstrap,
        ),
        system=SystemSpec(encoder=spec),  # the exact (flat) index: the figures measure the encoder alone
        retrieval={HELD_OUT_TASK: task},
    )
    return LoadedSuite(suite, source.path / "<held-out suite>")


def _overall(metrics: Sequence[MetricRecord], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in metrics:
        if metric.group is not None or metric.timing:
            continue
        name = f"{prefix}_{metric.name.replace('@', '_at_')}"
        out[name] = metric.value
        if metric.ci_low is not None and metric.ci_high is not None:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = metric.ci_low, metric.ci_high
    return out


def _differences(rows: Sequence[DiffRow]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        if row.diff is None:
            continue
        name = "delta_" + row.key.rsplit("/", 1)[-1].replace("@", "_at_")
        out[name] = row.diff
        if row.ci_low is not None and row.ci_high is not None:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = row.ci_low, row.ci_high
    return out


def base_folder(settings: Settings, registry: ModelRegistry | None, base: str) -> tuple[Path, str]:
    """The model to start from and its name: a registry version (number or alias), a folder, or ``[encoder]``.

    Raises:
        ValueError: ``base`` names a version but there is no registry, or it is neither a version nor a folder.
    """
    if not base:
        path = settings.encoder_config().path
        return (Path(path) if path else bundled_model_path()), settings.encoder.name
    if Path(base).is_dir():
        return Path(base).resolve(), Path(base).name
    if registry is None:
        raise ValueError(f"--base {base!r}: not a folder, and there is no registry to look a version up in")
    version = registry.get("encoder", base)
    return registry.local_path(version), version.ref


def train_encoder(
    settings: Settings,
    source: PairSource,
    *,
    config: FinetuneConfig,
    base: Path,
    base_name: str,
    hard_negatives: bool,
    registry: ModelRegistry | None,
    out: Path | None = None,
    evaluate: bool = True,
    eval_split: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TrainedEncoder:
    """Fine-tune the encoder on the source's training folds, evaluate it and its base on the held-out fold, register.

    Args:
        settings: The effective settings (``[encoder]`` keys, the state folder for runs and the embedding cache).
        source: The judged queries and the held-out fold.
        config: Hyper-parameters, seed and device.
        base: The model to start from (a sentence-transformers folder).
        base_name: How runs and the card name it.
        hard_negatives: Mine one hard negative per pair with the base model (embeds the corpus once; cached).
        registry: Where to register the version (``None``: do not register).
        out: Where to write the model (default: a new temporary folder).
        evaluate: Evaluate both encoders on the held-out queries (needed for the registry's figures).
        eval_split: Evaluate on every query of this BEIR split instead of the held-out fold.
        progress: Draw progress bars.
        say: Where progress lines go.

    Raises:
        ValueError: Nothing is held out to evaluate on, or there are too few pairs.
    """
    started = time.perf_counter()
    if evaluate and not source.folds and not eval_split:
        raise ValueError("nothing is held out: give --folds N (and --fold), --eval-split, or --no-evaluate")
    if eval_split and (source.format != "beir" or eval_split == source.split):
        raise ValueError("--eval-split needs a BEIR source, and a split other than the one trained on")
    pairs = source.pairs()
    say(
        f"{len(pairs)} pairs from {len(source.train_ids())} queries of {source.name}"
        f" (held out: fold {source.fold_label}, {len(source.held_out_ids())} queries)"
    )
    options = RunOptions(state_dir=settings.state_dir / "evals", progress=progress)
    encoder_cfg = replace(settings.encoder_config(), path=str(base), name=base_name)
    base_encoder: Encoder | None = load_encoder(encoder_cfg) if hard_negatives or evaluate else None
    result_baseline: RunSummary | None = None
    if hard_negatives and base_encoder is not None:
        pairs = _mine(settings, source, pairs, base_encoder, config.seed, say)
    if evaluate and base_encoder is not None:
        say(f"evaluating the base encoder ({base_name}) on the held-out queries")
        suite = held_out_suite(settings, source, base, base_name, seed=config.seed, eval_split=eval_split)
        result_baseline = run_suite(suite, replace(options, encoder=base_encoder))
    del base_encoder  # its memory is the training's now
    folder = out or Path(tempfile.mkdtemp(prefix="candor-encoder-"))
    say(f"fine-tuning {base_name} on {len(pairs)} pairs ({config.epochs} epoch(s), batch {config.batch_size})")
    report = finetune(base, pairs, folder, config, progress=progress)
    say(f"trained in {report.seconds:.0f}s ({report.steps} steps on {report.device}); weights {report.version}")
    result = TrainedEncoder(folder, report, len(pairs), baseline=result_baseline)
    if evaluate and result_baseline is not None:
        say("evaluating the fine-tuned encoder on the held-out queries")
        suite = held_out_suite(settings, source, folder, "fine-tuned", seed=config.seed, eval_split=eval_split)
        result.evaluation = run_suite(suite, options)
        result.differences = compare_runs(
            load_run(str(result_baseline.run_dir)), load_run(str(result.evaluation.run_dir)), seed=config.seed
        )
        result.metrics = {
            **_overall(result.evaluation.metrics(), "heldout"),
            **_overall(result_baseline.metrics(), "base"),
            **_differences(result.differences),
        }
    if registry is not None:
        result.version = registry.register(
            "encoder",
            folder,
            params={
                **{k: v for k, v in report.summary().items() if k not in ("version", "seconds", "first_loss")},
                "hard_negatives": hard_negatives,
                "folds": source.folds,
                "fold": source.fold,
                "fold_seed": source.fold_seed,
                "eval_split": eval_split or "",
            },
            metrics={
                "train_seconds": report.seconds,
                "train_loss_first": report.losses[0] if report.losses else 0.0,
                "train_loss_last": report.summary()["last_loss"] or 0.0,
                **result.metrics,
            },
            tags={
                "data_hash": source.digest,
                "trained_on": source.name,
                "fold": source.fold_label,
                "code_version": code_version()[0],
                "parent": report.base_version,
                "parent_name": base_name,
                "eval_run": str(result.evaluation.run_dir) if result.evaluation else "",
                "baseline_run": str(result_baseline.run_dir) if result_baseline else "",
                "trained_by": getpass.getuser(),
            },
            card=encoder_card(source, report, result, base_name, hard_negatives, eval_split),
        )
    result.seconds = time.perf_counter() - started
    return result


def _mine(
    settings: Settings,
    source: PairSource,
    pairs: list[TrainingPair],
    encoder: Encoder,
    seed: int,
    say: Callable[[str], None],
) -> list[TrainingPair]:
    """Pairs with a hard negative each, ranked by the base encoder (corpus vectors through the evaluation cache)."""
    data = source.data
    batch = settings.encoder.bulk_batch_size
    info = encoder.info
    # The evaluation harness's cache key, so the base model's held-out evaluation reuses these vectors.
    key = EmbeddingCache.model_key(info.version, info.dtype, info.max_seq_length, batch)
    cache = EmbeddingCache(settings.state_dir / "evals" / "cache")
    say(f"mining hard negatives: embedding {len(data.corpus_ids)} passages with the base model (cached)")
    corpus, _ = cache.embed(encoder, key, data.corpus_ids, data.corpus_texts, batch_size=batch)
    qids = sorted({p.query_id for p in pairs})
    vectors = encoder.encode([data.queries[q] for q in qids], batch_size=batch)
    judged = {q: set(data.qrels.get(q, {})) for q in qids}  # judged non-relevant passages are not negatives either
    return mine_hard_negatives(
        pairs,
        data.corpus_ids,
        data.corpus_texts,
        corpus,
        dict(zip(qids, vectors, strict=True)),
        skip=judged,
        seed=seed,
    )


def encoder_card(
    source: PairSource,
    report: FinetuneReport,
    result: TrainedEncoder,
    base_name: str,
    hard_negatives: bool,
    eval_split: str | None,
) -> dict[str, Any]:
    """The model card of a fine-tuned encoder."""

    def figures(run: RunSummary | None) -> dict[str, Any]:
        if run is None:
            return {}
        return {
            m.name: {"value": m.value, "ci": [m.ci_low, m.ci_high], "n": m.n}
            for m in run.metrics()
            if m.group is None and not m.timing
        }

    held_out = (
        f"every judged query of split {eval_split!r}"
        if eval_split
        else f"fold {source.fold_label} of split {source.split!r} ({len(source.held_out_ids())} queries), "
        "never seen in training"
    )
    return {
        "model": f"candor encoder (fine-tuned from {base_name})",
        "intended_use": "Embedding queries and catalog items or passages for semantic search, recommendations by "
        "content and answer retrieval in the domain of its training queries (English, short queries against "
        "passages up to the token limit).",
        "not_for": "Decisions about people; languages or domains far from its training data without re-evaluation; "
        "mixing its vectors with another model's in one index (rebuild the index when it is promoted).",
        "parent": {"name": base_name, "version": report.base_version, "path": str(report.base)},
        "data": {
            "source": source.name,
            "hash": source.digest,
            "split": source.split,
            "training_queries": len(source.train_ids()),
            "pairs": result.pairs,
            "passages": "BEIR title + text" if source.format == "beir" else "item embedding text (title, text, ...)",
            "held_out": held_out,
            "folds": {"folds": source.folds, "fold": source.fold, "seed": source.fold_seed},
        },
        "training": {
            **report.summary(),
            "loss": "MultipleNegativesRankingLoss (in-batch negatives"
            + (", one mined hard negative per pair)" if hard_negatives else ")"),
        },
        "metrics": {
            "fine_tuned": figures(result.evaluation),
            "base": figures(result.baseline),
            "difference": [
                {"metric": r.key.rsplit("/", 1)[-1], "diff": r.diff, "ci": [r.ci_low, r.ci_high], "verdict": r.verdict}
                for r in result.differences
                if r.diff is not None
            ],
            "protocol": "exact (flat) index, 95% bootstrap intervals over queries; the difference's interval is a "
            "paired bootstrap over the same queries",
        },
        "limitations": [
            "Trained on few judged queries: gains on the held-out fold may not carry to other query styles.",
            "The held-out queries share the corpus (and some relevant passages) with the training queries.",
            "Hard negatives are mined from unjudged passages, some of which may in fact be relevant.",
            "Token limit during training: " + str(report.config.max_seq_length or "the model's own") + ".",
        ],
    }
