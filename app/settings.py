"""Service settings: ``configs/default.toml``, then an optional file, then ``CANDOR_...`` environment variables.

``configs/default.toml`` holds every knob (the models here declare no defaults of their own, so the file is the
one place a default lives). One :class:`Settings` object is built at start and handed to the app factory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from governance.audit.log import AuditConfig
from retrieval.answers import AnswerConfig
from retrieval.answers.grounding import ExtractiveConfig, SupportConfig
from retrieval.answers.local_model import LocalGeneratorConfig
from retrieval.answers.remote import OpenAIConfig
from retrieval.batcher import BatcherConfig
from retrieval.encoder import Device, EncoderConfig
from retrieval.engine import EngineConfig
from retrieval.index import IndexKind, IndexSpec
from retrieval.knowledge import ChunkingConfig
from retrieval.recommend import RecommenderConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    """HTTP server."""

    host: str
    port: int = Field(ge=0, le=65535)
    max_body_bytes: int = Field(gt=0)
    switch_interval_ms: float = Field(gt=0, le=100)
    gc_freeze_after_start: bool
    gc_thresholds: tuple[int, int, int] | tuple[()] = ()


class PathSettings(_Section):
    """Where state and the domain pack live."""

    state_dir: Path
    pack: Path


class EncoderSettings(_Section):
    """Which encoder to load."""

    name: str
    path: str
    device: Device
    threads: int = Field(ge=0)
    workers: int = Field(ge=0)
    max_seq_length: int = Field(ge=0)
    bulk_batch_size: int = Field(gt=0)
    trace: bool
    packed: bool


class BatcherSettings(_Section):
    """One model's dynamic batching knobs."""

    max_batch_size: int = Field(gt=0)
    max_batch_tokens: int = Field(gt=0)
    max_wait_ms: float = Field(ge=0)
    max_queue: int = Field(gt=0)
    queue_timeout_ms: float = Field(ge=0)
    batch_overhead_tokens: int = Field(ge=0)

    def to_config(self) -> BatcherConfig:
        """As the retrieval core's batcher config."""
        return BatcherConfig(**self.model_dump())


class BatchingSettings(_Section):
    """Batchers per model."""

    encoder: BatcherSettings
    index: BatcherSettings
    generator: BatcherSettings


class IndexSettings(_Section):
    """FAISS index."""

    kind: IndexKind
    hnsw_m: int = Field(gt=0)
    hnsw_ef_construction: int = Field(gt=0)
    hnsw_ef_search: int = Field(gt=0)
    ivf_nlist: int = Field(ge=0)
    ivf_nprobe: int = Field(gt=0)
    threads: int = Field(gt=0)
    blas_threshold: int = Field(gt=0)
    snapshot_delay_s: float = Field(ge=0)


class RecommenderSettings(_Section):
    """Recommender knobs."""

    half_life_days: float = Field(ge=0)
    rating_neutral: float = Field(ge=1, lt=5)
    max_history: int = Field(gt=0)
    seed_items: int = Field(ge=0)
    candidate_factor: int = Field(gt=0)
    event_weights: dict[str, float]


class LimitSettings(_Section):
    """Request limits; beyond them the caller gets a 4xx."""

    max_k: int = Field(gt=0)
    max_query_chars: int = Field(gt=0)
    max_history: int = Field(gt=0)
    max_exclude: int = Field(ge=0)
    max_item_text_chars: int = Field(gt=0)


class AuthSettings(_Section):
    """API keys."""

    bootstrap_keys: bool


class LoggingSettings(_Section):
    """Structured logging."""

    level: Literal["debug", "info", "warning", "error"]
    format: Literal["json", "console"]
    access_log: bool


class AuditSettings(_Section):
    """Audit log (see ``[audit]`` in ``configs/default.toml``)."""

    enabled: bool
    backend: Literal["sqlite", "postgres"]
    path: str
    dsn: str
    key_path: str
    mode: Literal["sync", "async"]
    async_max_loss_ms: float = Field(ge=0)
    checkpoint_every: int = Field(ge=0)
    retention_days: int = Field(ge=183)
    batch_max: int = Field(gt=0)
    batch_wait_ms: float = Field(ge=0)
    max_queue: int = Field(gt=0)
    busy_timeout_ms: int = Field(ge=0)
    ig_steps: int = Field(gt=0, le=512)
    ig_top_k: int = Field(gt=0, le=20)
    review_confidence_below: float = Field(ge=0, le=1)


class KnowledgeSettings(_Section):
    """The knowledge base behind grounded answers."""

    chunk_tokens: int = Field(gt=0)
    overlap_tokens: int = Field(ge=0)
    answer_items: bool
    item_passage_chars: int = Field(gt=0)
    max_documents_per_request: int = Field(gt=0)
    max_document_chars: int = Field(gt=0)


class ExtractiveSettings(_Section):
    """Extractive sentence scoring."""

    semantic_weight: float = Field(ge=0)
    lexical_weight: float = Field(ge=0)
    retrieval_weight: float = Field(ge=0)
    max_sentences: int = Field(gt=0)
    second_sentence_margin: float = Field(ge=0)


AnswerBackendName = Literal["extractive", "local", "openai"]


