"""Hostile input against a real ``candor serve``: every malformed, extreme or racing request ends in a 4xx or a
valid 200, never a 5xx, a stall or a ``null`` where the schema promises a number."""

from __future__ import annotations

import asyncio
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


async def _race(server: Server, rounds: int) -> list[httpx.Response]:
    item = {"title": "Hostile Ceramic Coffee Mug", "category": "Kitchen & Dining > Coffee Mugs", "price": 99.0}
    searches = [
        ("/v1/search", {"query": "coffee mug", "k": 10, "filters": {"category": "Kitchen & Dining"}, "diversity": 0.7}),
        ("/v1/search", {"query": "ceramic mug", "k": 5, "filters": {"price_max": 500}, "diversity": 0.3}),
        ("/v1/recommendations", {"history": ["HOSTILE-RACE", "HOSTILE-RACE-2"], "k": 5, "diversity": 0.5}),
        ("/v1/recommendations", {"item_id": "HOSTILE-RACE", "k": 5, "diversity": 0.5}),
    ]
    admin, frontend = server.headers(server.admin_key), server.headers(server.frontend_key)
    out: list[httpx.Response] = []
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
        await client.put("/v1/items/HOSTILE-RACE-2", json=item, headers=admin)
        for _ in range(rounds):
            writes = [
                client.put("/v1/items/HOSTILE-RACE", json=item, headers=admin),
                client.delete("/v1/items/HOSTILE-RACE", headers=admin),
                client.put("/v1/items/HOSTILE-RACE", json={**item, "title": "Hostile Mug v2"}, headers=admin),
            ]
            reads = [client.post(path, json=body, headers=frontend) for path, body in searches * 2]
            out.extend(await asyncio.gather(*writes, *reads))
    return out


def test_catalog_writes_racing_reads_never_give_5xx(server: Server) -> None:
    responses = asyncio.run(_race(server, rounds=12))
    statuses = [r.status_code for r in responses]
    assert all(s < 500 for s in statuses), [(r.request.url.path, r.status_code, r.text[:200]) for r in responses]
    # Reads answer, or say the item is not there (a history of only deleted items, a deleted seed item).
    assert set(statuses) <= {200, 201, 204, 404}, statuses


async def _create_at_once(server: Server, item_id: str, n: int) -> list[httpx.Response]:
    item = {"title": "Concurrent Create Lamp", "category": "Home Decor > Lamps"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, headers=server.headers(server.admin_key)) as c:
        return list(await asyncio.gather(*(c.put(f"/v1/items/{item_id}", json=item) for _ in range(n))))


def test_concurrent_creates_of_one_new_id_give_one_201(server: Server) -> None:
    responses = asyncio.run(_create_at_once(server, "HOSTILE-CREATE-1", 8))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 7 + [201], statuses
    assert [r.json()["created"] for r in responses].count(True) == 1


@pytest.mark.parametrize("doc_id", ["faq/returns", "/", "a/b/c"])
def test_a_document_id_that_cannot_be_addressed_is_refused(server: Server, doc_id: str) -> None:
    body = {"documents": [{"id": doc_id, "title": "Returns", "text": "Return within 30 days."}]}
    response = call(server, "POST", "/v1/documents", server.admin_key, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_frontend_keys_see_no_deployment_internals(server: Server) -> None:
    info = call(server, "GET", "/v1/info", server.frontend_key)
    assert info.status_code == 200
    assert str(server.state_dir.parent) not in info.text
    assert "path" not in info.json()["pack"]
    assert "path" in call(server, "GET", "/v1/info", server.admin_key).json()["pack"]
