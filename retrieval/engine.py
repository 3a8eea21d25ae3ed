"""The retrieval engine: the facade the service drives, over the encoder, the item store, ranking and passages.

The engine owns the models and the batchers: query texts go through the encoder's batcher (worker threads on the
model's device), query vectors through the index's batcher (one FAISS call per batch). It composes three parts
and delegates to them:

- :class:`~retrieval.item_store.ItemStore`: the catalog, its FAISS index and snapshots (writes, rebuilds);
- :class:`~retrieval.ranking.Ranker`: search, more like this and history recommendations, with explanations;
- :class:`~retrieval.passages.PassageRetriever`: the knowledge base and the passages a question retrieves.

Everything after the batchers (filters, diversity, explanations) is cheap numpy work on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from retrieval.answers import ContextPassage
from retrieval.batcher import BatchObserver, DynamicBatcher, lower_thread_priority
from retrieval.encoder import Encoder, EncoderConfig, EncoderInfo, load_encoder
from retrieval.engine_config import EngineConfig
from retrieval.errors import NotReadyError, UnknownUserError
from retrieval.gate import SwapGate
from retrieval.item_store import BulkEmbedder, ItemStore
from retrieval.knowledge import DocumentChange
from retrieval.locks import file_lock
from retrieval.pack import Document, DomainPack, load_pack
from retrieval.passages import PassageRetriever
from retrieval.ranking import Ranked, Ranker
from retrieval.types import Filters, HistoryEntry, Item

logger = structlog.get_logger(__name__)

Status = Literal["starting", "loading", "ready", "failed", "stopped"]

__all__ = ["EngineConfig", "Ranked", "RetrievalEngine", "SearchQuery"]


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One vector to search, with how many neighbours to return (an item of the index's batcher)."""

    vector: np.ndarray
    k: int


