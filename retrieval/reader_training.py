"""Training a span reader: a start/end head on a local BERT-family transformer, fine-tuned on question-answer pairs.

Each example is a question, a passage and the answer's character offset in it (or none: the passage does not hold
the answer, and the reader must learn to point at ``[CLS]``). Passages are windowed exactly as the reader reads
them (:func:`retrieval.reader.encode_windows`); a window that does not contain the whole answer is labelled "no
answer". The loss is the mean cross-entropy of the start and end positions (transformers'
``AutoModelForQuestionAnswering``).

Runs are reproducible: Python's, numpy's and torch's generators are seeded and batches come from a seeded
generator. Batches group windows of similar length (a seeded shuffle, then sorting within large pools), which
saves most padding on the CPU without giving every batch the same length.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from retrieval.encoder import Device, free_cores, quiet_transformers, resolve_device, weights_digest
from retrieval.reader import READER_FILE, Windows, encode_windows, pad_batch

Fold = Literal["train", "calibration", "test"]


def article_fold(group: str, *, test_fraction: float = 0.3, calibration_fraction: float = 0.1, salt: str = "") -> Fold:
    """Which fold an article (or any group of questions) belongs to, from a hash of its name.

    The fold depends on the name alone, so training and evaluation agree without sharing a list, and an article
    added later lands in a fold without moving the others.

    Args:
        group: The article title (SQuAD) or document id.
        test_fraction: Share of groups held out for reporting.
        calibration_fraction: Share held out to fit the answer confidence on.
        salt: Changes the draw (a different split of the same articles).
    """
    if not (test_fraction > 0 and calibration_fraction >= 0 and test_fraction + calibration_fraction < 1):
        raise ValueError("fractions must be positive and sum to under 1")
    value = int.from_bytes(hashlib.sha256(f"{salt}:{group}".encode()).digest()[:8], "big") / 2**64
    if value < test_fraction:
        return "test"
    if value < test_fraction + calibration_fraction:
        return "calibration"
    return "train"


@dataclass(frozen=True, slots=True)
class SpanExample:
    """A question, a passage and where the answer is in it.

    Attributes:
        id: Example id.
        question: The question.
        context: The passage.
        answer_start: Character offset of the answer in ``context`` (``-1``: the passage does not answer).
        answer: The answer text (``""`` when there is none).
        group: The article or document the example belongs to (splits are made by group).
    """

    id: str
    question: str
    context: str
    answer_start: int
    answer: str
    group: str = ""

    def __post_init__(self) -> None:
        if self.answer_start >= 0 and self.context[self.answer_start : self.answer_start + len(self.answer)] != (
            self.answer
        ):
            raise ValueError(f"example {self.id}: the answer is not at answer_start in its passage")


@dataclass(frozen=True, slots=True)
class ReaderTrainConfig:
    """How to train a reader (``candor train reader`` takes its option defaults from here).

    The defaults fit a few thousand SQuAD questions on a 22M-parameter MiniLM in well under an hour on 2 CPU cores.

    Attributes:
        epochs: Passes over the windows.
        batch_size: Windows per step.
        learning_rate: AdamW's peak learning rate (small models take a higher one than BERT-base).
        warmup_ratio: Share of steps over which the learning rate rises linearly (then decays linearly to zero).
        weight_decay: AdamW's weight decay (not on biases and LayerNorm weights).
        max_seq_length: Tokens per window.
        doc_stride: Tokens shared by consecutive windows of a long passage.
        max_question_tokens: Questions are cut to this many tokens.
        max_grad_norm: Gradients are clipped to this norm.
        seed: Seed of every generator and of the batch order.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: Torch threads on the CPU (``0``: the free cores).
    """

    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_seq_length: int = 384
    doc_stride: int = 128
    max_question_tokens: int = 64
    max_grad_norm: float = 1.0
    seed: int = 13
    device: Device = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be at least 1 and learning_rate positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")


@dataclass(slots=True)
class ReaderTrainReport:
    """What a training run did.

    Attributes:
        folder: The saved reader.
        base: The model it started from.
        base_version: Weights digest of the base model.
        version: Weights digest of the trained reader.
        config: The configuration used.
        examples: Training examples (answerable and not).
        unanswerable: Examples whose passage does not hold the answer.
        windows: Training windows.
        steps: Optimiser steps.
        losses: The loss of every step.
        seconds: Wall time of the training loop.
        device: Where it ran.
        parameters: Parameters of the reader.
    """

    folder: Path
    base: str
    base_version: str
    version: str
    config: ReaderTrainConfig
    examples: int
    unanswerable: int
    windows: int
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    parameters: int = 0


def label_windows(windows: Windows, examples: Sequence[SpanExample]) -> list[tuple[int, int]]:
    """Start and end token of each window's answer; ``(0, 0)`` (``[CLS]``) when the window lacks the whole answer."""
    labels: list[tuple[int, int]] = []
    for owner, offsets in zip(windows.owner, windows.offsets, strict=True):
        example = examples[owner]
        if example.answer_start < 0:
            labels.append((0, 0))
            continue
        first, last = example.answer_start, example.answer_start + len(example.answer)
        inside = [i for i, o in enumerate(offsets) if o is not None]
        if not inside or offsets[inside[0]][0] > first or offsets[inside[-1]][1] < last:  # type: ignore[index]
            labels.append((0, 0))
            continue
        start = next(i for i in inside if offsets[i][1] > first)  # type: ignore[index]
        end = next(i for i in reversed(inside) if offsets[i][0] < last)  # type: ignore[index]
        labels.append((start, max(start, end)))
    return labels


