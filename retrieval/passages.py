"""Passage retrieval for grounded answers: knowledge-base chunks and, by configuration, item texts.

A question's best passages are the nearest chunks of the knowledge base (one per document: overlapping chunks of
one document collapse to its best) merged with the nearest catalog items, each cut to a readable length. A few
places are kept for documents: a catalog holds many near-identical listings, which can outscore the one help
article that answers ("what is the return window for watches?" is nearest to watch listings, not to the returns
policy), so the best ``min_documents`` documents are read whatever the items score.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.answers import ContextPassage
from retrieval.encoder import Encoder
from retrieval.errors import NotReadyError
from retrieval.index import IndexSpec
from retrieval.item_store import ItemStore
from retrieval.knowledge import ChunkingConfig, DocumentChange, KnowledgeBase
from retrieval.pack import Document
from retrieval.ranking import Neighbours
from retrieval.types import Item


class PassageRetriever:
    """The knowledge base behind grounded answers, and the passages a question retrieves from it.

    Args:
        state_dir: Folder of the knowledge-base database (``knowledge.sqlite``).
        encoder: Embeds documents (in bulk) and counts their tokens for chunking.
        chunking: How documents are cut into chunks.
        index: How FAISS searches the chunks (their index is always exact).
        store: The items, answerable beside the documents when ``answer_items`` is set.
        neighbours: Batched nearest-neighbour search over the items.
        answer_items: Whether item texts are answerable.
        item_passage_chars: Longest item text handed to an answer backend.
        min_documents: Places among a question's passages kept for knowledge-base documents (when items are
            answerable too and the knowledge base has that many).
        bulk_batch_size: Texts per forward pass when embedding documents.
    """

    def __init__(
        self,
        state_dir: Path,
        encoder: Encoder,
        chunking: ChunkingConfig,
        index: IndexSpec,
        store: ItemStore,
        neighbours: Neighbours,
        *,
        answer_items: bool,
        item_passage_chars: int,
        min_documents: int = 0,
        bulk_batch_size: int,
    ) -> None:
        self._path = state_dir / "knowledge.sqlite"
        self._encoder = encoder
        self._chunking = chunking
        self._index_spec = index
        self._store = store
        self._neighbours = neighbours
        self.answer_items = answer_items
        self._item_passage_chars = item_passage_chars
        self.min_documents = min_documents
        self._bulk_batch_size = bulk_batch_size
        self._knowledge: KnowledgeBase | None = None
        self._write_lock = asyncio.Lock()

    # -- lifecycle (blocking: run in a worker thread) ----------------------------------------------------------

    def _open_at(self, path: Path, encoder: Encoder) -> KnowledgeBase:
        kb = KnowledgeBase(
            path,
            encoder.dim,
            encoder.info.version,
            chunk_token_count(encoder),
            self._chunking,
            self._index_spec,
        )
        kb.open(lambda texts: encoder.encode(list(texts), batch_size=self._bulk_batch_size))
        return kb

    def open(self, documents: Sequence[Document]) -> None:
        """Open the knowledge base and make the pack's documents current (changed texts are embedded again)."""
        self._knowledge = self._open_at(self._path, self._encoder)
        self._knowledge.sync_pack(documents, self._embed)

    def prepare_encoder(self, encoder: Encoder) -> Path:
        """A copy of the knowledge base with every document embedded by another encoder, beside the serving one.

        Call it while document writes are held (see :attr:`write_lock`). Returns the copy's file, for
        :meth:`commit_encoder`.
        """
        current = self.knowledge
        # Per process: workers sharing the state folder each stage their own copy when they follow a swap.
        staged = self._path.with_name(f"{self._path.stem}.next-{os.getpid()}.sqlite")
        for leftover in staged.parent.glob(staged.name + "*"):  # an earlier swap that stopped half-way
            leftover.unlink()
        fresh = self._open_at(staged, encoder)
        origins = current.origins()
        by_origin: dict[str, list[Document]] = {}
        for doc in current.documents():
            by_origin.setdefault(origins.get(doc.id, "api"), []).append(doc)
        embed = lambda texts: encoder.encode(list(texts), batch_size=self._bulk_batch_size)  # noqa: E731
        for origin, docs in by_origin.items():
            fresh.upsert(docs, embed, origin="pack" if origin == "pack" else "api")
        fresh.close()
        return staged

    def commit_encoder(self, encoder: Encoder, staged: Path) -> None:
        """Serve the copy :meth:`prepare_encoder` made: it replaces the knowledge base's file in one rename."""
        old = self.knowledge
        old.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{self._path}{suffix}").unlink(missing_ok=True)
        staged.replace(self._path)
        self._encoder = encoder
        self._knowledge = self._open_at(self._path, encoder)

    @property
    def write_lock(self) -> asyncio.Lock:
        """Held by every document write; hold it to keep the knowledge base still (an encoder swap does)."""
        return self._write_lock

    def close(self) -> None:
        """Close the knowledge base."""
        if self._knowledge is not None:
            self._knowledge.close()

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._encoder.encode(list(texts), batch_size=self._bulk_batch_size)

    @property
    def knowledge(self) -> KnowledgeBase:
        """The open knowledge base.

        Raises:
            NotReadyError: It is not open.
        """
        if self._knowledge is None:
            raise NotReadyError("knowledge base not open")
        return self._knowledge

    # -- reads ---------------------------------------------------------------------------------------------------

    def _item_passage(self, item: Item, score: float) -> ContextPassage:
        text = item_passage_text(item, self._item_passage_chars)
        return ContextPassage(item.id, f"{item.id}#0", item.title, text, score, "item")

    async def retrieve(self, vector: np.ndarray, k: int, request_id: str, spare: int = 0) -> list[ContextPassage]:
        """A question's ``k`` best passages (best first, one chunk per document), then up to ``spare`` more.

        Of the first ``k``, ``min_documents`` are documents when the knowledge base has that many: the best
        documents take the places of the lowest-scoring items. The ``spare`` passages (the next best) stand in for
        any of the first ``k`` a caller leaves out (see :func:`retrieval.answers.context_passages`).
        """
        kb = self.knowledge
        wanted = k + spare
        # Over-fetch chunks: overlapping chunks of one document are collapsed to its best.
        chunk_hits = (await asyncio.to_thread(kb.search, vector.reshape(1, -1), wanted * 3))[0]
        documents: dict[str, ContextPassage] = {}
        for score, chunk in chunk_hits:
            if chunk.doc_id not in documents:
                documents[chunk.doc_id] = ContextPassage(chunk.doc_id, chunk.chunk_id, chunk.title, chunk.text, score)
        items: dict[str, ContextPassage] = {}
        if self.answer_items:
            catalog = self._store.catalog
            for score, fid in (await self._neighbours([vector], wanted, request_id))[0]:
                item = catalog.item_for_faiss_id(fid)
                if item is not None and item.id not in documents and item.id not in items:
                    items[item.id] = self._item_passage(item, score)
        return reserve_documents(list(documents.values()), list(items.values()), k, spare, self.min_documents)

    def get(self, doc_id: str) -> Document | None:
        """A stored knowledge-base document."""
        return self.knowledge.get(doc_id)

    def info(self) -> dict[str, Any]:
        """Document and chunk counts of the knowledge base."""
        kb = self.knowledge
        return {"documents": len(kb), "chunks": kb.chunk_count, "items_answerable": self.answer_items}

    # -- writes --------------------------------------------------------------------------------------------------

    async def upsert(self, documents: Sequence[Document]) -> list[DocumentChange]:
        """Add or replace documents; they are answerable when this returns."""
        kb = self.knowledge
        async with self._write_lock:
            return await asyncio.to_thread(kb.upsert, documents, self._embed)

    async def catch_up(self) -> bool:
        """Take documents other processes wrote (see :meth:`KnowledgeBase.catch_up`); returns whether any."""
        kb = self.knowledge
        async with self._write_lock:
            return await asyncio.to_thread(kb.catch_up)

    async def delete(self, doc_id: str) -> bool:
        """Remove a document; returns whether it existed."""
        kb = self.knowledge
        async with self._write_lock:
            return await asyncio.to_thread(kb.delete, doc_id)


