"""Generative answer backends behind one interface: the in-process LM and an OpenAI-compatible endpoint.

The extractive backend needs no model of its own and lives in :mod:`retrieval.answers.service`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import structlog

from retrieval.answers.local_model import GenerationRequest, GenerationResult, LocalGenerator, LocalGeneratorConfig
from retrieval.answers.remote import OpenAIChatClient, OpenAIConfig
from retrieval.batcher import BatcherConfig, BatchObserver, DynamicBatcher
from retrieval.errors import BackendUnavailableError

logger = structlog.get_logger(__name__)


class Generator(Protocol):
    """A generative backend as the answer service sees it."""

    name: str

    def describe(self) -> dict[str, Any]:
        """Model id, version and device."""
        ...

    async def complete(self, messages: Sequence[dict[str, str]], max_tokens: int, request_id: str) -> GenerationResult:
        """Complete a chat prompt."""
        ...

    def stream(self, messages: Sequence[dict[str, str]], max_tokens: int, request_id: str) -> AsyncIterator[str]:
        """Stream a completion as text deltas."""
        ...

    async def start(self) -> None:
        """Make ready (load weights, open connections)."""
        ...

    async def stop(self) -> None:
        """Release resources."""
        ...


class LocalBackend:
    """The in-process LM behind its own token-budgeted batcher; weights load on first use or at start.

    Args:
        config: Which model.
        batching: Batcher knobs (``[batching.generator]``); a request costs prompt plus new tokens.
        cache_root: Where a de-quantised GGUF copy is kept.
        observer: Batch metrics.
        max_prompt_tokens: Longest prompt accepted (longer contexts are cut passage by passage by the caller).
    """

    name = "local"

    def __init__(
        self,
        config: LocalGeneratorConfig,
        batching: BatcherConfig,
        *,
        cache_root: Any = None,
        observer: BatchObserver | None = None,
        generator: LocalGenerator | None = None,
    ) -> None:
        self.config = config
        self._batching = batching
        self._cache_root = cache_root
        self._observer = observer
        self._generator = generator
        self._batcher: DynamicBatcher[GenerationRequest, GenerationResult] | None = None
        self._lock = asyncio.Lock()
        self._load_lock = threading.Lock()

    def _load(self) -> LocalGenerator:
        with self._load_lock:
            if self._generator is None:
                self._generator = LocalGenerator(self.config, self._cache_root)
            return self._generator

    async def start(self) -> None:
        """Load the model (in a thread) and start the batcher; safe to call again."""
        async with self._lock:
            if self._batcher is not None:
                return
            try:
                generator = await asyncio.to_thread(self._load)
            except Exception as exc:
                logger.exception("generator_load_failed")
                raise BackendUnavailableError(
                    self.name, f"the local model could not load ({type(exc).__name__})"
                ) from exc
            batcher: DynamicBatcher[GenerationRequest, GenerationResult] = DynamicBatcher(
                "generator",
                generator.generate_batch,
                self._batching,
                cost=lambda r: len(r.prompt_ids) + r.max_new_tokens,
                observer=self._observer,
                thread_init=generator.use_all_cores,
            )
            batcher.start()
            self._batcher = batcher

    async def stop(self) -> None:
        """Drain and stop the batcher."""
        if self._batcher is not None:
            await self._batcher.stop()
            self._batcher = None

    @property
    def generator(self) -> LocalGenerator | None:
        """The loaded model, if loaded."""
        return self._generator

    def describe(self) -> dict[str, Any]:
        """Model id, version and device (``loaded: false`` before first use)."""
        if self._generator is None:
            return {"name": self.config.name, "loaded": False}
        return {**self._generator.info.identity(), "loaded": True}

    async def complete(self, messages: Sequence[dict[str, str]], max_tokens: int, request_id: str) -> GenerationResult:
        """Complete through the batcher (loading the model first if needed)."""
        await self.start()
        assert self._batcher is not None
        assert self._generator is not None
        request = GenerationRequest(self._generator.prompt_ids(messages), max_tokens)
        return await self._batcher.submit(request, request_id)

    async def stream(self, messages: Sequence[dict[str, str]], max_tokens: int, request_id: str) -> AsyncIterator[str]:
        """Batched generation finishes whole; the text comes as one delta."""
        result = await self.complete(messages, max_tokens, request_id)
        yield result.text


class RemoteBackend:
    """An OpenAI-compatible endpoint.

    Args:
        config: Endpoint and resilience settings.
        client: A client to use instead of building one (tests).
    """

    name = "openai"

    def __init__(self, config: OpenAIConfig, client: OpenAIChatClient | None = None) -> None:
        self.config = config
        self._client = client

    def _require(self) -> OpenAIChatClient:
        if self._client is None:
            self._client = OpenAIChatClient(self.config)
        return self._client

    async def start(self) -> None:
        """Build the client (raises :class:`BackendUnavailableError` when not configured)."""
        self._require()

    async def stop(self) -> None:
        """Close connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self) -> dict[str, Any]:
        """The remote model's name and endpoint host."""
        return {"name": self.config.model or None, "endpoint": self.config.base_url or None, "remote": True}

    async def complete(self, messages: Sequence[dict[str, str]], max_tokens: int, request_id: str) -> GenerationResult:
        """One remote completion."""
        return await self._require().complete(messages, max_tokens, request_id)

    async def stream(self, messages: Sequence[dict[str, str]], max_tokens: int, request_id: str) -> AsyncIterator[str]:
        """Remote deltas as they arrive."""
        async for delta in self._require().stream(messages, max_tokens, request_id):
            yield delta
