"""Interpreter tuning that ``candor serve`` applies: switch interval, frozen startup objects, GC thresholds."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from app.runtime import tune_gc, tune_interpreter
from app.settings import load_settings


@pytest.fixture
def restore_interpreter() -> Iterator[None]:
    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("restore_interpreter")
def test_serve_tuning_follows_the_settings() -> None:
    server = load_settings(overrides={"server": {"switch_interval_ms": 0.25, "gc_thresholds": [5000, 20, 40]}}).server
    tune_interpreter(server)
    tune_gc(server)
    assert sys.getswitchinterval() == pytest.approx(0.00025)
    assert gc.get_threshold() == (5000, 20, 40)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restore_interpreter")
def test_gc_can_be_left_alone() -> None:
    before = gc.get_threshold()
    server = load_settings(overrides={"server": {"gc_freeze_after_start": False, "gc_thresholds": []}}).server
    tune_gc(server)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_thresholds_need_three_numbers() -> None:
    with pytest.raises(ValueError, match="gc_thresholds"):
        load_settings(overrides={"server": {"gc_thresholds": [1, 2]}})
