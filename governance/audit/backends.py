"""Storage backends of the audit log: SQLite (embedded default) and PostgreSQL (several replicas), one interface.

Every append runs in one transaction that reads the chain head under a write lock (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL ``SELECT ... FOR UPDATE``), chains the batch onto it, inserts the records, their personal data and any
due checkpoint, and moves the head. Writers in several processes therefore still build one chain.

Calls are blocking; the log runs them in worker threads. One backend object holds one connection and is used by
one thread at a time (the log keeps one for its writer and one for readers).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from governance.audit.chain import GENESIS_HASH, Row, canonical_json, sha256_hex
from governance.audit.config import AuditConfig
from governance.audit.errors import AuditStoreError
from governance.audit.store import AuditBackend, Checkpoint, Pending, RecordQuery, Signer, Stored


def open_backend(config: AuditConfig) -> AuditBackend:
    """Open the configured store.

    Raises:
        AuditStoreError: It cannot be opened.
    """
    if config.backend == "postgres":
        return PostgresBackend(config.dsn, lock_timeout_ms=config.busy_timeout_ms)
    return SqliteBackend(config.path, busy_timeout_ms=config.busy_timeout_ms)


_COLUMNS = "seq, id, ts, kind, endpoint, review_state, prev_hash, hash, body"

_DDL = [
    """CREATE TABLE IF NOT EXISTS audit_records (
        seq BIGINT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        ts DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        target_id TEXT,
        review_state TEXT NOT NULL,
        latency_ms DOUBLE PRECISION,
        abstained INTEGER NOT NULL DEFAULT 0,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        body TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS audit_records_ts ON audit_records(ts)",
    "CREATE INDEX IF NOT EXISTS audit_records_review ON audit_records(review_state, seq)",
    "CREATE INDEX IF NOT EXISTS audit_records_target ON audit_records(target_id)",
    """CREATE TABLE IF NOT EXISTS audit_personal (
        record_id TEXT PRIMARY KEY,
        data TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq BIGINT PRIMARY KEY,
        hash TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_head (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        seq BIGINT NOT NULL,
        id TEXT,
        hash TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_explanations (
        record_id TEXT NOT NULL,
        method TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (record_id, method)
    )""",
]


