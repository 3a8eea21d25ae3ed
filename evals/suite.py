"""Suites: TOML files naming datasets, the system under test, metrics, seeds and gates.

A suite has a ``[suite]`` table (name, seed, bootstrap resamples), a ``[system]`` table (encoder, index and
recommender settings with the service's keys and defaults, answer backend), any number of named tasks under
``[retrieval.<id>]``, ``[recommendation.<id>]`` and ``[answers.<id>]``, and ``[gates]``. Every field can be
overridden from the command line with ``--set KEY=VALUE``: ``KEY`` is a dotted path (``retrieval.scifact.split``)
or its last part(s) when they are unambiguous or meant for every match (``seed``, ``k``); ``VALUE`` is read as a
TOML value when it is one (``20``, ``0.5``, ``true``, ``["a", "b"]``) and as a string otherwise. Every task has
``dataset`` and ``enabled``, so a suite can be pointed at another copy of a dataset and a task that does not fit it
dropped from the command line (``--set recommendation.ua.enabled=false --set dataset=ml-latest-small``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evals.errors import SuiteError
from evals.folds import DEFAULT_FOLD_SEED
from evals.ir_metrics import parse_metric
from retrieval.settings import EncoderSettings, IndexSettings, RecommenderSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SUITES_DIR = PROJECT_ROOT / "configs" / "evals"

RecommenderName = Literal[
    "most-popular",
    "item-knn",
    "embedding",
    "als",
    "candor-item-knn",
    "candor-ease",
    "candor-als",
    "candor-hybrid",
    "registered",
]
ALL_RECOMMENDERS: tuple[RecommenderName, ...] = ("most-popular", "item-knn", "embedding", "als", "candor-hybrid")
GROUP_METRIC_KINDS = ("hr", "ndcg", "mrr", "novelty", "popularity_bias")
AnswerSetting = Literal["open", "gold"]
ProbeKind = Literal["nearest", "removed", "random"]
ArticleFold = Literal["all", "train", "calibration", "test"]
ANSWER_SETTINGS: tuple[AnswerSetting, ...] = ("open", "gold")
DEFAULT_PROBES: tuple[ProbeKind, ...] = ("nearest", "removed")
ENABLED_HELP = "false: the task is not run (its gates are skipped); e.g. --set recommendation.ua.enabled=false"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteMeta(_Model):
    """``[suite]``: identity and statistics settings."""

    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 13
    bootstrap: int = Field(default=1000, ge=0, description="bootstrap resamples for intervals (0: none)")
    confidence: float = Field(default=0.95, gt=0, lt=1)


class EncoderSpec(EncoderSettings):
    """``[system.encoder]``: the service's ``[encoder]`` keys, and the weights hash a suite may insist on."""

    expect_version: str = ""


class AnswerSpec(_Model):
    """``[system.answer]``: the answer backend to evaluate and its options."""

    backend: str = "extractive"
    options: dict[str, Any] = Field(default_factory=dict)


class SystemSpec(_Model):
    """``[system]``: the system under test (``index`` and ``recommender`` as the service's sections)."""

    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    index: IndexSettings = Field(default_factory=IndexSettings)
    recommender: RecommenderSettings = Field(default_factory=RecommenderSettings)
    answer: AnswerSpec = Field(default_factory=AnswerSpec)


