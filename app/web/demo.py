"""``/demo``: search, "more like this", a history-based strip and grounded answers, for a product team to try.

Frontend and admin keys sign in, as ``/v1/search``, ``/v1/recommendations`` and ``/v1/answers`` accept. Each
search, recommendation and answer runs through the same code as those routes and is audited under their names with
the signed-in key as the caller. The items a person opens with "more like this" form the session's history, which
feeds the recommendation strip.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency

from app.errors import ApiError
from app.routes.answers import run_answer
from app.routes.recommend import FRONTEND_ROLES, run_recommendation, run_search
from app.schemas import AnswerRequest, RecommendationRequest, RecommendationResponse, SearchRequest
from app.state import Services
from app.web.pages import (
    posted_form,
    render,
    session_or_none,
    sessions_of,
    sign_in,
    sign_in_page,
    sign_out,
    to_sign_in,
)
from app.web.sessions import Portal, Session
from retrieval.errors import InvalidQueryError, UnknownItemError

DEMO = Portal("demo", "/demo", FRONTEND_ROLES)
TITLE = "demo"
RESULTS = 8
STRIP = 6
# Mistakes a person can make in a form: shown on the page, beside the form, with the status the API would give.
_SHOWN = (ApiError, InvalidQueryError, UnknownItemError, msgspec.ValidationError)


def _message(exc: Exception) -> tuple[str, int]:
    if isinstance(exc, ApiError):
        return exc.message, exc.status
    if isinstance(exc, UnknownItemError):
        return "That item is no longer in the catalog.", 404
    return str(exc), 400


async def _strip(
    services: Services, request: Request[Any, Any, Any], session: Session
) -> RecommendationResponse | None:
    """Recommendations from the items this session opened, or ``None`` before it opened any."""
    if not session.history:
        return None
    data = RecommendationRequest(history=list(session.history), k=STRIP)
    try:
        return await run_recommendation(services, request, data)
    except UnknownItemError:
        session.history.clear()  # an item left the catalog: start the history again
        return None


async def _page(
    services: Services, request: Request[Any, Any, Any], session: Session, status: int = 200, **context: Any
) -> Response[str]:
    return render(
        "demo.html",
        status,
        portal=DEMO,
        title=TITLE,
        session=session,
        nav=(),
        strip=await _strip(services, request, session),
        **context,
    )


class DemoController(Controller):
    """The demo page."""

    path = "/demo"
    include_in_schema = False

    @get("/sign-in", sync_to_thread=False)
    def sign_in_form(self, request: Request[Any, Any, Any]) -> Response[str]:
        """The sign-in form."""
        return sign_in_page(request, DEMO, TITLE)

    @post("/sign-in")
    async def sign_in(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Check the posted key and start a session (frontend or admin keys only)."""
        return await sign_in(request, DEMO, services, TITLE, "")

    @post("/sign-out")
    async def sign_out(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """End the session."""
        return await sign_out(request, DEMO, services)

    @get("/")
    async def home(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """The search and question boxes, and the strip once the session has a history."""
        session = session_or_none(request, DEMO, services)
        if session is None:
            return to_sign_in(DEMO)
        return await _page(services, request, session)

    @post("/search")
    async def search(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Search results with their explanations."""
        session = session_or_none(request, DEMO, services)
        if session is None:
            return to_sign_in(DEMO)
        form = await posted_form(request, session)
        query = str(form.get("query") or "")
        try:
            results = await run_search(services, request, SearchRequest(query=query, k=RESULTS))
        except _SHOWN as exc:
            message, status = _message(exc)
            return await _page(services, request, session, status, query=query, error=message)
        return await _page(services, request, session, query=query, results=results, heading=f"Results for “{query}”")

    @post("/similar")
    async def similar(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Items like the one chosen ("more like this"); the item joins the session's history."""
        session = session_or_none(request, DEMO, services)
        if session is None:
            return to_sign_in(DEMO)
        form = await posted_form(request, session)
        item_id = str(form.get("item_id") or "")
        title = str(form.get("title") or item_id)
        try:
            data = msgspec.convert({"item_id": item_id, "k": RESULTS}, RecommendationRequest)
            results = await run_recommendation(services, request, data)
        except _SHOWN as exc:
            message, status = _message(exc)
            return await _page(services, request, session, status, error=message)
        session.remember(item_id)
        sessions_of(services).save(session)
        return await _page(services, request, session, results=results, heading=f"More like “{title}”")

    @post("/ask")
    async def ask(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """A grounded answer with its citations and the AI-generated content notice."""
        session = session_or_none(request, DEMO, services)
        if session is None:
            return to_sign_in(DEMO)
        form = await posted_form(request, session)
        question = str(form.get("question") or "")
        try:
            answer = await run_answer(services, request, AnswerRequest(question=question))
        except _SHOWN as exc:
            message, status = _message(exc)
            return await _page(services, request, session, status, question=question, error=message)
        return await _page(services, request, session, question=question, answer=answer)
