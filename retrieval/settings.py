"""Settings sections of the retrieval core: each knob's one declaration, with its constraint and default.

Each section is a frozen pydantic model that refuses unknown keys and builds its dataclass with ``to_config``,
field for field; a ``to_config`` argument is a value known only at run time (a batcher's workers), not a setting.
The service composes these sections into its settings (``app/settings.py``, where subclasses add the keys only
the service reads, such as request limits) and the evaluation suites reuse them for ``[system]``;
``configs/default.toml`` is the documented copy, checked against the sections by
``tests/unit/test_settings_sources.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from retrieval.answers import AnswerConfig
from retrieval.answers.grounding import ExtractiveConfig, SupportConfig
from retrieval.answers.local_model import LocalGeneratorConfig
from retrieval.answers.remote import OpenAIConfig
from retrieval.batcher import BatcherConfig
from retrieval.bulk import RayConfig
from retrieval.encoder import Device, EncoderConfig
from retrieval.index import IndexKind, IndexSpec
from retrieval.knowledge import ChunkingConfig
from retrieval.reader import Precision, ReaderConfig
from retrieval.recommend import RecommenderConfig

# ``[answers]`` keeps the support thresholds as flat keys: each key, and the SupportConfig field it fills.
SUPPORT_FIELDS = {
    "support_similarity": "min_similarity",
    "support_overlap": "min_overlap",
    "support_min_supported": "min_supported",
}


class Section(BaseModel):
    """A settings section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _values(section: Section, declared_by: type[Section], *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The values of the fields ``declared_by`` declares, as a dataclass takes them.

    A subclass (the service's, an evaluation suite's) may add fields its section's dataclass does not take.

    Args:
        section: The section (an instance of ``declared_by`` or a subclass).
        declared_by: The section class whose fields the dataclass takes.
        exclude: Fields to leave out (built separately).

    Returns:
        Field name to value.
    """
    return section.model_dump(include=set(declared_by.model_fields) - exclude)


class EncoderSettings(Section):
    """``[encoder]``: which encoder to load and how."""

    name: str = "all-MiniLM-L6-v2"
    path: str = ""
    device: Device = "auto"
    threads: int = Field(default=0, ge=0)
    workers: int = Field(default=1, ge=0)
    max_seq_length: int = Field(default=0, ge=0)
    bulk_batch_size: int = Field(default=32, gt=0)
    trace: bool = True
    packed: bool = True
    nice: int = Field(default=0, ge=0, le=19)

    def to_config(self) -> EncoderConfig:
        """As the encoder's config."""
        return EncoderConfig(**_values(self, EncoderSettings))


class BatcherSettings(Section):
    """One model's dynamic batching knobs; each model's subclass declares them with that model's defaults."""

    def to_config(self, *, workers: int = 1, packed: bool = False) -> BatcherConfig:
        """As the batcher's config.

        Args:
            workers: Worker threads (the engine plans the encoder's from its cores).
            packed: Whether the handler runs batches unpadded (the engine asks the loaded encoder).

        Returns:
            The batcher's config.
        """
        return BatcherConfig(**self.model_dump(), workers=workers, packed=packed)


class EncoderBatcherSettings(BatcherSettings):
    """``[batching.encoder]``."""

    max_batch_size: int = Field(default=32, gt=0)
    max_batch_tokens: int = Field(default=8192, gt=0)
    max_wait_ms: float = Field(default=2.0, ge=0)
    max_queue: int = Field(default=512, gt=0)
    queue_timeout_ms: float = Field(default=5000.0, ge=0)
    batch_overhead_tokens: int = Field(default=48, ge=0)


class IndexBatcherSettings(BatcherSettings):
    """``[batching.index]``."""

    max_batch_size: int = Field(default=64, gt=0)
    max_batch_tokens: int = Field(default=64, gt=0)
    max_wait_ms: float = Field(default=0.0, ge=0)
    max_queue: int = Field(default=2048, gt=0)
    queue_timeout_ms: float = Field(default=5000.0, ge=0)
    batch_overhead_tokens: int = Field(default=0, ge=0)


class GeneratorBatcherSettings(BatcherSettings):
    """``[batching.generator]``."""

    max_batch_size: int = Field(default=8, gt=0)
    max_batch_tokens: int = Field(default=8192, gt=0)
    max_wait_ms: float = Field(default=5.0, ge=0)
    max_queue: int = Field(default=64, gt=0)
    queue_timeout_ms: float = Field(default=120000.0, ge=0)
    batch_overhead_tokens: int = Field(default=0, ge=0)


class ReaderBatcherSettings(BatcherSettings):
    """``[batching.reader]``."""

    max_batch_size: int = Field(default=16, gt=0)
    max_batch_tokens: int = Field(default=4096, gt=0)
    max_wait_ms: float = Field(default=2.0, ge=0)
    max_queue: int = Field(default=256, gt=0)
    queue_timeout_ms: float = Field(default=5000.0, ge=0)
    batch_overhead_tokens: int = Field(default=0, ge=0)


class BatchingSettings(Section):
    """``[batching]``: one batcher per model."""

    encoder: EncoderBatcherSettings = Field(default_factory=EncoderBatcherSettings)
    index: IndexBatcherSettings = Field(default_factory=IndexBatcherSettings)
    generator: GeneratorBatcherSettings = Field(default_factory=GeneratorBatcherSettings)
    reader: ReaderBatcherSettings = Field(default_factory=ReaderBatcherSettings)


class ReaderSettings(Section):
    """``[reader]``: the span reader behind extractive answers (a registry pin in ``[models]`` wins over ``path``)."""

    name: str = "reader"
    path: str = ""
    device: Device = "auto"
    precision: Precision = "fp32"
    threads: int = Field(default=0, ge=0)
    max_seq_length: int = Field(default=0, ge=0)
    doc_stride: int = Field(default=0, ge=0)
    max_answer_tokens: int = Field(default=30, gt=0)
    max_question_tokens: int = Field(default=0, ge=0)
    min_confidence: float = Field(default=-1.0, le=1)
    packed: bool = True

    def to_config(self, path: str, name: str = "") -> ReaderConfig:
        """As the reader's config, reading the folder ``path`` (reported as ``name``, or ``[reader] name``)."""
        values = _values(self, ReaderSettings, exclude=frozenset({"path", "name"}))
        return ReaderConfig(path=path, name=name or self.name, **values)


class IndexSettings(Section):
    """``[index]``: the FAISS structure and its search knobs."""

    kind: IndexKind = "flat"
    hnsw_m: int = Field(default=32, gt=0)
    hnsw_ef_construction: int = Field(default=80, gt=0)
    hnsw_ef_search: int = Field(default=64, gt=0)
    ivf_nlist: int = Field(default=0, ge=0)
    ivf_nprobe: int = Field(default=8, gt=0)
    ivf_train_sample: int = Field(default=100000, ge=0)
    ivf_train_seed: int = 0
    threads: int = Field(default=1, gt=0)
    blas_threshold: int = Field(default=4, gt=0)

    def to_config(self) -> IndexSpec:
        """As the index's spec."""
        return IndexSpec(**_values(self, IndexSettings))


class RaySettings(Section):
    """``[ray]``: bulk embedding and sharded evaluation on Ray (``--engine ray``)."""

    address: str = ""
    actors: int = Field(default=0, ge=0)
    actor_cpus: int = Field(default=1, gt=0)
    batch_rows: int = Field(default=512, gt=0)
    eval_shards: int = Field(default=0, ge=0)

    def to_config(self, address: str | None = None) -> RayConfig:
        """As the bulk runner's config; ``address`` (``--address``) wins over the configured one."""
        values = _values(self, RaySettings, exclude=frozenset({"address"}))
        return RayConfig(address=self.address if address is None else address, **values)


class RecommenderSettings(Section):
    """``[recommender]``: history weighting and candidate fetching."""

    half_life_days: float = Field(default=30.0, ge=0)
    rating_neutral: float = Field(default=3.0, ge=1, lt=5)
    max_history: int = Field(default=200, gt=0)
    seed_items: int = Field(default=8, ge=0)
    candidate_factor: int = Field(default=4, gt=0)
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "cart": 2.0, "purchase": 3.0, "rating": 1.0}
    )

    def to_config(self) -> RecommenderConfig:
        """As the recommenders' config."""
        return RecommenderConfig(**_values(self, RecommenderSettings))


