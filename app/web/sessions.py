"""Sessions and CSRF tokens for the pages (``/console``, ``/demo``).

A person posts an API key once to a sign-in form. The server keeps the session (the key's id and role, a CSRF
token, the demo's browsing history) in a SQLite table of the state folder, shared by every process of
``candor serve --workers N`` (a browser's next request may reach another process), and hands the browser only a
random session id, in an ``HttpOnly``, ``SameSite=Strict`` cookie scoped to the page's path (``Secure`` over TLS);
the table holds the id's SHA-256, never the id. The key itself is never stored or sent back. Every request
re-checks that the key is still active, so revoking it ends its sessions. Sessions end on sign-out, after
:data:`IDLE_S` without a request and after :data:`MAX_AGE_S` in all.

Forms carry the session's CSRF token (a synchronizer token, compared in constant time). The sign-in form, which has
no session yet, uses a double-submit token: a random value in a short-lived ``HttpOnly`` cookie and in the form.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestar import Request, Response
from litestar.datastructures import Cookie

from app.auth import KeyStore, Principal, Role
from app.errors import ApiError
from retrieval.sqlite import connect, transaction

IDLE_S = 30 * 60
MAX_AGE_S = 12 * 3600
MAX_SESSIONS = 10_000
HISTORY_LENGTH = 8
CSRF_FIELD = "csrf_token"
SIGN_IN_CSRF_MAX_AGE_S = 3600


@dataclass(slots=True)
class Session:
    """One signed-in browser."""

    key_id: str
    role: Role
    portal: str
    csrf: str
    created: float
    seen: float
    history: list[str] = field(default_factory=list)
    digest: str = ""

    def remember(self, item_id: str) -> None:
        """Add an item the person opened to the demo's browsing history (most recent last, no repeats)."""
        if item_id in self.history:
            self.history.remove(item_id)
        self.history.append(item_id)
        del self.history[:-HISTORY_LENGTH]


