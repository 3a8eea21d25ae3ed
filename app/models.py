"""Trained models in the service: the registry, the versions the settings pin, and putting them into service.

``[models]`` pins each kind to an alias (``production``), a version number, or nothing. At start and on
``POST /v1/admin/reload`` the pins are resolved against the registry; a kind with no such version serves without a
trained model (content similarity for history recommendations, the ``[encoder]`` model for texts, the ``[reader]``
folder or whole-sentence extractive answers).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import structlog

from app.settings import Settings
from retrieval.answers import AnswerService
from retrieval.answers.reading import ReaderBackend
from retrieval.batcher import BatchObserver
from retrieval.encoder import Encoder, EncoderConfig
from retrieval.engine import EngineConfig, RetrievalEngine
from retrieval.errors import BackendUnavailableError
from retrieval.reader import ReaderConfig
from retrieval.registry import ModelKind, ModelRegistry, ModelVersion, RegistryError

logger = structlog.get_logger(__name__)


def open_registry(settings: Settings, *, create: bool = False) -> ModelRegistry | None:
    """The configured registry; ``None`` for a local store that does not exist yet (nothing was ever registered).

    Args:
        settings: The effective settings.
        create: Open (and create) a local store even if it does not exist yet (training and the CLI).
    """
    uri = settings.registry_uri
    parsed = urlparse(uri)
    if parsed.scheme == "file" and not create and not Path(unquote(parsed.path)).is_dir():
        return None
    return ModelRegistry(uri, settings.state_dir / "models")


def pinned(registry: ModelRegistry | None, kind: ModelKind, pin: str) -> ModelVersion | None:
    """The version a pin names, or ``None`` when the pin is empty or the registry has no such version."""
    if registry is None or not pin:
        return None
    try:
        return registry.get(kind, pin)
    except RegistryError as exc:
        logger.debug("no_pinned_model", kind=kind, pin=pin, reason=str(exc))
        return None


def encoder_config(settings: Settings, registry: ModelRegistry | None) -> tuple[EncoderConfig, ModelVersion | None]:
    """The encoder to load: the pinned registry version's folder, or the ``[encoder]`` model."""
    config = settings.encoder_config()
    version = pinned(registry, "encoder", settings.models.encoder)
    if version is None:
        return config, None
    return replace(
        config, path=str(registry.local_path(version)) if registry else config.path, name=version.ref
    ), version


def reader_config(
    settings: Settings, registry: ModelRegistry | None
) -> tuple[ReaderConfig | None, ModelVersion | None]:
    """The reader to load: the pinned registry version's folder, the ``[reader]`` folder, or none."""
    version = pinned(registry, "reader", settings.models.reader)
    if version is not None and registry is not None:
        return settings.reader.to_config(str(registry.local_path(version)), version.ref), version
    if settings.reader.path:
        return settings.reader.to_config(settings.resolve_optional(settings.reader.path)), None
    return None, None


def reader_backend(
    settings: Settings, config: ReaderConfig | None, version: ModelVersion | None, observer: BatchObserver | None
) -> ReaderBackend | None:
    """A reader behind its batcher (``[batching.reader]``), or ``None`` without a reader."""
    if config is None:
        return None
    return ReaderBackend(
        config, settings.batching.reader.to_config(), observer=observer, version=version.ref if version else None
    )


def pinned_engine_config(
    settings: Settings, *, show_progress: bool, encoder: Encoder | None = None
) -> tuple[ServingModels, EngineConfig]:
    """The engine's configuration with the pinned versions in it, and which versions those are.

    Args:
        settings: The effective settings.
        show_progress: Draw progress bars while embedding.
        encoder: An encoder the caller already loaded (tests): no encoder pin is applied then.
    """
    registry = open_registry(settings)
    serving = ServingModels()
    config = settings.engine_config(show_progress=show_progress)
    if encoder is None:
        encoder_cfg, serving.encoder = encoder_config(settings, registry)
        config = replace(config, encoder=encoder_cfg)
    serving.recommender = pinned(registry, "recommender", settings.models.recommender)
    serving.reader_config, serving.reader = reader_config(settings, registry)
    if registry is not None and serving.recommender is not None:
        config = replace(config, recommender_model=(registry.local_path(serving.recommender), serving.recommender.ref))
    return serving, config


