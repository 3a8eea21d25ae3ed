"""Metric functions: hand-computed cases, and agreement with trec_eval (pytrec_eval) and ir-measures."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from evals.answer_metrics import citation_precision, exact_match, f1, faithfulness, holds_answer, normalize_answer
from evals.ir_metrics import (
    average_precision,
    evaluate_run,
    ndcg,
    parse_metric,
    rank,
    read_trec_run,
    recall,
    reciprocal_rank,
    write_trec_run,
)
from evals.rec_metrics import coverage, popular_mask, rank_unseen, user_metrics
from evals.stats import bootstrap_mean_ci, group_gap, paired_bootstrap, rng_for

pytrec_eval = pytest.importorskip("pytrec_eval")
ir_measures = pytest.importorskip("ir_measures")

# -- retrieval ------------------------------------------------------------------------------------------------


def test_retrieval_metrics_by_hand() -> None:
    ranked = ["d1", "d2", "d3", "d4"]
    judged = {"d1": 1, "d3": 2, "d5": 1, "d2": 0}
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg(ranked, judged, 3) == pytest.approx((1 / 1 + 2 / 2) / idcg)
    assert recall(ranked, judged, 3) == pytest.approx(2 / 3)
    assert recall(ranked, judged, 1) == pytest.approx(1 / 3)
    assert reciprocal_rank(["d2", "d3"], judged, 10) == pytest.approx(0.5)
    assert reciprocal_rank(["d2", "d4", "d3"], judged, 2) == 0.0
    assert average_precision(ranked, judged) == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert ndcg(ranked, {"d9": 0}, 10) == 0.0


def test_ties_rank_by_doc_id_descending_like_trec_eval() -> None:
    assert rank({"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.5}) == ["c", "b", "a", "d"]


def test_metric_names_are_validated() -> None:
    assert parse_metric("NDCG@10").name == "ndcg@10"
    assert parse_metric("map").name == "map"
    for bad in ("ndcg", "recall@0", "bleu@4"):
        with pytest.raises(ValueError, match="metric"):
            parse_metric(bad)


def _random_case(seed: int, *, ties: bool) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    rng = random.Random(seed)
    docs = [f"d{i:03d}" for i in range(150)]
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for q in range(25):
        qid = f"q{q}"
        retrieved = rng.sample(docs, 120)
        if ties:
            run[qid] = {d: float(rng.randint(0, 30)) for d in retrieved}
        else:
            run[qid] = {d: rng.random() for d in retrieved}
        judged = rng.sample(docs, rng.randint(1, 12))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        qrels[qid][judged[0]] = max(qrels[qid][judged[0]], 1)
    return run, qrels


@pytest.mark.parametrize("ties", [False, True])
def test_agreement_with_pytrec_eval(ties: bool, tmp_path: Path) -> None:
    run, qrels = _random_case(7 if ties else 3, ties=ties)
    path = tmp_path / "run.trec"
    write_trec_run(path, run, tag="test")
    from_file = read_trec_run(path)
    ours = evaluate_run(from_file, qrels, ["ndcg@10", "recall@10", "recall@100", "map", "precision@5", "mrr@10"])
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recall.100", "map", "P.5"})
    ref = reference.evaluate(from_file)
    # trec_eval's recip_rank has no cutoff: evaluate the run cut to its top 10 (in trec_eval's order).
    top10 = {q: {d: from_file[q][d] for d in rank(from_file[q])[:10]} for q in from_file}
    ref_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    names = {"ndcg@10": "ndcg_cut_10", "recall@10": "recall_10", "recall@100": "recall_100", "map": "map"}
    for qid in qrels:
        for ours_name, ref_name in names.items():
            assert ours[ours_name][qid] == pytest.approx(ref[qid][ref_name], abs=1e-6), (qid, ours_name)
        assert ours["precision@5"][qid] == pytest.approx(ref[qid]["P_5"], abs=1e-6)
        assert ours["mrr@10"][qid] == pytest.approx(ref_rr[qid]["recip_rank"], abs=1e-6)


def test_agreement_with_ir_measures_on_a_run_file(tmp_path: Path) -> None:
    run, qrels = _random_case(11, ties=False)
    path = tmp_path / "run.trec"
    write_trec_run(path, run, tag="test")
    from_file = read_trec_run(path)
    measures = {"ndcg@10": "nDCG@10", "recall@100": "R@100", "mrr@10": "RR@10", "map": "AP"}
    ours = evaluate_run(from_file, qrels, list(measures))
    parsed = {name: ir_measures.parse_measure(m) for name, m in measures.items()}
    aggregate = ir_measures.calc_aggregate(list(parsed.values()), qrels, from_file)
    for name, measure in parsed.items():
        assert float(np.mean(list(ours[name].values()))) == pytest.approx(aggregate[measure], abs=1e-6), name


# -- recommendation -------------------------------------------------------------------------------------------


def test_recommendation_metrics_by_hand() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    seen = [np.array([0]), np.array([4])]
    order = rank_unseen(scores, seen)
    assert order[0].tolist() == [1, 2, 4, 3, 0]  # item 0 was seen: last
    assert order[1].tolist() == [3, 2, 1, 0, 4]
    popularity = np.array([10.0, 5.0, 1.0, 0.0, 3.0])
    popular = popular_mask(popularity, share=0.2)
    assert popular.tolist() == [True, False, False, False, False]
    m = user_metrics(order, [np.array([4]), np.array([0, 1])], 2, popularity, n_users=10, popular=popular)
    assert m.hr.tolist() == [0.0, 0.0]
    m = user_metrics(order, [np.array([2]), np.array([2, 1])], 2, popularity, n_users=10, popular=popular)
    assert m.hr.tolist() == [1.0, 1.0]
    assert m.ndcg[0] == pytest.approx((1 / math.log2(3)) / 1.0)
    assert m.ndcg[1] == pytest.approx(1 / math.log2(3) / (1 + 1 / math.log2(3)))
    assert m.mrr.tolist() == pytest.approx([0.5, 0.5])
    info = -np.log2((popularity + 1) / 11)
    assert m.novelty[0] == pytest.approx((info[1] + info[2]) / 2)
    assert m.popularity_bias.tolist() == [0.0, 0.0]
    assert coverage(m.top_k, 5) == pytest.approx(3 / 5)


# -- answers --------------------------------------------------------------------------------------------------


def test_squad_normalisation_and_scores() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an Apple a day") == "apple day"
    assert exact_match("the Denver Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    # prediction "cat sat on mat" vs gold "the cat sat": 2 shared tokens, P = 2/4, R = 2/2
    assert f1("cat sat on mat", ["the cat sat"]) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert f1("dog", ["cat", "a dog"]) == 1.0
    assert f1("", ["cat"]) == 0.0


def test_an_answer_holds_a_gold_span_as_whole_words() -> None:
    sentence = "Orders arrive in 3 to 7 business days, once shipped."
    assert holds_answer(sentence, ["3 to 7 business days"]) == 1.0
    assert exact_match(sentence, ["3 to 7 business days"]) == 0.0  # what exact match misses
    assert holds_answer("The Denver Broncos won.", ["denver broncos!"]) == 1.0  # normalised on both sides
    assert holds_answer("Orders arrive in 13 to 7 days", ["3 to 7 days"]) == 0.0  # whole words only
    assert holds_answer("anything", ["", "the"]) == 0.0  # an answer that normalises to nothing holds nothing
    assert holds_answer("", ["cat"]) == 0.0


def test_citations_and_faithfulness() -> None:
    passages = {"p1": "Super Bowl 50 was won by the Denver Broncos.", "p2": "Paris is in France."}
    assert citation_precision(["p1", "p2"], passages, ["Denver Broncos"], ()) == 0.5
    assert citation_precision(["p2"], passages, ["Denver Broncos"], {"p2"}) == 1.0
    assert citation_precision([], passages, ["x"], ()) is None
    assert faithfulness("the Denver Broncos", [passages["p1"]]) == 1.0
    assert faithfulness("Denver Broncos in Paris", [passages["p1"]]) == pytest.approx(2 / 4)
    assert faithfulness("Denver", []) == 0.0


# -- statistics -----------------------------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_covers_the_mean() -> None:
    values = np.linspace(0.0, 1.0, 200)
    a = bootstrap_mean_ci(values, rng_for(1, "x"), 500)
    b = bootstrap_mean_ci(values, rng_for(1, "x"), 500)
    c = bootstrap_mean_ci(values, rng_for(2, "x"), 500)
    assert a == b
    assert a != c
    assert a is not None
    assert a[0] < values.mean() < a[1]
    assert bootstrap_mean_ci(np.array([1.0]), rng_for(1), 100) is None


def test_group_gap_and_small_groups() -> None:
    values = np.array([1.0] * 20 + [0.0] * 20 + [0.5] * 3)
    labels = ["a"] * 20 + ["b"] * 20 + ["tiny"] * 3
    stat = group_gap(values, labels, rng_for(0), 200, min_size=10)
    assert stat.gap == pytest.approx(1.0)
    assert (stat.best, stat.worst) == ("a", "b")
    assert stat.excluded == ["tiny"]
    assert stat.gap_ci is not None
    assert stat.gap_ci == pytest.approx((1.0, 1.0))
    assert {g.group: g.n for g in stat.groups} == {"a": 20, "b": 20, "tiny": 3}


def test_paired_bootstrap_pairs_units() -> None:
    a = {f"u{i}": float(i % 2) for i in range(100)}
    same = paired_bootstrap(a, dict(a), rng_for(0), 200)
    assert same is not None
    assert same.diff == 0.0
    assert same.ci == (0.0, 0.0)
    better = paired_bootstrap(a, {u: v + 0.1 for u, v in a.items()}, rng_for(0), 200)
    assert better is not None
    assert better.diff == pytest.approx(0.1)
    assert better.ci is not None
    assert better.ci[0] > 0
    assert paired_bootstrap({"x": 1.0}, {"y": 1.0}, rng_for(0), 10) is None
