"""Interference benchmark: how much a competing CPU load slows the encoder, in each worker layout.

On a machine with few cores the service's request handling (HTTP, auth, explanations, the audit record) runs on
the same cores as the model. This measures what that costs the model, in-process and without HTTP: the encoder
runs length-sorted batches (:func:`~bench.hotpath.raw_rate`) alone, then beside a synthetic load: a thread (with
``--process``, a separate process, which shares no GIL with the encoder) that spends ``--burst-ms`` of CPU time
in pure Python ``--rate`` times a second, as an event loop handling requests does. Alone and loaded runs
alternate ``--pairs`` times, so the drift of a shared host's speed hits both.

Two layouts run: one stream of batches of ``--batch-size`` using every core (the service's default, one worker),
and one single-threaded stream per core with the same number of texts in flight (``encoder.workers = 0``).

Per layout it prints texts/s alone and loaded, the throughput lost, the share of the machine the load took (its
measured CPU time over wall time and cores), and the amplification: the share lost divided by the load's share.
An amplification of 1 means the encoder lost just the CPU the load took; 2 means each millisecond the load ran
cost the encoder two.

Usage::

    python -m bench.interference [--model-dir DIR] [--rate 250] [--burst-ms 1.0] [--seconds 4] [--pairs 3]
                                 [--batch-size 16] [--process]

It imports only ``retrieval.encoder`` from the project, and that only when it runs (a ``--process`` load
imports this module again in a fresh interpreter, which must stay light).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from retrieval.encoder import Encoder


class _StopSignal(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def _spin() -> int:
    """A slice of pure-Python work (object churn and arithmetic, as request handling does)."""
    total = 0
    for i in range(64):
        total += len(str(i)) * i
    return total


def burst_loop(stop: _StopSignal, rate: float, burst_ms: float) -> tuple[int, float]:
    """Spend ``burst_ms`` of this thread's CPU time ``rate`` times a second until ``stop`` is set.

    A burst is measured in CPU time, not wall time, so a burst that is preempted still does all its work. When
    bursts fall behind their schedule the loop does not try to catch up. At least one burst always runs.

    Args:
        stop: Set to end the loop.
        rate: Bursts per second.
        burst_ms: CPU milliseconds per burst.

    Returns:
        ``(bursts run, CPU seconds this thread spent)``.
    """
    period, burst = 1.0 / rate, burst_ms / 1000.0
    cpu_start = time.thread_time()
    due = time.perf_counter()
    bursts = 0
    while True:
        until = time.thread_time() + burst
        while time.thread_time() < until:
            _spin()
        bursts += 1
        due += period
        delay = due - time.perf_counter()
        if delay <= 0:
            due, delay = time.perf_counter(), 0.0
        if stop.wait(delay):  # wait(0) just reads the flag
            return bursts, time.thread_time() - cpu_start


def _process_main(stop: _StopSignal, rate: float, burst_ms: float, report: Connection) -> None:
    report.send(burst_loop(stop, rate, burst_ms))
    report.close()


class BurstLoad:
    """A competing CPU load running :func:`burst_loop` while the ``with`` block runs.

    Args:
        rate: Bursts per second.
        burst_ms: CPU milliseconds per burst.
        process: Run in a separate process (no GIL shared with this one) instead of a thread.

    Attributes:
        bursts: Bursts run (after the block).
        cpu_seconds: CPU seconds the load spent (after the block).
        wall_seconds: How long the load ran (after the block).
    """

    def __init__(self, rate: float, burst_ms: float, *, process: bool = False) -> None:
        if rate <= 0 or burst_ms <= 0:
            raise ValueError("rate and burst_ms must be > 0")
        self.rate, self.burst_ms, self.process = rate, burst_ms, process
        self.bursts, self.cpu_seconds, self.wall_seconds = 0, 0.0, 0.0
        self._finish: Callable[[], tuple[int, float]] | None = None
        self._started = 0.0

    def __enter__(self) -> BurstLoad:
        self._started = time.perf_counter()
        if self.process:
            context = multiprocessing.get_context("spawn")  # no fork of a process running torch threads
            stop_process = context.Event()
            receive, send = context.Pipe(duplex=False)
            child = context.Process(
                target=_process_main, args=(stop_process, self.rate, self.burst_ms, send), daemon=True
            )
            child.start()

            def finish_process() -> tuple[int, float]:
                stop_process.set()
                if not receive.poll(60):  # a child that died never reports; do not wait for it forever
                    child.kill()
                    raise RuntimeError(f"the load process ended without a report (exit code {child.exitcode})")
                result: tuple[int, float] = receive.recv()
                child.join()
                return result

            self._finish = finish_process
        else:
            stop_thread = threading.Event()
            result: list[tuple[int, float]] = []
            thread = threading.Thread(
                target=lambda: result.append(burst_loop(stop_thread, self.rate, self.burst_ms)),
                name="burst-load",
                daemon=True,
            )
            thread.start()

            def finish_thread() -> tuple[int, float]:
                stop_thread.set()
                thread.join()
                return result[0]

            self._finish = finish_thread
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._finish is not None
        self.bursts, self.cpu_seconds = self._finish()
        self.wall_seconds = time.perf_counter() - self._started

    def machine_share(self, cores: int) -> float:
        """The share of the machine (0..1) the load took while it ran."""
        return self.cpu_seconds / max(self.wall_seconds * cores, 1e-9)


@dataclass(frozen=True, slots=True)
class Pair:
    """One alone run and the loaded run after it.

    Attributes:
        alone: Texts/s without the load.
        loaded: Texts/s beside the load.
        load_share: Share of the machine (0..1) the load took.
        idle_alone_pct: The machine's idle share during the alone run (``None`` without ``/proc``).
        idle_loaded_pct: The same during the loaded run.
    """

    alone: float
    loaded: float
    load_share: float
    idle_alone_pct: float | None = None
    idle_loaded_pct: float | None = None


def _median(values: Sequence[float | None], digits: int) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), digits) if known else None


def summarize(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Medians over the pairs, and the amplification (median share lost over median load share).

    Args:
        pairs: At least one measured pair.

    Returns:
        ``texts_per_s_alone``, ``texts_per_s_loaded``, ``lost_pct`` (median of the pairs' losses),
        ``lost_pct_per_pair``, ``load_pct_of_machine``, ``amplification``, and the idle shares.
    """
    if not pairs:
        raise ValueError("no pairs to summarize")
    losses = [1.0 - p.loaded / p.alone if p.alone > 0 else 0.0 for p in pairs]
    lost, share = statistics.median(losses), statistics.median(p.load_share for p in pairs)
    return {
        "texts_per_s_alone": _median([p.alone for p in pairs], 1),
        "texts_per_s_loaded": _median([p.loaded for p in pairs], 1),
        "lost_pct": round(100 * lost, 1),
        "lost_pct_per_pair": [round(100 * loss, 1) for loss in losses],
        "load_pct_of_machine": round(100 * share, 1),
        "amplification": round(lost / share, 2) if share > 0 else None,
        "machine_idle_pct_alone": _median([p.idle_alone_pct for p in pairs], 1),
        "machine_idle_pct_loaded": _median([p.idle_loaded_pct for p in pairs], 1),
    }