@dataclass(slots=True)
class ServingModels:
    """The registry versions the service serves (``None``: no trained model of that kind)."""

    encoder: ModelVersion | None = None
    recommender: ModelVersion | None = None
    reader: ModelVersion | None = None
    reader_config: ReaderConfig | None = None

    def describe(self) -> dict[str, Any]:
        """``{kind: version ref or None}``, for ``/v1/info``."""
        return {
            "encoder": self.encoder.ref if self.encoder else None,
            "recommender": self.recommender.ref if self.recommender else None,
            "reader": self.reader.ref if self.reader else None,
        }


async def apply_recommender(settings: Settings, engine: RetrievalEngine, serving: ServingModels) -> dict[str, Any]:
    """Resolve the recommender pin and put that version into service if it is not serving already.

    Returns:
        ``{"kind": "recommender", "changed": bool, "from": ref, "to": ref}``.

    Raises:
        RegistryError: The registry cannot be read.
        ValueError: The pinned version cannot serve this catalog.
    """
    registry = await asyncio.to_thread(open_registry, settings)
    wanted = await asyncio.to_thread(pinned, registry, "recommender", settings.models.recommender)
    before = serving.recommender.ref if serving.recommender else None
    after = wanted.ref if wanted else None
    if before == after:
        return {"kind": "recommender", "changed": False, "from": before, "to": after}
    folder = await asyncio.to_thread(registry.local_path, wanted) if registry and wanted else None
    await engine.use_recommender(folder, after)
    serving.recommender = wanted
    logger.info("recommender_swapped", previous=before, current=after)
    return {"kind": "recommender", "changed": True, "from": before, "to": after}


async def apply_encoder(settings: Settings, engine: RetrievalEngine, serving: ServingModels) -> dict[str, Any]:
    """Resolve the encoder pin and swap that version in if it is not serving already (the catalog is re-embedded).

    Returns:
        ``{"kind": "encoder", "changed": bool, "from": ref, "to": ref}``.

    Raises:
        RegistryError: The registry cannot be read.
        ValueError: The pinned encoder cannot serve this index.
    """
    registry = await asyncio.to_thread(open_registry, settings)
    config, wanted = await asyncio.to_thread(encoder_config, settings, registry)
    before = serving.encoder.ref if serving.encoder else None
    after = wanted.ref if wanted else None
    if before == after:
        return {"kind": "encoder", "changed": False, "from": before, "to": after}
    await engine.swap_encoder(config)
    serving.encoder = wanted
    logger.info("encoder_swapped", previous=before, current=after)
    return {"kind": "encoder", "changed": True, "from": before, "to": after}


async def apply_reader(settings: Settings, answers: AnswerService, serving: ServingModels) -> dict[str, Any]:
    """Resolve the reader pin and swap that version in if it is not serving already.

    The new reader loads beside the serving one; answers started on the old one finish on it.

    Returns:
        ``{"kind": "reader", "changed": bool, "from": ref, "to": ref}``.

    Raises:
        RegistryError: The registry cannot be read.
        ValueError: The pinned reader cannot load.
    """
    registry = await asyncio.to_thread(open_registry, settings)
    config, wanted = await asyncio.to_thread(reader_config, settings, registry)
    before = serving.reader.ref if serving.reader else None
    after = wanted.ref if wanted else None
    if before == after and config == serving.reader_config:
        return {"kind": "reader", "changed": False, "from": before, "to": after}
    backend = reader_backend(settings, config, wanted, None)
    if backend is not None:
        try:
            await backend.start()
        except BackendUnavailableError as exc:
            raise ValueError(f"the pinned reader {after or ''} cannot load: {exc.reason}") from exc
    old, answers.reader = answers.reader, backend
    serving.reader, serving.reader_config = wanted, config
    if old is not None:
        await old.stop()
    logger.info("reader_swapped", previous=before, current=after)
    return {"kind": "reader", "changed": True, "from": before, "to": after}


RELOAD_LOCK = asyncio.Lock()
"""Held while a process resolves the pins and swaps models: one reload at a time, from the route or a follower."""


async def apply_pins(
    settings: Settings, engine: RetrievalEngine, answers: AnswerService, serving: ServingModels
) -> list[dict[str, Any]]:
    """Resolve the ``[models]`` pins again and swap in each kind that changed: encoder, recommender, reader.

    Returns:
        One ``{"kind", "changed", "from", "to"}`` per kind.

    Raises:
        RegistryError: The registry cannot be read.
        ValueError: A pinned version cannot serve this catalog (the old one keeps serving).
    """
    async with RELOAD_LOCK:
        encoder = await apply_encoder(settings, engine, serving)
        recommender = await apply_recommender(settings, engine, serving)
        reader = await apply_reader(settings, answers, serving)
    return [encoder, recommender, reader]
