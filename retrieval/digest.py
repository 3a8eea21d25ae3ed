"""SHA-256 digests of files and folders, written ``sha256:<hex>`` wherever Candor names content by its hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_BLOCK = 1 << 20


def _feed(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)


def tagged(hexdigest: str, length: int | None = None) -> str:
    """``sha256:`` and the hex digest, cut to ``length`` characters when given."""
    return "sha256:" + (hexdigest[:length] if length else hexdigest)


def file_sha256(path: str | Path, length: int | None = None) -> str:
    """The digest of one file's bytes, as ``sha256:<hex>`` (the first ``length`` hex characters when given)."""
    digest = hashlib.sha256()
    _feed(digest, Path(path))
    return tagged(digest.hexdigest(), length)


def tree_sha256(root: str | Path, files: Iterable[Path], length: int | None = None) -> str:
    """The digest of several files under ``root``: each file's path relative to ``root``, then its bytes.

    Files are taken in sorted order, so the same files give the same digest however they were listed.
    """
    base = Path(root)
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        digest.update(str(path.relative_to(base)).encode())
        _feed(digest, path)
    return tagged(digest.hexdigest(), length)
