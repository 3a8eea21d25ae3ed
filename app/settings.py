"""Service settings: defaults, then an optional TOML file, then ``CANDOR_...`` environment variables.

Each knob is declared once, with its constraint and default: the retrieval core's sections live in
:mod:`retrieval.settings`, and this module adds the service's own sections and the keys only the service reads
(request limits, load policy, snapshot timing). ``configs/default.toml`` documents every knob and is checked
against these defaults by ``tests/unit/test_settings_sources.py``. One :class:`Settings` object is built at start
and handed to the app factory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from governance.audit import AuditConfig
from governance.drift import DriftConfig, parse_duration
from retrieval import settings as core
from retrieval.answers.local_model import LocalGeneratorConfig
from retrieval.encoder import EncoderConfig
from retrieval.engine import EngineConfig
from retrieval.registry import default_uri
from retrieval.settings import (
    BatchingSettings,
    EncoderSettings,
    OpenAISettings,
    RaySettings,
    ReaderSettings,
    RecommenderSettings,
    Section,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ServerSettings(Section):
    """``[server]``: the HTTP server."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=1048576, gt=0)
    request_read_timeout_s: float = Field(default=30.0, gt=0)
    keep_alive_timeout_s: int = Field(default=5, gt=0)
    switch_interval_ms: float = Field(default=0.5, gt=0, le=100)
    gc_freeze_after_start: bool = True
    gc_thresholds: tuple[int, int, int] | tuple[()] = (10000, 50, 100)
    workers: int = Field(default=0, ge=0, le=256)
    inference: Literal["replica", "shared"] = "replica"
    sync_interval_ms: float = Field(default=500.0, gt=0)


class PathSettings(Section):
    """``[paths]``: where state and the domain pack live."""

    state_dir: Path = Path("var")
    pack: Path = Path("data/demo")


class IndexSettings(core.IndexSettings):
    """``[index]``: the core's index knobs, and when the engine snapshots writes."""

    snapshot_delay_s: float = Field(default=2.0, ge=0)


class LimitSettings(Section):
    """``[limits]``: request limits; beyond them the caller gets a 4xx."""

    max_k: int = Field(default=100, gt=0)
    max_query_chars: int = Field(default=1000, gt=0)
    max_history: int = Field(default=500, gt=0)
    max_exclude: int = Field(default=1000, ge=0)
    max_item_text_chars: int = Field(default=20000, gt=0)
    max_json_depth: int = Field(default=32, gt=0, le=500)


class AuthSettings(Section):
    """``[auth]``: API keys."""

    bootstrap_keys: bool = True


class LoggingSettings(Section):
    """``[logging]``: structured logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    access_log: bool = True


class AuditSettings(Section):
    """``[audit]``: the audit log."""

    enabled: bool = True
    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = ""
    dsn: str = ""
    key_path: str = ""
    mode: Literal["sync", "async"] = "sync"
    async_max_loss_ms: float = Field(default=200.0, ge=0)
    checkpoint_every: int = Field(default=1000, ge=0)
    retention_days: int = Field(default=183, ge=183)
    batch_max: int = Field(default=256, gt=0)
    batch_wait_ms: float = Field(default=0.0, ge=0)
    max_queue: int = Field(default=10000, gt=0)
    busy_timeout_ms: int = Field(default=2000, ge=0)
    ig_steps: int = Field(default=32, gt=0, le=512)
    ig_top_k: int = Field(default=3, gt=0, le=20)
    ig_workers: int = Field(default=1, gt=0, le=16)
    ig_max_pending: int = Field(default=4, gt=0)
    ig_threads: int = Field(default=1, ge=0)
    ig_processes: int = Field(default=1, ge=0, le=16)
    report_workers: int = Field(default=1, gt=0, le=16)
    report_max_pending: int = Field(default=4, gt=0)
    report_processes: int = Field(default=1, ge=0, le=16)
    background_nice: int = Field(default=10, ge=0, le=19)
    review_confidence_below: float = Field(default=0.7, ge=0, le=1)
    max_text_chars: int = Field(default=4000, ge=64)


class DriftSettings(Section):
    """``[drift]``: live drift checks over the audit log (``candor audit drift``, ``GET /v1/reports/drift``)."""

    window: str = "24h"
    reference: str = "7d"
    sketch_dims: int = Field(default=16, ge=2, le=64)
    sketch_seed: int = Field(default=0, ge=0)
    max_records: int = Field(default=20000, gt=0)
    max_samples: int = Field(default=500, ge=10, le=5000)
    permutations: int = Field(default=200, ge=10, le=10000)
    seed: int = Field(default=0, ge=0)
    min_samples: int = Field(default=30, ge=2)
    psi_bins: int = Field(default=10, ge=2, le=100)
    max_segments: int = Field(default=20, ge=0, le=100)
    mmd_p_value_below: float = Field(default=0.01, gt=0, lt=1)
    psi_above: float = Field(default=0.2, gt=0)
    abstention_change_above: float = Field(default=0.1, gt=0, le=1)
    feedback_change_above: float = Field(default=0.1, gt=0)

    @field_validator("window", "reference")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    def to_config(self) -> DriftConfig:
        """The drift check's configuration."""
        return DriftConfig(**self.model_dump())


class KnowledgeSettings(core.KnowledgeSettings):
    """``[knowledge]``: the core's chunking, what the engine answers from, and the document API's limits."""

    answer_items: bool = True
    item_passage_chars: int = Field(default=1200, gt=0)
    min_document_passages: int = Field(default=2, ge=0)
    max_documents_per_request: int = Field(default=100, gt=0)
    max_document_chars: int = Field(default=50000, gt=0)


