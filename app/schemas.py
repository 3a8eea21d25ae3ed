"""Request and response bodies at the HTTP boundary (msgspec Structs; unknown fields are refused).

Static constraints live here; limits that come from the config (``max_k``, text lengths) are checked in
:mod:`app.limits`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

NonNegative = Annotated[float, Meta(ge=0)]
Fraction = Annotated[float, Meta(ge=0, le=1, description="0 keeps relevance order; 1 favours variety most")]
ItemId = Annotated[str, Meta(min_length=1, max_length=200)]
# Documents are read and deleted at /v1/documents/{id}, a path segment: an id with "/" could be created but never
# addressed again, so it is refused at creation.
DocumentId = Annotated[
    str, Meta(min_length=1, max_length=200, pattern=r"^[^/]+$", description="1 to 200 characters, no '/'")
]


class ErrorOut(Struct):
    """What went wrong."""

    code: Annotated[str, Meta(description="stable machine-readable code, e.g. validation_error, overloaded")]
    message: Annotated[str, Meta(description="what went wrong, safe to show")]
    details: Annotated[Any, Meta(description="structured facts, e.g. [{field, message}] for validation_error")] = None


class ErrorResponse(Struct):
    """The body of every error response."""

    error: ErrorOut
    request_id: str


class FiltersIn(Struct, forbid_unknown_fields=True):
    """Constraints every returned item must satisfy."""

    category: Annotated[str, Meta(min_length=1, max_length=500, description="category path prefix")] | None = None
    brand: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    price_min: NonNegative | None = None
    price_max: NonNegative | None = None


class UserIn(Struct, forbid_unknown_fields=True):
    """Who the shopper is, if the caller says; redacted from audit records and kept apart, erasable."""

    name: Annotated[str, Meta(max_length=200)] | None = None
    email: Annotated[str, Meta(max_length=320)] | None = None
    phone: Annotated[str, Meta(max_length=50)] | None = None


class ContextIn(Struct, forbid_unknown_fields=True):
    """Optional request context; ``user`` is a name or an object; neither is used for ranking.

    ``segment`` labels the traffic (e.g. ``mobile``, ``de-DE``, ``campaign-42``): drift checks report per segment.
    """

    user: Annotated[str, Meta(max_length=200)] | UserIn | None = None
    segment: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=64,
                pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
                description="traffic segment for drift reports: letters, digits, _ . : -",
            ),
        ]
        | None
    ) = None


class SearchRequest(Struct, forbid_unknown_fields=True):
    """``POST /v1/search``."""

    query: str
    k: Annotated[int, Meta(ge=1)] = 10
    filters: FiltersIn | None = None
    exclude: list[ItemId] = msgspec.field(default_factory=list)
    diversity: Fraction = 0.0
    context: ContextIn | None = None


# History weights are relative; the bounds keep every score they produce finite (float32 vectors overflow near 3e38,
# and a weight that rounds to zero made a 0/0).
HistoryWeight = Annotated[float, Meta(ge=1e-6, le=1e6, description="relative weight, 1e-6 to 1e6")]


class HistoryEntryIn(Struct, forbid_unknown_fields=True):
    """An item the shopper viewed or bought, with an optional weight."""

    item_id: ItemId
    weight: HistoryWeight = 1.0


class RecommendationRequest(Struct, forbid_unknown_fields=True):
    """``POST /v1/recommendations``: exactly one of ``query``, ``item_id``, ``history`` or ``user_id``."""

    query: str | None = None
    item_id: ItemId | None = None
    history: list[ItemId | HistoryEntryIn] | None = None
    user_id: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    k: Annotated[int, Meta(ge=1)] = 10
    filters: FiltersIn | None = None
    exclude: list[ItemId] = msgspec.field(default_factory=list)
    diversity: Fraction = 0.0
    context: ContextIn | None = None


class ContributionOut(Struct):
    """One reason behind a result."""

    source: str
    score: float
    matched_terms: list[str] = msgspec.field(default_factory=list)


class ExplanationOut(Struct):
    """Why an item was returned."""

    method: str
    summary: str
    contributions: list[ContributionOut]


class ItemOut(Struct):
    """A returned item."""

    id: str
    title: str
    category: str
    brand: str | None
    price: float | None
    score: float
    explanation: ExplanationOut


class EncoderOut(Struct):
    """The encoder that served the request."""

    name: str
    version: str
    device: str


class IndexOut(Struct):
    """The index that served the request."""

    kind: str
    version: str | None
    size: int


class RecommenderOut(Struct):
    """What scored a history or user recommendation."""

    kind: Annotated[
        str,
        Meta(
            description="a trained recommender (item-knn, ease, als, hybrid); content-similarity (no trained "
            "recommender, or none of the history items known to it); popularity (a shopper with no history)"
        ),
    ]
    version: Annotated[str | None, Meta(description="registry version of a trained recommender, recommender:<n>")]


class ModelOut(Struct):
    """Model and index versions behind a response."""

    encoder: EncoderOut
    index: IndexOut
    recommender: RecommenderOut | None = None


class SearchResponse(Struct):
    """Response of ``POST /v1/search``."""

    items: list[ItemOut]
    model: ModelOut
    request_id: str
    audit_id: str | None = None


class RecommendationResponse(Struct):
    """Response of ``POST /v1/recommendations``."""

    items: list[ItemOut]
    mode: str
    model: ModelOut
    request_id: str
    ignored_history: list[str] = msgspec.field(default_factory=list)
    audit_id: str | None = None


class ItemIn(Struct, forbid_unknown_fields=True):
    """Body of ``PUT /v1/items/{id}``; ``id``, if present, must equal the path's."""

    title: Annotated[str, Meta(min_length=1, max_length=1000)]
    category: Annotated[str, Meta(min_length=1, max_length=500)]
    text: str = ""
    id: ItemId | None = None
    brand: Annotated[str, Meta(max_length=200)] | None = None
    price: NonNegative | None = None
    attributes: dict[str, str | int | float | bool | None] = msgspec.field(default_factory=dict)
    provider: Annotated[str, Meta(max_length=200)] | None = None


