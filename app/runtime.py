"""Process-wide tuning that only ``candor serve`` applies (tests and embedders keep Python's defaults)."""

from __future__ import annotations

import gc
import sys

import structlog

from app.settings import ServerSettings

logger = structlog.get_logger(__name__)


def tune_interpreter(server: ServerSettings) -> None:
    """Set the GIL switch interval, at start.

    The batch workers drop the GIL inside the model and must take it back while the event loop runs Python; at
    Python's default 5 ms each retake could stall a batch that long.
    """
    sys.setswitchinterval(server.switch_interval_ms / 1000.0)


def tune_gc(server: ServerSettings) -> None:
    """Once the models and the catalog are loaded: freeze them out of the collector and raise its thresholds.

    Startup leaves about half a million long-lived objects (models, tokenizer, catalog, caches). Every full
    collection walked them all, about 100-230 ms with the GIL held, several times a minute under load; with them
    frozen and the thresholds raised, collections under load are rare and short. Frozen objects are still freed
    by reference counting; only reference cycles among them are never collected.
    """
    if server.gc_freeze_after_start:
        gc.collect()
        gc.freeze()
    if server.gc_thresholds:
        gc.set_threshold(*server.gc_thresholds)
    logger.info("gc_tuned", frozen=gc.get_freeze_count(), thresholds=gc.get_threshold())
