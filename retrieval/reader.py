"""A span reader: the shortest stretch of a passage that answers a question, and how sure the model is of it.

A reader is a BERT-family transformer with a span-prediction head (start and end logits per token), trained by
``candor train reader`` (:mod:`retrieval.reader_training`). It reads each (question, passage) pair as one or more
windows of ``max_seq_length`` tokens (long passages overlap by ``doc_stride`` tokens), and returns the best span of
at most ``max_answer_tokens`` tokens with its score (start plus end logit) and the score of "no answer" (the
``[CLS]`` position, lowest over the passage's windows, as SQuAD 2.0 readers do). Their difference, the *margin*,
is what confidence and abstention are calibrated on. With each best span come the best span inside each sentence
of the passage (the same logits, the search kept to the sentence): candidates for a choice that also weighs how
well a sentence matches the question (:mod:`retrieval.answers.reading`).

Everything works on batches of pairs, so the service runs the reader behind its own token-budgeted batcher and the
evaluation harness runs the same code in bulk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from retrieval.chunking import split_sentences
from retrieval.encoder import Device, free_cores, quiet_transformers, resolve_device, weights_digest

if TYPE_CHECKING:
    import torch

READER_FILE = "candor_reader.json"
"""What a trained reader's folder says about itself: windowing, training data and held-out figures."""

Precision = Literal["fp32", "int8"]
"""How the reader computes on the CPU: full float32, or dynamic int8 linear layers (CUDA runs float16 either way)."""


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """Which reader to load and how it reads (``[reader]`` in the config).

    Attributes:
        path: The reader's folder (a transformers question-answering model with its tokenizer).
        name: Name reported in answers, ``/v1/info`` and audit records.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: Torch threads on the CPU (``0``: the free cores).
        max_seq_length: Tokens per window (question, passage and special tokens); ``0``: as the reader was
            trained (its card), else 384.
        doc_stride: Tokens shared by consecutive windows of a long passage (``0``: as trained, else 128).
        max_answer_tokens: Longest span returned, in tokens.
        max_question_tokens: Questions are cut to this many tokens (``0``: as trained, else 64).
        min_confidence: Answers below this calibrated confidence abstain (negative: the threshold in the card).
        precision: ``int8`` quantises the encoder's linear layers to int8 on the CPU (dynamic quantisation: about
            half the forward time of ``fp32``, for about 3 points of held-out span F1; see docs/answers.md).
        packed: On the CPU in ``fp32``, read a batch's windows in one forward pass without padding
            (:mod:`retrieval.unpadded`) when the model allows it and matches the eager model on a probe; else each
            window runs alone.
    """

    path: str
    name: str = "reader"
    device: Device = "auto"
    precision: Precision = "fp32"
    threads: int = 0
    max_seq_length: int = 0
    doc_stride: int = 0
    max_answer_tokens: int = 30
    max_question_tokens: int = 0
    min_confidence: float = -1.0
    packed: bool = True

    def __post_init__(self) -> None:
        if min(self.max_seq_length, self.doc_stride, self.max_question_tokens, self.threads) < 0:
            raise ValueError("reader sizes and threads must not be negative")
        if self.min_confidence > 1:
            raise ValueError("min_confidence is a probability (negative: the card's)")
        if self.max_answer_tokens < 1:
            raise ValueError("max_answer_tokens must be at least 1")