class RetrievalEngine:
    """Owns the encoder and the batchers and composes the item store, ranking and passages.

    Every public method is safe to call concurrently.

    Args:
        config: Engine configuration.
        observer: Receives batcher statistics (metrics).
        encoder: An already loaded encoder to use instead of loading ``config.encoder`` (tests, benchmarks).
    """

    def __init__(
        self, config: EngineConfig, observer: BatchObserver | None = None, *, encoder: Encoder | None = None
    ) -> None:
        self.config = config
        self._observer = observer
        self.status: Status = "starting"
        self.failure: str | None = None
        self.rebuild_state: dict[str, Any] = {"state": "idle"}
        self._encoder: Encoder | None = encoder
        self._pack: DomainPack | None = None
        self._store: ItemStore | None = None
        self._ranker: Ranker | None = None
        self._passages: PassageRetriever | None = None
        self._encode_batcher: DynamicBatcher[list[int], np.ndarray] | None = None
        self._search_batcher: DynamicBatcher[SearchQuery, tuple[np.ndarray, np.ndarray]] | None = None
        self._gate = SwapGate()

    # -- lifecycle ----------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Models are warm, the index is open and the batchers run."""
        return self.status == "ready"

    def require_ready(self) -> None:
        """Raise unless the engine serves.

        Raises:
            NotReadyError: With the engine's status.
        """
        if not self.ready:
            raise NotReadyError(f"engine is {self.status}", self.status)

    async def start(self) -> None:
        """Load the pack, the encoder and the index (building it on first start), then start the batchers.

        Failures set :attr:`status` to ``failed`` with :attr:`failure` and are re-raised.
        """
        self.status = "loading"
        try:
            await asyncio.to_thread(self._load)
            self._encode_batcher = self._encoder_batcher(self.encoder)
            store = self.store
            self._search_batcher = DynamicBatcher(
                "index",
                lambda batch: store.search_batch(np.stack([q.vector for q in batch]), [q.k for q in batch]),
                self.config.search_batching,
                observer=self._observer,
            )
            self._search_batcher.start()
        except Exception as exc:
            self.status = "failed"
            self.failure = f"{type(exc).__name__}: {exc}"
            logger.exception("engine_start_failed")
            raise
        self.status = "ready"
        logger.info("engine_ready", items=len(self.store.catalog), index=self.index_info())

    async def stop(self) -> None:
        """Drain the batchers and write a final snapshot if anything changed since the last one."""
        for batcher in (self._encode_batcher, self._search_batcher):
            if batcher is not None:
                await batcher.stop()
        if self._store is not None:
            await self._store.flush()
        self._close()
        self.status = "stopped"

    def build_offline(self, embedder: BulkEmbedder | None = None) -> dict[str, Any]:
        """Make the catalog match the pack and write a fresh snapshot, without serving (``candor index build``).

        Only items whose text changed since the last build are embedded again.

        Args:
            embedder: Embeds those items instead of the local encoder (Ray Data, :mod:`retrieval.bulk`).

        Returns:
            The index info, with the knowledge base's.
        """
        self.status = "loading"
        self._load(reset_from_pack=True, embedder=embedder)
        info = {**self.index_info(), "knowledge": self.knowledge_info()}
        self._close()
        self.status = "stopped"
        return info

    def _encoder_batcher(self, encoder: Encoder) -> DynamicBatcher[list[int], np.ndarray]:
        """A started batcher running ``encoder`` on as many workers and threads as the machine allows."""
        workers, threads = encoder.plan_workers(self.config.encoder.workers, self.config.encoder.threads)
        batching = replace(self.config.encoder_batching, workers=workers, packed=encoder.packed)
        if encoder.remote:  # the inference process batches (and waits for companions); send what is queued now
            batching = replace(batching, max_wait_ms=0.0)
        nice = self.config.encoder.nice

        def thread_init() -> None:
            lower_thread_priority(nice)
            encoder.use_threads(threads)

        batcher: DynamicBatcher[list[int], np.ndarray] = DynamicBatcher(
            "encoder",
            lambda batch: list(encoder.embed_token_batch(batch)),
            batching,
            cost=len,
            observer=self._observer,
            thread_init=thread_init,
        )
        logger.info(
            "encoder_workers", workers=workers, threads_each=threads, device=encoder.info.device, packed=encoder.packed
        )
        batcher.start()
        return batcher

    async def swap_encoder(self, config: EncoderConfig) -> EncoderInfo:
        """Serve another encoder: load it, re-embed the catalog and the knowledge base beside the serving ones, swap.

        Searches, recommendations and answers go on with the old encoder while the new one loads and embeds
        (catalog vectors are cached by encoder and catalog content, so a known pair embeds nothing). Item and
        document writes wait meanwhile. The swap itself waits for the requests in flight to finish with the old
        encoder, then replaces encoder, vectors, index and knowledge base in one step; the old encoder's batcher is
        drained and released.

        Returns:
            The new encoder's identity.

        Raises:
            ValueError: The new encoder's vectors have another dimension than the index's.
        """
        self.require_ready()
        store, passages = self.store, self.passages
        encoder = await asyncio.to_thread(load_encoder, config)
        await asyncio.to_thread(encoder.warmup)
        if encoder.dim != self.encoder.dim:
            raise ValueError(f"the new encoder makes {encoder.dim}-d vectors; the index holds {self.encoder.dim}-d")
        async with store.write_lock, passages.write_lock:
            prepared = await asyncio.to_thread(store.prepare_encoder, encoder)
            staged = await asyncio.to_thread(passages.prepare_encoder, encoder)
            batcher = self._encoder_batcher(encoder)
            async with self._gate.exclusive():
                old_batcher = self._encode_batcher
                await asyncio.to_thread(store.commit_encoder, prepared)
                await asyncio.to_thread(passages.commit_encoder, encoder, staged)
                self._encoder, self._encode_batcher = encoder, batcher
                self.config = replace(self.config, encoder=config)
        if old_batcher is not None:
            await old_batcher.stop()
        logger.info("encoder_swapped", encoder=encoder.info.identity())
        return encoder.info

    def _load(self, *, reset_from_pack: bool = False, embedder: BulkEmbedder | None = None) -> None:
        cfg = self.config
        self._pack = pack = load_pack(cfg.pack_path)
        if self._encoder is None:
            self._encoder = load_encoder(cfg.encoder)
        encoder = self._encoder
        encoder.warmup()
        # Processes sharing the state folder open it one at a time: the first seeds the catalog and the knowledge
        # base from the pack and writes the first snapshot; the others find them made.
        with file_lock(cfg.state_dir / ".open.lock"):
            self._open_state(pack, encoder, reset_from_pack=reset_from_pack, embedder=embedder)
        self._ranker = Ranker(self.store, self._neighbours, cfg.recommender)
        self._ranker.load(pack.interactions)
        if cfg.recommender_model is not None:
            folder, version = cfg.recommender_model
            try:
                self._ranker.load_model(folder, version, cfg.min_recommender_coverage)
            except ValueError as exc:  # a pin that cannot serve this catalog must not keep the service down
                logger.error("recommender_not_served", version=version, reason=str(exc))

    def _open_state(
        self, pack: DomainPack, encoder: Encoder, *, reset_from_pack: bool, embedder: BulkEmbedder | None
    ) -> None:
        cfg = self.config
        store = ItemStore(
            cfg.state_dir,
            cfg.index,
            encoder,
            bulk_batch_size=cfg.encoder.bulk_batch_size,
            snapshot_delay_s=cfg.snapshot_delay_s,
            show_progress=cfg.show_progress,
            embedder=embedder,
        )
        store.open(pack.items, reset=reset_from_pack)
        self._store = store
        passages = PassageRetriever(
            cfg.state_dir,
            encoder,
            cfg.chunking,
            cfg.index,
            store,
            self._neighbours,
            answer_items=cfg.answer_items,
            item_passage_chars=cfg.item_passage_chars,
            min_documents=cfg.min_document_passages,
            bulk_batch_size=cfg.encoder.bulk_batch_size,
        )
        passages.open(pack.documents)
        self._passages = passages

    def _close(self) -> None:
        for part in (self._store, self._passages):
            if part is not None:
                part.close()

    # -- parts ----------------------------------------------------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        """The loaded encoder (for in-process benchmarks, evaluation and explanations).

        Raises:
            NotReadyError: It is not loaded yet.
        """
        if self._encoder is None:
            raise NotReadyError("encoder not loaded")
        return self._encoder

    @property
    def encoder_info(self) -> EncoderInfo:
        """Identity of the loaded encoder."""
        return self.encoder.info

    @property
    def store(self) -> ItemStore:
        """The catalog, its index and snapshots."""
        if self._store is None:
            raise NotReadyError("item store not open")
        return self._store

    @property
    def ranker(self) -> Ranker:
        """Search, more like this and history recommendations."""
        if self._ranker is None:
            raise NotReadyError("ranking not loaded")
        return self._ranker

    @property
    def passages(self) -> PassageRetriever:
        """The knowledge base and passage retrieval."""
        if self._passages is None:
            raise NotReadyError("knowledge base not open")
        return self._passages

    def index_info(self) -> dict[str, Any]:
        """Index kind, size and snapshot version."""
        return self.store.info()

    def knowledge_info(self) -> dict[str, Any]:
        """Document and chunk counts of the knowledge base."""
        return self.passages.info()

    def get_item(self, item_id: str) -> Item | None:
        """The catalog item with this id."""
        return self.store.get(item_id)

    def pack_summary(self) -> dict[str, int]:
        """Record counts of the loaded domain pack."""
        return self._pack.summary() if self._pack else {}

    # -- embedding and neighbours (through the batchers) ------------------------------------------------------

    def lease(self) -> AbstractAsyncContextManager[None]:
        """Hold the models still: a model swap waits until this ends (see :class:`~retrieval.gate.SwapGate`).

        Every read method takes one; a caller that makes several calls whose vectors must come from one encoder
        (an answer: the question's passages, then its sentences) holds one around all of them.
        """
        return self._gate.lease()

    async def embed_query(self, text: str, request_id: str = "-", *, background: bool = False) -> np.ndarray:
        """Embed one query through the encoder's batcher (``background``: after the texts shoppers wait on)."""
        self.require_ready()
        async with self._gate.lease():
            assert self._encode_batcher is not None
            return await self._encode_batcher.submit(self.encoder.token_ids(text), request_id, background=background)

    async def embed_texts(self, texts: Sequence[str], request_id: str = "-") -> np.ndarray:
        """Embed several texts through the encoder's batcher (they join other requests' batches)."""
        self.require_ready()
        async with self._gate.lease():
            assert self._encode_batcher is not None
            batcher, encoder = self._encode_batcher, self.encoder
            vectors = await asyncio.gather(*(batcher.submit(encoder.token_ids(t), request_id) for t in texts))
            return np.stack(vectors) if vectors else np.zeros((0, encoder.dim), dtype=np.float32)

    async def _neighbours(
        self, vectors: Sequence[np.ndarray], k: int, request_id: str
    ) -> list[list[tuple[float, int]]]:
        batcher = self._search_batcher
        assert batcher is not None
        if len(vectors) == 1:  # every search: no task for gather() to wrap it in
            results = [await batcher.submit(SearchQuery(vectors[0], k), request_id)]
        else:
            results = await asyncio.gather(*(batcher.submit(SearchQuery(vec, k), request_id) for vec in vectors))
        # tolist() converts in C; per-element float()/int() on numpy scalars cost more than the search here.
        return [
            [(s, i) for s, i in zip(scores.tolist(), ids.tolist(), strict=True) if i >= 0] for scores, ids in results
        ]

    # -- recommendations ------------------------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        *,
        k: int = 10,
        filters: Filters | None = None,
        exclude: Sequence[str] = (),
        diversity: float = 0.0,
        request_id: str = "-",
    ) -> Ranked:
        """Semantic search over items for a free-text query (see :meth:`Ranker.search`).

        Args:
            query: Free text.
            k: Results wanted.
            filters: Constraints on returned items.
            exclude: Item ids never to return.
            diversity: MMR trade-off in ``[0, 1]``.
            request_id: Carried into batch workers for logs.
        """
        async with self._gate.lease():
            vector = await self.embed_query(query, request_id)
            return await self.ranker.search(
                query,
                vector,
                k=k,
                filters=filters or Filters(),
                exclude=exclude,
                diversity=diversity,
                request_id=request_id,
            )

    async def more_like_this(
        self,
        item_id: str,
        *,
        k: int = 10,
        filters: Filters | None = None,
        exclude: Sequence[str] = (),
        diversity: float = 0.0,
        request_id: str = "-",
    ) -> Ranked:
        """Items most similar to a catalog item, never the item itself (see :meth:`Ranker.more_like_this`)."""
        self.require_ready()
        async with self._gate.lease():
            return await self.ranker.more_like_this(
                item_id, k=k, filters=filters or Filters(), exclude=exclude, diversity=diversity, request_id=request_id
            )

    async def recommend_for_history(
        self,
        history: Sequence[HistoryEntry],
        *,
        k: int = 10,
        filters: Filters | None = None,
        exclude: Sequence[str] = (),
        diversity: float = 0.0,
        request_id: str = "-",
    ) -> Ranked:
        """Items for a shopper from the items they viewed or bought (see :meth:`Ranker.for_history`)."""
        self.require_ready()
        async with self._gate.lease():
            return await self.ranker.for_history(
                history, k=k, filters=filters or Filters(), exclude=exclude, diversity=diversity, request_id=request_id
            )

    async def recommend_for_user(
        self,
        user_id: str,
        *,
        k: int = 10,
        filters: Filters | None = None,
        exclude: Sequence[str] = (),
        diversity: float = 0.0,
        request_id: str = "-",
    ) -> Ranked:
        """Items for a known shopper from their recorded interactions, never an item they interacted with.

        A shopper with no recorded interactions gets the most popular items, and each result says so.

        Raises:
            UnknownUserError: No shopper has any recorded interaction (nothing to fall back on).
            InvalidQueryError: The shopper's interactions express no interest (content recommender only).
        """
        self.require_ready()
        ranker = self.ranker
        try:
            history = ranker.history_for_user(user_id)
        except UnknownUserError:
            fallback = ranker.popular(k=k, filters=filters or Filters(), exclude=exclude)
            if not fallback.items and not ranker.has_interactions:
                raise
            return fallback
        async with self._gate.lease():
            return await ranker.for_history(
                history,
                k=k,
                filters=filters or Filters(),
                exclude=[*exclude, *sorted(ranker.seen_by_user(user_id))],
                diversity=diversity,
                request_id=request_id,
            )

    async def use_recommender(self, folder: Path | None, version: str | None = None) -> dict[str, Any]:
        """Serve history and user recommendations with a trained recommender (``None``: content similarity).

        The model loads beside the one serving and replaces it in one step; requests already scoring finish with
        the model they started with.

        Returns:
            :meth:`recommender_info` after the swap.

        Raises:
            ValueError: The folder holds no recommender, or one trained on too little of this catalog.
        """
        if folder is None:
            self.ranker.use_model(None)
            return self.recommender_info()
        await asyncio.to_thread(self.ranker.load_model, folder, version, self.config.min_recommender_coverage)
        return self.recommender_info()

    def recommender_info(self) -> dict[str, Any]:
        """What serves history and user recommendations: a trained recommender's kind and version, or content."""
        model = self.ranker.model
        if model is None:
            return {"kind": "content-similarity", "version": None}
        return {"kind": model.kind, "version": self.ranker.model_version, "items": len(model.item_ids)}

    # -- grounded answers -------------------------------------------------------------------------------------------

    async def retrieve_passages(
        self, question: str, k: int, request_id: str = "-", spare: int = 0
    ) -> tuple[np.ndarray, list[ContextPassage]]:
        """The question's vector and its ``k`` best passages (knowledge-base chunks and, by config, items).

        Then up to ``spare`` more, to stand in for passages a caller leaves out (see
        :meth:`retrieval.passages.PassageRetriever.retrieve`).
        """
        async with self._gate.lease():
            vector = await self.embed_query(question, request_id)
            return vector, await self.passages.retrieve(vector, k, request_id, spare)

    async def upsert_documents(self, documents: Sequence[Document]) -> list[DocumentChange]:
        """Add or replace knowledge-base documents; they are answerable when this returns."""
        self.require_ready()
        return await self.passages.upsert(documents)

    async def delete_document(self, doc_id: str) -> bool:
        """Remove a knowledge-base document; returns whether it existed."""
        self.require_ready()
        return await self.passages.delete(doc_id)

    def get_document(self, doc_id: str) -> Document | None:
        """A stored knowledge-base document."""
        return self.passages.get(doc_id)

    async def catch_up(self) -> bool:
        """Take the catalog and document changes other processes on this state folder made (cheap when none).

        Returns:
            Whether anything changed here.
        """
        if not self.ready:
            return False
        items = await self.store.catch_up()
        documents = await self.passages.catch_up()
        return items or documents

    # -- catalog writes -------------------------------------------------------------------------------------------

    async def upsert(self, item: Item, request_id: str = "-") -> bool:
        """Embed and store an item; it is searchable when this returns.

        Returns:
            Whether the item is new, decided under the write lock: of several concurrent creates of one id, exactly
            one is new.
        """
        self.require_ready()
        store = self.store
        # The write lock first, then the lease: an encoder swap holds the lock while it re-embeds the catalog and
        # then waits for leases to end, so a write must never wait for the lock while holding a lease.
        async with store.write_lock, self._gate.lease():
            # A catalog write's text waits for the queries shoppers are waiting on (see retrieval.batcher).
            vector = await self.embed_query(item.embedding_text(), request_id, background=True)
            return await store.upsert_locked(item, vector)

    async def delete(self, item_id: str) -> None:
        """Remove an item; it is gone from results when this returns.

        Raises:
            UnknownItemError: The item is not in the catalog.
        """
        self.require_ready()
        await self.store.delete(item_id)

    async def rebuild(self, *, reembed: bool = False) -> dict[str, Any]:
        """Build a fresh index of the configured kind from the catalog and swap it in atomically.

        Searches keep using the old index until the swap. With ``reembed``, every item is embedded again first.

        Returns:
            The new index's info.
        """
        self.require_ready()
        started = time.monotonic()
        self.rebuild_state = {"state": "running", "started_at": time.time(), "reembed": reembed}
        try:
            await self.store.rebuild(reembed=reembed)
        except Exception as exc:
            self.rebuild_state = {"state": "failed", "error": f"{type(exc).__name__}"}
            raise
        info = self.index_info()
        self.rebuild_state = {"state": "done", "seconds": round(time.monotonic() - started, 3), "index": info}
        return info