class ItemRecordOut(Struct):
    """A stored catalog item."""

    id: str
    title: str
    text: str
    category: str
    brand: str | None
    price: float | None
    attributes: dict[str, Any]
    provider: str | None


class UpsertResponse(Struct):
    """Response of ``PUT /v1/items/{id}``."""

    item: ItemRecordOut
    created: bool
    request_id: str


class RebuildRequest(Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/index/rebuild``."""

    reembed: bool = False


FeedbackEvent = Literal["click", "view", "cart", "purchase", "like", "dislike", "rating", "report"]


class FeedbackRequest(Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/feedback``: what the shopper did with a response; ``report`` flags it for review."""

    audit_id: Annotated[str, Meta(min_length=1, max_length=100)]
    event: FeedbackEvent
    value: float | None = None
    item_id: ItemId | None = None
    note: Annotated[str, Meta(max_length=2000)] | None = None


class FeedbackResponse(Struct):
    """Response of ``POST /v1/feedback``."""

    accepted: bool
    target_id: str
    request_id: str
    audit_id: str | None = None


class ReviewRequest(Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/audit/records/{id}/review``: a human-oversight decision."""

    decision: Literal["approve", "reject", "escalate"]
    note: Annotated[str, Meta(max_length=4000)] = ""


BackendName = Literal["extractive", "local", "openai"]


class AnswerRequest(Struct, forbid_unknown_fields=True):
    """``POST /v1/answers``; ``k_context`` and ``max_tokens`` default to the config's."""

    question: str
    k_context: Annotated[int, Meta(ge=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    backend: BackendName | None = None
    stream: bool = False
    context: ContextIn | None = None


class CitationOut(Struct):
    """A passage the answer cites."""

    doc_id: str
    chunk_id: str
    title: str
    text: str
    score: float
    kind: str


class DisclosureOut(Struct):
    """Machine-readable AI-generated content notice."""

    ai_generated: bool
    model: dict[str, Any]
    notice: str


class FallbackOut(Struct):
    """Which backend's answer was replaced, and why."""

    from_backend: str = msgspec.field(name="from")
    reason: str = ""


class AnswerResponse(Struct):
    """Response of ``POST /v1/answers`` (also the ``final`` event of a stream)."""

    answer: str
    citations: list[CitationOut]
    confidence: float
    abstained: bool
    backend: str
    disclosure: DisclosureOut
    request_id: str
    span: str | None = None
    reason: str | None = None
    fallback: FallbackOut | None = None
    excluded_passages: list[str] = msgspec.field(default_factory=list)
    audit_id: str | None = None


class DocumentIn(Struct, forbid_unknown_fields=True):
    """A knowledge-base document."""

    id: DocumentId
    title: Annotated[str, Meta(min_length=1, max_length=1000)]
    text: Annotated[str, Meta(min_length=1)]
    source: Annotated[str, Meta(max_length=1000)] | None = None


class DocumentsRequest(Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/documents``: documents to add or replace."""

    documents: Annotated[list[DocumentIn], Meta(min_length=1)]


class DocumentChangeOut(Struct):
    """What happened to one document."""

    id: str
    created: bool
    chunks: int


class DocumentsResponse(Struct):
    """Response of ``POST /v1/documents``."""

    documents: list[DocumentChangeOut]
    knowledge: dict[str, Any]
    request_id: str


class DocumentOut(Struct):
    """A stored knowledge-base document."""

    id: str
    title: str
    text: str
    source: str | None
