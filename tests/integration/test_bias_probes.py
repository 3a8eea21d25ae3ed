"""Counterfactual probes through the real encoder: a small catalog searched with gender-swapped queries, and the
overlap baseline answering them; neutral queries keep their results, gendered product words move them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.bias import BiasOptions, run_bias_audit
from evals.suite import (
    AnswerSpec,
    BiasSpec,
    CounterfactualSpec,
    LoadedSuite,
    RecommendationTask,
    Suite,
    SuiteMeta,
    SystemSpec,
)
from retrieval.encoder import Encoder
from tests.unit.test_bias import constructed_pack

pytestmark = pytest.mark.integration

PRODUCTS = [
    ("Stainless steel chef knife", "Kitchen > Knives"),
    ("Non-stick frying pan 28 cm", "Kitchen > Cookware"),
    ("Trail running shoes", "Footwear > Running"),
    ("Leather wallet with coin pocket", "Accessories > Wallets"),
    ("Cotton bath towel set", "Home > Bath"),
    ("Analog wrist watch with steel strap", "Accessories > Watches"),
    ("Yoga mat 6 mm", "Sports > Yoga"),
    ("Wireless earbuds", "Electronics > Audio"),
]


def test_probes_through_the_real_encoder(tmp_path: Path, encoder: Encoder) -> None:
    pack = constructed_pack(tmp_path / "pack", biased=False, users=20)
    items = [json.loads(line) for line in (pack / "items.jsonl").read_text().splitlines()]
    for item, (title, category) in zip(items, PRODUCTS * 5, strict=False):
        item["title"], item["category"] = title, category
    (pack / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (tmp_path / "swaps").mkdir()
    (tmp_path / "swaps" / "generalized_swaps.txt").write_text("son\tdaughter\nhusband\twife\nmen\twomen\n")
    (tmp_path / "pairs.csv").write_text("a,b\nwatch for men,watch for women\n")
    spec = CounterfactualSpec(
        dataset=str(pack),
        swaps=str(tmp_path / "swaps"),
        pairs_file=str(tmp_path / "pairs.csv"),
        templates=["a chef knife for my {term}", "running shoes for my {term}"],
        terms=["son", "husband"],
        k=5,
        min_mean_rbo=0.2,
    )
    task = RecommendationTask(dataset=str(pack), format="pack", recommenders=["most-popular"], groups=["gender"])
    suite = Suite(
        suite=SuiteMeta(name="probes", bootstrap=0),
        system=SystemSpec(answer=AnswerSpec(backend="overlap-baseline")),
        recommendation={"t": task},
        bias=BiasSpec(counterfactual=spec),
    )
    run = run_bias_audit(
        LoadedSuite(suite, pack), BiasOptions(state_dir=tmp_path / "evals", progress=False, encoder=encoder)
    )
    probes = run.report["counterfactual"]
    assert probes["sources"] == {"csv": 1, "template": 4}
    rows = {r["a"]: r for r in probes["search"]["worst"]}
    assert set(rows) == {
        "a chef knife for my son",
        "a chef knife for my husband",
        "running shoes for my son",
        "running shoes for my husband",
        "watch for men",
    }
    # The product a query asks for stays first whoever it is for.
    assert rows["a chef knife for my son"]["top_a"][0] == rows["a chef knife for my son"]["top_b"][0]
    assert rows["running shoes for my husband"]["top_a"][0] == rows["running shoes for my husband"]["top_b"][0]
    assert probes["search"]["mean_rbo"] > 0.2
    assert probes["answer_backend"] == "overlap-baseline"
    assert 0.0 <= probes["answers"]["answer_change_rate"] <= 1.0
    assert not [f for f in run.report["findings"] if f["check"].startswith("counterfactual")]
