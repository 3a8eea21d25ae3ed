"""``candor index build --engine ray``: Ray Data actors embed a pack into the same catalog and index.

A slice of the demo pack keeps each actor pool's work small: what costs time here is starting the actors (a
process each, importing torch and loading the encoder), once per embedding call.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from app.cli import main
from retrieval.catalog import ItemCatalog
from retrieval.encoder import Encoder
from retrieval.engine import RetrievalEngine
from retrieval.index import SnapshotStore
from retrieval.pack import load_pack
from retrieval.types import Item
from tests.conftest import DEMO_PACK, engine_config
from tests.integration.ray_session import local_ray

pytestmark = pytest.mark.slow

SLICE = 150


@pytest.fixture(scope="module")
def ray_module() -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="r26", dir="/tmp") as tmp, pytest.MonkeyPatch.context() as patch:
        yield from local_ray(Path(tmp), patch)


def _config(tmp_path: Path, state: Path, pack: Path) -> Path:
    config = tmp_path / "candor.toml"
    config.write_text(f'[paths]\nstate_dir = "{state.as_posix()}"\npack = "{pack.as_posix()}"\n', encoding="utf-8")
    return config


def _open(state: Path, dim: int) -> tuple[ItemCatalog, Any]:
    from app.settings import load_settings

    spec = load_settings().index.to_config()
    loaded = SnapshotStore(state / "index").load(spec, mmap=False)
    assert loaded is not None
    return ItemCatalog(state / "catalog.sqlite", dim), loaded[0]


@pytest.fixture(scope="module")
def pack_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pack's first items and its documents, as a pack of its own."""
    folder = tmp_path_factory.mktemp("pack-slice")
    lines = (DEMO_PACK / "items.jsonl").read_text(encoding="utf-8").splitlines()[:SLICE]
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "documents.jsonl").write_text((DEMO_PACK / "documents.jsonl").read_text(encoding="utf-8"))
    return folder


def test_ray_build_answers_like_the_local_build(
    ray_module: Any, pack_slice: Path, encoder: Encoder, tmp_path: Path
) -> None:
    local_state, ray_state = tmp_path / "local", tmp_path / "ray"
    local_overrides = {"paths": {"state_dir": str(local_state), "pack": str(pack_slice)}}
    RetrievalEngine(engine_config(local_state, **local_overrides), encoder=encoder).build_offline()
    config = _config(tmp_path, ray_state, pack_slice)
    result = CliRunner().invoke(main, ["index", "build", "--engine", "ray", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"index ready: {SLICE} items" in result.output
    local_catalog, local_index = _open(local_state, encoder.dim)
    ray_catalog, ray_index = _open(ray_state, encoder.dim)
    try:
        assert ray_catalog.items() == local_catalog.items()
        assert ray_catalog.encoder_version == local_catalog.encoder_version
        local_ids, local_vectors = local_catalog.all_vectors()
        ray_ids, ray_vectors = ray_catalog.all_vectors()
        assert np.array_equal(local_ids, ray_ids)
        np.testing.assert_allclose(ray_vectors, local_vectors, atol=1e-5)
        queries = np.vstack([encoder.encode(["baby bath towel", "analog watch for men"]), local_vectors[:40]])
        local_scores, local_hits = local_index.search(queries, 10)
        ray_scores, ray_hits = ray_index.search(queries, 10)
        assert np.array_equal(ray_hits, local_hits)
        np.testing.assert_allclose(ray_scores, local_scores, atol=1e-5)
    finally:
        local_catalog.close()
        ray_catalog.close()


def test_ray_embedder_sends_items_outside_the_pack_file_in_order(ray_module: Any, encoder: Encoder) -> None:
    from app.settings import load_settings
    from retrieval.bulk import RayItemEmbedder

    settings = load_settings()
    added = Item(id="api-only", title="Travel kettle", text="Folding silicone kettle, 600 ml.", category="Kitchen")
    wanted = [*load_pack(DEMO_PACK).items[7:1:-2], added]
    vectors = RayItemEmbedder(settings.ray.to_config(), settings.encoder_config(), None)(wanted, False)
    expected = encoder.encode([item.embedding_text() for item in wanted])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