class AnswerSettings(core.AnswerSettings):
    """``[answers]``: the core's grounding settings, and the answer API's defaults and limits."""

    k_context: int = Field(default=4, gt=0)
    max_k_context: int = Field(default=10, gt=0)
    max_tokens: int = Field(default=128, gt=0)
    max_tokens_limit: int = Field(default=512, gt=0)
    max_question_chars: int = Field(default=500, gt=0)


class LocalGeneratorSettings(core.LocalGeneratorSettings):
    """``[generator.local]``: the core's model choice, and whether and when the service loads it."""

    enabled: bool = True
    load: Literal["lazy", "startup"] = "lazy"


class GeneratorSettings(Section):
    """``[generator]``: generative answer backends."""

    local: LocalGeneratorSettings = Field(default_factory=LocalGeneratorSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)


class ModelSettings(Section):
    """``[models]``: the model registry and the versions the service pins."""

    registry_uri: str = ""
    recommender: str = "production"
    encoder: str = "production"
    reader: str = "production"
    min_recommender_coverage: float = Field(default=0.5, ge=0, le=1)


class Settings(BaseSettings):
    """All of Candor's settings (``configs/default.toml`` says what each knob does)."""

    model_config = SettingsConfigDict(env_prefix="CANDOR_", env_nested_delimiter="__", extra="forbid", frozen=True)

    server: ServerSettings = Field(default_factory=ServerSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    recommender: RecommenderSettings = Field(default_factory=RecommenderSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    answers: AnswerSettings = Field(default_factory=AnswerSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    reader: ReaderSettings = Field(default_factory=ReaderSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    ray: RaySettings = Field(default_factory=RaySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables win over the merged TOML data (passed in as init values), which wins over defaults."""
        return (env_settings, init_settings)

    def resolve(self, path: Path) -> Path:
        """Resolve a configured path against the project folder."""
        return path if path.is_absolute() else PROJECT_ROOT / path

    def resolve_optional(self, path: str) -> str:
        """:meth:`resolve` for an optional path setting: empty stays empty (the built-in default)."""
        return str(self.resolve(Path(path))) if path else ""

    def encoder_config(self) -> EncoderConfig:
        """The encoder's configuration, its folder resolved against the project folder."""
        return replace(self.encoder.to_config(), path=self.resolve_optional(self.encoder.path))

    def local_generator_config(self) -> LocalGeneratorConfig:
        """The in-process LM's configuration, its paths resolved against the project folder."""
        local = self.generator.local
        return replace(
            local.to_config(), path=self.resolve_optional(local.path), cache_dir=self.resolve_optional(local.cache_dir)
        )

    @property
    def state_dir(self) -> Path:
        """Absolute state folder."""
        return self.resolve(self.paths.state_dir)

    @property
    def pack_path(self) -> Path:
        """Absolute domain pack folder."""
        return self.resolve(self.paths.pack)

    def digest(self) -> str:
        """SHA-256 of the effective settings (canonical JSON), recorded with every inference."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def audit_config(self) -> AuditConfig:
        """The audit log's configuration (empty paths resolve into the state folder)."""
        audit = self.audit
        return AuditConfig(
            backend=audit.backend,
            path=self.resolve(Path(audit.path)) if audit.path else self.state_dir / "audit.sqlite",
            dsn=audit.dsn,
            mode=audit.mode,
            async_max_loss_ms=audit.async_max_loss_ms,
            checkpoint_every=audit.checkpoint_every,
            retention_days=audit.retention_days,
            batch_max=audit.batch_max,
            batch_wait_ms=audit.batch_wait_ms,
            max_queue=audit.max_queue,
            busy_timeout_ms=audit.busy_timeout_ms,
            max_text_chars=audit.max_text_chars,
            key_path=self.resolve(Path(audit.key_path)) if audit.key_path else self.state_dir / "audit-signing-key.pem",
        )

    def engine_config(self, *, show_progress: bool = True) -> EngineConfig:
        """The retrieval engine's configuration."""
        return EngineConfig(
            state_dir=self.state_dir,
            pack_path=self.pack_path,
            encoder=self.encoder_config(),
            encoder_batching=self.batching.encoder.to_config(),
            search_batching=self.batching.index.to_config(),
            index=self.index.to_config(),
            recommender=self.recommender.to_config(),
            snapshot_delay_s=self.index.snapshot_delay_s,
            show_progress=show_progress,
            chunking=self.knowledge.to_config(),
            answer_items=self.knowledge.answer_items,
            item_passage_chars=self.knowledge.item_passage_chars,
            min_document_passages=self.knowledge.min_document_passages,
            min_recommender_coverage=self.models.min_recommender_coverage,
            recommender_model=None,
        )

    @property
    def registry_uri(self) -> str:
        """The model registry's URI: ``[models] registry_uri``, or a file store under the state folder."""
        return self.models.registry_uri or default_uri(self.state_dir)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings.

    Args:
        config_file: A TOML file merged over the defaults (default: ``$CANDOR_CONFIG`` if set).
        overrides: Values merged last among files (tests use this); environment variables still win.

    Returns:
        The validated settings.

    Raises:
        FileNotFoundError: The config file does not exist.
        pydantic.ValidationError: A value is invalid.
    """
    data: dict[str, Any] = {}
    chosen = config_file or os.environ.get("CANDOR_CONFIG")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    if overrides:
        data = _deep_merge(data, overrides)
    return Settings(**data)
