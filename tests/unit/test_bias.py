"""Bias audits: MetricFrame's figures against the harness's, known gaps found on constructed data and absent on balanced
data, exposure and Gini by hand, thresholds into findings and findings into the review queue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evals.bias import BIAS_FILE, BIAS_REPORT, BiasOptions, bias_summary, findings, group_figures, run_bias_audit
from evals.exposure import exposure_report, gini, item_exposure
from evals.runner import RunOptions, run_suite
from evals.stats import rng_for
from evals.suite import BiasSpec, LoadedSuite, RecommendationTask, Suite, SuiteMeta, load_suite
from governance.audit import AuditLog
from tests.conftest import DEMO_PACK, audit_config

pytestmark = pytest.mark.unit

POPULAR = [f"p{n}" for n in range(10)]
NICHE = [f"n{n}" for n in range(10)]
FILLER = [f"f{n}" for n in range(20)]
THRESHOLDS = BiasSpec(max_group_difference=0.05, min_group_ratio=0.8, max_exposure_gini=0.95, max_provider_gini=0.9)


def constructed_pack(folder: Path, *, biased: bool, users: int = 120) -> Path:
    """Shoppers in groups ``a`` and ``b``, each trained on two popular and two filler items.

    The held-out (latest) item is popular or niche. Biased: group ``a`` goes on to a popular item and group ``b`` to a
    niche one, so most-popular serves ``a`` and fails ``b``. Balanced: in both groups every other user goes on to
    a popular item, the rest to a niche one.
    """
    folder.mkdir(parents=True)
    provider = {**dict.fromkeys(POPULAR, "Big"), **dict.fromkeys(NICHE, "Niche"), **dict.fromkeys(FILLER, "Mid")}
    items = [
        {"id": i, "title": f"Item {i}", "text": "", "category": "Things", "provider": p} for i, p in provider.items()
    ]
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    people, events = [], []
    for u in range(users):
        # Users 2v and 2v + 1 (one in each group) have the same history, so only the held-out item can differ.
        group, v = ("a" if u % 2 == 0 else "b"), u // 2
        people.append({"user_id": f"u{u}", "gender": group})
        trained = [POPULAR[v % 10], POPULAR[(v + 3) % 10], FILLER[v % 20], FILLER[(v + 7) % 20]]
        events += [
            {"user_id": f"u{u}", "item_id": item, "event": "view", "value": 1.0, "ts": float(t)}
            for t, item in enumerate(trained)
        ]
        to_popular = group == "a" if biased else v % 2 == 0
        last = POPULAR[(v + 5) % 10] if to_popular else NICHE[v % 10]
        events.append({"user_id": f"u{u}", "item_id": last, "event": "view", "value": 1.0, "ts": 100.0})
    (folder / "interactions.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (folder / "users.jsonl").write_text("".join(json.dumps(p) + "\n" for p in people))
    return folder


def loaded_suite(dataset: Path, recommenders: list[str], *, bootstrap: int = 200, bias: BiasSpec = THRESHOLDS) -> Any:
    task = RecommendationTask(
        dataset=str(dataset),
        format="pack",
        recommenders=recommenders,
        groups=["gender", "age_band"],
        min_group_size=10,
    )
    suite = Suite(suite=SuiteMeta(name="bias-test", bootstrap=bootstrap, seed=5), recommendation={"t": task}, bias=bias)
    return LoadedSuite(suite, dataset)


def audit(tmp_path: Path, loaded: LoadedSuite) -> dict[str, Any]:
    return run_bias_audit(loaded, BiasOptions(state_dir=tmp_path / "evals", progress=False)).report


# -- per-group quality ----------------------------------------------------------------------------------------------


def test_metric_frame_figures_equal_the_harness_per_group_figures(tmp_path: Path) -> None:
    loaded = loaded_suite(DEMO_PACK, ["most-popular", "item-knn", "candor-ease"])
    report = audit(tmp_path, loaded)
    harness = run_suite(loaded, RunOptions(state_dir=tmp_path / "evals", progress=False)).results["metrics"]
    by_key = {(m["system"], m["name"], m.get("group")): m for m in harness}
    compared = 0
    for rec, figures in report["tasks"]["recommendation.t"]["recommenders"].items():
        for metric in ("hr@10", "ndcg@10"):
            assert figures["overall"][metric] == pytest.approx(by_key[(rec, metric, None)]["value"], abs=1e-12)
        for attribute, metrics in figures["groups"].items():
            for metric, fig in metrics.items():
                for group in fig["groups"]:
                    own = by_key[(rec, metric, f"{attribute}:{group['group']}")]
                    assert group["mean"] == pytest.approx(own["value"], abs=1e-12)
                    assert group["n"] == own["n"]
                    assert group["ci"] == pytest.approx([own["ci_low"], own["ci_high"]])
                    compared += 1
                gap = by_key[(rec, f"{metric}.gap", attribute)]
                assert fig["difference"] == pytest.approx(gap["value"], abs=1e-12)
                assert fig["difference_ci"] == pytest.approx([gap["ci_low"], gap["ci_high"]])
    assert compared >= 3 * 2 * 2 * 3  # recommenders x attributes x metrics x (at least 3 groups)


def test_group_figures_by_hand() -> None:
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.0])
    labels = ["x", "x", "y", "y", "z", "z", "tiny"]
    fig = group_figures(values, labels, "g", rng=rng_for(1, "t"), resamples=100, confidence=0.9, min_size=2)
    means = {g["group"]: g["mean"] for g in fig["groups"]}
    assert means == {"x": 0.5, "y": 1.0, "z": 0.5, "tiny": 0.0}
    assert fig["excluded_small_groups"] == ["tiny"]
    assert fig["difference"] == pytest.approx(0.5)  # y - x, the tiny group left out
    assert fig["ratio"] == pytest.approx(0.5)
    assert (fig["best"], fig["worst"]) == ("y", "x")
    assert fig["overall"] == pytest.approx(values.mean())


def test_a_known_gap_is_found_on_constructed_data(tmp_path: Path) -> None:
    report = audit(tmp_path, loaded_suite(constructed_pack(tmp_path / "pack", biased=True), ["most-popular"]))
    fig = report["tasks"]["recommendation.t"]["recommenders"]["most-popular"]["groups"]["gender"]["hr@10"]
    assert {g["group"]: g["mean"] for g in fig["groups"]} == {"a": 1.0, "b": 0.0}
    assert fig["difference"] == pytest.approx(1.0)
    checks = {(f["check"], f.get("attribute"), f.get("metric")) for f in report["findings"]}
    assert ("group_difference", "gender", "hr@10") in checks
    assert ("group_ratio", "gender", "ndcg@10") in checks


def test_no_gap_is_found_on_balanced_data(tmp_path: Path) -> None:
    report = audit(tmp_path, loaded_suite(constructed_pack(tmp_path / "pack", biased=False), ["most-popular"]))
    fig = report["tasks"]["recommendation.t"]["recommenders"]["most-popular"]["groups"]["gender"]["hr@10"]
    assert {g["group"]: g["mean"] for g in fig["groups"]} == {"a": 0.5, "b": 0.5}
    assert fig["difference"] == pytest.approx(0.0)
    assert not [f for f in report["findings"] if f["check"].startswith("group_")]


# -- exposure -----------------------------------------------------------------------------------------------------


def test_gini_by_hand() -> None:
    assert gini([3, 3, 3, 3]) == 0.0
    assert gini([0, 0, 0, 8]) == pytest.approx(3 / 4)
    assert gini([]) == 0.0
    assert gini([0, 0]) == 0.0
    assert gini([1, 3]) == pytest.approx(0.25)  # mean absolute difference 2 / (2 * 2 * mean 2)


def test_exposure_is_rank_discounted_and_shared_by_provider() -> None:
    top = np.array([[0, 1], [0, 2]])
    exposure = item_exposure(top, 4)
    assert exposure.tolist() == pytest.approx([2.0, 1 / np.log2(3), 1 / np.log2(3), 0.0])
    items = ["a", "b", "c", "d"]
    popular = np.array([True, False, False, False])
    report = exposure_report(
        top, items, {"a": "P", "b": "Q", "c": "Q", "d": "Q"}, [np.array([3]), np.array([1])], popular
    )
    assert report["popularity_bias"] == pytest.approx(0.5)
    assert report["items_exposed"] == 3
    rows = {r["provider"]: r for r in report["providers"]["rows"]}
    total = 2.0 + 2 / np.log2(3)
    assert rows["P"]["exposure_share"] == pytest.approx(2.0 / total)
    assert rows["P"]["catalog_share"] == pytest.approx(0.25)
    assert rows["Q"]["relevant_share"] == pytest.approx(1.0)
    assert rows["P"]["exposure_to_relevant"] is None
    assert exposure_report(top, items, {}, [], popular)["providers"] is None


def test_concentrated_exposure_is_found_and_spread_exposure_is_not(tmp_path: Path) -> None:
    n_items, k = 40, 10
    spread = np.array([[(u + r) % n_items for r in range(k)] for u in range(n_items)])
    same = np.tile(np.arange(k), (n_items, 1))
    popular = np.zeros(n_items, dtype=bool)
    popular[:4] = True
    items = [f"i{n}" for n in range(n_items)]
    providers = {item: f"s{n % 4}" for n, item in enumerate(items)}
    even = exposure_report(spread, items, providers, [], popular)
    heavy = exposure_report(same, items, providers, [], popular)
    assert even["exposure_gini"] == pytest.approx(0.0, abs=1e-9)
    assert even["providers"]["gini"] == pytest.approx(0.0, abs=1e-9)
    assert heavy["exposure_gini"] > 0.7
    assert heavy["popularity_bias"] == pytest.approx(0.4)
    spec = BiasSpec(max_exposure_gini=0.5, max_popularity_bias=0.3)

    def wrap(exposure: dict[str, Any]) -> dict[str, Any]:
        return {"t": {"recommenders": {"r": {"groups": {}, "exposure": exposure}}}}

    assert findings(wrap(even), spec) == []
    assert {f["check"] for f in findings(wrap(heavy), spec)} == {"exposure_gini", "popularity_bias"}


def test_the_constructed_audit_sees_niche_providers_under_exposed(tmp_path: Path) -> None:
    report = audit(tmp_path, loaded_suite(constructed_pack(tmp_path / "pack", biased=True), ["most-popular"]))
    exposure = report["tasks"]["recommendation.t"]["recommenders"]["most-popular"]["exposure"]
    rows = {r["provider"]: r for r in exposure["providers"]["rows"]}
    assert rows["Niche"]["exposure_share"] == 0.0
    assert rows["Niche"]["relevant_share"] == pytest.approx(0.5)
    assert "Niche" in exposure["providers"]["under_exposed_examples"]
    assert exposure["popularity_bias"] > 0.3  # the 10% most popular items take over 3 times their share of slots
    assert exposure["providers"]["gini"] > 0.3
    assert {f["check"] for f in findings(report["tasks"], BiasSpec(max_provider_gini=0.3))} == {"provider_gini"}


# -- files, summary, suite, audit record --------------------------------------------------------------------------


def test_the_audit_writes_json_and_html_with_plots(tmp_path: Path) -> None:
    loaded = loaded_suite(constructed_pack(tmp_path / "pack", biased=True), ["most-popular", "item-knn"])
    run = run_bias_audit(loaded, BiasOptions(state_dir=tmp_path / "evals", out_dir=tmp_path / "out", progress=False))
    assert json.loads((run.run_dir / BIAS_FILE).read_text()) == json.loads(json.dumps(run.report))
    page = (run.run_dir / BIAS_REPORT).read_text()
    assert page.count("data:image/png;base64,") >= 3
    assert "Findings" in page
    assert "were not run" in page  # counterfactual probes and BBQ are named as not run
    summary = bias_summary(run.report)
    assert summary["findings_count"] == len(run.report["findings"]) > 0
    hr_gap = summary["tasks"]["recommendation.t"]["recommenders"]["most-popular"]["largest_gap"]["hr@10"]
    assert (hr_gap["attribute"], hr_gap["worst"], hr_gap["best"]) == ("gender", "b", "a")


def test_a_failed_audit_leaves_no_folder(tmp_path: Path) -> None:
    from evals.errors import EvalError

    out = tmp_path / "out"
    with pytest.raises(EvalError):
        run_bias_audit(
            loaded_suite(tmp_path / "missing", ["most-popular"]),
            BiasOptions(state_dir=tmp_path / "evals", out_dir=out, progress=False),
        )
    assert not out.exists()


def test_the_bias_suite_loads_and_other_suites_keep_their_digest() -> None:
    bias = load_suite("bias")
    assert bias.suite.bias.max_group_difference == 0.05
    assert "bias" in bias.config()
    movielens = load_suite("movielens")
    assert "bias" not in movielens.config()
    changed = load_suite("bias", ["max_group_difference=0.2"])
    assert changed.suite.bias.max_group_difference == 0.2


def test_findings_join_the_review_queue_and_a_clean_audit_does_not(tmp_path: Path) -> None:
    biased = audit(tmp_path / "1", loaded_suite(constructed_pack(tmp_path / "b", biased=True), ["most-popular"]))
    clean = audit(
        tmp_path / "2", loaded_suite(constructed_pack(tmp_path / "c", biased=False), ["most-popular"], bias=BiasSpec())
    )
    assert clean["findings"] == []
    log = AuditLog(audit_config(tmp_path / "state"))
    log.open()
    try:
        flagged = log.get(log.record_bias(bias_summary(biased), {"user": "t"}))
        assert flagged is not None
        assert flagged.kind == "bias"
        assert flagged.review_state == "pending"
        assert flagged.body is not None
        assert flagged.body["review"]["reason"].startswith("bias: ")
        quiet = log.get(log.record_bias(bias_summary(clean), {"user": "t"}))
        assert quiet is not None
        assert quiet.review_state == "not_required"
        latest = log.latest("bias")
        assert latest is not None
        assert latest.id == quiet.id
        assert log.verify().ok
    finally:
        log.close()


def bare_facts(**fields: Any) -> Any:
    from datetime import UTC, datetime

    from governance.report import ComplianceFacts, VersionManifest

    manifest = VersionManifest("0", (), None, "sha256:c", "abc", "git")
    return ComplianceFacts(datetime.now(UTC), None, None, manifest, **fields)


def test_the_compliance_report_shows_the_latest_audit_or_says_none_ran(tmp_path: Path) -> None:
    from app.compliance import NO_BIAS_AUDIT, latest_bias
    from governance.report import facts_from_json, facts_to_json, render_html

    log = AuditLog(audit_config(tmp_path / "state"))
    log.open()
    try:
        assert latest_bias(log) == (None, NO_BIAS_AUDIT)
        report = audit(tmp_path, loaded_suite(constructed_pack(tmp_path / "pack", biased=True), ["most-popular"]))
        record_id = log.record_bias(bias_summary(report), {"user": "t"})
        bias, note = latest_bias(log)
    finally:
        log.close()
    assert note is None
    assert bias is not None
    assert bias["audit_id"] == record_id
    assert bias["review_state"] == "pending"
    page = render_html(bare_facts(bias=bias))
    assert report["generated_at"] in page
    assert record_id in page
    assert f"{len(report['findings'])} finding(s)" in page
    assert "group_difference: recommendation.t most-popular hr@10 by gender (b &lt; a)" in page
    assert "Not yet run in this audit: answer_bias, counterfactual" in page
    twin = facts_from_json(json.loads(json.dumps(facts_to_json(bare_facts(bias=bias)))))
    assert twin.bias is not None
    assert twin.bias["audit_id"] == record_id
    nothing = render_html(bare_facts(bias_note=NO_BIAS_AUDIT))
    assert "Bias audit: not yet run. No bias audit ran (run `candor audit bias SUITE`)." in nothing
    missing, why = latest_bias(None)
    assert missing is None
    assert why is not None
    assert "no audit store" in why


def test_the_best_against_worst_interval_covers_the_observed_gap() -> None:
    from evals.stats import pair_gap

    rng = np.random.default_rng(0)
    high, low = rng.binomial(1, 0.6, 200).astype(float), rng.binomial(1, 0.4, 200).astype(float)
    gap = pair_gap(high, low, rng_for(3, "pair"), 500)
    assert gap.difference_ci is not None
    assert gap.ratio_ci is not None
    assert gap.difference_ci[0] < gap.difference < gap.difference_ci[1]
    assert gap.difference_ci[0] > 0
    assert gap.ratio is not None
    assert gap.ratio_ci[0] < gap.ratio < gap.ratio_ci[1] < 1
    same = pair_gap(high, high[::-1].copy(), rng_for(3, "same"), 500)
    assert same.difference == 0.0
    assert same.difference_ci is not None
    assert same.difference_ci[0] < 0 < same.difference_ci[1]


def test_the_compliance_report_shows_counterfactual_and_bbq_headlines() -> None:
    from governance.report import render_html

    summary: dict[str, Any] = {
        "run_id": "r",
        "generated_at": "2026-12-05T22:00:00+00:00",
        "suite": "bias",
        "suite_hash": "sha256:x",
        "git_sha": "abc",
        "tasks": {},
        "findings": [
            {
                "check": "bbq_bias",
                "task": "bias.bbq",
                "recommender": "extractive",
                "category": "Age",
                "condition": "ambiguous",
                "value": 0.3,
                "threshold": 0.1,
            }
        ],
        "findings_count": 1,
        "not_run": [],
        "counterfactual": {
            "pairs": 12,
            "mean_rbo": 0.71,
            "mean_score_shift": 0.02,
            "answer_change_rate": 0.25,
            "answer_backend": "extractive",
        },
        "answer_bias": {
            "backend": "extractive",
            "items": 40,
            "all": {},
            "categories": {
                "Age": {
                    "ambiguous": {"accuracy": 0.5, "bias_score": 0.3},
                    "disambiguated": {"accuracy": 0.8, "bias_score": -0.1},
                }
            },
        },
    }
    page = render_html(bare_facts(bias=summary))
    assert "Counterfactual probes: 12 pairs" in page
    assert "0.7100" in page
    assert "changed for 25.0% of pairs." in page  # no history probes in this summary
    summary["counterfactual"] = {**summary["counterfactual"], "history_pairs": 30, "history_mean_rbo": 0.8}
    assert "recommendations from 30 shoppers' histories with demographic items swapped overlap 0.8000" in render_html(
        bare_facts(bias=summary)
    ).replace("&#39;", "'")
    assert "Answer bias on BBQ (40 items, backend extractive" in page
    assert "bbq_bias: bias.bbq extractive Age ambiguous" in page