class KnowledgeSettings(Section):
    """``[knowledge]``: how documents are cut into chunks."""

    chunk_tokens: int = Field(default=128, gt=0)
    overlap_tokens: int = Field(default=32, ge=0)

    def to_config(self) -> ChunkingConfig:
        """As the knowledge base's chunking config."""
        return ChunkingConfig(**_values(self, KnowledgeSettings))


class ExtractiveSettings(Section):
    """``[answers.extractive]``: the extractive sentence score."""

    semantic_weight: float = Field(default=0.6, ge=0)
    lexical_weight: float = Field(default=0.3, ge=0)
    retrieval_weight: float = Field(default=0.1, ge=0)
    max_sentences: int = Field(default=2, gt=0)
    second_sentence_margin: float = Field(default=0.05, ge=0)

    def to_config(self) -> ExtractiveConfig:
        """As the extractive backend's config."""
        return ExtractiveConfig(**_values(self, ExtractiveSettings))


class AnswerSettings(Section):
    """``[answers]``: grounding, abstention, calibration and disclosure."""

    default_backend: Literal["extractive", "local", "openai"] = "extractive"
    min_retrieval_score: float = 0.2
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    confidence_weights: tuple[float, float] = (2.49, 3.55)
    confidence_bias: float = -2.39
    support_similarity: float = 0.55
    support_overlap: float = Field(default=0.6, ge=0, le=1)
    support_min_supported: float = Field(default=1.0, ge=0, le=1)
    ungrounded: Literal["extractive", "abstain"] = "extractive"
    fallback: Literal["none", "extractive"] = "none"
    abstain_message: str = Field(
        default="Sorry, I could not find an answer to that in our help centre or product information.", min_length=1
    )
    disclosure_notice: str = Field(
        default=(
            "This answer was generated automatically by an AI system from the shop's help centre and product"
            " information. Check important details with customer support."
        ),
        min_length=1,
    )
    extractive: ExtractiveSettings = Field(default_factory=ExtractiveSettings)

    def to_config(self) -> AnswerConfig:
        """As the answer service's config."""
        built = frozenset({"extractive", *SUPPORT_FIELDS})
        return AnswerConfig(
            **_values(self, AnswerSettings, exclude=built),
            extractive=self.extractive.to_config(),
            support=SupportConfig(**{field: getattr(self, key) for key, field in SUPPORT_FIELDS.items()}),
        )


