"""Grounded answers from a real ``candor serve`` process over HTTP, JSON and server-sent events."""

from __future__ import annotations

import json

import httpx

from tests.e2e.conftest import Server


def test_answer_and_stream_from_a_running_service(server: Server) -> None:
    headers = server.headers(server.frontend_key)
    body = httpx.post(
        f"{server.base_url}/v1/answers", json={"question": "Can I return a gift card?"}, headers=headers, timeout=60
    ).json()
    assert body["abstained"] is False
    assert body["citations"][0]["doc_id"] == "kb-gift-cards"
    assert body["disclosure"]["ai_generated"] is True
    assert body["request_id"]
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/answers",
        json={"question": "Who won the cricket world cup in 2011?", "stream": True},
        headers=headers,
        timeout=60,
    ) as response:
        text = response.read().decode().replace("\r\n", "\n")
    final = json.loads(text.split("event: final\ndata: ", 1)[1].split("\n", 1)[0])
    assert final["abstained"] is True
    assert final["citations"] == []
    schema = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    assert "/v1/answers" in schema["paths"]
    assert "/v1/documents" in schema["paths"]
