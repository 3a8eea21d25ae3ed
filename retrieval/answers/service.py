"""Grounded answers: retrieved passages in, an answer with checked citations (or a polite abstention) out.

Three backends sit behind one interface: ``extractive`` (no LM: the best span a trained reader finds in the
retrieved passages when one is configured, else the best sentences),
``local`` (a small LM in-process, batched) and ``openai`` (any OpenAI-compatible endpoint). Whatever the backend:

1. passages that address the model (``ignore your instructions``) are kept out of the context and reported;
2. when the best retrieval score is below ``min_retrieval_score`` the service abstains;
3. a generated answer's ``[n]`` citations are checked against the passages given, and each of its sentences
   must be supported by the cited passages (encoder similarity, content-word overlap, same negation); an
   unsupported answer is replaced by the extractive one (or an abstention, by config);
4. a remote failure becomes an error, or the extractive answer when ``fallback = "extractive"``;
5. ``confidence`` is a logistic function of the retrieval score and the answer's support score, with weights
   fitted on the demo pack's ``eval/qa.jsonl`` (``python -m bench.answers calibrate``); a reader's answer uses
   its own calibration (retrieval score and span margin), fitted by ``candor train reader`` on articles it was
   neither trained nor evaluated on, and abstains with ``low_confidence`` below its threshold.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import structlog

from retrieval.answers.backends import Generator
from retrieval.answers.grounding import (
    Extracted,
    ExtractiveConfig,
    SupportConfig,
    SupportReport,
    build_messages,
    check_support,
    extract_answer,
    looks_like_injection,
    parse_generation,
    passage_sentences,
)
from retrieval.answers.reading import (
    ReadAnswer,
    ReaderBackend,
    ReaderCalibration,
    candidate_sentences,
    choose_span,
    sentence_matches,
    span_candidates,
)
from retrieval.chunking import split_sentences
from retrieval.errors import BackendUnavailableError, GeneratorError
from retrieval.reader import ReadRequest

logger = structlog.get_logger(__name__)

BACKENDS = ("extractive", "local", "openai")
Embed = Callable[[Sequence[str], str], Awaitable[np.ndarray]]


@dataclass(frozen=True, slots=True)
class ContextPassage:
    """A retrieved passage the answer may cite.

    Attributes:
        doc_id: Parent document or item id.
        chunk_id: ``<doc_id>#<n>``.
        title: Parent title.
        text: The passage text.
        score: Retrieval score (cosine similarity to the question).
        kind: ``document`` or ``item``.
    """

    doc_id: str
    chunk_id: str
    title: str
    text: str
    score: float
    kind: str = "document"


@dataclass(frozen=True, slots=True)
class AnswerConfig:
    """Grounding, abstention and disclosure (``[answers]`` in the config).

    Attributes:
        default_backend: Backend used when a request names none.
        min_retrieval_score: Below this best passage score the service abstains.
        min_confidence: Extractive answers with a lower calibrated confidence become abstentions.
        ungrounded: What replaces an unsupported generated answer: ``extractive`` or ``abstain``.
        fallback: On remote failures: ``none`` (502/504) or ``extractive``.
        abstain_message: The fixed answer when abstaining.
        confidence_weights: Logistic weights of (retrieval score, answer score).
        confidence_bias: Logistic bias.
        disclosure_notice: Human-readable AI-generated content notice.
        extractive: Extractive sentence scoring.
        support: Support thresholds.
    """

    default_backend: str
    min_retrieval_score: float
    min_confidence: float
    ungrounded: Literal["extractive", "abstain"]
    fallback: Literal["none", "extractive"]
    abstain_message: str
    confidence_weights: tuple[float, float]
    confidence_bias: float
    disclosure_notice: str
    extractive: ExtractiveConfig
    support: SupportConfig


@dataclass(frozen=True, slots=True)
class GroundedAnswer:
    """An answer and everything needed to show, audit and trust it.

    Attributes:
        answer: The answer text (the abstention message when ``abstained``).
        span: The short answer span inside ``answer`` (quantities), when one was found.
        citations: Cited passages, most important first.
        confidence: Calibrated probability that the answer is right (0 when abstaining).
        abstained: Whether the service declined to answer.
        backend: The backend that produced ``answer`` (``extractive`` after a fallback).
        model: Model ids and versions behind the answer.
        requested_backend: The backend the caller asked for.
        fallback: ``{"from", "reason"}`` when another backend's answer was replaced.
        reason: Why the service abstained (``low_retrieval``, ``low_confidence``, ``model_declined``, ...).
        retrieval_score: Best passage score.
        answer_score: Extractive score or support score of the answer.
        grounding: The support check, for audits.
        excluded: Passages kept out of the context because they address the model.
        retrieved: Every passage considered, for audits.
        tokens: Tokens generated (0 for extractive).
    """

    answer: str
    span: str | None
    citations: tuple[ContextPassage, ...]
    confidence: float
    abstained: bool
    backend: str
    model: Mapping[str, Any]
    requested_backend: str
    fallback: Mapping[str, str] | None = None
    reason: str | None = None
    retrieval_score: float = 0.0
    answer_score: float = 0.0
    grounding: Mapping[str, Any] = field(default_factory=dict)
    excluded: tuple[str, ...] = ()
    retrieved: tuple[ContextPassage, ...] = ()
    tokens: int = 0


def context_passages(
    passages: Sequence[ContextPassage], k: int | None = None
) -> tuple[list[ContextPassage], tuple[str, ...]]:
    """The passages an answer is read from: the first ``k`` (all when ``None``) that do not look like instructions.

    Returns:
        The kept passages (best first) and the chunk ids excluded as instructions. Callers over-fetch so that
        exclusions do not shrink the context.
    """
    clean = [p for p in passages if not looks_like_injection(p.text) and not looks_like_injection(p.title)]
    excluded = tuple(p.chunk_id for p in passages if p not in clean)
    return (clean[:k] if k else clean), excluded


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


class SentenceCache:
    """Vectors of passage sentences already embedded (passages repeat across questions), per encoder.

    Entries are keyed by the encoder's weights digest and the text, so after an encoder swap no vector from the old
    encoder is served with a question vector from the new one.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._data: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    async def embed(self, texts: Sequence[str], embed: Embed, request_id: str, encoder: str = "") -> np.ndarray:
        """Vectors for ``texts`` from the encoder named ``encoder``, embedding only the ones not seen recently."""
        missing = list(dict.fromkeys(t for t in texts if (encoder, t) not in self._data))
        if missing:
            vectors = await embed(missing, request_id)
            for text, vector in zip(missing, vectors, strict=True):
                self._data[(encoder, text)] = vector
                if len(self._data) > self.capacity:
                    self._data.popitem(last=False)
        out = []
        for text in texts:
            self._data.move_to_end((encoder, text))
            out.append(self._data[(encoder, text)])
        return np.stack(out) if out else np.zeros((0, 1), dtype=np.float32)


