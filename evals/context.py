"""What every task of a run shares: the suite, the data root, the run folder, the encoder and its cache."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from evals.answer_cases import PackRetrieval
from evals.cache import CacheOutcome, EmbeddingCache
from evals.errors import SuiteError
from evals.results import MetricRecord
from evals.shards import LocalShards, Shards
from evals.stats import rng_for
from evals.suite import LoadedSuite
from retrieval.encoder import Encoder, load_encoder

# (kind, version or alias) -> (the model's local folder, its name such as "recommender:3")
ModelResolver = Callable[[str, str], tuple[Path, str]]


@dataclass
class RunContext:
    """Shared state of one run.

    Attributes:
        loaded: The suite.
        data_root: Where dataset folders are looked up.
        run_dir: The run folder (artifacts are written here).
        cache: Corpus embedding cache.
        progress: Draw progress bars on stderr.
        preloaded_encoder: An encoder to use instead of loading ``system.encoder`` (tests, notebooks).
        answer_backends: Answer backend factories by name.
        models: Resolves a registered model (kind, version or alias) to its local folder and name.
        shards: Where tasks score their chunks of users and queries (this process, or Ray tasks).
        pack_retrieval: How the service retrieves from a pack, which a pack's open answer setting imitates
            (``None``: whole documents and items ranked by the encoder alone).
        notes: Messages for the person running the suite (skips, warnings).
    """

    loaded: LoadedSuite
    data_root: Path | None
    run_dir: Path
    cache: EmbeddingCache
    progress: bool = True
    preloaded_encoder: Encoder | None = None
    answer_backends: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    models: ModelResolver | None = None
    shards: Shards = field(default_factory=LocalShards)
    pack_retrieval: PackRetrieval | None = None
    notes: list[str] = field(default_factory=list)
    _encoder: Encoder | None = None

    @property
    def seed(self) -> int:
        """The suite seed."""
        return self.loaded.suite.suite.seed

    def rng(self, *labels: str) -> np.random.Generator:
        """A generator for one purpose, seeded by the suite seed and ``labels``."""
        return rng_for(self.seed, *labels)

    def bar(self, total: int, desc: str, unit: str = "it") -> tqdm[Any]:
        """A progress bar on stderr (hidden when progress is off)."""
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, leave=False, file=sys.stderr)

    def note(self, message: str) -> None:
        """Record a message for the person running the suite."""
        self.notes.append(message)

    @property
    def encoder_loaded(self) -> bool:
        """Whether a task has used the encoder (so ``results.json`` names it)."""
        return self._encoder is not None

    def encoder(self) -> Encoder:
        """The encoder under test, loaded on first use.

        Raises:
            SuiteError: The weights do not have the hash the suite expects.
        """
        if self._encoder is None:
            spec = self.loaded.suite.system.encoder
            if self.preloaded_encoder is not None:
                self._encoder = self.preloaded_encoder
            else:
                try:
                    self._encoder = load_encoder(spec.to_config())
                except (FileNotFoundError, ValueError) as exc:
                    raise SuiteError(f"system.encoder: {exc}") from exc
            version = self._encoder.info.version
            if spec.expect_version and spec.expect_version != version:
                raise SuiteError(f"system.encoder: weights are {version}, the suite expects {spec.expect_version}")
        return self._encoder

    def encoder_info(self) -> dict[str, Any]:
        """Identity of the encoder under test (name, weights hash, device, dtype, token limit)."""
        encoder = self.encoder()
        return {
            **encoder.info.describe(),
            "path": encoder.info.path,
            "traced": encoder.traced,
            "packed": encoder.packed,
            "bulk_batch_size": self.loaded.suite.system.encoder.bulk_batch_size,
        }

    def embed_corpus(self, label: str, ids: Sequence[str], texts: Sequence[str]) -> tuple[np.ndarray, CacheOutcome]:
        """Corpus vectors through the cache (embedded and stored on a miss)."""
        encoder = self.encoder()
        batch = self.loaded.suite.system.encoder.bulk_batch_size
        key = EmbeddingCache.model_key(encoder.info.version, encoder.info.dtype, encoder.info.max_seq_length, batch)
        with self.bar(len(texts), f"embedding {label}", "text") as bar:
            return self.cache.embed(encoder, key, ids, texts, batch_size=batch, progress=bar.update)

    def embed_texts(self, label: str, texts: Sequence[str]) -> tuple[np.ndarray, float]:
        """Vectors for texts that are not cached (queries); returns them with the seconds taken."""
        encoder = self.encoder()
        started = time.perf_counter()
        with self.bar(len(texts), f"embedding {label}", "text") as bar:
            vectors = encoder.encode(
                texts, batch_size=self.loaded.suite.system.encoder.bulk_batch_size, progress=bar.update
            )
        return vectors, time.perf_counter() - started


def summarise(
    ctx: RunContext,
    *,
    task: str,
    dataset: str,
    split: str,
    system: str,
    units: Sequence[str],
    values: Mapping[str, np.ndarray],
    higher_is_better: Mapping[str, bool],
    timing: Sequence[str] = (),
    stream: str = "",
    series: str | None = None,
    setting: str | None = None,
    group: str | None = None,
) -> tuple[list[MetricRecord], dict[str, dict[str, float]]]:
    """Mean of each per-unit metric with a bootstrap interval, and the per-unit values keyed by metric key.

    One resampling of the units serves every metric of the same task and system, so their intervals are
    consistent with each other. ``series`` names the competitor when a task compares several, ``setting`` how
    the task posed its questions, ``group`` the subset of units the figures describe (see
    :class:`~evals.results.MetricRecord`). ``stream`` separates the draws of metrics over different sets of units.
    """
    suite = ctx.loaded.suite.suite
    n = len(units)
    # The setting and group join the seed only when given, so the draws of tasks without them stay as they were.
    labels = [label for label in (setting, group) if label is not None]
    idx = (
        ctx.rng(task, system, stream, *labels).integers(0, n, size=(suite.bootstrap, n))
        if n >= 2 and suite.bootstrap
        else None
    )
    alpha = (1.0 - suite.confidence) / 2.0
    records: list[MetricRecord] = []
    per_unit: dict[str, dict[str, float]] = {}
    for name, array in values.items():
        vals = np.asarray(array, dtype=np.float64)
        low = high = None
        if idx is not None:
            q_low, q_high = np.quantile(vals[idx].mean(axis=1), [alpha, 1.0 - alpha])
            low, high = float(q_low), float(q_high)
        record = MetricRecord(
            name=name,
            value=float(vals.mean()) if n else 0.0,
            higher_is_better=higher_is_better[name],
            task=task,
            dataset=dataset,
            split=split,
            system=system,
            series=series,
            ci_low=low,
            ci_high=high,
            n=n,
            timing=name in timing,
            setting=setting,
            group=group,
        )
        records.append(record)
        per_unit[record.key] = {u: float(v) for u, v in zip(units, vals, strict=True)}
    return records, per_unit
