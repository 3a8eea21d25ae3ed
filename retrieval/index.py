"""FAISS vector index with int64 ids, and its on-disk snapshots.

``VectorIndex`` wraps an ``IndexIDMap2`` over Flat (exact, the default), HNSW or IVF, with a lock around every
call so searches never see a half-applied write. Snapshots are written whole into a new folder, fsynced, and
published by atomically replacing a ``CURRENT`` pointer, so a crash leaves either the old or the new snapshot,
never a torn one. Snapshots open memory-mapped; the first write copies the index into memory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import faiss as _faiss_module
import numpy as np
import structlog

from retrieval.errors import IndexStoreError
from retrieval.locks import file_lock

# The stubs shipped with faiss-cpu miss most of the SWIG API (DirectMap, SearchParametersHNSW, id_map, ...).
faiss: Any = _faiss_module

logger = structlog.get_logger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf"]
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
KEEP_SNAPSHOTS = 2


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """Which FAISS structure to build and how to search it (``[index]`` in the config).

    Attributes:
        kind: ``flat`` (exact; small and medium catalogs), ``hnsw`` or ``ivf`` (approximate; large catalogs).
        hnsw_m: HNSW graph degree.
        hnsw_ef_construction: HNSW build-time beam width.
        hnsw_ef_search: HNSW search beam width.
        ivf_nlist: IVF cell count (0: about 4 * sqrt(n), at least 39 training vectors per cell).
        ivf_nprobe: IVF cells visited per query.
        ivf_train_sample: Most vectors IVF's k-means trains on, drawn at random (0: all of them).
        ivf_train_seed: Seed of that draw, so a rebuild of the same catalog trains the same cells.
        threads: OpenMP threads FAISS may use.
        blas_threshold: Query count from which flat search switches to BLAS (FAISS's default is 20 at 384-d,
            via ``distance_compute_blas_threshold``; batched search wants it low).
    """

    kind: IndexKind
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    ivf_nlist: int
    ivf_nprobe: int
    ivf_train_sample: int
    ivf_train_seed: int
    threads: int
    blas_threshold: int


def configure_faiss(spec: IndexSpec) -> None:
    """Apply FAISS's process-wide setting, the BLAS threshold.

    Threads are per calling thread in OpenMP, so :class:`VectorIndex` applies ``spec.threads`` in every thread
    that calls into FAISS.
    """
    faiss.cvar.distance_compute_blas_threshold = max(1, spec.blas_threshold)


_thread_limit = threading.local()


def limit_threads(threads: int) -> None:
    """Cap the OpenMP threads FAISS (and its BLAS) may use for calls made from the calling thread.

    OpenMP keeps this setting per thread: one made on the main thread does not reach the batch worker that runs
    the searches, which would otherwise fan every search out to one spinning thread per core.
    """
    threads = max(1, threads)
    if getattr(_thread_limit, "threads", None) != threads:
        faiss.omp_set_num_threads(threads)
        _thread_limit.threads = threads


def _as_ids(ids: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def _as_matrix(vectors: Any, dim: int) -> np.ndarray:
    matrix = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got {matrix.shape[1]}")
    return matrix


def training_sample(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most ``size`` rows of ``vectors`` drawn without replacement by ``seed`` (all rows when ``size`` is 0).

    Rows keep their original order, so the sample depends only on the vectors, the size and the seed.
    """
    if size <= 0 or len(vectors) <= size:
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=size, replace=False))
    return np.ascontiguousarray(vectors[rows])