@dataclass(slots=True)
class _Context:
    question: str
    question_vector: np.ndarray
    passages: list[ContextPassage]
    excluded: tuple[str, ...]
    sentences: list[Any]
    sentence_vectors: np.ndarray
    extracted: Extracted | None
    request_id: str = "-"
    read: ReadAnswer | None = None
    calibration: ReaderCalibration | None = None  # of the reader that read (None: not read yet)


class AnswerService:
    """Answers questions from passages, with any backend, under the same grounding rules.

    Args:
        config: Grounding, abstention and disclosure settings.
        embed: Embeds texts through the encoder (the service passes its batched encoder).
        generators: Generative backends by name (``local``, ``openai``); ``extractive`` is built in.
        extractive_model: Returns the encoder's identity, reported as the extractive backend's model.
        reader: A span reader: extractive answers (and fallbacks) are then its best calibrated span, not sentences.
    """

    def __init__(
        self,
        config: AnswerConfig,
        embed: Embed,
        generators: Mapping[str, Generator] | None = None,
        extractive_model: Callable[[], Mapping[str, Any]] | None = None,
        reader: ReaderBackend | None = None,
    ) -> None:
        self.config = config
        self._embed = embed
        self.generators: dict[str, Generator] = dict(generators or {})
        self._extractive_model = extractive_model or dict
        self.reader = reader
        self._cache = SentenceCache()

    @property
    def backends(self) -> tuple[str, ...]:
        """Backend names a request may ask for."""
        return ("extractive", *self.generators)

    async def stop(self) -> None:
        """Stop every generator and the reader."""
        for generator in self.generators.values():
            await generator.stop()
        if self.reader is not None:
            await self.reader.stop()

    def confidence(self, retrieval_score: float, answer_score: float) -> float:
        """Calibrated probability that an answer with these scores is right."""
        w_retrieval, w_answer = self.config.confidence_weights
        return _sigmoid(w_retrieval * retrieval_score + w_answer * answer_score + self.config.confidence_bias)

    def model_of(self, backend: str) -> dict[str, Any]:
        """Model identity for a backend (the encoder for ``extractive``)."""
        if backend == "extractive":
            reader = {"reader": self.reader.describe()} if self.reader is not None else {}
            return {"backend": "extractive", **self._extractive_model(), **reader}
        return {"backend": backend, **self.generators[backend].describe()}

    async def _sentence_vectors(self, texts: Sequence[str], request_id: str) -> np.ndarray:
        encoder = str(self._extractive_model().get("version", ""))  # read before embedding: see SentenceCache
        return await self._cache.embed(texts, self._embed, request_id, encoder)

    # -- shared steps ------------------------------------------------------------------------------------------

    async def _prepare(
        self,
        question: str,
        question_vector: np.ndarray,
        passages: Sequence[ContextPassage],
        request_id: str,
        k: int | None = None,
        sentences_needed: bool = True,
    ) -> _Context:
        kept, excluded = context_passages(passages, k)
        if excluded:
            logger.warning("passages_excluded_as_instructions", chunk_ids=list(excluded), request_id=request_id)
        # With a reader, an extractive answer needs no sentence vectors: skip the encoder pass.
        sentences = passage_sentences([p.text for p in kept]) if sentences_needed else []
        vectors = await self._sentence_vectors([s.text for s in sentences], request_id) if sentences else None
        extracted = None
        if sentences and vectors is not None:
            extracted = extract_answer(
                question, question_vector, sentences, vectors, [p.score for p in kept], self.config.extractive
            )
        return _Context(
            question,
            question_vector,
            kept,
            excluded,
            sentences,
            vectors if vectors is not None else np.zeros((0, 1)),
            extracted,
            request_id,
        )

    def _abstain(self, ctx: _Context, backend: str, requested: str, reason: str, **extra: Any) -> GroundedAnswer:
        top = ctx.passages[0].score if ctx.passages else 0.0
        return GroundedAnswer(
            answer=self.config.abstain_message,
            span=None,
            citations=(),
            confidence=0.0,
            abstained=True,
            backend=backend,
            model=self.model_of(backend),
            requested_backend=requested,
            reason=reason,
            retrieval_score=top,
            excluded=ctx.excluded,
            retrieved=tuple(ctx.passages),
            **extra,
        )

    async def _read(self, ctx: _Context) -> ReadAnswer | None:
        """The reader's most confident span over the context's passages (read once per context)."""
        reader = self.reader  # a reload may swap it while this request awaits: stay with this one
        if reader is None or not ctx.passages:
            return None
        if ctx.calibration is None:
            requests = [ReadRequest(ctx.question, p.text) for p in ctx.passages]
            spans = await reader.read(requests, ctx.request_id)
            texts, scores = [p.text for p in ctx.passages], [p.score for p in ctx.passages]
            calibration = reader.calibration
            matches = None
            if calibration.uses_sentences:
                sentences = candidate_sentences(texts, span_candidates(spans, by_sentence=True))
                vectors = await self._sentence_vectors(sentences, ctx.request_id)  # the cache embeds each text once
                matches = sentence_matches(ctx.question, ctx.question_vector, sentences, vectors)
            ctx.read = choose_span(ctx.question, texts, scores, spans, calibration, matches)
            ctx.calibration = calibration
        return ctx.read

    async def _extractive(
        self, ctx: _Context, requested: str, fallback: Mapping[str, str] | None = None
    ) -> GroundedAnswer:
        if not ctx.passages or ctx.passages[0].score < self.config.min_retrieval_score:
            return self._abstain(ctx, "extractive", requested, "low_retrieval", fallback=fallback)
        if self.reader is not None:
            return await self._read_answer(ctx, requested, fallback)
        extracted = ctx.extracted
        top = ctx.passages[0].score
        if extracted is None or self.confidence(top, extracted.score) < self.config.min_confidence:
            return self._abstain(ctx, "extractive", requested, "low_confidence", fallback=fallback)
        return GroundedAnswer(
            answer=extracted.text,
            span=extracted.span,
            citations=tuple(ctx.passages[i] for i in extracted.passages),
            confidence=round(self.confidence(top, extracted.score), 4),
            abstained=False,
            backend="extractive",
            model=self.model_of("extractive"),
            requested_backend=requested,
            fallback=fallback,
            retrieval_score=top,
            answer_score=extracted.score,
            grounding={"method": "extractive", "copied_from": [ctx.passages[i].chunk_id for i in extracted.passages]},
            excluded=ctx.excluded,
            retrieved=tuple(ctx.passages),
        )

    async def _read_answer(self, ctx: _Context, requested: str, fallback: Mapping[str, str] | None) -> GroundedAnswer:
        """The reader's answer: its most confident span (or that span's sentence), or an abstention."""
        read = await self._read(ctx)
        calibration = ctx.calibration or ReaderCalibration()
        if read is None or read.confidence < calibration.min_confidence:
            extra = {"confidence_needed": calibration.min_confidence}
            if read is not None:
                extra.update(confidence=round(read.confidence, 4), margin=round(read.span.margin, 3))
            return self._abstain(
                ctx,
                "extractive",
                requested,
                "low_confidence",
                fallback=fallback,
                grounding={"method": "reader", **extra},
            )
        passage = ctx.passages[read.passage]
        return GroundedAnswer(
            answer=read.text,
            span=read.span.text,
            citations=(passage,),
            confidence=round(read.confidence, 4),
            abstained=False,
            backend="extractive",
            model=self.model_of("extractive"),
            requested_backend=requested,
            fallback=fallback,
            retrieval_score=ctx.passages[0].score,
            answer_score=round(read.span.margin, 4),
            grounding={
                "method": "reader",
                "copied_from": [passage.chunk_id],
                "span": {"start": read.span.start, "end": read.span.end},
                "margin": round(read.span.margin, 4),
                **({"sentence_match": round(read.sentence_match, 4)} if calibration.uses_sentences else {}),
                "calibration": calibration.fitted_on or "uncalibrated defaults",
            },
            excluded=ctx.excluded,
            retrieved=tuple(ctx.passages),
        )

    async def _support(self, ctx: _Context, text: str, cited: Sequence[int], request_id: str) -> SupportReport:
        answer_sentences = split_sentences(text)
        chosen = [i for i, s in enumerate(ctx.sentences) if s.passage in set(cited)]
        if not answer_sentences or not chosen:
            return SupportReport((), False, 0.0)
        vectors = await self._sentence_vectors(answer_sentences, request_id)
        return check_support(
            answer_sentences,
            vectors,
            [ctx.sentences[i].text for i in chosen],
            ctx.sentence_vectors[chosen],
            self.config.support,
        )

    async def _finish_generated(
        self, ctx: _Context, backend: str, raw: str, tokens: int, request_id: str
    ) -> GroundedAnswer:
        """Check a generated answer's citations and support; replace or abstain when it is not grounded."""
        parsed = parse_generation(raw, len(ctx.passages))
        top = ctx.passages[0].score
        if parsed.declined:
            return self._abstain(ctx, backend, backend, "model_declined", tokens=tokens)
        cited = list(parsed.cited)
        inferred = not cited
        if inferred:  # the model cited nothing: accept support from any passage given, and say so
            cited = list(range(len(ctx.passages)))
        report = await self._support(ctx, parsed.text, cited, request_id)
        grounding = {
            "method": "support-check",
            "raw_answer": raw,
            "cited_positions": [i + 1 for i in parsed.cited],
            "invalid_citations": list(parsed.invalid_citations),
            "citations_inferred": inferred,
            **report.to_dict(),
        }
        if not report.supported:
            logger.info("generated_answer_not_grounded", backend=backend, request_id=request_id)
            if self.config.ungrounded == "extractive":
                answer = await self._extractive(ctx, backend, {"from": backend, "reason": "ungrounded"})
                return replace(answer, grounding={**answer.grounding, "replaced": grounding}, tokens=tokens)
            return self._abstain(ctx, backend, backend, "ungrounded", grounding=grounding, tokens=tokens)
        if inferred:  # keep only the passages that actually support a sentence
            best = {
                int(np.argmax(ctx.sentence_vectors @ v))
                for v in await self._sentence_vectors([s.text for s in report.sentences], request_id)
            }
            cited = sorted({ctx.sentences[i].passage for i in best})
        return GroundedAnswer(
            answer=parsed.text,
            span=None,
            citations=tuple(ctx.passages[i] for i in cited),
            confidence=round(self.confidence(top, report.score), 4),
            abstained=False,
            backend=backend,
            model=self.model_of(backend),
            requested_backend=backend,
            retrieval_score=top,
            answer_score=report.score,
            grounding=grounding,
            excluded=ctx.excluded,
            retrieved=tuple(ctx.passages),
            tokens=tokens,
        )

    def _check_backend(self, backend: str) -> None:
        if backend != "extractive" and backend not in self.generators:
            raise BackendUnavailableError(backend, "not configured on this service")

    async def _fallback_or_raise(self, ctx: _Context, backend: str, exc: GeneratorError) -> GroundedAnswer:
        if self.config.fallback != "extractive":
            raise exc
        logger.warning("generator_failed_falling_back", backend=backend, code=exc.code)
        return await self._extractive(ctx, backend, {"from": backend, "reason": exc.code})

    # -- public API --------------------------------------------------------------------------------------------

    async def answer(
        self,
        question: str,
        question_vector: np.ndarray,
        passages: Sequence[ContextPassage],
        *,
        backend: str | None = None,
        max_tokens: int = 128,
        request_id: str = "-",
        k: int | None = None,
    ) -> GroundedAnswer:
        """Answer from the given passages (best first), using the first ``k`` that are not excluded.

        Raises:
            BackendUnavailableError: The backend is not configured.
            GeneratorError: The generator failed and no fallback is configured.
        """
        chosen = backend or self.config.default_backend
        self._check_backend(chosen)
        reader_only = chosen == "extractive" and self.reader is not None
        ctx = await self._prepare(question, question_vector, passages, request_id, k, not reader_only)
        if chosen == "extractive":
            return await self._extractive(ctx, chosen)
        if not ctx.passages or ctx.passages[0].score < self.config.min_retrieval_score:
            return self._abstain(ctx, chosen, chosen, "low_retrieval")
        messages = build_messages(question, [(p.title, p.text) for p in ctx.passages])
        try:
            result = await self.generators[chosen].complete(messages, max_tokens, request_id)
        except GeneratorError as exc:
            return await self._fallback_or_raise(ctx, chosen, exc)
        return await self._finish_generated(ctx, chosen, result.text, result.tokens, request_id)

    async def stream(
        self,
        question: str,
        question_vector: np.ndarray,
        passages: Sequence[ContextPassage],
        *,
        backend: str | None = None,
        max_tokens: int = 128,
        request_id: str = "-",
        k: int | None = None,
    ) -> AsyncIterator[tuple[str, Any]]:
        """Answer as events: ``("delta", text)`` per checked sentence, then ``("final", GroundedAnswer)``.

        Deltas are sentences that passed the support check. The final answer is authoritative: when a generated
        answer is replaced, it differs from the deltas. A failure without fallback ends with
        ``("error", GeneratorError)``.
        """
        chosen = backend or self.config.default_backend
        self._check_backend(chosen)
        reader_only = chosen == "extractive" and self.reader is not None
        ctx = await self._prepare(question, question_vector, passages, request_id, k, not reader_only)
        if chosen == "extractive" or not ctx.passages or ctx.passages[0].score < self.config.min_retrieval_score:
            final = (
                await self._extractive(ctx, chosen)
                if chosen == "extractive"
                else self._abstain(ctx, chosen, chosen, "low_retrieval")
            )
            if not final.abstained:
                for sentence in split_sentences(final.answer):
                    yield "delta", sentence + " "
            yield "final", final
            return
        messages = build_messages(question, [(p.title, p.text) for p in ctx.passages])
        raw = ""
        sent = 0  # sentences of ``raw`` already checked and sent
        broken = False
        all_passages = list(range(len(ctx.passages)))
        try:
            async for delta in self.generators[chosen].stream(messages, max_tokens, request_id):
                raw += delta
                complete = split_sentences(raw)[:-1]  # the last one may still grow
                while not broken and sent < len(complete):
                    clean = parse_generation(complete[sent], len(ctx.passages)).text
                    if clean:
                        report = await self._support(ctx, clean, all_passages, request_id)
                        if not report.supported:
                            broken = True  # stop sending; the final event carries the replacement
                            break
                        yield "delta", clean + " "
                    sent += 1
        except GeneratorError as exc:
            if self.config.fallback != "extractive":
                yield "error", exc
                return
            yield "final", await self._fallback_or_raise(ctx, chosen, exc)
            return
        final = await self._finish_generated(ctx, chosen, raw, len(raw.split()), request_id)
        if not broken and not final.abstained and final.backend == chosen:
            rest = split_sentences(final.answer)[sent:]
            for sentence in rest:
                yield "delta", sentence + " "
        yield "final", final
