"""Hot-path benchmark: the encoder and the dynamic batcher feeding it, in-process (no HTTP, no index).

Prints one JSON document on stdout (logs go to stderr).

Usage::

    python -m bench.hotpath [--device auto|cpu|cuda] [--model-dir DIR] [--seconds 8] [--concurrency 64]

It measures (a) the raw encoder: texts/s over length-sorted batches of 1, 8, 32 and 128 (the batches are run
in a shuffled order, so a time-limited run sees every length), and (b) ``--concurrency`` closed-loop asyncio
clients submitting one query each through a :class:`~retrieval.batcher.DynamicBatcher` for ``--seconds``,
with batching on (``max_batch_size`` 32 on the CPU, 128 on CUDA, ``max_wait_ms`` 2) and off
(``max_batch_size`` 1): throughput, latency percentiles, mean batch size, and the ratio of batched throughput to
the raw encoder's at that mean batch size. Clients tokenise their query on the event loop, as the service does.

It imports only ``retrieval.encoder`` and ``retrieval.batcher`` from the project (never ``app``, FAISS or the
pack loader), so it runs on a machine with torch, sentence-transformers and structlog alone. The encoder
returns numpy arrays, so every timed batch has finished on the device when it is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from bench.load import Window
from retrieval.batcher import BatcherConfig, BatchStats, DynamicBatcher
from retrieval.encoder import Encoder, resolve_device

RAW_BATCH_SIZES = (1, 8, 32, 128)

_PRODUCTS = (
    "towel", "bedsheet", "kurta", "saree", "t-shirt", "jeans", "sneakers", "sandals", "watch", "backpack",
    "wallet", "sunglasses", "headphones", "earbuds", "speaker", "charger", "power bank", "phone cover",
    "laptop sleeve", "mouse", "keyboard", "water bottle", "lunch box", "frying pan", "pressure cooker", "mug",
    "dinner set", "curtains", "cushion cover", "wall clock", "lamp", "led bulb", "yoga mat", "dumbbells",
    "cricket bat", "football", "school bag", "pencil box", "baby diapers", "baby bath towel", "teddy bear",
    "face wash", "shampoo", "perfume", "earrings", "necklace", "bangles", "ring", "hair dryer", "trimmer",
)  # fmt: skip
_ADJECTIVES = (
    "cotton", "printed", "solid", "slim fit", "waterproof", "wireless", "stainless steel", "non-stick",
    "leather", "analog", "digital", "silver", "gold plated", "handmade", "organic", "lightweight",
    "ergonomic", "foldable", "rechargeable", "floral", "striped", "kids", "women's", "men's", "unisex",
)  # fmt: skip
_DETAILS = (
    "pack of 2", "set of 6", "size 9", "1 litre", "500 ml", "24 cm", "queen size", "with 2 pillow covers",
    "with free shipping", "microwave safe", "machine washable", "with 1 year warranty", "fast charging",
    "noise cancelling", "long battery life", "anti-slip", "bpa free", "easy to clean", "for daily use",
)  # fmt: skip
_CATEGORIES = (
    "home furnishing", "clothing", "footwear", "watches", "bags wallets & belts", "mobiles & accessories",
    "computers", "kitchen & dining", "home decor", "sports & fitness", "baby care", "beauty and personal care",
    "jewellery", "toys & school supplies", "home improvement",
)  # fmt: skip
_BRANDS = ("Sonata", "Fastrack", "Prestige", "Milton", "boAt", "Puma", "Nivia", "Allen Solly", "Syska", "Bajaj")


def make_queries(n: int = 512, seed: int = 13) -> list[str]:
    """Mixed-length product-like queries (about 5 to 30 tokens), built deterministically from a seeded word list.

    Shaped like the service benchmark's queries (a title prefix, often a category, sometimes a price cap) but
    self-contained, so this benchmark needs no domain pack.

    Args:
        n: Number of queries.
        seed: Seed of the generator; the same seed gives the same queries.

    Returns:
        ``n`` queries.
    """
    rng = random.Random(seed)
    queries = []
    for _ in range(n):
        words = [rng.choice(_ADJECTIVES), rng.choice(_PRODUCTS)]
        if rng.random() < 0.5:
            words.insert(0, rng.choice(_BRANDS))
        if rng.random() < 0.5:
            words.insert(-1, rng.choice(_ADJECTIVES))
        words += rng.sample(_DETAILS, k=rng.randint(0, 3))
        query = " ".join(words)
        if rng.random() < 0.7:
            query += " in " + rng.choice(_CATEGORIES)
        if rng.random() < 0.4:
            query += f" under {rng.randrange(199, 9999, 50)} rupees"
        queries.append(query)
    return queries


def configure_quiet_logging() -> None:
    """Send structlog output to stderr at warning level, so stdout carries only the JSON report."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def raw_rate(
    encoder: Encoder,
    tokenised: Sequence[Sequence[int]],
    batch_size: int,
    seconds: float,
    *,
    streams: int = 1,
    threads_each: int = 0,
) -> float:
    """Texts/s of ``encoder.embed_token_batch`` over length-sorted batches of ``batch_size``.

    Each of ``streams`` runs on a thread of its own, as the batcher's workers do, with ``threads_each`` torch
    threads if given. The sorted batches run in a seeded shuffled order, so a run cut short by ``seconds`` still
    sees short and long queries alike; at least one batch always runs per stream. Before timing, one batch of
    each distinct padded shape runs once (for at most ``seconds``), so first-call costs of new shapes
    (TorchScript specialisation, kernel selection) are not measured.

    Args:
        encoder: The loaded encoder.
        tokenised: Token id lists.
        batch_size: Texts per forward pass.
        seconds: How long to measure.
        streams: Batch streams run side by side.
        threads_each: Torch threads per stream (``0``: leave the count as it is).

    Returns:
        Texts encoded per second, all streams together.
    """
    ordered = sorted(tokenised, key=len)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(batch_size).shuffle(batches)
    shapes: set[tuple[int, int]] = set()
    warm_until = time.perf_counter() + seconds
    for batch in batches:
        shape = (len(batch), max(len(ids) for ids in batch))
        if shape not in shapes and time.perf_counter() < warm_until:
            shapes.add(shape)
            encoder.embed_token_batch(batch)
    rates = [0.0] * streams

    def stream(n: int) -> None:
        if threads_each:
            encoder.use_threads(threads_each)
        encoder.embed_token_batch(batches[0])  # this thread's first call pays its thread-pool start
        done, i = 0, n * len(batches) // streams
        started = time.perf_counter()
        while True:
            batch = batches[i % len(batches)]
            encoder.embed_token_batch(batch)
            done += len(batch)
            i += 1
            if time.perf_counter() - started >= seconds:
                rates[n] = done / (time.perf_counter() - started)
                return

    pool = [threading.Thread(target=stream, args=(n,), name=f"raw-encoder-{n}") for n in range(streams)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(rates)


class _Recorder:
    """Batcher observer keeping when each batch finished and its size (called from the worker thread)."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, int]] = []
        self.rejects: dict[str, int] = {}
        self._lock = threading.Lock()

    def on_batch(self, stats: BatchStats) -> None:
        with self._lock:
            self.batches.append((time.perf_counter(), stats.size))

    def on_reject(self, model: str, reason: str) -> None:
        with self._lock:
            self.rejects[reason] = self.rejects.get(reason, 0) + 1

    def on_queue_depth(self, model: str, depth: int) -> None:
        pass


async def drive_batcher(
    encoder: Encoder, queries: Sequence[str], config: BatcherConfig, concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Closed-loop clients through a dynamic batcher over the encoder; measure the last ``seconds``.

    Args:
        encoder: The loaded encoder.
        queries: Query texts; client ``i`` sends queries ``i, i + concurrency, ...``.
        config: Batcher configuration.
        concurrency: Number of clients, each with one request in flight.
        seconds: Measured duration.
        warmup: Unmeasured seconds before the measurement.

    Returns:
        Throughput, latency percentiles, mean batch size and errors of the measured part.
    """
    recorder = _Recorder()
    batcher: DynamicBatcher[list[int], np.ndarray] = DynamicBatcher(
        "encoder", lambda batch: list(encoder.embed_token_batch(batch)), config, cost=len, observer=recorder
    )
    window = Window(warmup, seconds)

    async def client(offset: int) -> None:
        i = offset
        while True:
            sent = time.perf_counter()
            if sent >= window.stop_at:
                return
            error = None
            try:
                await batcher.submit(encoder.token_ids(queries[i % len(queries)]), request_id=f"c{offset}")
            except Exception as exc:  # counted, not fatal: overload errors are part of the measurement
                error = type(exc).__name__
            window.record(sent, time.perf_counter(), error)
            i += concurrency

    batcher.start()
    try:
        await asyncio.gather(*(client(n) for n in range(concurrency)))
    finally:
        await batcher.stop()
    sizes = [size for done, size in recorder.batches if window.measure_from <= done <= window.stop_at]
    return {
        "max_batch_size": config.max_batch_size,
        "max_wait_ms": config.max_wait_ms,
        **window.summary(),
        "rejects": recorder.rejects,
        "batches": len(sizes),
        "mean_batch_size": round(statistics.fmean(sizes), 2) if sizes else None,
        "max_batch_size_seen": max(sizes) if sizes else None,
    }


def batcher_config(max_batch_size: int, concurrency: int, packed: bool = False) -> BatcherConfig:
    """The service's encoder batcher defaults (``[batching.encoder]``) with the given batch size cap.

    The values are copied, not imported, so the benchmark needs no FAISS or pydantic;
    ``tests/unit/test_settings_sources.py`` checks the copy against the settings section.

    Args:
        max_batch_size: Most texts in one batch (1 turns batching off).
        concurrency: Number of clients; the queue holds at least twice as many.
        packed: Whether the encoder runs batches unpadded (the service sets this from the encoder).

    Returns:
        The batcher configuration.
    """
    return BatcherConfig(
        max_batch_size=max_batch_size,
        max_batch_tokens=8192,
        max_wait_ms=2.0,
        max_queue=max(512, 2 * concurrency),
        queue_timeout_ms=5000.0,
        batch_overhead_tokens=48,
        workers=1,
        packed=packed,
    )


def machine(device: str) -> dict[str, Any]:
    """Where the benchmark ran: CPU count, Python, torch, and the GPU when one is used."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["gpu_peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load the encoder, run both measurements and assemble the report.

    Args:
        args: Parsed command line.

    Returns:
        The JSON-ready report.
    """
    encoder = Encoder(args.model_dir, device=args.device)
    device = encoder.info.device
    encoder.warmup()
    queries = make_queries(args.queries)
    tokenised = [encoder.token_ids(q) for q in queries]
    lengths = [len(ids) for ids in tokenised]

    # Raw batches run on a thread of their own, as the batcher's worker runs them.
    def measure(size: int) -> float:
        return raw_rate(encoder, tokenised, size, args.raw_seconds)

    raw: dict[int, float] = {}
    for size in RAW_BATCH_SIZES:
        raw[size] = measure(size)

    warmup = min(2.0, max(0.5, args.seconds / 4))
    batched_cap = 128 if device == "cuda" else 32
    modes: dict[str, dict[str, Any]] = {}
    for name, cap in (("batched", batched_cap), ("unbatched", 1)):
        config = batcher_config(cap, args.concurrency, encoder.packed)
        modes[name] = asyncio.run(drive_batcher(encoder, queries, config, args.concurrency, args.seconds, warmup))
        mean = modes[name]["mean_batch_size"]
        at = max(1, round(mean)) if mean else 1
        if at not in raw:
            raw[at] = measure(at)
        modes[name]["raw_texts_per_s_at_mean_batch"] = round(raw[at], 1)
        modes[name]["raw_batch_size_compared"] = at
        modes[name]["vs_raw_at_mean_batch"] = round(modes[name]["throughput_rps"] / max(raw[at], 1e-9), 3)

    unbatched_rps = modes["unbatched"]["throughput_rps"]
    return {
        "benchmark": "hotpath",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": encoder.info.device,
        "dtype": encoder.info.dtype,
        "traced": encoder.traced,
        "packed": encoder.packed,
        "model": {"name": encoder.info.name, "version": encoder.info.version, "path": encoder.info.path},
        "machine": machine(device),
        "workload": {
            "queries": len(queries),
            "mean_tokens": round(statistics.fmean(lengths), 1),
            "min_tokens": min(lengths),
            "max_tokens": max(lengths),
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "warmup_s": warmup,
            "raw_seconds_per_size": args.raw_seconds,
        },
        "raw_texts_per_s": {str(size): round(rate, 1) for size, rate in sorted(raw.items())},
        "batched": modes["batched"],
        "unbatched": modes["unbatched"],
        "batched_vs_unbatched": round(modes["batched"]["throughput_rps"] / max(unbatched_rps, 1e-9), 2),
        "batched_vs_raw_at_mean_batch": modes["batched"]["vs_raw_at_mean_batch"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the benchmark and print its JSON report.

    Args:
        argv: Arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        Exit status: 0 on success, 2 when the requested device is not available.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--model-dir", type=Path, default=None, help="sentence-transformers folder (default: bundled)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per batcher mode")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop clients")
    parser.add_argument("--raw-seconds", type=float, default=2.0, help="measured seconds per raw batch size")
    parser.add_argument("--queries", type=int, default=512, help="distinct generated queries")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    configure_quiet_logging()
    try:
        resolve_device(args.device)
    except ValueError as exc:
        print(f"bench.hotpath: {exc}", file=sys.stderr)
        print(json.dumps({"benchmark": "hotpath", "device": args.device, "error": str(exc)}, indent=2))
        return 2
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
