"""Corpus embeddings cached on disk by (model hash, corpus hash).

Embedding SciFact's 5,183 abstracts takes minutes on a CPU; a second run of the same model over the same corpus
reads the vectors back instead. The key also holds what changes vectors for the same weights (dtype, token limit,
batch size: padding changes the last bits), so vectors made differently are never mixed up. Entries are written
to a temporary file and renamed, so a crash never leaves a torn entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class TextEncoder(Protocol):
    """What the cache needs from an encoder (``retrieval.encoder.Encoder`` fits)."""

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        ...

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Unit vectors for ``texts``, in order."""
        ...


def corpus_hash(ids: Sequence[str], texts: Sequence[str]) -> str:
    """SHA-256 over the ids and texts, in order."""
    digest = hashlib.sha256()
    for doc_id, text in zip(ids, texts, strict=True):
        digest.update(doc_id.encode("utf-8"))
        digest.update(b"\0")
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True, slots=True)
class CacheOutcome:
    """How a corpus was embedded: from the cache or freshly."""

    hit: bool
    path: str
    model_key: str
    corpus_hash: str
    count: int

    def to_json(self) -> dict[str, Any]:
        """As reported in ``results.json``."""
        return {
            "hit": self.hit,
            "path": self.path,
            "model_key": self.model_key,
            "corpus_hash": self.corpus_hash,
            "count": self.count,
        }


class EmbeddingCache:
    """Embeddings on disk under ``root/<model hash>/<corpus hash>-<settings>.npy``.

    Args:
        root: Cache folder (``var/evals/cache`` by default).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def model_key(version: str, dtype: str, max_seq_length: int, batch_size: int) -> str:
        """The part of the key describing how vectors are made."""
        return f"{version}|{dtype}|seq{max_seq_length}|bs{batch_size}"

    def _path(self, model_key: str, chash: str) -> Path:
        version = model_key.split("|", 1)[0].replace("sha256:", "")
        settings = hashlib.sha256(model_key.encode()).hexdigest()[:12]
        return self.root / version / f"{chash.replace('sha256:', '')[:32]}-{settings}.npy"

    def embed(
        self,
        encoder: TextEncoder,
        model_key: str,
        ids: Sequence[str],
        texts: Sequence[str],
        *,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, CacheOutcome]:
        """Vectors for ``texts``: read from the cache, or encoded and stored.

        Args:
            encoder: Encodes on a miss.
            model_key: From :meth:`model_key`.
            ids: Document ids (part of the corpus hash).
            texts: Texts to embed.
            batch_size: Texts per forward pass on a miss.
            progress: Called with texts finished (once with all of them on a hit).

        Returns:
            The ``(len(texts), dim)`` vectors and how they were obtained.
        """
        chash = corpus_hash(ids, texts)
        path = self._path(model_key, chash)
        meta_path = path.with_suffix(".json")
        if path.is_file() and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                vectors = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                meta, vectors = {}, None
            ok = vectors is not None and meta.get("corpus_hash") == chash and meta.get("model_key") == model_key
            if ok and vectors is not None and vectors.shape == (len(texts), encoder.dim):
                if progress is not None:
                    progress(len(texts))
                return vectors, CacheOutcome(True, str(path), model_key, chash, len(texts))
        vectors = encoder.encode(texts, batch_size=batch_size, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            np.save(handle, vectors, allow_pickle=False)
        os.replace(tmp, path)
        meta = {"model_key": model_key, "corpus_hash": chash, "count": len(texts), "dim": int(vectors.shape[1])}
        tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(tmp_meta, meta_path)
        return vectors, CacheOutcome(False, str(path), model_key, chash, len(texts))
