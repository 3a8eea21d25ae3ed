"""Processes serving one state folder keep up with each other: workers of ``candor serve --workers N``, replicas.

Every process polls, each ``server.sync_interval_ms``:

- the catalog and the knowledge base (SQLite's ``data_version`` says in one query whether another connection
  committed): written items join its index, deleted ones leave it, a rebuild's snapshot replaces its index,
  changed documents reload (:meth:`RetrievalEngine.catch_up`);
- the ``models`` counter in ``<state_dir>/fleet.sqlite``, which ``POST /v1/admin/reload`` moves on whichever
  process served it: the others then resolve the ``[models]`` pins again and swap in what changed, as that
  route does.

So a change made through one process serves everywhere within about one interval (a model swap: plus its load and
re-embedding time), and nothing is refused meanwhile: each process serves what it had until its swap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path

import structlog

from retrieval.sqlite import connect, transaction

logger = structlog.get_logger(__name__)

MODELS = "models"


class FleetSignals:
    """Change counters shared by the processes of one state folder (``fleet.sqlite``).

    Args:
        path: The SQLite file (created if missing).
    """

    def __init__(self, path: Path) -> None:
        self._db = connect(path)
        with transaction(self._db):
            self._db.execute("CREATE TABLE IF NOT EXISTS generations (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")

    def read(self, name: str) -> int:
        """The counter's value (0 before its first move)."""
        row = self._db.execute("SELECT value FROM generations WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def bump(self, name: str) -> int:
        """Move the counter on; returns its new value."""
        with transaction(self._db):
            self._db.execute(
                "INSERT INTO generations(name, value) VALUES(?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = generations.value + 1",
                (name,),
            )
            return self.read(name)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


class Follower:
    """The polling task of one process (see the module docstring).

    Args:
        signals: The shared counters.
        interval_s: Seconds between polls: the staleness bound.
    """

    def __init__(self, signals: FleetSignals, interval_s: float) -> None:
        self.signals = signals
        self.interval_s = interval_s
        self.models_seen = signals.read(MODELS)
        self._task: asyncio.Task[None] | None = None

    def models_changed_here(self, generation: int) -> None:
        """This process applied the pins itself (and moved the counter to ``generation``): nothing to follow."""
        self.models_seen = max(self.models_seen, generation)

    def start(
        self, catch_up_items: Callable[[], Awaitable[bool]], reload_models: Callable[[], Awaitable[object]]
    ) -> None:
        """Start polling on the running loop."""
        self._task = asyncio.create_task(self._run(catch_up_items, reload_models), name="fleet-follower")

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(
        self, catch_up_items: Callable[[], Awaitable[bool]], reload_models: Callable[[], Awaitable[object]]
    ) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await catch_up_items()
                generation = await asyncio.to_thread(self.signals.read, MODELS)
                if generation != self.models_seen:
                    self.models_seen = generation
                    changes = await reload_models()
                    logger.info("models_followed", generation=generation, changes=changes)
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed poll is retried at the next one; serving goes on with what it has
                logger.exception("fleet_follow_failed")
