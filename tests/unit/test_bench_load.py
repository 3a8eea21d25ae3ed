"""The serving benchmark's parts: the load generator's client, its bookkeeping, CPU per request, where reports go."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.load import (
    CpuSnapshot,
    Window,
    cpu_per_request,
    cpu_snapshot,
    dated_report_path,
    emit_report,
    summarize,
)
from bench.serving import drive_calls, report_path


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


def test_only_requests_sent_after_the_warmup_are_measured() -> None:
    window = Window(warmup=1.0, duration=2.0, start=100.0)
    window.record(100.5, 100.6)  # warm-up: counted as finished, not measured
    window.record(101.0, 101.25)
    window.record(102.0, 102.5)
    window.record(102.5, 102.6, error="503")
    summary = window.summary()
    assert window.finished == 4
    assert summary["requests"] == 2
    assert summary["errors"] == {"503": 1}
    assert summary["throughput_rps"] == 1.0
    assert summary["latency_ms"]["p50"] == 500.0
    assert summary["latency_ms"]["mean"] == 375.0
    assert summarize([window, Window(0.0, 2.0)])["throughput_rps"] == 0.5  # durations add up


PID = 100


def _snap(threads: dict[int, float], idle: int, busy: int, own: float) -> CpuSnapshot:
    # user nice system idle iowait irq softirq steal
    return CpuSnapshot(threads, [busy, 0, 0, idle, 0, 0, 0, 0], own)


def test_cpu_per_request_splits_the_event_loop_from_other_threads_and_adds_spans() -> None:
    first = (_snap({PID: 1.0, 7: 2.0}, 0, 0, 0.5), _snap({PID: 1.2, 7: 2.6, 8: 0.1}, 20, 80, 0.6))
    second = (_snap({PID: 2.0, 7: 3.0, 8: 0.1}, 100, 100, 1.0), _snap({PID: 2.2, 7: 3.4, 8: 0.2}, 160, 120, 1.1))
    assert cpu_per_request(PID, [first, second], requests=100) == {
        "server_event_loop": 4.0,  # 0.2 s + 0.2 s over 100 requests
        "server_other_threads": 12.0,  # thread 7: 1.0 s; thread 8 (started in the first span): 0.2 s
        "server_total": 16.0,
        "load_generator": 2.0,
        "machine_idle_pct": 44.4,  # (20 + 60) idle of (100 + 80) ticks
    }


def test_without_proc_or_requests_there_is_no_reading() -> None:
    span = (_snap({PID: 1.0}, 0, 0, 0.0), _snap({PID: 2.0}, 1, 1, 0.0))
    assert cpu_per_request(PID, [span], requests=0) is None
    assert cpu_per_request(PID, [(CpuSnapshot(None, None, 0.0), CpuSnapshot(None, None, 1.0))], requests=5) is None
    no_stat = (CpuSnapshot({PID: 1.0}, None, 0.0), CpuSnapshot({PID: 2.0}, None, 0.0))
    reading = cpu_per_request(PID, [no_stat], requests=1000)
    assert reading is not None
    assert reading["server_event_loop"] == 1.0
    assert reading["machine_idle_pct"] is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")
def test_a_snapshot_reads_every_thread_of_a_process() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        taken = cpu_snapshot(os.getpid())
        assert taken.threads is not None
        assert os.getpid() in taken.threads  # the main thread's id is the process id
        assert worker.native_id in taken.threads
        assert taken.machine is not None
        assert len(taken.machine) == 8
    finally:
        stop.set()
        worker.join()


def test_reports_go_to_a_dated_file_that_never_replaces_an_earlier_one(tmp_path: Path) -> None:
    when = time.strptime("2026-12-05", "%Y-%m-%d")
    first = dated_report_path("serving", when, tmp_path)
    assert first == tmp_path / "2026-12-05-serving.json"
    first.write_text("{}")
    assert dated_report_path("serving", when, tmp_path) == tmp_path / "2026-12-05-serving-2.json"
    default = report_path(None, "serving")
    assert default is not None
    assert default.parent == Path(__file__).resolve().parents[2] / "bench" / "results"
    assert default.name.startswith(time.strftime("%Y-%m-%d", time.gmtime()))
    assert report_path("-", "serving") is None
    assert report_path("x/report.json", "serving") == Path("x/report.json")


def test_a_report_is_printed_and_written_where_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emit_report({"benchmark": "serving", "batched": {}}, tmp_path / "deep" / "report.json")
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "deep" / "report.json").read_text("utf-8"))
    assert printed["benchmark"] == "serving"
    emit_report({"benchmark": "serving"}, None)
    assert json.loads(capsys.readouterr().out) == {"benchmark": "serving"}
