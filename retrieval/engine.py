"""The retrieval engine: the encoder, the catalog and the FAISS index behind batchers, as async operations.

The service holds one engine. Query texts go through the encoder's batcher (one worker thread on the model's
device), query vectors through the index's batcher (one FAISS call per batch), and everything after that
(filters, diversity, explanations) is cheap numpy work on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from tqdm import tqdm

from retrieval.answers import ContextPassage
from retrieval.batcher import BatcherConfig, BatchObserver, DynamicBatcher
from retrieval.catalog import ItemCatalog
from retrieval.encoder import Encoder, EncoderConfig, EncoderInfo, load_encoder
from retrieval.errors import InvalidQueryError, NotReadyError, UnknownItemError, UnknownUserError
from retrieval.index import IndexSpec, SnapshotManifest, SnapshotStore, VectorIndex, configure_faiss
from retrieval.knowledge import ChunkingConfig, DocumentChange, KnowledgeBase
from retrieval.pack import Document, DomainPack, load_pack
from retrieval.recommend import (
    FieldTerms,
    RecommenderConfig,
    explain_history,
    explain_item_similarity,
    explain_query_match,
    history_from_interactions,
    history_scores,
    merge_history,
    mmr,
    query_stems,
    seen_item_ids,
)
from retrieval.types import Filters, HistoryEntry, Interaction, Item, ScoredItem

logger = structlog.get_logger(__name__)

Status = Literal["starting", "loading", "ready", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs to start.

    Attributes:
        state_dir: Where the catalog database and index snapshots live.
        pack_path: The domain pack the catalog is seeded from.
        encoder: Encoder choice.
        encoder_batching: Batcher knobs for the encoder.
        search_batching: Batcher knobs for FAISS searches.
        index: FAISS structure and search knobs.
        recommender: Recommender knobs.
        snapshot_delay_s: Writes are snapshotted this long after the last one (they are durable in the catalog
            at once).
        show_progress: Draw a progress bar while embedding a catalog.
        chunking: How knowledge-base documents are cut into chunks.
        answer_items: Whether item texts are answerable (searched beside the documents).
        item_passage_chars: Longest item text given to an answer backend.
    """

    state_dir: Path
    pack_path: Path
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    encoder_batching: BatcherConfig = field(default_factory=BatcherConfig)
    search_batching: BatcherConfig = field(default_factory=lambda: BatcherConfig(max_wait_ms=0.0))
    index: IndexSpec = field(default_factory=IndexSpec)
    recommender: RecommenderConfig = field(default_factory=RecommenderConfig)
    snapshot_delay_s: float = 2.0
    show_progress: bool = True
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    answer_items: bool = True
    item_passage_chars: int = 1200


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One vector to search, with how many neighbours to return."""

    vector: np.ndarray
    k: int


@dataclass(frozen=True, slots=True)
class Ranked:
    """Results of one request: the items, and history ids that were not in the catalog."""

    items: list[ScoredItem]
    ignored_history: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Candidate:
    item: Item
    faiss_id: int
    score: float


def _text_digest(item: Item) -> str:
    return hashlib.sha256(item.embedding_text().encode("utf-8")).hexdigest()


class RetrievalEngine:
    """Owns the encoder, catalog, index and batchers; every public method is safe to call concurrently.

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
        self._encoder: Encoder | None = encoder
        self._catalog: ItemCatalog | None = None
        self._knowledge: KnowledgeBase | None = None
        self._index: VectorIndex | None = None
        self._snapshots = SnapshotStore(config.state_dir / "index")
        self._manifest: SnapshotManifest | None = None
        self._pack: DomainPack | None = None
        self._interactions: dict[str, list[Interaction]] = {}
        self._encode_batcher: DynamicBatcher[list[int], np.ndarray] | None = None
        self._search_batcher: DynamicBatcher[SearchQuery, tuple[np.ndarray, np.ndarray]] | None = None
        self._write_lock = asyncio.Lock()
        self._snapshot_task: asyncio.Task[None] | None = None
        self._dirty = False
        self.rebuild_state: dict[str, Any] = {"state": "idle"}
        self._field_terms = FieldTerms()

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Models are warm, the index is open and the batchers run."""
        return self.status == "ready"

    async def start(self) -> None:
        """Load the pack, the encoder and the index (building it on first start), then start the batchers.

        Failures set :attr:`status` to ``failed`` with :attr:`failure` and are re-raised.
        """
        self.status = "loading"
        try:
            await asyncio.to_thread(self._load)
            encoder = self._require_encoder()
            workers, threads = encoder.plan_workers(self.config.encoder.workers, self.config.encoder.threads)
            self._encode_batcher = DynamicBatcher(
                "encoder",
                lambda batch: list(encoder.embed_token_batch(batch)),
                replace(self.config.encoder_batching, workers=workers, packed=encoder.packed),
                cost=len,
                observer=self._observer,
                thread_init=lambda: encoder.use_threads(threads),
            )
            logger.info(
                "encoder_workers",
                workers=workers,
                threads_each=threads,
                device=encoder.info.device,
                packed=encoder.packed,
            )
            self._search_batcher = DynamicBatcher(
                "index", self._search_batch, self.config.search_batching, observer=self._observer
            )
            self._encode_batcher.start()
            self._search_batcher.start()
        except Exception as exc:
            self.status = "failed"
            self.failure = f"{type(exc).__name__}: {exc}"
            logger.exception("engine_start_failed")
            raise
        self.status = "ready"
        logger.info("engine_ready", items=len(self._require_catalog()), index=self.index_info())

    async def stop(self) -> None:
        """Drain the batchers and write a final snapshot if anything changed since the last one."""
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        for batcher in (self._encode_batcher, self._search_batcher):
            if batcher is not None:
                await batcher.stop()
        if self._dirty and self._index is not None:
            await asyncio.to_thread(self._save_snapshot)
        if self._catalog is not None:
            self._catalog.close()
        if self._knowledge is not None:
            self._knowledge.close()
        self.status = "stopped"

    def build_offline(self) -> dict[str, Any]:
        """Make the catalog match the pack and write a fresh snapshot, without serving (``candor index build``).

        Only items whose text changed since the last build are embedded again.

        Returns:
            The index info.
        """
        self.status = "loading"
        self._load(reset_from_pack=True)
        info = {**self.index_info(), "knowledge": self.knowledge_info()}
        self._require_catalog().close()
        self._require_knowledge().close()
        self.status = "stopped"
        return info

    def _load(self, *, reset_from_pack: bool = False) -> None:
        cfg = self.config
        configure_faiss(cfg.index)
        self._pack = load_pack(cfg.pack_path)
        for event in self._pack.interactions:
            self._interactions.setdefault(event.user_id, []).append(event)
        if self._encoder is None:
            self._encoder = load_encoder(cfg.encoder)
        self._encoder.warmup()
        self._catalog = ItemCatalog(cfg.state_dir / "catalog.sqlite", self._encoder.dim)
        if len(self._catalog) and self._catalog.encoder_version != self._encoder.info.version:
            logger.warning(
                "encoder_changed_reembedding",
                catalog=self._catalog.encoder_version,
                encoder=self._encoder.info.version,
            )
            self._reembed_catalog()
        if reset_from_pack or len(self._catalog) == 0:
            self._reset_catalog(self._pack.items)
        self._open_index(rebuild=reset_from_pack)
        self._open_knowledge(self._pack.documents)
        for item in self._catalog.items()[: self._field_terms.capacity]:
            self._field_terms.get(item)  # explanations then cost no tokenising on the hot path

    def _bulk_embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._require_encoder().encode(list(texts), batch_size=self.config.encoder.bulk_batch_size)

    def _open_knowledge(self, documents: Sequence[Document]) -> None:
        encoder = self._require_encoder()
        self._knowledge = KnowledgeBase(
            self.config.state_dir / "knowledge.sqlite",
            encoder.dim,
            encoder.info.version,
            lambda text: max(0, len(encoder.token_ids(text)) - 2),  # without [CLS] and [SEP]
            self.config.chunking,
        )
        self._knowledge.open(self._bulk_embed)
        self._knowledge.sync_pack(documents, self._bulk_embed)

    def _embed_items(self, items: Sequence[Item], label: str) -> np.ndarray:
        encoder = self._require_encoder()
        with tqdm(total=len(items), desc=label, unit="item", disable=not self.config.show_progress, leave=False) as bar:
            return encoder.encode(
                [item.embedding_text() for item in items],
                batch_size=self.config.encoder.bulk_batch_size,
                progress=bar.update,
            )

    def _reembed_catalog(self) -> None:
        catalog = self._require_catalog()
        items = catalog.items()
        vectors = self._embed_items(items, "re-embedding catalog")
        catalog.replace_vectors(
            {item.id: vec for item, vec in zip(items, vectors, strict=True)},
            self._require_encoder().info.version,
        )

    def _open_index(self, *, rebuild: bool = False) -> None:
        catalog = self._require_catalog()
        loaded = None
        try:
            loaded = None if rebuild else self._snapshots.load(self.config.index)
        except Exception as exc:
            logger.warning("index_snapshot_unusable", error=str(exc))
        if loaded is not None:
            index, manifest = loaded
            usable = manifest.encoder_version == catalog.encoder_version and manifest.kind == self.config.index.kind
            if usable:
                self._index, self._manifest = index, manifest
                if self._reconcile():
                    self._save_snapshot()
                return
            logger.info("index_snapshot_stale", snapshot=manifest.version, kind=manifest.kind)
        self._index = self._build_index()
        self._save_snapshot()

    def _build_index(self) -> VectorIndex:
        ids, vectors = self._require_catalog().all_vectors()
        return VectorIndex.build(self._require_encoder().dim, self.config.index, ids, vectors)

    def _reconcile(self) -> bool:
        """Apply catalog changes made after the snapshot; returns whether anything changed."""
        index, catalog = self._require_index(), self._require_catalog()
        stored = set(index.ids().tolist())
        live = set(catalog.live_faiss_ids().tolist())
        missing = sorted(live - stored)
        dead = sorted(stored - live)
        if missing:
            index.add(missing, catalog.vectors(missing))
        removed = index.remove(dead) if dead else 0
        if missing or removed:
            logger.info("index_reconciled", added=len(missing), removed=removed)
        return bool(missing or removed)

    def _save_snapshot(self) -> None:
        catalog = self._require_catalog()
        self._dirty = False
        self._manifest = self._snapshots.save(
            self._require_index(), seq=catalog.seq, encoder_version=catalog.encoder_version or ""
        )

    def _schedule_snapshot(self) -> None:
        self._dirty = True
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = asyncio.create_task(self._snapshot_later())

    async def _snapshot_later(self) -> None:
        await asyncio.sleep(self.config.snapshot_delay_s)
        async with self._write_lock:
            if self._dirty:
                await asyncio.to_thread(self._save_snapshot)

    # -- accessors --------------------------------------------------------------------------------------------

    def _require_encoder(self) -> Encoder:
        if self._encoder is None:
            raise NotReadyError("encoder not loaded")
        return self._encoder

    def _require_catalog(self) -> ItemCatalog:
        if self._catalog is None:
            raise NotReadyError("catalog not open")
        return self._catalog

    def _require_knowledge(self) -> KnowledgeBase:
        if self._knowledge is None:
            raise NotReadyError("knowledge base not open")
        return self._knowledge

    def _require_index(self) -> VectorIndex:
        if self._index is None:
            raise NotReadyError("index not open")
        return self._index

    def require_ready(self) -> None:
        """Raise unless the engine serves.

        Raises:
            NotReadyError: With the engine's status.
        """
        if not self.ready:
            raise NotReadyError(f"engine is {self.status}", self.status)

    @property
    def encoder_info(self) -> EncoderInfo:
        """Identity of the loaded encoder."""
        return self._require_encoder().info

    @property
    def encoder(self) -> Encoder:
        """The loaded encoder (for in-process benchmarks and evaluation)."""
        return self._require_encoder()

    def index_info(self) -> dict[str, Any]:
        """Index kind, size and snapshot version."""
        index = self._require_index()
        return {
            "kind": index.kind,
            "size": len(self._require_catalog()),
            "vectors": index.ntotal,
            "version": self._manifest.version if self._manifest else None,
            "catalog_seq": self._require_catalog().seq,
        }

    def knowledge_info(self) -> dict[str, Any]:
        """Document and chunk counts of the knowledge base."""
        kb = self._require_knowledge()
        return {"documents": len(kb), "chunks": kb.chunk_count, "items_answerable": self.config.answer_items}

    def get_item(self, item_id: str) -> Item | None:
        """The catalog item with this id."""
        return self._require_catalog().get(item_id)

    def pack_summary(self) -> dict[str, int]:
        """Record counts of the loaded domain pack."""
        return self._pack.summary() if self._pack else {}

    # -- batch handlers (worker threads) ------------------------------------------------------------------------

    def _search_batch(self, queries: Sequence[SearchQuery]) -> list[tuple[np.ndarray, np.ndarray]]:
        index = self._require_index()
        k = min(max(q.k for q in queries), max(index.ntotal, 1))
        scores, ids = index.search(np.stack([q.vector for q in queries]), k)
        return [(scores[row, : q.k], ids[row, : q.k]) for row, q in enumerate(queries)]

    # -- core steps -------------------------------------------------------------------------------------------

    async def embed_query(self, text: str, request_id: str = "-") -> np.ndarray:
        """Embed one query through the encoder's batcher."""
        self.require_ready()
        assert self._encode_batcher is not None
        return await self._encode_batcher.submit(self._require_encoder().token_ids(text), request_id)

    async def embed_texts(self, texts: Sequence[str], request_id: str = "-") -> np.ndarray:
        """Embed several texts through the encoder's batcher (they join other requests' batches)."""
        self.require_ready()
        assert self._encode_batcher is not None
        batcher, encoder = self._encode_batcher, self._require_encoder()
        vectors = await asyncio.gather(*(batcher.submit(encoder.token_ids(t), request_id) for t in texts))
        return np.stack(vectors) if vectors else np.zeros((0, encoder.dim), dtype=np.float32)

    def _item_passage(self, item: Item, score: float) -> ContextPassage:
        text = item.embedding_text()
        limit = self.config.item_passage_chars
        if len(text) > limit:  # cut at a word boundary
            text = text[:limit].rsplit(" ", 1)[0]
        return ContextPassage(item.id, f"{item.id}#0", item.title, text, score, "item")

    async def retrieve_passages(
        self, question: str, k: int, request_id: str = "-"
    ) -> tuple[np.ndarray, list[ContextPassage]]:
        """The question's vector and the ``k`` best passages: knowledge-base chunks and (by config) items.

        Returns:
            The question vector and passages, best first (one chunk per document at most).
        """
        vector = await self.embed_query(question, request_id)
        kb = self._require_knowledge()
        # Over-fetch chunks: overlapping chunks of one document are collapsed to its best.
        chunk_hits = (await asyncio.to_thread(kb.search, vector.reshape(1, -1), k * 3))[0]
        passages: dict[str, ContextPassage] = {}
        for score, chunk in chunk_hits:
            if chunk.doc_id not in passages:
                passages[chunk.doc_id] = ContextPassage(chunk.doc_id, chunk.chunk_id, chunk.title, chunk.text, score)
        if self.config.answer_items:
            catalog = self._require_catalog()
            for score, fid in (await self._neighbours([vector], k, request_id))[0]:
                item = catalog.item_for_faiss_id(fid)
                if item is not None and item.id not in passages:
                    passages[item.id] = self._item_passage(item, score)
        ranked = sorted(passages.values(), key=lambda p: -p.score)
        return vector, ranked[:k]

    async def upsert_documents(self, documents: Sequence[Document]) -> list[DocumentChange]:
        """Add or replace knowledge-base documents; they are answerable when this returns."""
        self.require_ready()
        kb = self._require_knowledge()
        async with self._write_lock:
            return await asyncio.to_thread(kb.upsert, documents, self._bulk_embed)

    async def delete_document(self, doc_id: str) -> bool:
        """Remove a knowledge-base document; returns whether it existed."""
        self.require_ready()
        kb = self._require_knowledge()
        async with self._write_lock:
            return await asyncio.to_thread(kb.delete, doc_id)

    def get_document(self, doc_id: str) -> Document | None:
        """A stored knowledge-base document."""
        return self._require_knowledge().get(doc_id)

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

    def _admit(
        self, hits: Sequence[tuple[float, int]], filters: Filters, skip: set[str], seen: dict[str, _Candidate]
    ) -> None:
        catalog = self._require_catalog()
        for score, fid in hits:
            item = catalog.item_for_faiss_id(fid)
            if item is None or item.id in skip or item.id in seen or not filters.matches(item):
                continue
            seen[item.id] = _Candidate(item, fid, score)

    async def _candidates(
        self,
        vectors: Sequence[np.ndarray],
        want: int,
        filters: Filters,
        skip: set[str],
        request_id: str,
    ) -> list[_Candidate]:
        """Nearest live items passing filters, over-fetched for later re-ranking.

        Batched approximate retrieval first; if filters leave too few, an exact filtered search over the
        matching ids with the first vector.
        """
        index, catalog = self._require_index(), self._require_catalog()
        factor = self.config.recommender.candidate_factor * (4 if filters.active else 1)
        fetch = min(index.ntotal, max(want * factor, want + len(skip)))
        seen: dict[str, _Candidate] = {}
        for hits in await self._neighbours(vectors, max(fetch, 1), request_id):
            self._admit(hits, filters, skip, seen)
        if len(seen) < want and fetch < index.ntotal:
            allowed = await asyncio.to_thread(catalog.matching_faiss_ids, filters, skip)
            if len(allowed):
                scores, ids = await asyncio.to_thread(
                    index.search, vectors[0].reshape(1, -1), min(want, len(allowed)), allowed
                )
                self._admit(
                    [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0],
                    filters,
                    skip,
                    seen,
                )
        return sorted(seen.values(), key=lambda c: -c.score)

    async def _nearest(
        self, vector: np.ndarray, k: int, filters: Filters, skip: set[str], diversity: float, request_id: str
    ) -> list[_Candidate]:
        """The ``k`` items nearest to one vector, after filters, exclusions and diversity."""
        want = k * (self.config.recommender.candidate_factor if diversity > 0 else 1)
        candidates = await self._candidates([vector], want, filters, skip, request_id)
        return self._diversify(candidates, k, diversity)[:k]

    def _diversify(self, candidates: list[_Candidate], k: int, diversity: float) -> list[_Candidate]:
        if diversity <= 0 or len(candidates) <= 1:
            return candidates[:k]
        vectors = self._require_index().reconstruct([c.faiss_id for c in candidates])
        order = mmr(np.asarray([c.score for c in candidates]), vectors, k, diversity)
        return [candidates[i] for i in order]

    # -- public operations ----------------------------------------------------------------------------------------

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
        """Semantic search over items for a free-text query.

        Args:
            query: Free text.
            k: Results wanted.
            filters: Constraints on returned items.
            exclude: Item ids never to return.
            diversity: MMR trade-off in ``[0, 1]``.
            request_id: Carried into batch workers for logs.
        """
        vector = await self.embed_query(query, request_id)
        chosen = await self._nearest(vector, k, filters or Filters(), set(exclude), diversity, request_id)
        stems, fields = query_stems(query), self._field_terms
        return Ranked(
            [ScoredItem(c.item, c.score, explain_query_match(stems, c.item, c.score, fields)) for c in chosen]
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
        """Items most similar to a catalog item (never the item itself).

        Raises:
            UnknownItemError: ``item_id`` is not in the catalog.
        """
        self.require_ready()
        catalog = self._require_catalog()
        seed = catalog.get(item_id)
        fid = catalog.faiss_id(item_id)
        if seed is None or fid is None:
            raise UnknownItemError([item_id])
        vector = self._require_index().reconstruct([fid])[0]
        skip = {item_id, *exclude}
        chosen = await self._nearest(vector, k, filters or Filters(), skip, diversity, request_id)
        return Ranked([ScoredItem(c.item, c.score, explain_item_similarity(seed, c.item, c.score)) for c in chosen])

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
        """Items for a shopper from the items they viewed or bought; history items are never returned.

        Scores are the weighted mean cosine similarity to the history; each result's explanation lists the
        history items behind it with their exact shares. Unknown history ids are ignored and reported.

        Raises:
            UnknownItemError: No history id is in the catalog.
            InvalidQueryError: The history is empty or its weights are not positive.
        """
        self.require_ready()
        if not history:
            raise InvalidQueryError("history is empty", field="history")
        if any(entry.weight <= 0 for entry in history):
            raise InvalidQueryError("history weights must be positive", field="history")
        catalog, index = self._require_catalog(), self._require_index()
        merged = merge_history(history)[-self.config.recommender.max_history :]
        known = [(catalog.get(e.item_id), catalog.faiss_id(e.item_id), e.weight) for e in merged]
        ignored = [e.item_id for e, (item, _, _) in zip(merged, known, strict=True) if item is None]
        present = [(item, fid, w) for item, fid, w in known if item is not None and fid is not None]
        if not present:
            raise UnknownItemError(ignored)
        items = [p[0] for p in present]
        weights = np.asarray([p[2] for p in present], dtype=np.float32)
        history_vectors = index.reconstruct([p[1] for p in present])
        profile = (weights[:, None] * history_vectors).sum(axis=0)
        profile /= max(float(np.linalg.norm(profile)), 1e-12)
        seeds = np.argsort(-weights)[: self.config.recommender.seed_items]
        queries = [profile, *(history_vectors[i] for i in seeds)] if len(items) > 1 else [profile]
        skip = {item.id for item in items} | set(exclude)
        want = k * self.config.recommender.candidate_factor
        candidates = await self._candidates(queries, want, filters or Filters(), skip, request_id)
        if not candidates:
            return Ranked([], ignored)
        candidate_vectors = index.reconstruct([c.faiss_id for c in candidates])
        scores, shares = history_scores(history_vectors, weights, candidate_vectors)
        for cand, score in zip(candidates, scores, strict=True):
            cand.score = float(score)
        order = np.argsort(-scores, kind="stable")
        ranked = [candidates[i] for i in order]
        share_rows = {candidates[i].item.id: shares[i] for i in order}
        chosen = self._diversify(ranked, k, diversity)
        return Ranked(
            [ScoredItem(c.item, c.score, explain_history(items, share_rows[c.item.id], c.score)) for c in chosen[:k]],
            ignored,
        )

    def history_for_user(self, user_id: str) -> list[HistoryEntry]:
        """Weighted history of a user from the pack's interactions.

        Raises:
            UnknownUserError: The user has no recorded interactions.
        """
        events = self._interactions.get(user_id)
        if not events:
            raise UnknownUserError(user_id)
        history = history_from_interactions(events, self.config.recommender)
        if not history:
            raise InvalidQueryError(
                f"user {user_id!r} has no interactions that express interest (only low ratings)", field="user_id"
            )
        return history

    def seen_by_user(self, user_id: str) -> set[str]:
        """Every item the user interacted with, including ones they rated low: never recommended back."""
        return seen_item_ids(self._interactions.get(user_id, ()))

    # -- writes -------------------------------------------------------------------------------------------------

    async def upsert(self, item: Item, request_id: str = "-") -> Item:
        """Embed and store an item; it is searchable when this returns."""
        self.require_ready()
        assert self._encode_batcher is not None
        vector = await self._encode_batcher.submit(self._require_encoder().token_ids(item.embedding_text()), request_id)
        async with self._write_lock:
            await asyncio.to_thread(self._apply_upsert, item, vector)
        self._schedule_snapshot()
        return item

    def _apply_upsert(self, item: Item, vector: np.ndarray) -> None:
        catalog, index = self._require_catalog(), self._require_index()
        new_ids, replaced = catalog.upsert([item], vector.reshape(1, -1), self._require_encoder().info.version)
        index.add(new_ids, vector.reshape(1, -1))
        index.remove(replaced)

    async def delete(self, item_id: str) -> None:
        """Remove an item; it is gone from results when this returns.

        Raises:
            UnknownItemError: The item is not in the catalog.
        """
        self.require_ready()
        async with self._write_lock:
            fid = await asyncio.to_thread(self._require_catalog().delete, item_id)
            if fid is None:
                raise UnknownItemError([item_id])
            await asyncio.to_thread(self._require_index().remove, [fid])
        self._schedule_snapshot()

    async def rebuild(self, *, reembed: bool = False) -> dict[str, Any]:
        """Build a fresh index of the configured kind from the catalog and swap it in atomically.

        Searches keep using the old index until the swap. Removed vectors that HNSW or IVF still held are
        dropped. With ``reembed``, every item is embedded again first.

        Returns:
            The new index's info.
        """
        self.require_ready()
        started = time.monotonic()
        self.rebuild_state = {"state": "running", "started_at": time.time(), "reembed": reembed}
        try:
            async with self._write_lock:
                if reembed:
                    await asyncio.to_thread(self._reembed_catalog)
                fresh = await asyncio.to_thread(self._build_index)
                self._index = fresh
                await asyncio.to_thread(self._save_snapshot)
        except Exception as exc:
            self.rebuild_state = {"state": "failed", "error": f"{type(exc).__name__}"}
            raise
        info = self.index_info()
        self.rebuild_state = {"state": "done", "seconds": round(time.monotonic() - started, 3), "index": info}
        return info

    def _reset_catalog(self, items: Sequence[Item]) -> None:
        """Make the catalog hold exactly ``items``, embedding only items whose text changed."""
        catalog = self._require_catalog()
        wanted = {item.id for item in items}
        for old in catalog.items():
            if old.id not in wanted:
                catalog.delete(old.id)
        changed = [item for item in items if catalog.get(item.id) != item]
        stale_text = [
            item for item in changed if (cur := catalog.get(item.id)) is None or _text_digest(cur) != _text_digest(item)
        ]
        fresh = dict(
            zip(
                (i.id for i in stale_text),
                self._embed_items(stale_text, "embedding items"),
                strict=True,
            )
        )
        if not changed:
            return
        kept = [i for i in changed if i.id not in fresh]
        kept_vectors = catalog.vectors([catalog.faiss_id(i.id) or 0 for i in kept]) if kept else None
        kept_by_id = dict(zip((i.id for i in kept), kept_vectors, strict=True)) if kept_vectors is not None else {}
        vectors = np.stack([fresh[i.id] if i.id in fresh else kept_by_id[i.id] for i in changed])
        catalog.upsert(changed, vectors, self._require_encoder().info.version)
        logger.info("catalog_reset", items=len(items), embedded=len(stale_text), updated=len(changed))
