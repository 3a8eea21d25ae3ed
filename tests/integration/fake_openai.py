"""A real HTTP server that speaks the OpenAI chat-completions protocol (JSON and server-sent events), for tests.

Each call takes the next behaviour from ``script`` (then ``default``):

- ``echo``: answers with the first sentence of passage 1 of the prompt, citing ``[1]`` (a grounded answer);
- ``hallucinate``: a confident answer the passages do not support;
- ``idk``: "I don't know.";
- ``429`` / ``503``: that status (``Retry-After: 0`` on 429);
- ``slow``: waits ``slow_s`` before answering (for timeouts);
- ``tamper-number``, ``tamper-unit``, ``tamper-name``, ``tamper-negation``: a sentence of passage 1, citing ``[1]``,
  with one fact changed: its numbers times ten, days made weeks, a name replaced, its negation dropped.
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
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def _text(self, body: dict[str, Any], mode: str) -> str:
        if mode == "hallucinate":
            return HALLUCINATION
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
        if body.get("stream"):
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            for word in re.findall(r"\S+\s*", text):
                event = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                await send(
                    {"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n".encode(), "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        payload = {
            "id": "cmpl-test",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10},
        }
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


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
