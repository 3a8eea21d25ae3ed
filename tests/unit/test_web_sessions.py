"""Page sessions, header policies and attribution shading, without a server."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.auth import Principal
from app.web.console import highlighted_tokens
from app.web.headers import API_POLICY, PAGE_POLICY, REPORT_POLICY, policy_for
from app.web.sessions import HISTORY_LENGTH, Portal, SessionStore, session_cookie, tokens_match

REVIEWER = Principal(key_id="abcd1234", role="reviewer")


def test_sessions_expire_when_idle_or_old_and_belong_to_one_portal(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("app.web.sessions.time.time", lambda: now[0])
    store = SessionStore(idle_s=60, max_age_s=300)
    session_id, session = store.create(REVIEWER, "console")
    assert store.get(session_id, "demo") is None
    assert store.get(session_id, "console") == session
    for _ in range(9):
        now[0] += 30
        seen = store.get(session_id, "console")  # each request keeps it alive
        assert seen is not None
        assert (seen.key_id, seen.csrf, seen.seen) == (session.key_id, session.csrf, now[0])
    now[0] += 40  # past the absolute age, though the gap is short
    assert store.get(session_id, "console") is None
    other, _ = store.create(REVIEWER, "console")
    now[0] += 61
    assert store.get(other, "console") is None
    assert len(store) == 0


def test_sign_out_and_the_cap_end_sessions() -> None:
    store = SessionStore(max_sessions=2)
    first, _ = store.create(REVIEWER, "console")
    second, _ = store.create(REVIEWER, "console")
    third, _ = store.create(REVIEWER, "console")
    assert store.get(first, "console") is None  # the oldest went first
    store.end(second)
    assert store.get(second, "console") is None
    assert store.get(third, "console") is not None
    assert store.get("not-a-session", "console") is None


def test_sessions_are_shared_through_their_database_file(tmp_path: Path) -> None:
    first, second = SessionStore(tmp_path / "sessions.sqlite"), SessionStore(tmp_path / "sessions.sqlite")
    session_id, session = first.create(REVIEWER, "demo")  # as two worker processes would
    session.remember("item-1")
    first.save(session)
    seen = second.get(session_id, "demo")
    assert seen is not None
    assert (seen.key_id, seen.role, seen.csrf, seen.history) == ("abcd1234", "reviewer", session.csrf, ["item-1"])
    raw = (tmp_path / "sessions.sqlite").read_bytes()
    assert session_id.encode() not in raw  # only its digest is kept
    second.end(session_id)
    assert first.get(session_id, "demo") is None
    first.close()
    second.close()


def test_history_keeps_the_latest_items_once() -> None:
    _, session = SessionStore().create(Principal("k", "frontend"), "demo")
    for n in range(HISTORY_LENGTH + 3):
        session.remember(f"item-{n}")
    session.remember("item-5")
    assert len(session.history) == HISTORY_LENGTH
    assert session.history[-1] == "item-5"
    assert session.history.count("item-5") == 1


def test_csrf_tokens_must_match_exactly() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd")
    assert not tokens_match("abc", None)
    assert not tokens_match("", "")
    assert not tokens_match("abc", ["abc"])


@pytest.mark.parametrize(
    ("path", "policy"),
    [
        ("/console/records", PAGE_POLICY),
        ("/demo", PAGE_POLICY),
        ("/static/candor.css", PAGE_POLICY),
        ("/console/reports/compliance.html", REPORT_POLICY),
        ("/v1/reports/compliance", REPORT_POLICY),
        ("/v1/search", API_POLICY),
        ("/demonstration", API_POLICY),
        ("/schema/openapi.json", API_POLICY),
        ("/schema/swagger", None),
    ],
)
def test_each_path_gets_its_policy(path: str, policy: str | None) -> None:
    assert policy_for(path) == policy
    if policy is not None:
        assert "frame-ancestors 'none'" in policy
        assert "script-src 'unsafe-inline'" not in policy


def test_attribution_shades_scale_with_the_largest_and_join_word_pieces() -> None:
    tokens = [
        {"token": "<script>", "attribution": 0.5},
        {"token": "tow", "attribution": -0.1},
        {"token": "##el", "attribution": 0.05},
    ]
    shaded = highlighted_tokens(tokens)
    assert [t["shade"] for t in shaded] == ["pos-4", "neg-1", "pos-1"]
    assert shaded[0]["text"] == "<script>"  # escaped by the template, not here
    assert shaded[2] == {"text": "el", "joined": True, "value": 0.05, "shade": "pos-1"}
    assert highlighted_tokens([]) == []


@pytest.mark.parametrize(("scheme", "secure"), [("https", True), ("http", False)])
def test_session_cookie_is_secure_over_tls(scheme: str, secure: bool) -> None:
    request: Any = SimpleNamespace(url=SimpleNamespace(scheme=scheme))
    cookie = session_cookie(Portal("console", "/console", ("reviewer",)), request, "sid", None)
    assert cookie.secure is secure
    assert cookie.httponly is True
    assert cookie.samesite == "strict"
    assert cookie.path == "/console"
