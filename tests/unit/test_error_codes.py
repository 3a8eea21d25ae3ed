"""docs/api.md's error table lists every error code the service can send."""

from __future__ import annotations

import re

from tests.conftest import PROJECT_ROOT

# Where codes are written: ApiError(status, "code", ...), error_response(status, "code", ...), a domain error's
# ``code = "..."``, the HTTP fallbacks' table, and the slow-client 408 the server writes itself.
PATTERNS = [
    re.compile(r"ApiError\(\s*\d{3},\s*\"([a-z_]+)\""),
    re.compile(r"error_response\(\s*(?:\d{3}|exc\.status),\s*\"([a-z_]+)\""),
    re.compile(r"^\s+code = \"([a-z_]+)\"", re.MULTILINE),
    re.compile(r"\d{3}: \"([a-z_]+)\""),
    re.compile(r"\"code\":\"([a-z_]+)\""),
]


def sent_codes() -> set[str]:
    codes: set[str] = set()
    for folder in ("app", "retrieval"):
        for path in (PROJECT_ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for pattern in PATTERNS:
                codes.update(pattern.findall(text))
    codes.add("bad_request")  # the fallback of _HTTP_CODES.get
    return codes


def test_every_error_code_is_documented() -> None:
    codes = sent_codes()
    assert {"validation_error", "invalid_json", "audit_unavailable", "upstream_timeout", "request_timeout"} <= codes
    table = (PROJECT_ROOT / "docs" / "api.md").read_text(encoding="utf-8").split("## Errors", 1)[1]
    missing = sorted(code for code in codes if f"`{code}`" not in table)
    assert not missing, f"error codes missing from docs/api.md: {missing}"
