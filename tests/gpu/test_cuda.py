"""The encoder on CUDA (fp16, traced) and the dynamic batcher feeding it, checked against the CPU encoder.

These tests import only ``retrieval.encoder``, ``retrieval.batcher`` and ``retrieval.errors`` (plus torch,
sentence-transformers, tokenizers, numpy and structlog), and define their own fixtures: on a GPU machine they run
as ``pytest --noconftest tests/gpu`` without the service's dependencies (FAISS, Litestar, ...). The model folder
is ``$CANDOR_GPU_MODEL_DIR`` when set, else the bundled all-MiniLM-L6-v2.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retrieval.batcher import BatcherConfig, BatchStats, DynamicBatcher
from retrieval.encoder import Encoder, bundled_model_path, resolve_device

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible on this machine"),
]

# Varied product queries: one word to long, digits, units, punctuation, non-ASCII; all distinct.
QUERIES = [
    "tv",
    "baby bath towel",
    "men's running shoes size 9",
    "stainless steel water bottle 1 litre under 500 rupees",
    "wireless bluetooth headphones with noise cancellation and 30 hour battery life",
    "cotton kurta for women in ethnic wear",
    "laptop backpack",
    "non-stick frying pan 24 cm induction compatible",
    "LED bulb 9W pack of 4",
    "kids' school bag with water bottle holder under 800 rupees",
    "analog wrist watch for men with leather strap in watches",
    "smartphone back cover",
    "organic green tea 100 bags",
    "yoga mat anti-slip 6mm",
    "café-style espresso maker — 15 bar pump, milk frother, 1.2 L tank",
    "printed double bedsheet with 2 pillow covers in home furnishing",
    "usb c charger 65w fast charging",
    "silver earrings",
    "gaming mouse rgb 16000 dpi programmable buttons ergonomic design for right hand users",
    "ceramic coffee mug set of 6 microwave safe in kitchen & dining under 600 rupees",
]

COSINE_MIN = 0.999  # fp16 on CUDA against fp32 on the CPU, per row
FP16_ATOL = 1e-2  # largest per-component difference between fp16 runs of the same text in different batches


def model_dir() -> Path:
    """The model folder under test: ``$CANDOR_GPU_MODEL_DIR``, else the bundled one."""
    configured = os.environ.get("CANDOR_GPU_MODEL_DIR")
    return Path(configured) if configured else bundled_model_path()


@pytest.fixture(scope="module")
def cuda_encoder() -> Encoder:
    enc = Encoder(model_dir(), device="cuda")
    enc.warmup()
    return enc


@pytest.fixture(scope="module")
def cpu_encoder() -> Encoder:
    enc = Encoder(model_dir(), device="cpu")
    enc.warmup()
    return enc


def rows_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray(
        (a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)), dtype=np.float64
    )


def test_resolve_device_auto_picks_cuda() -> None:
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"


def test_cuda_encoder_runs_fp16_traced_on_the_gpu(cuda_encoder: Encoder) -> None:
    assert cuda_encoder.info.device == "cuda"
    assert cuda_encoder.info.dtype == "float16"
    assert cuda_encoder.traced is True
    module, _ = cuda_encoder.torch_parts()
    params = list(module.parameters())
    assert params, "the sentence-transformers module has no parameters"
    assert {p.device.type for p in params} == {"cuda"}
    assert {p.dtype for p in params} == {torch.float16}


def test_cuda_embeddings_match_cpu(cuda_encoder: Encoder, cpu_encoder: Encoder) -> None:
    assert cpu_encoder.info.dtype == "float32"
    assert cuda_encoder.dim == cpu_encoder.dim
    gpu = cuda_encoder.encode(QUERIES, batch_size=8)
    cpu = cpu_encoder.encode(QUERIES, batch_size=8)
    assert gpu.shape == cpu.shape == (len(QUERIES), cpu_encoder.dim)
    assert gpu.dtype == np.float32
    assert np.isfinite(gpu).all()
    norms = np.linalg.norm(gpu.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)
    cosines = rows_cosine(gpu, cpu)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= COSINE_MIN, f"row {worst} ({QUERIES[worst]!r}): cosine {cosines[worst]:.5f}"
    # The GPU vectors keep the CPU's ranking: each query is nearest to its own CPU vector.
    assert (np.argmax(gpu @ cpu.T, axis=1) == np.arange(len(QUERIES))).all()


def test_mixed_length_batches_match_one_at_a_time(cuda_encoder: Encoder) -> None:
    long_text = " ".join(QUERIES)  # several times longer than any query: heavy padding for the others
    texts = [*QUERIES[::2], long_text, *QUERIES[1::2]]  # deliberately not sorted by length
    tokenised = [cuda_encoder.token_ids(text) for text in texts]
    assert len({len(ids) for ids in tokenised}) > 5, "the batch should mix many lengths"
    batched = cuda_encoder.embed_token_batch(tokenised)
    alone = np.vstack([cuda_encoder.embed_token_batch([ids]) for ids in tokenised])
    assert batched.shape == alone.shape == (len(texts), cuda_encoder.dim)
    diff = np.abs(batched - alone).max(axis=1)
    worst = int(np.argmax(diff))
    assert diff.max() <= FP16_ATOL, f"row {worst} ({texts[worst][:40]!r}): max abs diff {diff[worst]:.4f}"
    assert rows_cosine(batched, alone).min() >= 0.9995


class RecordingObserver:
    """Keeps every batch's statistics and every rejection (called from the worker thread)."""

    def __init__(self) -> None:
        self.stats: list[BatchStats] = []
        self.rejects: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def on_batch(self, stats: BatchStats) -> None:
        with self._lock:
            self.stats.append(stats)

    def on_reject(self, model: str, reason: str) -> None:
        with self._lock:
            self.rejects.append((model, reason))

    def on_queue_depth(self, model: str, depth: int) -> None:
        pass


