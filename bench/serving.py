"""Serving benchmark: the service under concurrent search load, batching on and off, and the raw encoder.

Prints one JSON document and writes it to ``bench/results/<UTC date>-serving.json`` (``--out FILE`` writes it
there instead, ``--out -`` only prints it).

Usage::

    python -m bench [--duration 20] [--rounds 4] [--concurrency 32] [--state-dir var] [--out FILE]

Each mode starts ``candor serve`` as a subprocess on a free loopback port (sharing one state folder, so the
index is built at most once), drives ``POST /v1/search`` from ``--concurrency`` keep-alive connections for
``--duration`` seconds after a warm-up, and reads the batch-size histogram from ``/metrics``. The load generator
is a minimal asyncio HTTP/1.1 client so that it takes as little of the shared CPU as possible.

With batching on, the measured time is split into ``--rounds`` rounds, and after each one (the server idle) the
encoder is timed in this process at that round's mean batch size. A shared machine's speed drifts by more than
10 % over a minute, so each round's service figure is compared with the encoder figure taken right after it,
and the report gives every round's ratio and their median. Each mode also reports where the CPU went per
request (``cpu_ms_per_request``, from Linux ``/proc``): the server's event loop, its other threads, the load
generator, and the machine's idle share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from app.auth import KeyStore
from app.observability import configure_logging
from app.settings import load_settings
from bench.load import (
    CpuSnapshot,
    Window,
    cpu_per_request,
    cpu_snapshot,
    dated_report_path,
    emit_report,
    summarize,
)
from retrieval.encoder import EncoderConfig, load_encoder
from retrieval.pack import load_pack

GOAL_BATCHED_SPEEDUP = 2.0
GOAL_SERVICE_VS_RAW = 0.8


def make_queries(pack_path: Path, n: int = 500, seed: int = 13) -> list[str]:
    """Mixed-length product queries drawn from the pack's titles and categories (seeded)."""
    items = load_pack(pack_path).items
    rng = random.Random(seed)
    queries = []
    for item in rng.sample(list(items), k=min(n, len(items))):
        words = item.title.split()
        cut = rng.randint(min(5, len(words)), len(words))
        query = " ".join(words[:cut])
        if rng.random() < 0.7:
            query += " in " + item.category.split(" > ")[-1].lower()
        if rng.random() < 0.4 and item.price is not None:
            query += f" under {int(item.price * 1.2)} rupees"
        queries.append(query)
    while len(queries) < n:
        queries.append(rng.choice(queries))
    return queries


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RawClient:
    """One keep-alive HTTP/1.1 connection; just enough protocol for a load generator."""

    def __init__(self, host: str, port: int, auth: str) -> None:
        self.host, self.port, self.auth = host, port, auth
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, body: bytes | None = None, auth: str | None = None
    ) -> tuple[int, bytes]:
        """Send one request (``body``, if given, as JSON; ``auth``, if given, instead of the connection's key)."""
        assert self.reader is not None
        assert self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {auth or self.auth}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write((head + "\r\n").encode() + (body or b""))
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        payload = await self.reader.readexactly(length)
        return status, payload

    async def close(self) -> None:
        """Close the connection."""
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


Call = tuple[str, str, bytes | None]
"""One request a client sends: method, path and JSON body (``None`` for none)."""


def search_calls(queries: list[str]) -> list[Call]:
    """``POST /v1/search`` for each query, ten results."""
    return [("POST", "/v1/search", json.dumps({"query": q, "k": 10}).encode()) for q in queries]


async def drive_calls(
    port: int, key: str, calls: list[Call], concurrency: int, duration: float, warmup: float
) -> Window:
    """Run closed-loop clients for ``warmup + duration`` seconds; measure the last ``duration``.

    Args:
        port: The server's loopback port.
        key: The API key every request carries.
        calls: Sent round-robin, each client starting at its own offset.
        concurrency: Clients, one keep-alive connection each.
        duration: Measured seconds.
        warmup: Unmeasured seconds first.
    """
    window = Window(warmup, duration)

    async def worker(offset: int) -> None:
        client = RawClient("127.0.0.1", port, key)
        await client.connect()
        i = offset
        try:
            while (sent := time.perf_counter()) < window.stop_at:
                status, _ = await client.request(*calls[i % len(calls)])
                window.record(sent, time.perf_counter(), None if status == 200 else str(status))
                i += concurrency
        finally:
            await client.close()

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return window


async def drive(port: int, key: str, queries: list[str], concurrency: int, duration: float, warmup: float) -> Window:
    """Search with closed-loop clients for ``warmup + duration`` seconds; measure the last ``duration``."""
    return await drive_calls(port, key, search_calls(queries), concurrency, duration, warmup)


