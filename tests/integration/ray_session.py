"""One small local Ray session per test module: capped object store, its files and caches in a temporary folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

OBJECT_STORE_BYTES = 150 * 1024 * 1024


def ray_or_skip() -> Any:
    """The ``ray`` module, or skip the module naming why it cannot be imported."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        pytest.skip(f"Ray Data is not installed (pip install 'candor[ray]'): {exc}")
    return ray


def local_ray(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start Ray with 2 CPUs and a 150 MB object store under ``tmp``; shut it down afterwards."""
    ray = ray_or_skip()
    # Ray and the libraries its workers load write under HOME; its session files go to RAY_TMPDIR (a short path:
    # Ray's socket names must fit in 107 characters).
    monkeypatch.setenv("RAY_TMPDIR", str(tmp / "ray"))
    monkeypatch.setenv("HOME", str(tmp / "home"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=2,
        object_store_memory=OBJECT_STORE_BYTES,
        include_dashboard=False,
        logging_level="warning",
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
