"""The durable item catalog: items and their vectors in SQLite, mirrored in memory for fast lookups.

The catalog is the source of truth. FAISS snapshots are a cache of its vectors: on start the index is reconciled
with the catalog (vectors added or removed since the snapshot are applied), so an upsert acknowledged to a
client survives a crash even if no snapshot was written after it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.sqlite import connect, transaction
from retrieval.types import Filters, Item

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    faiss_id INTEGER NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS removed (faiss_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS items_seq ON items(seq);
CREATE INDEX IF NOT EXISTS removed_seq ON removed(seq);
"""


def _item_from_json(data: str) -> Item:
    raw = json.loads(data)
    return Item(
        id=raw["id"],
        title=raw["title"],
        text=raw.get("text", ""),
        category=raw["category"],
        brand=raw.get("brand"),
        price=raw.get("price"),
        attributes=raw.get("attributes") or {},
        provider=raw.get("provider"),
    )


@dataclass(frozen=True, slots=True)
class CatalogView:
    """The catalog's items at one moment: never changed after it is made, so safe to read from any thread.

    Writes build a new view and swap it in with one assignment, so a reader that takes :meth:`ItemCatalog.view`
    once sees every item, id and FAISS id from the same moment, however many writes run meanwhile (iterating the
    live dictionaries in a worker thread failed with "dictionary changed size during iteration").

    Attributes:
        by_id: Items by id.
        faiss_of: Item id -> the FAISS id of its current vector.
        item_of: FAISS id -> item id, for current vectors only.
    """

    by_id: Mapping[str, Item]
    faiss_of: Mapping[str, int]
    item_of: Mapping[int, str]

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, item_id: str) -> Item | None:
        """The item with this id, if present."""
        return self.by_id.get(item_id)

    def item_for_faiss_id(self, faiss_id: int) -> Item | None:
        """The live item stored under a FAISS id (``None`` for removed or replaced vectors)."""
        item_id = self.item_of.get(faiss_id)
        return None if item_id is None else self.by_id.get(item_id)

    def faiss_id(self, item_id: str) -> int | None:
        """The FAISS id of an item's current vector."""
        return self.faiss_of.get(item_id)

    def items(self) -> list[Item]:
        """All items, in id order."""
        return [self.by_id[k] for k in sorted(self.by_id)]

    def live_faiss_ids(self) -> np.ndarray:
        """FAISS ids of every current vector."""
        return np.fromiter(self.item_of.keys(), dtype=np.int64, count=len(self.item_of))

    def matching_faiss_ids(self, filters: Filters, exclude: Iterable[str] = ()) -> np.ndarray:
        """FAISS ids of items passing ``filters`` and not in ``exclude`` (for exact filtered search)."""
        skip = set(exclude)
        ids = [self.faiss_of[item.id] for item in self.by_id.values() if item.id not in skip and filters.matches(item)]
        return np.asarray(ids, dtype=np.int64)


_EMPTY = CatalogView({}, {}, {})


@dataclass(frozen=True, slots=True)
class CatalogChanges:
    """What other processes committed to the catalog since this one last caught up (:meth:`ItemCatalog.changes`).

    Attributes:
        seq: The catalog's change sequence these changes reach.
        written: ``(item, faiss_id, vector)`` of every item written after the last catch-up.
        removed: FAISS ids whose vectors were deleted or replaced after it.
        encoder_version: The encoder that made the stored vectors.
        index_generation: Grows with every index rebuild (a process then reopens the published snapshot).
        data_version: SQLite's counter of other connections' commits when read.
    """

    seq: int
    written: list[tuple[Item, int, np.ndarray]]
    removed: list[int]
    encoder_version: str | None
    index_generation: int
    data_version: int


