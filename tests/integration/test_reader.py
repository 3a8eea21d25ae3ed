"""A span reader trained for one step on the demo pack's questions: it loads, reads through its batcher, answers
with a span copied from a cited passage, and is registered and pinned like the other models.

One step teaches the reader nothing, so these tests check behaviour (where spans come from, what is recorded, what
is batched), not quality: quality is measured on held-out articles by ``candor train reader`` (docs/answers.md).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from app.cli import main
from app.models import reader_config
from app.promotion import evaluate
from app.settings import load_settings
from app.training_reader import load_reader_source
from retrieval.answers import AnswerService, ContextPassage
from retrieval.answers.reading import ReaderBackend, ReaderCalibration
from retrieval.encoder import Encoder, bundled_model_path
from retrieval.reader import READER_FILE, ReaderConfig, ReadRequest, SpanReader, sentence_bounds
from retrieval.reader_training import ReaderTrainConfig, ReaderTrainReport, train_reader
from retrieval.registry import ModelRegistry, default_uri
from retrieval.settings import ReaderBatcherSettings
from tests.integration.test_app_limits import make_settings, serving

PACK = Path(__file__).resolve().parents[2] / "data" / "demo"
CONFIG = ReaderTrainConfig(epochs=1, batch_size=8, max_seq_length=128, doc_stride=32, device="cpu", seed=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> ReaderTrainReport:
    source = load_reader_source(None, PACK, max_train=8, negatives=0.0)  # eight answer spans: one step
    folder = tmp_path_factory.mktemp("reader") / "model"
    return train_reader(source.train, bundled_model_path(), folder, CONFIG, progress=False)


def test_the_reader_trains_saves_its_card_and_reads_spans_of_its_passages(trained: ReaderTrainReport) -> None:
    assert trained.steps == 1
    assert np.isfinite(trained.losses).all()
    assert trained.parameters < 35_000_000  # small enough for a CPU
    card = json.loads((trained.folder / READER_FILE).read_text(encoding="utf-8"))
    assert card["reading"] == {"max_seq_length": 128, "doc_stride": 32, "max_question_tokens": 64}
    reader = SpanReader(ReaderConfig(path=str(trained.folder), device="cpu"))
    assert reader.reading.max_seq_length == 128  # read as it was trained
    long = " ".join(f"Sentence {i} says the parcel ships on day {i}." for i in range(40))  # several windows
    requests = [ReadRequest("When does the parcel ship?", long), ReadRequest("What colour?", "The mug is blue.")]
    spans = reader.read(requests)
    for request, span in zip(requests, spans, strict=True):
        assert span is not None
        assert request.context[span.start : span.end].strip() == span.text
        assert np.isfinite(span.margin)
    assert reader.cost(requests[0]) > reader.cost(requests[1])  # a long passage costs its windows


def test_the_reader_gives_the_best_span_of_each_sentence_too(trained: ReaderTrainReport) -> None:
    reader = SpanReader(ReaderConfig(path=str(trained.folder), device="cpu"))
    context = " ".join(f"Sentence {i} says the parcel ships on day {i}." for i in range(30))  # several windows
    one = "Standard delivery takes 3 to 7 business days."
    best, single = reader.read([ReadRequest("When does the parcel ship?", context), ReadRequest("How long?", one)])
    assert best is not None
    assert single is not None
    bounds = sentence_bounds(context)
    assert len(bounds) == 30
    assert len(best.sentence_spans) == 30  # every sentence has tokens in some window
    for span, (low, high) in zip(best.sentence_spans, bounds, strict=True):
        assert low <= span.start < span.end <= high
        assert context[span.start : span.end].strip() == span.text
        assert span.null_score == best.null_score
        assert span.score <= best.score + 1e-4  # the overall best is at least as good as any sentence's
    inside = [s for s in best.sentence_spans if (s.start, s.end) == (best.start, best.end)]
    assert not inside or inside[0].score == pytest.approx(best.score, abs=1e-4)
    assert single.sentence_spans == ()  # one sentence: the best span is its only candidate


def test_the_extractive_backend_answers_with_the_reader_span_through_its_batcher(
    trained: ReaderTrainReport, encoder: Encoder
) -> None:
    backend = ReaderBackend(
        ReaderConfig(path=str(trained.folder), device="cpu"), ReaderBatcherSettings().to_config(), version="reader:v1"
    )

    async def embed(texts: object, request_id: str) -> np.ndarray:
        raise AssertionError("a reader answer needs no sentence vectors")

    from app.settings import Settings

    service = AnswerService(Settings().answers.to_config(), embed, {}, encoder.info.identity, reader=backend)
    passages = [
        ContextPassage("kb-1", "kb-1#0", "Delivery", "Standard delivery takes 3 to 7 business days.", 0.8),
        ContextPassage("kb-2", "kb-2#0", "Returns", "Most items can be returned within 10 days.", 0.6),
    ]

    async def ask() -> object:
        await backend.start()
        backend.calibration = ReaderCalibration((1.0, 0.0, 0.0), 0.0, 0.0, "test")  # answer whatever the margin
        answer = await service.answer("How long does delivery take?", encoder.encode(["q"])[0], passages)
        await service.stop()
        return answer

    answer = asyncio.run(ask())
    assert not answer.abstained  # type: ignore[attr-defined]
    cited = answer.citations[0]  # type: ignore[attr-defined]
    assert answer.span in cited.text  # type: ignore[attr-defined]
    assert answer.grounding["method"] == "reader"  # type: ignore[attr-defined]
    assert answer.grounding["copied_from"] == [cited.chunk_id]  # type: ignore[attr-defined]
    assert answer.model["reader"]["registry_version"] == "reader:v1"  # type: ignore[attr-defined]


def test_a_calibration_with_the_sentence_match_scores_each_span_sentence(
    trained: ReaderTrainReport, encoder: Encoder
) -> None:
    backend = ReaderBackend(ReaderConfig(path=str(trained.folder), device="cpu"), ReaderBatcherSettings().to_config())
    embedded: list[str] = []

    async def embed(texts: Sequence[str], request_id: str) -> np.ndarray:
        embedded.extend(texts)
        return encoder.encode(list(texts))

    from app.settings import Settings

    service = AnswerService(Settings().answers.to_config(), embed, {}, encoder.info.identity, reader=backend)
    # One sentence each, as good as each other for retrieval: only the sentence match tells them apart.
    passages = [
        ContextPassage("kb-upi", "kb-upi#0", "Refunds", "Refunds to UPI take 2 to 3 business days.", 0.6),
        ContextPassage("kb-cards", "kb-cards#0", "Refunds", "Refunds to cards take 5 to 7 business days.", 0.6),
    ]
    question = "How long does a refund to my card take?"

    async def ask() -> object:
        await backend.start()
        backend.calibration = ReaderCalibration((0.0, 0.0, 50.0), 0.0, 0.0, "test")
        answer = await service.answer(question, encoder.encode([question])[0], passages)
        await service.stop()
        return answer

    answer = asyncio.run(ask())
    assert sorted(embedded) == sorted(p.text for p in passages)  # each span's sentence, once
    assert answer.citations[0].doc_id == "kb-cards"  # type: ignore[attr-defined]
    assert 0.0 < answer.grounding["sentence_match"] <= 1.0  # type: ignore[attr-defined]


def test_a_weak_span_is_an_abstention(trained: ReaderTrainReport, encoder: Encoder) -> None:
    backend = ReaderBackend(ReaderConfig(path=str(trained.folder), device="cpu"), ReaderBatcherSettings().to_config())

    async def embed(texts: object, request_id: str) -> np.ndarray:
        return encoder.encode(list(texts))  # type: ignore[call-overload]

    from app.settings import Settings

    service = AnswerService(Settings().answers.to_config(), embed, {}, encoder.info.identity, reader=backend)

    async def ask() -> object:
        await backend.start()
        backend.calibration = ReaderCalibration((0.0, 0.0, 0.0), -5.0, 0.5, "test")  # never confident
        passage = ContextPassage("kb-1", "kb-1#0", "Delivery", "Standard delivery takes 3 to 7 business days.", 0.8)
        answer = await service.answer("How long does delivery take?", encoder.encode(["q"])[0], [passage])
        await service.stop()
        return answer

    answer = asyncio.run(ask())
    assert answer.abstained  # type: ignore[attr-defined]
    assert answer.reason == "low_confidence"  # type: ignore[attr-defined]
    assert answer.grounding["confidence_needed"] == 0.5  # type: ignore[attr-defined]


def test_candor_train_reader_registers_a_version_the_service_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("CANDOR_PATHS__STATE_DIR", str(state))
    monkeypatch.setenv("CANDOR_ENCODER__DEVICE", "cpu")
    args = ["train", "reader", "--pack", str(PACK), "--max-train", "8", "--epochs", "1", "--batch-size", "8"]
    args += ["--max-seq-length", "128", "--doc-stride", "32", "--device", "cpu", "--no-evaluate", "--no-progress"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "registered reader:1" in result.output
    registry = ModelRegistry(default_uri(state), state / "models")
    version = registry.get("reader", "latest")
    assert version.tags["trained_on"] == f"pack:{PACK.resolve()}"
    assert version.params["split_salt"] == ""
    card = registry.card(version)
    assert card["data"]["split"].startswith("by article")
    assert set(card["data"]["articles"]) == {"train", "calibration", "test"}
    assert "calibration" in card
    settings = load_settings(overrides={"models": {"reader": str(version.version)}})
    config, pinned = reader_config(settings, registry)
    assert pinned is not None
    assert pinned.version == version.version
    assert config is not None
    assert Path(config.path).is_dir()
    none, _ = reader_config(load_settings(overrides={"models": {"reader": ""}}), registry)
    assert none is None  # no pin and no [reader] path: sentence answers

    # Promotion compares it with sentence answers on the pack's held-out articles and gates on gold-passage F1.
    promotion = evaluate(settings, registry, version, encoder=None, progress=False)
    assert set(promotion.runs) == {"candidate", "production"}
    (gate,) = promotion.gates
    assert gate.rule.startswith("f1[task=answers.heldout, setting=gold] > baseline")
    (check,) = gate.checks
    production = json.loads((Path(promotion.runs["production"]) / "results.json").read_text(encoding="utf-8"))
    baseline_f1 = [
        m["value"]
        for m in production["metrics"]
        if m["name"] == "f1" and m["task"] == "answers.heldout" and m.get("setting") == "gold"
    ]
    assert check["threshold"] == pytest.approx(baseline_f1[0])
    assert gate.passed == (check["value"] > check["threshold"])


def test_the_service_answers_with_a_configured_reader(
    trained: ReaderTrainReport, built_state: Path, encoder: Encoder, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    shutil.copytree(built_state, state)
    settings = make_settings(state, generator={"local": {"enabled": False}}, reader={"path": str(trained.folder)})
    with serving(settings, encoder) as base:
        keys = dict(line.split("=", 1) for line in (state / "initial-keys.txt").read_text().splitlines())
        frontend = {"Authorization": f"Bearer {keys['CANDOR_FRONTEND_KEY']}"}
        admin = {"Authorization": f"Bearer {keys['CANDOR_ADMIN_KEY']}"}
        info = httpx.get(f"{base}/v1/info", headers=admin, timeout=30).json()
        assert info["models"]["answers"]["extractive"]["reader"]["loaded"] is True  # loaded at startup
        question = {"question": "How long does standard delivery take?"}
        body = httpx.post(f"{base}/v1/answers", json=question, headers=frontend, timeout=60).json()
        assert body["backend"] == "extractive"
        assert body["disclosure"]["model"]["reader"]["loaded"] is True
        record = httpx.get(f"{base}/v1/audit/records/{body['audit_id']}", headers=admin, timeout=30).json()
        grounding = record["record"]["explanation"]["grounding"]
        assert grounding["method"] == "reader"
        if body["abstained"]:  # one training step rarely makes a confident reader
            assert body["reason"] == "low_confidence"
        else:
            cited = body["citations"][0]["text"]
            assert body["span"] in cited
            start, end = grounding["span"]["start"], grounding["span"]["end"]
            assert cited[start:end] == body["span"]


def test_the_configured_threshold_overrides_the_cards(trained: ReaderTrainReport) -> None:
    async def threshold(config: ReaderConfig) -> float:
        backend = ReaderBackend(config, ReaderBatcherSettings().to_config())
        await backend.start()
        await backend.stop()
        return backend.calibration.min_confidence

    folder = str(trained.folder)
    assert asyncio.run(threshold(ReaderConfig(path=folder, device="cpu"))) == ReaderCalibration().min_confidence
    assert asyncio.run(threshold(ReaderConfig(path=folder, device="cpu", min_confidence=0.2))) == 0.2
    with pytest.raises(ValueError, match="probability"):
        ReaderConfig(path=folder, min_confidence=1.5)


def test_an_int8_reader_reads_the_same_spans_at_about_the_same_scores(trained: ReaderTrainReport) -> None:
    full = SpanReader(ReaderConfig(path=str(trained.folder), device="cpu", precision="fp32"))
    int8 = SpanReader(ReaderConfig(path=str(trained.folder), device="cpu", precision="int8"))
    assert (full.info.precision, int8.info.precision) == ("fp32", "int8")
    assert int8.info.identity()["precision"] == "int8"  # answers and audit records say how it computed
    assert not int8.info.packed  # int8 scales activations per pass: a pass per window, whatever its batch
    assert int8.info.version == full.info.version  # the same weights
    assert int8.info.parameters == full.info.parameters
    quantized = [m for m in int8._model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == 6 * 6  # query, key, value, attention output and both feed-forward layers of six layers
    assert type(int8._model.qa_outputs) is torch.nn.Linear  # the span head stays in float
    requests = [
        ReadRequest("How long does delivery take?", "Standard delivery takes 3 to 7 business days in the EU."),
        ReadRequest("What is the mug made of?", "The travel mug is made of stainless steel and holds 350 ml."),
        ReadRequest("When can items be returned?", "Most items can be returned within 30 days of delivery."),
    ]
    for a, b, request in zip(full.read(requests), int8.read(requests), requests, strict=True):
        assert a is not None
        assert b is not None
        assert request.context[b.start : b.end].strip() == b.text
        assert abs(a.score - b.score) < 0.25 * max(1.0, abs(a.score))  # int8 rounding moves scores a little


def test_a_packed_reader_reads_a_batch_in_one_pass_with_the_eager_spans_and_scores(trained: ReaderTrainReport) -> None:
    packed = SpanReader(ReaderConfig(path=str(trained.folder), device="cpu"))
    eager = SpanReader(ReaderConfig(path=str(trained.folder), device="cpu", packed=False))
    assert (packed.info.packed, eager.info.packed) == (True, False)
    long = " ".join(f"Parcel {i} ships on day {i} from the warehouse in Lyon." for i in range(30))  # several windows
    requests = [
        ReadRequest("How long does delivery take?", "Standard delivery takes 3 to 7 business days in the EU."),
        ReadRequest("When does parcel 17 ship?", long),
        ReadRequest("What is the mug made of?", "The travel mug is made of stainless steel and holds 350 ml."),
    ]
    calls = 0
    forward = packed._packed[0].forward

    def counted(*args: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        out: torch.Tensor = forward(*args)
        return out

    packed._packed[0].forward = counted
    spans = packed.read(requests)
    assert calls == 1  # every window of every request in one forward pass
    for a, b, request in zip(spans, eager.read(requests), requests, strict=True):
        assert a is not None
        assert b is not None
        assert (a.text, a.start, a.end) == (b.text, b.start, b.end)
        assert request.context[a.start : a.end].strip() == a.text
        assert a.score == pytest.approx(b.score, abs=1e-3)
        assert a.null_score == pytest.approx(b.null_score, abs=1e-3)


def test_the_harness_answers_questions_together_as_it_does_one_at_a_time(
    trained: ReaderTrainReport, encoder: Encoder
) -> None:
    from app.cli_eval import service_answer_backends
    from app.settings import Settings
    from evals.answer_backends import ServiceAnswerSystem
    from evals.answers import AnswerBackendContext, ConcurrentAnswerSystem, Passage

    settings = Settings()
    factory = service_answer_backends(settings)["extractive"]
    options = {"reader": str(trained.folder), "reader_min_confidence": 0.0, "reader_precision": "int8"}
    system = factory(AnswerBackendContext(options=options, encoder=lambda: encoder))
    assert isinstance(system, ServiceAnswerSystem)
    assert isinstance(system, ConcurrentAnswerSystem)
    described = system.describe()["reader"]
    assert described["path"] == str(trained.folder)
    assert described["precision"] == "int8"
    assert settings.reader.precision == "fp32"  # the service's default; int8 is asked for here
    passages = [
        Passage("kb-1", "Standard delivery takes 3 to 7 business days.", "Delivery"),
        Passage("kb-2", "Most items can be returned within 30 days.", "Returns"),
    ]
    questions = [(q, passages) for q in ("How long does delivery take?", "When can I return an item?", "Returns?")]
    try:
        one_by_one = [system.answer(q, p) for q, p in questions]
        together = system.answer_many(questions)
    finally:
        system.close()
    # Every window is read alone on the CPU, so an int8 answer does not depend on what it was batched with.
    assert [a for a, _ in together] == one_by_one
    assert all(ms > 0 for _, ms in together)


def test_candor_train_reader_calibration_refits_on_the_pack_and_registers_a_child(
    trained: ReaderTrainReport, built_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import reader_calibration

    state = tmp_path / "state"
    shutil.copytree(built_state, state / "calibration")  # the command's own engine folder: no re-embedding
    monkeypatch.setenv("CANDOR_PATHS__STATE_DIR", str(state))
    monkeypatch.setenv("CANDOR_ENCODER__DEVICE", "cpu")
    monkeypatch.setenv("CANDOR_READER__DEVICE", "cpu")
    # One training step finds few right spans: count any span of a supporting document as right, so the fit has
    # both classes and the command's whole path runs.
    monkeypatch.setattr(reader_calibration, "RIGHT_F1", 0.0)
    before = (trained.folder / READER_FILE).read_text(encoding="utf-8")
    args = ["train", "reader-calibration", "--reader", str(trained.folder), "--pack", str(PACK), "--folds", "3"]
    result = CliRunner().invoke(main, [*args, "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "registered reader:1" in result.output
    for line in (
        "cross_fitted holds_answer",
        "previous     holds_answer",
        "cross_fitted abstention_accuracy",
        "cross_fitted probe_abstention",
    ):
        assert line in result.output
    assert (trained.folder / READER_FILE).read_text(encoding="utf-8") == before  # the source is left as it was
    registry = ModelRegistry(default_uri(state), state / "models")
    version = registry.get("reader", "latest")
    assert version.tags["parent"] == str(trained.folder)
    assert version.tags["calibrated_on"] == f"pack:{PACK.resolve()}"
    card = json.loads((registry.local_path(version) / READER_FILE).read_text(encoding="utf-8"))
    fitted_on = card["calibration"]["fitted_on"]
    assert fitted_on.startswith(f"pack:{PACK.resolve()}: 50 questions and ")
    probes = int(fitted_on.split(" and ")[1].split()[0])  # the answerable questions whose answer could be cut out
    assert 0 < probes <= 38
    assert card["recalibration"]["questions"] == 50 + probes
    assert set(card["recalibration"]["figures"]) == {"cross_fitted", "previous"}
    assert registry.card(version)["recalibration"] == card["recalibration"]

    async def served(config: ReaderConfig) -> ReaderCalibration:
        backend = ReaderBackend(config, ReaderBatcherSettings().to_config())
        await backend.start()
        await backend.stop()
        return backend.calibration

    calibration = asyncio.run(served(ReaderConfig(path=str(registry.local_path(version)), device="cpu")))
    assert calibration == ReaderCalibration.from_card(card)  # the service serves the re-fitted confidence


def test_candor_train_reader_calibration_fine_tunes_out_of_fold_and_registers_the_new_weights(
    trained: ReaderTrainReport, built_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import reader_calibration, reader_fine_tuning
    from retrieval.encoder import weights_digest

    state = tmp_path / "state"
    shutil.copytree(built_state, state / "calibration")
    monkeypatch.setenv("CANDOR_PATHS__STATE_DIR", str(state))
    monkeypatch.setenv("CANDOR_ENCODER__DEVICE", "cpu")
    monkeypatch.setenv("CANDOR_READER__DEVICE", "cpu")
    monkeypatch.setattr(reader_calibration, "RIGHT_F1", 0.0)  # as above: both classes from a one-step reader
    questions = reader_calibration.pack_questions(PACK)
    some = [e for e in questions if e.answerable][:14] + [e for e in questions if not e.answerable][:4]
    monkeypatch.setattr(reader_calibration, "pack_questions", lambda pack: some)  # a third of them: a quicker run
    trained_on: list[list[str]] = []
    train = train_reader  # the function the module calls, recorded below

    def recorded(examples: list[Any], *args: Any, **kwargs: Any) -> Any:
        trained_on.append([e.id for e in examples])
        return train(examples, *args, **kwargs)

    monkeypatch.setattr(reader_fine_tuning, "train_reader", recorded)
    before = weights_digest(trained.folder)
    args = ["train", "reader-calibration", "--reader", str(trained.folder), "--pack", str(PACK), "--folds", "2"]
    tuning = ["--fine-tune", "--epochs", "1", "--batch-size", "32", "--no-progress"]
    result = CliRunner().invoke(main, [*args, *tuning], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for line in ("cross_fitted holds_answer", "gold passage previous", "gold passage fine_tuned", "registered"):
        assert line in result.output
    # Two fold readers, then one on every question; no fold reader trained on a question of the fold it reads.
    assert len(trained_on) == 3
    folds = {e.id: reader_calibration.fold_of(reader_calibration.group_of(e), 2, 13) for e in some}
    for k, ids in enumerate(trained_on[:2]):
        others = {i for i, f in folds.items() if f != k}  # fold k's reader may train on the other folds only
        assert {i.removesuffix("~no-answer") for i in ids} <= others
    assert len(trained_on[2]) > max(len(ids) for ids in trained_on[:2])
    assert weights_digest(trained.folder) == before  # the source is left as it was
    registry = ModelRegistry(default_uri(state), state / "models")
    version = registry.get("reader", "latest")
    assert version.params["fine_tuned_on"] == f"pack:{PACK.resolve()}"
    assert version.tags["fine_tuned_on"] == f"pack:{PACK.resolve()}"
    assert version.tags["trained_on"] == str(trained.folder)  # gated promotion reads the source it trained on
    assert version.tags["parent"] == str(trained.folder)
    folder = registry.local_path(version)
    assert weights_digest(folder) != before  # new weights
    card = json.loads((folder / READER_FILE).read_text(encoding="utf-8"))
    assert card["fine_tuning"]["epochs"] == 1
    assert set(card["fine_tuning"]["gold_passage"]) == {"previous", "fine_tuned"}
    assert card["calibration"]["fitted_on"].endswith("(read by readers fine-tuned on the other folds)")
    assert SpanReader(ReaderConfig(path=str(folder), device="cpu")).read([ReadRequest("When?", "On Monday.")])[0]
