"""Fixtures shared by the integration tests of reports: a real, small evaluation run."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.runner import RunOptions, run_suite
from evals.suite import load_suite
from tests.conftest import DEMO_PACK

TINY_SUITE = """
[suite]
name = "report-tiny"
description = "compliance report tests: the demo shoppers with two cheap recommenders (no catalog embedding)"
seed = 13
bootstrap = 50

[recommendation.shoppers]
dataset = "{pack}"
protocol = "leave-last-out"
k = 10
recommenders = ["most-popular", "item-knn"]
groups = ["gender"]
group_metrics = ["hr"]
min_group_size = 10

[gates]
rules = [
    "hr@10[task=recommendation.shoppers, system=item-knn] >= 0.0",
    "hr@10[task=recommendation.shoppers, system=most-popular] >= 0.99",
]
"""


@pytest.fixture(scope="session")
def eval_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real evaluation run (demo shoppers, two recommenders, per-group figures and gates) under a runs folder."""
    state = tmp_path_factory.mktemp("report-evals")
    suite = state / "tiny.toml"
    suite.write_text(TINY_SUITE.format(pack=DEMO_PACK.as_posix()), encoding="utf-8")
    run_suite(load_suite(str(suite)), RunOptions(state_dir=state, progress=False))
    return state / "runs"


@pytest.fixture(scope="session")
def pdf_renderer() -> None:
    """Skip PDF checks, naming the cause, where WeasyPrint's system libraries (Pango) are missing."""
    try:
        import weasyprint  # noqa: F401
    except OSError as exc:
        pytest.skip(f"WeasyPrint cannot load its system libraries (install Pango, see README): {exc}")
