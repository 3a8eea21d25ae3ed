"""What the service holds while it runs, handed to handlers through dependency injection."""

from __future__ import annotations

from dataclasses import dataclass, field

from litestar.datastructures import State

from app.auth import KeyStore
from app.bounded_work import BoundedWork
from app.fleet import Follower
from app.metrics import Metrics
from app.models import ServingModels
from app.settings import Settings
from app.web.sessions import SessionStore
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
    explanations: BoundedWork = field(default_factory=lambda: BoundedWork("explanations", 1, 4))
    reports: BoundedWork = field(default_factory=lambda: BoundedWork("reports", 1, 4))
    sessions: SessionStore = field(default_factory=SessionStore)
    fleet: Follower | None = None


def provide_services(state: State) -> Services:
    """Dependency provider: the app's :class:`Services`."""
    services: Services = state.services
    return services
