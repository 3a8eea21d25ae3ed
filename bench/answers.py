"""Answer benchmark: abstention, latency and tokens/s at 1 and 8 clients, batched vs unbatched generation.

Also re-fits the confidence calibration.

Prints one JSON document (and writes it with ``--out``). Usage::

    python -m bench.answers [--state-dir var/bench-answers] [--local-questions 16] [--max-tokens 48]
    python -m bench.answers calibrate      # re-fit [answers] confidence_weights/bias on data/demo/eval/qa.jsonl
    python -m bench.answers --reader FOLDER --local-questions 0   # extractive with a trained span reader too
    python -m bench.answers --reader FOLDER --reader-precision fp32,fp32-eager,int8 --local-questions 0

With ``--reader`` (a folder written by ``candor train reader``) the extractive backend is measured without and with
the reader in the same run, so the reader's cost is a ratio on one machine; ``--reader-precision`` measures the
reader in each listed precision (default: ``[reader] precision``), one after the other, keyed by precision;
``fp32-eager`` is fp32 with each window in its own forward pass (``[reader] packed = false``).

Everything runs in-process through the same engine and :class:`~retrieval.answers.AnswerService` the service
uses (the encoder's batcher for questions and sentences, the generator's batcher for the local LM). Exact match
and F1 on SQuAD come from the evaluation harness: ``candor eval run squad --data-root ../shared/data``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.app import build_answer_service
from app.models import reader_backend
from app.observability import configure_logging
from app.settings import Settings, load_settings
from bench.load import emit_report
from evals.answer_metrics import holds_answer
from retrieval.answers import AnswerService, GroundedAnswer, LocalBackend
from retrieval.engine import RetrievalEngine

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def load_questions(pack: Path) -> list[dict[str, Any]]:
    """The pack's ``eval/qa.jsonl``."""
    lines = (pack / "eval" / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def ask_all(
    service: AnswerService,
    engine: RetrievalEngine,
    questions: Sequence[str],
    *,
    backend: str,
    concurrency: int,
    k: int,
    max_tokens: int,
) -> tuple[list[GroundedAnswer], list[float], float]:
    """Ask every question from ``concurrency`` closed-loop clients; return answers, latencies (ms), wall time."""
    answers: list[GroundedAnswer | None] = [None] * len(questions)
    latencies: list[float] = [0.0] * len(questions)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(questions)):
        queue.put_nowait(i)

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            vector, passages = await engine.retrieve_passages(questions[i], k)
            answers[i] = await service.answer(questions[i], vector, passages, backend=backend, max_tokens=max_tokens)
            latencies[i] = (time.perf_counter() - started) * 1000

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return [a for a in answers if a is not None], latencies, time.perf_counter() - began


def summary(answers: Sequence[GroundedAnswer], latencies: Sequence[float], wall: float) -> dict[str, Any]:
    """Latency percentiles, throughput and generated tokens per second."""
    tokens = sum(a.tokens for a in answers)
    return {
        "requests": len(answers),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "requests_per_s": round(len(answers) / wall, 2),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "backends": {b: sum(1 for a in answers if a.backend == b) for b in {a.backend for a in answers}},
        "abstained": sum(a.abstained for a in answers),
    }


