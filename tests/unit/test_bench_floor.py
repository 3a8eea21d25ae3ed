"""The load generator's client and pacing, the floor benchmark's report, and how benchmarks emit reports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bench.floor import event_loop_vs, main
from bench.load import emit_report
from bench.serving import drive_calls


class _Server:
    """A loopback HTTP/1.1 server that answers every request with 200 and records what it received."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                headers: dict[bytes, bytes] = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                self.requests.append((line.strip(), headers, body))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}")
                await writer.drain()
        except (ConnectionResetError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def test_clients_send_gets_without_a_body_and_posts_with_one_on_keep_alive_connections() -> None:
    async def scenario() -> tuple[_Server, Any]:
        async with _Server() as server:
            calls = [("GET", "/health/live", None), ("POST", "/v1/search", b'{"query": "towel"}')]
            window = await drive_calls(server.port, "k3y", calls, concurrency=2, duration=0.2, warmup=0.0)
        return server, window

    server, window = asyncio.run(scenario())
    assert window.finished == len(server.requests) > 2
    assert not window.errors
    gets = [r for r in server.requests if r[0] == b"GET /health/live HTTP/1.1"]
    posts = [r for r in server.requests if r[0] == b"POST /v1/search HTTP/1.1"]
    assert gets
    assert posts
    assert len(gets) + len(posts) == len(server.requests)
    assert all(h[b"authorization"] == b"Bearer k3y" and b"content-length" not in h and not b for _, h, b in gets)
    assert all(h[b"content-type"] == b"application/json" and b == b'{"query": "towel"}' for _, h, b in posts)


def test_paced_clients_send_no_faster_than_the_rate_asked() -> None:
    async def scenario() -> Any:
        async with _Server() as server:
            return await drive_calls(
                server.port, "k", [("GET", "/", None)], concurrency=4, duration=0.5, warmup=0.0, rate=20.0
            )

    window = asyncio.run(scenario())
    # Each client waits 4 / 20 = 0.2 s between sends, starting spread over one interval: at most 3 sends each.
    assert 4 <= window.finished <= 12


def _route(loop_ms: float | None) -> dict[str, Any]:
    return {"cpu_ms_per_request": None if loop_ms is None else {"server_event_loop": loop_ms}}


def test_each_route_is_set_against_the_search_event_loop() -> None:
    routes = {"search": _route(1.0), "live": _route(0.25), "info": _route(0.5), "elsewhere": _route(None)}
    assert event_loop_vs(routes, "search") == {"live": 0.25, "info": 0.5, "elsewhere": None}
    assert event_loop_vs({"search": _route(None), "live": _route(0.2)}, "search") == {"live": None}


@pytest.mark.parametrize("argv", [["--duration", "0"], ["--warmup", "-1"], ["--concurrency", "0"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_a_report_is_printed_and_written_where_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emit_report({"benchmark": "floor", "routes": {}}, tmp_path / "deep" / "report.json")
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "deep" / "report.json").read_text("utf-8"))
    assert printed["benchmark"] == "floor"
    emit_report({"benchmark": "floor"}, None)
    assert json.loads(capsys.readouterr().out) == {"benchmark": "floor"}
