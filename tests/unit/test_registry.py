"""The model registry over a real MLflow file store in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.registry import PRODUCTION, ModelRegistry, ModelVersion, RegistryError, default_uri

CARD_ONE = {"model": "candor recommender (ease)", "metrics": {"ndcg@10": 0.21}, "limitations": ["small data"]}
CARD_TWO = {"model": "candor recommender (hybrid)", "metrics": {"ndcg@10": 0.25}, "per_group": [{"group": "a"}]}


def model_folder(root: Path, name: str, marker: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "recommender.json").write_text(json.dumps({"marker": marker}), encoding="utf-8")
    (folder / "weights.npy").write_bytes(marker.encode() * 10)
    return folder


def register_two(registry: ModelRegistry, root: Path) -> tuple[ModelVersion, ModelVersion]:
    first = registry.register(
        "recommender",
        model_folder(root, "one", "first"),
        params={"kind": "ease", "regularization": 500.0, "seed": 13},
        metrics={"validation_ndcg_at_10": 0.21},
        tags={"data_hash": "abc123", "trained_on": "pack:demo", "parent": ""},
        card=CARD_ONE,
    )
    second = registry.register(
        "recommender",
        model_folder(root, "two", "second"),
        params={"kind": "hybrid", "content_weight": 0.2},
        metrics={"validation_ndcg_at_10": 0.25, "heldout_ndcg_at_10": 0.3},
        tags={"data_hash": "def456", "trained_on": "pack:demo", "parent": "recommender:1"},
        card=CARD_TWO,
    )
    return first, second


def open_registry(root: Path) -> ModelRegistry:
    return ModelRegistry(default_uri(root / "state"), root / "cache")


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, ModelVersion, ModelVersion]:
    """A file-store registry with two recommender versions and no promotion (tests here only read it)."""
    root = tmp_path_factory.mktemp("registry")
    registry = open_registry(root)
    return (registry, *register_two(registry, root))


def test_default_uri_is_a_file_store_under_the_state_folder(tmp_path: Path) -> None:
    uri = default_uri(tmp_path / "state")
    assert uri.startswith("file:")
    assert uri.endswith("/state/registry")


def test_versions_carry_params_metrics_and_tags(registered: tuple[ModelRegistry, ModelVersion, ModelVersion]) -> None:
    registry, first, second = registered
    assert (first.version, second.version) == (1, 2)
    assert (first.ref, second.ref) == ("recommender:1", "recommender:2")
    assert first.run_id
    assert second.run_id
    assert first.run_id != second.run_id
    # Parameters are logged as text (JSON for non-strings), metrics as numbers.
    assert first.params == {"kind": "ease", "regularization": "500.0", "seed": "13"}
    assert first.metrics == {"validation_ndcg_at_10": pytest.approx(0.21)}
    assert second.metrics == {"validation_ndcg_at_10": pytest.approx(0.25), "heldout_ndcg_at_10": pytest.approx(0.3)}
    assert first.tags["data_hash"] == "abc123"
    assert second.tags["parent"] == "recommender:1"
    assert first.aliases == ()
    listed = registry.versions("recommender")
    assert [v.version for v in listed] == [2, 1]  # newest first
    assert listed[1].to_dict()["params"] == first.params
    assert registry.versions("encoder") == []  # another kind is another registered model


def test_get_by_number_and_latest(registered: tuple[ModelRegistry, ModelVersion, ModelVersion]) -> None:
    registry, first, second = registered
    assert registry.get("recommender", 1).run_id == first.run_id
    assert registry.get("recommender", "2").run_id == second.run_id
    assert registry.get("recommender", "latest").version == 2
    with pytest.raises(RegistryError, match="'7'"):
        registry.get("recommender", 7)
    with pytest.raises(RegistryError):
        registry.get("recommender", PRODUCTION)  # nothing promoted in this registry
    with pytest.raises(RegistryError, match="no encoder is registered"):
        registry.get("encoder", "latest")
    assert registry.production("recommender") is None
    assert registry.promotions("recommender") == []


def test_local_path_holds_the_model_files_and_the_card_round_trips(
    registered: tuple[ModelRegistry, ModelVersion, ModelVersion],
) -> None:
    registry, first, second = registered
    for version, marker in ((first, "first"), (second, "second")):
        folder = registry.local_path(version)
        assert folder.is_dir()
        assert sorted(p.name for p in folder.iterdir()) == ["recommender.json", "weights.npy"]
        assert json.loads((folder / "recommender.json").read_text(encoding="utf-8")) == {"marker": marker}
        assert (folder / "weights.npy").read_bytes() == marker.encode() * 10
    assert registry.card(first) == CARD_ONE
    assert registry.card(second) == CARD_TWO


def test_promote_records_the_move_and_rollback_steps_back(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    first, second = register_two(registry, tmp_path)
    with pytest.raises(RegistryError, match="no earlier"):
        registry.rollback("recommender", by="carol")  # nothing in production

    promoted = registry.promote(first, by="alice", forced=False, reason="beats most-popular")
    assert promoted.aliases == (PRODUCTION,)
    assert promoted.tags["promoted_by"] == "alice"
    assert promoted.tags["promotion_forced"] == "false"
    production = registry.production("recommender")
    assert production is not None
    assert production.version == 1
    assert registry.get("recommender", PRODUCTION).version == 1
    with pytest.raises(RegistryError, match="no earlier"):
        registry.rollback("recommender", by="carol")  # only one version ever served

    registry.promote(second, by="bob", forced=True, reason="gates failed, shipping anyway")
    assert registry.get("recommender", PRODUCTION).version == 2
    assert registry.get("recommender", 2).tags["promotion_forced"] == "true"
    assert registry.get("recommender", 1).aliases == ()  # the alias moved
    moves = registry.promotions("recommender")
    assert [(m["version"], m["by"], m["forced"], m["reason"]) for m in moves] == [
        (1, "alice", False, "beats most-popular"),
        (2, "bob", True, "gates failed, shipping anyway"),
    ]
    assert moves[0]["at"] <= moves[1]["at"]

    back = registry.rollback("recommender", by="carol")
    assert back.version == 1
    assert back.aliases == (PRODUCTION,)
    assert back.tags["promoted_by"] == "carol"
    assert registry.get("recommender", PRODUCTION).version == 1
    last = registry.promotions("recommender")[-1]
    assert (last["version"], last["by"], last["forced"]) == (1, "carol", False)
    assert last["reason"] == "rollback from version 2"
    # A fresh client on the same store reads the same state.
    reopened = open_registry(tmp_path)
    assert reopened.get("recommender", PRODUCTION).version == 1
    assert len(reopened.promotions("recommender")) == 3
