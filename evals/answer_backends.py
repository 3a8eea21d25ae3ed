"""The service's answer backends as the evaluation harness sees them (:class:`evals.answers.AnswerSystem`).

The harness hands each question its passages; the adaptor scores them against the question with the encoder
under test (what retrieval would have scored), runs the same :class:`retrieval.answers.AnswerService` the
service runs, and reports the answer span when one was found (SQuAD's exact match rewards spans), else the
answer sentences, with who produced it: the service names the backend behind every answer, any fallback (an
ungrounded ``local`` answer replaced by the extractive one) and why it abstained, and the harness reports the
backend's own answers apart from the ones it fell back on (:func:`system_answer`). Suite options
(``[system.answer] options``): ``answer_text`` (``span``, or ``answer``: what the service says, see
:func:`system_answer`), ``max_tokens``, ``min_confidence``,
``min_retrieval_score``, ``reader`` (a reader folder, or ``none`` for sentence answers; by default the service's
reader, if it has one), ``reader_min_confidence``, ``reader_precision`` (``fp32`` or ``int8``; by default the service's
``[reader] precision``), and for ``openai`` the ``[generator.openai]`` keys.

The service's configured answer settings come in as :class:`ServiceAnswerDefaults` (the app builds them from its
settings, so the backends start from what the service would run); :func:`service_backends` turns them into harness
factories.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

import numpy as np

from evals.answers import AnswerBackendContext, AnswerFactory, Passage, SystemAnswer
from evals.errors import SuiteError
from retrieval.answers import (
    AnswerConfig,
    AnswerService,
    ContextPassage,
    Generator,
    GroundedAnswer,
    LocalBackend,
    RemoteBackend,
)
from retrieval.answers.local_model import LocalGeneratorConfig
from retrieval.answers.reading import ReaderBackend
from retrieval.answers.remote import OpenAIConfig
from retrieval.batcher import BatcherConfig
from retrieval.encoder import Encoder
from retrieval.reader import Precision, ReaderConfig, read_card
from retrieval.settings import ReaderBatcherSettings

BACKENDS = ("extractive", "local", "openai")
_SERVICE_KEYS = {
    "answer_text",
    "max_tokens",
    "min_confidence",
    "min_retrieval_score",
    "device",
    "cache_dir",
    "reader",
    "reader_min_confidence",
    "reader_precision",
}


ANSWER_TEXTS = ("span", "answer", "sentence")
"""What ``answer_text`` may name (see :func:`system_answer`)."""


@dataclass(frozen=True)
class ServiceAnswerDefaults:
    """The service's answer settings, as the backends under test start from.

    Attributes:
        answer: Grounding, abstention and calibration settings.
        max_tokens: Generated tokens per answer.
        local: The in-process LM.
        local_batching: The LM's batcher.
        openai: The OpenAI-compatible endpoint.
        models_dir: Where the local LM keeps its converted copy.
        reader: The service's span reader (``None``: extractive answers are sentences).
        reader_batching: The reader's batcher.
        reader_settings: The service's ``[reader]`` settings (precision, windowing), applied to a reader folder the
            suite's options name.
    """

    answer: AnswerConfig
    max_tokens: int
    local: LocalGeneratorConfig
    local_batching: BatcherConfig
    openai: OpenAIConfig
    models_dir: Path
    reader: ReaderConfig | None = None
    reader_batching: BatcherConfig = field(default_factory=lambda: ReaderBatcherSettings().to_config())
    reader_settings: ReaderConfig | None = None


class ServiceAnswerSystem:
    """One of the service's backends, answering synchronously for the harness.

    Args:
        backend: ``extractive``, ``local`` or ``openai``.
        encoder: The encoder under test.
        options: Suite options (see the module docstring).
        defaults: The service's answer settings.
    """

    def __init__(
        self, backend: str, encoder: Encoder, options: Mapping[str, Any], defaults: ServiceAnswerDefaults
    ) -> None:
        unknown = set(options) - _SERVICE_KEYS - set(OpenAIConfig.__dataclass_fields__)
        if unknown:
            raise SuiteError(f"[system.answer] options: unknown key(s) {sorted(unknown)}")
        self.name = backend
        self._encoder = encoder
        self._answer_text = str(options.get("answer_text", "span"))
        if self._answer_text not in ANSWER_TEXTS:
            raise SuiteError(f"[system.answer] options: answer_text must be one of {list(ANSWER_TEXTS)}")
        self._max_tokens = int(options.get("max_tokens", defaults.max_tokens))
        config: AnswerConfig = defaults.answer
        if "min_confidence" in options:
            config = replace(config, min_confidence=float(options["min_confidence"]))
        if "min_retrieval_score" in options:
            config = replace(config, min_retrieval_score=float(options["min_retrieval_score"]))
        generators: dict[str, Generator] = {}
        if backend == "local":
            local = replace(
                defaults.local,
                cache_dir=str(options.get("cache_dir", defaults.local.cache_dir)),
                device=options.get("device", defaults.local.device),
            )
            generators["local"] = LocalBackend(local, defaults.local_batching, cache_root=defaults.models_dir)
        elif backend == "openai":
            remote = {k: v for k, v in options.items() if k in OpenAIConfig.__dataclass_fields__}
            generators["openai"] = RemoteBackend(replace(defaults.openai, **remote))
        elif backend != "extractive":
            raise SuiteError(f"unknown answer backend {backend!r}")
        self._reader = _reader(options, defaults)
        self._loop = asyncio.new_event_loop()
        if self._reader is not None:
            self._loop.run_until_complete(self._reader.start())
            if "reader_min_confidence" in options:
                self._reader.calibration = replace(
                    self._reader.calibration, min_confidence=float(options["reader_min_confidence"])
                )
        self._config = config

        async def embed(texts: Sequence[str], request_id: str) -> np.ndarray:
            return encoder.encode(list(texts))

        self._service = AnswerService(config, embed, generators, encoder.info.identity, reader=self._reader)

    def describe(self) -> Mapping[str, Any]:
        """The backend's model and the grounding settings (with the reader's training data and calibration)."""
        reader: dict[str, Any] = {}
        if self._reader is not None:
            card = read_card(Path(self._reader.config.path))
            reader = {
                "reader": {
                    **self._reader.describe(),
                    "path": self._reader.config.path,
                    "trained_on": card.get("trained_on", {}),
                    "calibration": self._reader.calibration.to_dict(),
                }
            }
        return {
            **reader,
            "model": self._service.model_of(self.name),
            "answer_text": self._answer_text,
            "max_tokens": self._max_tokens,
            "min_confidence": self._config.min_confidence,
            "min_retrieval_score": self._config.min_retrieval_score,
        }

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        """Answer from ``passages`` (scored against the question by the encoder, best first)."""
        return self.answer_many([(question, passages)])[0][0]

    def answer_many(self, questions: Sequence[tuple[str, Sequence[Passage]]]) -> list[tuple[SystemAnswer, float]]:
        """Answer several questions at once (their reader and generator calls share batches), with latencies in ms.

        The questions and passages of the whole call are embedded in one encoder batch first; each latency runs
        from the start of the answering, so it is a question's latency under the call's load.
        """
        texts = [text for question, passages in questions for text in (question, *map(_titled, passages))]
        vectors = self._encoder.encode(texts)
        calls = []
        at = 0
        for question, passages in questions:
            query, scores = vectors[at], vectors[at + 1 : at + 1 + len(passages)] @ vectors[at]
            at += 1 + len(passages)
            context = sorted(
                (ContextPassage(p.id, p.id, p.title, p.text, float(s)) for p, s in zip(passages, scores, strict=True)),
                key=lambda c: -c.score,
            )
            calls.append(self._service.answer(question, query, context, backend=self.name, max_tokens=self._max_tokens))
        return self._loop.run_until_complete(_timed(calls, self._answer_text))

    def close(self) -> None:
        """Stop generators and the private event loop."""
        self._loop.run_until_complete(self._service.stop())
        self._loop.close()


def _titled(passage: Passage) -> str:
    """A passage as the service embeds it: its title, then its text."""
    return f"{passage.title}. {passage.text}" if passage.title else passage.text


async def _timed(calls: Sequence[Awaitable[GroundedAnswer]], answer_text: str) -> list[tuple[SystemAnswer, float]]:
    """Await the answers together, each with the ms from the start until it was done."""
    started = time.perf_counter()

    async def one(call: Awaitable[GroundedAnswer]) -> tuple[SystemAnswer, float]:
        result = await call
        return system_answer(result, answer_text), (time.perf_counter() - started) * 1000.0

    return list(await asyncio.gather(*(one(c) for c in calls)))


def _reader(options: Mapping[str, Any], defaults: ServiceAnswerDefaults) -> ReaderBackend | None:
    """The reader the options name: a folder, ``none``, or (unset) the service's."""
    choice = str(options.get("reader", ""))
    if choice == "none":
        return None
    config = defaults.reader
    if choice:
        template = config or defaults.reader_settings or ReaderConfig(path="")
        config = replace(template, path=choice, name=config.name if config else Path(choice).name)
    if config is not None and "reader_precision" in options:
        precision = str(options["reader_precision"])
        if precision not in get_args(Precision):
            raise SuiteError(f"reader_precision must be one of {list(get_args(Precision))}, not {precision!r}")
        config = replace(config, precision=precision)  # type: ignore[arg-type]
    return ReaderBackend(config, defaults.reader_batching) if config is not None else None


