"""Folds of a split's queries: deterministic, disjoint, covering, and usable from a suite."""

from __future__ import annotations

import pytest

from evals.errors import SuiteError
from evals.folds import fold_of, in_fold, out_of_fold
from evals.suite import RetrievalTask, load_suite

IDS = [f"q{i}" for i in range(1000)]


def test_fold_assignment_is_deterministic_and_ignores_order_and_company() -> None:
    first = {i: fold_of(i, 5) for i in IDS}
    assert first == {i: fold_of(i, 5) for i in reversed(IDS)}
    assert in_fold(IDS[:10], 5, 2) == [i for i in IDS[:10] if first[i] == 2]  # a query's fold is its own id's
    assert all(0 <= f < 5 for f in first.values())


def test_folds_are_disjoint_cover_the_split_and_are_near_equal() -> None:
    folds = [in_fold(IDS, 5, k) for k in range(5)]
    assert sorted(i for fold in folds for i in fold) == sorted(IDS)
    assert sum(len(f) for f in folds) == len(IDS)  # disjoint: no id counted twice
    assert all(150 <= len(f) <= 250 for f in folds)
    for k in range(5):
        held, rest = set(in_fold(IDS, 5, k)), set(out_of_fold(IDS, 5, k))
        assert not held & rest
        assert held | rest == set(IDS)
    assert out_of_fold(IDS, 5, 0) == [i for i in IDS if i not in set(folds[0])]  # order kept


def test_seed_changes_the_assignment() -> None:
    assert in_fold(IDS, 5, 0, seed=0) != in_fold(IDS, 5, 0, seed=1)
    assert in_fold(IDS, 5, 0, seed=1) == in_fold(IDS, 5, 0, seed=1)


@pytest.mark.parametrize(("folds", "fold"), [(1, 0), (0, 0), (5, 5), (3, -1)])
def test_bad_folds_are_refused(folds: int, fold: int) -> None:
    with pytest.raises(ValueError, match="fold"):
        in_fold(IDS, folds, fold)


def test_retrieval_task_checks_its_fold() -> None:
    assert RetrievalTask(dataset="x", folds=5, fold=4).fold == 4
    assert RetrievalTask(dataset="x").folds == 0  # existing suites: every query
    with pytest.raises(ValueError, match="at least 2"):
        RetrievalTask(dataset="x", folds=1)
    with pytest.raises(ValueError, match="between 0 and 4"):
        RetrievalTask(dataset="x", folds=5, fold=5)


def test_a_shipped_suite_takes_a_fold_from_the_command_line() -> None:
    task = load_suite("scifact", ["retrieval.scifact.folds=5", "retrieval.scifact.fold=3"]).suite.retrieval["scifact"]
    assert (task.folds, task.fold, task.fold_seed) == (5, 3, 0)
    with pytest.raises(SuiteError, match="fold"):
        load_suite("scifact", ["retrieval.scifact.folds=5", "retrieval.scifact.fold=7"])
