"""The query-string check agrees with the OpenAPI document about what each route accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pytest
from litestar import get
from litestar.di import Provide
from litestar.params import FromHeader, FromPath, FromQuery, QueryParameter
from litestar.routes import HTTPRoute

from app.app import create_app
from app.errors import ApiError
from app.hooks import declared_query_names, json_depth
from app.routes.audit import parse_cursor
from app.settings import load_settings


def test_each_documented_route_declares_the_query_parameters_its_document_lists(tmp_path: Path) -> None:
    app = create_app(load_settings(overrides={"paths": {"state_dir": str(tmp_path)}}), show_progress=False)
    document = app.openapi_schema.to_schema()
    checked = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            for method in handler.http_methods:
                operation = document["paths"][route.path_format][method.lower()]
                listed = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
                assert declared_query_names(handler) == listed, (method, route.path_format)
                checked += 1
    assert checked >= 20
    audit_records = document["paths"]["/v1/audit/records"]["get"]["parameters"]
    assert {"limit", "cursor", "endpoint"} <= {p["name"] for p in audit_records}  # the comparison is not vacuous


def test_aliases_headers_paths_and_dependencies_are_told_apart() -> None:
    @get(
        "/things/{thing_id:str}",
        dependencies={"plain_dependency": Provide(lambda: 1, sync_to_thread=False)},
        sync_to_thread=False,
    )
    def things(
        thing_id: FromPath[str],
        plain: int = 1,
        marked: FromQuery[str | None] = None,
        aliased: Annotated[str | None, QueryParameter(name="from")] = None,
        trace: FromHeader[str | None] = None,
        plain_dependency: int = 0,
    ) -> dict[str, str]:
        return {}

    assert declared_query_names(things) == {"plain", "marked", "from"}


@pytest.mark.parametrize(
    ("body", "depth_over_4"),
    [
        (b'{"query": "towel", "filters": {"category": "Baby"}}', False),
        (b'{"query": "[[[[[[[[[[{{{{{{"}', False),  # brackets inside strings do not nest
        (b'{"a": [[], [], [], [], [], [], []]}', False),  # many brackets, shallow
        (b'{"a": [[[[{"b": 1}]]]]}', True),
        (b"[" * 5000 + b"]" * 5000, True),  # deeper than the decoder can recurse
        (b"[[[[[[ not json", False),  # left to the route's decoder
    ],
)
def test_json_depth_finds_bodies_nested_too_deeply(body: bytes, depth_over_4: bool) -> None:
    assert (json_depth(body, 4) > 4) is depth_over_4


@pytest.mark.parametrize("cursor", ["²", "١٢", "𝟙", "0", "-3", "1e3", " 12", "1" * 19])
def test_cursors_take_ascii_digits_only(cursor: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_cursor(cursor)
    assert caught.value.status == 400


def test_a_cursor_of_ascii_digits_is_a_position() -> None:
    assert parse_cursor("42") == 42
    assert parse_cursor("") is None
