"""``POST /v1/search`` and ``POST /v1/recommendations``: thin handlers over the retrieval engine."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.auditing import audit_call
from app.auth import Role, require_roles
from app.errors import BODY_ERRORS, CALLER_ERRORS, documented_errors, invalid
from app.observability import current_request_id
from app.schemas import (
    ContributionOut,
    EncoderOut,
    ExplanationOut,
    FiltersIn,
    HistoryEntryIn,
    IndexOut,
    ItemOut,
    ModelOut,
    RecommendationRequest,
    RecommendationResponse,
    RecommenderOut,
    SearchRequest,
    SearchResponse,
)
from app.settings import LimitSettings
from app.state import Services
from governance.audit import AuditEvent
from retrieval.engine import Ranked, RetrievalEngine
from retrieval.types import Filters, HistoryEntry, ScoredItem

# Who may search, get recommendations and ask (the API routes and the demo page alike).
FRONTEND_ROLES: tuple[Role, ...] = ("frontend", "admin")


def check_text(field: str, value: str, max_chars: int) -> str:
    """Strip a free-text field and enforce it is non-empty and within the configured length."""
    text = value.strip()
    if not text:
        raise invalid(field, "must not be empty")
    if len(text) > max_chars:
        raise invalid(field, f"longer than {max_chars} characters")
    return text


def to_filters(filters: FiltersIn | None) -> Filters:
    """Convert and cross-check request filters."""
    if filters is None:
        return Filters()
    if filters.price_min is not None and filters.price_max is not None and filters.price_min > filters.price_max:
        raise invalid("filters.price_min", "must not exceed filters.price_max")
    return Filters(
        category=filters.category, brand=filters.brand, price_min=filters.price_min, price_max=filters.price_max
    )


def check_common(k: int, exclude: Sequence[str], limits: LimitSettings) -> None:
    """Enforce the configured limits shared by search and recommendations."""
    if k > limits.max_k:
        raise invalid("k", f"must be between 1 and {limits.max_k}")
    if len(exclude) > limits.max_exclude:
        raise invalid("exclude", f"at most {limits.max_exclude} ids")


def item_out(scored: ScoredItem) -> ItemOut:
    """A scored item as returned to the caller."""
    item, explanation = scored.item, scored.explanation
    return ItemOut(
        id=item.id,
        title=item.title,
        category=item.category,
        brand=item.brand,
        price=item.price,
        score=round(scored.score, 6),
        explanation=ExplanationOut(
            method=explanation.method,
            summary=explanation.summary,
            contributions=[
                ContributionOut(source=c.source, score=round(c.score, 6), matched_terms=list(c.matched_terms))
                for c in explanation.contributions
            ],
        ),
    )


def model_out(engine: RetrievalEngine, ranked: Ranked | None = None) -> ModelOut:
    """Versions of the encoder, the index and (for history and user requests) the recommender behind a response."""
    enc = engine.encoder_info
    index = engine.index_info()
    served = ranked.recommender if ranked is not None else None
    return ModelOut(
        encoder=EncoderOut(**enc.identity()),
        index=IndexOut(kind=index["kind"], version=index["version"], size=index["size"]),
        recommender=RecommenderOut(str(served["kind"]), served["version"]) if served else None,
    )


def ranked_event(
    endpoint: str,
    request: SearchRequest | RecommendationRequest,
    response: SearchResponse | RecommendationResponse,
) -> AuditEvent:
    """The audit event of ranked results: each item once in the output, its explanation once under ``explanation``."""
    items = response.items
    return AuditEvent(
        endpoint=endpoint,
        request=msgspec.to_builtins(request),
        output=msgspec.to_builtins({**msgspec.structs.asdict(response), "items": [_unexplained(i) for i in items]}),
        retrieved=[{"id": i.id, "score": i.score} for i in items],
        explanation=[{"id": i.id, **msgspec.to_builtins(i.explanation)} for i in items],
        models=msgspec.to_builtins(response.model),
        index_version=response.model.index.version,
    )


def _unexplained(item: ItemOut) -> dict[str, Any]:
    fields = msgspec.structs.asdict(item)
    del fields["explanation"]
    return fields


async def run_search(services: Services, request: Request[Any, Any, Any], data: SearchRequest) -> SearchResponse:
    """Run and audit one search, as ``POST /v1/search`` does (the demo page calls it too).

    Args:
        services: The running service's parts.
        request: The HTTP request (its caller is recorded in the audit record).
        data: The validated request body.

    Returns:
        The response, with its ``audit_id``.
    """
    started = time.perf_counter()
    engine, limits = services.engine, services.settings.limits
    query = check_text("query", data.query, limits.max_query_chars)
    check_common(data.k, data.exclude, limits)
    request_id = current_request_id()
    ranked = await engine.search(
        query,
        k=data.k,
        filters=to_filters(data.filters),
        exclude=data.exclude,
        diversity=data.diversity,
        request_id=request_id,
    )
    response = SearchResponse(items=[item_out(s) for s in ranked.items], model=model_out(engine), request_id=request_id)
    event = ranked_event("/v1/search", data, response)
    response.audit_id = await audit_call(services, request, event, started, query_vector=ranked.query_vector)
    return response


async def run_recommendation(
    services: Services, request: Request[Any, Any, Any], data: RecommendationRequest
) -> RecommendationResponse:
    """Run and audit one recommendation, as ``POST /v1/recommendations`` does (the demo page calls it too).

    Args:
        services: The running service's parts.
        request: The HTTP request (its caller is recorded in the audit record).
        data: The validated request body.

    Returns:
        The response, with its ``audit_id``.
    """
    started = time.perf_counter()
    engine, limits = services.engine, services.settings.limits
    modes = {
        name: value
        for name, value in (
            ("query", data.query),
            ("item_id", data.item_id),
            ("history", data.history),
            ("user_id", data.user_id),
        )
        if value is not None
    }
    if len(modes) != 1:
        given = ", ".join(modes) or "none"
        raise invalid("query|item_id|history|user_id", f"give exactly one (got: {given})")
    check_common(data.k, data.exclude, limits)
    filters = to_filters(data.filters)
    request_id = current_request_id()
    k, exclude, diversity = data.k, data.exclude, data.diversity
    mode = next(iter(modes))
    ranked: Ranked
    if data.query is not None:
        query = check_text("query", data.query, limits.max_query_chars)
        ranked = await engine.search(
            query, k=k, filters=filters, exclude=exclude, diversity=diversity, request_id=request_id
        )
    elif data.item_id is not None:
        ranked = await engine.more_like_this(
            data.item_id, k=k, filters=filters, exclude=exclude, diversity=diversity, request_id=request_id
        )
    elif data.history is not None:
        if not data.history:
            raise invalid("history", "must list at least one item")
        if len(data.history) > limits.max_history:
            raise invalid("history", f"at most {limits.max_history} entries")
        history = [
            HistoryEntry(e.item_id, e.weight) if isinstance(e, HistoryEntryIn) else HistoryEntry(e)
            for e in data.history
        ]
        ranked = await engine.recommend_for_history(
            history, k=k, filters=filters, exclude=exclude, diversity=diversity, request_id=request_id
        )
    else:
        assert data.user_id is not None
        ranked = await engine.recommend_for_user(
            data.user_id, k=k, filters=filters, exclude=exclude, diversity=diversity, request_id=request_id
        )
    response = RecommendationResponse(
        items=[item_out(s) for s in ranked.items],
        mode=mode,
        model=model_out(engine, ranked),
        request_id=request_id,
        ignored_history=ranked.ignored_history,
    )
    event = ranked_event("/v1/recommendations", data, response)
    response.audit_id = await audit_call(services, request, event, started, query_vector=ranked.query_vector)
    return response


class RecommendationController(Controller):
    """Search and recommendations for the frontend."""

    path = "/"
    guards = [require_roles(*FRONTEND_ROLES)]  # noqa: RUF012 - Litestar reads this class attribute
    tags = ["recommendations"]  # noqa: RUF012

    @post(
        "/search",
        status_code=200,
        summary="Semantic search over items",
        responses=documented_errors(*CALLER_ERRORS, *BODY_ERRORS, 429, 503),
    )
    async def search(
        self, data: JSONBody[SearchRequest], services: NamedDependency[Services], request: Request[Any, Any, Any]
    ) -> SearchResponse:
        """Items best matching a free-text query, each with the fields that matched; the call is audited."""
        return await run_search(services, request, data)

    @post(
        "/recommendations",
        status_code=200,
        summary="Recommendations for a query, an item, a history or a user",
        responses=documented_errors(*CALLER_ERRORS, *BODY_ERRORS, 404, 429, 503),
    )
    async def recommend(
        self,
        data: JSONBody[RecommendationRequest],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> RecommendationResponse:
        """Items for a shopper; history items are never returned, and each item says what led to it (audited)."""
        return await run_recommendation(services, request, data)