def reserve_documents(
    documents: Sequence[ContextPassage], items: Sequence[ContextPassage], k: int, spare: int, min_documents: int
) -> list[ContextPassage]:
    """The ``k`` best of ``documents`` and ``items`` with at least ``min_documents`` documents, then ``spare`` more.

    Args:
        documents: Document passages, best first.
        items: Item passages.
        k: Passages read.
        spare: Next best passages after them.
        min_documents: Places among the first ``k`` kept for the best documents.

    Returns:
        The first ``k`` sorted by score, then the spare ones sorted by score.
    """
    ranked = sorted([*documents, *items], key=lambda p: -p.score)
    kinds = {p.chunk_id for p in documents}
    return [ranked[i] for i in reserved_order([p.chunk_id in kinds for p in ranked], k, spare, min_documents)]


def reserved_order(is_document: Sequence[bool], k: int, spare: int, min_documents: int) -> list[int]:
    """Positions in a best-first ranking: the ``k`` read, at least ``min_documents`` of them documents, then ``spare``.

    Args:
        is_document: Whether each ranked passage is a document (the others are items).
        k: Passages read.
        spare: Next best passages after them.
        min_documents: Places among the first ``k`` kept for the best documents.

    Returns:
        The positions of the first ``k`` in ranking order, then those of the spare ones.
    """
    reserved = set([i for i, document in enumerate(is_document) if document][: min(min_documents, k)])
    others = [i for i in range(len(is_document)) if i not in reserved]
    first = reserved | set(others[: k - len(reserved)])
    rest = [i for i in range(len(is_document)) if i not in first]
    return sorted(first) + rest[:spare]


def chunk_token_count(encoder: Encoder) -> Callable[[str], int]:
    """What chunking counts: the encoder's tokens of a text, without ``[CLS]`` and ``[SEP]``."""
    return lambda text: max(0, len(encoder.token_ids(text)) - 2)


def item_passage_text(item: Item, max_chars: int) -> str:
    """An item's text as an answer backend reads it: its embedded text, cut at a word boundary to ``max_chars``."""
    text = item.embedding_text()
    return text[:max_chars].rsplit(" ", 1)[0] if len(text) > max_chars else text
