"""The service over real HTTP: auth, every kind of bad input, batching under concurrency, admin changes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.conftest import PROJECT_ROOT
from tests.e2e.conftest import SERVER_DEVICE, Server


def post(
    server: Server, path: str, body: Any, key: str | None, extra_headers: dict[str, str] | None = None
) -> httpx.Response:
    headers = {**server.headers(key), **(extra_headers or {})}
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert "details" in body["error"]
    return body


def test_health_schema_and_info(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/health/live").json() == {"status": "ok"}
    assert httpx.get(f"{server.base_url}/health/ready").json() == {"status": "ready"}
    schema = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    assert {"/v1/search", "/v1/recommendations", "/v1/items/{item_id}", "/v1/index/rebuild"} <= set(schema["paths"])
    info = httpx.get(f"{server.base_url}/v1/info", headers=server.headers(server.frontend_key)).json()
    assert info["models"]["encoder"]["name"] == "all-MiniLM-L6-v2"
    assert info["models"]["encoder"]["version"].startswith("sha256:")
    assert info["device"] == SERVER_DEVICE
    assert info["index"]["kind"] == "flat"
    assert info["index"]["size"] >= 1000


def test_search_returns_items_with_explanations_and_request_id(server: Server) -> None:
    response = post(
        server, "/v1/search", {"query": "baby bath towel", "k": 4}, server.frontend_key, {"X-Request-ID": "trace-123"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "trace-123"
    body = response.json()
    assert body["request_id"] == "trace-123"
    assert len(body["items"]) == 4
    first = body["items"][0]
    assert set(first) == {"id", "title", "category", "brand", "price", "score", "explanation"}
    assert first["category"].startswith("Baby Care")
    assert first["explanation"]["summary"]
    assert body["model"]["encoder"]["version"].startswith("sha256:")
    assert body["model"]["index"]["size"] >= 1000


def test_every_recommendation_mode(server: Server) -> None:
    key = server.frontend_key
    watch = post(server, "/v1/search", {"query": "analog wrist watch", "k": 1}, key).json()["items"][0]["id"]
    by_item = post(server, "/v1/recommendations", {"item_id": watch, "k": 5}, key).json()
    assert by_item["mode"] == "item_id"
    assert all(i["category"].startswith("Watches") for i in by_item["items"])
    history = post(
        server,
        "/v1/recommendations",
        {"history": [watch, {"item_id": by_item["items"][0]["id"], "weight": 2.5}, "missing-id"], "k": 5},
        key,
    ).json()
    assert history["ignored_history"] == ["missing-id"]
    assert not {watch, by_item["items"][0]["id"]} & {i["id"] for i in history["items"]}
    assert history["items"][0]["explanation"]["method"] == "history-similarity-decomposition"
    assert history["model"]["recommender"] == {"kind": "content-similarity", "version": None}
    by_user = post(server, "/v1/recommendations", {"user_id": "u0002", "k": 3, "diversity": 0.5}, key).json()
    assert by_user["mode"] == "user_id"
    assert len(by_user["items"]) == 3
    # A shopper with no history yet gets popular items, and each result says so.
    new_user = post(server, "/v1/recommendations", {"user_id": "nobody", "k": 3}, key).json()
    assert new_user["model"]["recommender"] == {"kind": "popularity", "version": None}
    assert len(new_user["items"]) == 3
    assert all(i["explanation"]["method"] == "popularity-fallback" for i in new_user["items"])
    assert "No history for this shopper yet" in new_user["items"][0]["explanation"]["summary"]
    by_query = post(
        server,
        "/v1/recommendations",
        {"query": "coffee mug", "k": 3, "filters": {"price_max": 400}, "exclude": []},
        key,
    ).json()
    assert all(i["price"] <= 400 for i in by_query["items"])


def test_authentication_and_roles(server: Server) -> None:
    missing = post(server, "/v1/search", {"query": "towel"}, None)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(post(server, "/v1/search", {"query": "towel"}, "cnd_0000_not-a-key"), 401, "unauthorized")
    item = {"title": "Forbidden Thing", "category": "X"}
    forbidden = httpx.put(f"{server.base_url}/v1/items/F1", json=item, headers=server.headers(server.frontend_key))
    assert_error(forbidden, 403, "forbidden")
    assert_error(post(server, "/v1/index/rebuild", {}, server.frontend_key), 403, "forbidden")
    assert post(server, "/v1/search", {"query": "towel", "k": 1}, server.admin_key).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/search", {}, 400, "validation_error"),  # missing query
        ("/v1/search", {"query": "towel", "k": 0}, 400, "validation_error"),
        ("/v1/search", {"query": "towel", "k": 101}, 400, "validation_error"),
        ("/v1/search", {"query": "towel", "k": "ten"}, 400, "validation_error"),
        ("/v1/search", {"query": "   "}, 400, "validation_error"),
        ("/v1/search", {"query": "x" * 1001}, 400, "validation_error"),
        ("/v1/search", {"query": "towel", "color": "red"}, 400, "validation_error"),
        ("/v1/search", {"query": "towel", "filters": {"price_min": 10, "price_max": 1}}, 400, "validation_error"),
        ("/v1/search", {"query": "towel", "filters": {"colour": "red"}}, 400, "validation_error"),
        ("/v1/search", {"query": "towel", "diversity": 2}, 400, "validation_error"),
        ("/v1/recommendations", {"k": 5}, 400, "validation_error"),  # none of the four modes
        ("/v1/recommendations", {"query": "towel", "item_id": "x"}, 400, "validation_error"),  # conflicting
        ("/v1/recommendations", {"history": []}, 400, "validation_error"),
        ("/v1/recommendations", {"history": [{"item_id": "a", "weight": 0}]}, 400, "validation_error"),
        ("/v1/recommendations", {"item_id": "no-such-item"}, 404, "item_not_found"),
        ("/v1/recommendations", {"history": ["no-such-item"]}, 404, "item_not_found"),
    ],
)
def test_bad_input_gets_a_clear_4xx(server: Server, path: str, body: Any, status: int, code: str) -> None:
    assert_error(post(server, path, body, server.frontend_key), status, code)


def test_malformed_body_content_type_size_and_routes(server: Server) -> None:
    headers = {**server.headers(server.frontend_key), "Content-Type": "application/json"}
    url = f"{server.base_url}/v1/search"
    assert_error(httpx.post(url, content=b'{"query": "tow', headers=headers), 400, "invalid_json")
    assert_error(httpx.post(url, content=b"[1, 2", headers=headers), 400, "invalid_json")
    text_headers = {**headers, "Content-Type": "text/plain"}
    assert_error(httpx.post(url, content=b'{"query": "towel"}', headers=text_headers), 415, "unsupported_media_type")
    huge = b'{"query": "' + b"a" * 2_000_000 + b'"}'
    assert_error(httpx.post(url, content=huge, headers=headers), 413, "payload_too_large")
    assert_error(httpx.get(url, headers=headers), 405, "method_not_allowed")
    assert_error(httpx.get(f"{server.base_url}/v1/nothing-here", headers=headers), 404, "not_found")
    for missing in (httpx.post(url, headers=headers), httpx.post(url, content=b"", headers=headers)):
        body = assert_error(missing, 400, "validation_error")
        assert body["error"]["details"] == [
            {"field": "data", "message": "required: send a JSON object", "source": "body"}
        ]


def test_unknown_query_parameters_are_refused(server: Server) -> None:
    base, admin = server.base_url, server.headers(server.admin_key)
    refused = assert_error(
        httpx.post(f"{base}/v1/search?debug=1", json={"query": "towel"}, headers=server.headers(server.frontend_key)),
        400,
        "validation_error",
    )
    assert [(d["field"], d["source"]) for d in refused["error"]["details"]] == [("debug", "query")]
    # A misspelt filter must not come back as an unfiltered page; the message lists what the route accepts.
    typo = assert_error(
        httpx.get(f"{base}/v1/audit/records?limit=5&endpont=/v1/search", headers=admin), 400, "validation_error"
    )
    assert [d["field"] for d in typo["error"]["details"]] == ["endpont"]
    assert "endpoint" in typo["error"]["details"][0]["message"]
    assert httpx.get(f"{base}/v1/audit/records?limit=5&endpoint=/v1/search", headers=admin).status_code == 200
    assert_error(httpx.get(f"{base}/health/live?=0"), 400, "validation_error")  # an empty name is a name too
    assert_error(httpx.post(f"{base}/v1/search?debug=1", json={"query": "towel"}), 401, "unauthorized")  # auth first
    document = httpx.get(f"{base}/schema/openapi.json?download=1")
    assert document.status_code == 200  # the document's own pages are not checked


def test_admin_changes_are_visible_at_once(server: Server) -> None:
    admin = server.headers(server.admin_key)
    item = {
        "title": "Handwoven Jute Picnic Basket with Lid",
        "text": "A sturdy jute basket for picnics, with leather handles.",
        "category": "Home Decor & Festive Needs > Baskets",
        "brand": "Weavecraft",
        "price": 899.0,
        "attributes": {"Material": "Jute"},
    }
    url = f"{server.base_url}/v1/items/E2E-BASKET"
    created = httpx.put(url, json=item, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["created"] is True
    assert httpx.put(url, json=item, headers=admin).status_code == 200
    found = post(server, "/v1/search", {"query": "jute picnic basket", "k": 3}, server.frontend_key).json()
    assert found["items"][0]["id"] == "E2E-BASKET"
    assert httpx.get(url, headers=admin).json()["attributes"] == {"Material": "Jute"}
    assert_error(httpx.put(url, json={**item, "id": "OTHER"}, headers=admin), 400, "validation_error")
    assert_error(httpx.put(url, json={**item, "price": -3}, headers=admin), 400, "validation_error")
    assert_error(httpx.put(url, json={"title": "No category"}, headers=admin), 400, "validation_error")
    assert httpx.delete(url, headers=admin).status_code == 204
    again = post(server, "/v1/search", {"query": "jute picnic basket", "k": 10}, server.frontend_key).json()
    assert "E2E-BASKET" not in {i["id"] for i in again["items"]}
    assert_error(httpx.delete(url, headers=admin), 404, "item_not_found")
    assert_error(httpx.get(url, headers=admin), 404, "item_not_found")


def test_rebuild_runs_in_the_background(server: Server) -> None:
    started = post(server, "/v1/index/rebuild", {}, server.admin_key)
    assert started.status_code == 202
    status: dict[str, Any] = {}
    for _ in range(600):
        status = httpx.get(f"{server.base_url}/v1/index/rebuild", headers=server.headers(server.admin_key)).json()
        if status["state"] != "running":
            break
        time.sleep(0.1)
    assert status["state"] == "done", status
    assert post(server, "/v1/search", {"query": "towel", "k": 1}, server.frontend_key).status_code == 200


def test_a_key_created_while_running_works_at_once(server: Server) -> None:
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--role", "frontend"],
        cwd=PROJECT_ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip()
    assert re.fullmatch(r"cnd_[0-9a-f]{8}_[A-Za-z0-9_-]+", key), created.stdout
    assert post(server, "/v1/search", {"query": "towel", "k": 1}, key).status_code == 200


def batch_histogram(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics").text
    pattern = r'^candor_batch_size_bucket\{le="([^"]+)",model="encoder"\} ([0-9.e+]+)$'
    return {le: float(v) for le, v in re.findall(pattern, text, re.M)}


def test_concurrent_searches_coalesce_into_batches(server: Server) -> None:
    before = batch_histogram(server)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(server.frontend_key)) as client:
            calls = [client.post("/v1/search", json={"query": f"cotton bath towel {i}", "k": 3}) for i in range(32)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(burst()) == [200] * 32
    after = batch_histogram(server)
    batches = after["+Inf"] - before.get("+Inf", 0.0)
    single = after["1.0"] - before.get("1.0", 0.0)
    assert batches < 32, "32 concurrent searches ran as 32 separate batches"
    assert batches - single > 0, "no batch held more than one request"
    metrics = httpx.get(f"{server.base_url}/metrics").text
    for name in (
        "candor_requests_total",
        "candor_request_latency_seconds",
        "candor_queue_depth",
        "candor_batch_tokens",
        "candor_batch_padding_ratio",
        "candor_rejections_total",
    ):
        assert name in metrics
