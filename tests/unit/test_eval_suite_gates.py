"""Suites and --set overrides, gate rules, run comparison and the embedding cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from evals.cache import EmbeddingCache
from evals.compare import compare_runs, format_rows
from evals.errors import GateError, SuiteError
from evals.gates import evaluate_gates, parse_rule
from evals.results import LoadedRun, MetricRecord
from evals.suite import SUITES_DIR, load_suite


def test_shipped_suites_load() -> None:
    for name in ("demo", "scifact", "movielens", "squad"):
        loaded = load_suite(name)
        assert loaded.suite.suite.name == name
        assert loaded.path == SUITES_DIR / f"{name}.toml"
    demo = load_suite("demo").suite
    assert demo.retrieval["search"].metrics[0] == "ndcg@10"
    assert demo.recommendation["shoppers"].recommenders == [
        "most-popular",
        "item-knn",
        "embedding",
        "als",
        "candor-ease",
        "candor-hybrid",
    ]


def test_overrides_by_path_and_by_suffix() -> None:
    loaded = load_suite(
        "movielens",
        ["suite.seed=5", "k=20", "recommendation.ua.groups=['gender']", "system.index.kind=hnsw", "min_rating=4"],
    )
    suite = loaded.suite
    assert suite.suite.seed == 5
    assert suite.recommendation["ua"].k == 20
    assert suite.recommendation["loo"].k == 20  # a suffix applies to every field it names
    assert suite.recommendation["ua"].groups == ["gender"]
    assert suite.system.index.kind == "hnsw"
    assert suite.recommendation["loo"].min_rating == 4.0
    assert "recommendation.loo.k=20" in loaded.overrides
    assert load_suite("scifact", ["split=test"]).suite.retrieval["scifact"].split == "test"
    assert loaded.digest() != load_suite("movielens").digest()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nonsense=1", "no such suite field"),
        ("seed", "expected KEY=VALUE"),
        ("system.index.kind=annoy", "system.index.kind"),
        ("recommendation.ua.k=0", "recommendation.ua.k"),
        ("retrieval.x.dataset=y", "no such suite field"),
    ],
)
def test_bad_overrides_are_readable_errors(override: str, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        load_suite("movielens", [override])


def test_bad_suite_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[suite]\nname = "x"\n[retrieval.a]\ndataset = "d"\nmetrics = ["ndcg"]\n', "utf-8")
    with pytest.raises(SuiteError, match="needs a cutoff"):
        load_suite(str(path))
    path.write_text('[suite]\nname = "x"\n', "utf-8")
    with pytest.raises(SuiteError, match=r"no .* task"):
        load_suite(str(path))
    path.write_text('[suite]\nname = "x"\n[retrieval.a]\ndataset = "d"\n[gates]\nrules = ["ndcg@10 ~ 3"]\n', "utf-8")
    with pytest.raises(GateError, match="expected METRIC"):
        load_suite(str(path))
    with pytest.raises(SuiteError, match="not found"):
        load_suite("no-such-suite")


def _metric(
    name: str, value: float, *, system: str = "embedding", group: str | None = None, higher: bool = True
) -> MetricRecord:
    return MetricRecord(
        name, value, higher, "recommendation.ua", "ml-100k", "ua", system, group=group, series=system, n=10
    )


def test_gate_rules() -> None:
    run = [
        _metric("ndcg@10", 0.30),
        _metric("ndcg@10", 0.10, system="most-popular"),
        _metric("ndcg@10", 0.35, group="gender:F"),
        _metric("ndcg@10", 0.28, group="gender:M"),
        _metric("ndcg@10.gap", 0.07, group="gender", higher=False),
    ]
    baseline = [_metric("ndcg@10", 0.32), _metric("ndcg@10", 0.10, system="most-popular")]
    results = evaluate_gates(
        [
            "ndcg@10[system=embedding] >= baseline - 0.01",
            "ndcg@10[system=most-popular] >= baseline - 0.01",
            "ndcg@10.gap[group=gender] <= 0.05",
            "ndcg@10[group=gender:*] >= 0.25",
            "ndcg@10 >= 0.05",
            "hr@10 >= 0.1",
        ],
        run,
        baseline,
        "base-run",
    )
    passed = [r.passed for r in results]
    assert passed == [False, True, False, True, True, False]
    assert "= 0.3000, needs >= 0.3100 (baseline 0.3200 - 0.01)" in results[0].reason
    assert "= 0.0700, needs <= 0.05" in results[2].reason
    assert len(results[3].checks) == 2
    assert len(results[4].checks) == 2  # both systems, overall figures only
    assert "no metric in this run matches" in results[5].reason
    no_base = evaluate_gates(["ndcg@10 >= baseline"], run, None)
    assert no_base[0].skipped
    assert no_base[0].status == "skipped"
    assert no_base[0].passed  # a skipped rule does not fail the run
    assert "none was given" in no_base[0].reason


def test_gates_compare_figures_of_the_same_run() -> None:
    run = [
        MetricRecord("ndcg@10", 0.10, True, "recommendation.loo", "ml", "leave-last-out", "candor-hybrid"),
        MetricRecord("ndcg@10", 0.06, True, "recommendation.loo", "ml", "leave-last-out", "item-knn"),
        MetricRecord("ndcg@10", 0.07, True, "recommendation.loo", "ml", "leave-last-out", "als"),
    ]
    results = evaluate_gates(
        [
            "ndcg@10[system=candor-hybrid] >= ndcg@10[system=item-knn] * 1.3",
            "ndcg@10[system=candor-hybrid] >= ndcg@10[system=als] * 1.5",
            "ndcg@10[system=item-knn] > ndcg@10[system=als]",
            "ndcg@10[system=candor-hybrid] > ndcg@10",
        ],
        run,
        None,
    )
    assert [r.status for r in results] == ["passed", "failed", "failed", "failed"]
    assert results[0].checks[0]["threshold"] == pytest.approx(0.078)
    assert "needs >= 0.1050 (ndcg@10[system=als] 0.0700 * 1.5)" in results[1].reason
    assert "matches 3 figures, not one" in results[3].reason


@pytest.mark.parametrize("rule", ["ndcg@10 >=", "ndcg@10[colour=red] >= 1", "ndcg@10 >= baseline / 2", "x => 1"])
def test_bad_gate_rules(rule: str) -> None:
    with pytest.raises(GateError):
        parse_rule(rule)


def _run(folder: str, values: dict[str, float]) -> LoadedRun:
    metric = _metric("ndcg@10", float(np.mean(list(values.values()))))
    results = {"run_id": folder, "metrics": [metric.to_json(), _metric("coverage@10", 0.5).to_json()]}
    return LoadedRun(Path(folder), results, {metric.key: values})


def test_compare_pairs_units() -> None:
    base = {f"u{i}": float(i % 3 == 0) for i in range(300)}
    worse = {u: (0.0 if i % 2 else v) for i, (u, v) in enumerate(base.items())}
    rows = {r.key: r for r in compare_runs(_run("a", base), _run("b", worse), resamples=300)}
    ndcg = rows["recommendation.ua/embedding/ndcg@10"]
    assert ndcg.verdict == "worse"
    assert ndcg.ci_high is not None
    assert ndcg.ci_high < 0
    assert ndcg.n == 300
    assert rows["recommendation.ua/embedding/coverage@10"].verdict == "same"
    same = compare_runs(_run("a", base), _run("b", dict(base)), resamples=300)
    assert {r.verdict for r in same} == {"same"}
    text = format_rows(list(rows.values()))
    assert "worse" in text
    assert "paired interval" in text


class _CountingEncoder:
    """Stands in for the encoder where only the call count matters (the real one is used in integration)."""

    dim = 4

    def __init__(self) -> None:
        self.calls = 0

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        self.calls += 1
        return np.asarray([[len(t), 1.0, 0.0, 0.0] for t in texts], dtype=np.float32)


def test_embedding_cache_reuses_by_model_and_corpus(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    encoder = _CountingEncoder()
    key = EmbeddingCache.model_key("sha256:abc", "float32", 256, 32)
    first, outcome = cache.embed(encoder, key, ["a", "b"], ["one", "three"], batch_size=32)
    assert not outcome.hit
    again, outcome = cache.embed(encoder, key, ["a", "b"], ["one", "three"], batch_size=32)
    assert outcome.hit
    assert encoder.calls == 1
    np.testing.assert_array_equal(first, again)
    _, outcome = cache.embed(encoder, key, ["a", "b"], ["one", "three!"], batch_size=32)
    assert not outcome.hit  # another corpus
    other = EmbeddingCache.model_key("sha256:abc", "float16", 256, 32)
    _, outcome = cache.embed(encoder, other, ["a", "b"], ["one", "three"], batch_size=32)
    assert not outcome.hit  # other vectors for the same weights
    assert encoder.calls == 3


def test_latest_run_follows_start_time(tmp_path: Path) -> None:
    from evals.results import latest_run, write_json

    assert latest_run(tmp_path / "none") is None
    for name, started, suite in (
        ("zzz-old", "2026-01-01T00:00:00+00:00", "demo"),
        ("aaa-new", "2026-02-01T00:00:00+00:00", "demo"),
        ("mid", "2026-01-15T00:00:00+00:00", "scifact"),
    ):
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "results.json", {"suite": suite, "started_at": started, "metrics": []})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{", "utf-8")
    assert latest_run(tmp_path) == tmp_path / "aaa-new"
    assert latest_run(tmp_path, suite="scifact") == tmp_path / "mid"


def test_set_picks_dataset_protocol_and_enabled() -> None:
    loaded = load_suite(
        "movielens", ["recommendation.ua.enabled=false", "dataset=ml-latest-small", "recommendation.loo.protocol=u1"]
    )
    tasks = loaded.suite.recommendation
    assert not tasks["ua"].enabled
    assert tasks["loo"].enabled
    assert tasks["ua"].dataset == tasks["loo"].dataset == "ml-latest-small"
    assert tasks["loo"].protocol == "u1"
    assert "recommendation.ua.enabled=false" in loaded.overrides
    with pytest.raises(SuiteError, match="every task is disabled"):
        load_suite("movielens", ["enabled=false"])
    squad = load_suite("squad", ["settings=['gold']", "probes=['random']"]).suite.answers["squad"]
    assert squad.settings == ["gold"]
    assert squad.probes == ["random"]
    with pytest.raises(SuiteError, match="each entry may appear once"):
        load_suite("squad", ["settings=['open', 'open']"])


def test_gates_filter_by_setting_and_skip_disabled_tasks() -> None:
    run = [
        MetricRecord("f1", 0.7, True, "answers.squad", "squad", "dev", "extractive", setting="gold"),
        MetricRecord("f1", 0.4, True, "answers.squad", "squad", "dev", "extractive", setting="open"),
    ]
    assert run[0].key == "answers.squad/gold/f1"
    assert run[0].key != run[1].key
    assert MetricRecord.from_json(run[0].to_json()) == run[0]
    results = evaluate_gates(
        [
            "f1[setting=open] >= 0.5",
            "f1[setting=gold] >= 0.5",
            "f1 >= 0.5",
            "f1[setting=open] >= f1[setting=gold] - 0.5",
            "ndcg@10[task=retrieval.off] >= 0.3",
            "f1[setting=open] >= ndcg@10[task=retrieval.off]",
            "ndcg@10[task=retrieval.gone] >= 0.3",
        ],
        run,
        None,
        disabled=["retrieval.off"],
    )
    assert [r.status for r in results] == ["failed", "passed", "failed", "passed", "skipped", "skipped", "failed"]
    assert "retrieval.off is disabled" in results[4].reason
    assert "no metric in this run matches" in results[6].reason  # not disabled: missing, so it fails