def _digest(session_id: str) -> str:
    # Stored by digest, so the table holds nothing a cookie could be rebuilt from.
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS page_sessions (
    digest TEXT PRIMARY KEY, key_id TEXT NOT NULL, role TEXT NOT NULL, portal TEXT NOT NULL, csrf TEXT NOT NULL,
    created REAL NOT NULL, seen REAL NOT NULL, history TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS page_sessions_seen ON page_sessions (seen);
"""


class SessionStore:
    """Page sessions in SQLite, bounded in number (the least recently seen go first) and in time.

    Args:
        path: The database file (``None``: in memory, for one process and tests).
        max_sessions: Most sessions held at once.
        idle_s: Seconds without a request after which a session ends.
        max_age_s: Seconds after sign-in after which a session ends.
    """

    def __init__(
        self,
        path: Path | None = None,
        max_sessions: int = MAX_SESSIONS,
        idle_s: float = IDLE_S,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        if path is None:
            self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            self._db = connect(path)
            # Every page view moves ``seen``, so commits do not wait for the disk here: a crash may at worst sign a
            # browser out again, unlike the stores that keep records (they stay synchronous=FULL).
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self.max_age_s = max_age_s

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM page_sessions").fetchone()
        return int(count)

    def create(self, principal: Principal, portal: str) -> tuple[str, Session]:
        """Start a session for a verified key.

        Returns:
            The session id (for the cookie) and the session.
        """
        now = time.time()
        session_id = secrets.token_urlsafe(32)
        session = Session(
            principal.key_id, principal.role, portal, secrets.token_urlsafe(32), now, now, digest=_digest(session_id)
        )
        with self._lock, transaction(self._db):
            self._db.execute(
                "INSERT INTO page_sessions (digest, key_id, role, portal, csrf, created, seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session.digest, session.key_id, session.role, portal, session.csrf, now, now),
            )
            self._db.execute(
                "DELETE FROM page_sessions WHERE digest IN "
                "(SELECT digest FROM page_sessions ORDER BY seen DESC LIMIT -1 OFFSET ?)",
                (self.max_sessions,),
            )
        return session_id, session

    def get(self, session_id: str, portal: str) -> Session | None:
        """The live session behind a cookie value, for one portal; expired ones are dropped."""
        digest = _digest(session_id)
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT digest, key_id, role, portal, csrf, created, seen, history FROM page_sessions WHERE digest = ?",
                (digest,),
            ).fetchone()
            if row is None or row[3] != portal:
                return None
            if now - row[6] > self.idle_s or now - row[5] > self.max_age_s:
                self._db.execute("DELETE FROM page_sessions WHERE digest = ?", (digest,))
                return None
            self._db.execute("UPDATE page_sessions SET seen = ? WHERE digest = ?", (now, digest))
        history = json.loads(row[7])
        return Session(row[1], row[2], row[3], row[4], row[5], now, list(history), digest=digest)

    def save(self, session: Session) -> None:
        """Keep a session's browsing history (after :meth:`Session.remember`)."""
        with self._lock:
            self._db.execute(
                "UPDATE page_sessions SET history = ? WHERE digest = ?", (json.dumps(session.history), session.digest)
            )

    def end(self, session_id: str) -> None:
        """End a session (sign-out)."""
        with self._lock:
            self._db.execute("DELETE FROM page_sessions WHERE digest = ?", (_digest(session_id),))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


@dataclass(frozen=True, slots=True)
class Portal:
    """A set of pages behind one sign-in: its path, its session cookie and the roles it admits."""

    name: str
    path: str
    roles: tuple[Role, ...]

    @property
    def cookie(self) -> str:
        """The session cookie's name."""
        return f"candor_{self.name}_session"

    @property
    def sign_in_cookie(self) -> str:
        """The sign-in form's double-submit CSRF cookie."""
        return f"candor_{self.name}_signin"


def _secure(request: Request[Any, Any, Any]) -> bool:
    return request.url.scheme == "https"


def _cookie(key: str, portal: Portal, request: Request[Any, Any, Any], value: str, max_age: int | None) -> Cookie:
    """A page cookie: HttpOnly, SameSite=Strict, scoped to the portal's path, Secure over https."""
    return Cookie(
        key=key,
        value=value,
        path=portal.path,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        max_age=max_age,
    )


def session_cookie(portal: Portal, request: Request[Any, Any, Any], value: str, max_age: int | None) -> Cookie:
    """The session cookie (an empty value with ``max_age=0`` clears it)."""
    return _cookie(portal.cookie, portal, request, value, max_age)


def sign_in_cookie(portal: Portal, request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    """The sign-in form's CSRF cookie."""
    return _cookie(portal.sign_in_cookie, portal, request, value, max_age)


def new_token() -> str:
    """A fresh random token (CSRF)."""
    return secrets.token_urlsafe(32)


def current_session(request: Request[Any, Any, Any], portal: Portal, sessions: SessionStore) -> Session | None:
    """The request's live session for ``portal`` whose key is still active and admitted, or ``None``.

    On success the caller is set on the request as an API key would set it, so audit records name the key.
    """
    session_id = request.cookies.get(portal.cookie)
    if not session_id:
        return None
    session = sessions.get(session_id, portal.name)
    if session is None:
        return None
    keys: KeyStore = request.app.state.services.keys
    principal = keys.active(session.key_id)
    if principal is None or principal.role not in portal.roles:
        sessions.end(session_id)
        return None
    request.scope["candor_principal"] = principal  # type: ignore[typeddict-unknown-key]
    return session


def tokens_match(expected: str, given: object) -> bool:
    """Compare a CSRF token in constant time (missing or non-text tokens never match)."""
    return isinstance(given, str) and bool(expected) and hmac.compare_digest(expected.encode(), given.encode())


def csrf_refused() -> ApiError:
    """The 403 a form post without a valid CSRF token gets (the project's error shape)."""
    return ApiError(403, "csrf_failed", "the form's CSRF token is missing or wrong; reload the page and try again")


def check_csrf(session: Session, form: dict[str, Any]) -> None:
    """Refuse a form whose CSRF token is not the session's.

    Raises:
        ApiError: 403 ``csrf_failed``.
    """
    if not tokens_match(session.csrf, form.get(CSRF_FIELD)):
        raise csrf_refused()


def clear_cookies(portal: Portal, request: Request[Any, Any, Any], response: Response[Any]) -> None:
    """Expire the session cookie on a response (sign-out, a dead session)."""
    response.set_cookie(session_cookie(portal, request, "", 0))
