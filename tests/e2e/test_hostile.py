"""Hostile input against a real ``candor serve``: every malformed, extreme or racing request ends in a 4xx or a
valid 200, never a 5xx, a stall or a ``null`` where the schema promises a number."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server


def call(server: Server, method: str, path: str, key: str | None, **kwargs: Any) -> httpx.Response:
    headers = {**server.headers(key), **kwargs.pop("headers", {})}
    return httpx.request(method, f"{server.base_url}{path}", headers=headers, timeout=60, **kwargs)


def reviewer_key(server: Server) -> str:
    """A reviewer key created through the store the server reads (keys are looked up per request)."""
    from app.auth import KeyStore

    store = KeyStore(server.state_dir / "candor.sqlite")
    try:
        return store.create("reviewer", label="hostile")
    finally:
        store.close()


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "towel", "filters": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b"[" * 3000 + b"]" * 3000,
        b'{"query": "towel", "context": ' + b'{"user": ' * 600 + b"null" + b"}" * 600 + b"}",
    ],
)
def test_deeply_nested_json_is_a_400(server: Server, body: bytes) -> None:
    response = call(
        server, "POST", "/v1/search", server.frontend_key, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("cursor", ["²", "١٢", "𝟘𝟙", "0", "-1", "9" * 40])
def test_cursor_that_only_looks_like_digits_is_a_400(server: Server, cursor: str) -> None:
    response = call(server, "GET", "/v1/audit/records", reviewer_key(server), params={"cursor": cursor})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("weight", [1e308, 1.7976931348623157e308, 5e-324, 1e-300, 3.5e38, 1e6, 1e-6])
def test_history_weights_at_float_extremes_never_give_a_null_score(server: Server, weight: float) -> None:
    items = call(server, "POST", "/v1/search", server.frontend_key, json={"query": "coffee mug", "k": 2}).json()
    ids = [i["id"] for i in items["items"]]
    history = [{"item_id": ids[0], "weight": weight}, {"item_id": ids[1], "weight": 1.0}]
    response = call(
        server, "POST", "/v1/recommendations", server.frontend_key, json={"history": history, "k": 5, "diversity": 0.3}
    )
    assert response.status_code in {200, 400}, response.text
    if response.status_code == 200:
        for item in response.json()["items"]:
            scores = [item["score"], *(c["score"] for c in item["explanation"]["contributions"])]
            assert all(isinstance(score, float) for score in scores), scores
            assert all(math.isfinite(score) for score in scores), scores