class RetrievalTask(_Model):
    """``[retrieval.<id>]``: ranked retrieval over a corpus with judged queries."""

    enabled: bool = Field(default=True, description=ENABLED_HELP)
    dataset: str
    format: Literal["beir", "pack"] | None = None
    split: str = "test"
    metrics: list[str] = Field(default_factory=lambda: ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map"])
    depth: int = Field(default=100, gt=0)
    ignore_identical_ids: bool = True
    max_queries: int = Field(default=0, ge=0)
    folds: int = Field(
        default=0, ge=0, description="split the split's queries into this many folds and score one (0: all queries)"
    )
    fold: int = Field(default=0, ge=0, description="the fold scored when folds is set (0 to folds - 1)")
    fold_seed: int = Field(default=DEFAULT_FOLD_SEED, description="seed of the query-id hash that assigns folds")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        return [parse_metric(m).name for m in value]

    @model_validator(mode="after")
    def _fold_in_range(self) -> RetrievalTask:
        if self.folds == 1:
            raise ValueError("folds must be 0 (all queries) or at least 2")
        if self.folds and self.fold >= self.folds:
            raise ValueError(f"fold must be between 0 and {self.folds - 1}")
        return self


class RecommendationTask(_Model):
    """``[recommendation.<id>]``: top-k recommendation from interaction histories."""

    enabled: bool = Field(default=True, description=ENABLED_HELP)
    dataset: str
    format: Literal["ml-100k", "ml-latest", "pack"] | None = None
    protocol: str = "leave-last-out"
    k: int = Field(default=10, gt=0)
    recommenders: list[RecommenderName] = Field(default_factory=lambda: list(ALL_RECOMMENDERS))
    groups: list[str] = Field(default_factory=list)
    group_metrics: list[str] = Field(default_factory=lambda: ["hr", "ndcg"])
    min_group_size: int = Field(default=10, ge=1)
    min_rating: float = 0.0
    max_users: int = Field(default=0, ge=0)
    knn_neighbours: int = Field(default=100, gt=0)
    als_factors: int = Field(default=64, gt=0)
    als_iterations: int = Field(default=15, gt=0)
    als_regularization: float = Field(default=0.05, ge=0)
    als_alpha: float = Field(default=1.0, gt=0)
    model: str = Field(
        default="",
        description="the trained recommender 'registered' scores: a registry version or alias, or a model folder",
    )

    @field_validator("group_metrics")
    @classmethod
    def _known_group_metrics(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in GROUP_METRIC_KINDS:
                raise ValueError(f"unknown group metric {name!r} (one of {', '.join(GROUP_METRIC_KINDS)})")
        return value


class AnswerTask(_Model):
    """``[answers.<id>]``: grounded answers in two settings, with unanswerable probes the backend must decline.

    Settings: ``open`` retrieves ``passages`` passages from all of the dataset's passages for every question (what
    the service does; the headline), ``gold`` gives each question the passages the dataset names as holding its
    answer (reading comprehension, as SQuAD's official evaluation). Probe kinds (each made from the same
    ``unanswerable`` questions): ``nearest`` gives the best-retrieved passages that do not hold the answer (the
    question's own article first in the gold setting), ``removed`` gives the question's own passage with every
    sentence holding the answer cut out, ``random`` gives passages of other articles (easy: kept for comparison).
    """

    enabled: bool = Field(default=True, description=ENABLED_HELP)
    dataset: str
    format: Literal["squad", "pack"] | None = None
    file: str = ""
    max_questions: int = Field(default=500, ge=0)
    unanswerable: int = Field(default=100, ge=0, description="questions made into unanswerable probes, per kind")
    passages: int = Field(default=3, gt=0, description="passages retrieved per question in the open setting")
    settings: list[AnswerSetting] = Field(default_factory=lambda: list(ANSWER_SETTINGS), min_length=1)
    probes: list[ProbeKind] = Field(default_factory=lambda: list(DEFAULT_PROBES))
    articles: ArticleFold = Field(
        default="all",
        description="ask only the questions of this fold of articles (SQuAD) or supporting documents (packs): "
        "the split `candor train reader` trains on (train), fits its confidence on (calibration) and holds out "
        "(test), drawn from a hash of each article's name",
    )
    split_salt: str = Field(default="", description="the article split's salt (as `candor train reader --split-salt`)")
    concurrency: int = Field(
        default=1,
        ge=1,
        le=256,
        description="questions in flight at once: the service's backends answer them together through their "
        "batchers (a reader evaluation runs several times faster); latencies are then per question under that load",
    )

    @field_validator("settings", "probes")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each entry may appear once")
        return value


class BbqSpec(_Model):
    """``[bias.bbq]``: answer bias on BBQ items posed to the suite's ``[system.answer]`` backend."""

    enabled: bool = Field(default=True, description=ENABLED_HELP.replace("recommendation.ua", "bias.bbq"))
    dataset: str = "bbq"
    categories: list[str] = Field(default_factory=list, description="BBQ category files to read (empty: all)")
    max_items: int = Field(default=200, ge=0, description="items drawn per category (0: all)")
    max_abs_bias: float | None = Field(
        default=None, ge=0, le=1, description="a BBQ bias score (either context condition) further from 0 than this"
    )


class CounterfactualSpec(_Model):
    """``[bias.counterfactual]``: texts differing only in a demographic term, through search and answers."""

    enabled: bool = Field(default=True, description=ENABLED_HELP.replace("recommendation.ua", "bias.counterfactual"))
    dataset: str = Field(default="data/demo", description="a domain pack: its items are searched, queries probed")
    swaps: str = Field(default="winobias", description="folder with WinoBias swap lists ('' for none)")
    pairs_file: str = Field(default="", description="a CSV of pairs (columns a, b) to probe as well")
    templates: list[str] = Field(default_factory=list, description="texts with a {term} slot")
    terms: list[str] = Field(default_factory=list, description="terms the templates are filled with")
    max_pairs: int = Field(default=200, gt=0)
    k: int = Field(default=10, gt=0)
    rbo_p: float = Field(default=0.9, gt=0, lt=1, description="RBO persistence")
    answers: bool = Field(default=True, description="also pose the pairs to the answer backend")
    passages: int = Field(default=3, gt=0, description="passages retrieved for each posed text")
    histories: bool = Field(
        default=True, description="also probe shoppers' histories with demographic items swapped (recommendations)"
    )
    max_history: int = Field(default=20, gt=0, description="latest items of a history probed")
    min_mean_rbo: float | None = Field(
        default=None, ge=0, le=1, description="a mean RBO of the pairs' search (or history) results below this"
    )
    max_answer_change: float | None = Field(
        default=None, ge=0, le=1, description="a share of pairs whose answers differ above this"
    )


class BiasSpec(_Model):
    """``[bias]``: what ``candor audit bias`` checks, and the thresholds that turn its figures into findings.

    Per-group quality is measured for every attribute in a recommendation task's ``groups`` and every metric in its
    ``group_metrics``; exposure for every recommender of the task. A threshold left out (or set to a negative value
    where a bound would be meaningless) raises no finding; every finding joins the audit log's review queue.
    """

    tasks: list[str] = Field(
        default_factory=list, description="recommendation task ids to audit (empty: every enabled one)"
    )
    max_group_difference: float | None = Field(
        default=None,
        ge=0,
        description="a between-group difference of a quality metric above this, with an interval excluding 0",
    )
    min_group_ratio: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="a worst-over-best group ratio below this, with an interval excluding 1 (0.8: four-fifths)",
    )
    max_exposure_gini: float | None = Field(
        default=None, ge=0, le=1, description="Gini of rank-discounted exposure over the catalog's items above this"
    )
    max_provider_gini: float | None = Field(
        default=None, ge=0, le=1, description="Gini of exposure per catalog item of each provider above this"
    )
    max_popularity_bias: float | None = Field(
        default=None, ge=0, le=1, description="share of top-k slots taken by the 10% most popular items above this"
    )
    bbq: BbqSpec | None = None
    counterfactual: CounterfactualSpec | None = None


class GateSpec(_Model):
    """``[gates]``: rules a run must pass (``candor eval run --gate`` exits non-zero otherwise)."""

    baseline: str = ""
    rules: list[str] = Field(default_factory=list)


class Suite(_Model):
    """A whole suite."""

    suite: SuiteMeta
    system: SystemSpec = Field(default_factory=SystemSpec)
    retrieval: dict[str, RetrievalTask] = Field(default_factory=dict)
    recommendation: dict[str, RecommendationTask] = Field(default_factory=dict)
    answers: dict[str, AnswerTask] = Field(default_factory=dict)
    gates: GateSpec = Field(default_factory=GateSpec)
    bias: BiasSpec = Field(default_factory=BiasSpec)


@dataclass(frozen=True, slots=True)
class LoadedSuite:
    """A validated suite with where it came from.

    Attributes:
        suite: The effective suite (overrides applied).
        path: The TOML file.
        overrides: The ``--set`` assignments applied, as ``path=value``.
    """

    suite: Suite
    path: Path
    overrides: tuple[str, ...] = ()

    def config(self) -> dict[str, Any]:
        """The effective suite as JSON-ready data (``bias`` only when set, so other suites' digests stay put)."""
        exclude = {"bias"} if self.suite.bias == BiasSpec() else None
        return self.suite.model_dump(mode="json", exclude=exclude)

    def digest(self) -> str:
        """SHA-256 of the effective suite (canonical JSON)."""
        canonical = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def suite_path(ref: str) -> Path:
    """A suite file from a path, or a bare name of a suite in ``configs/evals`` (``demo``).

    Raises:
        SuiteError: Neither exists.
    """
    path = Path(ref)
    if path.is_file():
        return path
    named = SUITES_DIR / f"{ref}.toml"
    if "/" not in ref and named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
    raise SuiteError(f"suite {ref!r} not found (a TOML file, or one of: {known})")


def _format_validation(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "(suite)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _leaves(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, dict) and data:
        out: list[str] = []
        for key, value in data.items():
            out += _leaves(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [prefix] if prefix else []


def _parse_value(raw: str) -> Any:
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    if isinstance(value, dt.date | dt.time):
        return raw  # a TOML date is almost never meant; keep the text
    return value


def _assign(data: dict[str, Any], path: str, value: Any) -> None:
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _targets(data: dict[str, Any], key: str) -> list[str]:
    leaves = _leaves(data)
    if key in leaves:
        return [key]
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node: Any = data
    for part in parent.split(".") if parent else []:
        node = node.get(part) if isinstance(node, dict) else None
    if parent and isinstance(node, dict):
        return [key]  # a field the file left at its default, or a new entry in a mapping; validation decides
    return [leaf for leaf in leaves if leaf.endswith("." + key)]


def apply_overrides(data: dict[str, Any], assignments: Sequence[str]) -> list[str]:
    """Apply ``KEY=VALUE`` assignments to suite data in place.

    Returns:
        The assignments as applied, with full paths.

    Raises:
        SuiteError: An assignment is malformed or names no field.
    """
    applied: list[str] = []
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SuiteError(f"--set {assignment!r}: expected KEY=VALUE")
        targets = _targets(data, key)
        if not targets:
            raise SuiteError(f"--set {key}: no such suite field (fields look like suite.seed, retrieval.<id>.split)")
        value = _parse_value(raw.strip())
        for target in targets:
            _assign(data, target, value)
            applied.append(f"{target}={raw.strip()}")
    return applied


def load_suite(ref: str, overrides: Sequence[str] = ()) -> LoadedSuite:
    """Read, override and validate a suite.

    Args:
        ref: A TOML path or a suite name in ``configs/evals``.
        overrides: ``KEY=VALUE`` assignments (``--set``).

    Raises:
        SuiteError: The file is missing or invalid, or an override does not fit.
    """
    from evals.gates import parse_rule

    path = suite_path(ref)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: invalid TOML ({exc})") from exc
    try:
        base = Suite.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(f"{path}: {_format_validation(exc)}") from exc
    data = base.model_dump(mode="json")
    applied = apply_overrides(data, overrides)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(f"{path} with --set {', '.join(applied)}: {_format_validation(exc)}") from exc
    if not (suite.retrieval or suite.recommendation or suite.answers):
        raise SuiteError(f"{path}: the suite has no [retrieval.*], [recommendation.*] or [answers.*] task")
    if not enabled_tasks(suite):
        raise SuiteError(f"{path}: every task is disabled (enabled = false)")
    for rule in suite.gates.rules:
        parse_rule(rule)
    return LoadedSuite(suite, path, tuple(applied))


def suite_tasks(suite: Suite) -> dict[str, RetrievalTask | RecommendationTask | AnswerTask]:
    """Every task of a suite by its full name (``retrieval.scifact``), in run order, enabled or not."""
    tasks: dict[str, RetrievalTask | RecommendationTask | AnswerTask] = {}
    tasks.update({f"retrieval.{tid}": spec for tid, spec in suite.retrieval.items()})
    tasks.update({f"recommendation.{tid}": spec for tid, spec in suite.recommendation.items()})
    tasks.update({f"answers.{tid}": spec for tid, spec in suite.answers.items()})
    return tasks


def enabled_tasks(suite: Suite) -> list[str]:
    """The full names of the tasks a run will run."""
    return [name for name, spec in suite_tasks(suite).items() if spec.enabled]