@dataclass(frozen=True, slots=True)
class Reading:
    """How a loaded reader windows its input (the config's values, or its card's where the config says 0)."""

    max_seq_length: int
    doc_stride: int
    max_question_tokens: int

    def __post_init__(self) -> None:
        if self.max_seq_length < 32 or not 0 < self.doc_stride < self.max_seq_length // 2:
            raise ValueError("max_seq_length must be at least 32 and doc_stride in (0, max_seq_length / 2)")
        # A window holds the question, three special tokens and more passage tokens than the stride repeats.
        if self.max_question_tokens <= 0 or self.max_question_tokens + 3 + self.doc_stride >= self.max_seq_length:
            raise ValueError(
                "max_question_tokens must be positive and leave room for more than doc_stride passage tokens"
            )

    @classmethod
    def resolve(cls, config: ReaderConfig, card: dict[str, Any]) -> Reading:
        """The config's windowing, with 0 meaning the card's (what the reader was trained with)."""
        reading = card.get("reading")
        trained: dict[str, Any] = reading if isinstance(reading, dict) else {}
        return cls(
            config.max_seq_length or int(trained.get("max_seq_length", 384)),
            config.doc_stride or int(trained.get("doc_stride", 128)),
            config.max_question_tokens or int(trained.get("max_question_tokens", 64)),
        )


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One question and one passage to read.

    Attributes:
        question: The question.
        context: The passage text.
    """

    question: str
    context: str


@dataclass(frozen=True, slots=True)
class Span:
    """The best answer span the reader found in one passage.

    Attributes:
        text: The span, copied from the passage.
        start: Character offset of the span in the passage.
        end: Character offset just past the span.
        score: Start plus end logit of the span.
        null_score: Start plus end logit of "no answer", lowest over the passage's windows.
        sentence_spans: The best span inside each sentence of the passage, in passage order (on the passage's best
            span only; empty for those).
    """

    text: str
    start: int
    end: int
    score: float
    null_score: float
    sentence_spans: tuple[Span, ...] = ()

    @property
    def margin(self) -> float:
        """How far the span's score is above "no answer" (the reader's own evidence that the passage answers)."""
        return self.score - self.null_score


@dataclass(frozen=True, slots=True)
class ReaderInfo:
    """Identity of the loaded reader, for answers, ``/v1/info`` and audit records."""

    name: str
    version: str
    path: str
    device: str
    precision: str
    max_seq_length: int
    parameters: int
    packed: bool = False

    def identity(self) -> dict[str, str]:
        """Name, weights digest, device and the precision it computes in (int8 answers differ slightly)."""
        return {"name": self.name, "version": self.version, "device": self.device, "precision": self.precision}


def read_card(folder: Path) -> dict[str, Any]:
    """The reader's own description (:data:`READER_FILE`); empty when the folder has none."""
    path = folder / READER_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


