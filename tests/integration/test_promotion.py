"""Gated promotion of recommenders through a real MLflow file store and real held-out evaluation runs.

Recommenders are trained on the demo pack with ``app.training.train_recommender`` (held-out evaluation skipped
there: promotion runs its own) and registered; ``app.promotion`` evaluates a candidate beside production on each
shopper's latest interaction and gates on the figures. The audit log is a recording stub. Promotion reads the pack
and the registry, never the index, so the state folder here starts empty.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from app.promotion import Promotion, evaluate, promote, rollback
from app.settings import Settings, load_settings
from app.training import InteractionSource, TrainedRecommender, load_source, train_recommender
from retrieval.collaborative import CollaborativeModel, Kind
from retrieval.encoder import Encoder
from retrieval.registry import PRODUCTION, ModelRegistry, ModelVersion
from tests.conftest import DEMO_PACK

HELD_OUT = "recommendation.heldout"


class AuditStub:
    """Records what promotion chains into the audit log."""

    def __init__(self) -> None:
        self.records: list[tuple[dict[str, Any], dict[str, str]]] = []

    def __call__(self, change: dict[str, Any], context: dict[str, str]) -> str:
        self.records.append((change, context))
        return f"audit-{len(self.records)}"


def settings_for(state: Path, pack: Path = DEMO_PACK) -> Settings:
    return load_settings(
        overrides={"paths": {"state_dir": str(state), "pack": str(pack)}, "logging": {"access_log": False}}
    )


def trained(
    settings: Settings, source: InteractionSource, kind: Kind, encoder: Encoder, registry: ModelRegistry, out: Path
) -> TrainedRecommender:
    lines: list[str] = []
    result = train_recommender(
        settings,
        source,
        kind=kind,
        seed=13,
        encoder=encoder,
        registry=registry,
        out=out,
        evaluate=False,
        progress=False,
        say=lines.append,
    )
    assert any("each shopper's latest held out" in line for line in lines)
    return result


def register_inverted(registry: ModelRegistry, good: TrainedRecommender, folder: Path) -> ModelVersion:
    """A certainly worse recommender: the learned weights negated, so what shoppers take next ranks last."""
    model = CollaborativeModel.load(good.folder)
    model.weights = -np.asarray(model.weights)
    return registry.register(
        "recommender",
        model.save(folder),
        params={"kind": model.kind, "broken": "weights negated"},
        metrics={},
        tags={"parent": good.version.ref if good.version else "", "description": "deliberately broken"},
        card={"model": "inverted (test)"},
    )


def candidate_ndcg(gate_checks: list[dict[str, Any]]) -> float:
    return float(next(c["value"] for c in gate_checks if c["key"].startswith(f"{HELD_OUT}/registered/ndcg@10")))


def test_gated_promotion_forced_promotion_and_rollback(tmp_path: Path, encoder: Encoder) -> None:
    settings = settings_for(tmp_path / "state")
    registry = ModelRegistry(settings.registry_uri, tmp_path / "cache")
    source = load_source(None, None, settings)
    ease = trained(settings, source, "ease", encoder, registry, tmp_path / "ease")
    knn = trained(settings, source, "item-knn", encoder, registry, tmp_path / "knn")
    assert ease.version is not None
    assert knn.version is not None
    assert (ease.version.version, knn.version.version) == (1, 2)
    assert ease.evaluation is None  # evaluate=False: no held-out run, no held-out metrics
    assert set(ease.version.metrics) == {"validation_ndcg_at_10"}
    assert ease.version.params["kind"] == "ease"
    assert ease.version.tags["data_hash"] == source.digest
    assert registry.card(ease.version)["data"]["hash"] == source.digest
    assert (registry.local_path(ease.version) / "recommender.json").is_file()
    inverted = register_inverted(registry, ease, tmp_path / "inverted")
    audit = AuditStub()

    def promote_as(version: ModelVersion, by: str, *, force: bool, reason: str) -> Promotion:
        return promote(
            settings,
            registry,
            version,
            by=by,
            force=force,
            reason=reason,
            record=audit,
            encoder=encoder,
            progress=False,
        )

    # Nothing in production: the candidate must beat most-popular on the held-out interactions.
    first = promote_as(ease.version, "alice", force=False, reason="first")
    assert first.promoted
    assert not first.forced
    assert first.production is None
    assert [g.status for g in first.gates] == ["passed"]
    assert "system=most-popular" in first.gates[0].rule
    assert first.audit_id == "audit-1"
    change, context = audit.records[0]
    assert change["action"] == "promote"
    assert (change["version"], change["previous"], change["forced"]) == ("recommender:1", None, False)
    assert context["user"] == "alice"
    assert Path(first.runs["candidate"]).is_relative_to(tmp_path / "state")  # runs stay in the state folder
    assert json.loads((Path(first.runs["candidate"]) / "results.json").read_text(encoding="utf-8"))["gates"]
    assert registry.get("recommender", PRODUCTION).version == 1

    # With a version in production, a candidate is also compared with it, evaluated on the same interactions.
    compared = evaluate(settings, registry, knn.version, encoder=encoder, progress=False)
    assert compared.production is not None
    assert compared.production.version == 1
    assert [g.skipped for g in compared.gates] == [False, False]
    assert "> baseline" in compared.gates[1].rule
    assert compared.gates[1].checks[0]["threshold"] == first.gates[0].checks[0]["value"]  # production's figure
    assert registry.get("recommender", PRODUCTION).version == 1  # evaluating changes nothing

    # A certainly worse candidate is refused with readable reasons, and nothing changes.
    refused = promote_as(inverted, "bob", force=False, reason="try it")
    assert not refused.promoted
    assert refused.production is not None
    assert refused.production.version == 1
    assert [g.status for g in refused.gates] == ["failed", "failed"]  # below most-popular, and below production
    beats_popular, beats_production = refused.gates
    assert f"{HELD_OUT}/registered/ndcg@10 = " in beats_popular.reason
    assert "needs > " in beats_popular.reason
    assert "(baseline " in beats_production.reason
    worse = candidate_ndcg(beats_production.checks)
    assert worse < beats_production.checks[0]["threshold"]
    assert set(refused.runs) == {"candidate", "production"}
    assert refused.audit_id is None
    assert len(audit.records) == 1
    assert registry.get("recommender", PRODUCTION).version == 1
    assert len(registry.promotions("recommender")) == 1

    # Forced: promoted past the failed gates, and recorded as forced.
    forced = promote_as(inverted, "bob", force=True, reason="override for the test")
    assert forced.promoted
    assert forced.forced
    assert not forced.gates_passed
    change, context = audit.records[-1]
    assert (change["version"], change["previous"], change["forced"]) == ("recommender:3", "recommender:1", True)
    assert [g["status"] for g in change["gates"]] == ["failed", "failed"]
    assert change["reason"] == "override for the test"
    assert context["user"] == "bob"
    assert registry.get("recommender", PRODUCTION).version == 3
    assert registry.promotions("recommender")[-1]["forced"] is True
    assert registry.get("recommender", 3).tags["promotion_forced"] == "true"

    # The version in production is not promoted again, forced or not, and nothing is recorded.
    again = promote_as(inverted, "bob", force=True, reason="again")
    assert not again.promoted
    assert [g.status for g in again.gates] == ["failed"]
    assert len(audit.records) == 2

    # Rollback restores the first version and chains the change.
    after, before, audit_id = rollback(registry, "recommender", by="carol", record=audit)
    assert (after.version, before.version if before else None) == (1, 3)
    assert audit_id == "audit-3"
    change, context = audit.records[-1]
    assert (change["action"], change["version"], change["previous"]) == ("rollback", "recommender:1", "recommender:3")
    assert context["user"] == "carol"
    assert registry.get("recommender", PRODUCTION).version == 1


def test_a_catalog_change_does_not_block_a_forced_promotion(tmp_path: Path, encoder: Encoder) -> None:
    """BUG: once the served pack gains an item, the version in production (trained on the old catalog) cannot be
    evaluated on the new one: ``evaluate`` raises ValueError before ``force`` is looked at, so no retrained model
    can ever be promoted (the registry's alias has to be moved by hand)."""
    old_settings = settings_for(tmp_path / "state")
    registry = ModelRegistry(old_settings.registry_uri, tmp_path / "cache")
    old_source = load_source(None, None, old_settings)
    old = trained(old_settings, old_source, "ease", encoder, registry, tmp_path / "old")
    assert old.version is not None
    registry.promote(old.version, by="alice", forced=False, reason="served before the catalog grew")

    pack = tmp_path / "pack"
    shutil.copytree(DEMO_PACK, pack)
    first_item = json.loads((DEMO_PACK / "items.jsonl").read_text(encoding="utf-8").splitlines()[0])
    with (pack / "items.jsonl").open("a", encoding="utf-8") as items:
        items.write(json.dumps({**first_item, "id": "NEW-ITEM-0001", "title": "A new item"}) + "\n")
    new_settings = settings_for(tmp_path / "state", pack)
    source = load_source(None, None, new_settings)
    assert len(source.data.item_ids) == len(old_source.data.item_ids) + 1
    new = trained(new_settings, source, "ease", encoder, registry, tmp_path / "new")
    assert new.version is not None

    outcome = promote(
        new_settings,
        registry,
        new.version,
        by="bob",
        force=True,
        reason="catalog grew",
        record=AuditStub(),
        encoder=encoder,
        progress=False,
    )
    assert outcome.promoted
    assert registry.get("recommender", PRODUCTION).version == new.version.version
