"""A gate that lets requests run side by side and a model swap run alone, so no request sees two models.

Requests take a lease for as long as they use the models; a swap closes the gate, waits for the leases in flight to
end (those requests finish on the old models), swaps, and opens it again; requests that arrive meanwhile wait the
few milliseconds the swap takes. A task that already holds a lease does not take another (a request's nested
calls, and tasks it starts, share its lease), so nested calls cannot deadlock against a waiting swap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

_held: ContextVar[bool] = ContextVar("candor_model_lease", default=False)


class SwapGate:
    """Shared leases for requests, an exclusive turn for swaps (see the module notes)."""

    def __init__(self) -> None:
        self._condition: asyncio.Condition | None = None
        self._active = 0
        self._closed = False

    def _cond(self) -> asyncio.Condition:
        if self._condition is None:  # made on the serving loop, not where the engine was built
            self._condition = asyncio.Condition()
        return self._condition

    @property
    def active(self) -> int:
        """Leases in flight."""
        return self._active

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[None]:
        """Use the models; waits while a swap runs."""
        if _held.get():
            yield
            return
        cond = self._cond()
        async with cond:
            await cond.wait_for(lambda: not self._closed)
            self._active += 1
        token = _held.set(True)
        try:
            yield
        finally:
            _held.reset(token)
            async with cond:
                self._active -= 1
                if not self._active:
                    cond.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Run alone: no lease is in flight inside this block, and none starts before it ends."""
        cond = self._cond()
        async with cond:
            await cond.wait_for(lambda: not self._closed)
            self._closed = True
            await cond.wait_for(lambda: not self._active)
        try:
            yield
        finally:
            async with cond:
                self._closed = False
                cond.notify_all()
