"""API keys with roles, stored hashed in SQLite, and the guards that check them on every ``/v1`` route.

A key looks like ``cnd_<key id>_<secret>``. Only the key id, the SHA-256 of the whole key and the role are
stored; the secret has 256 bits of entropy, so a fast hash is enough (no password stretching needed). Keys are
looked up on every request, so a key created while the service runs works at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from retrieval.sqlite import connect

Role = Literal["frontend", "admin", "reviewer"]
ROLES: tuple[Role, ...] = get_args(Role)
KEY_PREFIX = "cnd"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a valid key."""

    key_id: str
    role: Role


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """API keys in a SQLite file.

    Args:
        path: Database file (created if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = connect(self.path, timeout_s=10)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def create(self, role: Role, label: str = "") -> str:
        """Create a key and return it in clear text (the only time it is visible).

        Raises:
            ValueError: Unknown role.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys(key_id, key_hash, role, label, created_at) VALUES(?, ?, ?, ?, ?)",
                (key_id, _hash(key), role, label, time.time()),
            )
        return key

    def verify(self, key: str) -> Principal | None:
        """Return the principal for a valid, unrevoked key, or ``None``."""
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT key_hash, role FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", (parts[1],)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash(key)):
            return None
        role: Role = row[1]
        return Principal(key_id=parts[1], role=role)

    def active(self, key_id: str) -> Principal | None:
        """The principal of an unrevoked key by its id (a signed-in page session checks its key on every request)."""
        with self._lock:
            row = self._db.execute(
                "SELECT role FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", (key_id,)
            ).fetchone()
        if row is None:
            return None
        role: Role = row[0]
        return Principal(key_id=key_id, role=role)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key by id; returns whether one was revoked."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
        return cur.rowcount > 0

    def count(self) -> int:
        """Number of active keys."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])

    def list(self) -> list[dict[str, object]]:
        """Active keys' ids, roles, labels and creation times (never the keys)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, role, label, created_at FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at"
            ).fetchall()
        return [{"key_id": r[0], "role": r[1], "label": r[2], "created_at": r[3]} for r in rows]


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if present."""
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """Resolve the caller of a request from its bearer key.

    Raises:
        NotAuthorizedException: No key, or an unknown or revoked one (401).
    """
    cached = connection.scope.get("candor_principal")
    if isinstance(cached, Principal):
        return cached
    token = bearer_token(connection)
    if token is None:
        raise NotAuthorizedException("missing API key: send 'Authorization: Bearer <key>'")
    keys: KeyStore = connection.app.state.services.keys
    principal = keys.verify(token)
    if principal is None:
        raise NotAuthorizedException("invalid or revoked API key")
    connection.scope["candor_principal"] = principal  # type: ignore[typeddict-unknown-key]
    return principal


def require_roles(*roles: Role) -> Guard:
    """A Litestar guard admitting callers whose key has one of ``roles``.

    Returns:
        The guard callable.
    """
    allowed = frozenset(roles)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = authenticate(connection)
        if principal.role not in allowed:
            raise PermissionDeniedException(
                f"role '{principal.role}' may not call this route (needs: {', '.join(sorted(allowed))})"
            )

    return guard


# Roles that run or oversee the deployment, and so may see its internals: the remote model's address, file paths.
OPERATOR_ROLES: frozenset[str] = frozenset({"admin", "reviewer"})
# Model description fields that name internals (an endpoint URL can carry hosts, ports, even credentials).
INTERNAL_MODEL_FIELDS = ("endpoint",)


def sees_internals(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether the caller's role may see deployment internals (frontend keys may not)."""
    principal = connection.scope.get("candor_principal")
    return isinstance(principal, Principal) and principal.role in OPERATOR_ROLES


def model_for_caller(model: Mapping[str, Any], internals: bool) -> dict[str, Any]:
    """A model description as a caller may see it: without :data:`INTERNAL_MODEL_FIELDS` unless ``internals``."""
    return dict(model) if internals else {k: v for k, v in model.items() if k not in INTERNAL_MODEL_FIELDS}
