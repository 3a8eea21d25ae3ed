"""Which evaluation figures a model card claims for the serving encoder."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from evals.results import MetricRecord
from governance.model_card import ModelCard, model_card_to_json, render_model_card_markdown
from governance.report import INTENDED_USE, KNOWN_LIMITATIONS, ModelFacts

WEIGHTS = "sha256:bcfe46d679df602d"


def metric(name: str, value: float, task: str, system: str, series: str | None = None) -> dict[str, Any]:
    return MetricRecord(
        name=name,
        value=value,
        higher_is_better=True,
        task=task,
        dataset="data/demo",
        split="test",
        system=system,
        series=series,
        ci_low=value - 0.01,
        ci_high=value + 0.01,
        n=50,
    ).to_json()


def card(evaluated: str | None) -> ModelCard:
    evaluation = {
        "run_id": "run-1",
        "suite": "demo",
        "started_at": "2026-11-26T20:00:00+00:00",
        "system": {"encoder": {"version": evaluated} if evaluated else None},
        "metrics": [
            metric("ndcg@10", 0.4321, "retrieval.search", "all-MiniLM-L6-v2 flat"),
            metric("hr@10", 0.2345, "recommendation.shoppers", "embedding", series="embedding"),
            metric("hr@10", 0.1111, "recommendation.shoppers", "als", series="als"),
        ],
    }
    model = ModelFacts(role="encoder", name="all-MiniLM-L6-v2", version=WEIGHTS, path="/m", dim=384)
    return ModelCard(
        generated_at=datetime(2026, 11, 26, tzinfo=UTC),
        model=model,
        intended_use=INTENDED_USE,
        limitations=KNOWN_LIMITATIONS,
        evaluation=evaluation,
        config_hash="sha256:c",
        code_hash="abc",
    )


def test_figures_of_encoder_based_systems_with_the_same_weights() -> None:
    text = render_model_card_markdown(card(WEIGHTS))
    assert "`retrieval.search/ndcg@10` | all-MiniLM-L6-v2 flat | 0.4321 | [0.4221, 0.4421] | 50 |" in text
    assert "recommendation.shoppers/embedding/hr@10" in text
    assert "als" not in text  # ALS does not use the encoder
    keys = [m["key"] for m in model_card_to_json(card(WEIGHTS))["evaluation"]["metrics"]]
    assert keys == ["retrieval.search/ndcg@10", "recommendation.shoppers/embedding/hr@10"]


def test_no_figures_claimed_for_other_weights() -> None:
    for evaluated in ("sha256:0000000000000000", None):
        text = render_model_card_markdown(card(evaluated))
        assert "no figures measured with these weights" in text
        assert "0.4321" not in text
        assert model_card_to_json(card(evaluated))["evaluation"]["metrics"] == []
