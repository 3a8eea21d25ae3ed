"""Admin routes: upsert and delete catalog items, rebuild the index."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from litestar import Controller, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody

from app.auth import require_roles
from app.errors import BODY_ERRORS, CALLER_ERRORS, ApiError, documented_errors, invalid
from app.observability import current_request_id
from app.schemas import ItemIn, ItemRecordOut, RebuildRequest, UpsertResponse
from app.state import Services
from retrieval.types import Item

logger = structlog.get_logger(__name__)


def record_out(item: Item) -> ItemRecordOut:
    """A catalog item as returned to admins."""
    return ItemRecordOut(
        id=item.id,
        title=item.title,
        text=item.text,
        category=item.category,
        brand=item.brand,
        price=item.price,
        attributes=dict(item.attributes),
        provider=item.provider,
    )


class ItemController(Controller):
    """Catalog changes, visible to searches as soon as the call returns."""

    path = "/"
    guards = [require_roles("admin")]  # noqa: RUF012 - Litestar reads this class attribute
    tags = ["admin"]  # noqa: RUF012

    @get("/items/{item_id:str}", summary="Read a catalog item", responses=documented_errors(*CALLER_ERRORS, 404, 503))
    async def read_item(self, item_id: FromPath[str], services: NamedDependency[Services]) -> ItemRecordOut:
        """The stored item."""
        item = services.engine.get_item(item_id)
        if item is None:
            raise ApiError(404, "item_not_found", f"unknown item id: {item_id}", {"item_ids": [item_id]})
        return record_out(item)

    @put(
        "/items/{item_id:str}",
        summary="Create or replace an item (embedded and searchable at once)",
        responses={
            201: ResponseSpec(UpsertResponse, description="The item is new"),
            **documented_errors(*CALLER_ERRORS, *BODY_ERRORS, 429, 503),
        },
    )
    async def upsert_item(
        self, item_id: FromPath[str], data: JSONBody[ItemIn], services: NamedDependency[Services]
    ) -> Response[UpsertResponse]:
        """Embed the item's text and store it; 201 when new, 200 when replaced."""
        engine, settings = services.engine, services.settings
        if not item_id.strip() or len(item_id) > 200:
            raise invalid("item_id", "must be 1 to 200 characters")
        if data.id is not None and data.id != item_id:
            raise invalid("id", "must match the id in the path")
        if len(data.text) > settings.limits.max_item_text_chars:
            raise invalid("text", f"longer than {settings.limits.max_item_text_chars} characters")
        if not data.title.strip() or not data.category.strip():
            raise invalid("title" if not data.title.strip() else "category", "must not be blank")
        item = Item(
            id=item_id,
            title=data.title.strip(),
            text=data.text,
            category=data.category.strip(),
            brand=data.brand or None,
            price=data.price,
            attributes=dict(data.attributes),
            provider=data.provider or data.brand or None,
        )
        request_id = current_request_id()
        # Decided by the write itself: checking before it let every concurrent create of one new id answer 201.
        created = await engine.upsert(item, request_id)
        logger.info("item_upserted", item_id=item_id, created=created)
        body = UpsertResponse(item=record_out(item), created=created, request_id=request_id)
        return Response(body, status_code=201 if created else 200)

    @delete(
        "/items/{item_id:str}",
        status_code=204,
        summary="Delete an item (gone from results at once)",
        responses=documented_errors(*CALLER_ERRORS, 404, 503),
    )
    async def delete_item(self, item_id: FromPath[str], services: NamedDependency[Services]) -> None:
        """Remove the item from the catalog and the index."""
        await services.engine.delete(item_id)
        logger.info("item_deleted", item_id=item_id)

    @post(
        "/index/rebuild",
        status_code=202,
        summary="Rebuild the index in the background and swap it in",
        responses=documented_errors(*CALLER_ERRORS, *BODY_ERRORS, 409, 503),
    )
    async def rebuild(
        self, services: NamedDependency[Services], state: State, data: JSONBody[RebuildRequest | None] = None
    ) -> dict[str, Any]:
        """Start a rebuild; ``GET /v1/index/rebuild`` reports its progress. 409 if one is running."""
        engine = services.engine
        if engine.rebuild_state.get("state") == "running":
            raise ApiError(409, "rebuild_running", "an index rebuild is already running")
        reembed = data.reembed if data else False
        task = asyncio.create_task(engine.rebuild(reembed=reembed))
        state.background_tasks.add(task)
        task.add_done_callback(_finish_rebuild(state))
        engine.rebuild_state = {"state": "running", "reembed": reembed}
        return {"state": "running", "reembed": reembed, "request_id": current_request_id()}

    @get("/index/rebuild", summary="State of the last index rebuild", responses=documented_errors(*CALLER_ERRORS))
    async def rebuild_status(self, services: NamedDependency[Services]) -> dict[str, Any]:
        """``idle``, ``running``, ``done`` (with the new index) or ``failed``."""
        return dict(services.engine.rebuild_state)


def _finish_rebuild(state: State) -> Any:
    def done(task: asyncio.Task[Any]) -> None:
        state.background_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("index_rebuild_failed", error=repr(task.exception()))

    return done
