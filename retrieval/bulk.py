"""Bulk embedding on Ray Data: the pack's items read by Ray's readers, embedded by a pool of encoder actors.

``candor index build --engine ray`` hands :class:`RayItemEmbedder` to the item store in place of its local
encoder loop; the vectors then go into the same catalog and the same index the local path writes. Each actor
loads the encoder once (from the same :class:`~retrieval.encoder.EncoderConfig`) and embeds batches of rows with
:meth:`~retrieval.encoder.Encoder.encode`, on a GPU when the cluster has them. Item texts come from
:func:`~retrieval.types.item_embedding_text`, as on the local path.

Ray is imported only here and only when a function of this module runs, so the service never loads it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from retrieval.encoder import EncoderConfig, bundled_model_path, load_encoder, weights_digest
from retrieval.errors import RetrievalError
from retrieval.types import Item, item_embedding_text

logger = structlog.get_logger(__name__)

# The item fields the embedding text is built from: the only columns the readers need.
TEXT_COLUMNS = ("id", "title", "category", "brand", "text")
INSTALL_HINT = "pip install 'candor[ray]'"


class RayUnavailableError(RetrievalError):
    """``--engine ray`` was asked for and Ray (``ray[data]``) is not installed."""

    def __init__(self) -> None:
        super().__init__(f"the ray engine needs Ray Data, which is not installed ({INSTALL_HINT})")


class RayConnectionError(RetrievalError):
    """Ray could not start locally or join the cluster at the configured address."""


class BulkEmbeddingError(RetrievalError):
    """Ray's actors returned vectors that do not match what the local path would store."""


@dataclass(frozen=True, slots=True)
class RayConfig:
    """Where bulk work runs and how it is split (``[ray]`` in the config).

    Attributes:
        address: Cluster to join (``auto``, ``ray://host:10001``, ``host:6379``); empty: start a local one.
        actors: Encoder actors (0: one per GPU when the cluster has GPUs, else one per ``actor_cpus`` CPUs);
            never so many that no CPU is left for reading (:func:`plan_actors`).
        actor_cpus: CPUs each CPU actor reserves, and the torch threads it runs.
        batch_rows: Rows per ``map_batches`` batch handed to an actor.
        eval_shards: Shards an evaluation's users or queries are split into (0: one per CPU of the cluster).
    """

    address: str
    actors: int
    actor_cpus: int
    batch_rows: int
    eval_shards: int


