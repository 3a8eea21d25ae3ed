"""The interference benchmark's parts (``bench.interference``): the competing load and the report's arithmetic."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pytest

from bench.interference import BurstLoad, Pair, measure_layout, summarize


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_the_load_runs_bursts_of_the_cpu_time_asked_and_accounts_for_it(process: bool) -> None:
    with BurstLoad(rate=200, burst_ms=2.0, process=process) as load:
        time.sleep(0.2)
    assert load.bursts >= 1
    # Each burst runs until its thread's CPU clock has advanced by the burst, whatever else runs meanwhile.
    assert load.cpu_seconds >= load.bursts * 0.002
    assert load.wall_seconds > 0
    assert 0 < load.machine_share(cores=1) <= 1.05


def test_the_load_refuses_a_rate_or_burst_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        BurstLoad(rate=0, burst_ms=1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        BurstLoad(rate=10, burst_ms=-1.0)


def test_summary_takes_medians_and_divides_the_share_lost_by_the_load_share() -> None:
    pairs = [
        Pair(alone=400.0, loaded=300.0, load_share=0.125, idle_alone_pct=8.0, idle_loaded_pct=15.0),  # 25 % lost
        Pair(alone=360.0, loaded=324.0, load_share=0.10, idle_alone_pct=9.0, idle_loaded_pct=None),  # 10 % lost
        Pair(alone=380.0, loaded=304.0, load_share=0.125, idle_alone_pct=7.0, idle_loaded_pct=17.0),  # 20 % lost
    ]
    report = summarize(pairs)
    assert report["texts_per_s_alone"] == 380.0
    assert report["texts_per_s_loaded"] == 304.0
    assert report["lost_pct_per_pair"] == [25.0, 10.0, 20.0]
    assert report["lost_pct"] == 20.0
    assert report["load_pct_of_machine"] == 12.5
    assert report["amplification"] == 1.6  # 20 % lost for a load of 12.5 %
    assert report["machine_idle_pct_alone"] == 8.0
    assert report["machine_idle_pct_loaded"] == 16.0  # the unknown reading is left out
    with pytest.raises(ValueError, match="no pairs"):
        summarize([])


class _CountingEncoder:
    """Stands in for the encoder: a little real arithmetic per batch, and a record of what it was asked."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.batch_sizes: set[int] = set()
        self.weights = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)

    def use_threads(self, threads: int) -> None:
        self.threads.append(threads)

    def embed_token_batch(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        self.batch_sizes.add(len(batch))
        return np.ones((len(batch), 64), dtype=np.float32) @ self.weights


def test_each_pair_runs_the_layout_alone_then_beside_a_fresh_load() -> None:
    encoder = _CountingEncoder()
    loads: list[BurstLoad] = []

    def load() -> BurstLoad:
        loads.append(BurstLoad(rate=100, burst_ms=1.0))
        return loads[-1]

    tokenised = [[101, *range(1000, 1000 + n), 102] for n in range(1, 41)]
    pairs = measure_layout(
        cast(Any, encoder),
        tokenised,
        streams=2,
        threads_each=1,
        batch_size=4,
        seconds=0.05,
        pairs=2,
        load=load,
        cores=2,
    )
    assert len(pairs) == 2
    assert len(loads) == 2
    assert all(p.alone > 0 and p.loaded > 0 for p in pairs)
    assert [p.load_share for p in pairs] == [lo.machine_share(2) for lo in loads]
    assert all(lo.bursts >= 1 for lo in loads)
    assert set(encoder.threads) == {1}
    assert len(encoder.threads) == 2 * 2 * 2  # two streams in each of four runs
    assert encoder.batch_sizes == {4}