def measure_layout(
    encoder: Encoder,
    tokenised: Sequence[Sequence[int]],
    *,
    streams: int,
    threads_each: int,
    batch_size: int,
    seconds: float,
    pairs: int,
    load: Callable[[], BurstLoad],
    cores: int,
) -> list[Pair]:
    """Alternate alone and loaded runs of one layout.

    Args:
        encoder: The loaded encoder.
        tokenised: Token id lists.
        streams: Batch streams side by side.
        threads_each: Torch threads per stream.
        batch_size: Texts per batch in each stream.
        seconds: Measured seconds per run.
        pairs: Alone-then-loaded pairs.
        load: Makes a fresh load for each loaded run.
        cores: Cores the load's share is taken of.

    Returns:
        One :class:`Pair` per pair.
    """
    from bench import cpu
    from bench.hotpath import raw_rate

    def timed() -> tuple[float, float | None]:
        before = cpu.snapshot()
        rate = raw_rate(encoder, tokenised, batch_size, seconds, streams=streams, threads_each=threads_each)
        return rate, cpu.idle_pct(before, cpu.snapshot())

    measured = []
    for _ in range(pairs):
        alone, idle_alone = timed()
        with load() as running:
            loaded, idle_loaded = timed()
        measured.append(Pair(alone, loaded, running.machine_share(cores), idle_alone, idle_loaded))
    return measured


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load the encoder on the CPU, measure both layouts and assemble the report.

    Args:
        args: Parsed command line.

    Returns:
        The JSON-ready report.
    """
    from bench.hotpath import configure_quiet_logging, machine, make_queries
    from retrieval.encoder import Encoder

    configure_quiet_logging()
    encoder = Encoder(args.model_dir, device="cpu")
    encoder.warmup()
    tokenised = [encoder.token_ids(q) for q in make_queries(args.queries)]
    one_stream = encoder.plan_workers(1, 0)
    per_core = encoder.plan_workers(0, 0)
    cores = one_stream[1]
    layouts: dict[str, dict[str, Any]] = {}
    for name, (streams, threads_each) in (("one_stream_all_cores", one_stream), ("one_stream_per_core", per_core)):
        size = max(1, args.batch_size // streams)
        measured = measure_layout(
            encoder,
            tokenised,
            streams=streams,
            threads_each=threads_each,
            batch_size=size,
            seconds=args.seconds,
            pairs=args.pairs,
            load=lambda: BurstLoad(args.rate, args.burst_ms, process=args.process),
            cores=cores,
        )
        layouts[name] = {"streams": streams, "threads_each": threads_each, "batch_size": size, **summarize(measured)}
    return {
        "benchmark": "interference",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine("cpu"),
        "model": {"name": encoder.info.name, "packed": encoder.packed, "traced": encoder.traced},
        "load": {
            "kind": "process" if args.process else "thread",
            "bursts_per_s": args.rate,
            "burst_cpu_ms": args.burst_ms,
            "nominal_pct_of_machine": round(100 * args.rate * args.burst_ms / 1000 / cores, 1),
        },
        "seconds_per_run": args.seconds,
        "pairs": args.pairs,
        "layouts": layouts,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the benchmark and print its JSON report.

    Args:
        argv: Arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        Exit status 0.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="sentence-transformers folder (default: bundled)")
    parser.add_argument("--rate", type=float, default=250.0, help="load bursts per second")
    parser.add_argument("--burst-ms", type=float, default=1.0, help="CPU milliseconds per burst")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--pairs", type=int, default=3, help="alone-then-loaded pairs per layout")
    parser.add_argument("--batch-size", type=int, default=16, help="texts in flight (split among per-core streams)")
    parser.add_argument("--queries", type=int, default=512, help="distinct generated queries")
    parser.add_argument("--process", action="store_true", help="run the load in a separate process")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.burst_ms <= 0 or args.seconds <= 0 or args.pairs < 1 or args.batch_size < 1:
        parser.error("--rate, --burst-ms and --seconds must be > 0; --pairs and --batch-size >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
