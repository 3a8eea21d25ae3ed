"""What the service holds while it runs, handed to handlers through dependency injection."""

from __future__ import annotations

from dataclasses import dataclass, field

from litestar.datastructures import State

from app.auth import KeyStore
from app.explanations import ExplanationQueue
from app.fleet import Follower
from app.metrics import Metrics
from app.models import ServingModels
from app.settings import Settings
from governance.audit import AuditLog
from retrieval.answers import AnswerService
from retrieval.engine import RetrievalEngine


@dataclass(slots=True)
class Services:
    """The running service's parts."""

    settings: Settings
    engine: RetrievalEngine
    keys: KeyStore
    metrics: Metrics
    answers: AnswerService
    audit: AuditLog | None = None
    config_digest: str = ""
    models: ServingModels = field(default_factory=ServingModels)
    explanations: ExplanationQueue = field(default_factory=lambda: ExplanationQueue(1, 4))
    fleet: Follower | None = None


def provide_services(state: State) -> Services:
    """Dependency provider: the app's :class:`Services`."""
    services: Services = state.services
    return services
