"""FAISS index wrapper, atomic snapshots and the SQLite catalog (small random vectors, no model)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval.catalog import ItemCatalog
from retrieval.errors import IndexStoreError
from retrieval.index import SnapshotStore, VectorIndex
from retrieval.settings import IndexSettings
from retrieval.types import Filters, Item

DIM = 16


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    vectors: np.ndarray = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    normalised: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalised


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_each_kind_finds_exact_neighbours_and_filters(kind: str) -> None:
    vectors = unit_vectors(2000)
    index = VectorIndex.build(DIM, IndexSettings(kind=kind).to_config(), np.arange(2000), vectors)
    assert index.kind == kind
    _, ids = index.search(vectors[:5], 3)
    assert list(ids[:, 0]) == [0, 1, 2, 3, 4]
    _, ids = index.search(vectors[:1], 2, allowed_ids=[7, 0])
    assert set(ids[0].tolist()) <= {0, 7, -1}
    assert ids[0][0] == 0
    index.add([5000], vectors[:1])
    assert np.allclose(index.reconstruct([5000])[0], vectors[0])


def test_flat_remove_and_snapshot_roundtrip_memory_mapped(tmp_path: Path) -> None:
    vectors = unit_vectors(50)
    index = VectorIndex.build(DIM, IndexSettings().to_config(), np.arange(50), vectors)
    assert index.remove([3, 4, 999]) == 2
    store = SnapshotStore(tmp_path)
    manifest = store.save(index, seq=7, encoder_version="enc")
    loaded = store.load(IndexSettings().to_config())
    assert loaded is not None
    reopened, again = loaded
    assert again == manifest
    assert reopened.ntotal == 48
    reopened.add([100], vectors[:1])  # the first write copies the mapped index into memory
    assert reopened.ntotal == 49


def test_only_recent_snapshots_are_kept_and_crash_leftovers_are_ignored(tmp_path: Path) -> None:
    index = VectorIndex.build(DIM, IndexSettings().to_config(), np.arange(5), unit_vectors(5))
    store = SnapshotStore(tmp_path)
    (tmp_path / "snapshots" / ".half-written.tmp").mkdir(parents=True)
    for seq in range(4):
        store.save(index, seq=seq, encoder_version="enc")
    names = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert len(names) == 2
    assert not any(n.startswith(".") for n in names)
    current = store.current()
    assert current is not None
    assert current.seq == 3


def test_corrupt_snapshot_is_reported(tmp_path: Path) -> None:
    index = VectorIndex.build(DIM, IndexSettings().to_config(), np.arange(5), unit_vectors(5))
    store = SnapshotStore(tmp_path)
    manifest = store.save(index, seq=1, encoder_version="enc")
    (tmp_path / "snapshots" / manifest.version / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexStoreError):
        store.load(IndexSettings().to_config())


def item(i: int, **changes: object) -> Item:
    base: dict[str, object] = {"id": f"i{i}", "title": f"Item {i}", "text": "", "category": "A > B", "price": float(i)}
    base.update(changes)
    return Item(**base)  # type: ignore[arg-type]


def test_catalog_upsert_delete_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    catalog = ItemCatalog(path, DIM)
    vectors = unit_vectors(3)
    ids, replaced = catalog.upsert([item(0), item(1), item(2)], vectors, "enc")
    assert replaced == []
    new_ids, replaced = catalog.upsert([item(1, title="Renamed")], unit_vectors(1, seed=5), "enc")
    assert replaced == [ids[1]]
    assert catalog.item_for_faiss_id(ids[1]) is None
    assert catalog.item_for_faiss_id(new_ids[0]).title == "Renamed"  # type: ignore[union-attr]
    assert catalog.delete("i0") == ids[0]
    assert catalog.delete("i0") is None
    assert catalog.matching_faiss_ids(Filters(price_min=2.0)).tolist() == [ids[2]]
    seq = catalog.seq
    catalog.close()
    reopened = ItemCatalog(path, DIM)
    assert reopened.seq == seq
    assert sorted(i.id for i in reopened.items()) == ["i1", "i2"]
    assert np.allclose(reopened.vectors([new_ids[0]])[0], unit_vectors(1, seed=5)[0])
    with pytest.raises(ValueError, match="come from encoder"):
        reopened.upsert([item(9)], unit_vectors(1), "other-encoder")


def test_every_thread_that_searches_uses_the_configured_faiss_threads() -> None:
    # OpenMP keeps its thread count per thread, so a setting made on the main thread does not reach a batch
    # worker: each call must apply the index's own.
    vectors = unit_vectors(100)
    one = VectorIndex.build(DIM, IndexSettings(threads=1).to_config(), np.arange(100), vectors)
    two = VectorIndex.build(DIM, IndexSettings(threads=2).to_config(), np.arange(100), vectors)
    seen: dict[str, int] = {}

    def worker() -> None:
        seen["fresh thread"] = faiss.omp_get_max_threads()
        one.search(vectors[:8], 3)
        seen["after a 1-thread search"] = faiss.omp_get_max_threads()
        two.search(vectors[:8], 3)
        seen["after a 2-thread search"] = faiss.omp_get_max_threads()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["after a 1-thread search"] == 1
    assert seen["after a 2-thread search"] == 2
    if (os.cpu_count() or 1) > 1 and "OMP_NUM_THREADS" not in os.environ:
        assert seen["fresh thread"] > 1  # OpenMP's default in a new thread: what the index must override


def test_a_catalog_view_stays_as_it_was_while_writes_go_on(tmp_path: Path) -> None:
    catalog = ItemCatalog(tmp_path / "catalog.sqlite", DIM)
    ids, _ = catalog.upsert([item(0), item(1), item(2)], unit_vectors(3), "enc")
    view = catalog.view()
    catalog.delete("i1")
    new_ids, _ = catalog.upsert([item(0, title="Renamed"), item(3)], unit_vectors(2, seed=3), "enc")
    # The old view: every fact from one moment, iterable while writes go on.
    assert [i.id for i in view.items()] == ["i0", "i1", "i2"]
    assert view.faiss_id("i1") == ids[1]
    assert view.item_for_faiss_id(ids[0]).title != "Renamed"  # type: ignore[union-attr]
    assert sorted(view.live_faiss_ids().tolist()) == sorted(ids)
    assert len(view.matching_faiss_ids(Filters())) == 3
    # The catalog (and a new view) see the writes.
    assert [i.id for i in catalog.items()] == ["i0", "i2", "i3"]
    assert catalog.view().item_for_faiss_id(new_ids[0]).title == "Renamed"  # type: ignore[union-attr]
    assert catalog.get("i1") is None


def test_iterating_a_catalog_while_another_thread_writes_never_fails(tmp_path: Path) -> None:
    catalog = ItemCatalog(tmp_path / "catalog.sqlite", DIM)
    catalog.upsert([item(n) for n in range(200)], unit_vectors(200), "enc")
    stop = threading.Event()

    def churn() -> None:
        n = 1000
        while not stop.is_set():
            catalog.upsert([item(n)], unit_vectors(1, seed=n), "enc")
            catalog.delete(f"i{n}")
            n += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for _ in range(300):
            catalog.matching_faiss_ids(Filters(price_min=0.0), exclude={"i3"})
            catalog.live_faiss_ids()
            catalog.items()
    finally:
        stop.set()
        writer.join()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_vectors_of_removed_ids_are_reported_missing_not_raised(kind: str) -> None:
    vectors = unit_vectors(50)
    index = VectorIndex.build(DIM, IndexSettings(kind=kind).to_config(), np.arange(50), vectors)
    index.remove([3, 7])
    found, present = index.reconstruct_present([1, 3, 7, 9, 999])
    assert present.tolist() == [True, kind != "flat", kind != "flat", True, False]
    assert np.allclose(found[0], vectors[1])
    assert np.allclose(found[-1], vectors[9])
    assert len(found) == int(present.sum())
    found, present = index.reconstruct_present([])
    assert found.shape == (0, DIM)