class ItemCatalog:
    """Items with their vectors, each under a FAISS id that changes whenever its vector does.

    Args:
        path: SQLite file (created if missing).
        dim: Vector dimension.
    """

    def __init__(self, path: str | Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._lock = threading.RLock()
        self._db = connect(self.path)
        with transaction(self._db):  # the write lock: another process may be creating the same file
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
        items: dict[str, Item] = {}
        faiss_of: dict[str, int] = {}
        item_of: dict[int, str] = {}
        # The sequence before the rows: a write committed in between is applied again by the next catch-up.
        self._data_version = self._data_version_now()
        self._seq = int(self._meta("seq", "0"))
        self.index_generation = int(self._meta("index_generation", "0"))
        for faiss_id, data in self._db.execute("SELECT faiss_id, data FROM items"):
            item = _item_from_json(data)
            items[item.id], faiss_of[item.id], item_of[faiss_id] = item, faiss_id, item.id
        self._view = CatalogView(items, faiss_of, item_of) if items else _EMPTY

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    # -- meta ---------------------------------------------------------------------------------------------

    def _meta(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _data_version_now(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    @property
    def seq(self) -> int:
        """Change sequence this process's view holds every change up to (it grows by one with every write)."""
        return self._seq

    @property
    def encoder_version(self) -> str | None:
        """Digest of the encoder that made the stored vectors (``None`` for an empty catalog)."""
        with self._lock:
            value = self._meta("encoder_version", "")
        return value or None

    # -- reads --------------------------------------------------------------------------------------------

    def view(self) -> CatalogView:
        """The items now, unchanged by later writes: read several facts from one view to have them agree."""
        return self._view

    def __len__(self) -> int:
        return len(self._view)

    def get(self, item_id: str) -> Item | None:
        """The item with this id, if present."""
        return self._view.get(item_id)

    def item_for_faiss_id(self, faiss_id: int) -> Item | None:
        """The live item stored under a FAISS id (``None`` for removed or replaced vectors)."""
        return self._view.item_for_faiss_id(faiss_id)

    def faiss_id(self, item_id: str) -> int | None:
        """The FAISS id of an item's current vector."""
        return self._view.faiss_id(item_id)

    def items(self) -> list[Item]:
        """All items, in id order."""
        return self._view.items()

    def live_faiss_ids(self) -> np.ndarray:
        """FAISS ids of every current vector."""
        return self._view.live_faiss_ids()

    def matching_faiss_ids(self, filters: Filters, exclude: Iterable[str] = ()) -> np.ndarray:
        """FAISS ids of items passing ``filters`` and not in ``exclude`` (for exact filtered search)."""
        return self._view.matching_faiss_ids(filters, exclude)

    def vectors(self, faiss_ids: Sequence[int]) -> np.ndarray:
        """Stored vectors for the given FAISS ids, in order (all must be live)."""
        out = np.zeros((len(faiss_ids), self.dim), dtype=np.float32)
        with self._lock:
            for row, fid in enumerate(faiss_ids):
                found = self._db.execute("SELECT vector FROM items WHERE faiss_id = ?", (int(fid),)).fetchone()
                if found is None:
                    raise KeyError(fid)
                out[row] = np.frombuffer(found[0], dtype=np.float32)
        return out

    def faiss_ids_written_since(self, seq: int) -> np.ndarray:
        """FAISS ids of the items written after change ``seq`` (upserted, or their vectors replaced in place)."""
        with self._lock:
            rows = self._db.execute("SELECT faiss_id FROM items WHERE seq > ?", (int(seq),)).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(faiss_ids, vectors)`` of every item, read in one pass."""
        with self._lock:
            rows = self._db.execute("SELECT faiss_id, vector FROM items ORDER BY faiss_id").fetchall()
        ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        matrix = np.zeros((len(rows), self.dim), dtype=np.float32)
        for row, (_, blob) in enumerate(rows):
            matrix[row] = np.frombuffer(blob, dtype=np.float32)
        return ids, matrix

    # -- writes -------------------------------------------------------------------------------------------

    def _changed(self, upserted: Sequence[tuple[Item, int]] = (), deleted: Sequence[str] = ()) -> None:
        """Swap in a new view with these changes (callers hold the lock); the old view stays as it was."""
        old = self._view
        items, faiss_of, item_of = dict(old.by_id), dict(old.faiss_of), dict(old.item_of)
        for item_id in deleted:
            fid = faiss_of.pop(item_id, None)
            items.pop(item_id, None)
            if fid is not None:
                item_of.pop(fid, None)
        for item, fid in upserted:
            previous = faiss_of.get(item.id)
            if previous is not None:
                item_of.pop(previous, None)
            items[item.id], faiss_of[item.id], item_of[fid] = item, fid, item.id
        self._view = CatalogView(items, faiss_of, item_of)

    def upsert(self, items: Sequence[Item], vectors: np.ndarray, encoder_version: str) -> tuple[list[int], list[int]]:
        """Insert or replace items with their vectors in one transaction.

        Args:
            items: Items to write.
            vectors: ``(len(items), dim)`` unit vectors.
            encoder_version: Digest of the encoder that made ``vectors``.

        Returns:
            ``(new_faiss_ids, replaced_faiss_ids)``: the ids now holding the vectors, and the ids whose
            vectors became stale.

        Raises:
            ValueError: The catalog's vectors come from another encoder.
        """
        if len(items) != len(vectors):
            raise ValueError("one vector per item is required")
        with self._lock:
            # Sequence, FAISS ids and the replaced vectors are read inside the write transaction: other processes
            # write this catalog too.
            with transaction(self._db):
                current = self._meta("encoder_version", "") or None
                if current is not None and current != encoder_version and self._count_rows():
                    raise ValueError(f"catalog vectors come from encoder {current}, not {encoder_version}")
                next_id = int(self._meta("next_faiss_id", "0"))
                seq = first = int(self._meta("seq", "0"))
                new_ids = list(range(next_id, next_id + len(items)))
                stored = self._stored_faiss_ids([i.id for i in items])
                faiss_of = self._view.faiss_of
                replaced = sorted(set(stored.values()) | {faiss_of[i.id] for i in items if i.id in faiss_of})
                for item, fid, vector in zip(items, new_ids, vectors, strict=True):
                    seq += 1
                    self._db.execute(
                        "INSERT INTO items(id, faiss_id, seq, data, vector) VALUES(?, ?, ?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET faiss_id = excluded.faiss_id, seq = excluded.seq, "
                        "data = excluded.data, vector = excluded.vector",
                        (
                            item.id,
                            fid,
                            seq,
                            json.dumps(item.to_dict(), ensure_ascii=False),
                            np.asarray(vector, dtype=np.float32).tobytes(),
                        ),
                    )
                self._removed(stored.values(), seq)
                self._set_meta("next_faiss_id", str(next_id + len(items)))
                self._set_meta("seq", str(seq))
                self._set_meta("encoder_version", encoder_version)
            self._advance(first, seq)
            self._changed(upserted=list(zip(items, new_ids, strict=True)))
        return new_ids, replaced

    def delete(self, item_id: str) -> int | None:
        """Delete an item; returns the FAISS id its vector had, or ``None`` if it was not there."""
        with self._lock:
            with transaction(self._db):
                fid = self._stored_faiss_ids([item_id]).get(item_id)
                if fid is None:
                    seq = None
                else:
                    seq = int(self._meta("seq", "0")) + 1
                    self._db.execute("DELETE FROM items WHERE id = ?", (item_id,))
                    self._removed([fid], seq)
                    self._set_meta("seq", str(seq))
            viewed = self._view.faiss_of.get(item_id)
            if seq is not None:
                self._advance(seq - 1, seq)
            if viewed is not None:  # also when another process deleted it first: this view forgets it now
                self._changed(deleted=[item_id])
        return fid

    def _count_rows(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def _stored_faiss_ids(self, item_ids: Sequence[str]) -> dict[str, int]:
        found = {}
        for item_id in item_ids:
            row = self._db.execute("SELECT faiss_id FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is not None:
                found[item_id] = int(row[0])
        return found

    def _removed(self, faiss_ids: Iterable[int], seq: int) -> None:
        """Record vectors that left the catalog, so other processes drop them from their indexes."""
        self._db.executemany(
            "INSERT INTO removed(faiss_id, seq) VALUES(?, ?) ON CONFLICT(faiss_id) DO UPDATE SET seq = excluded.seq",
            [(int(fid), seq) for fid in faiss_ids],
        )

    def _advance(self, before: int, after: int) -> None:
        """After this process's own write from sequence ``before`` to ``after``: move :attr:`seq` if no gap opens.

        When another process wrote in between, :attr:`seq` stays until :meth:`changes` brings those writes in.
        """
        if before == self._seq:
            self._seq = after

    def replace_vectors(self, vectors: dict[str, np.ndarray], encoder_version: str) -> int:
        """Swap in re-computed vectors (index rebuild) for the given items, keeping their FAISS ids.

        Items deleted meanwhile are skipped. Returns the change sequence after the write.
        """
        with self._lock:
            with transaction(self._db):
                seq = int(self._meta("seq", "0")) + 1
                for item_id, vector in vectors.items():
                    if item_id in self._view.by_id:
                        self._db.execute(
                            "UPDATE items SET vector = ?, seq = ? WHERE id = ?",
                            (np.asarray(vector, dtype=np.float32).tobytes(), seq, item_id),
                        )
                self._set_meta("encoder_version", encoder_version)
                self._set_meta("seq", str(seq))
            self._advance(seq - 1, seq)
        return seq

    def bump_index_generation(self) -> int:
        """Say that the index was rebuilt: other processes reopen the published snapshot."""
        with self._lock, transaction(self._db):
            generation = int(self._meta("index_generation", "0")) + 1
            self._set_meta("index_generation", str(generation))
        self.index_generation = generation
        return generation

    # -- other processes' writes ---------------------------------------------------------------------------

    def changes(self) -> CatalogChanges | None:
        """What other processes committed since this one last caught up, or ``None`` when nothing (one cheap query).

        Apply it to the index, then :meth:`catch_up`; until then this view keeps showing the catalog as it was.
        """
        with self._lock:
            data_version = self._data_version_now()
            if data_version == self._data_version:
                return None
            self._db.execute("BEGIN")  # one read snapshot for all of it
            try:
                seq = int(self._meta("seq", "0"))
                generation = int(self._meta("index_generation", "0"))
                rows = self._db.execute(
                    "SELECT faiss_id, data, vector FROM items WHERE seq > ?", (self._seq,)
                ).fetchall()
                removed = self._db.execute("SELECT faiss_id FROM removed WHERE seq > ?", (self._seq,)).fetchall()
                encoder_version = self._meta("encoder_version", "") or None
            finally:
                self._db.execute("COMMIT")
        written = [(_item_from_json(data), int(fid), np.frombuffer(blob, dtype=np.float32)) for fid, data, blob in rows]
        return CatalogChanges(seq, written, [int(r[0]) for r in removed], encoder_version, generation, data_version)

    def catch_up(self, changes: CatalogChanges) -> None:
        """Make the view hold ``changes`` (after the index does)."""
        with self._lock:
            view = self._view
            written = [(item, fid) for item, fid, _ in changes.written if view.faiss_of.get(item.id) != fid]
            written_ids = {item.id for item, _, _ in changes.written}
            gone = [
                item_id
                for fid in changes.removed
                if (item_id := view.item_of.get(fid)) is not None and item_id not in written_ids
            ]
            if written or gone:
                self._changed(upserted=written, deleted=gone)
            self._seq = max(self._seq, changes.seq)
            self._data_version = changes.data_version
            self.index_generation = changes.index_generation
