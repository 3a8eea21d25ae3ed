"""The item store: the catalog (the source of truth), its FAISS index and the index's snapshots, kept in step.

Every write goes to the catalog first (durable at once) and then to the index; snapshots of the index follow a
little later. On open, a snapshot is reconciled with the catalog (vectors added or removed since it was written
are applied), so an acknowledged write survives a crash even if no snapshot was written after it; a snapshot older
than a re-embed, which rewrites vectors under their FAISS ids, is rebuilt from the catalog instead. A rebuild
makes a fresh index of the configured kind and swaps it in atomically; searches keep the old one until then.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from tqdm import tqdm

from retrieval.catalog import CatalogChanges, ItemCatalog
from retrieval.encoder import Encoder
from retrieval.errors import NotReadyError, UnknownItemError
from retrieval.index import IndexSpec, SnapshotManifest, SnapshotStore, VectorIndex, configure_faiss
from retrieval.types import Filters, Item

logger = structlog.get_logger(__name__)


# Embeds many items at once in place of the local encoder loop (Ray Data: retrieval/bulk.py): the items, and
# whether they are every item of the pack file; returns their unit vectors in order.
BulkEmbedder = Callable[[Sequence[Item], bool], np.ndarray]


def _text_digest(item: Item) -> str:
    return hashlib.sha256(item.embedding_text().encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class PreparedVectors:
    """The catalog embedded by another encoder, and an index over it, ready to swap in."""

    encoder: Encoder
    vectors: dict[str, np.ndarray]
    index: VectorIndex


class ItemStore:
    """Catalog, index and snapshots of one state folder; reads are safe from any thread, writes are serialised.

    Args:
        state_dir: Folder of the catalog database (``catalog.sqlite``) and the snapshots (``index/``).
        spec: The FAISS structure to build and its search knobs.
        encoder: Embeds item texts when the catalog is reset, re-embedded or rebuilt.
        bulk_batch_size: Texts per forward pass when embedding many items.
        snapshot_delay_s: A snapshot is written this long after the last write.
        show_progress: Draw a progress bar while embedding many items.
        embedder: Embeds the items of a reset or re-embed instead of ``encoder`` (Ray Data); the vectors must
            come from the same weights.
    """

    def __init__(
        self,
        state_dir: Path,
        spec: IndexSpec,
        encoder: Encoder,
        *,
        bulk_batch_size: int,
        snapshot_delay_s: float,
        show_progress: bool,
        embedder: BulkEmbedder | None = None,
    ) -> None:
        self.state_dir = state_dir
        self._embedder = embedder
        self.spec = spec
        self._encoder = encoder
        self._bulk_batch_size = bulk_batch_size
        self._snapshot_delay_s = snapshot_delay_s
        self._show_progress = show_progress
        self._catalog: ItemCatalog | None = None
        self._index: VectorIndex | None = None
        self._snapshots = SnapshotStore(state_dir / "index")
        self._manifest: SnapshotManifest | None = None
        self._write_lock = asyncio.Lock()
        self._snapshot_task: asyncio.Task[None] | None = None
        self._dirty = False

    # -- lifecycle (blocking: run in a worker thread) ----------------------------------------------------------

    def open(self, pack_items: Sequence[Item], *, reset: bool = False) -> None:
        """Open the catalog and the index, seeding the catalog from the pack on first start.

        Args:
            pack_items: The domain pack's items.
            reset: Make the catalog hold exactly the pack's items (``candor index build``) and build a fresh index;
                only items whose text changed are embedded again.
        """
        configure_faiss(self.spec)
        self._catalog = catalog = ItemCatalog(self.state_dir / "catalog.sqlite", self._encoder.dim)
        if len(catalog) and catalog.encoder_version != self._encoder.info.version:
            logger.warning(
                "encoder_changed_reembedding", catalog=catalog.encoder_version, encoder=self._encoder.info.version
            )
            self._reembed()
        if reset or len(catalog) == 0:
            self._reset(pack_items)
        self._open_index(rebuild=reset)

    def close(self) -> None:
        """Close the catalog database."""
        if self._catalog is not None:
            self._catalog.close()

    async def flush(self) -> None:
        """Cancel the pending snapshot and write one now if anything changed since the last."""
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        if self._dirty and self._index is not None:
            await asyncio.to_thread(self._save_snapshot)

    def _embed(self, items: Sequence[Item], label: str, *, whole_pack: bool = False) -> np.ndarray:
        if self._embedder is not None and items:
            return self._embedder(items, whole_pack)
        with tqdm(total=len(items), desc=label, unit="item", disable=not self._show_progress, leave=False) as bar:
            return self._encoder.encode(
                [item.embedding_text() for item in items], batch_size=self._bulk_batch_size, progress=bar.update
            )

    def _reembed(self) -> None:
        catalog = self.catalog
        items = catalog.items()
        vectors = self._embed(items, "re-embedding catalog")
        catalog.replace_vectors(
            {item.id: vec for item, vec in zip(items, vectors, strict=True)}, self._encoder.info.version
        )

    def _reset(self, items: Sequence[Item]) -> None:
        """Make the catalog hold exactly ``items``, embedding only items whose text changed."""
        catalog = self.catalog
        wanted = {item.id for item in items}
        for old in catalog.items():
            if old.id not in wanted:
                catalog.delete(old.id)
        changed = [item for item in items if catalog.get(item.id) != item]
        stale_text = [
            item for item in changed if (cur := catalog.get(item.id)) is None or _text_digest(cur) != _text_digest(item)
        ]
        embedded = self._embed(stale_text, "embedding items", whole_pack=len(stale_text) == len(items))
        fresh = dict(zip((i.id for i in stale_text), embedded, strict=True))
        if not changed:
            return
        kept = [i for i in changed if i.id not in fresh]
        kept_vectors = catalog.vectors([catalog.faiss_id(i.id) or 0 for i in kept]) if kept else None
        kept_by_id = dict(zip((i.id for i in kept), kept_vectors, strict=True)) if kept_vectors is not None else {}
        vectors = np.stack([fresh[i.id] if i.id in fresh else kept_by_id[i.id] for i in changed])
        catalog.upsert(changed, vectors, self._encoder.info.version)
        logger.info("catalog_reset", items=len(items), embedded=len(stale_text), updated=len(changed))

    def _open_index(self, *, rebuild: bool = False) -> None:
        catalog = self.catalog
        loaded = None
        try:
            loaded = None if rebuild else self._snapshots.load(self.spec)
        except Exception as exc:
            logger.warning("index_snapshot_unusable", error=str(exc))
        if loaded is not None:
            index, manifest = loaded
            if (
                manifest.encoder_version == catalog.encoder_version
                and manifest.kind == self.spec.kind
                and not self._rewritten_since(index, manifest.seq)
            ):
                self._index, self._manifest = index, manifest
                if self._reconcile():
                    self._save_snapshot()
                return
            logger.info("index_snapshot_stale", snapshot=manifest.version, kind=manifest.kind)
        self._index = self._build_index()
        self._save_snapshot()

    def _build_index(self) -> VectorIndex:
        ids, vectors = self.catalog.all_vectors()
        return VectorIndex.build(self._encoder.dim, self.spec, ids, vectors)

    def _rewritten_since(self, index: VectorIndex, seq: int) -> bool:
        """Whether a vector the snapshot holds was replaced in place (same FAISS id) after change ``seq``.

        Upserts give a changed vector a new FAISS id, which :meth:`_reconcile` applies; a re-embed keeps the ids
        and rewrites every vector. A crash after the re-embed's commit and before its snapshot leaves a snapshot
        whose ids all match but whose vectors are the old ones, so such a snapshot is rebuilt, not reused.
        """
        written = self.catalog.faiss_ids_written_since(seq)
        return bool(len(written)) and bool(np.isin(written, index.ids()).any())

    def _reconcile(self, index: VectorIndex | None = None) -> bool:
        """Apply catalog changes made after the snapshot to ``index`` (default: the serving one); whether any."""
        index, catalog = index or self.index, self.catalog
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
        catalog = self.catalog
        self._dirty = False
        self._manifest = self._snapshots.save(
            self.index, seq=catalog.seq, encoder_version=catalog.encoder_version or ""
        )

    def _schedule_snapshot(self) -> None:
        self._dirty = True
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = asyncio.create_task(self._snapshot_later())

    async def _snapshot_later(self) -> None:
        await asyncio.sleep(self._snapshot_delay_s)
        async with self._write_lock:
            if self._dirty:
                await asyncio.to_thread(self._save_snapshot)

    # -- reads ---------------------------------------------------------------------------------------------------

    @property
    def catalog(self) -> ItemCatalog:
        """The open catalog.

        Raises:
            NotReadyError: The store is not open.
        """
        if self._catalog is None:
            raise NotReadyError("catalog not open")
        return self._catalog

    @property
    def index(self) -> VectorIndex:
        """The index searches run on now (a rebuild swaps it).

        Raises:
            NotReadyError: The store is not open.
        """
        if self._index is None:
            raise NotReadyError("index not open")
        return self._index

    def get(self, item_id: str) -> Item | None:
        """The catalog item with this id."""
        return self.catalog.get(item_id)

    def vectors(self, faiss_ids: Sequence[int]) -> np.ndarray:
        """The indexed vectors of these FAISS ids, in order."""
        return self.index.reconstruct(list(faiss_ids))

    def vectors_present(self, faiss_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of those FAISS ids still indexed, and a mask of which were.

        A write may have removed some since they were read (see :meth:`VectorIndex.reconstruct_present`).
        """
        return self.index.reconstruct_present(list(faiss_ids))

    def search_batch(self, queries: np.ndarray, ks: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Nearest neighbours of several query vectors in one FAISS call: ``(scores, faiss ids)`` per query."""
        index = self.index
        k = min(max(ks), max(index.ntotal, 1))
        scores, ids = index.search(queries, k)
        return [(scores[row, :want], ids[row, :want]) for row, want in enumerate(ks)]

    def search_filtered(self, vector: np.ndarray, k: int, filters: Filters, skip: set[str]) -> list[tuple[float, int]]:
        """Exact search over the items passing ``filters`` (and not in ``skip``): ``(score, faiss id)``, best first."""
        allowed = self.catalog.matching_faiss_ids(filters, skip)
        if not len(allowed):
            return []
        scores, ids = self.index.search(vector.reshape(1, -1), min(k, len(allowed)), allowed)
        return [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    def info(self) -> dict[str, Any]:
        """Index kind, size and snapshot version."""
        index, catalog = self.index, self.catalog
        return {
            "kind": index.kind,
            "size": len(catalog),
            "vectors": index.ntotal,
            "version": self._manifest.version if self._manifest else None,
            "catalog_seq": catalog.seq,
        }

    # -- another encoder (hot swap) ----------------------------------------------------------------------------------

    def prepare_encoder(self, encoder: Encoder) -> PreparedVectors:
        """Every item's vector from another encoder, and an index over them, built beside the serving ones.

        Vectors are cached under the state folder by (encoder weights, catalog content), so going back to an
        encoder that served this catalog before embeds nothing. Call it while writes are held (see
        :attr:`write_lock`): a write made meanwhile would be missing from the new vectors.
        """
        catalog = self.catalog
        items = catalog.items()
        digest = hashlib.sha256()
        for item in items:
            digest.update(f"{item.id}\0{_text_digest(item)}\n".encode())
        version = encoder.info.version
        cached = self.state_dir / "vector-cache" / version.replace(":", "-") / f"{digest.hexdigest()[:16]}.npy"
        if cached.is_file():
            vectors = np.load(cached)
            logger.info("encoder_vectors_cached", encoder=version, items=len(items))
        else:
            with tqdm(total=len(items), desc="embedding items", unit="item", disable=not self._show_progress) as bar:
                vectors = encoder.encode(
                    [item.embedding_text() for item in items], batch_size=self._bulk_batch_size, progress=bar.update
                )
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial.npy")
            np.save(partial, vectors)
            partial.replace(cached)
        ids = np.asarray([catalog.faiss_id(item.id) for item in items], dtype=np.int64)
        index = VectorIndex.build(encoder.dim, self.spec, ids, vectors)
        return PreparedVectors(encoder, {item.id: vec for item, vec in zip(items, vectors, strict=True)}, index)

    def commit_encoder(self, prepared: PreparedVectors) -> None:
        """Make prepared vectors the catalog's and their index the one searched (one step for searches)."""
        self.catalog.replace_vectors(prepared.vectors, prepared.encoder.info.version)
        self._encoder = prepared.encoder
        self._index = prepared.index
        self._save_snapshot()

    @property
    def write_lock(self) -> asyncio.Lock:
        """Held by every write; hold it to keep the catalog still (an encoder swap does)."""
        return self._write_lock

    # -- writes (on the event loop; the blocking parts run in worker threads) -----------------------------------

    async def upsert(self, item: Item, vector: np.ndarray) -> bool:
        """Store an item with its vector; it is searchable when this returns. Returns whether the item is new."""
        async with self._write_lock:
            return await self.upsert_locked(item, vector)

    async def upsert_locked(self, item: Item, vector: np.ndarray) -> bool:
        """:meth:`upsert` for a caller already holding :attr:`write_lock`."""
        created = await asyncio.to_thread(self._apply_upsert, item, vector)
        self._schedule_snapshot()
        return created

    def _apply_upsert(self, item: Item, vector: np.ndarray) -> bool:
        try:
            new_ids, replaced = self.catalog.upsert([item], vector.reshape(1, -1), self._encoder.info.version)
        except ValueError as exc:
            # Another process on this state folder moved the catalog to another encoder; this one follows when its
            # models reload. Until then its writes are refused with 503 and Retry-After, not mixed in.
            raise NotReadyError(f"the catalog is moving to another encoder ({exc})", "swapping") from exc
        self.index.add(new_ids, vector.reshape(1, -1))
        self.index.remove(replaced)
        return not replaced

    async def delete(self, item_id: str) -> None:
        """Remove an item; it is gone from results when this returns.

        Raises:
            UnknownItemError: The item is not in the catalog.
        """
        async with self._write_lock:
            fid = await asyncio.to_thread(self.catalog.delete, item_id)
            if fid is None:
                raise UnknownItemError([item_id])
            await asyncio.to_thread(self.index.remove, [fid])
        self._schedule_snapshot()

    async def rebuild(self, *, reembed: bool = False) -> None:
        """Build a fresh index of the configured kind from the catalog and swap it in atomically.

        Removed vectors that HNSW or IVF still held are dropped. With ``reembed``, every item is embedded again
        first. Other processes on this state folder open the new snapshot at their next :meth:`catch_up`.
        """
        async with self._write_lock:
            await asyncio.to_thread(self._apply_changes)  # the fresh index is built from a view that is current
            if reembed:
                await asyncio.to_thread(self._reembed)
            self._index = await asyncio.to_thread(self._build_index)
            await asyncio.to_thread(self._save_snapshot)
            await asyncio.to_thread(self.catalog.bump_index_generation)

    # -- other processes' writes ---------------------------------------------------------------------------------

    async def catch_up(self) -> bool:
        """Apply what other processes (workers, replicas on this state folder) wrote to the catalog since the last call.

        Cheap when nothing changed (one SQLite pragma). Written items join the index, deleted and replaced vectors
        leave it, and after another process's rebuild the published snapshot replaces this process's index (the
        old one serves until the swap). Vectors of another encoder are left alone: this process takes them with
        its own encoder swap, when its models reload.

        Returns:
            Whether anything changed here.
        """
        async with self._write_lock:
            return await asyncio.to_thread(self._apply_changes)

    def _apply_changes(self) -> bool:
        catalog = self.catalog
        changes = catalog.changes()
        if changes is None:
            return False
        if changes.encoder_version not in (None, self._encoder.info.version):
            return False
        if changes.index_generation != catalog.index_generation and self._reopen_snapshot(changes):
            return True
        view = catalog.view()
        fresh = [(fid, vector) for item, fid, vector in changes.written if view.faiss_of.get(item.id) != fid]
        index = self.index
        if fresh:
            index.add([fid for fid, _ in fresh], np.stack([vector for _, vector in fresh]))
        removed = index.remove(changes.removed) if changes.removed else 0
        catalog.catch_up(changes)
        if fresh or removed:
            logger.info("catalog_caught_up", seq=changes.seq, added=len(fresh), removed=removed)
        return bool(fresh or removed)

    def _reopen_snapshot(self, changes: CatalogChanges) -> bool:
        """Serve the snapshot another process's rebuild published, brought up to date with the catalog."""
        try:
            loaded = self._snapshots.load(self.spec)
        except Exception as exc:
            logger.warning("index_snapshot_unusable", error=str(exc))
            return False
        if (
            loaded is None
            or loaded[1].encoder_version != self._encoder.info.version
            or loaded[1].kind != self.spec.kind
        ):
            return False
        index, manifest = loaded
        self.catalog.catch_up(changes)
        self._reconcile(index)
        self._index, self._manifest = index, manifest
        logger.info("index_snapshot_reopened", version=manifest.version, seq=changes.seq)
        return True