def scrape_batches(port: int, model: str = "encoder") -> tuple[float, float]:
    """``(count, sum)`` of the batch-size histogram for one model."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for kind in ("count", "sum"):
        match = re.search(rf'^candor_batch_size_{kind}{{model="{model}"}} ([0-9.e+]+)$', text, re.M)
        values[kind] = float(match.group(1)) if match else 0.0
    return values["count"], values["sum"]


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    """Poll ``/health/ready`` until 200 (the first start may build the index)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:  # 503 until ready; its body says when the engine gave up
            body = json.loads(exc.read() or b"{}")
            if body.get("status") == "failed":
                raise RuntimeError(f"server failed to start: {body.get('reason')}") from None
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server did not become ready")


def start_server(state_dir: Path, env_overrides: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``candor serve`` on a free loopback port, quiet (no access log), on ``state_dir``.

    Returns:
        ``(process, port)``; wait for it with :func:`wait_ready`.
    """
    port = free_port()
    env = {
        **os.environ,
        **env_overrides,
        "CANDOR_PATHS__STATE_DIR": str(state_dir),
        "CANDOR_LOGGING__ACCESS_LOG": "false",
        "CANDOR_LOGGING__LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


CpuSpan = tuple[CpuSnapshot, CpuSnapshot]
"""CPU snapshots of the server before and after a load."""


def read_load(pid: int, load: Coroutine[Any, Any, Window]) -> tuple[Window, CpuSpan]:
    """Run one load and read the server's and this process's CPU around it.

    Args:
        pid: The server's process id.
        load: Drives the server and returns the measured window; run here, between the readings.

    Returns:
        The window and the ``(before, after)`` CPU snapshots for :func:`bench.load.cpu_per_request`.
    """
    before = cpu_snapshot(pid)
    window = asyncio.run(load)
    return window, (before, cpu_snapshot(pid))


ROUND_WARMUP_S = 2.0  # refills the pipeline after the pause between rounds


def run_mode(
    name: str,
    env_overrides: dict[str, str],
    args: argparse.Namespace,
    key: str,
    queries: list[str],
    *,
    rounds: int = 1,
    after_round: Callable[[float | None], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Start a server with ``env_overrides``, load it, and stop it.

    Args:
        name: The mode's name in the report.
        env_overrides: Settings for this server (``CANDOR_...`` variables).
        args: ``duration``, ``warmup``, ``concurrency`` and ``state_dir``.
        key: A frontend API key.
        queries: The query texts, sent round-robin.
        rounds: Measured rounds splitting ``args.duration`` (a short warm-up before each after the first).
        after_round: Called with each round's mean batch size while the server idles; what it returns is kept
            under the round's ``encoder_in_process``.

    Returns:
        Throughput and latency over all rounds, the mean batch size, and each round (``rounds``) when there
        are several or ``after_round`` is given.
    """
    proc, port = start_server(args.state_dir, env_overrides)
    windows: list[Window] = []
    per_round: list[dict[str, Any]] = []
    spans: list[CpuSpan] = []
    batches = items = 0.0
    try:
        wait_ready(port, proc)
        for number in range(rounds):
            warmup = args.warmup if number == 0 else min(args.warmup, ROUND_WARMUP_S)
            before = scrape_batches(port)
            load = drive(port, key, queries, args.concurrency, args.duration / rounds, warmup)
            window, span = read_load(proc.pid, load)
            after = scrape_batches(port)
            spans.append(span)
            # The histogram also counts warm-up batches: a close enough mean for sizing the in-process run.
            size = (after[1] - before[1]) / (after[0] - before[0]) if after[0] > before[0] else None
            batches, items = batches + after[0] - before[0], items + after[1] - before[1]
            windows.append(window)
            entry = {**window.summary(), "mean_batch_size": round(size, 2) if size else None}
            entry["cpu_ms_per_request"] = cpu_per_request(proc.pid, [span], window.finished)
            if after_round is not None:
                entry["encoder_in_process"] = after_round(size)
            per_round.append(entry)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = summarize(windows)
    result["mean_batch_size"] = round(items / batches, 2) if batches else None
    finished = sum(w.finished for w in windows)
    result["cpu_ms_per_request"] = cpu_per_request(proc.pid, spans, finished)
    result["mode"] = name
    if after_round is not None or rounds > 1:
        result["rounds"] = per_round
    return result


class InProcessEncoder:
    """The service's encoder loaded in this process, timed on length-sorted batches (:func:`~bench.hotpath.raw_rate`).

    Streams are laid out as the service lays out its workers (:meth:`Encoder.plan_workers`), each on its own
    thread; the other layout (one stream using every core, or one single-threaded stream per core) is timed for
    comparison.
    """

    def __init__(self, queries: list[str], config: EncoderConfig) -> None:
        self.encoder = load_encoder(config)  # the served model, device and options, not the defaults
        self.encoder.warmup()
        self.tokenised = [self.encoder.token_ids(q) for q in queries]
        self.service = self.encoder.plan_workers(config.workers, config.threads)
        cores = self.service[0] * self.service[1]
        self.other = self.encoder.plan_workers(0, config.threads) if self.service[0] == 1 else (1, cores)

    def rate(self, batch_size: int, seconds: float, layout: tuple[int, int] | None = None) -> float:
        """Texts/s on sorted batches of ``batch_size`` in ``layout`` (streams, threads each; the service's)."""
        from bench.hotpath import raw_rate

        streams, threads_each = layout or self.service
        return round(
            raw_rate(self.encoder, self.tokenised, batch_size, seconds, streams=streams, threads_each=threads_each), 1
        )

    def round_figure(self, mean_batch_size: float | None, seconds: float) -> dict[str, Any]:
        """The service layout's texts/s at a round's mean batch size."""
        size = max(1, round(mean_batch_size or 1))
        return {"batch_size": size, "sorted_texts_per_s": self.rate(size, seconds)}

    def layouts(self, batch_size: int, seconds: float) -> dict[str, Any]:
        """Both layouts at ``batch_size`` and one text at a time."""

        def layout(streams: int, threads_each: int) -> dict[str, Any]:
            return {
                "workers": streams,
                "threads_per_worker": threads_each,
                "sorted_texts_per_s": self.rate(batch_size, seconds, (streams, threads_each)),
                "one_at_a_time_texts_per_s": self.rate(1, seconds, (streams, threads_each)),
            }

        return {
            "batch_size": batch_size,
            "service_layout": layout(*self.service),
            "other_layout": layout(*self.other) if self.other != self.service else None,
            "mean_tokens": round(float(np.mean([len(t) for t in self.tokenised])), 1),
        }


def machine() -> dict[str, Any]:
    """The machine a report was measured on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def prepare_load(args: argparse.Namespace, label: str) -> tuple[list[str], str]:
    """Resolve ``args.state_dir``, draw the queries and create a frontend key for the load generator.

    Returns:
        ``(queries, key)``.
    """
    settings = load_settings()
    args.state_dir = (args.state_dir or settings.state_dir).resolve()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    queries = make_queries(settings.pack_path, args.queries)
    store = KeyStore(args.state_dir / "candor.sqlite")
    key = store.create("frontend", label=label)
    store.close()
    return queries, key


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options an HTTP load benchmark takes: clients, queries, state folder and report file."""
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--state-dir", type=Path, default=None, help="state folder (default: the configured one)")
    parser.add_argument(
        "--out",
        default=None,
        help="write the JSON here (default: bench/results/<UTC date>-serving.json; '-': print it only)",
    )


def report_path(out: str | None, benchmark: str) -> Path | None:
    """Where ``--out`` says a report goes: the dated file under ``bench/results/`` when unset, nowhere for ``-``."""
    if out == "-":
        return None
    return Path(out) if out else dated_report_path(benchmark)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print its JSON report and write it (:func:`report_path`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per mode")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--rounds", type=int, default=4, help="batched rounds, each followed by an encoder timing")
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("warning", "console")  # stdout carries only the JSON report
    settings = load_settings()
    queries, key = prepare_load(args, "bench")

    encoder = InProcessEncoder(queries, settings.encoder_config())
    raw_seconds = min(10.0, args.duration / args.rounds)
    batched = run_mode(
        "batched",
        {},
        args,
        key,
        queries,
        rounds=args.rounds,
        after_round=lambda size: encoder.round_figure(size, raw_seconds),
    )
    unbatched = run_mode("unbatched", {"CANDOR_BATCHING__ENCODER__MAX_BATCH_SIZE": "1"}, args, key, queries)
    rounds = batched["rounds"]
    ratios = [r["throughput_rps"] / max(r["encoder_in_process"]["sorted_texts_per_s"], 1e-9) for r in rounds]
    size = max(1, round(batched["mean_batch_size"] or 1))
    raw = encoder.layouts(size, raw_seconds)
    speedup = batched["throughput_rps"] / max(unbatched["throughput_rps"], 1e-9)
    vs_raw = statistics.median(ratios)
    report = {
        "benchmark": "serving",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "workload": {
            "endpoint": "POST /v1/search",
            "k": 10,
            "queries": len(queries),
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
        },
        "service": {
            "encoder_device": settings.encoder.device,
            "encoder_workers": settings.encoder.workers,
            "audit_enabled": settings.audit.enabled,
        },
        "batched": batched,
        "unbatched": unbatched,
        "encoder_in_process": raw,
        "batched_vs_unbatched": round(speedup, 2),
        "service_vs_raw_encoder_per_round": [round(r, 3) for r in ratios],
        "service_vs_raw_encoder": round(vs_raw, 3),
        "goals": {
            f"batched_vs_unbatched>={GOAL_BATCHED_SPEEDUP}": speedup >= GOAL_BATCHED_SPEEDUP,
            f"service_vs_raw_encoder>={GOAL_SERVICE_VS_RAW}": vs_raw >= GOAL_SERVICE_VS_RAW,
        },
    }
    emit_report(report, report_path(args.out, "serving"))
