"""``candor eval run --engine ray``: users and queries scored on Ray tasks give the local run's figures."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evals.runner import RunOptions, run_suite
from evals.suite import load_suite
from retrieval.encoder import Encoder
from tests.conftest import DEMO_PACK
from tests.integration.ray_session import local_ray

pytestmark = pytest.mark.slow

SUITE = """
[suite]
name = "ray-shards"
seed = 13
bootstrap = 200

[retrieval.search]
dataset = "{pack}"
metrics = ["ndcg@10", "recall@10", "mrr@10"]
depth = 20

[recommendation.shoppers]
dataset = "{pack}"
protocol = "leave-last-out"
k = 10
recommenders = ["most-popular", "item-knn", "als", "embedding"]
groups = ["gender"]
group_metrics = ["hr"]
min_group_size = 10
als_factors = 8
als_iterations = 3
"""


@pytest.fixture(scope="module")
def ray_module() -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="r26", dir="/tmp") as tmp, pytest.MonkeyPatch.context() as patch:
        yield from local_ray(Path(tmp), patch)


def _figures(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    per_unit = json.loads((run_dir / "per_unit.json").read_text(encoding="utf-8"))
    return [m for m in results["metrics"] if not m.get("timing")], per_unit


def test_sharded_run_matches_the_local_run(ray_module: Any, encoder: Encoder, tmp_path: Path) -> None:
    from evals.shards import RayShards

    suite_file = tmp_path / "suite.toml"
    suite_file.write_text(SUITE.format(pack=DEMO_PACK.as_posix()), encoding="utf-8")
    common: dict[str, Any] = {"state_dir": tmp_path, "cache_dir": tmp_path / "cache", "progress": False}
    common["encoder"] = encoder
    local = run_suite(load_suite(str(suite_file)), RunOptions(out_dir=tmp_path / "local", **common))
    # Three shards over two CPUs: more shards than workers, and shards of unequal size.
    sharded = run_suite(
        load_suite(str(suite_file)), RunOptions(out_dir=tmp_path / "ray", shards=RayShards(3), **common)
    )
    local_metrics, local_units = _figures(local.run_dir)
    ray_metrics, ray_units = _figures(sharded.run_dir)
    assert ray_metrics == local_metrics
    assert ray_units == local_units
    assert sharded.results["engine"] == "ray"
    assert local.results["engine"] == "local"
