"""Recommenders and split protocols on small interaction sets."""

from __future__ import annotations

import numpy as np
import pytest

from evals.recommend_task import leave_last_out, split_official
from evals.recommenders import ALS, EmbeddingRecommender, ItemKNN, MostPopular, TrainData
from retrieval.recommend import history_from_interactions, history_scores
from retrieval.settings import RecommenderSettings
from retrieval.types import Interaction

ITEMS = ["a", "b", "c", "d", "e"]


def _events(pairs: list[tuple[str, str]], event: str = "view") -> list[Interaction]:
    return [Interaction(u, i, event, 1.0, float(t)) for t, (u, i) in enumerate(pairs)]  # type: ignore[arg-type]


# Users who take "a" also take "b"; "c" is popular on its own.
TRAIN = _events(
    [
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "a"),
        ("u2", "b"),
        ("u3", "a"),
        ("u3", "c"),
        ("u4", "c"),
        ("u5", "c"),
        ("u6", "a"),
        ("u1", "a"),  # a repeat counts once
    ]
)


def test_train_data_is_binary() -> None:
    data = TrainData.build(TRAIN, ITEMS)
    assert data.matrix.shape == (6, 5)
    assert data.matrix[data.user_rows["u1"]].toarray().tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]
    assert data.popularity.tolist() == [4.0, 2.0, 3.0, 0.0, 0.0]


def test_most_popular_and_item_knn() -> None:
    data = TrainData.build(TRAIN, ITEMS)
    pop = MostPopular()
    pop.fit(data)
    assert pop.scores(["u4", "u6"]).tolist() == [[4.0, 2.0, 3.0, 0.0, 0.0]] * 2
    knn = ItemKNN(neighbours=2)
    knn.fit(data)
    scores = knn.scores(["u6"])[0]  # u6 took only "a": "b" co-occurs with it most
    assert int(np.argmax(np.where([False, True, True, True, True], scores, -1))) == 1
    assert scores[1] == pytest.approx(2 / np.sqrt(4 * 2))


def test_als_is_seeded_and_learns_co_occurrence() -> None:
    data = TrainData.build(TRAIN * 5, ITEMS)
    runs = []
    for _ in range(2):
        als = ALS(factors=4, iterations=10, regularization=0.01, alpha=1.0, seed=3)
        als.fit(data)
        runs.append(als.scores(["u6", "u4"]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0][0][1] > runs[0][0][4]  # "b" (taken with "a") beats the untouched "e"
    assert "implicit" in ALS(4, 1, 0.1, 1.0, 0).describe()["library"]


def test_embedding_recommender_scores_like_the_service() -> None:
    vectors = np.eye(5, dtype=np.float32)
    vectors[1] = np.array([0.8, 0.6, 0, 0, 0], dtype=np.float32)  # "b" is close to "a"
    config = RecommenderSettings(half_life_days=0.0).to_config()
    rec = EmbeddingRecommender(vectors, config, {"name": "test"})
    data = TrainData.build(TRAIN, ITEMS)
    rec.fit(data)
    scores = rec.scores(["u6", "u1"])
    history = history_from_interactions(data.events["u1"], config)
    expected, _ = history_scores(
        vectors[[ITEMS.index(h.item_id) for h in history]].astype(np.float64),
        np.asarray([h.weight for h in history]),
        vectors,
    )
    np.testing.assert_allclose(scores[1], expected)
    assert scores[0][1] == pytest.approx(0.8)


def test_split_protocols() -> None:
    events = [
        Interaction("u1", "a", "view", 1, 10),
        Interaction("u1", "b", "view", 1, 20),
        Interaction("u1", "a", "view", 1, 30),  # the latest: "a" is held out, and not trained on
        Interaction("u2", "c", "view", 1, 5),  # a single event: nothing left to train on
        Interaction("u3", "d", "view", 1, 7),
        Interaction("u3", "e", "view", 1, 7),  # same time: file order decides
    ]
    train, held = leave_last_out(events)
    assert {(e.user_id, e.item_id) for e in train} == {("u1", "b"), ("u3", "d")}
    assert {u: [e.item_id for e in evs] for u, evs in held.items()} == {"u1": ["a"], "u3": ["e"]}
    base = [Interaction("u1", "a", "rating", 4, 1), Interaction("u2", "b", "rating", 3, 1)]
    test = [
        Interaction("u1", "a", "rating", 5, 2),
        Interaction("u1", "c", "rating", 2, 2),
        Interaction("u9", "a", "rating", 5, 2),
    ]
    train, held = split_official(base, test)
    assert {u: [e.item_id for e in evs] for u, evs in held.items()} == {"u1": ["c"]}