def judge(rows: Sequence[dict[str, Any]], answers: Sequence[GroundedAnswer]) -> dict[str, Any]:
    """Abstention accuracy, answers from the right article and answers that hold a gold answer (pack questions)."""
    answerable = [(r, a) for r, a in zip(rows, answers, strict=True) if r["answerable"]]
    unanswerable = [(r, a) for r, a in zip(rows, answers, strict=True) if not r["answerable"]]
    right = sum(
        1 for r, a in answerable if not a.abstained and a.citations and a.citations[0].doc_id in r["supporting_ids"]
    )
    holding = sum(1 for r, a in answerable if not a.abstained and holds_answer(a.answer, r.get("answers") or ()))
    return {
        "answerable": len(answerable),
        "answered_from_right_article": right,
        "answers_holding_a_gold_answer": holding,
        "false_abstentions": sum(a.abstained for _, a in answerable),
        "unanswerable": len(unanswerable),
        "abstention_accuracy": round(sum(a.abstained for _, a in unanswerable) / max(1, len(unanswerable)), 3),
        "accuracy": round(
            (right + sum(a.abstained for _, a in unanswerable)) / max(1, len(rows)),
            3,
        ),
    }


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 0.01) -> tuple[np.ndarray, float]:
    """Plain logistic regression by gradient descent (two features; no extra dependency)."""
    weights, bias = np.zeros(features.shape[1]), 0.0
    for _ in range(20000):
        p = 1.0 / (1.0 + np.exp(-(features @ weights + bias)))
        grad = p - labels
        weights -= 0.5 * (features.T @ grad / len(labels) + l2 * weights)
        bias -= 0.5 * float(grad.mean())
    return weights, bias


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the engine on the bench state and run the chosen measurements."""
    settings: Settings = load_settings(overrides={"paths": {"state_dir": args.state_dir}})
    configure_logging("warning", "console")
    engine = RetrievalEngine(settings.engine_config(show_progress=True))
    await engine.start()
    service = build_answer_service(settings, engine)
    rows = load_questions(settings.pack_path)
    questions = [r["question"] for r in rows]
    k, out = settings.answers.k_context, {}
    try:
        if args.mode == "calibrate":
            loose = AnswerService(
                replace(settings.answers.to_config(), min_confidence=0.0, min_retrieval_score=-1.0),
                engine.embed_texts,
                {},
                dict,
            )
            answers, _, _ = await ask_all(
                loose, engine, questions, backend="extractive", concurrency=1, k=k, max_tokens=0
            )
            features = np.array([[a.retrieval_score, a.answer_score] for a in answers])
            labels = np.array(
                [
                    float(r["answerable"] and bool(a.citations) and a.citations[0].doc_id in r["supporting_ids"])
                    for r, a in zip(rows, answers, strict=True)
                ]
            )
            weights, bias = fit_logistic(features, labels)
            return {
                "confidence_weights": [round(float(w), 2) for w in weights],
                "confidence_bias": round(bias, 2),
                "questions": len(rows),
                "positives": int(labels.sum()),
            }
        answers, latencies, wall = await ask_all(
            service, engine, questions, backend="extractive", concurrency=1, k=k, max_tokens=0
        )
        out["pack_questions_extractive"] = judge(rows, answers)
        out["extractive"] = {
            "concurrency_1": summary(answers, latencies, wall),
            "concurrency_8": summary(
                *await ask_all(service, engine, questions, backend="extractive", concurrency=8, k=k, max_tokens=0)
            ),
        }
        if args.reader:
            precisions = args.reader_precision.split(",") if args.reader_precision else [settings.reader.precision]
            out["readers"] = {
                p: await measure_reader(settings, engine, rows, args.reader, k, variant=p) for p in precisions
            }
        local = service.generators.get("local")
        if args.local_questions and isinstance(local, LocalBackend):
            await local.start()
            picked = [r["question"] for r in rows if r["answerable"]][: args.local_questions]
            tokens = args.max_tokens
            pack_answers, _, _ = await ask_all(
                service, engine, questions, backend="local", concurrency=8, k=k, max_tokens=tokens
            )
            out["pack_questions_local"] = judge(rows, pack_answers)
            out["local"] = {
                "max_tokens": tokens,
                "concurrency_1": summary(
                    *await ask_all(service, engine, picked, backend="local", concurrency=1, k=k, max_tokens=tokens)
                ),
                "concurrency_8_batched": summary(
                    *await ask_all(service, engine, picked, backend="local", concurrency=8, k=k, max_tokens=tokens)
                ),
            }
            await local.stop()
            unbatched = LocalBackend(
                local.config,
                replace(settings.batching.generator.to_config(), max_batch_size=1),
                generator=local.generator,
            )
            service.generators["local"] = unbatched
            out["local"]["concurrency_8_unbatched"] = summary(
                *await ask_all(service, engine, picked, backend="local", concurrency=8, k=k, max_tokens=tokens)
            )
            await unbatched.stop()
    finally:
        await service.stop()
        await engine.stop()
    out["machine"] = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    return out


async def measure_reader(
    settings: Settings, engine: RetrievalEngine, rows: Sequence[dict[str, Any]], folder: str, k: int, variant: str
) -> dict[str, Any]:
    """The extractive backend with the reader in ``folder`` as ``variant`` says: pack judgement, latency.

    ``variant`` is a precision (``fp32``, ``int8``), or ``fp32-eager``: fp32 with every window in its own pass.
    """
    precision, _, form = variant.partition("-")
    if precision not in ("fp32", "int8") or form not in ("", "eager"):
        raise SystemExit(f"unknown reader variant {variant!r}: fp32, fp32-eager or int8")
    config = replace(settings.reader.to_config(folder), precision=precision, packed=form != "eager")  # type: ignore[arg-type]
    reader = reader_backend(settings, config, None, None)
    assert reader is not None
    await reader.start()
    service = build_answer_service(settings, engine, reader=reader)
    questions = [r["question"] for r in rows]
    try:
        await ask_all(service, engine, questions[:4], backend="extractive", concurrency=1, k=k, max_tokens=0)  # warm
        answers, latencies, wall = await ask_all(
            service, engine, questions, backend="extractive", concurrency=1, k=k, max_tokens=0
        )
        return {
            "reader": reader.describe(),
            "pack_questions_reader": judge(rows, answers),
            "extractive_reader": {
                "concurrency_1": summary(answers, latencies, wall),
                "concurrency_8": summary(
                    *await ask_all(service, engine, questions, backend="extractive", concurrency=8, k=k, max_tokens=0)
                ),
            },
        }
    finally:
        await service.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="measure", choices=["measure", "calibrate"])
    parser.add_argument("--state-dir", default=str(PROJECT_ROOT / "var" / "bench-answers"))
    parser.add_argument("--local-questions", type=int, default=16, help="0 skips the local LM")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--reader", default="", help="a trained reader's folder: measure extractive with it too")
    parser.add_argument(
        "--reader-precision", default="", help="comma-separated: fp32,fp32-eager,int8 (default: configured)"
    )
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    args.state_dir = str(Path(args.state_dir).resolve())
    args.reader = str(Path(args.reader).resolve()) if args.reader else ""
    result = asyncio.run(run(args))
    emit_report(result, args.out)


if __name__ == "__main__":
    main()
