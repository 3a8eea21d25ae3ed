"""The Ray engine's pieces that need no Ray session: option checks, actor plans, sampled IVF training, shards."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from app.cli import main
from evals.shards import LocalShards, chunk_ranges
from retrieval import bulk
from retrieval.bulk import RayConfig, plan_actors
from retrieval.index import IndexSpec, VectorIndex, training_sample
from retrieval.types import Item, item_embedding_text


def _spec(**overrides: object) -> IndexSpec:
    values: dict[str, object] = {
        "kind": "flat",
        "hnsw_m": 16,
        "hnsw_ef_construction": 40,
        "hnsw_ef_search": 32,
        "ivf_nlist": 0,
        "ivf_nprobe": 4,
        "ivf_train_sample": 0,
        "ivf_train_seed": 0,
        "threads": 1,
        "blas_threshold": 4,
    }
    return IndexSpec(**{**values, **overrides})  # type: ignore[arg-type]


def _unit_rows(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    unit: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


@pytest.mark.parametrize("command", [["index", "build"], ["eval", "run", "demo"]])
def test_ray_engine_without_ray_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    monkeypatch.setattr(bulk, "ray_available", lambda: False)
    result = CliRunner().invoke(main, [*command, "--engine", "ray"])
    assert result.exit_code == 2
    assert "pip install 'candor[ray]'" in result.output


def test_address_needs_the_ray_engine() -> None:
    result = CliRunner().invoke(main, ["index", "build", "--address", "auto"])
    assert result.exit_code == 2
    assert "--address needs --engine ray" in result.output


def test_actor_plan_uses_gpus_first_and_leaves_a_cpu_for_reading() -> None:
    cfg = RayConfig(address="", actors=0, actor_cpus=2, batch_rows=512, eval_shards=0)
    assert plan_actors(cfg, {"CPU": 64.0, "GPU": 4.0}) == (4, 1.0, 1.0)
    assert plan_actors(cfg, {"CPU": 9.0}) == (4, 0.0, 2.0)
    assert plan_actors(cfg, {"CPU": 2.0}) == (1, 0.0, 2.0)
    assert plan_actors(RayConfig("", 3, 1, 512, 0), {"CPU": 16.0}) == (3, 0.0, 1.0)
    # asked for more than fits: one CPU always stays free for the reading tasks
    assert plan_actors(RayConfig("", 2, 1, 512, 0), {"CPU": 2.0}) == (1, 0.0, 1.0)
    assert plan_actors(RayConfig("", 0, 1, 512, 0), {"CPU": 4.0, "GPU": 8.0}) == (3, 1.0, 1.0)


def test_bulk_text_is_the_item_text() -> None:
    item = Item(id="x", title="Kettle", text="600 ml", category="Home > Kitchen", brand="Acme")
    assert item_embedding_text("Kettle", "Home > Kitchen", "Acme", "600 ml") == item.embedding_text()
    rows = {"id": np.array(["x", "y"]), "title": np.array(["Kettle", "Mug"]), "category": np.array(["Home", "Home"])}
    rows |= {"brand": np.array(["Acme", None]), "text": np.array(["600 ml", None])}
    out = bulk._texts(rows, frozenset({"x"}))
    assert out["id"].tolist() == ["x"]
    assert out["text"].tolist() == [item.embedding_text().replace(", Kitchen", "")]


def test_training_sample_is_seeded_and_ordered() -> None:
    rows = _unit_rows(100)
    sample = training_sample(rows, 10, seed=3)
    again = training_sample(rows, 10, seed=3)
    assert sample.shape == (10, 16)
    assert np.array_equal(sample, again)
    picked = [int(np.flatnonzero((rows == row).all(axis=1))[0]) for row in sample]
    assert picked == sorted(picked)
    assert training_sample(rows, 0, seed=3) is rows
    assert training_sample(rows, 500, seed=3) is rows


def test_ivf_trains_on_a_sample_and_still_finds_neighbours() -> None:
    vectors = _unit_rows(2000, seed=1)
    index = VectorIndex.build(16, _spec(kind="ivf", ivf_train_sample=400, ivf_nprobe=10), np.arange(2000), vectors)
    assert index.kind == "ivf"
    # nlist is capped by the sample (39 training vectors per cell at least)
    from retrieval.index import faiss

    inner = faiss.downcast_index(faiss.downcast_index(index._index).index)
    assert inner.nlist == 400 // 39
    _, ids = index.search(vectors[:50], 1)
    assert (ids[:, 0] == np.arange(50)).mean() > 0.9


def test_vector_index_pickles_as_its_bytes() -> None:
    vectors = _unit_rows(30)
    index = VectorIndex.build(16, _spec(), np.arange(100, 130), vectors)
    copy = pickle.loads(pickle.dumps(index))
    assert copy.ntotal == 30
    assert np.array_equal(copy.search(vectors[:5], 3)[1], index.search(vectors[:5], 3)[1])


def test_shards_cut_and_keep_order() -> None:
    assert chunk_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunk_ranges(0, 2) == []
    assert LocalShards().map(lambda shared, c: shared + c[0], 10, chunk_ranges(5, 2)) == [10, 12, 14]


def test_service_does_not_import_ray() -> None:
    code = "import sys, app.app, app.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
