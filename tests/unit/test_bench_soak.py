"""The soak test's summary: errors by route and status, latency per window, memory growth after the warm-up."""

from __future__ import annotations

import random
from collections import deque

from bench.soak import Sample, Workload, percentile_ms, rss_growth, summarize_soak


def test_percentiles_use_the_nearest_rank() -> None:
    latencies = [n / 1000 for n in range(1, 101)]  # 1 ms to 100 ms
    assert percentile_ms(latencies, 0.50) == 51.0
    assert percentile_ms(latencies, 0.99) == 100.0
    assert percentile_ms([0.004], 0.99) == 4.0
    assert percentile_ms([], 0.5) is None


def test_memory_growth_counts_from_the_first_sample_after_the_warm_up() -> None:
    samples = [(0.0, 100.0), (30.0, 180.0), (60.0, 200.0), (90.0, 205.0), (120.0, 210.0)]
    rss = rss_growth(samples, warm_at=60.0)
    assert rss["warm_at_s"] == 60.0
    assert rss["warm_mb"] == 200.0
    assert rss["end_mb"] == 210.0
    assert rss["max_mb"] == 210.0
    assert rss["growth_pct"] == 5.0
    assert rss["samples"][1] == [30.0, 180.0]
    assert rss_growth([(0.0, 100.0)], warm_at=60.0)["growth_pct"] is None  # nothing after the warm-up


def test_summary_splits_errors_by_route_and_compares_the_first_and_last_window() -> None:
    samples = [Sample("POST /v1/search", t / 10, 0.010, 200) for t in range(0, 600)]  # first minute: 10 ms
    samples += [Sample("POST /v1/search", 60 + t / 10, 0.020, 200) for t in range(0, 600)]  # last minute: 20 ms
    samples += [
        Sample("PUT /v1/items/{id}", 5.0, 0.050, 201),
        Sample("PUT /v1/items/{id}", 70.0, 0.050, 429),
        Sample("PUT /v1/items/{id}", 71.0, 0.050, 429),
        Sample("GET /v1/audit/records", 80.0, 1.0, 0),
    ]
    rss = [(0.0, 300.0), (60.0, 400.0), (120.0, 460.0)]
    summary = summarize_soak(samples, rss, duration=120.0, window=60.0)
    assert summary["requests"] == {"GET /v1/audit/records": 0, "POST /v1/search": 1200, "PUT /v1/items/{id}": 1}
    assert summary["throughput_rps"] == 10.0
    assert summary["errors"] == {
        "total": 3,
        "by_route": {"PUT /v1/items/{id}": {"429": 2}, "GET /v1/audit/records": {"connection": 1}},
    }
    search = summary["latency_ms"]["POST /v1/search"]
    assert search["first"] == {"p50": 10.0, "p99": 10.0, "n": 600}
    assert search["last"] == {"p50": 20.0, "p99": 20.0, "n": 600}
    assert search["p99_last_over_first"] == 2.0
    upserts = summary["latency_ms"]["PUT /v1/items/{id}"]
    assert upserts["last"]["n"] == 0  # failed calls are errors, not latencies
    assert upserts["p99_last_over_first"] is None
    assert summary["rss"]["growth_pct"] == 15.0
    assert summary["goals"] == {"errors==0": False, "rss_growth_pct<10": False}


def test_a_clean_flat_run_meets_the_goals() -> None:
    samples = [Sample("POST /v1/answers", t, 0.1, 200) for t in range(20)]
    summary = summarize_soak(samples, [(0.0, 500.0), (10.0, 510.0), (20.0, 520.0)], duration=20.0, window=10.0)
    assert summary["rss"]["growth_pct"] == 1.96
    assert summary["goals"] == {"errors==0": True, "rss_growth_pct<10": True}


def test_the_mix_sends_every_kind_of_call_with_the_right_key() -> None:
    workload = Workload(
        queries=["cotton towel"],
        item_ids=["A", "B", "C", "D"],
        user_ids=["u1"],
        questions=["How do I return an item?"],
        keys={"frontend": "f", "admin": "a", "reviewer": "r"},
        audit_ids=deque(["aud_1"]),
    )
    rng = random.Random(1)
    calls = [workload.call(rng, n) for n in range(400)]
    roles = {route: role for route, _, _, _, role in calls}
    assert roles == {
        "POST /v1/search": "frontend",
        "POST /v1/recommendations": "frontend",
        "POST /v1/answers": "frontend",
        "PUT /v1/items/{id}": "admin",
        "GET /v1/audit/records": "reviewer",
        "GET /v1/audit/records/{id}": "reviewer",
    }
    upserted = {path for route, _, path, _, _ in calls if route == "PUT /v1/items/{id}"}
    assert all(path.startswith("/v1/items/SOAK-") for path in upserted)
