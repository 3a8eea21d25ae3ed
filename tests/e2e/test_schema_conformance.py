"""The running service against its own OpenAPI document (``/schema/openapi.json``).

Schemathesis generates requests for every operation from the document, valid and invalid ones, and sends each
with a frontend, an admin and a reviewer key to a server of this module's own (the generated upserts and deletes
change its catalog, not the shared e2e server's). Every answer must keep the document's word: no 5xx, a
documented status code, content type and headers, and a body that matches the documented schema (errors
included); a request the document forbids gets a 4xx. The index rebuild is left out: each call would rebuild the
demo index.

By default each operation gets 6 examples per mode from a fixed seed, so the run is the same every time.
``CANDOR_TEST_CONTRACT_EXAMPLES=N`` asks for N examples from a fresh random seed instead: a deeper search that
finds cases the fixed one never reaches (an unknown query parameter with an empty name was found that way).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.auth import KeyStore
from tests.e2e.conftest import Server, started_server, tally

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # a request the document forbids must not be accepted
]
ERROR_REF = "#/components/schemas/ErrorResponse"
DEEPER = os.environ.get("CANDOR_TEST_CONTRACT_EXAMPLES")


@pytest.fixture(scope="module")
def contract_server(built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose state this module may change.

    The local answer model is off: a generated request may ask it for hundreds of tokens, which takes minutes on
    two cores (its own tests cover it), and naming it then gets a documented 400.
    """
    workdir = tmp_path_factory.mktemp("contract")
    with started_server(built_state, workdir, {"CANDOR_GENERATOR__LOCAL__ENABLED": "false"}) as running:
        yield running


@pytest.fixture(scope="module")
def role_keys(contract_server: Server) -> dict[str, str]:
    store = KeyStore(contract_server.state_dir / "candor.sqlite")
    try:
        reviewer = store.create("reviewer", label="contract")
    finally:
        store.close()
    return {"frontend": contract_server.frontend_key, "admin": contract_server.admin_key, "reviewer": reviewer}


@pytest.fixture(scope="module")
def openapi(contract_server: Server) -> dict[str, Any]:
    response = httpx.get(f"{contract_server.base_url}/schema/openapi.json", timeout=30)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture(scope="module")
def api_schema(contract_server: Server) -> Any:
    loaded = schemathesis.openapi.from_url(f"{contract_server.base_url}/schema/openapi.json")
    return loaded.exclude(method="POST", path="/v1/index/rebuild")


def test_every_operation_keeps_to_its_documented_contract(api_schema: Any, role_keys: dict[str, str]) -> None:
    """Schema-valid and schema-violating requests alike: the answer is always one the document describes."""
    failures: list[str] = []
    sent = 0
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=int(DEEPER) if DEEPER else 6,
                deadline=None,
                derandomize=not DEEPER,
                database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is an HTTP call
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case: Any) -> None:
                # An empty object has no form in a query string: it goes out as an empty value, which is a valid
                # string, so the "schema-violating" request is a valid one on the wire.
                assume(not any(value == {} for value in (case.query or {}).values()))
                nonlocal sent
                for key in role_keys.values():
                    sent += 1
                    # A PDF report takes seconds, more on a busy machine: a slow answer is not a contract breach.
                    case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS, timeout=120)

            try:
                exercise()
            except Unsatisfiable:  # nothing to break: the operation takes no parameters and no body
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failures, not just the first
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    tally("contract", requests=sent, operations=len(operations), failed_operations=len(failures))
    assert not failures, "\n\n".join(failures)


def test_every_v1_operation_documents_its_errors_in_the_error_shape(openapi: dict[str, Any]) -> None:
    for path, item in openapi["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in item.items():
            responses = operation["responses"]
            for status in ("400", "401", "403"):
                assert status in responses, (method, path, status)
            for status, response in responses.items():
                if int(status) >= 400:
                    schema_ref = response["content"]["application/json"]["schema"]
                    assert schema_ref == {"$ref": ERROR_REF}, (method, path, status)


def test_the_document_closes_bodies_accepts_integers_and_describes_the_answer_stream(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    for name in ("SearchRequest", "RecommendationRequest", "AnswerRequest", "ItemIn", "FiltersIn"):
        assert components[name]["additionalProperties"] is False, name
    assert "additionalProperties" not in components["SearchResponse"]  # responses may grow fields
    answered = openapi["paths"]["/v1/answers"]["post"]["responses"]["200"]["content"]
    assert set(answered) == {"application/json", "text/event-stream"}
    assert answered["text/event-stream"]["schema"]["properties"]["event"]["enum"] == ["delta", "final", "error"]
    attribute = components["ItemIn"]["properties"]["attributes"]["additionalProperties"]
    assert [member["type"] for member in attribute["oneOf"]] == ["string", "number", "boolean", "null"]
