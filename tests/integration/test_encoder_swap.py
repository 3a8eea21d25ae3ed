"""Swapping the encoder of a running engine: nothing fails meanwhile, and afterwards everything is the new one's.

A small pack (the demo pack's first items and all its documents) keeps each swap's re-embedding short.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from app.settings import load_settings
from retrieval.encoder import Encoder, EncoderConfig, bundled_model_path
from retrieval.engine import RetrievalEngine
from retrieval.index import SnapshotStore
from tests.conftest import DEMO_PACK

ITEMS = 120


@pytest.fixture(scope="module")
def small_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small-pack")
    lines = (DEMO_PACK / "items.jsonl").read_text().splitlines()[:ITEMS]
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(DEMO_PACK / "documents.jsonl", folder / "documents.jsonl")
    return folder


@pytest.fixture
async def engine(tmp_path: Path, small_pack: Path, encoder: Encoder) -> Any:
    """A started engine over a fresh state of the small pack (the demo-state fixture would re-embed 1,050 items)."""
    settings = load_settings(overrides={"paths": {"state_dir": str(tmp_path / "state"), "pack": str(small_pack)}})
    eng = RetrievalEngine(settings.engine_config(show_progress=False), encoder=encoder)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model with slightly different weights: another encoder, with another weights digest."""
    folder = tmp_path_factory.mktemp("other-encoder") / "model"
    shutil.copytree(bundled_model_path(), folder)
    weights = load_file(folder / "model.safetensors")
    generator = torch.Generator().manual_seed(7)
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[name] = weights[name] + 0.02 * torch.randn(weights[name].shape, generator=generator)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def other_config(folder: Path) -> EncoderConfig:
    return replace(load_settings().encoder_config(), path=str(folder), name="encoder:test", device="cpu")


async def test_swap_under_load_then_everything_uses_the_new_encoder(
    engine: RetrievalEngine, other_model: Path, encoder: Encoder
) -> None:
    before = engine.encoder_info.version
    failures: list[BaseException] = []
    served: list[str] = []
    stop = asyncio.Event()

    async def shopper(n: int) -> None:
        while not stop.is_set():
            try:
                ranked = await engine.search(["bath towel", "baby clothes", "analog watch"][n % 3], k=5)
                assert len(ranked.items) == 5
                _, passages = await engine.retrieve_passages("How long does delivery take?", 3)
                assert passages
                served.append(engine.encoder_info.version)
            except BaseException as exc:  # any failure of a request in flight is a defect
                failures.append(exc)
            await asyncio.sleep(0)

    load = [asyncio.create_task(shopper(n)) for n in range(3)]
    info = await engine.swap_encoder(other_config(other_model))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*load)
    assert not failures, failures[:3]
    assert info.version != before
    assert {before, info.version} >= set(served)
    assert served[-1] == info.version
    assert engine.encoder_info.name == "encoder:test"
    # The catalog, the index snapshot and the knowledge base hold the new encoder's vectors.
    assert engine.store.catalog.encoder_version == info.version
    manifest = SnapshotStore(engine.config.state_dir / "index").current()
    assert manifest is not None
    assert manifest.encoder_version == info.version
    assert engine.passages.knowledge.encoder_version == info.version
    ranked = await engine.search("analog wrist watch", k=3)
    assert any("Watch" in s.item.title for s in ranked.items)
    # Writes made after the swap are embedded by the new encoder.
    item = engine.get_item(ranked.items[0].item.id)
    assert item is not None
    await engine.upsert(replace(item, title=item.title + " Deluxe"))
    assert engine.store.catalog.encoder_version == info.version


async def test_catalog_vectors_are_cached_by_encoder_and_content(
    engine: RetrievalEngine, other_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await engine.swap_encoder(other_config(other_model))
    cache = engine.config.state_dir / "vector-cache"
    assert len(list(cache.rglob("*.npy"))) == 1

    calls: list[int] = []
    original = Encoder.encode

    def counting(self: Encoder, texts: Any, **kwargs: Any) -> np.ndarray:
        calls.append(len(texts))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", counting)
    prepared = engine.store.prepare_encoder(engine.encoder)
    assert len(engine.store.catalog) not in calls  # the catalog came from the cache
    assert len(prepared.vectors) == len(engine.store.catalog)
    # A changed item text is a different catalog: embedded again.
    item = engine.store.catalog.items()[0]
    await engine.upsert(replace(item, text=item.text + " Now with a lid."))
    engine.store.prepare_encoder(engine.encoder)
    assert len(engine.store.catalog) in calls


async def test_an_encoder_of_another_dimension_is_refused(engine: RetrievalEngine, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(bundled_model_path(), folder)
    # A sentence-transformers folder whose pooling says 2x the width: the vectors would not fit the index.
    config = folder / "1_Pooling" / "config.json"
    if not config.is_file():
        pytest.skip("the bundled model has no pooling config to change")
    text = config.read_text().replace('"pooling_mode_max_tokens": false', '"pooling_mode_max_tokens": true')
    config.write_text(text)
    before = engine.encoder_info.version
    with pytest.raises(ValueError, match="d vectors"):
        await engine.swap_encoder(other_config(folder))
    assert engine.encoder_info.version == before
    assert (await engine.search("towel", k=2)).items
