"""Candor's trained recommenders in the evaluation harness: fitted on the training split, or already registered."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evals.errors import SuiteError
from evals.rec_metrics import rank_unseen
from evals.recommend_task import leave_last_out
from evals.recommenders import MostPopular, RegisteredRecommender, TrainData, TrainedRecommender
from evals.runner import RunOptions, run_suite
from evals.suite import LoadedSuite, RecommendationTask, Suite, SuiteMeta
from retrieval import collaborative
from retrieval.collaborative import Kind
from retrieval.types import Interaction

CHAINS = 8
LENGTH = 6
HUBS = 6
ITEMS = [f"h{k}" for k in range(HUBS)] + [f"c{k}.{j}" for k in range(CHAINS) for j in range(LENGTH)]
VIEW = {"view": 1.0}


def planted(users: int = 400, seed: int = 3) -> list[Interaction]:
    """Shoppers view a hub, then walk a chain of items in order: c<k>.0, c<k>.1, ... up to c<k>.<last>.

    Held out (leave-last-out): the next step of each walk. Most-popular answers a hub or another chain's first
    steps, never it; a walk's next step is the only item that fits. Walks that reach a chain's end cannot be
    predicted (nobody took that item in training): about a quarter of them.
    """
    rng = np.random.default_rng(seed)
    events: list[Interaction] = []
    ts = 0.0
    for n in range(users):
        chain, last = n % CHAINS, int(rng.integers(2, LENGTH))
        for item in [f"h{int(rng.integers(HUBS))}", *(f"c{chain}.{j}" for j in range(last + 1))]:
            ts += 1.0
            events.append(Interaction(f"u{n:03d}", item, "view", 1.0, ts))
    return events


def hits_at_1(scores: np.ndarray, data: TrainData, users: list[str], held: dict[str, list[Interaction]]) -> float:
    """Share of users whose held-out item is ranked first among the items they have not seen in training."""
    seen = [data.matrix[data.user_rows[u]].indices for u in users]
    order = rank_unseen(scores, seen)
    return float(np.mean([order[n, 0] == data.item_index[held[u][0].item_id] for n, u in enumerate(users)]))


@pytest.mark.parametrize("kind", ["ease", "item-knn"])
def test_a_trained_recommender_beats_most_popular_on_a_planted_sequence(kind: Kind) -> None:
    train, held = leave_last_out(planted())
    data = TrainData.build(train, ITEMS)
    users = sorted(held)
    assert all(held[u][0].item_id.startswith("c") for u in users)

    trained = TrainedRecommender(kind, VIEW, seed=13)
    assert trained.name == f"candor-{kind}"
    trained.fit(data)
    popular = MostPopular()
    popular.fit(data)
    assert hits_at_1(popular.scores(users), data, users, held) == 0.0
    assert hits_at_1(trained.scores(users), data, users, held) >= 0.7  # at most about 0.75 can be predicted

    described = trained.describe()
    assert described["kind"] == kind
    assert described["scoring"] == "retrieval.collaborative.score_all"
    assert trained.report is not None
    assert described["chosen"] == trained.report.chosen
    assert "(latest)" in described["validation"]
    # A user without training interactions gets no scores (the harness never asks, but must not break).
    assert trained.scores(["stranger"]).tolist() == [[0.0] * len(ITEMS)]


def test_a_registered_model_scores_as_the_fitted_one_and_refuses_another_catalog() -> None:
    train, held = leave_last_out(planted())
    data = TrainData.build(train, ITEMS)
    users = sorted(held)
    model, _ = collaborative.fit(train, ITEMS, kind="ease", event_weights=VIEW, seed=13)

    registered = RegisteredRecommender(model, "recommender:4", VIEW)
    assert registered.name == "registered"
    registered.fit(data)
    fitted = TrainedRecommender("ease", VIEW, seed=13)
    fitted.fit(data)
    assert np.allclose(registered.scores(users), fitted.scores(users))
    assert registered.describe() == {"ref": "recommender:4", "kind": "ease", "params": model.params}

    # A catalog that changed since training is served as the service serves it: the shared items keep their
    # weights, in the task's columns; a catalog with none of the model's items is refused.
    reordered = TrainData.build(train, list(reversed(ITEMS)))
    moved = RegisteredRecommender(model, "recommender:4", VIEW)
    moved.fit(reordered)
    assert np.allclose(moved.scores(users)[:, ::-1], fitted.scores(users))
    smaller = TrainData.build([e for e in train if e.item_id != "h0"], [i for i in ITEMS if i != "h0"])
    shrunk = RegisteredRecommender(model, "recommender:4", VIEW)
    shrunk.fit(smaller)
    assert shrunk.scores(users).shape == (len(users), len(ITEMS) - 1)
    strangers = TrainData.build([], ["x1", "x2"])
    with pytest.raises(ValueError, match="another catalog"):
        RegisteredRecommender(model, "recommender:4", VIEW).fit(strangers)


# -- through the harness: how recommend_task builds candor-* and registered ---------------------------------------


def write_pack(folder: Path, items: list[str], events: list[Interaction]) -> Path:
    folder.mkdir(parents=True)
    with (folder / "items.jsonl").open("w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps({"id": item, "title": f"Item {item}", "text": f"About {item}", "category": "Things"}))
            out.write("\n")
    with (folder / "interactions.jsonl").open("w", encoding="utf-8") as out:
        for e in events:
            row = {"user_id": e.user_id, "item_id": e.item_id, "event": e.event, "value": e.value, "ts": e.ts}
            out.write(json.dumps(row) + "\n")
    return folder


def held_out_suite(pack: Path, model: str) -> LoadedSuite:
    task = RecommendationTask(
        dataset=str(pack),
        format="pack",
        recommenders=["most-popular", "candor-ease", "registered"],
        model=model,
    )
    suite = Suite(suite=SuiteMeta(name="trained-unit", seed=13, bootstrap=0), recommendation={"planted": task})
    return LoadedSuite(suite, pack / "<test suite>")


def test_the_harness_fits_candor_ease_and_scores_a_registered_folder(tmp_path: Path) -> None:
    events = planted()
    pack = write_pack(tmp_path / "pack", ITEMS, events)
    train, _ = leave_last_out(events)
    model, _ = collaborative.fit(train, ITEMS, kind="ease", event_weights=VIEW, seed=13)
    folder = model.save(tmp_path / "model")

    run = run_suite(held_out_suite(pack, str(folder)), RunOptions(state_dir=tmp_path / "evals", progress=False))
    ndcg = {m.system: m.value for m in run.metrics() if m.name == "ndcg@10" and m.group is None}
    assert set(ndcg) == {"most-popular", "candor-ease", "registered"}
    assert ndcg["candor-ease"] > ndcg["most-popular"] + 0.3
    # The folder holds what candor-ease fits on the same split: the same figures.
    assert ndcg["registered"] == pytest.approx(ndcg["candor-ease"])
    described = run.results["system"]["recommenders"]["recommendation.planted"]
    assert described["registered"]["ref"] == str(folder)
    assert described["registered"]["params"] == model.params
    chosen = described["candor-ease"]["chosen"]
    assert chosen == {"regularization": model.params["regularization"], "half_life": model.params["half_life"]}


def test_the_harness_reports_a_registered_model_of_another_catalog_as_a_suite_error(tmp_path: Path) -> None:
    """A model that knows none of the task's items is a readable suite error, not a traceback."""
    events = planted()
    pack = write_pack(tmp_path / "pack", ITEMS, events)
    renamed = [replace(e, item_id=f"other-{e.item_id}") for e in events]
    model, _ = collaborative.fit(renamed, [f"other-{i}" for i in ITEMS], kind="ease", event_weights=VIEW, seed=1)
    folder = model.save(tmp_path / "other-catalog")
    with pytest.raises(SuiteError, match="another catalog"):
        run_suite(held_out_suite(pack, str(folder)), RunOptions(state_dir=tmp_path / "evals", progress=False))