@dataclass(slots=True)
class Windows:
    """Tokenised (question, passage) windows.

    Attributes:
        input_ids: Token ids per window (no padding).
        type_ids: Segment ids per window (0 for the question, 1 for the passage; empty when the model takes none).
        owner: The pair each window came from.
        offsets: Per window, each token's character span in the passage (``None`` outside the passage).
    """

    input_ids: list[list[int]]
    type_ids: list[list[int]]
    owner: list[int]
    offsets: list[list[tuple[int, int] | None]]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_windows(
    tokenizer: Any,
    questions: Sequence[str],
    contexts: Sequence[str],
    *,
    max_seq_length: int,
    doc_stride: int,
    max_question_tokens: int,
) -> Windows:
    """Tokenise pairs into windows that cover each passage, question first (shared by reading and training).

    Args:
        tokenizer: A fast tokenizer (it must return offset mappings).
        questions: One question per pair.
        contexts: One passage per pair.
        max_seq_length: Tokens per window.
        doc_stride: Tokens shared by consecutive windows of one passage.
        max_question_tokens: Longer questions are cut to this many tokens.
    """
    question_ids = tokenizer([q.strip() for q in questions], add_special_tokens=False)["input_ids"]
    cut = [
        tokenizer.decode(ids[:max_question_tokens]) if len(ids) > max_question_tokens else q.strip()
        for q, ids in zip(questions, question_ids, strict=True)
    ]
    encoded = tokenizer(
        cut,
        list(contexts),
        truncation="only_second",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    offsets: list[list[tuple[int, int] | None]] = []
    for i, mapping in enumerate(encoded["offset_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        offsets.append([(int(a), int(b)) if s == 1 else None for (a, b), s in zip(mapping, sequence_ids, strict=True)])
    return Windows(
        list(encoded["input_ids"]),
        list(encoded.get("token_type_ids") or []),
        list(encoded["overflow_to_sample_mapping"]),
        offsets,
    )


def pad_batch(windows: Windows, rows: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad some windows to the longest of them: the model's inputs as int64 arrays."""
    width = max(len(windows.input_ids[r]) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        seq = windows.input_ids[r]
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
        if windows.type_ids:
            types[i, : len(seq)] = windows.type_ids[r]
    batch = {"input_ids": ids, "attention_mask": mask}
    if windows.type_ids:
        batch["token_type_ids"] = types
    return batch


def best_spans(
    start_logits: np.ndarray, end_logits: np.ndarray, context_mask: np.ndarray, max_answer_tokens: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best span of each window: start token, end token and score (start plus end logit).

    Spans must lie inside the passage, end at or after their start, and be at most ``max_answer_tokens`` long.

    Args:
        start_logits: ``(windows, tokens)``.
        end_logits: ``(windows, tokens)``.
        context_mask: ``(windows, tokens)``, true on passage tokens.
        max_answer_tokens: Longest span.
    """
    tokens = start_logits.shape[1]
    starts = np.where(context_mask, start_logits, -np.inf)
    ends = np.where(context_mask, end_logits, -np.inf)
    grid = starts[:, :, None] + ends[:, None, :]
    offsets = np.arange(tokens)[None, :] - np.arange(tokens)[:, None]  # end minus start
    band = (offsets >= 0) & (offsets < max_answer_tokens)
    grid = np.where(band[None, :, :], grid, -np.inf)
    flat = grid.reshape(grid.shape[0], -1).argmax(axis=1)
    start, end = np.divmod(flat, tokens)
    score = grid.reshape(grid.shape[0], -1)[np.arange(grid.shape[0]), flat]
    return start, end, score


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its encoder's linear layers in int8, activations quantised per pass (CPU inference only).

    Dynamic quantisation needs no calibration data, and the linear layers hold almost all of a small encoder's
    arithmetic at reading lengths, so it about halves a CPU forward pass. Weights are quantised per output channel
    (per tensor lost about 4 points of span F1 on SQuAD calibration articles; per channel lost none), and the span
    head stays in float: it is two numbers per token, and its logits are what confidence is calibrated on.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig

    prefix = str(getattr(model, "base_model_prefix", "")) + "."
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(prefix)
    }
    with warnings.catch_warnings():
        # torch marks its eager quantisation API deprecated in favour of a separate package; it still ships and works.
        warnings.simplefilter("ignore")
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, spec, dtype=torch.qint8
        )
    return quantized


class SpanReader:
    """A loaded reader.

    Args:
        config: Which folder and how to read.
    """

    def __init__(self, config: ReaderConfig) -> None:
        import torch
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = Path(config.path)
        if not path.is_dir():
            raise FileNotFoundError(f"reader folder not found: {path}")
        self.config = config
        self.card = read_card(path)
        self.reading = Reading.resolve(config, self.card)
        self._device = resolve_device(config.device)
        if self._device == "cpu":
            torch.set_num_threads(config.threads or free_cores())
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForQuestionAnswering.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"the reader in {path} has no fast tokenizer (offsets are needed to copy spans)")
        model.eval()
        parameters = sum(p.numel() for p in model.parameters())
        self._model = model.to(self._device)
        precision = "fp16" if self._device == "cuda" else config.precision
        if self._device == "cuda":
            self._model = self._model.half()
        elif precision == "int8":
            self._model = quantize_int8(model)
        packable = config.packed and self._device == "cpu" and precision == "fp32"
        self._packed: Any = self._pack(model) if packable else None
        self.info = ReaderInfo(
            name=config.name,
            version=weights_digest(path),
            path=str(path),
            device=self._device,
            precision=precision,
            max_seq_length=self.reading.max_seq_length,
            parameters=parameters,
            packed=self._packed is not None,
        )

    def _pack(self, model: torch.nn.Module) -> Any:
        """The padding-free forward pass and span head of ``model``, if it has them and they match it on a probe.

        Returns:
            ``(packed body, span head)``, or ``None`` (the eager model reads then, one window per pass).
        """
        import torch

        from retrieval.unpadded import PackedBert, unpackable_reason

        body, head = getattr(model, "base_model", None), getattr(model, "qa_outputs", None)
        if not isinstance(body, torch.nn.Module) or not isinstance(head, torch.nn.Linear):
            return None
        if unpackable_reason(body) is not None:
            return None
        packed = (PackedBert(body).eval(), head)
        probe = encode_windows(
            self.tokenizer,
            ["When does it ship?", "What colour is the mug?"],
            ["Orders ship within 2 business days from our warehouse.", "The mug is blue. " * 20],
            max_seq_length=self.reading.max_seq_length,
            doc_stride=self.reading.doc_stride,
            max_question_tokens=self.reading.max_question_tokens,
        )
        eager = np.stack(self._eager_logits(probe))
        fast = np.stack(self._packed_logits(packed, probe))
        if not np.allclose(eager, fast, atol=1e-3, rtol=1e-4):  # an optimisation: never a different answer
            return None
        return packed

    def use_threads(self) -> None:
        """Set the calling thread's torch threads (the batch worker calls it as it starts)."""
        import torch

        if self._device == "cpu":
            torch.set_num_threads(self.config.threads or free_cores())

    def cost(self, request: ReadRequest) -> int:
        """An estimate of the tokens a request costs (for the batcher's token budget), without tokenising."""
        estimate = (len(request.question) + len(request.context)) // 4 + 3
        size = self.reading.max_seq_length
        windows = 1 + max(0, estimate - size) // max(1, size - self.reading.doc_stride)
        return min(estimate, size) * windows

    def _logits(self, windows: Windows) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits per window, right-padded with zeros to the longest window."""
        if self._packed is not None:
            return self._packed_logits(self._packed, windows)
        return self._eager_logits(windows)

    def _packed_logits(self, packed: tuple[Any, Any], windows: Windows) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_logits` in one padding-free pass: every window's tokens go through the linear layers together."""
        import torch

        from retrieval.unpadded import pack

        body, head = packed
        batch = pack(windows.input_ids)
        types = None
        if windows.type_ids:
            types = torch.from_numpy(np.fromiter((t for row in windows.type_ids for t in row), dtype=np.int64))
        with torch.inference_mode():
            logits = head(body(*batch.tensors(), types)).float().numpy()
        width = int(batch.lengths.max())
        start = np.zeros((len(windows), width), dtype=np.float32)
        end = np.zeros((len(windows), width), dtype=np.float32)
        for row, (at, length) in enumerate(zip(batch.starts, batch.lengths, strict=True)):
            start[row, :length] = logits[at : at + length, 0]
            end[row, :length] = logits[at : at + length, 1]
        return start, end

    def _eager_logits(self, windows: Windows) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_logits` through the model as loaded."""
        import torch

        pad_id = int(self.tokenizer.pad_token_id or 0)
        # On the CPU each window runs alone: windows differ in length, so padding them to one width costs more than
        # the batch saves, and an int8 reader quantises activations with one scale per forward pass, which would make
        # an answer depend on the requests it happened to be batched with.
        groups = [[row] for row in range(len(windows))] if self._device == "cpu" else [list(range(len(windows)))]
        width = max(len(ids) for ids in windows.input_ids)
        start = np.zeros((len(windows), width), dtype=np.float32)
        end = np.zeros((len(windows), width), dtype=np.float32)
        with torch.inference_mode():
            for rows in groups:
                batch = pad_batch(windows, rows, pad_id)
                out = self._model(**{k: torch.from_numpy(v).to(self._device) for k, v in batch.items()})
                tokens = out.start_logits.shape[1]
                start[rows, :tokens] = out.start_logits.float().cpu().numpy()
                end[rows, :tokens] = out.end_logits.float().cpu().numpy()
        return start, end

    def read(self, requests: Sequence[ReadRequest]) -> list[Span | None]:
        """The best span of each (question, passage) pair, in order (``None`` for an empty passage)."""
        if not requests:
            return []
        windows = encode_windows(
            self.tokenizer,
            [r.question for r in requests],
            [r.context for r in requests],
            max_seq_length=self.reading.max_seq_length,
            doc_stride=self.reading.doc_stride,
            max_question_tokens=self.reading.max_question_tokens,
        )
        start_logits, end_logits = self._logits(windows)
        width = start_logits.shape[1]
        context_mask = np.zeros((len(windows), width), dtype=bool)
        for row, offsets in enumerate(windows.offsets):
            context_mask[row, : len(offsets)] = [o is not None for o in offsets]
        start, end, score = best_spans(start_logits, end_logits, context_mask, self.config.max_answer_tokens)
        null = start_logits[:, 0] + end_logits[:, 0]
        best: dict[int, tuple[float, int]] = {}
        lowest_null: dict[int, float] = {}
        for row, owner in enumerate(windows.owner):
            lowest_null[owner] = min(lowest_null.get(owner, np.inf), float(null[row]))
            if np.isfinite(score[row]) and (owner not in best or score[row] > best[owner][0]):
                best[owner] = (float(score[row]), row)
        rows_of: dict[int, list[int]] = {}
        for row, owner in enumerate(windows.owner):
            rows_of.setdefault(owner, []).append(row)
        spans: list[Span | None] = []
        for owner, request in enumerate(requests):
            if owner not in best:
                spans.append(None)
                continue
            value, row = best[owner]
            null_score = lowest_null[owner]
            in_sentences = self._sentence_spans(
                request.context, rows_of[owner], windows, start_logits, end_logits, context_mask, null_score
            )
            spans.append(
                _span(request.context, windows.offsets[row], start[row], end[row], value, null_score, in_sentences)
            )
        return spans

    def _sentence_spans(
        self,
        context: str,
        rows: Sequence[int],
        windows: Windows,
        start_logits: np.ndarray,
        end_logits: np.ndarray,
        context_mask: np.ndarray,
        null_score: float,
    ) -> tuple[Span, ...]:
        """The best span inside each sentence of one passage, over its windows (the search masked to the sentence)."""
        bounds = sentence_bounds(context)
        if len(bounds) < 2:
            return ()
        picked = np.asarray(rows)
        token_ranges = [
            np.array(
                [o if o is not None else (-1, -1) for o in windows.offsets[r]]
                + [(-1, -1)] * (context_mask.shape[1] - len(windows.offsets[r]))
            )
            for r in rows
        ]
        found: list[Span] = []
        for low, high in bounds:
            inside = np.stack([(t[:, 0] >= low) & (t[:, 1] <= high) & (t[:, 1] > t[:, 0]) for t in token_ranges])
            mask = context_mask[picked] & inside
            if not mask.any():
                continue
            first, last, score = best_spans(
                start_logits[picked], end_logits[picked], mask, self.config.max_answer_tokens
            )
            k = int(np.argmax(score))
            if not np.isfinite(score[k]):
                continue
            row = rows[k]
            found.append(_span(context, windows.offsets[row], first[k], last[k], float(score[k]), null_score))
        return tuple(found)


def sentence_bounds(context: str, *, clauses: bool = False) -> list[tuple[int, int]]:
    """Character ranges of the passage's sentences (with ``clauses``, of its clauses between semicolons too)."""
    out: list[tuple[int, int]] = []
    at = 0
    for sentence in split_sentences(context, clauses=clauses):
        found = context.find(sentence, at)
        if found < 0:
            continue
        at = found + len(sentence)
        out.append((found, at))
    return out


def _span(
    context: str,
    offsets: Sequence[tuple[int, int] | None],
    first_token: int,
    last_token: int,
    score: float,
    null_score: float,
    sentence_spans: tuple[Span, ...] = (),
) -> Span:
    first, last = offsets[first_token], offsets[last_token]
    # The search kept spans inside the passage, where every token has an offset.
    assert first is not None
    assert last is not None
    return Span(context[first[0] : last[1]].strip(), first[0], last[1], score, null_score, sentence_spans)