def system_answer(result: GroundedAnswer, answer_text: str = "span") -> SystemAnswer:
    """The harness's view of a service answer, with the backend that produced it, any fallback and why it abstained.

    Args:
        result: The service's answer.
        answer_text: ``span`` reports the short span when one was found (SQuAD's protocol: with a reader, its span
            even where the service says the sentence around it); ``answer`` (or ``sentence``, its former name)
            what the service says: the span, or its sentence for a question that wants one; the sentence
            backend's sentences.
    """
    text = result.span if answer_text == "span" and result.span else result.answer
    return SystemAnswer(
        text=text,
        cited_ids=tuple(c.doc_id for c in result.citations),
        abstained=result.abstained,
        produced_by=result.backend,
        fallback=str((result.fallback or {}).get("reason", "")),
        reason=result.reason or "",
    )


def factory(backend: str, defaults: ServiceAnswerDefaults) -> AnswerFactory:
    """A harness factory for one of the service's backends."""

    def build(ctx: AnswerBackendContext) -> ServiceAnswerSystem:
        if ctx.encoder is None:
            raise SuiteError("answer backends need the encoder under test")
        return ServiceAnswerSystem(backend, ctx.encoder(), ctx.options, defaults)

    return build


def service_backends(defaults: ServiceAnswerDefaults) -> dict[str, AnswerFactory]:
    """Harness factories for the service's backends (``extractive``, ``local``, ``openai``)."""
    return {name: factory(name, defaults) for name in BACKENDS}
