"""The knowledge base for grounded answers: documents cut into chunks, their vectors, and their own FAISS index.

Documents and chunk vectors live in SQLite (WAL, ``synchronous=FULL``), the source of truth; the FAISS index
(exact inner product over ``IndexIDMap2``) is rebuilt from it on open, which takes milliseconds for the
thousands of chunks a help centre holds. Pack documents are synchronised on every start (changed texts are
chunked and embedded again, documents gone from the pack are dropped); documents added through the API are
kept until replaced.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import structlog

from retrieval.chunking import chunk_text
from retrieval.index import IndexSpec, VectorIndex
from retrieval.pack import Document
from retrieval.sqlite import connect, transaction

logger = structlog.get_logger(__name__)

Origin = Literal["pack", "api"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    source TEXT,
    origin TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    fid INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    """How documents are cut (``[knowledge]`` in the config).

    Attributes:
        chunk_tokens: Largest chunk, in encoder tokens.
        overlap_tokens: Tokens of trailing whole sentences repeated at the start of the next chunk.
    """

    chunk_tokens: int
    overlap_tokens: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """A retrievable piece of a document (or of an item's text).

    Attributes:
        doc_id: The parent document (or item) id, cited in answers.
        chunk_id: ``<doc_id>#<ordinal>``.
        title: The parent's title.
        text: The chunk's text.
        kind: ``document`` or ``item``.
    """

    doc_id: str
    chunk_id: str
    title: str
    text: str
    kind: Literal["document", "item"] = "document"


@dataclass(frozen=True, slots=True)
class DocumentChange:
    """What an upsert did to one document."""

    id: str
    created: bool
    chunks: int


def _digest(doc: Document) -> str:
    return hashlib.sha256(f"{doc.title}\x00{doc.text}\x00{doc.source or ''}".encode()).hexdigest()


Embed = Callable[[Sequence[str]], np.ndarray]


class KnowledgeBase:
    """Chunked documents with vectors; safe to search from several threads while one writer changes it.

    Args:
        path: SQLite file (created if missing).
        dim: Vector dimension of the encoder.
        encoder_version: Identity of the encoder; stored vectors from another encoder are embedded again.
        count_tokens: Token count of a text (the encoder's tokenizer), for chunk sizes.
        chunking: Chunk size and overlap.
        index: How FAISS searches (threads, BLAS threshold); the structure is always exact (flat).
    """

    def __init__(
        self,
        path: str | Path,
        dim: int,
        encoder_version: str,
        count_tokens: Callable[[str], int],
        chunking: ChunkingConfig,
        index: IndexSpec,
    ) -> None:
        self.path = Path(path)
        self.dim = dim
        self.encoder_version = encoder_version
        self._count = count_tokens
        self.chunking = chunking
        # Exact search: a help centre's few thousand chunks need no approximate index, whatever the catalog uses.
        self._spec = replace(index, kind="flat")
        self._lock = threading.RLock()
        self._db = connect(self.path, foreign_keys=True)
        self._db.executescript(_SCHEMA)
        self._data_version = self._data_version_now()
        self._chunks: dict[int, Chunk] = {}
        self._index = VectorIndex.build(dim, self._spec, np.zeros(0, dtype=np.int64), np.zeros((0, dim)))

    # -- lifecycle -------------------------------------------------------------------------------------------

    def open(self, embed: Embed) -> None:
        """Load chunks and build the index; embed everything again if the stored vectors are another encoder's.

        Args:
            embed: Embeds texts in bulk (the encoder), used only when re-embedding.
        """
        row = self._db.execute("SELECT value FROM meta WHERE key = 'encoder_version'").fetchone()
        stored = row[0] if row else None
        has_chunks = self._db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() is not None
        if has_chunks and stored != self.encoder_version:
            logger.warning("knowledge_encoder_changed_reembedding", stored=stored, encoder=self.encoder_version)
            with self._lock:
                docs = self.documents()
                origins = dict(self._db.execute("SELECT id, origin FROM documents").fetchall())
                for doc in docs:
                    self._write(doc, origins.get(doc.id, "api"), embed)
        self._db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('encoder_version', ?)", (self.encoder_version,)
        )
        self._rebuild_index()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _data_version_now(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def catch_up(self) -> bool:
        """Reload chunks and index if another process (a worker, a replica) changed the documents; cheap otherwise.

        Vectors of another encoder are left alone: this process takes them with its own encoder swap.

        Returns:
            Whether the knowledge base was reloaded.
        """
        with self._lock:
            version = self._data_version_now()
            if version == self._data_version:
                return False
            row = self._db.execute("SELECT value FROM meta WHERE key = 'encoder_version'").fetchone()
            if row is not None and row[0] != self.encoder_version:
                return False
            self._data_version = version
            self._rebuild_index()
        logger.info("knowledge_caught_up", chunks=len(self._chunks))
        return True

    def _rebuild_index(self) -> None:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.fid, c.doc_id, c.ordinal, c.text, c.vector, d.title FROM chunks c "
                "JOIN documents d ON d.id = c.doc_id ORDER BY c.fid"
            ).fetchall()
            self._chunks = {
                int(fid): Chunk(doc_id, f"{doc_id}#{ordinal}", title, text)
                for fid, doc_id, ordinal, text, _, title in rows
            }
            ids = np.asarray([int(r[0]) for r in rows], dtype=np.int64)
            vectors = (
                np.stack([np.frombuffer(r[4], dtype=np.float32) for r in rows])
                if rows
                else np.zeros((0, self.dim), dtype=np.float32)
            )
            self._index = VectorIndex.build(self.dim, self._spec, ids, vectors)

    # -- reads -----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of documents."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    @property
    def chunk_count(self) -> int:
        """Number of chunks in the index."""
        return len(self._chunks)

    def documents(self) -> list[Document]:
        """Every stored document."""
        with self._lock:
            rows = self._db.execute("SELECT id, title, text, source FROM documents ORDER BY id").fetchall()
        return [Document(id=r[0], title=r[1], text=r[2], source=r[3]) for r in rows]

    def origins(self) -> dict[str, Origin]:
        """Where each stored document came from (``pack`` or ``api``), by id."""
        with self._lock:
            return dict(self._db.execute("SELECT id, origin FROM documents").fetchall())

    def get(self, doc_id: str) -> Document | None:
        """The stored document with this id."""
        with self._lock:
            row = self._db.execute("SELECT id, title, text, source FROM documents WHERE id = ?", (doc_id,)).fetchone()
        return None if row is None else Document(id=row[0], title=row[1], text=row[2], source=row[3])

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[float, Chunk]]]:
        """Nearest chunks for each query vector, best first.

        Args:
            queries: ``(n, dim)`` unit vectors.
            k: Chunks per query.
        """
        with self._lock:
            index, chunks = self._index, self._chunks
        if index.ntotal == 0 or k < 1:
            return [[] for _ in range(len(queries))]
        scores, ids = index.search(queries, min(k, index.ntotal))
        return [
            [(float(s), chunks[int(i)]) for s, i in zip(row_s, row_i, strict=True) if int(i) in chunks]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    # -- writes ----------------------------------------------------------------------------------------------

    def _write(self, doc: Document, origin: Origin, embed: Embed) -> int:
        """Replace one document and its chunks (caller holds the lock); returns the chunk count."""
        pieces = chunk_text(
            f"{doc.text}",
            self._count,
            self.chunking.chunk_tokens,
            self.chunking.overlap_tokens,
        )
        # The title leads each chunk's embedded text, as it does for items, so "gift cards" finds the article.
        vectors = embed([f"{doc.title}. {piece}" for piece in pieces]) if pieces else np.zeros((0, self.dim))
        with transaction(self._db):
            self._db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc.id,))
            self._db.execute(
                "INSERT OR REPLACE INTO documents(id, title, text, source, origin, digest, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (doc.id, doc.title, doc.text, doc.source, origin, _digest(doc), time.time()),
            )
            self._db.executemany(
                "INSERT INTO chunks(doc_id, ordinal, text, vector) VALUES (?, ?, ?, ?)",
                [
                    (doc.id, n, piece, np.asarray(vec, dtype=np.float32).tobytes())
                    for n, (piece, vec) in enumerate(zip(pieces, vectors, strict=True))
                ],
            )
        return len(pieces)

    def upsert(self, docs: Sequence[Document], embed: Embed, origin: Origin = "api") -> list[DocumentChange]:
        """Add or replace documents; they are searchable when this returns.

        Args:
            docs: The documents (ids unique within the call).
            embed: Embeds chunk texts in bulk.
            origin: ``api`` for documents added through the service, ``pack`` for the domain pack's.

        Returns:
            One change per document, in order.
        """
        changes: list[DocumentChange] = []
        with self._lock:
            for doc in docs:
                created = self.get(doc.id) is None
                changes.append(DocumentChange(doc.id, created, self._write(doc, origin, embed)))
            self._rebuild_index()
        return changes

    def delete(self, doc_id: str) -> bool:
        """Remove a document and its chunks; returns whether it existed."""
        with self._lock, transaction(self._db):
            self._db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
            gone = self._db.execute("DELETE FROM documents WHERE id = ?", (doc_id,)).rowcount > 0
        if gone:
            self._rebuild_index()
        return gone

    def sync_pack(self, docs: Sequence[Document], embed: Embed) -> dict[str, int]:
        """Make the pack's documents current: embed new or changed ones, drop pack documents no longer there.

        Documents added through the API are left alone unless the pack now has one with the same id.

        Returns:
            Counts of ``added``, ``updated``, ``removed`` and ``unchanged`` documents.
        """
        counts = {"added": 0, "updated": 0, "removed": 0, "unchanged": 0}
        with self._lock:
            stored = {r[0]: (r[1], r[2]) for r in self._db.execute("SELECT id, digest, origin FROM documents")}
            wanted = {doc.id for doc in docs}
            for doc_id, (_, origin) in stored.items():
                if origin == "pack" and doc_id not in wanted:
                    self._db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
                    self._db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
                    counts["removed"] += 1
            for doc in docs:
                previous = stored.get(doc.id)
                if previous is not None and previous[0] == _digest(doc):
                    counts["unchanged"] += 1
                    continue
                self._write(doc, "pack", embed)
                counts["updated" if previous else "added"] += 1
            self._rebuild_index()
        if counts["added"] or counts["updated"] or counts["removed"]:
            logger.info("knowledge_synced", **counts, chunks=self.chunk_count)
        return counts
