"""Integrated-gradients attributions computed in a process of the explanations queue's own.

An attribution is a few hundred forward and backward passes over a query of a dozen tokens: tensors that small
leave most of the time in Python (module calls, autograd bookkeeping), with the interpreter lock held. Run on a
thread of the serving process, that lock is what the event loop waits for, whatever the thread's CPU priority.
In a process of its own the attribution keeps its own lock; the process loads a CPU copy of the encoder once
(about a second, and the model's size in memory) and keeps it while the served weights stay the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_loaded: dict[str, tuple[Any, Any]] = {}


def attribute_with_encoder(
    encoder_path: str,
    encoder_name: str,
    weights_digest: str,
    threads: int,
    query: str,
    docs: Sequence[tuple[str, str]],
    n_steps: int,
) -> list[dict[str, Any]]:
    """Token attributions of ``query`` for ``docs`` with the encoder in ``encoder_path`` (loaded once per digest).

    Module-level and given plain values only, so it can run in another process.

    Args:
        encoder_path: The served encoder's folder.
        encoder_name: Its name.
        weights_digest: Its weights digest: a different one (a swapped model) loads the new weights.
        threads: Torch threads of the attribution (0: the free cores; the encoder sets them as it loads).
        query: The recorded query text.
        docs: ``(id, text)`` of the results to explain.
        n_steps: Integration steps.

    Returns:
        What :func:`governance.explain.token_attributions` returns.
    """
    from governance.explain import token_attributions
    from retrieval.encoder import Encoder

    parts = _loaded.get(weights_digest)
    if parts is None:
        encoder = Encoder(encoder_path or None, name=encoder_name, device="cpu", threads=threads, trace=False)
        _loaded.clear()  # one model at a time: the previous weights are no longer served
        parts = _loaded[weights_digest] = encoder.torch_parts()
    model, tokenizer = parts
    return token_attributions(model, tokenizer, query, docs, n_steps=n_steps)
