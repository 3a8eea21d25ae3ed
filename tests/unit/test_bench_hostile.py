"""The hostile-request benchmark's summary: counts summed over the tests, goals met only with none failing."""

from __future__ import annotations

from bench.hostile import summarize


def test_counts_are_summed_and_every_failure_kind_fails_a_goal() -> None:
    tally = [
        {"test": "contract", "requests": 4200, "operations": 28, "failed_operations": 0},
        {"test": "hostile_bodies", "requests": 2000, "server_errors": 0, "violations": 0},
    ]
    clean = summarize(tally, 0)
    assert clean["requests"] == 6200
    assert clean["goals"] == {"requests>=5000": True, "5xx==0": True, "schema_violations==0": True}
    assert clean["tests_passed"]
    broken = summarize([{**tally[0], "failed_operations": 1}, {**tally[1], "server_errors": 2}], 1)
    assert broken["server_errors"] == 2
    assert broken["goals"]["5xx==0"] is False
    assert broken["goals"]["schema_violations==0"] is False  # a failed contract check may be either
    assert not broken["tests_passed"]
    assert summarize([], 0)["goals"]["requests>=5000"] is False  # nothing counted proves nothing
