"""Grounded answers and the knowledge base's admin routes.

``POST /v1/answers`` answers (optionally streamed as server-sent events); ``POST /v1/documents`` and
``GET``/``DELETE /v1/documents/{id}`` manage the documents answers come from.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import structlog
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from app.auditing import audit_call
from app.auth import model_for_caller, require_roles, sees_internals
from app.errors import BODY_ERRORS, CALLER_ERRORS, ApiError, documented_errors, invalid
from app.observability import current_request_id
from app.routes.recommend import FRONTEND_ROLES, check_text
from app.schemas import (
    AnswerRequest,
    AnswerResponse,
    CitationOut,
    DisclosureOut,
    DocumentChangeOut,
    DocumentOut,
    DocumentsRequest,
    DocumentsResponse,
    FallbackOut,
)
from app.state import Services
from governance.audit import AuditEvent
from retrieval.answers import GroundedAnswer
from retrieval.errors import GeneratorError
from retrieval.pack import Document

logger = structlog.get_logger(__name__)


def answer_out(answer: GroundedAnswer, notice: str, request_id: str, *, internals: bool = False) -> AnswerResponse:
    """A grounded answer as returned to the caller, with its AI-generated content disclosure.

    The disclosure names the model; the remote endpoint's address only for ``internals`` (admin keys): the audit
    record keeps it in full for reviewers.
    """
    return AnswerResponse(
        answer=answer.answer,
        citations=[
            CitationOut(
                doc_id=c.doc_id, chunk_id=c.chunk_id, title=c.title, text=c.text, score=round(c.score, 6), kind=c.kind
            )
            for c in answer.citations
        ],
        confidence=answer.confidence,
        abstained=answer.abstained,
        backend=answer.backend,
        disclosure=DisclosureOut(ai_generated=True, model=model_for_caller(answer.model, internals), notice=notice),
        request_id=request_id,
        span=answer.span,
        reason=answer.reason,
        fallback=FallbackOut(answer.fallback["from"], answer.fallback["reason"]) if answer.fallback else None,
        excluded_passages=list(answer.excluded),
    )


def review_reason(answer: GroundedAnswer, below: float) -> str | None:
    """Why an answer needs a human look: it abstained, or its confidence is under ``below``."""
    if answer.abstained:
        return f"abstained:{answer.reason or 'unknown'}"
    if answer.confidence < below:
        return "low_confidence"
    return None


def answer_event(request: AnswerRequest, answer: GroundedAnswer, response: AnswerResponse, below: float) -> AuditEvent:
    """The audit event of an answer: every passage considered, the citations and grounding check as its explanation.

    Args:
        request: The request body.
        answer: The grounded answer the backend composed.
        response: The answer as sent (without its audit id).
        below: Answers under this confidence (and every abstention) join the review queue.
    """
    return AuditEvent(
        endpoint="/v1/answers",
        request=msgspec.to_builtins(request),
        output=msgspec.to_builtins(response),
        retrieved=[{"id": f"{p.doc_id}#{p.chunk_id}", "score": round(p.score, 6)} for p in answer.retrieved],
        explanation=msgspec.to_builtins(
            {
                "citations": [
                    {"doc_id": c.doc_id, "chunk_id": c.chunk_id, "score": round(c.score, 6)} for c in answer.citations
                ],
                "confidence": answer.confidence,
                "retrieval_score": answer.retrieval_score,
                "answer_score": answer.answer_score,
                "grounding": dict(answer.grounding),
                "fallback": dict(answer.fallback) if answer.fallback else None,
                "excluded_passages": list(answer.excluded),
            }
        ),
        models={"answer": dict(answer.model), "backend": answer.backend},
        needs_review=review_reason(answer, below),
        abstained=answer.abstained,
    )


def answer_parameters(services: Services, data: AnswerRequest) -> tuple[str, int, int, str]:
    """Check an answer request against the configured limits and backends.

    Returns:
        The stripped question, ``k_context``, ``max_tokens`` and the backend's name.

    Raises:
        ApiError: 400 for a value out of range or a backend this service does not run.
    """
    cfg = services.settings.answers
    question = check_text("question", data.question, cfg.max_question_chars)
    k = data.k_context or cfg.k_context
    if k > cfg.max_k_context:
        raise invalid("k_context", f"must be between 1 and {cfg.max_k_context}")
    max_tokens = data.max_tokens or cfg.max_tokens
    if max_tokens > cfg.max_tokens_limit:
        raise invalid("max_tokens", f"must be between 1 and {cfg.max_tokens_limit}")
    backend = data.backend or cfg.default_backend
    if backend not in services.answers.backends:
        raise ApiError(
            400,
            "backend_unavailable",
            f"backend {backend!r} is not configured on this service",
            {"backend": backend, "available": list(services.answers.backends)},
        )
    return question, k, max_tokens, backend


async def run_answer(services: Services, request: Request[Any, Any, Any], data: AnswerRequest) -> AnswerResponse:
    """Answer one question without streaming and audit it, as ``POST /v1/answers`` does (the demo page too).

    Args:
        services: The running service's parts.
        request: The HTTP request (its caller is recorded; admin keys see the remote model's address).
        data: The validated request body.

    Returns:
        The response, with its ``audit_id``.
    """
    started = time.perf_counter()
    cfg = services.settings.answers
    question, k, max_tokens, backend = answer_parameters(services, data)
    request_id = current_request_id()
    engine = services.engine
    # One lease for the question's vector and the answer's sentence vectors: one encoder makes them all.
    async with engine.lease():
        # k spare passages: passages kept out of the context (they address the model) must not shrink it.
        vector, passages = await engine.retrieve_passages(question, k, request_id, spare=k)
        result = await services.answers.answer(
            question, vector, passages, backend=backend, max_tokens=max_tokens, request_id=request_id, k=k
        )
    response = answer_out(result, cfg.disclosure_notice, request_id, internals=sees_internals(request))
    event = answer_event(data, result, response, services.settings.audit.review_confidence_below)
    response.audit_id = await audit_call(services, request, event, started, query_vector=vector)
    return response


def _event(name: str, payload: Any) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=msgspec.json.encode(payload).decode(), event=name)


class AnswerController(Controller):
    """Grounded answers for the frontend."""

    path = "/"
    tags = ["answers"]  # noqa: RUF012 - Litestar reads this class attribute

    @post(
        "/answers",
        status_code=200,
        guards=[require_roles(*FRONTEND_ROLES)],
        summary="Answer a question from the shop's documents and items, with citations",
        responses={
            200: ResponseSpec(AnswerResponse, description="The answer (or, with stream, SSE events)"),
            **documented_errors(*CALLER_ERRORS, *BODY_ERRORS, 429, 502, 503, 504),
        },
    )
    async def answer(
        self,
        data: JSONBody[AnswerRequest],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> Response[Any]:
        """Retrieve passages, answer with the chosen backend, check the answer against its citations.

        With ``stream: true`` the answer arrives as server-sent events: ``delta`` events carry sentences that
        passed the grounding check, and a ``final`` event carries the whole response (its ``answer`` is
        authoritative, and it carries the ``audit_id``); a failure without fallback ends with an ``error`` event in
        the error shape. Every answer is audited before it is sent; abstentions and low-confidence answers join the
        review queue.
        """
        if not data.stream:
            return Response(await run_answer(services, request, data))
        started = time.perf_counter()
        cfg = services.settings.answers
        question, k, max_tokens, backend = answer_parameters(services, data)
        answers = services.answers
        request_id = current_request_id()
        engine = services.engine
        # Retrieved here, so overload and bad input still answer with their HTTP status before the stream starts.
        vector, passages = await engine.retrieve_passages(question, k, request_id, spare=k)
        retrieved_with = engine.encoder_info.version

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            async with engine.lease():
                # An encoder swapped in since retrieval would score sentences in another space: retrieve again.
                fresh = engine.encoder_info.version == retrieved_with
                question_vector, context = (
                    (vector, passages) if fresh else await engine.retrieve_passages(question, k, request_id, spare=k)
                )
                async for item in _answer_events(question_vector, context):
                    yield item

        async def _answer_events(vector: Any, passages: Any) -> AsyncIterator[ServerSentEventMessage]:
            async for kind, payload in answers.stream(
                question, vector, passages, backend=backend, max_tokens=max_tokens, request_id=request_id, k=k
            ):
                if kind == "delta":
                    yield _event("delta", {"text": payload})
                elif kind == "final":
                    final = answer_out(payload, cfg.disclosure_notice, request_id, internals=sees_internals(request))
                    event = answer_event(data, payload, final, services.settings.audit.review_confidence_below)
                    try:
                        final.audit_id = await audit_call(services, request, event, started, query_vector=vector)
                    except ApiError as exc:  # the stream has started: the failure travels as an error event
                        error = {"code": exc.code, "message": exc.message, "details": exc.details}
                        yield _event("error", {"error": error, "request_id": request_id})
                        return
                    yield _event("final", final)
                elif isinstance(payload, GeneratorError):
                    error = {"code": payload.code, "message": str(payload), "details": {"backend": payload.backend}}
                    yield _event("error", {"error": error, "request_id": request_id})

        return ServerSentEvent(events(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


class DocumentController(Controller):
    """The knowledge base, for admins."""

    path = "/documents"
    guards = [require_roles("admin")]  # noqa: RUF012
    tags = ["knowledge base"]  # noqa: RUF012

    @post(
        "/",
        status_code=200,
        summary="Add or replace knowledge-base documents",
        responses=documented_errors(*CALLER_ERRORS, *BODY_ERRORS, 429, 503),
    )
    async def upsert(self, data: JSONBody[DocumentsRequest], services: NamedDependency[Services]) -> DocumentsResponse:
        """Chunk, embed and index the documents; they are answerable when the call returns."""
        limits = services.settings.knowledge
        if len(data.documents) > limits.max_documents_per_request:
            raise invalid("documents", f"at most {limits.max_documents_per_request} per request")
        seen: set[str] = set()
        docs = []
        for n, doc in enumerate(data.documents):
            if doc.id in seen:
                raise invalid(f"documents[{n}].id", f"duplicate id {doc.id!r}")
            seen.add(doc.id)
            text = check_text(f"documents[{n}].text", doc.text, limits.max_document_chars)
            title = check_text(f"documents[{n}].title", doc.title, 1000)
            docs.append(Document(id=doc.id, title=title, text=text, source=doc.source))
        changes = await services.engine.upsert_documents(docs)
        return DocumentsResponse(
            documents=[DocumentChangeOut(c.id, c.created, c.chunks) for c in changes],
            knowledge=services.engine.knowledge_info(),
            request_id=current_request_id(),
        )

    @get(
        "/{doc_id:str}", summary="Read a knowledge-base document", responses=documented_errors(*CALLER_ERRORS, 404, 503)
    )
    async def read(self, doc_id: FromPath[str], services: NamedDependency[Services]) -> DocumentOut:
        """The stored document."""
        doc = services.engine.get_document(doc_id)
        if doc is None:
            raise ApiError(404, "document_not_found", f"no document {doc_id!r}", {"doc_id": doc_id})
        return DocumentOut(id=doc.id, title=doc.title, text=doc.text, source=doc.source)

    @delete(
        "/{doc_id:str}",
        status_code=204,
        summary="Delete a knowledge-base document",
        responses=documented_errors(*CALLER_ERRORS, 404, 503),
    )
    async def remove(self, doc_id: FromPath[str], services: NamedDependency[Services]) -> None:
        """Gone from answers when the call returns."""
        if not await services.engine.delete_document(doc_id):
            raise ApiError(404, "document_not_found", f"no document {doc_id!r}", {"doc_id": doc_id})