class VectorIndex:
    """A thread-safe FAISS index over inner product (cosine, for unit vectors) with int64 ids."""

    def __init__(self, index: Any, spec: IndexSpec, *, mmapped: bool = False) -> None:
        self._index = index
        self.spec = spec
        self.dim = int(index.d)
        self._mmapped = mmapped
        self._lock = threading.Lock()
        self._tune(index)
        self.kind = self._kind_of(index)

    # -- construction ---------------------------------------------------------------------------------------

    @classmethod
    def build(cls, dim: int, spec: IndexSpec, ids: Any, vectors: Any) -> VectorIndex:
        """Build a new index of ``spec.kind`` holding ``vectors`` under ``ids``."""
        limit_threads(spec.threads)
        ids_arr = _as_ids(ids)
        matrix = _as_matrix(vectors, dim) if len(ids_arr) else np.zeros((0, dim), dtype=np.float32)
        inner: Any
        if spec.kind == "flat":
            inner = faiss.IndexFlatIP(dim)
        elif spec.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = spec.hnsw_ef_construction
        elif spec.kind == "ivf":
            n = len(ids_arr)
            if n == 0:
                raise IndexStoreError("an IVF index needs vectors to train on; build it from a non-empty catalog")
            sample = training_sample(matrix, spec.ivf_train_sample, spec.ivf_train_seed)
            nlist = spec.ivf_nlist or max(1, int(4 * math.sqrt(n)))
            nlist = max(1, min(nlist, len(sample) // 39 if len(sample) >= 39 else 1))
            inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            inner.train(sample)
            inner.make_direct_map(True)
        else:
            raise IndexStoreError(f"unknown index kind {spec.kind!r}")
        index = faiss.IndexIDMap2(inner)
        if len(ids_arr):
            index.add_with_ids(matrix, ids_arr)
        return cls(index, spec)

    @classmethod
    def from_bytes(cls, blob: np.ndarray, spec: IndexSpec) -> VectorIndex:
        """Restore an index serialised with :meth:`to_bytes`."""
        return cls(faiss.deserialize_index(blob), spec)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its serialised bytes (the lock and the SWIG object cannot be): sharded evaluation sends the
        # index to Ray tasks this way.
        return (VectorIndex.from_bytes, (self.to_bytes()[0], self.spec))

    @classmethod
    def read(cls, path: Path, spec: IndexSpec, *, mmap: bool = True) -> VectorIndex:
        """Open an index file, memory-mapped by default (read-only until the first write)."""
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise IndexStoreError(f"cannot read index {path}: {exc}") from exc
        return cls(index, spec, mmapped=mmap)

    def _tune(self, index: Any) -> None:
        inner = faiss.downcast_index(faiss.downcast_index(index).index)
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = self.spec.hnsw_ef_search
        elif isinstance(inner, faiss.IndexIVF):
            inner.nprobe = self.spec.ivf_nprobe
            if inner.direct_map.type == faiss.DirectMap.NoMap:
                inner.make_direct_map(True)

    @staticmethod
    def _kind_of(index: Any) -> str:
        """The kind of the inner structure (``flat``, ``hnsw`` or ``ivf``)."""
        inner = faiss.downcast_index(faiss.downcast_index(index).index)
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(inner, faiss.IndexIVF):
            return "ivf"
        return "flat"

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the index lock, with the calling thread's FAISS threads capped at ``spec.threads``."""
        with self._lock:
            limit_threads(self.spec.threads)
            yield

    @property
    def ntotal(self) -> int:
        """Number of vectors stored."""
        return int(self._index.ntotal)

    def _writable(self) -> Any:
        """Copy a memory-mapped index into memory before its first change (the mapping is read-only)."""
        if self._mmapped:
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
            self._tune(self._index)
            self._mmapped = False
        return self._index

    # -- reads and writes -------------------------------------------------------------------------------------

    def add(self, ids: Any, vectors: Any) -> None:
        """Add vectors under new ids (callers guarantee the ids are not present)."""
        ids_arr = _as_ids(ids)
        if len(ids_arr) == 0:
            return
        matrix = _as_matrix(vectors, self.dim)
        with self._exclusive():
            self._writable().add_with_ids(matrix, ids_arr)

    def remove(self, ids: Any) -> int:
        """Remove ids; unknown ids are ignored. Returns how many were removed.

        Only flat indexes remove physically; HNSW cannot, and IVF's id map cannot through ``IndexIDMap2``.
        For those, removed ids stay stored and callers drop them from results until the next rebuild.
        """
        ids_arr = _as_ids(ids)
        if len(ids_arr) == 0 or self.kind != "flat":
            return 0
        with self._exclusive():
            return int(self._writable().remove_ids(faiss.IDSelectorBatch(ids_arr)))

    def search(self, queries: Any, k: int, allowed_ids: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner-product search for a batch of queries.

        Args:
            queries: ``(n, dim)`` float32 query vectors.
            k: Results per query.
            allowed_ids: When given, only these ids may be returned (exact filtered search).

        Returns:
            ``(scores, ids)``, each ``(n, k)``; missing results have id ``-1``.
        """
        matrix = _as_matrix(queries, self.dim)
        k = max(1, k)
        params = None
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(_as_ids(allowed_ids))
            kind = self.kind
            if kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.spec.hnsw_ef_search, k))
            elif kind == "ivf":
                params = faiss.SearchParametersIVF(sel=selector, nprobe=self.spec.ivf_nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)
        with self._exclusive():
            scores, ids = self._index.search(matrix, k, params=params)
        return scores, ids

    def reconstruct(self, ids: Any) -> np.ndarray:
        """Stored vectors for ``ids`` (all must be present)."""
        ids_arr = _as_ids(ids)
        if len(ids_arr) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._exclusive():
            return np.asarray(self._index.reconstruct_batch(ids_arr), dtype=np.float32)

    def reconstruct_present(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors of those ``ids`` still present, in one step against concurrent removals.

        A search reads ids, awaits, then reconstructs; a delete in between removed some of them, which made
        :meth:`reconstruct` raise. Here the check and the read happen under the same lock.

        Returns:
            ``(vectors, present)``: ``(m, dim)`` vectors of the present ids in order, and a boolean mask over ``ids``.
        """
        ids_arr = _as_ids(ids)
        present = np.ones(len(ids_arr), dtype=bool)
        if len(ids_arr) == 0:
            return np.zeros((0, self.dim), dtype=np.float32), present
        with self._exclusive():
            try:
                return np.asarray(self._index.reconstruct_batch(ids_arr), dtype=np.float32), present
            except RuntimeError:  # some id is gone: read them one by one
                rows = []
                for n, fid in enumerate(ids_arr.tolist()):
                    try:
                        rows.append(np.asarray(self._index.reconstruct(fid), dtype=np.float32))
                    except RuntimeError:
                        present[n] = False
        vectors = np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)
        return vectors, present

    def ids(self) -> np.ndarray:
        """All ids stored."""
        with self._exclusive():
            return np.asarray(faiss.vector_to_array(faiss.downcast_index(self._index).id_map), dtype=np.int64)

    def to_bytes(self) -> tuple[np.ndarray, int]:
        """Serialise the whole index; returns the bytes and the vector count they hold (taken together)."""
        with self._exclusive():
            return faiss.serialize_index(self._index), int(self._index.ntotal)


@dataclass(frozen=True, slots=True)
class SnapshotManifest:
    """What a snapshot holds.

    Attributes:
        version: Unique snapshot name (``<unix ms>-<seq>``).
        seq: Catalog change sequence the snapshot includes.
        encoder_version: Digest of the encoder that made the vectors.
        kind: Index kind.
        count: Vectors stored.
        dim: Vector dimension.
        created: Unix time of writing.
    """

    version: str
    seq: int
    encoder_version: str
    kind: str
    count: int
    dim: int
    created: float


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class SnapshotStore:
    """Snapshots of one index under ``root`` (``snapshots/<version>/`` plus a ``CURRENT`` pointer)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._snapshots = self.root / "snapshots"
        self._write_lock = threading.Lock()

    def current(self) -> SnapshotManifest | None:
        """Manifest of the published snapshot, or ``None`` if there is none.

        Raises:
            IndexStoreError: ``CURRENT`` points at a missing or unreadable snapshot.
        """
        pointer = self.root / CURRENT_FILE
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        manifest_path = self._snapshots / name / MANIFEST_FILE
        try:
            return SnapshotManifest(**json.loads(manifest_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise IndexStoreError(f"snapshot {name!r} is unreadable: {exc}") from exc

    def load(self, spec: IndexSpec, *, mmap: bool = True) -> tuple[VectorIndex, SnapshotManifest] | None:
        """Open the published snapshot, or return ``None`` if there is none.

        Under the folder's lock: another process publishing meanwhile could prune the snapshot being opened.
        """
        with file_lock(self.root / ".lock"):
            manifest = self.current()
            if manifest is None:
                return None
            index = VectorIndex.read(self._snapshots / manifest.version / INDEX_FILE, spec, mmap=mmap)
        if index.ntotal != manifest.count or index.dim != manifest.dim:
            raise IndexStoreError(f"snapshot {manifest.version} does not match its manifest")
        return index, manifest

    def save(self, index: VectorIndex, *, seq: int, encoder_version: str) -> SnapshotManifest:
        """Write ``index`` as a new snapshot and publish it atomically.

        Args:
            index: The index to persist (serialised under its lock, so writers may continue meanwhile).
            seq: Catalog change sequence the index reflects.
            encoder_version: Digest of the encoder that made the vectors.

        Returns:
            The new snapshot's manifest.
        """
        blob, count = index.to_bytes()
        # Processes sharing the folder (workers, replicas on one host) publish and prune one at a time.
        with self._write_lock, file_lock(self.root / ".lock"):
            manifest = SnapshotManifest(
                version=f"{int(time.time() * 1000)}-{seq}",
                seq=seq,
                encoder_version=encoder_version,
                kind=index.kind,
                count=count,
                dim=index.dim,
                created=time.time(),
            )
            folder = self._snapshots / manifest.version
            staging = self._snapshots / f".{manifest.version}.tmp"
            staging.mkdir(parents=True, exist_ok=False)
            _write_durably(staging / INDEX_FILE, blob.tobytes())
            _write_durably(staging / MANIFEST_FILE, json.dumps(asdict(manifest), indent=2).encode())
            _fsync_dir(staging)
            staging.rename(folder)
            _fsync_dir(self._snapshots)
            pointer_tmp = self.root / f".{CURRENT_FILE}.tmp"
            _write_durably(pointer_tmp, manifest.version.encode())
            pointer_tmp.replace(self.root / CURRENT_FILE)
            _fsync_dir(self.root)
            self._prune(keep=manifest.version)
        logger.info("index_snapshot_saved", version=manifest.version, count=manifest.count, kind=manifest.kind)
        return manifest

    def _prune(self, keep: str) -> None:
        """Delete all but the newest snapshots and any staging leftovers from a crash."""
        entries = sorted(p for p in self._snapshots.iterdir() if p.is_dir())
        finished = [p for p in entries if not p.name.startswith(".")]
        stale = [p for p in entries if p.name.startswith(".")]
        stale += [p for p in finished[:-KEEP_SNAPSHOTS] if p.name != keep]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
