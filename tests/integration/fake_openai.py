"""A real HTTP server that speaks the OpenAI chat-completions protocol (JSON and server-sent events), for tests.

Each call takes the next behaviour from ``script`` (then ``default``):

- ``echo``: answers with the first sentence of passage 1 of the prompt, citing ``[1]`` (a grounded answer);
- ``hallucinate``: a confident answer the passages do not support;
- ``idk``: "I don't know.";
- ``429`` / ``503``: that status (``Retry-After: 0`` on 429);
- ``slow``: waits ``slow_s`` before answering (for timeouts);
- ``tamper-number``, ``tamper-unit``, ``tamper-name``, ``tamper-negation``: a sentence of passage 1, citing ``[1]``,
  with one fact changed: its numbers times ten, days made weeks, a name replaced, its negation dropped;
- ``drip``: answers at once, but one byte every ``drip_s`` (never trips a per-read timeout);
- ``huge``: a well-formed answer of ``huge_bytes`` characters (for size caps).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.e2e.conftest import free_port

HALLUCINATION = "Yes, every gift card can be exchanged for cash at any post office. [1]"
# How each tamper mode picks a sentence of passage 1 and what it changes in it.
TAMPER: dict[str, tuple[str, Callable[[str], str]]] = {
    "number": (r"\d", lambda s: re.sub(r"\d+", lambda m: str(int(m.group()) * 10), s)),
    "unit": (r"\d+ (?:business )?days", lambda s: s.replace("days", "weeks")),
    "name": (r"\bMastercard\b", lambda s: s.replace("Mastercard", "Discover")),
    "negation": (r"\bcannot\b", lambda s: s.replace("cannot", "can")),
}


class FakeOpenAI:
    """The ASGI app; inspect ``requests`` for what the client sent."""

    def __init__(self) -> None:
        self.script: deque[str] = deque()
        self.default = "echo"
        self.slow_s = 2.0
        self.drip_s = 0.05
        self.huge_bytes = 5_000_000
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def _text(self, body: dict[str, Any], mode: str) -> str:
        if mode == "hallucinate":
            return HALLUCINATION
        if mode == "huge":
            return "Refunds take 5 days. " * (self.huge_bytes // 21)
        if mode == "idk":
            return "I don't know."
        user = body["messages"][-1]["content"]
        match = re.search(r'<passage id="1"[^>]*>\n(.*?)\n</passage>', user, re.S)
        sentences = re.split(r"(?<=[.!?])\s+", match.group(1)) if match else ["Nothing."]
        if mode.startswith("tamper-"):
            pattern, change = TAMPER[mode.removeprefix("tamper-")]
            chosen = next((s for s in sentences if re.search(pattern, s)), sentences[0])
            return f"{change(chosen)} [1]"
        return f"{sentences[0]} [1]"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = json.loads(b"".join(chunks) or b"{}")
        self.requests.append(body)
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        mode = self.script.popleft() if self.script else self.default
        if mode in {"429", "503"}:
            headers = [(b"content-type", b"application/json")] + ([(b"retry-after", b"0")] if mode == "429" else [])
            await send({"type": "http.response.start", "status": int(mode), "headers": headers})
            await send({"type": "http.response.body", "body": b'{"error": {"message": "busy"}}'})
            return
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        text = self._text(body, mode)
        if mode == "drip":
            if body.get("stream"):
                event = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
                payload = f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode()
                await self._drip_body(send, payload, b"text/event-stream")
            else:
                await self._drip_body(send, json.dumps(self._completion(body, text)).encode(), b"application/json")
            return
        if body.get("stream"):
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            # Word by word; a huge reply in 16 KB pieces (so the fake does not spend seconds sending it).
            pieces = [text[i : i + 16384] for i in range(0, len(text), 16384)] if mode == "huge" else None
            for word in pieces or re.findall(r"\S+\s*", text):
                event = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                await send(
                    {"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n".encode(), "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(self._completion(body, text)).encode()})

    @staticmethod
    def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
        return {
            "id": "cmpl-test",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10},
        }

    async def _drip_body(self, send: Any, payload: bytes, content_type: bytes) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        for n in range(len(payload)):
            await asyncio.sleep(self.drip_s)
            await send({"type": "http.response.body", "body": payload[n : n + 1], "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@contextmanager
def fake_openai_server() -> Iterator[tuple[str, FakeOpenAI]]:
    """Serve a :class:`FakeOpenAI` on a free loopback port; yield its ``/v1`` base URL and the app."""
    app = FakeOpenAI()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "fake OpenAI server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
