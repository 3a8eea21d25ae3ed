"""Shared fixtures: the real encoder and a built demo index, loaded once per test session."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.settings import load_settings
from retrieval.encoder import Encoder
from retrieval.engine import EngineConfig, RetrievalEngine

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_PACK = PROJECT_ROOT / "data" / "demo"
SHARED_DATA = Path(os.environ.get("CANDOR_DATA_ROOT", PROJECT_ROOT.parent / "shared" / "data"))
FLIPKART_CSV = SHARED_DATA / "flipkart-1050" / "flipkart_com-ecommerce_sample_1050.csv"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder, and skip ``gpu`` tests where no CUDA device is visible."""
    import torch

    has_gpu = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is visible on this machine")
    for item in items:
        parts = Path(str(item.fspath)).parts
        for kind in ("unit", "integration", "e2e"):
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


def engine_config(state_dir: Path, **overrides: Any) -> EngineConfig:
    """An engine configuration for the demo pack (the project's defaults otherwise)."""
    settings = load_settings(overrides={"paths": {"state_dir": str(state_dir), "pack": str(DEMO_PACK)}, **overrides})
    return settings.engine_config(show_progress=False)


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The real all-MiniLM-L6-v2 encoder on the CPU, loaded once."""
    enc = Encoder(device="cpu")
    enc.warmup()
    return enc


@pytest.fixture(scope="session")
def built_state(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    """A state folder with the demo catalog embedded and its index snapshot written (built once)."""
    state = tmp_path_factory.mktemp("built-state")
    RetrievalEngine(engine_config(state), encoder=encoder).build_offline()
    return state


@pytest.fixture
def state_copy(built_state: Path, tmp_path: Path) -> Path:
    """A private copy of the built state, for tests that change it."""
    target = tmp_path / "state"
    shutil.copytree(built_state, target)
    return target


@pytest.fixture
async def engine(state_copy: Path, encoder: Encoder) -> AsyncIterator[RetrievalEngine]:
    """A started engine over a private copy of the demo index."""
    eng = RetrievalEngine(engine_config(state_copy), encoder=encoder)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()
