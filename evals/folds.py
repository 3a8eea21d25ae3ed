"""Folds of a split's queries, so a model can be trained on some of a split and evaluated on the rest.

A query's fold depends only on its id and a seed (a SHA-256 hash, modulo the number of folds), never on which
other queries the split holds or in what order they are read: the evaluation harness scores fold ``k`` of a
retrieval task (``folds = 5``, ``fold = k``) and training code takes every other fold with the same function, so
the two never overlap. Folds are close to equal in size, not exactly equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

DEFAULT_FOLD_SEED = 0


def fold_of(unit_id: str, folds: int, seed: int = DEFAULT_FOLD_SEED) -> int:
    """The fold (``0`` to ``folds - 1``) a query id falls in.

    Raises:
        ValueError: ``folds`` is below 2.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    digest = hashlib.sha256(f"{seed}\0{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def in_fold(ids: Iterable[str], folds: int, fold: int, seed: int = DEFAULT_FOLD_SEED) -> list[str]:
    """The ids in fold ``fold``, in their given order (what an evaluation of that fold scores).

    Raises:
        ValueError: ``folds`` is below 2 or ``fold`` is not one of them.
    """
    _check(folds, fold)
    return [i for i in ids if fold_of(i, folds, seed) == fold]


def out_of_fold(ids: Iterable[str], folds: int, fold: int, seed: int = DEFAULT_FOLD_SEED) -> list[str]:
    """The ids in every other fold, in their given order (what training may use when fold ``fold`` is held out).

    Raises:
        ValueError: ``folds`` is below 2 or ``fold`` is not one of them.
    """
    _check(folds, fold)
    return [i for i in ids if fold_of(i, folds, seed) != fold]


def _check(folds: int, fold: int) -> None:
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be between 0 and {folds - 1}, got {fold}")
