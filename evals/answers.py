"""The interface an answer backend implements to be evaluated, and the registry the runner looks backends up in.

A backend is anything with a ``name``, a ``describe()`` and an ``answer(question, passages)`` that returns the
answer text, the ids of the passages it cites and whether it abstained, and, when the backend can hand a question
to another one (the service replaces an ungrounded generation by the extractive answer), who produced the answer
and why: the harness then attributes every answer to the backend itself, a fallback, or an abstention
(:func:`answer_outcome`). The runner builds it with a factory
registered under the name a suite gives in ``[system.answer] backend``; the factory receives the backend's
options from the suite and a way to get the encoder under test. The service's backends (``extractive``,
``local``, ``openai``; :mod:`evals.answer_backends`) are handed in by ``candor eval`` with the service's settings;
others can be registered at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from evals.qa_data import Passage
from retrieval.encoder import Encoder

__all__ = [
    "OUTCOMES",
    "AnswerBackendContext",
    "AnswerFactory",
    "AnswerSystem",
    "Outcome",
    "Passage",
    "SystemAnswer",
    "answer_outcome",
    "available_backends",
    "register_answer_backend",
    "unregister_answer_backend",
]


@dataclass(frozen=True, slots=True)
class SystemAnswer:
    """What an answer system returns for one question.

    Attributes:
        text: The answer (ignored when ``abstained``).
        cited_ids: Ids of the passages the answer cites, most important first.
        abstained: Whether the system declined to answer (e.g. the passages do not hold the answer).
        produced_by: The backend whose answer this is, when not the system itself (``extractive`` after the
            service replaced an ungrounded ``local`` answer); empty: the system itself.
        fallback: Why another backend's answer replaced the system's (``ungrounded``, ``upstream_timeout``, ...),
            also when that replacement then abstained; empty: no replacement.
        reason: Why the system abstained (``low_retrieval``, ``low_confidence``, ``model_declined``, ...), if known.
    """

    text: str
    cited_ids: tuple[str, ...] = ()
    abstained: bool = False
    produced_by: str = ""
    fallback: str = ""
    reason: str = ""


Outcome = Literal["own", "fallback", "abstained"]
OUTCOMES: tuple[Outcome, ...] = ("own", "fallback", "abstained")


def answer_outcome(system: str, answer: SystemAnswer) -> Outcome:
    """Who gave an answer: ``own`` (the system named ``system``), ``fallback`` (another backend), or ``abstained``.

    An abstention counts as ``abstained`` even after a fallback (the replacement declined too); an answer counts
    as a fallback when the system says it was replaced or names another backend as its producer.
    """
    if answer.abstained:
        return "abstained"
    if answer.fallback or (answer.produced_by and answer.produced_by != system):
        return "fallback"
    return "own"


@runtime_checkable
class AnswerSystem(Protocol):
    """A grounded answer backend as the harness sees it."""

    @property
    def name(self) -> str:
        """Backend name reported with its metrics (``extractive``, ``local``, ``openai``, ...)."""
        ...

    def describe(self) -> Mapping[str, Any]:
        """Model ids, weight hashes and settings, recorded in ``results.json``."""
        ...

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        """Answer ``question`` from ``passages`` only, citing passage ids, or abstain."""
        ...


@runtime_checkable
class ConcurrentAnswerSystem(AnswerSystem, Protocol):
    """A backend that can answer several questions at once (the service's backends, through their batchers)."""

    def answer_many(self, questions: Sequence[tuple[str, Sequence[Passage]]]) -> list[tuple[SystemAnswer, float]]:
        """Answer every question at once; each answer with its latency in ms from the start of the call."""
        ...


@dataclass(frozen=True)
class AnswerBackendContext:
    """What a factory gets to build a backend.

    Attributes:
        options: ``[system.answer] options`` from the suite.
        encoder: Returns the encoder under test (loaded on first call), for backends that rank sentences.
        seed: The suite seed (for sampling backends).
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    encoder: Callable[[], Encoder] | None = None
    seed: int = 0


AnswerFactory = Callable[[AnswerBackendContext], AnswerSystem]

_REGISTRY: dict[str, AnswerFactory] = {}


def register_answer_backend(name: str, factory: AnswerFactory) -> None:
    """Make a backend available to suites under ``name`` (replacing any earlier one of that name)."""
    _REGISTRY[name] = factory


def unregister_answer_backend(name: str) -> None:
    """Remove a backend (tests)."""
    _REGISTRY.pop(name, None)


def available_backends(builtin: Mapping[str, AnswerFactory] | None = None) -> dict[str, AnswerFactory]:
    """Every backend a suite can name: the baselines, ``builtin`` (the service's) and those registered.

    The baselines (:mod:`evals.answer_baselines`) need no service; the app hands in its backends as ``builtin``.
    """
    from evals.answer_baselines import BASELINES  # it builds on this module's types

    return {**BASELINES, **(builtin or {}), **_REGISTRY}