def test_batcher_over_cuda_encoder_returns_each_callers_vector(cuda_encoder: Encoder) -> None:
    submitters = 64
    rounds = 3
    reference = cuda_encoder.encode(QUERIES, batch_size=32)
    tokenised = [cuda_encoder.token_ids(text) for text in QUERIES]
    observer = RecordingObserver()
    main_thread = threading.get_ident()
    handler_threads: set[int] = set()

    def handler(batch: Sequence[list[int]]) -> list[np.ndarray]:
        handler_threads.add(threading.get_ident())
        return list(cuda_encoder.embed_token_batch(batch))

    config = BatcherConfig(
        max_batch_size=32,
        max_batch_tokens=8192,
        max_wait_ms=5,
        max_queue=1024,
        queue_timeout_ms=0,
        batch_overhead_tokens=0,
        workers=1,
        packed=False,
    )
    batcher: DynamicBatcher[list[int], np.ndarray] = DynamicBatcher(
        "encoder", handler, config, cost=len, observer=observer
    )

    async def submitter(n: int) -> list[tuple[int, np.ndarray]]:
        got = []
        for r in range(rounds):
            index = (n * 7 + r) % len(QUERIES)
            vector = await batcher.submit(tokenised[index], request_id=f"s{n}-r{r}")
            got.append((index, vector))
        return got

    async def run() -> list[list[tuple[int, np.ndarray]]]:
        batcher.start()
        try:
            return await asyncio.gather(*(submitter(n) for n in range(submitters)))
        finally:
            await batcher.stop()

    results = asyncio.run(run())

    assert [len(r) for r in results] == [rounds] * submitters
    assert not observer.rejects
    assert not any(s.failed for s in observer.stats)
    assert sum(s.size for s in observer.stats) == submitters * rounds
    assert max(s.size for s in observer.stats) > 1, "no batch larger than 1 formed"
    assert max(s.size for s in observer.stats) <= config.max_batch_size
    assert handler_threads
    assert main_thread not in handler_threads, "the handler ran on the event loop's thread"
    for n, got in enumerate(results):
        for index, vector in got:
            assert vector.shape == (cuda_encoder.dim,)
            cosine = float(rows_cosine(vector[None, :], reference[index : index + 1])[0])
            assert cosine >= 0.9995, f"submitter {n}, query {index}: cosine {cosine:.5f} to its own vector"
            np.testing.assert_allclose(vector, reference[index], atol=FP16_ATOL)
            assert int(np.argmax(reference @ vector)) == index, f"submitter {n} got another query's vector"
