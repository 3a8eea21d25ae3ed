"""An OpenAI-compatible chat-completions client (vLLM, TGI, Ollama, hosted LLMs), for the ``openai`` backend.

Calls are retried with exponential backoff and jitter on 429, 5xx, timeouts and connection errors (honouring
``Retry-After``), and a circuit breaker refuses calls at once for a cool-down after several consecutive
failures, so a dead endpoint does not hold every request for the full retry schedule. Streaming responses
(server-sent events) are passed through as text deltas; a stream is retried only before its first byte.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from retrieval.answers.local_model import GenerationResult
from retrieval.errors import BackendUnavailableError, CircuitOpenError, UpstreamError, UpstreamTimeoutError

logger = structlog.get_logger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKEND = "openai"


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    """The remote endpoint (``[generator.openai]``).

    Attributes:
        base_url: Up to and including ``/v1``, e.g. ``http://127.0.0.1:8001/v1``; empty: backend off.
        model: Model name sent with each call.
        api_key: Bearer token; empty: ``$OPENAI_API_KEY`` if set, else no header.
        timeout_s: Read timeout per attempt (between two reads of the reply).
        connect_timeout_s: Connect timeout per attempt.
        total_timeout_s: Deadline for a whole call: every attempt, backoff and byte of the reply (an upstream that
            drips bytes never trips the read timeout).
        max_response_bytes: Largest reply read (a stream's bytes in all); a larger one is an upstream error.
        max_retries: Retries after the first attempt for retryable failures.
        backoff_base_s: First backoff; doubled per retry, with full jitter.
        backoff_max_s: Longest backoff (also caps ``Retry-After``).
        breaker_failures: Consecutive failed calls that open the circuit.
        breaker_cooldown_s: How long an open circuit refuses calls.
        temperature: Sampling temperature sent with each call.
    """

    base_url: str
    model: str
    api_key: str
    timeout_s: float
    connect_timeout_s: float
    total_timeout_s: float
    max_response_bytes: int
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    breaker_failures: int
    breaker_cooldown_s: float
    temperature: float


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``cooldown_s`` one trial call is let through.

    Args:
        threshold: Consecutive failures that open the circuit.
        cooldown_s: Seconds the circuit stays open.
        clock: Monotonic clock (tests pass their own).
    """

    def __init__(self, threshold: int, cooldown_s: float, clock: Any = time.monotonic) -> None:
        self.threshold = max(1, threshold)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self.opened_at is None:
            return "closed"
        return "open" if self._clock() - self.opened_at < self.cooldown_s else "half-open"

    def check(self) -> None:
        """Raise :class:`CircuitOpenError` while the circuit is open."""
        if self.state == "open":
            raise CircuitOpenError("the remote model endpoint is failing; calls are paused", backend=BACKEND)

    def success(self) -> None:
        """Record a successful call (closes the circuit)."""
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        """Record a failed call (opens the circuit at the threshold, or again after a failed trial)."""
        self.failures += 1
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = self._clock()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_DONE = object()


def _event_delta(line: str) -> object:
    """The text of one server-sent event line (``None`` for other lines, ``_DONE`` at ``data: [DONE]``).

    Raises:
        UpstreamError: The event's data is not a chat-completion chunk.
    """
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    try:
        return json.loads(data)["choices"][0].get("delta", {}).get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise UpstreamError("the remote model sent an unreadable event", backend=BACKEND) from exc


class OpenAIChatClient:
    """Calls ``POST {base_url}/chat/completions``.

    Args:
        config: Endpoint, credentials, timeouts, retries and breaker.
        transport: An httpx transport (tests may pass one; by default the network).
    """

    def __init__(self, config: OpenAIConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not config.base_url or not config.model:
            raise BackendUnavailableError(BACKEND, "set [generator.openai] base_url and model")
        self.config = config
        key = config.api_key or os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)

    async def aclose(self) -> None:
        """Close connections."""
        await self._client.aclose()

    def _body(self, messages: Sequence[dict[str, str]], max_tokens: int, stream: bool) -> dict[str, Any]:
        return {
            "model": self.config.model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": self.config.temperature,
            "stream": stream,
        }

    def _backoff(self, attempt: int, hint: float | None) -> float:
        cap = self.config.backoff_max_s
        if hint is not None:
            return min(max(hint, 0.0), cap)
        return random.uniform(0, min(cap, self.config.backoff_base_s * 2**attempt))  # noqa: S311 - jitter

    async def _send(self, body: dict[str, Any], request_id: str, *, stream: bool) -> httpx.Response:
        """Send with retries; return a successful response (a stream still open when ``stream``)."""
        self.breaker.check()
        cfg = self.config
        headers = {"X-Request-ID": request_id}
        last: Exception | None = None
        for attempt in range(cfg.max_retries + 1):
            hint = None
            try:
                request = self._client.build_request("POST", "/chat/completions", json=body, headers=headers)
                response = await self._client.send(request, stream=stream)
                if response.status_code < 400:
                    self.breaker.success()
                    return response
                hint = _retry_after(response)
                await response.aread()
                await response.aclose()
                last = UpstreamError(
                    f"the remote model answered {response.status_code}",
                    backend=BACKEND,
                    upstream_status=response.status_code,
                )
                if response.status_code not in RETRYABLE_STATUS:
                    break
            except httpx.TimeoutException as exc:
                last = UpstreamTimeoutError("the remote model did not answer in time", backend=BACKEND)
                last.__cause__ = exc
            except httpx.TransportError as exc:
                last = UpstreamError(f"cannot reach the remote model ({type(exc).__name__})", backend=BACKEND)
                last.__cause__ = exc
            if attempt < cfg.max_retries:
                delay = self._backoff(attempt, hint)
                logger.warning("remote_generation_retry", attempt=attempt + 1, delay_s=round(delay, 3), error=str(last))
                await asyncio.sleep(delay)
        self.breaker.failure()
        assert last is not None
        raise last

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The reply's body, refused once it passes ``max_response_bytes`` (read as it streams in, never whole)."""
        cap = self.config.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise UpstreamError(f"the remote model's reply is larger than {cap} bytes", backend=BACKEND)
                chunks.append(chunk)
        finally:
            await response.aclose()
        return b"".join(chunks)

    def _timed_out(self) -> UpstreamTimeoutError:
        self.breaker.failure()
        total = self.config.total_timeout_s
        return UpstreamTimeoutError(f"the remote model did not answer within {total:g} s", backend=BACKEND)

    async def complete(
        self, messages: Sequence[dict[str, str]], max_tokens: int, request_id: str = "-"
    ) -> GenerationResult:
        """One chat completion, within ``total_timeout_s`` and ``max_response_bytes``.

        Raises:
            UpstreamError: Error status, unreadable or oversized body, after retries.
            UpstreamTimeoutError: No answer in time, after retries, or the total deadline passed.
            CircuitOpenError: The circuit is open.
        """
        try:
            async with asyncio.timeout(self.config.total_timeout_s):
                response = await self._send(self._body(messages, max_tokens, False), request_id, stream=True)
                try:
                    raw = await self._read_capped(response)
                except httpx.TimeoutException as exc:
                    self.breaker.failure()
                    raise UpstreamTimeoutError("the remote model stopped sending", backend=BACKEND) from exc
                except httpx.TransportError as exc:
                    self.breaker.failure()
                    raise UpstreamError("the remote model's reply broke off", backend=BACKEND) from exc
                except UpstreamError:
                    self.breaker.failure()
                    raise
        except TimeoutError as exc:
            raise self._timed_out() from exc
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            text = str(choice["message"]["content"] or "")
            tokens = int((payload.get("usage") or {}).get("completion_tokens") or len(text.split()))
            return GenerationResult(text.strip(), tokens, str(choice.get("finish_reason") or "stop"))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamError("the remote model's answer could not be read", backend=BACKEND) from exc

    async def stream(
        self, messages: Sequence[dict[str, str]], max_tokens: int, request_id: str = "-"
    ) -> AsyncIterator[str]:
        """Stream a chat completion as text deltas (server-sent events, ``data: [DONE]`` ends it).

        The whole stream is bounded like :meth:`complete`: ``total_timeout_s`` from the call, ``max_response_bytes``
        of events.

        Raises:
            UpstreamError: Error status, the stream broke off or grew past the size cap.
            UpstreamTimeoutError: No answer in time, or the total deadline passed.
            CircuitOpenError: The circuit is open.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.total_timeout_s
        cap = self.config.max_response_bytes
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send(self._body(messages, max_tokens, True), request_id, stream=True)
        except TimeoutError as exc:
            raise self._timed_out() from exc
        chunks = response.aiter_bytes()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending, size = "", 0
        try:
            while True:
                # Each read gets what is left of the total deadline (a timeout context cannot span the yields).
                try:
                    chunk = await asyncio.wait_for(anext(chunks), max(deadline - loop.time(), 0.0))
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise self._timed_out() from exc
                size += len(chunk)
                if size > cap:  # counted on bytes, so one endless line cannot grow a buffer past the cap either
                    self.breaker.failure()
                    raise UpstreamError(f"the remote model's stream is larger than {cap} bytes", backend=BACKEND)
                *lines, pending = (pending + decoder.decode(chunk)).split("\n")
                for line in lines:
                    delta = _event_delta(line.rstrip("\r"))
                    if delta is _DONE:
                        return
                    if delta:
                        yield str(delta)
        except httpx.TimeoutException as exc:
            self.breaker.failure()
            raise UpstreamTimeoutError("the remote model stopped sending", backend=BACKEND) from exc
        except httpx.TransportError as exc:
            self.breaker.failure()
            raise UpstreamError("the remote model's stream broke off", backend=BACKEND) from exc
        finally:
            await response.aclose()
