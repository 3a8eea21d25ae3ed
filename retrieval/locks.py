"""An exclusive lock on a file, held across processes (``flock``): several processes sharing one state folder.

``candor serve --workers N`` and replicas on one host open, snapshot and publish one state folder; what must not
run in two of them at once (seeding the catalog on first start, writing and pruning snapshots) runs under it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) until the block ends; blocks while another holds it.

    ``flock`` locks belong to the open file, so two threads of one process exclude each other too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the file releases its lock
