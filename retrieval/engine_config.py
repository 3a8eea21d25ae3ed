"""What the retrieval engine needs to start: its configuration, built from the service's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retrieval.batcher import BatcherConfig
from retrieval.encoder import EncoderConfig
from retrieval.index import IndexSpec
from retrieval.knowledge import ChunkingConfig
from retrieval.recommend import RecommenderConfig


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs to start (built from the settings: ``Settings.engine_config``).

    Attributes:
        state_dir: Where the catalog database, the knowledge base and index snapshots live.
        pack_path: The domain pack the catalog is seeded from.
        encoder: Encoder choice.
        encoder_batching: Batcher knobs for the encoder.
        search_batching: Batcher knobs for FAISS searches.
        index: FAISS structure and search knobs.
        recommender: Recommender knobs.
        snapshot_delay_s: Writes are snapshotted this long after the last one (they are durable in the catalog
            at once).
        show_progress: Draw a progress bar while embedding a catalog.
        chunking: How knowledge-base documents are cut into chunks.
        answer_items: Whether item texts are answerable (searched beside the documents).
        item_passage_chars: Longest item text given to an answer backend.
        min_document_passages: Places among a question's passages kept for knowledge-base documents.
        min_recommender_coverage: Least share of the catalog a trained recommender must know to be served.
        recommender_model: The trained recommender to serve from the start: its folder and its name
            (``recommender:<version>``); ``None`` serves content similarity.
    """

    state_dir: Path
    pack_path: Path
    encoder: EncoderConfig
    encoder_batching: BatcherConfig
    search_batching: BatcherConfig
    index: IndexSpec
    recommender: RecommenderConfig
    snapshot_delay_s: float
    show_progress: bool
    chunking: ChunkingConfig
    answer_items: bool
    item_passage_chars: int
    min_document_passages: int
    min_recommender_coverage: float
    recommender_model: tuple[Path, str] | None
