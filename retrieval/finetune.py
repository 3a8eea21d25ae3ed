"""Contrastive fine-tuning of the encoder on (query, relevant passage) pairs.

The loss is sentence-transformers' ``MultipleNegativesRankingLoss``: each query must score its own passage above
every other passage in the batch (in-batch negatives), and above its mined hard negative when pairs carry one
(:func:`mine_hard_negatives`). The loop is written out here rather than run through ``SentenceTransformerTrainer``,
which needs the ``datasets`` package (pyarrow, pandas) for what is a list of pairs; it uses the model's own
``preprocess`` and loss, so what is saved is a plain sentence-transformers folder that
:class:`retrieval.encoder.Encoder` loads (and traces) like the stock one.

Runs are reproducible: Python's, numpy's and torch's generators are seeded, batches are drawn from a seeded
generator, and on the CPU the same seed gave bit-identical weights here. Batches never hold the same query or
passage twice, so a duplicate is never scored as its own negative.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.encoder import Device, free_cores, resolve_device, weights_digest

if TYPE_CHECKING:
    import torch

TRAINING_FILE = "candor_finetune.json"


@dataclass(frozen=True, slots=True)
class TrainingPair:
    """A query and a passage relevant to it, with an optional hard negative.

    Attributes:
        query_id: The query's id (pairs of one query share it; mining skips all its passages).
        query: The query text.
        passage_id: The relevant passage's id.
        passage: The relevant passage's text.
        negative_id: A passage that looks relevant but is not judged so (``""``: none).
        negative: Its text.
    """

    query_id: str
    query: str
    passage_id: str
    passage: str
    negative_id: str = ""
    negative: str = ""


@dataclass(frozen=True, slots=True)
class FinetuneConfig:
    """How to fine-tune (``candor train encoder`` takes its option defaults from here).

    The defaults fit SciFact's train split (about 900 pairs) in a few minutes on 2 CPU cores.

    Attributes:
        epochs: Passes over the pairs.
        batch_size: Pairs per step; every other passage of the batch is a negative, so larger is a harder task.
        learning_rate: AdamW's peak learning rate.
        warmup_ratio: Share of the steps over which the learning rate rises linearly to its peak (then it decays
            linearly to zero).
        weight_decay: AdamW's weight decay (not applied to biases and LayerNorm weights).
        max_seq_length: Token limit per text during training (``0``: the model's own).
        max_pairs_per_query: Pairs a query contributes to one epoch, drawn at random (``0``: all); a query can
            appear only once per batch, so one with many judged passages would otherwise make many small batches.
        scale: The loss's similarity scale (the inverse temperature).
        max_grad_norm: Gradients are clipped to this norm.
        seed: Seed of Python's, numpy's and torch's generators and of the batch order.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: Torch threads on the CPU (``0``: the cores free to this process).
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_seq_length: int = 256
    max_pairs_per_query: int = 8
    scale: float = 20.0
    max_grad_norm: float = 1.0
    seed: int = 13
    device: Device = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be at least 1 and batch_size at least 2 (in-batch negatives)")
        if self.learning_rate <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("learning_rate must be positive and warmup_ratio in [0, 1)")
        if self.max_seq_length < 0 or self.max_pairs_per_query < 0:
            raise ValueError("max_seq_length and max_pairs_per_query must not be negative")


@dataclass(slots=True)
class FinetuneReport:
    """What a fine-tuning run did.

    Attributes:
        folder: The saved model.
        base: The model it started from (a folder).
        base_version: Weights digest of the base model (the parent in the registry).
        version: Weights digest of the fine-tuned model.
        config: The configuration used.
        pairs: Training pairs.
        queries: Distinct training queries.
        with_negatives: Pairs that carried a hard negative.
        steps: Optimiser steps taken.
        losses: The loss of every step, in order.
        seconds: Wall time of the training loop (loading and saving excluded).
        device: Where it ran.
        threads: Torch threads on the CPU (``0`` on CUDA).
    """

    folder: Path
    base: Path
    base_version: str
    version: str
    config: FinetuneConfig
    pairs: int
    queries: int
    with_negatives: int
    steps: int
    seconds: float
    device: str
    threads: int
    losses: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts (registry parameters, the model card)."""
        losses = self.losses
        tail = losses[-max(1, len(losses) // 10) :] if losses else []
        return {
            "base": str(self.base),
            "base_version": self.base_version,
            "version": self.version,
            **asdict(self.config),
            "pairs": self.pairs,
            "queries": self.queries,
            "with_negatives": self.with_negatives,
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "device": self.device,
            "threads": self.threads,
            "first_loss": round(losses[0], 4) if losses else None,
            "last_loss": round(float(np.mean(tail)), 4) if tail else None,
        }


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)  # for libraries that draw from numpy's global generator
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def mine_hard_negatives(
    pairs: Sequence[TrainingPair],
    corpus_ids: Sequence[str],
    corpus_texts: Sequence[str],
    corpus_vectors: np.ndarray,
    query_vectors: Mapping[str, np.ndarray],
    *,
    skip: Mapping[str, Collection[str]] | None = None,
    depth: int = 10,
    margin: float = 0.05,
    seed: int = 13,
) -> list[TrainingPair]:
    """Give each pair a hard negative: a passage the base model ranks high for the query but nobody judged relevant.

    For each query the corpus is ranked by the base model's cosine similarity; passages judged for that query
    (every passage of its pairs, and ``skip``) are left out, and so are passages scoring within ``margin`` (relative)
    of the pair's positive, which are likely unjudged relevant passages rather than negatives. One of the first
    ``depth`` remaining passages is drawn at random (seeded); a query with none left gets a random unjudged passage.

    Args:
        pairs: The training pairs.
        corpus_ids: Passage ids, aligned with ``corpus_texts`` and ``corpus_vectors``.
        corpus_texts: Passage texts.
        corpus_vectors: Unit vectors of the passages from the base model, ``(len(corpus_ids), dim)``.
        query_vectors: Unit vector of each query id from the base model.
        skip: More passages per query id never to use as its negative (e.g. judged non-relevant ones too).
        depth: How many of the top remaining passages a negative is drawn from.
        margin: Passages scoring above ``(1 - margin)`` times the positive's score are not negatives.
        seed: Seed of the draw.

    Returns:
        The pairs with ``negative_id`` and ``negative`` set, in the same order.

    Raises:
        ValueError: The corpus parts disagree in length, or a query has no vector.
    """
    if not (len(corpus_ids) == len(corpus_texts) == len(corpus_vectors)):
        raise ValueError("corpus_ids, corpus_texts and corpus_vectors must have the same length")
    if len(corpus_ids) < 2:
        raise ValueError("mining needs a corpus of at least two passages")
    position = {doc: i for i, doc in enumerate(corpus_ids)}
    judged: dict[str, set[int]] = {}
    for pair in pairs:
        judged.setdefault(pair.query_id, set())
        if pair.passage_id in position:
            judged[pair.query_id].add(position[pair.passage_id])
    for qid, docs in (skip or {}).items():
        if qid in judged:
            judged[qid].update(position[d] for d in docs if d in position)
    rng = np.random.default_rng(seed)
    ranked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out: list[TrainingPair] = []
    corpus = np.asarray(corpus_vectors, dtype=np.float32)
    for pair in pairs:
        if pair.query_id not in query_vectors:
            raise ValueError(f"no query vector for {pair.query_id!r}")
        if pair.query_id not in ranked:
            scores = corpus @ np.asarray(query_vectors[pair.query_id], dtype=np.float32)
            keep = np.ones(len(scores), dtype=bool)
            keep[list(judged[pair.query_id])] = False
            order = np.argsort(-scores, kind="stable")
            order = order[keep[order]]
            ranked[pair.query_id] = (order, scores)
        order, scores = ranked[pair.query_id]
        positive = scores[position[pair.passage_id]] if pair.passage_id in position else np.inf
        ceiling = (1.0 - margin) * positive if positive > 0 else positive
        top = order[: depth * 4]  # enough to still have `depth` after the margin cut in almost every case
        candidates = top[scores[top] < ceiling][:depth]
        if len(candidates):
            pick = int(candidates[rng.integers(len(candidates))])
        elif len(order):
            pick = int(order[rng.integers(len(order))])
        else:
            out.append(pair)  # every passage is judged for this query: nothing can be a negative
            continue
        out.append(replace(pair, negative_id=corpus_ids[pick], negative=corpus_texts[pick]))
    return out


def batches(
    pairs: Sequence[TrainingPair], batch_size: int, rng: np.random.Generator, max_per_query: int = 0
) -> list[list[TrainingPair]]:
    """One epoch's batches: shuffled, and no query, passage or negative text twice in a batch.

    With in-batch negatives a repeated text would be scored as a negative of its own query, so a query with
    ``k`` relevant passages needs ``k`` batches. Pairs are therefore dealt round by round (every query's first
    pair, then every query's second...), which keeps batches full until only a few queries have pairs left; a
    pair that would repeat a text goes to a later batch. ``max_per_query`` (``0``: no limit) caps the pairs a
    query contributes to the epoch, drawn at random, so one query with a hundred judged passages does not stretch
    the epoch into a hundred small batches.
    """
    by_query: dict[str, list[TrainingPair]] = {}
    for index in rng.permutation(len(pairs)):
        pair = pairs[int(index)]
        by_query.setdefault(pair.query_id, []).append(pair)
    groups = [group[:max_per_query] if max_per_query else group for group in by_query.values()]
    rounds = max((len(g) for g in groups), default=0)
    pending = [group[r] for r in range(rounds) for group in groups if r < len(group)]
    out: list[list[TrainingPair]] = []
    while pending:
        batch: list[TrainingPair] = []
        seen: set[str] = set()
        deferred: list[TrainingPair] = []
        for pair in pending:
            texts = {pair.query, pair.passage, *([pair.negative] if pair.negative else [])}
            if len(batch) < batch_size and not texts & seen:
                batch.append(pair)
                seen |= texts
            else:
                deferred.append(pair)
        out.append(batch)
        pending = deferred
    return out


def finetune(
    base: Path,
    pairs: Sequence[TrainingPair],
    out: Path,
    config: FinetuneConfig,
    *,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneReport:
    """Fine-tune the sentence-transformers model in ``base`` on ``pairs`` and save it to ``out``.

    Args:
        base: A sentence-transformers folder (the stock model: :func:`retrieval.encoder.bundled_model_path`).
        pairs: Training pairs; when every pair of a batch has a negative, the negatives join the batch.
        out: Where to save the fine-tuned model (created; existing files are overwritten).
        config: Hyper-parameters, seed and device.
        progress: Draw a progress bar on stderr.
        on_step: Called with the step number (from 1) and its loss after every step.

    Returns:
        What was done, with the loss of every step.

    Raises:
        ValueError: Fewer than two pairs, or ``cuda`` asked for without a GPU.
        FileNotFoundError: ``base`` is not a folder.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from tqdm import tqdm

    if len(pairs) < 2:
        raise ValueError("fine-tuning needs at least two pairs (each batch's other passages are the negatives)")
    if not base.is_dir():
        raise FileNotFoundError(f"base model folder not found: {base}")
    device = resolve_device(config.device)
    threads_before = torch.get_num_threads()
    threads = 0
    if device == "cpu":
        threads = config.threads or free_cores()
        torch.set_num_threads(threads)
    seed_everything(config.seed)
    model = SentenceTransformer(str(base), device=device, local_files_only=True, model_kwargs={"dtype": torch.float32})
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    loss_fn = MultipleNegativesRankingLoss(model, scale=config.scale)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.learning_rate)
    order = np.random.default_rng(config.seed)
    plan = [batches(pairs, config.batch_size, order, config.max_pairs_per_query) for _ in range(config.epochs)]
    total = sum(len(epoch) for epoch in plan)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_linear(round(total * config.warmup_ratio), total))
    losses: list[float] = []
    model.train()
    started = time.perf_counter()
    try:
        with tqdm(total=total, desc="fine-tuning", unit="step", disable=not progress, file=sys.stderr) as bar:
            for epoch in plan:
                for batch in epoch:
                    value = _step(model, loss_fn, batch, device)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(value)
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}")
                    if on_step is not None:
                        on_step(len(losses), value)
        seconds = time.perf_counter() - started
        model.eval()
        out.mkdir(parents=True, exist_ok=True)
        model.save(str(out))
    finally:
        if device == "cpu":
            torch.set_num_threads(threads_before)
    base_version = weights_digest(base)
    with_negatives = sum(1 for p in pairs if p.negative)
    # Beside the weights, so the folder says how it was made wherever it is copied (no timings: the folder's
    # digest names the weights and must not change between identical runs).
    facts = {
        "base_version": base_version,
        "config": asdict(config),
        "pairs": len(pairs),
        "with_negatives": with_negatives,
        "steps": total,
    }
    (out / TRAINING_FILE).write_text(json.dumps(facts, indent=1, sort_keys=True), encoding="utf-8")
    return FinetuneReport(
        folder=out,
        base=base,
        base_version=base_version,
        version=weights_digest(out),
        config=config,
        pairs=len(pairs),
        queries=len({p.query_id for p in pairs}),
        with_negatives=with_negatives,
        steps=total,
        seconds=seconds,
        device=device,
        threads=threads,
        losses=losses,
    )


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (BERT's recipe)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _warmup_linear(warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate factor of a step: a linear rise over ``warmup`` steps, then a linear decay to zero."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _step(model: Any, loss_fn: Any, batch: Sequence[TrainingPair], device: str) -> float:
    """One forward and backward pass; returns the loss."""
    from sentence_transformers.util import batch_to_device

    columns = [[p.query for p in batch], [p.passage for p in batch]]
    if all(p.negative for p in batch):
        columns.append([p.negative for p in batch])
    features = [batch_to_device(model.preprocess(texts), device) for texts in columns]
    loss = loss_fn(features, None)
    loss.backward()
    return float(loss.detach())
