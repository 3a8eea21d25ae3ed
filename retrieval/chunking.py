"""Sentence splitting and sentence-aware chunking with overlap, sized in encoder tokens.

Knowledge-base documents are cut into chunks of whole sentences (a sentence longer than a chunk is cut at word
boundaries), and each chunk repeats the last sentences of the one before, up to ``overlap_tokens``, so a fact
that straddles a boundary is still retrievable as a whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A sentence ends at . ! ? (optionally followed by a closing quote or bracket) before white space, or at a line
# break or a semicolon-separated specification list ("Machine Washable: Yes; Material: Cotton").
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]?\s+|\n+|(?<=;)\s+")
_FULL_STOP = re.compile(r"(?<=[.!?])[\"')\]]?\s+|\n+")
# Abbreviations after which a full stop does not end a sentence ("Rs. 499", "e.g. towels").
_ABBREVIATIONS = frozenset(
    {"rs", "mr", "mrs", "ms", "dr", "no", "vs", "etc", "e.g", "i.e", "approx", "inc", "ltd", "st"}
)


def split_sentences(text: str, *, clauses: bool = True) -> list[str]:
    """Split text into sentences, keeping abbreviations such as ``Rs.`` inside their sentence.

    Args:
        text: Plain text.
        clauses: Also split at semicolons (clauses score and chunk on their own; ``False``: whole sentences).

    Returns:
        Stripped, non-empty sentences in order.
    """
    boundary = _BOUNDARY if clauses else _FULL_STOP
    pieces = [p.strip() for p in boundary.split(text) if p and p.strip()]
    sentences: list[str] = []
    for piece in pieces:
        if sentences:
            last_word = sentences[-1].rsplit(None, 1)[-1].lower().rstrip(".")
            if sentences[-1].endswith(".") and (
                last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha())
            ):
                sentences[-1] = f"{sentences[-1]} {piece}"
                continue
        sentences.append(piece)
    return sentences


def _split_long(sentence: str, count: Callable[[str], int], max_tokens: int) -> list[str]:
    """Cut one over-long sentence at word boundaries into pieces of at most ``max_tokens``."""
    pieces: list[str] = []
    current: list[str] = []
    for word in sentence.split():
        candidate = " ".join([*current, word])
        if current and count(candidate) > max_tokens:
            pieces.append(" ".join(current))
            current = [word]
        else:
            current.append(word)
    if current:
        pieces.append(" ".join(current))
    return pieces


def chunk_text(text: str, count: Callable[[str], int], max_tokens: int, overlap_tokens: int) -> list[str]:
    """Cut text into chunks of whole sentences, each at most ``max_tokens``, overlapping by whole sentences.

    Args:
        text: The document text.
        count: Token count of a piece of text (the encoder's tokenizer, without special tokens).
        max_tokens: Largest chunk.
        overlap_tokens: Most tokens of trailing sentences repeated at the start of the next chunk (less than
            ``max_tokens``).

    Returns:
        The chunks (one chunk for a short text; none for an empty one).

    Raises:
        ValueError: ``max_tokens`` is not positive or the overlap is not smaller than it.
    """
    if max_tokens < 1 or not 0 <= overlap_tokens < max_tokens:
        raise ValueError("need max_tokens >= 1 and 0 <= overlap_tokens < max_tokens")
    units: list[tuple[str, int]] = []
    for sentence in split_sentences(text):
        size = count(sentence)
        if size <= max_tokens:
            units.append((sentence, size))
        else:
            units.extend((piece, count(piece)) for piece in _split_long(sentence, count, max_tokens))
    chunks: list[str] = []
    current: list[tuple[str, int]] = []
    fresh = 0  # sentences in ``current`` not already emitted in the previous chunk
    for unit in units:
        if current and sum(n for _, n in current) + unit[1] > max_tokens:
            chunks.append(" ".join(s for s, _ in current))
            carried: list[tuple[str, int]] = []
            for sentence, size in reversed(current):
                if sum(n for _, n in carried) + size > overlap_tokens or size + unit[1] > max_tokens:
                    break
                carried.insert(0, (sentence, size))
            while carried and sum(n for _, n in carried) + unit[1] > max_tokens:
                carried.pop(0)
            current = carried
            fresh = 0
        current.append(unit)
        fresh += 1
    if current and fresh:
        chunks.append(" ".join(s for s, _ in current))
    return chunks
