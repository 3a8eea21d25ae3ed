"""Checks that run before a route's handler (Litestar ``before_request`` hooks), after routing and the guards.

Bodies already refuse unknown fields (their structs forbid them); :func:`reject_unknown_query` does the same for the
query string, so a misspelt filter such as ``/v1/audit/records?endpont=/v1/search`` gets a 400 that names it
instead of an unfiltered 200 that looks like an answer to the question asked.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.constants import RESERVED_KWARGS
from litestar.enums import ParamType
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
from litestar.params import BodyKwarg, DependencyKwarg, ParameterKwarg

from app.errors import ApiError, invalid
from app.state import provide_services

# Handler function -> the query parameters it declares. Keyed by the function: Litestar may hand the hook a copy of
# the route handler, never a different function.
_DECLARED: dict[Any, frozenset[str]] = {}


def declared_query_names(handler: BaseRouteHandler) -> frozenset[str]:
    """The query parameter names ``handler`` declares, as Litestar reads its signature.

    A parameter is a query parameter unless it is one of Litestar's reserved names (``request``, ``data``...), a
    dependency, or marked as a path parameter, header, cookie or body; a name given in its marker
    (``QueryParameter(name="from")``) wins over the parameter's own.
    """
    dependencies = handler.resolve_dependencies()
    names: set[str] = set()
    for name, field in handler.parsed_fn_signature.parameters.items():
        if name in RESERVED_KWARGS or name in dependencies:
            continue
        marker = field.kwarg_definition
        if isinstance(marker, ParameterKwarg):
            if marker.param_type is ParamType.QUERY:
                names.add(marker.name or name)
        elif not isinstance(marker, BodyKwarg | DependencyKwarg):
            names.add(name)  # a plain parameter is a query parameter
    return frozenset(names)


async def reject_unknown_query(request: Request[Any, Any, Any]) -> None:
    """Refuse query parameters the route does not declare with 400 ``validation_error`` naming each one.

    Routes left out of the OpenAPI document (the document's own pages) are not checked.
    """
    if not request.scope.get("query_string"):
        return  # the common case, and the hot path's: nothing to parse
    handler = request.route_handler
    if not handler.resolve_include_in_schema():
        return
    allowed = _DECLARED.get(handler.fn)
    if allowed is None:
        allowed = _DECLARED[handler.fn] = declared_query_names(handler)
    unknown = sorted({name for name in request.query_params if name not in allowed})
    if not unknown:
        return
    accepted = ", ".join(sorted(allowed)) if allowed else "none"
    message = f"not a query parameter of this route (accepted: {accepted})"
    raise ApiError(
        400,
        "validation_error",
        f"unknown query parameter(s): {', '.join(repr(name) for name in unknown)}",
        [{"field": name, "message": message, "source": "query"} for name in unknown],
    )


def json_depth(body: bytes, limit: int) -> int:
    """How deeply ``body``'s arrays and objects nest, counted exactly only when it could exceed ``limit``.

    The JSON decoder recurses once per level and ends in a ``RecursionError`` (a 500) long before the body size
    limit, so depth is checked before the route decodes the body. A body with no more brackets than ``limit``
    cannot nest deeper, and costs two byte counts; others are decoded untyped and walked without recursion.
    Malformed JSON counts as depth 0 and is left to the route's decoder (``invalid_json``).

    Returns:
        A depth that is exact whenever it exceeds ``limit`` (``limit + 1`` for a body too deep to decode).
    """
    brackets = body.count(b"[") + body.count(b"{")
    if brackets <= limit:
        return brackets
    try:
        value = msgspec.json.decode(body)
    except RecursionError:
        return limit + 1
    except msgspec.DecodeError:
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """Refuse bodies that are not JSON with 415, a missing body the route needs with 400.

    Bodies nested deeper than ``limits.max_json_depth`` get 400 ``invalid_json`` before the route decodes them.
    """
    if request.method not in {"POST", "PUT", "PATCH"}:
        return
    content_type = request.headers.get("content-type", "")
    has_body = request.headers.get("content-length", "0") not in {"", "0"} or "transfer-encoding" in request.headers
    if has_body and content_type.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(status_code=415, detail="send the body as application/json")
    if not has_body:
        # Litestar would report a missing body as a validation error whose message is only "'data'".
        body = request.route_handler.parsed_fn_signature.parameters.get("data")
        if body is not None and not body.is_optional:
            raise invalid("data", "required: send a JSON object", source="body")
        return
    limit = provide_services(request.app.state).settings.limits.max_json_depth
    depth = json_depth(await request.body(), limit)
    if depth > limit:
        raise ApiError(
            400,
            "invalid_json",
            f"request body nests arrays and objects deeper than {limit} levels",
            {"max_depth": limit},
        )


async def check_api_request(request: Request[Any, Any, Any]) -> None:
    """The ``/v1`` router's hook: unknown query parameters (400), then a body that is not JSON (415)."""
    await reject_unknown_query(request)
    await require_json_body(request)
