"""Where an evaluation scores its independent units (users, queries): in this process, or on Ray tasks.

A task cuts its units into fixed chunks (the same cuts on every engine), and :meth:`Shards.map` applies a
module-level function to each chunk with the data every chunk shares. :class:`LocalShards` runs the chunks one
after another; :class:`RayShards` puts the shared data in Ray's object store once, sends runs of consecutive
chunks to Ray tasks, and returns the results in chunk order. Each chunk is computed by the same code on the same
inputs either way, and the task merges the results in unit order before it computes means and bootstrap
intervals, so the metrics of ``--engine ray`` are those of the local run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


def chunk_ranges(count: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges cutting ``count`` units into chunks of ``size`` (the last may be shorter)."""
    return [(start, min(start + size, count)) for start in range(0, count, size)]


class Shards(Protocol):
    """Applies a function to chunks of units, with data every chunk shares."""

    name: str

    def map(self, fn: Callable[[S, T], R], shared: S, chunks: Sequence[T]) -> list[R]:
        """``[fn(shared, chunk) for chunk in chunks]``, wherever the engine runs them; results in chunk order."""
        ...


class LocalShards:
    """Every chunk in this process, in order."""

    name = "local"

    def map(self, fn: Callable[[S, T], R], shared: S, chunks: Sequence[T]) -> list[R]:
        """Apply ``fn`` to each chunk here."""
        return [fn(shared, chunk) for chunk in chunks]


def _run_group(fn: Callable[[Any, Any], Any], shared: Any, group: Sequence[Any]) -> list[Any]:
    """One Ray task's work: its run of consecutive chunks (``shared`` arrives resolved from the object store)."""
    return [fn(shared, chunk) for chunk in group]


class RayShards:
    """Runs of consecutive chunks on Ray tasks, one per shard, in a session the caller opened.

    Args:
        shards: How many tasks to split the chunks into (0: one per CPU of the cluster).
        task_cpus: CPUs each task reserves.
    """

    name = "ray"

    def __init__(self, shards: int = 0, task_cpus: float = 1.0) -> None:
        from retrieval.bulk import import_ray

        self._ray = import_ray()
        self._shards = shards
        self._task_cpus = task_cpus
        self._remote = self._ray.remote(_run_group)

    def map(self, fn: Callable[[S, T], R], shared: S, chunks: Sequence[T]) -> list[R]:
        """Apply ``fn`` to each chunk on Ray tasks; the results come back in chunk order."""
        if not chunks:
            return []
        ray = self._ray
        shards = self._shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
        shards = min(shards, len(chunks))
        shared_ref = ray.put(shared)
        bounds = chunk_ranges(len(chunks), -(-len(chunks) // shards))
        refs = [
            self._remote.options(num_cpus=self._task_cpus).remote(fn, shared_ref, list(chunks[start:stop]))
            for start, stop in bounds
        ]
        return [result for group in ray.get(refs) for result in group]
