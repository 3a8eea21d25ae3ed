"""Fine-tuning the real encoder for a few steps on tiny data: loadable, reproducible, registered, evaluated.

Each training here is two or three steps over short texts, so the module takes seconds, not minutes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from app.cli import main
from retrieval.encoder import Encoder, bundled_model_path
from retrieval.finetune import FinetuneConfig, FinetuneReport, TrainingPair, finetune
from retrieval.registry import ModelRegistry, default_uri
from tests.unit.test_finetune_data import write_beir

TOPICS = ["volcano", "violin", "glacier", "bakery", "satellite", "orchid", "harbour", "chess"]
PAIRS = [
    TrainingPair(f"q{i}", f"where can I read about the {t}?", f"d{i}", f"Notes on the {t}: its history and its use.")
    for i, t in enumerate(TOPICS)
]
CONFIG = FinetuneConfig(batch_size=4, learning_rate=1e-4, warmup_ratio=0.0, max_seq_length=32, seed=3, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> FinetuneReport:
    return finetune(bundled_model_path(), PAIRS, tmp_path_factory.mktemp("ft") / "model", CONFIG, progress=False)


def test_the_fine_tuned_model_loads_traced_and_packed_and_differs_from_the_base(
    trained: FinetuneReport, encoder: Encoder
) -> None:
    assert trained.steps == 2
    assert len(trained.losses) == 2
    assert all(np.isfinite(trained.losses))
    assert trained.base_version == encoder.info.version != trained.version
    tuned = Encoder(trained.folder, device="cpu", max_seq_length=256)
    assert tuned.traced
    assert tuned.packed
    assert tuned.info.version == trained.version
    texts = [p.query for p in PAIRS[:3]]
    before, after = encoder.encode(texts), tuned.encode(texts)
    assert after.shape == before.shape
    assert np.allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    assert float(np.abs(after - before).max()) > 1e-3
    facts = json.loads((trained.folder / "candor_finetune.json").read_text(encoding="utf-8"))
    assert facts["base_version"] == trained.base_version
    assert facts["config"]["seed"] == 3


def test_the_same_seed_gives_the_same_weights(trained: FinetuneReport, tmp_path: Path) -> None:
    again = finetune(bundled_model_path(), PAIRS, tmp_path / "again", CONFIG, progress=False)
    assert again.losses == trained.losses
    assert again.version == trained.version
    other = finetune(bundled_model_path(), PAIRS, tmp_path / "other", replace(CONFIG, seed=4), progress=False)
    assert other.version != trained.version


def test_a_fine_tuned_encoder_round_trips_through_the_registry(trained: FinetuneReport, tmp_path: Path) -> None:
    registry = ModelRegistry(default_uri(tmp_path / "state"), tmp_path / "cache")
    card = {"model": "candor encoder (test)", "metrics": {"ndcg@10": 0.5}}
    version = registry.register(
        "encoder",
        trained.folder,
        params={"epochs": 1, "seed": 3},
        metrics={"heldout_ndcg_at_10": 0.5, "heldout_ndcg_at_10_ci_low": 0.4},
        tags={"parent": trained.base_version, "fold": "0/5", "data_hash": "sha256:x"},
        card=card,
    )
    again = registry.get("encoder", version.version)
    assert again.ref == "encoder:1"
    assert again.tags["parent"] == trained.base_version
    assert again.metrics["heldout_ndcg_at_10_ci_low"] == 0.4
    assert registry.card(again) == card
    loaded = Encoder(registry.local_path(again), device="cpu", trace=False)
    assert loaded.info.version == trained.version  # the same weights came back


def test_candor_train_encoder_holds_out_a_fold_evaluates_both_and_registers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_beir(tmp_path, queries=24)
    state = tmp_path / "state"
    monkeypatch.setenv("CANDOR_PATHS__STATE_DIR", str(state))
    monkeypatch.setenv("CANDOR_ENCODER__DEVICE", "cpu")
    args = ["train", "encoder", "--beir", str(data), "--folds", "4", "--fold", "1", "--epochs", "1"]
    args += ["--batch-size", "8", "--max-seq-length", "32", "--hard-negatives", "--no-progress"]
    args += ["--out", str(tmp_path / "model")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "held out  base" in result.output
    assert "difference ndcg@10" in result.output
    registry = ModelRegistry(default_uri(state), state / "models")
    version = registry.get("encoder", "latest")
    assert version.tags["fold"] == "1/4"
    assert version.tags["parent"] == Encoder(bundled_model_path(), device="cpu", trace=False).info.version
    assert version.tags["data_hash"].startswith("sha256:")
    assert version.params["hard_negatives"] == "true"
    for name in ("heldout_ndcg_at_10", "base_ndcg_at_10", "delta_ndcg_at_10"):
        assert f"{name}_ci_low" in version.metrics
        assert version.metrics[f"{name}_ci_low"] <= version.metrics[name] <= version.metrics[f"{name}_ci_high"]
    card = registry.card(version)
    assert card["data"]["folds"] == {"folds": 4, "fold": 1, "seed": 0}
    assert card["metrics"]["fine_tuned"]["ndcg@10"]["ci"][0] is not None
    assert "limitations" in card
    assert "intended_use" in card
    results = json.loads((Path(version.tags["eval_run"]) / "results.json").read_text(encoding="utf-8"))
    fold = results["tasks"]["retrieval.heldout"]["details"]["fold"]
    assert (fold["fold"], fold["folds"], fold["split_queries"]) == (1, 4, 24)
    assert fold["count"] == card["metrics"]["fine_tuned"]["ndcg@10"]["n"] < 24
