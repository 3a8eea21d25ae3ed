"""SQLite connections as Candor's stores open them: WAL journal, ``synchronous=FULL``, explicit transactions.

A commit then survives a crash or power loss, readers never block the writer, and one connection may be used
from several threads (each store serialises its own calls with a lock).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect(path: str | Path, *, timeout_s: float = 5.0, foreign_keys: bool = False) -> sqlite3.Connection:
    """Open (creating it and its folder if needed) a durable SQLite database in autocommit mode.

    Args:
        path: The database file.
        timeout_s: How long a write waits for another connection's lock before failing.
        foreign_keys: Enforce foreign keys (SQLite leaves them off by default).
    """
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(file, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    if foreign_keys:
        db.execute("PRAGMA foreign_keys=ON")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction: ``BEGIN IMMEDIATE`` (the write lock at once), committed on success, else rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