class LocalGeneratorSettings(Section):
    """``[generator.local]``: the in-process LM."""

    name: str = "SmolLM2-135M-Instruct"
    path: str = ""
    cache_dir: str = ""
    device: Device = "auto"

    def to_config(self) -> LocalGeneratorConfig:
        """As the local generator's config."""
        return LocalGeneratorConfig(**_values(self, LocalGeneratorSettings))


class OpenAISettings(Section):
    """``[generator.openai]``: an OpenAI-compatible chat-completions endpoint."""

    base_url: str = ""
    model: str = ""
    api_key: SecretStr = SecretStr("")
    timeout_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    total_timeout_s: float = Field(default=60.0, gt=0)
    max_response_bytes: int = Field(default=262144, gt=0)
    max_retries: int = Field(default=2, ge=0)
    backoff_base_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=5.0, ge=0)
    breaker_failures: int = Field(default=5, gt=0)
    breaker_cooldown_s: float = Field(default=30.0, ge=0)
    temperature: float = Field(default=0.0, ge=0)

    @property
    def enabled(self) -> bool:
        """Whether an endpoint is configured."""
        return bool(self.base_url and self.model)

    def to_config(self) -> OpenAIConfig:
        """As the client's config (the key unwrapped)."""
        values = _values(self, OpenAISettings, exclude=frozenset({"api_key"}))
        return OpenAIConfig(**values, api_key=self.api_key.get_secret_value())