def batches(lengths: Sequence[int], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """Window indices in batches of similar length: shuffle, sort within pools of ``pool`` batches, shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    out: list[list[int]] = []
    span = batch_size * pool
    for at in range(0, len(order), span):
        chunk = sorted(order[at : at + span], key=lambda i: lengths[i])
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_reader(
    examples: Sequence[SpanExample],
    base: Path,
    out: Path,
    config: ReaderTrainConfig,
    *,
    trained_on: dict[str, Any] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> ReaderTrainReport:
    """Fine-tune a span reader and save it (weights, tokenizer and :data:`READER_FILE`) in ``out``.

    Args:
        examples: Training examples.
        base: A transformers model folder with a fast tokenizer (a sentence-transformers folder works: its
            transformer is at the top level), or a reader to train further.
        out: Where to save the reader (created).
        config: Hyper-parameters.
        trained_on: What the examples came from (source, digest, groups), kept in the reader's card.
        progress: Draw a progress bar on stderr.
        say: Where one-line status messages go.

    Raises:
        ValueError: No examples, or the base has no fast tokenizer.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, get_linear_schedule_with_warmup

    if not examples:
        raise ValueError("no training examples")
    seed_everything(config.seed)
    device = resolve_device(config.device)
    threads = config.threads or free_cores()
    if device == "cpu":
        torch.set_num_threads(threads)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        model = AutoModelForQuestionAnswering.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{base} has no fast tokenizer (offsets are needed to label spans)")
    windows = encode_windows(
        tokenizer,
        [e.question for e in examples],
        [e.context for e in examples],
        max_seq_length=config.max_seq_length,
        doc_stride=config.doc_stride,
        max_question_tokens=config.max_question_tokens,
    )
    labels = label_windows(windows, examples)
    rng = random.Random(config.seed)  # noqa: S311 - batch order, not secrets
    lengths = [len(ids) for ids in windows.input_ids]
    steps_per_epoch = len(batches(lengths, config.batch_size, random.Random(0)))  # noqa: S311
    total = steps_per_epoch * config.epochs
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "LayerNorm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    warmup = int(total * config.warmup_ratio)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)  # type: ignore[no-untyped-call]
    model.to(device).train()
    pad_id = int(tokenizer.pad_token_id or 0)
    say(f"training a reader on {len(examples)} examples ({len(windows)} windows), {total} steps on {device}")
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(total=total, desc="reader", unit="step", file=sys.stderr, disable=not progress)
    for _epoch in range(config.epochs):
        for rows in batches(lengths, config.batch_size, rng):
            inputs = {k: torch.from_numpy(v).to(device) for k, v in pad_batch(windows, rows, pad_id).items()}
            starts = torch.tensor([labels[r][0] for r in rows], device=device)
            ends = torch.tensor([labels[r][1] for r in rows], device=device)
            loss = model(**inputs, start_positions=starts, end_positions=ends).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").eval()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    report = ReaderTrainReport(
        folder=out,
        base=str(base),
        base_version=weights_digest(base),
        version="",
        config=config,
        examples=len(examples),
        unanswerable=sum(1 for e in examples if e.answer_start < 0),
        windows=len(windows),
        steps=len(losses),
        losses=losses,
        seconds=seconds,
        device=device,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    write_card(out, report, trained_on or {})
    report.version = weights_digest(out)
    return report


def write_card(folder: Path, report: ReaderTrainReport, trained_on: dict[str, Any]) -> None:
    """Write :data:`READER_FILE`: windowing (the reader must read as it was trained), data, and the run's facts."""
    config = asdict(report.config)
    card = {
        "kind": "reader",
        "base": report.base,
        "base_version": report.base_version,
        "parameters": report.parameters,
        "reading": {k: config[k] for k in ("max_seq_length", "doc_stride", "max_question_tokens")},
        "training": {
            **config,
            "examples": report.examples,
            "unanswerable": report.unanswerable,
            "windows": report.windows,
            "steps": report.steps,
            "seconds": round(report.seconds, 1),
            "device": report.device,
            "final_loss": round(float(np.mean(report.losses[-50:])), 4) if report.losses else None,
        },
        "trained_on": trained_on,
    }
    (folder / READER_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def update_card(folder: Path, **sections: Any) -> None:
    """Add or replace top-level sections of a reader's card (held-out figures, the fitted calibration)."""
    path = folder / READER_FILE
    card = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    card.update(sections)
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
