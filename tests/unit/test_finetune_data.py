"""Training data for encoder fine-tuning: pairs that respect the held-out fold, batches, hard-negative mining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.training_encoder import load_pair_source
from evals.folds import in_fold
from retrieval.finetune import TrainingPair, batches, mine_hard_negatives


def write_beir(root: Path, queries: int = 40) -> Path:
    """A small BEIR folder: query ``qN`` is relevant to ``dN`` (and ``q0`` also to ``d1``), plus distractors."""
    folder = root / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"Topic {i}", "text": f"A passage about topic number {i}."} for i in range(50)]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs), encoding="utf-8")
    qs = [{"_id": f"q{i}", "text": f"what about topic {i}?"} for i in range(queries + 5)]  # 5 unjudged
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in qs), encoding="utf-8")
    rows = ["query-id\tcorpus-id\tscore", "q0\td1\t1", "q1\td0\t0"] + [f"q{i}\td{i}\t1" for i in range(queries)]
    (folder / "qrels" / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_pairs_leave_out_the_held_out_fold(tmp_path: Path) -> None:
    source = load_pair_source(pack=None, beir=write_beir(tmp_path), split="train", folds=5, fold=2)
    judged = [f"q{i}" for i in range(40)]
    held = set(in_fold(judged, 5, 2))
    assert set(source.held_out_ids()) == held
    assert set(source.train_ids()) == set(judged) - held
    pairs = source.pairs()
    assert pairs
    assert not {p.query_id for p in pairs} & held
    assert all(p.passage_id != "d0" or p.query_id == "q0" for p in pairs)  # grade 0 is not a positive
    if "q0" not in held:
        assert {p.passage_id for p in pairs if p.query_id == "q0"} == {"d0", "d1"}
    everything = load_pair_source(pack=None, beir=write_beir(tmp_path / "all"), split="train", folds=0, fold=0)
    assert {p.query_id for p in everything.pairs()} == set(judged)
    assert everything.held_out_ids() == []


def test_pair_source_refuses_bad_arguments(tmp_path: Path) -> None:
    folder = write_beir(tmp_path)
    with pytest.raises(ValueError, match="one of them"):
        load_pair_source(pack=None, beir=None, split="train", folds=5, fold=0)
    with pytest.raises(ValueError, match="--fold"):
        load_pair_source(pack=None, beir=folder, split="train", folds=5, fold=5)


def test_pack_pairs_use_item_texts_and_respect_the_fold() -> None:
    source = load_pair_source(pack=Path("data/demo"), beir=None, split="train", folds=5, fold=0)
    pairs = source.pairs()
    held = set(source.held_out_ids())
    assert held
    assert pairs
    assert not {p.query_id for p in pairs} & held
    items = {doc: text for doc, text in zip(source.data.corpus_ids, source.data.corpus_texts, strict=True)}
    assert all(items[p.passage_id] == p.passage for p in pairs)


def pairs_for(n: int, shared_passage: bool = False) -> list[TrainingPair]:
    return [
        TrainingPair(
            f"q{i}",
            f"query {i}",
            "d0" if shared_passage and i % 2 else f"d{i}",
            "p0" if shared_passage and i % 2 else f"passage {i}",
        )
        for i in range(n)
    ]


def test_batches_never_repeat_a_text_and_keep_every_pair() -> None:
    pairs = pairs_for(20, shared_passage=True)
    pairs += [TrainingPair("q1", "query 1", "d99", "passage 99")]  # a second passage of one query
    cut = batches(pairs, 4, np.random.default_rng(0))
    assert sorted(map(repr, (p for b in cut for p in b))) == sorted(map(repr, pairs))
    for batch in cut:
        assert 1 <= len(batch) <= 4
        texts = [t for p in batch for t in (p.query, p.passage)]
        assert len(texts) == len(set(texts))
    assert cut == batches(pairs, 4, np.random.default_rng(0))  # seeded


def test_batches_stay_full_when_one_query_has_many_passages() -> None:
    many = [TrainingPair("big", "big query", f"b{i}", f"big passage {i}") for i in range(30)]
    pairs = pairs_for(12) + many
    uncapped = batches(pairs, 4, np.random.default_rng(0))
    assert len(uncapped) >= 30  # one query, 30 passages: 30 batches at least
    assert [len(b) for b in uncapped[:3]] == [4, 4, 4]  # dealt round by round: the first batches are full
    capped = batches(pairs, 4, np.random.default_rng(0), max_per_query=3)
    assert sum(p.query_id == "big" for b in capped for p in b) == 3
    assert sum(len(b) for b in capped) == 15
    assert len(capped) <= 5


def test_mining_skips_judged_passages_and_near_ties() -> None:
    ids = ["pos", "judged", "tie", "hard", "easy"]
    texts = [f"text {i}" for i in ids]
    query = np.array([1.0, 0.0], dtype=np.float32)
    angles = {"pos": 0.2, "judged": 0.1, "tie": 0.21, "hard": 0.6, "easy": 1.5}
    corpus = np.array([[np.cos(angles[i]), np.sin(angles[i])] for i in ids], dtype=np.float32)
    pair = TrainingPair("q", "query", "pos", "text pos")
    mined = mine_hard_negatives(
        [pair], ids, texts, corpus, {"q": query}, skip={"q": ["judged"]}, depth=1, margin=0.05, seed=1
    )
    assert mined[0].negative_id == "hard"  # "judged" is skipped, "tie" scores within 5% of the positive
    assert mined[0].negative == "text hard"
    wider = mine_hard_negatives([pair] * 20, ids, texts, corpus, {"q": query}, skip={"q": ["judged"]}, depth=2)
    assert {p.negative_id for p in wider} <= {"hard", "easy"}
    with pytest.raises(ValueError, match="no query vector"):
        mine_hard_negatives([pair], ids, texts, corpus, {})
