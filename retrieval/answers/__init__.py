"""Grounded answers: the answer service, its backends, grounding checks and the models behind them.

- :mod:`~retrieval.answers.service`: :class:`AnswerService` (retrieved passages in, a checked answer or an
  abstention out) and the extractive backend;
- :mod:`~retrieval.answers.backends`: the generative backends behind one interface (:class:`Generator`);
- :mod:`~retrieval.answers.local_model`: the in-process LM (SmolLM2 by default);
- :mod:`~retrieval.answers.remote`: the OpenAI-compatible client (retries, circuit breaker);
- :mod:`~retrieval.answers.grounding`: sentence scoring, answer spans, support checks and prompts.
"""

from retrieval.answers.backends import Generator, LocalBackend, RemoteBackend
from retrieval.answers.service import BACKENDS, AnswerConfig, AnswerService, ContextPassage, GroundedAnswer

__all__ = [
    "BACKENDS",
    "AnswerConfig",
    "AnswerService",
    "ContextPassage",
    "Generator",
    "GroundedAnswer",
    "LocalBackend",
    "RemoteBackend",
]