def ray_available() -> bool:
    """Whether Ray Data can be imported (without importing it)."""
    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.data") is not None


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        RayUnavailableError: Ray is not installed.
    """
    if not ray_available():
        raise RayUnavailableError
    import ray

    return ray


@contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """Ray, connected to ``address`` (a local cluster when empty) for the duration of the block.

    A session already open in this process (a test's, a notebook's) is used as it is and left open.

    Raises:
        RayUnavailableError: Ray is not installed.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address or None, include_dashboard=False, logging_level="warning")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayConnectionError(f"cannot start or join Ray at {address or 'a local cluster'}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def plan_actors(cfg: RayConfig, resources: dict[str, float]) -> tuple[int, float, float]:
    """How many encoder actors to run, and the GPUs and CPUs each reserves.

    Args:
        cfg: The ``[ray]`` settings.
        resources: The cluster's resources (``ray.cluster_resources()``).

    Returns:
        ``(actors, gpus each, cpus each)``. Actors never hold every CPU: the pool takes its CPUs for as long as it
        runs, and the reading tasks then wait for one forever (2 actors of 1 CPU on a 2-CPU node hung here).
    """
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if gpus:
        actors, gpus_each, cpus_each = (cfg.actors or gpus), 1.0, 1.0
    else:
        actors, gpus_each, cpus_each = (cfg.actors or cpus), 0.0, float(cfg.actor_cpus)
    fits = max(1, (cpus - 1) // int(cpus_each))
    if cfg.actors > fits:
        logger.warning("ray_actors_capped", asked=actors, running=fits, cpus=cpus, reason="one CPU left for reading")
    return min(actors, fits), gpus_each, cpus_each


def _texts(batch: dict[str, np.ndarray], wanted: frozenset[str] | None) -> dict[str, np.ndarray]:
    """Rows of the items file to ``(id, text)`` columns, keeping only ``wanted`` ids when given."""
    ids, texts = [], []
    for item_id, title, category, brand, text in zip(*(batch[c] for c in TEXT_COLUMNS), strict=True):
        if wanted is not None and item_id not in wanted:
            continue
        ids.append(item_id)
        texts.append(item_embedding_text(title, category, brand or None, text))
    return {"id": np.asarray(ids, dtype=object), "text": np.asarray(texts, dtype=object)}


class _EmbedBatches:
    """A ``map_batches`` actor: loads the encoder once, then embeds each batch of ``(id, text)`` rows."""

    def __init__(self, encoder: EncoderConfig, threads: int) -> None:
        # A GPU actor lets the encoder pick CUDA ("auto"); a CPU actor runs as many threads as CPUs it reserved.
        self._encoder = load_encoder(replace(encoder, threads=threads))
        self._batch_size = encoder.bulk_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        vectors = self._encoder.encode([str(t) for t in batch["text"]], batch_size=self._batch_size)
        return {
            "id": batch["id"],
            "vector": vectors,
            "encoder": np.full(len(vectors), self._encoder.info.version, dtype=object),
        }


def read_items(ray: Any, path: Path) -> Any:
    """A Ray dataset of the items file's text columns (``items.jsonl`` or ``items.parquet``).

    On a cluster of several machines the path must be readable on each of them (shared storage): the reading
    tasks run on any node.
    """
    import pyarrow as pa

    if path.suffix == ".parquet":
        return ray.data.read_parquet(str(path), columns=list(TEXT_COLUMNS))
    from pyarrow import json as pa_json

    # pyarrow reads JSON Lines. The explicit schema: it would otherwise infer one per block (attributes differ
    # item by item), and the readers need only the text columns.
    schema = pa.schema([(name, pa.string()) for name in TEXT_COLUMNS])
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return ray.data.read_json(str(path), parse_options=options)


class RayItemEmbedder:
    """Embeds items with Ray Data actors: a drop-in for the item store's local loop (``embedder=``).

    Args:
        cfg: Where to run and how to split.
        encoder: The encoder configuration each actor loads (the one the local path uses); the vectors must
            come from the weights it names on this machine.
        items_path: The pack's items file; items it does not hold (added through the API) are sent from the
            driver instead.
    """

    def __init__(self, cfg: RayConfig, encoder: EncoderConfig, items_path: Path | None) -> None:
        self.cfg = cfg
        self.encoder = encoder
        self.encoder_version = weights_digest(Path(encoder.path) if encoder.path else bundled_model_path())
        self.items_path = items_path

    def __call__(self, items: Sequence[Item], whole_pack: bool) -> np.ndarray:
        """``(len(items), dim)`` unit vectors of ``items``, in order.

        Args:
            items: The items to embed.
            whole_pack: Whether ``items`` are every item of the pack file (a first build): the readers then
                keep every row instead of checking each id against the wanted set.
        """
        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        ray = import_ray()
        out: dict[str, np.ndarray] = {}
        if self.items_path is not None:
            keep = None if whole_pack else frozenset(item.id for item in items)
            texts = read_items(ray, self.items_path).map_batches(
                _texts, fn_kwargs={"wanted": keep}, batch_format="numpy"
            )
            out = self._embed(ray, texts)
        missing = [item for item in items if item.id not in out]
        if missing:  # items the file does not hold (added through the API): their texts go from here
            rows = [{"id": i.id, "text": i.embedding_text()} for i in missing]
            out.update(self._embed(ray, ray.data.from_items(rows)))
        return np.stack([out[item.id] for item in items]).astype(np.float32, copy=False)

    def _embed(self, ray: Any, texts: Any) -> dict[str, np.ndarray]:
        """Run the actor pool over a dataset of ``(id, text)`` rows; vectors by id."""
        actors, gpus, cpus = plan_actors(self.cfg, ray.cluster_resources())
        logger.info("ray_embedding", actors=actors, gpus_each=gpus, cpus_each=cpus, batch_rows=self.cfg.batch_rows)
        vectors = texts.map_batches(
            _EmbedBatches,
            fn_constructor_kwargs={"encoder": self.encoder, "threads": max(1, int(cpus))},
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus,
            num_cpus=cpus,
            batch_size=self.cfg.batch_rows,
            batch_format="numpy",
        )
        out: dict[str, np.ndarray] = {}
        for batch in vectors.iter_batches(batch_size=4096, batch_format="numpy"):
            versions = set(batch["encoder"].tolist())
            if versions != {self.encoder_version}:
                raise BulkEmbeddingError(
                    f"Ray actors embedded with encoder {sorted(versions)}, the catalog uses {self.encoder_version}"
                    " (every node must hold the same encoder folder)"
                )
            for item_id, vector in zip(batch["id"].tolist(), batch["vector"], strict=True):
                out[str(item_id)] = np.asarray(vector, dtype=np.float32)
        return out