class _SqlBackend:
    """SQL shared by both backends, written with ``?`` placeholders."""

    placeholder = "?"

    def __init__(self) -> None:
        self._conn: Any = None

    # Subclasses: run one statement / a transaction.
    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(self._conn.execute(self._q(sql), tuple(params)).fetchall())
        except Exception as exc:
            raise self._wrap(exc) from exc

    def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._fetchall(sql, params)
        return rows[0] if rows else None

    def _wrap(self, exc: Exception) -> AuditStoreError:
        return exc if isinstance(exc, AuditStoreError) else AuditStoreError(f"{type(exc).__name__}: {exc}")

    def _begin_write(self) -> None:
        raise NotImplementedError

    def _lock_head(self) -> Any:
        raise NotImplementedError

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def _rollback(self) -> None:
        with contextlib.suppress(Exception):  # the original error is what matters
            self._conn.execute("ROLLBACK")

    def _write(self, fn: Callable[[], Any]) -> Any:
        try:
            self._begin_write()
            result = fn()
            self._commit()
            return result
        except Exception as exc:
            self._rollback()
            raise self._wrap(exc) from exc

    def append(self, batch: Sequence[Pending], checkpoint_every: int, signer: Signer | None) -> list[Stored]:
        """Chain and commit a batch atomically; returns the stored records in order."""

        def run() -> list[Stored]:
            head = self._lock_head()
            seq, last_hash = (int(head[0]), str(head[2])) if head else (0, GENESIS_HASH)
            out: list[Stored] = []
            cur = self._conn
            for pending in batch:
                seq += 1
                body = {**pending.body, "seq": seq, "prev_hash": last_hash}
                raw = canonical_json(body)
                digest = sha256_hex(raw)  # the hash seals these very bytes: they are stored as they are
                text = raw.decode()
                review = body.get("review") or {}
                cur.execute(
                    self._q(
                        "INSERT INTO audit_records(seq, id, ts, kind, endpoint, target_id, review_state, latency_ms,"
                        " abstained, prev_hash, hash, body) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (
                        seq,
                        body["id"],
                        float(body["ts_epoch"]),
                        body["kind"],
                        body.get("endpoint") or "",
                        body.get("target_id"),
                        review.get("state", "not_required"),
                        body.get("latency_ms"),
                        1 if body.get("abstained") else 0,
                        last_hash,
                        digest,
                        text,
                    ),
                )
                if pending.personal is not None:
                    cur.execute(
                        self._q("INSERT INTO audit_personal(record_id, data) VALUES(?, ?)"),
                        (body["id"], pending.personal),
                    )
                if pending.review_update is not None:
                    target, state = pending.review_update
                    cur.execute(self._q("UPDATE audit_records SET review_state = ? WHERE id = ?"), (state, target))
                if signer is not None and checkpoint_every > 0 and seq % checkpoint_every == 0:
                    cp = signer(seq, digest, time.time())
                    cur.execute(
                        self._q(
                            "INSERT INTO audit_checkpoints(seq, hash, ts, key_id, signature) VALUES(?, ?, ?, ?, ?)"
                        ),
                        (cp.seq, cp.hash, cp.ts, cp.key_id, cp.signature),
                    )
                last_hash = digest
                out.append(
                    Stored(
                        seq,
                        body["id"],
                        float(body["ts_epoch"]),
                        body["kind"],
                        body.get("endpoint") or "",
                        review.get("state", "not_required"),
                        body["prev_hash"],
                        digest,
                        body,
                    )
                )
            if out:
                params = (out[-1].seq, out[-1].id, last_hash)
                if head:
                    cur.execute(self._q("UPDATE audit_head SET seq = ?, id = ?, hash = ? WHERE one = 1"), params)
                else:
                    cur.execute(self._q("INSERT INTO audit_head(one, seq, id, hash) VALUES(1, ?, ?, ?)"), params)
            return out

        result: list[Stored] = self._write(run)
        return result

    @staticmethod
    def _stored(row: Sequence[Any]) -> Stored:
        # Bodies are canonical JSON (no NaN, no lone surrogates), which msgspec reads about twice as fast as the json
        # module; reviewers' pages of records are decoded on the event loop.
        body = msgspec.json.decode(row[8]) if row[8] is not None else None
        return Stored(int(row[0]), row[1], float(row[2]), row[3], row[4], row[5], row[6], row[7], body)

    def get(self, record_id: str) -> Stored | None:
        """One record by id."""
        row = self._fetchone(f"SELECT {_COLUMNS} FROM audit_records WHERE id = ?", (record_id,))  # noqa: S608 - fixed SQL text; values are bound
        return self._stored(row) if row else None

    def find(self, query: RecordQuery) -> list[Stored]:
        """Records matching a query, newest first."""
        where, params = [], []
        for clause, value in (
            ("ts >= ?", query.since),
            ("ts < ?", query.until),
            ("endpoint = ?", query.endpoint),
            ("kind = ?", query.kind),
            ("target_id = ?", query.target_id),
            ("seq < ?", query.before_seq),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if query.review_states:
            where.append("review_state IN (" + ", ".join("?" for _ in query.review_states) + ")")
            params.extend(query.review_states)
        sql = f"SELECT {_COLUMNS} FROM audit_records"  # noqa: S608 - fixed SQL text; values are bound
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(query.limit)
        return [self._stored(r) for r in self._fetchall(sql, params)]

    def rows(self) -> Iterator[Row]:
        """Every record in ``seq`` order, read in pages, with its body as the stored text."""
        after = 0
        while True:
            page = self._fetchall(
                "SELECT seq, id, prev_hash, hash, body FROM audit_records WHERE seq > ? ORDER BY seq LIMIT 2000",
                (after,),
            )
            if not page:
                return
            for seq, rid, prev, digest, text in page:
                yield Row(int(seq), rid, prev, digest, text)
            after = int(page[-1][0])

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint in ``seq`` order."""
        rows = self._fetchall("SELECT seq, hash, ts, key_id, signature FROM audit_checkpoints ORDER BY seq")
        return [Checkpoint(int(r[0]), r[1], float(r[2]), r[3], r[4]) for r in rows]

    def head(self) -> tuple[int, str | None, str]:
        """The chain head: last seq, its id and hash."""
        row = self._fetchone("SELECT seq, id, hash FROM audit_head WHERE one = 1")
        return (int(row[0]), row[1], row[2]) if row else (0, None, GENESIS_HASH)

    def set_review_state(self, record_id: str, state: str) -> None:
        """Move a record's derived review state."""
        self._write(
            lambda: self._conn.execute(
                self._q("UPDATE audit_records SET review_state = ? WHERE id = ?"), (state, record_id)
            )
        )

    def last_seq_before(self, ts: float) -> int:
        """The highest seq whose time is before ``ts`` (0 if none)."""
        row = self._fetchone("SELECT MAX(seq) FROM audit_records WHERE ts < ?", (ts,))
        return int(row[0]) if row and row[0] is not None else 0

    def purge_content(self, last_seq: int) -> int:
        """Drop the content, personal data and cached explanations of records up to ``last_seq``."""

        def run() -> int:
            cur = self._conn
            ids = "SELECT id FROM audit_records WHERE seq <= ?"
            cur.execute(self._q(f"DELETE FROM audit_personal WHERE record_id IN ({ids})"), (last_seq,))  # noqa: S608 - fixed SQL text; values are bound
            cur.execute(self._q(f"DELETE FROM audit_explanations WHERE record_id IN ({ids})"), (last_seq,))  # noqa: S608 - fixed SQL text; values are bound
            res = cur.execute(
                self._q("UPDATE audit_records SET body = NULL WHERE seq <= ? AND body IS NOT NULL"), (last_seq,)
            )
            return int(res.rowcount or 0)

        purged: int = self._write(run)
        return purged

    def erase_personal(self, record_id: str) -> bool:
        """Delete a record's personal data; returns whether there was any."""
        res = self._write(
            lambda: self._conn.execute(self._q("DELETE FROM audit_personal WHERE record_id = ?"), (record_id,))
        )
        return bool(res.rowcount)

    def personal(self, record_id: str) -> str | None:
        """A record's personal data (JSON), if kept."""
        row = self._fetchone("SELECT data FROM audit_personal WHERE record_id = ?", (record_id,))
        return str(row[0]) if row else None

    def cached_explanation(self, record_id: str, method: str) -> str | None:
        """A cached explanation (JSON), if computed before."""
        row = self._fetchone(
            "SELECT data FROM audit_explanations WHERE record_id = ? AND method = ?", (record_id, method)
        )
        return str(row[0]) if row else None

    def cache_explanation(self, record_id: str, method: str, data: str) -> None:
        """Cache an explanation computed on request (the first one computed wins)."""
        self._write(
            lambda: self._conn.execute(
                self._q(
                    "INSERT INTO audit_explanations(record_id, method, data, created_at) VALUES(?, ?, ?, ?)"
                    " ON CONFLICT (record_id, method) DO NOTHING"
                ),
                (record_id, method, data, time.time()),
            )
        )

    def summary_rows(self, since: float | None, until: float | None) -> list[tuple[str, str, float | None, int]]:
        """``(kind, endpoint, latency_ms, abstained)`` of the records in a period."""
        where, params = ["body IS NOT NULL"], []
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts < ?")
            params.append(until)
        sql = "SELECT kind, endpoint, latency_ms, abstained FROM audit_records WHERE " + " AND ".join(where)  # noqa: S608 - fixed SQL text; values are bound
        return [(r[0], r[1], r[2], int(r[3])) for r in self._fetchall(sql, params)]

    def review_counts(self) -> dict[str, int]:
        """Records per review state."""
        rows = self._fetchall("SELECT review_state, COUNT(*) FROM audit_records GROUP BY review_state")
        return {r[0]: int(r[1]) for r in rows}


class SqliteBackend(_SqlBackend):
    """The audit log in a SQLite file (WAL journal, ``synchronous=FULL``: a commit survives power loss).

    Args:
        path: Database file (created if missing).
        busy_timeout_ms: How long a write waits for another writer's lock before failing.

    Raises:
        AuditStoreError: The file cannot be opened or is not a usable database.
    """

    def __init__(self, path: str | Path, busy_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_ms / 1000
            )
            self._create_schema(busy_timeout_ms / 1000)
            self._conn.execute("PRAGMA quick_check(1)").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise AuditStoreError(f"cannot open the audit database {self.path}: {exc}") from exc

    def _create_schema(self, timeout_s: float) -> None:
        """WAL mode and the tables, retried while another process is doing the same.

        Switching the journal mode does not wait on SQLite's busy handler, so replicas opening a new file together
        would otherwise fail with "database is locked"; the tables are created in one write transaction.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for ddl in _DDL:
                        self._conn.execute(ddl)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _begin_write(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _lock_head(self) -> Any:
        # BEGIN IMMEDIATE already holds the database's write lock.
        return self._conn.execute("SELECT seq, id, hash FROM audit_head WHERE one = 1").fetchone()

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


class PostgresBackend(_SqlBackend):
    """The audit log in PostgreSQL (psycopg 3), for several replicas writing one chain.

    Args:
        dsn: libpq connection string, e.g. ``host=127.0.0.1 dbname=candor user=candor``.
        lock_timeout_ms: How long a write waits for another writer's lock before failing.

    Raises:
        AuditStoreError: The server cannot be reached or the tables cannot be created.
    """

    placeholder = "%s"

    def __init__(self, dsn: str, lock_timeout_ms: int = 2000) -> None:
        super().__init__()
        import psycopg

        try:
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
            self._conn.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
            # Serialise schema creation between replicas starting together.
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(424242)")
                for ddl in _DDL:
                    self._conn.execute(ddl)
                self._conn.execute(
                    "INSERT INTO audit_head(one, seq, id, hash) VALUES(1, 0, NULL, %s) ON CONFLICT (one) DO NOTHING",
                    (GENESIS_HASH,),
                )
        except psycopg.Error as exc:
            raise AuditStoreError(f"cannot open the PostgreSQL audit store: {exc}") from exc

    def _begin_write(self) -> None:
        self._conn.execute("BEGIN")

    def _lock_head(self) -> Any:
        # The head row exists from the start; locking it serialises appends across replicas.
        return self._conn.execute("SELECT seq, id, hash FROM audit_head WHERE one = 1 FOR UPDATE").fetchone()

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