class AnswerSettings(_Section):
    """Grounded answers: limits, grounding, abstention, disclosure."""

    default_backend: AnswerBackendName
    k_context: int = Field(gt=0)
    max_k_context: int = Field(gt=0)
    max_tokens: int = Field(gt=0)
    max_tokens_limit: int = Field(gt=0)
    max_question_chars: int = Field(gt=0)
    min_retrieval_score: float
    min_confidence: float = Field(ge=0, le=1)
    confidence_weights: tuple[float, float]
    confidence_bias: float
    support_similarity: float
    support_overlap: float = Field(ge=0, le=1)
    support_min_supported: float = Field(ge=0, le=1)
    ungrounded: Literal["extractive", "abstain"]
    fallback: Literal["none", "extractive"]
    abstain_message: str = Field(min_length=1)
    disclosure_notice: str = Field(min_length=1)
    extractive: ExtractiveSettings

    def to_config(self) -> AnswerConfig:
        """As the retrieval core's answer config."""
        return AnswerConfig(
            default_backend=self.default_backend,
            min_retrieval_score=self.min_retrieval_score,
            min_confidence=self.min_confidence,
            ungrounded=self.ungrounded,
            fallback=self.fallback,
            abstain_message=self.abstain_message,
            confidence_weights=self.confidence_weights,
            confidence_bias=self.confidence_bias,
            disclosure_notice=self.disclosure_notice,
            extractive=ExtractiveConfig(**self.extractive.model_dump()),
            support=SupportConfig(
                min_similarity=self.support_similarity,
                min_overlap=self.support_overlap,
                min_supported=self.support_min_supported,
            ),
        )


class LocalGeneratorSettings(_Section):
    """The in-process LM."""

    enabled: bool
    load: Literal["lazy", "startup"]
    name: str
    path: str
    cache_dir: str
    device: Device

    def to_config(self) -> LocalGeneratorConfig:
        """As the retrieval core's generator config."""
        return LocalGeneratorConfig(name=self.name, path=self.path, cache_dir=self.cache_dir, device=self.device)


class OpenAISettings(_Section):
    """An OpenAI-compatible chat-completions endpoint."""

    base_url: str
    model: str
    api_key: SecretStr
    timeout_s: float = Field(gt=0)
    connect_timeout_s: float = Field(gt=0)
    max_retries: int = Field(ge=0)
    backoff_base_s: float = Field(ge=0)
    backoff_max_s: float = Field(ge=0)
    breaker_failures: int = Field(gt=0)
    breaker_cooldown_s: float = Field(ge=0)
    temperature: float = Field(ge=0)

    @property
    def enabled(self) -> bool:
        """Whether an endpoint is configured."""
        return bool(self.base_url and self.model)

    def to_config(self) -> OpenAIConfig:
        """As the retrieval core's client config."""
        return OpenAIConfig(**{**self.model_dump(exclude={"api_key"}), "api_key": self.api_key.get_secret_value()})


class GeneratorSettings(_Section):
    """Generative answer backends."""

    local: LocalGeneratorSettings
    openai: OpenAISettings


class Settings(BaseSettings):
    """All of Candor's settings (see ``configs/default.toml`` for each knob's meaning)."""

    model_config = SettingsConfigDict(env_prefix="CANDOR_", env_nested_delimiter="__", extra="forbid", frozen=True)

    server: ServerSettings
    paths: PathSettings
    encoder: EncoderSettings
    batching: BatchingSettings
    index: IndexSettings
    recommender: RecommenderSettings
    limits: LimitSettings
    auth: AuthSettings
    logging: LoggingSettings
    audit: AuditSettings
    knowledge: KnowledgeSettings
    answers: AnswerSettings
    generator: GeneratorSettings

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables win over the merged TOML files (passed in as init values)."""
        return (env_settings, init_settings)

    def resolve(self, path: Path) -> Path:
        """Resolve a configured path against the project folder."""
        return path if path.is_absolute() else PROJECT_ROOT / path

    def resolve_optional(self, path: str) -> str:
        """:meth:`resolve` for an optional path setting: empty stays empty (the built-in default)."""
        return str(self.resolve(Path(path))) if path else ""

    def encoder_config(self) -> EncoderConfig:
        """The encoder's configuration, its folder resolved against the project folder."""
        return EncoderConfig(**{**self.encoder.model_dump(), "path": self.resolve_optional(self.encoder.path)})

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
            key_path=self.resolve(Path(audit.key_path)) if audit.key_path else self.state_dir / "audit-signing-key.pem",
        )

    def engine_config(self, *, show_progress: bool = True) -> EngineConfig:
        """The retrieval engine's configuration."""
        idx = self.index
        rec = self.recommender
        return EngineConfig(
            state_dir=self.state_dir,
            pack_path=self.pack_path,
            encoder=self.encoder_config(),
            encoder_batching=self.batching.encoder.to_config(),
            search_batching=self.batching.index.to_config(),
            index=IndexSpec(**idx.model_dump(exclude={"snapshot_delay_s"})),
            recommender=RecommenderConfig(
                event_weights=dict(rec.event_weights),
                half_life_days=rec.half_life_days,
                rating_neutral=rec.rating_neutral,
                max_history=rec.max_history,
                seed_items=rec.seed_items,
                candidate_factor=rec.candidate_factor,
            ),
            snapshot_delay_s=idx.snapshot_delay_s,
            show_progress=show_progress,
            chunking=ChunkingConfig(self.knowledge.chunk_tokens, self.knowledge.overlap_tokens),
            answer_items=self.knowledge.answer_items,
            item_passage_chars=self.knowledge.item_passage_chars,
        )


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
    data = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    chosen = config_file or os.environ.get("CANDOR_CONFIG")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = _deep_merge(data, tomllib.loads(path.read_text(encoding="utf-8")))
    if overrides:
        data = _deep_merge(data, overrides)
    return Settings(**data)
