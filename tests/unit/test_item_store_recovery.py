"""The item store reopened after a crash: what the snapshot lacks is taken from the catalog (small fake encoder)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from retrieval.catalog import ItemCatalog
from retrieval.encoder import Encoder
from retrieval.item_store import ItemStore
from retrieval.settings import IndexSettings
from retrieval.types import Item

DIM = 16


class HashEncoder:
    """Unit vectors from a digest of each text; ``salt`` stands for another setting of the same weights."""

    dim = DIM

    def __init__(self, salt: str = "") -> None:
        self.salt = salt
        self.info = SimpleNamespace(version="hash-encoder")

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, progress: Callable[[int], Any] | None = None
    ) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(f"{self.salt}{text}".encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).normal(size=DIM))
        if progress is not None:
            progress(len(texts))
        matrix = np.asarray(rows, dtype=np.float32)
        normalised: np.ndarray = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        return normalised


ITEMS = [Item(id=f"I{n}", title=f"Item {n}", text="", category="Things") for n in range(40)]


def open_store(state: Path, kind: str, encoder: HashEncoder) -> ItemStore:
    store = ItemStore(
        state,
        IndexSettings(kind=kind).to_config(),
        cast(Encoder, encoder),
        bulk_batch_size=8,
        snapshot_delay_s=0.0,
        show_progress=False,
    )
    store.open(ITEMS)
    return store


def index_agrees_with_catalog(store: ItemStore) -> bool:
    ids, vectors = store.catalog.all_vectors()
    return bool(np.allclose(store.index.reconstruct(ids), vectors, atol=1e-6))


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_reembed_committed_without_its_snapshot_is_not_served_from_the_old_snapshot(
    tmp_path: Path, kind: str
) -> None:
    open_store(tmp_path, kind, HashEncoder()).close()
    # A re-embed (POST /v1/index/rebuild {"reembed": true}) after a setting changed what the same weights produce,
    # killed after the catalog committed the new vectors and before the new snapshot was published.
    catalog = ItemCatalog(tmp_path / "catalog.sqlite", DIM)
    items = catalog.items()
    fresh = HashEncoder(salt="longer-texts").encode([i.embedding_text() for i in items])
    catalog.replace_vectors({i.id: v for i, v in zip(items, fresh, strict=True)}, "hash-encoder")
    catalog.close()

    store = open_store(tmp_path, kind, HashEncoder(salt="longer-texts"))
    try:
        assert index_agrees_with_catalog(store)
        assert store.info()["vectors"] == len(ITEMS)
    finally:
        store.close()


def test_a_snapshot_with_nothing_rewritten_is_reused(tmp_path: Path) -> None:
    first = open_store(tmp_path, "flat", HashEncoder())
    version = first.info()["version"]
    first.close()
    again = open_store(tmp_path, "flat", HashEncoder())
    try:
        assert again.info()["version"] == version  # opened as it was, not rebuilt
        assert index_agrees_with_catalog(again)
    finally:
        again.close()
